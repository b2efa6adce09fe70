"""The typed events an engine yields while it answers.

The REPL's renderer, the Python API and the HTTP server all consume this one stream.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field

_ID_CHARS = string.ascii_lowercase + string.digits


def new_call_id() -> str:
    """A tool call's id in Ollama's form: ``call_`` and 8 lowercase letters or digits."""
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(8))


@dataclass(slots=True)
class ContentDelta:
    """A piece of the answer's text."""

    text: str


@dataclass(slots=True)
class ThinkingDelta:
    """A piece of the model's reasoning (thinking models only)."""

    text: str


@dataclass(slots=True)
class ToolCall:
    """A complete tool call parsed from the output."""

    name: str
    arguments: dict
    # Made once per call, so that every front end (API, /api/chat, /v1) shows the same id.
    # Not part of equality: two calls of the same function with the same arguments are the same
    # call, whichever id the parser that found them drew.
    id: str = field(default_factory=new_call_id, compare=False)


@dataclass(slots=True)
class Trimmed:
    """Old messages were dropped so the conversation fits the context window."""

    dropped: int
    kept: int


@dataclass(slots=True)
class Metrics:
    """Ollama's timing fields, all durations in nanoseconds.

    ``prompt_eval_count`` is the whole prompt's length in tokens (the seed's "number of tokens in
    the prompt"); ``prompt_cached_count`` of those came from the KV cache and were not evaluated
    again, so ``prompt_eval_duration`` covers the other ``prompt_eval_count - prompt_cached_count``.
    """

    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_cached_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


@dataclass(slots=True)
class Done:
    """The answer is complete. ``done_reason`` is "stop" or "length".

    ``context`` is the prompt's and the answer's tokens, which /api/generate hands back so that
    a client can continue from them (None when they cannot be given: a prompt with images).
    """

    done_reason: str
    metrics: Metrics = field(default_factory=Metrics)
    trimmed: int = 0
    context: list[int] | None = None


Event = ContentDelta | ThinkingDelta | ToolCall | Trimmed | Done
