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

from . import options as opts_mod
from . import textclean
from .errors import ChatCliError
from .fileio import atomic_write_text, read_bytes_limited

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
    atomic_write_text(Path(path).expanduser(), conversation.to_json())


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


def from_data(data: Any, *, source: str = "conversation") -> Conversation:
    if not isinstance(data, dict):
        raise ConversationFileError(f"{source}: expected a JSON object with a 'messages' array")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise ConversationFileError(f"{source}: 'messages' must be an array")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ConversationFileError(f"{source}: message {i} is not an object")
        if m.get("role") not in ROLES:
            raise ConversationFileError(
                f"{source}: message {i} has an invalid role {m.get('role')!r}"
            )
        if not isinstance(m.get("content", ""), str):
            raise ConversationFileError(f"{source}: message {i} content must be a string")
        clean.append(clean_message(m))
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
