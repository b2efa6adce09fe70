"""The typed events an engine yields while it answers.

The REPL's renderer, the Python API and the HTTP server all consume this one stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass(slots=True)
class Trimmed:
    """Old messages were dropped so the conversation fits the context window."""

    dropped: int
    kept: int


@dataclass(slots=True)
class Metrics:
    """Ollama's timing fields, all durations in nanoseconds."""

    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


@dataclass(slots=True)
class Done:
    """The answer is complete. ``done_reason`` is "stop" or "length"."""

    done_reason: str
    metrics: Metrics = field(default_factory=Metrics)
    trimmed: int = 0


Event = ContentDelta | ThinkingDelta | ToolCall | Trimmed | Done
