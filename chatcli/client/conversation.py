"""A conversation as a file: the seed's message objects plus model and options.

    {"model": "smollm2:135m", "options": {"temperature": 0}, "format": null, "think": null,
     "messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}]}

Saving is atomic; loading validates everything before anything is replaced, so a malformed file
leaves the current conversation untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatcli.core import options as opts_mod
from chatcli.core import textclean
from chatcli.core.errors import ChatCliError
from chatcli.core.fileio import read_bytes_limited, write_user_file

ROLES = ("system", "user", "assistant", "tool")
FORMAT_VERSION = 1
MAX_FILE = 256 << 20  # far past any conversation; stops /dev/zero and runaway pipes


class ConversationFileError(ChatCliError):
    """A conversation file that cannot be read or is malformed."""


@dataclass
class Conversation:
    model: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    format: Any = None
    think: Any = None

    def to_json(self) -> str:
        data = {
            "version": FORMAT_VERSION,
            "model": self.model,
            "options": self.options,
            "format": self.format,
            "think": self.think,
            "messages": [clean_message(m) for m in self.messages],
        }
        return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def clean_message(message: dict[str, Any]) -> dict[str, Any]:
    """The seed's message shape: role and content, plus optional fields only when present."""
    out: dict[str, Any] = {"role": message["role"], "content": message.get("content") or ""}
    for key in ("thinking", "images", "tool_calls", "tool_name"):
        if message.get(key):
            out[key] = message[key]
    return out


def save(path: Path, conversation: Conversation) -> None:
    """Write the conversation atomically; the directory must exist (``NoSuchDirectoryError``)."""
    write_user_file(Path(path).expanduser(), conversation.to_json())


def load(path: Path) -> Conversation:
    """Read and validate a saved conversation."""
    path = Path(path).expanduser()
    try:
        raw = read_bytes_limited(path, MAX_FILE, f"conversation file {path}")
    except FileNotFoundError:
        raise ConversationFileError(f"no such file: {path}") from None
    except OSError as e:
        raise ConversationFileError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        # Invalid UTF-8 and lone surrogates become U+FFFD; deep nesting is refused here.
        data = textclean.loads(raw, what=str(path))
    except json.JSONDecodeError as e:
        raise ConversationFileError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    except textclean.TooDeepError as e:
        raise ConversationFileError(str(e)) from None
    return from_data(data, source=str(path))


def _check_version(version: Any, source: str) -> None:
    # Files from before the field existed have none; a newer format may mean things we would
    # silently get wrong.
    if version is None:
        return
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConversationFileError(f"{source}: 'version' must be a positive integer")
    if version > FORMAT_VERSION:
        raise ConversationFileError(
            f"{source}: written in format version {version}; this chatcli reads up to "
            f"version {FORMAT_VERSION}"
        )


def _checked_message(i: int, m: Any, source: str) -> dict[str, Any]:
    """Message ``i`` in the seed's shape, or ConversationFileError naming it and the field.
    Consecutive user messages are accepted, as Ollama's API accepts them."""
    where = f"{source}: message {i}"
    if not isinstance(m, dict):
        raise ConversationFileError(f"{where} is not an object")
    role = m.get("role")
    if role not in ROLES:
        raise ConversationFileError(f"{where} has an invalid role {role!r}")
    if "content" not in m:
        raise ConversationFileError(f"{where} ({role}) has no 'content'")
    if not isinstance(m["content"], str):
        raise ConversationFileError(f"{where}: 'content' must be a string")
    for key in ("thinking", "tool_name"):
        if m.get(key) is not None and not isinstance(m[key], str):
            raise ConversationFileError(f"{where}: '{key}' must be a string")
    images = m.get("images")
    if images is not None and not (
        isinstance(images, list) and all(isinstance(x, str) for x in images)
    ):
        raise ConversationFileError(f"{where}: 'images' must be a list of strings")
    calls = m.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise ConversationFileError(f"{where}: only assistant messages have 'tool_calls'")
        _check_tool_calls(calls, where)
    return clean_message(m)


def _check_tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list):
        raise ConversationFileError(f"{where}: 'tool_calls' must be a list")
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not (
            isinstance(function, dict)
            and isinstance(function.get("name"), str)
            and function["name"]
            and isinstance(function.get("arguments"), dict)
        ):
            raise ConversationFileError(
                f"{where}: tool_calls[{j}] needs function.name (a string) and "
                "function.arguments (an object)"
            )


def from_data(data: Any, *, source: str = "conversation") -> Conversation:
    if not isinstance(data, dict):
        raise ConversationFileError(f"{source}: expected a JSON object with a 'messages' array")
    _check_version(data.get("version"), source)
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise ConversationFileError(f"{source}: 'messages' must be an array")
    clean = [_checked_message(i, m, source) for i, m in enumerate(messages)]
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ConversationFileError(f"{source}: 'model' must be a string")
    try:
        options = opts_mod.validate(data.get("options") or {})
    except ChatCliError as e:
        raise ConversationFileError(f"{source}: {e}") from None
    return Conversation(
        model=model or "",
        messages=clean,
        options=options,
        format=data.get("format"),
        think=data.get("think"),
    )
