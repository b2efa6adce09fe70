"""Chat messages in the seed's (Ollama's) shape, and the one place they are checked.

    {"role": "assistant", "content": "...", "thinking": "...",
     "tool_calls": [{"function": {"name": "f", "arguments": {...}}}]}

Conversation files, the Python API, the HTTP server and Modelfiles all take messages from
outside; each checks them here, and wraps the ``RequestError`` in its own words if it must.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chatcli.core import textclean
from chatcli.core.errors import RequestError

ROLES = ("system", "user", "assistant", "tool")
THINK_EFFORTS = ("low", "medium", "high")  # think's string values (gpt-oss reasoning effort)


def check_think(value: Any) -> bool | str | None:
    """``think`` as given: None (the model's default), a boolean, or one of ``THINK_EFFORTS``."""
    if value is not None and not (isinstance(value, bool) or value in THINK_EFFORTS):
        raise RequestError("'think' must be true, false, \"low\", \"medium\" or \"high\"")
    return value


def _field(message: Any, name: str) -> Any:
    # Ollama's Python client passes pydantic objects as readily as dicts.
    if isinstance(message, Mapping):
        return message.get(name)
    return getattr(message, name, None)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """Each call as ``{"function": {"name": str, "arguments": dict}}``; arguments given as a
    JSON string (OpenAI's form) are parsed."""
    if not _is_list(value):
        raise RequestError(f"{where}: 'tool_calls' must be a list")
    calls = []
    for j, call in enumerate(value):
        function = _field(call, "function")
        name = _field(function, "name") if function is not None else None
        arguments = _field(function, "arguments") if function is not None else None
        what = f"{where}: tool call arguments"
        if isinstance(arguments, str):
            try:
                arguments = textclean.loads(arguments, what=what)
            except json.JSONDecodeError:
                arguments = None
        if isinstance(arguments, Mapping) and not isinstance(arguments, dict):
            arguments = dict(arguments)
        if not (isinstance(name, str) and name and isinstance(arguments, dict)):
            raise RequestError(f"{where}: tool_calls[{j}] needs function.name (a string) and "
                               "function.arguments (an object)")
        calls.append({"function": {"name": textclean.clean_text(name),
                                   "arguments": textclean.clean_value(arguments, what)}})
    return calls


def check_message(message: Any, index: int) -> dict[str, Any]:
    """Message ``index`` as a plain dict in the seed's shape (optional fields only when set),
    its text with lone surrogates as U+FFFD and its tool call arguments bounded in depth; a
    ``RequestError`` naming the message and the field otherwise. A missing content is empty."""
    where = f"message {index}"
    if not isinstance(message, Mapping) and not hasattr(message, "role"):
        raise RequestError(f"{where} is not a {{'role': ..., 'content': ...}} object")
    role = _field(message, "role")
    if role not in ROLES:
        raise RequestError(f"{where} has an invalid role {role!r}; roles are: "
                           f"{', '.join(ROLES)}")
    content = _field(message, "content")
    if content is not None and not isinstance(content, str):
        raise RequestError(f"{where}: 'content' must be a string")
    out: dict[str, Any] = {"role": role, "content": textclean.clean_text(content or "")}
    for key in ("thinking", "tool_name"):
        value = _field(message, key)
        if value is not None and not isinstance(value, str):
            raise RequestError(f"{where}: '{key}' must be a string")
        if value:
            out[key] = textclean.clean_text(value)
    calls = _field(message, "tool_calls")
    if calls is not None:
        calls = _tool_calls(calls, where)
        if calls and role != "assistant":  # an empty list, as some clients send, is no calls
            raise RequestError(f"{where}: only assistant messages have 'tool_calls'")
        if calls:
            out["tool_calls"] = calls
    images = _field(message, "images")
    if images is not None:
        if not (_is_list(images)
                and all(isinstance(x, (str, bytes, bytearray, Path)) for x in images)):
            raise RequestError(f"{where}: 'images' must be a list of paths, bytes or base64 "
                               "strings")
        if images:
            out["images"] = list(images)
    return out


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """Every message checked by ``check_message``; None is no messages."""
    if messages is None:
        return []
    if not _is_list(messages):
        raise RequestError("messages must be a list of {'role': ..., 'content': ...} objects")
    return [check_message(m, i) for i, m in enumerate(messages)]
