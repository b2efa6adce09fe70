"""A stream of events, gathered into the answer it makes: the final assistant message.

The session keeps it in the history; the Python API, /api/chat and /v1 answer with it when the
client did not ask for a stream. Each front end shapes it its own way from these fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chatcli.core.events import ContentDelta, Done, Event, ThinkingDelta, ToolCall


class Accumulator:
    """Add events as they come; read the answer so far at any time."""

    def __init__(self) -> None:
        self._content: list[str] = []
        self._thinking: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.done: Done | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, ContentDelta):
            self._content.append(event.text)
        elif isinstance(event, ThinkingDelta):
            self._thinking.append(event.text)
        elif isinstance(event, ToolCall):
            self.tool_calls.append(event)
        elif isinstance(event, Done):
            self.done = event

    @property
    def content(self) -> str:
        return "".join(self._content)

    @property
    def thinking(self) -> str:
        return "".join(self._thinking)

    def message(self) -> dict[str, Any] | None:
        """The assistant message in the seed's shape (thinking and tool calls only when there
        are some); None when the answer produced nothing at all."""
        content, thinking = self.content, self.thinking
        if not (content or thinking or self.tool_calls):
            return None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if self.tool_calls:
            message["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}}
                                     for c in self.tool_calls]
        return message


def accumulate(events: Iterable[Event]) -> Accumulator:
    """All of ``events``, gathered."""
    answer = Accumulator()
    for event in events:
        answer.add(event)
    return answer
