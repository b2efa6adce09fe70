"""Tool calls in and out of a model: which syntax its template uses, and finding calls in output.

Three syntaxes cover the common open models:

- ``hermes`` (Qwen 2.5/3, Hermes): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
- ``llama3`` (Llama 3.1-3.3): the answer *is* a JSON object ``{"name": ..., "parameters": {...}}``,
  or ``<|python_tag|>`` followed by such JSON.
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``, or in newer models
  ``[TOOL_CALLS]name[ARGS]{...}`` (optionally ``name[CALL_ID]id[ARGS]{...}``).

``ToolCallParser`` is an ``OutputParser``: it turns the streamed answer into ``ContentDelta`` and
``ToolCall`` events. Whitespace right before a call, and whitespace after a call that only leads
to another call or to the end, is dropped (it is layout, not text); everything else that is not a
well-formed call comes back as content, without the marker text.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from chatcli.core.events import ContentDelta, Event, ToolCall

FAMILIES = ("hermes", "llama3", "mistral")

_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"
_MISTRAL_OPEN = "[TOOL_CALLS]"
_MISTRAL_ARGS, _MISTRAL_CALL_ID = "[ARGS]", "[CALL_ID]"

# The first key of a bare JSON answer that may still be a Llama tool call.
_CALL_KEYS = {"name", "type", "function", "parameters", "arguments"}
_FIRST_KEY = re.compile(r'\{\s*(?:"((?:[^"\\]|\\.)*)"|([^\s"]))?')
_NAME_CHARS = re.compile(r"[\w.\-]*")


def family_for(template_source: str | None) -> str | None:
    """The tool-call syntax a chat template teaches its model, or None without tool support."""
    if not template_source or not re.search(r"\btools\b", template_source):
        return None
    if _MISTRAL_OPEN in template_source:
        return "mistral"
    if _HERMES_OPEN in template_source:
        return "hermes"
    if _PYTHON_TAG in template_source or "ipython" in template_source:
        return "llama3"
    return None


def supports_tools(template_source: str | None) -> bool:
    """Whether the chat template renders tools and has a tool-call syntax chatcli can parse."""
    return family_for(template_source) is not None


# -- messages for the template ------------------------------------------------------------------


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ollama-shaped messages -> what the publishers' templates read. Returns new dicts.

    Ollama's API has ``tool_calls=[{"function": {"name", "arguments": {...}}}]`` on assistant
    messages and ``{"role": "tool", "content": ..., "tool_name": ...}`` results. The templates
    need:

    - ``content`` always a string: Qwen3 calls ``.startswith``/``in`` on it, Llama ``| trim``s
      it, Mistral concatenates it. ``None`` becomes ``""``.
    - ``tool_calls`` absent unless non-empty: Llama tests ``'tool_calls' in message`` and
      Mistral ``is not none``, so an empty list would render an empty call.
    - each call as ``{"type": "function", "id": <9 alnum chars>, "function": {"name",
      "arguments": dict}}``: Qwen3 reads ``tool_call.function``, Llama ``tool_calls[0].function``
      (one call per message only: its template refuses more), Mistral dumps ``function`` and
      insists on a 9-character ``id``. Arguments given as JSON text become a dict (Llama would
      otherwise encode the string twice). Ids already 9 alphanumerics are kept; others are
      derived deterministically (a hash), so re-rendering a conversation gives the same prompt.
    - tool results with ``name`` (copied from ``tool_name``; Hermes-style templates read it) and
      ``tool_call_id`` (Mistral's ``[TOOL_RESULTS]`` needs it): the id of the matching call of
      the latest assistant message, by name, else in order.
    """
    out: list[dict[str, Any]] = []
    used: set[str] = set()
    renamed: dict[str, str] = {}
    pending: list[tuple[str, str]] = []  # (name, id) of calls not yet answered
    for message in messages:
        clean = dict(message)
        if clean.get("content") is None:
            clean["content"] = ""
        role = clean.get("role")
        calls = clean.pop("tool_calls", None)
        if role == "assistant" and calls:
            clean["tool_calls"] = [_template_call(c, used, renamed) for c in calls]
            pending = [(c["function"]["name"], c["id"]) for c in clean["tool_calls"]]
        elif role == "tool":
            name = clean.get("tool_name") or clean.get("name")
            if name and "name" not in clean:
                clean["name"] = name
            clean["tool_call_id"] = _result_id(clean.get("tool_call_id"), name, pending, renamed)
        out.append(clean)
    return out


def _template_call(call: Any, used: set[str], renamed: dict[str, str]) -> dict[str, Any]:
    call = dict(call) if isinstance(call, Mapping) else {}
    function = call.get("function") if isinstance(call.get("function"), Mapping) else call
    name = str(function.get("name") or "")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        arguments = _json_object(arguments) if arguments.strip() else {}
        if arguments is None:
            arguments = function["arguments"]  # not JSON: let the template show it as it is
    given = call.get("id")
    if isinstance(given, str) and _is_call_id(given) and given not in used:
        call_id = given
    else:
        seed = given if isinstance(given, str) and given else f"{name}\0{_dumps(arguments)}"
        call_id = _unique_id(seed, used)
        if isinstance(given, str) and given:
            renamed[given] = call_id
    used.add(call_id)
    return {"type": "function", "id": call_id, "function": {"name": name, "arguments": arguments}}


def _result_id(
    given: Any, name: str | None, pending: list[tuple[str, str]], renamed: dict[str, str]
) -> str:
    if isinstance(given, str) and given:
        found = renamed.get(given, given)
        pending[:] = [p for p in pending if p[1] != found]
        return found if _is_call_id(found) else _unique_id(found, set())
    match = next((p for p in pending if p[0] == name), pending[0] if pending else None)
    if match is None:
        return _unique_id(f"result\0{name}", set())
    pending.remove(match)
    return match[1]


def _is_call_id(value: str) -> bool:
    return len(value) == 9 and value.isascii() and value.isalnum()


def _unique_id(seed: str, used: set[str]) -> str:
    n = 0
    while True:
        call_id = hashlib.sha1(f"{seed}\0{n}".encode()).hexdigest()[:9]
        if call_id not in used:
            return call_id
        n += 1


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


# -- parsing the output -------------------------------------------------------------------------


class _JsonEnd:
    """Finds where one JSON object or array ends in a growing text, without parsing it."""

    def __init__(self) -> None:
        self.pos = 0
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def scan(self, text: str) -> int | None:
        """Index just past the complete value at the start of ``text``, or None if unfinished."""
        for i in range(self.pos, len(text)):
            c = text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.pos = i + 1
                    return i + 1
        self.pos = len(text)
        return None


class ToolCallParser:
    """Finds one family's tool calls in streamed answer text (an ``OutputParser``)."""

    def __init__(self, family: str) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown tool-call family {family!r}; known: {', '.join(FAMILIES)}")
        self.family = family
        self._buf = ""  # text received and not yet turned into events
        self._mode = "start" if family == "llama3" else "text"
        self._json: _JsonEnd | None = None
        self._bare = False  # collecting a Llama answer that begins with "{"
        self._key_ok: bool | None = None  # may that answer's first key begin a call?
        self._name = ""  # the call name read before mistral's [ARGS]
        self._searched = 0  # where to resume looking for </tool_call>
        self._quiet = True  # at the start or just after a call: whitespace is held, not emitted
        self._held = ""
        self._calls = 0
        if family == "hermes":
            self._markers: tuple[str, ...] = (_HERMES_OPEN, _HERMES_CLOSE)
        else:
            self._markers = (_PYTHON_TAG,) if family == "llama3" else (_MISTRAL_OPEN,)

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        return self._run(final=False)

    def finish(self) -> list[Event]:
        events = self._run(final=True)
        if self._buf:
            # Whatever is left is an unfinished call: it is text after all.
            events += self._content(self._unmarked(self._name + self._buf))
            self._buf = self._name = ""
        self._mode = "text"
        self._held = ""
        return events

    # -- the state machine --------------------------------------------------------------------

    def _run(self, final: bool) -> list[Event]:
        events: list[Event] = []
        step = {
            "start": self._step_start,
            "text": self._step_text,
            "body": self._step_body,
            "json": self._step_json,
            "name": self._step_name,
        }
        while self._buf and step[self._mode](events, final):
            pass
        return events

    def _step_start(self, events: list[Event], final: bool) -> bool:
        """Llama: a JSON object that opens the answer (or follows a call) may be a call."""
        stripped = self._buf.lstrip()
        if self._calls and stripped.startswith(";"):  # {call}; {call}: drop the separator
            self._buf = stripped[1:]
            return True
        if not stripped:
            if final:
                self._buf = ""
            return False
        events += self._content(self._buf[: len(self._buf) - len(stripped)])
        self._buf = stripped
        if stripped.startswith("{"):
            self._enter_json(bare=True)
        else:
            self._mode = "text"
        return True

    def _step_text(self, events: list[Event], final: bool) -> bool:
        buf = self._buf
        found = [(buf.find(m), m) for m in self._markers if m in buf]
        if found:
            at, marker = min(found)
            self._buf = buf[at + len(marker):]
            if marker == _HERMES_CLOSE:  # a stray closing tag: drop it
                events += self._content(buf[:at])
                return True
            events += self._content(buf[:at].rstrip())
            self._held = ""
            if marker == _HERMES_OPEN:
                self._mode, self._searched = "body", 0
            else:
                self._mode = "name"  # decided in _step_name: JSON, a name, or plain text
            return True
        keep = 0
        if not final:  # hold what may start a marker, and the whitespace before it
            keep = _partial_marker(buf, self._markers)
            head = buf[: len(buf) - keep]
            keep += len(head) - len(head.rstrip())
        events += self._content(buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep:]
        return False

    def _step_body(self, events: list[Event], final: bool) -> bool:
        """Hermes: everything up to </tool_call> is the call's JSON."""
        at = self._buf.find(_HERMES_CLOSE, self._searched)
        if at < 0:
            self._searched = max(0, len(self._buf) - len(_HERMES_CLOSE) + 1)
            if final:  # no closing tag: still a call if the JSON is whole
                body, self._buf = self._buf, ""
                events += self._hermes_call(body)
            return False
        body = self._buf[:at]
        self._buf = self._buf[at + len(_HERMES_CLOSE):]
        events += self._hermes_call(body)
        return True

    def _hermes_call(self, body: str) -> list[Event]:
        if _parse_calls(body) is None and _HERMES_OPEN in body:
            # <tool_call> again before </tool_call>: the unclosed ones were text
            *unclosed, body = body.split(_HERMES_OPEN)
            return self._content("".join(unclosed)) + self._call_or_text(body, body)
        return self._call_or_text(body, body)

    def _step_name(self, events: list[Event], final: bool) -> bool:
        """After [TOOL_CALLS] or <|python_tag|>: JSON, mistral's name[ARGS]{...}, or text."""
        stripped = self._buf.lstrip()
        if not stripped:
            return False
        if stripped[0] in "{[":
            self._buf = stripped
            self._enter_json(bare=False)
            return True
        if self.family == "mistral":
            head = _mistral_head(stripped)
            if head is None:
                return False
            if head:
                self._name, used = head
                self._buf = stripped[used:]
                self._enter_json(bare=False)
                return True
        self._mode = "text"  # e.g. code after <|python_tag|>: plain text without the tag
        return True

    def _step_json(self, events: list[Event], final: bool) -> bool:
        assert self._json is not None
        end = self._json.scan(self._buf)
        if self._bare:
            if end is None and self._key_ok is None:
                self._key_ok = _first_key(self._buf)
            if not (self._key_ok is not False if end is None else _bare_call(self._buf[:end])):
                self._mode = "text"  # a JSON answer, not a call: read it again as text
                return True
        if end is None:
            return False
        raw, self._buf = self._buf[:end], self._buf[end:]
        name, self._name = self._name, ""
        if name:
            source = f'{{"name": {json.dumps(name)}, "arguments": {raw}}}'
            events += self._call_or_text(source, name + raw)
        else:
            events += self._call_or_text(raw, raw)
        return True

    # -- helpers ----------------------------------------------------------------------------

    def _enter_json(self, *, bare: bool) -> None:
        self._mode, self._bare, self._json = "json", bare, _JsonEnd()
        self._key_ok = None

    def _call_or_text(self, source: str, raw: str) -> list[Event]:
        """Events for a finished call: ToolCalls if ``source`` is a valid call, else ``raw``."""
        calls = _parse_calls(source)
        self._mode = "text"
        if calls is None:
            return self._content(self._unmarked(raw))
        if self.family == "llama3":
            self._mode = "start"  # another bare JSON call may follow: {...}; {...}
        self._calls += len(calls)
        self._quiet, self._held = True, ""
        return [ToolCall(name=name, arguments=arguments) for name, arguments in calls]

    def _unmarked(self, raw: str) -> str:
        """A failed call's text without markers (e.g. a second [TOOL_CALLS] inside it)."""
        for marker in self._markers:
            raw = raw.replace(marker, "")
        return raw

    def _content(self, text: str) -> list[Event]:
        if not text:
            return []
        if self._quiet:
            if not text.strip():
                self._held += text
                return []
            text, self._held, self._quiet = self._held + text, "", False
        return [ContentDelta(text)]


def _partial_marker(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that could begin one of ``markers``."""
    longest = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:n]):
                longest = n
                break
    return longest


def _name_at(text: str, pos: int = 0) -> str:
    """The run of name characters at ``pos`` of ``text``; empty when there is none."""
    match = _NAME_CHARS.match(text, pos)  # the pattern matches the empty string too
    return match.group() if match else ""


def _mistral_head(text: str) -> tuple[str, int] | tuple[()] | None:
    """``name[ARGS]`` or ``name[CALL_ID]id[ARGS]`` at the start of ``text``.

    Returns (name, length consumed), None while it may still become one, () if it cannot.
    """
    name = _name_at(text)
    rest = text[len(name):]
    if not rest:
        return None
    if not name:
        return ()
    if rest.startswith(_MISTRAL_ARGS):
        return name, len(name) + len(_MISTRAL_ARGS)
    if rest.startswith(_MISTRAL_CALL_ID):
        call_id = _name_at(rest, len(_MISTRAL_CALL_ID))
        after = rest[len(_MISTRAL_CALL_ID) + len(call_id):]
        if after.startswith(_MISTRAL_ARGS):
            return name, len(text) - len(after) + len(_MISTRAL_ARGS)
        return None if _MISTRAL_ARGS.startswith(after) else ()
    if _MISTRAL_ARGS.startswith(rest) or _MISTRAL_CALL_ID.startswith(rest):
        return None
    return ()


def _first_key(partial: str) -> bool | None:
    """Whether a bare JSON object's first key lets it be a Llama call; None: not known yet."""
    match = _FIRST_KEY.match(partial)
    if match is None or match.group(2) == "}":
        return None  # "{}" is no call either, which _bare_call says once it is complete
    if match.group(2) is not None:
        return False
    return None if match.group(1) is None else match.group(1) in _CALL_KEYS


def _bare_call(raw: str) -> bool:
    """Llama: a bare JSON answer is a call only with a name and parameters (or arguments), and
    with a first key a call can start with (what streaming decides on before the object ends)."""
    if _first_key(raw) is False:
        return False
    value = _json_value(raw)
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        value = value["function"]
    return isinstance(value, dict) and "name" in value and (
        "parameters" in value or "arguments" in value
    )


def _parse_calls(source: str) -> list[tuple[str, dict]] | None:
    """[(name, arguments)] from a call's JSON (one object or a list of them); None if invalid."""
    value = _json_value(source)
    items = value if isinstance(value, list) else [value]
    calls = [_call(item) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return calls  # type: ignore[return-value]


def _call(item: Any) -> tuple[str, dict] | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str) or not name:
        return None
    arguments = item.get("arguments", item.get("parameters"))
    if arguments is None or arguments == "":
        return name, {}
    if isinstance(arguments, str):
        arguments = _json_object(arguments)
    return (name, arguments) if isinstance(arguments, dict) else None


def _json_value(text: str) -> Any:
    from chatcli.core.textclean import TooDeepError, loads

    try:
        return loads(text, "the tool call's arguments")
    except (ValueError, TooDeepError):  # not a call we can make: it stays content
        return None


def _json_object(text: str) -> dict | None:
    value = _json_value(text)
    return value if isinstance(value, dict) else None
