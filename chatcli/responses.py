"""Response and message types shaped like the ``ollama`` client's.

Every field can be read as an attribute or an item (``response.message.content`` and
``response['message']['content']``), and a ``Message`` can be appended to a messages list and
sent back in the next ``chat()`` call, exactly as the seed's multi-turn example does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class _Subscriptable:
    """Item access, ``get``, ``in`` and ``keys`` over a dataclass's fields."""

    def __getitem__(self, key: str) -> Any:
        if key in self._names():
            return getattr(self, key)
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self._names():
            raise KeyError(key)
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return key in self._names() and getattr(self, key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None) if key in self._names() else None
        return default if value is None else value

    def keys(self) -> Iterator[str]:
        return (k for k in self._names() if getattr(self, k) is not None)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return ((k, getattr(self, k)) for k in self.keys())

    def model_dump(self, exclude_none: bool = True) -> dict[str, Any]:
        """A plain dict (JSON-ready), like pydantic's ``model_dump``."""
        data = asdict(self)  # type: ignore[call-overload]
        return _drop_none(data) if exclude_none else data

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        cached = cls.__dict__.get("_field_names")
        if cached is None:
            cached = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
            cls._field_names = cached  # type: ignore[attr-defined]
        return cached


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


@dataclass
class ToolCallFunction(_Subscriptable):
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    # Ollama's: the call's position among this answer's tool calls (0, 1, ...).
    index: int | None = None


@dataclass
class ToolCallRecord(_Subscriptable):
    function: ToolCallFunction
    id: str | None = None  # Ollama's form: "call_" and 8 lowercase letters or digits


@dataclass
class Message(_Subscriptable):
    """One chat message: the seed's message object."""

    role: str
    content: str | None = None
    thinking: str | None = None
    images: list[Any] | None = None
    tool_calls: list[ToolCallRecord] | None = None
    tool_name: str | None = None


@dataclass
class ChatResponse(_Subscriptable):
    """One response (``stream=False``) or one streamed chunk (``stream=True``)."""

    model: str
    created_at: str
    message: Message
    done: bool = False
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None  # the whole prompt, cached tokens included
    # chatcli's addition: how many of the prompt's tokens came from the KV cache.
    prompt_cached_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    # chatcli's addition: how many old messages were dropped to fit num_ctx (final chunk).
    trimmed: int | None = None


@dataclass
class EmbedResponse(_Subscriptable):
    """The ``ollama`` client's EmbedResponse: one vector per input, durations in nanoseconds.

    Fields read as attributes or items (``response.embeddings``, ``response['embeddings']``).
    """

    model: str
    embeddings: list[list[float]]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
