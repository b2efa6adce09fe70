"""Thinking models: telling their reasoning from their answer.

Two families of markup exist in the wild:

- ``"tags"``: the reasoning sits in one ``<think>...</think>`` block at the start of the answer
  (Qwen3, QwQ, DeepSeek-R1 and its distills). DeepSeek-R1's template opens the block in the
  prompt, so the model's own output then only closes it.
- ``"harmony"``: gpt-oss writes messages on channels, ``<|channel|>analysis<|message|>...``
  for its reasoning and ``<|channel|>final<|message|>...`` for the answer.

``ThinkingParser`` turns either kind of streamed text into ``ThinkingDelta`` and
``ContentDelta`` events (Ollama's ``message.thinking`` and ``message.content``).
"""

from __future__ import annotations

import re
from typing import Any

from chatcli.core.errors import InvalidOptionError
from chatcli.core.events import ContentDelta, Event, ThinkingDelta, ToolCall
from chatcli.core.messages import THINK_EFFORTS as _EFFORTS

_OPEN, _CLOSE = "<think>", "</think>"

# Whitespace is held back only this far: around the tags it is trimmed (the newlines models
# write there), and a longer run than this is not such a newline, so it is passed on.
_WS_LIMIT = 64

_HARMONY_MARKERS = (
    "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>",
    "<|return|>", "<|call|>", "<|startoftext|>", "<|endoftext|>",
)
_MARKER_MAX = max(map(len, _HARMONY_MARKERS))
_HARMONY_ENDS = ("<|end|>", "<|return|>", "<|call|>")
_HEADER_LIMIT = 256  # a header is "assistant to=functions.x<|channel|>commentary json"
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")



def style_for(template_source: str) -> str | None:
    """The thinking markup a chat template uses: ``"tags"``, ``"harmony"`` or None.

    Works on Jinja (GGUF) and Go (Ollama) templates alike, since both spell the markers out.
    """
    if "<|channel|>" in template_source and "<|message|>" in template_source:
        return "harmony"
    if _OPEN in template_source or _CLOSE in template_source:
        return "tags"
    return None


def opens_in_thinking(prompt_text: str) -> bool:
    """Whether the rendered prompt ends inside an open ``<think>`` (DeepSeek-R1 does this).

    Only the very end counts: an earlier ``<think>`` may be a user quoting the tag.
    """
    return prompt_text.rstrip().endswith(_OPEN)


def template_switches(style: str | None, think: bool | str | None) -> dict[str, Any]:
    """The template variables that carry Ollama's ``think`` value to the template.

    ``think`` is True, False, "low", "medium", "high", or None (the model's default).
    """
    if think is None:
        return {}
    if not isinstance(think, bool) and think not in _EFFORTS:
        raise InvalidOptionError(
            f"think must be true, false, \"low\", \"medium\" or \"high\", not {think!r}"
        )
    if style is None:
        return {}
    if style == "harmony":
        # gpt-oss cannot stop reasoning; the least it can do is reason briefly.
        if isinstance(think, bool):
            return {"reasoning_effort": "medium" if think else "low"}
        return {"reasoning_effort": think}
    return {"enable_thinking": bool(think)}


_BLOCK = re.compile(re.escape(_OPEN) + r".*?" + re.escape(_CLOSE) + r"\s*", re.DOTALL)


def strip_thinking(text: str) -> str:
    """``text`` without its ``<think>...</think>`` blocks (and the whitespace after each)."""
    return _BLOCK.sub("", text)


class ThinkingParser:
    """An OutputParser that splits a thinking model's output into reasoning and answer.

    ``style`` is what ``style_for`` returned. ``starts_in_thinking``: the prompt already opened
    ``<think>`` (see ``opens_in_thinking``). ``show=False`` drops the reasoning, for a model
    that reasons although it was asked not to.
    """

    def __init__(self, style: str, *, starts_in_thinking: bool = False, show: bool = True):
        if style == "tags":
            self._splitter: _TagSplitter | _HarmonySplitter = _TagSplitter(starts_in_thinking)
        elif style == "harmony":
            self._splitter = _HarmonySplitter()
        else:
            raise ValueError(f"unknown thinking style {style!r}")
        self.show = show

    @property
    def held_back(self) -> int:
        """How many characters are waiting to be told apart from a marker."""
        return self._splitter.held_back

    def feed(self, text: str) -> list[Event]:
        return self._shown(self._splitter.feed(text))

    def finish(self) -> list[Event]:
        return self._shown(self._splitter.finish())

    def _shown(self, events: list[Event]) -> list[Event]:
        if self.show:
            return events
        return [e for e in events if not isinstance(e, ThinkingDelta)]


def _trailing_ws(text: str) -> int:
    return len(text) - len(text.rstrip())


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is the start of ``marker`` (not all of it)."""
    if text.rfind(marker[0], -(len(marker) - 1)) == -1:  # the usual case, decided at once
        return 0
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class _TagSplitter:
    """``<think>...</think>`` as Ollama reads it: one block, at the very start of the output.

    A ``<think>`` after other text is not a marker (the answer may discuss the tag), nor is one
    after the block closed. Whitespace after either tag and before ``</think>`` is trimmed.
    """

    _OPENING, _THINKING, _CONTENT = range(3)

    def __init__(self, starts_in_thinking: bool) -> None:
        self._state = self._OPENING
        # Where text goes if the output does not start with <think>.
        self._no_tag = self._THINKING if starts_in_thinking else self._CONTENT
        self._held = ""
        self._eat_ws = starts_in_thinking
        self._ws_emitted = 0  # whitespace at the end of the thinking emitted so far

    @property
    def held_back(self) -> int:
        return len(self._held)

    def feed(self, text: str) -> list[Event]:
        out: list[Event] = []
        text, self._held = self._held + text, ""
        while text:
            if self._state == self._OPENING:
                text = self._opening(text)
            elif self._state == self._THINKING:
                text = self._thinking(text, out)
            else:
                text = self._content(text, out)
        return out

    def finish(self) -> list[Event]:
        held, self._held = self._held, ""
        if self._state == self._OPENING:
            self._state = self._no_tag
            return self.feed(held) + self.finish()
        if self._state == self._THINKING:
            # An unclosed block: everything was reasoning; the trailing whitespace still goes.
            thinking = held.rstrip()
            return [ThinkingDelta(thinking)] if thinking else []
        return []

    def _opening(self, text: str) -> str:
        rest = text.lstrip()
        if len(text) - len(rest) <= _WS_LIMIT:
            if rest.startswith(_OPEN):
                self._state, self._eat_ws = self._THINKING, True
                return rest[len(_OPEN):]
            if _OPEN.startswith(rest):  # "", "<", "<th"...: it may still come
                self._held = text
                return ""
        self._state = self._no_tag
        return text

    def _thinking(self, text: str, out: list[Event]) -> str:
        if self._eat_ws:
            text = text.lstrip()
            if not text:
                return ""
            self._eat_ws = False
        end = text.find(_CLOSE)
        if end != -1:
            body = text[:end]
            if self._ws_run(body) <= _WS_LIMIT:
                body = body.rstrip()
            self._emit_thinking(body, out)
            self._state, self._eat_ws = self._CONTENT, True
            return text[end + len(_CLOSE):]
        hold = _partial_suffix(text, _CLOSE)
        body = text[: len(text) - hold]
        if self._ws_run(body) <= _WS_LIMIT:
            # Newlines that may turn out to stand just before </think>.
            hold += _trailing_ws(body)
        self._held = text[len(text) - hold:] if hold else ""
        self._emit_thinking(text[: len(text) - hold], out)
        return ""

    def _ws_run(self, body: str) -> int:
        """The whitespace run ``body`` ends with, counting what was emitted just before it."""
        ws = _trailing_ws(body)
        return self._ws_emitted + ws if ws == len(body) else ws

    def _emit_thinking(self, text: str, out: list[Event]) -> None:
        if text:
            self._ws_emitted = self._ws_run(text)
            out.append(ThinkingDelta(text))

    def _content(self, text: str, out: list[Event]) -> str:
        if self._eat_ws:
            text = text.lstrip()
            if not text:
                return ""
            self._eat_ws = False
        out.append(ContentDelta(text))
        return ""


class _HarmonySplitter:
    """OpenAI's harmony format, read from text detokenized with its special tokens.

    ``analysis`` (and ``commentary`` addressed to no tool) is reasoning, ``final`` is the
    answer, text outside any message is answer too. A message addressed to a tool
    (``to=functions.NAME``) becomes a ``ToolCall``: its markers are gone by the time a later
    parser would look for them.
    """

    _BODY, _HEADER = range(2)

    def __init__(self) -> None:
        self._state = self._BODY
        self._dest = "content"  # "content", "thinking" or "tool"
        self._held = ""
        self._role = ""  # header text after <|start|>
        self._channel = ""  # header text after <|channel|>
        self._in_channel = False
        self._tool_name = ""
        self._tool_body: list[str] = []

    @property
    def held_back(self) -> int:
        return len(self._held)

    def feed(self, text: str) -> list[Event]:
        out: list[Event] = []
        buf, self._held = self._held + text, ""
        start = scan = 0
        while True:
            i = buf.find("<|", scan)
            if i == -1:
                break
            marker = next((m for m in _HARMONY_MARKERS if buf.startswith(m, i)), None)
            if marker is not None:
                self._text(buf[start:i], out)
                self._marker(marker, out)
                start = scan = i + len(marker)
            elif len(buf) - i < _MARKER_MAX and any(
                m.startswith(buf[i:]) for m in _HARMONY_MARKERS
            ):
                self._held = buf[i:]
                buf = buf[:i]
                break
            else:
                scan = i + 1
        if not self._held and buf.endswith("<"):
            self._held, buf = "<", buf[:-1]
        self._text(buf[start:], out)
        return out

    def finish(self) -> list[Event]:
        out: list[Event] = []
        held, self._held = self._held, ""
        self._text(held, out)
        # llama.cpp stops on <|return|> and <|call|> without showing them.
        if self._state == self._BODY and self._dest == "tool":
            self._end_tool(out)
        return out

    def _text(self, text: str, out: list[Event]) -> None:
        if not text:
            return
        if self._state == self._HEADER:
            if self._in_channel:
                self._channel = (self._channel + text)[:_HEADER_LIMIT]
            else:
                self._role = (self._role + text)[:_HEADER_LIMIT]
        elif self._dest == "tool":
            self._tool_body.append(text)
        elif self._dest == "thinking":
            out.append(ThinkingDelta(text))
        else:
            out.append(ContentDelta(text))

    def _marker(self, marker: str, out: list[Event]) -> None:
        if marker == "<|start|>":
            self._begin_header()
        elif marker == "<|channel|>":
            if self._state != self._HEADER:
                self._begin_header()
            self._in_channel = True
        elif marker == "<|constrain|>":
            if self._state == self._HEADER:
                self._text(" ", out)  # "commentary<|constrain|>json": keep the words apart
        elif marker == "<|message|>":
            self._begin_body()
        elif marker in _HARMONY_ENDS:
            if self._state == self._BODY and self._dest == "tool":
                self._end_tool(out)
            self._state, self._dest = self._BODY, "content"

    def _begin_header(self) -> None:
        self._state, self._role, self._channel, self._in_channel = self._HEADER, "", "", False

    def _begin_body(self) -> None:
        words = self._channel.split()
        channel = words[0] if words else ""
        recipient = _RECIPIENT.search(self._role + " " + self._channel)
        self._state = self._BODY
        if recipient:
            self._dest, self._tool_body = "tool", []
            self._tool_name = recipient.group(1).removeprefix("functions.")
        elif channel in ("analysis", "commentary"):
            self._dest = "thinking"
        else:
            self._dest = "content"

    def _end_tool(self, out: list[Event]) -> None:
        body = "".join(self._tool_body).strip()
        self._tool_body, self._dest = [], "content"
        from chatcli.core.textclean import TooDeepError, loads

        try:
            arguments = loads(body, "the tool call's arguments") if body else {}
        except (ValueError, TooDeepError):
            arguments = None
        if isinstance(arguments, dict):
            out.append(ToolCall(self._tool_name, arguments))
        else:  # not a call we can make; show it rather than lose it
            out.append(ContentDelta(body))
