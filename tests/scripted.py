"""A scripted stand-in for the engine client, for unit tests of the REPL's logic.

It answers each call with the next scripted reply (a string, split into word-sized deltas),
records what it was sent, and honours the cancel flag between deltas. The real engine is
tested end to end elsewhere; this only makes the REPL's bookkeeping testable quickly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from chatcli.client.interface import ChatClient
from chatcli.core.errors import ModelNotFoundError
from chatcli.core.events import ContentDelta, Done, Event, Metrics
from chatcli.models.resolve import ResolvedModel


class ScriptedClient(ChatClient):
    """Subclasses the interface (as llm's MockModel does), so mypy catches any drift."""

    def __init__(self, replies: Iterable[str | Exception] = (), *,
                 models: Iterable[str] = ("scripted", "other")) -> None:
        self.replies = list(replies)
        self.calls: list[dict[str, Any]] = []
        self.models = set(models)
        self.cancel_after: int | None = None  # set cancel after N deltas

    def resolve(self, name: str) -> ResolvedModel:
        if name not in self.models:
            raise ModelNotFoundError(f"model '{name}' not found")
        return ResolvedModel(name=name, path=Path(__file__))

    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
        *,
        format: Any = None,
        think: Any = None,
        tools: Any = None,
        cancel: threading.Event | None = None,
        projector: Path | None = None,
    ) -> Iterator[Event]:
        self.calls.append({"model": model, "messages": [dict(m) for m in messages],
                           "options": dict(options or {}), "format": format, "think": think,
                           "tools": tools, "projector": projector})
        reply = self.replies.pop(0) if self.replies else "ok"
        if isinstance(reply, Exception):
            raise reply
        words = reply.split(" ")
        for i, word in enumerate(words):
            if cancel is not None and cancel.is_set():
                yield Done("cancelled", Metrics(eval_count=i))
                return
            yield ContentDelta(word if i == 0 else " " + word)
            if self.cancel_after is not None and i + 1 >= self.cancel_after and cancel:
                cancel.set()
        yield Done("stop", Metrics(total_duration=10, load_duration=1, prompt_eval_count=3,
                                   prompt_eval_duration=2, eval_count=len(words),
                                   eval_duration=5))

    def save_state(self, model: str, *, background: bool = False) -> bool:
        return False

    def show(self, model: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {"name": model, "path": "/models/x.gguf", "architecture": "llama",
                "parameters": "1M", "context length": "512", "embedding length": "32",
                "quantization": "F32", "capabilities": ["completion"], "license": "MIT",
                "template": "{{ messages }}", "template_is_fallback": False, "system": "",
                "model_options": {"temperature": 0.5}}
