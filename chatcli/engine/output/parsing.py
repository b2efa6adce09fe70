"""Turning a model's streamed text into events: thinking, answer text, tool calls.

Each model family marks reasoning and tool calls its own way (``<think>``, gpt-oss channels,
``<tool_call>``, ``[TOOL_CALLS]``, ``<|python_tag|>``...). A parser for one family takes the text
as it streams and returns events; parsers chain: the thinking parser splits reasoning from the
answer, the tool-call parser then finds calls in the answer.
"""

from __future__ import annotations

from typing import Protocol

from chatcli.core.events import ContentDelta, Event


class OutputParser(Protocol):
    def feed(self, text: str) -> list[Event]:
        """Take the next piece of text; return the events that are certain now. Text that might
        still turn out to be a marker is held back (a bounded amount)."""

    def finish(self) -> list[Event]:
        """The stream ended: return whatever is held back."""


class PassThrough:
    """No markers to find: all text is answer text."""

    def feed(self, text: str) -> list[Event]:
        return [ContentDelta(text)] if text else []

    def finish(self) -> list[Event]:
        return []


class Chain:
    """Feed the content produced by ``first`` into ``second``; other events pass through."""

    def __init__(self, first: OutputParser, second: OutputParser) -> None:
        self.first, self.second = first, second

    def _through(self, events: list[Event]) -> list[Event]:
        out: list[Event] = []
        for event in events:
            if isinstance(event, ContentDelta):
                out.extend(self.second.feed(event.text))
            else:
                out.append(event)
        return out

    def feed(self, text: str) -> list[Event]:
        return self._through(self.first.feed(text))

    def finish(self) -> list[Event]:
        return self._through(self.first.finish()) + self.second.finish()


def pipeline(*parsers: OutputParser) -> OutputParser:
    """Chain parsers left to right; the answer's leading whitespace is dropped at the end."""
    out: OutputParser = parsers[0] if parsers else PassThrough()
    for parser in parsers[1:]:
        out = Chain(out, parser)
    return Chain(out, StripLeading())


class StripLeading:
    """Drop whitespace before the answer's first visible character (models often open with a
    newline or a space token)."""

    def __init__(self) -> None:
        self.started = False

    def feed(self, text: str) -> list[Event]:
        if not self.started:
            text = text.lstrip()
            if not text:
                return []
            self.started = True
        return [ContentDelta(text)]

    def finish(self) -> list[Event]:
        return []

