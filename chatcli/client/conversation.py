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
from chatcli.core.errors import ChatCliError, RequestError
from chatcli.core.fileio import read_bytes_limited, write_user_file
from chatcli.core.messages import check_messages

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


def _checked_messages(messages: list[Any], source: str) -> list[dict[str, Any]]:
    """The messages in the seed's shape (``core.messages``), or ConversationFileError naming
    the message and the field. Consecutive user messages are accepted, as Ollama's API accepts
    them."""
    try:
        clean = check_messages(messages)
    except RequestError as e:
        raise ConversationFileError(f"{source}: {e}") from None
    for i, m in enumerate(messages):
        # A saved message always has its content (empty at least): the API's leniency about a
        # missing one is for callers, not for files.
        if m.get("content") is None:
            raise ConversationFileError(f"{source}: message {i} ({m.get('role')}) has no "
                                        "'content'")
    return clean


def from_data(data: Any, *, source: str = "conversation") -> Conversation:
    if not isinstance(data, dict):
        raise ConversationFileError(f"{source}: expected a JSON object with a 'messages' array")
    _check_version(data.get("version"), source)
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise ConversationFileError(f"{source}: 'messages' must be an array")
    clean = _checked_messages(messages, source)
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
