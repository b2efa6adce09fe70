"""A scripted stand-in for the engine client, for unit tests of the REPL's logic.

It answers each call with the next scripted reply (a string, split into word-sized deltas),
records what it was sent, and honours the cancel flag between deltas. The real engine is
tested end to end elsewhere; this only makes the REPL's bookkeeping testable quickly.
"""

from __future__ import annotations

from chatcli.core.errors import ModelNotFoundError
from chatcli.core.events import ContentDelta, Done, Metrics
from chatcli.models.resolve import ResolvedModel


class ScriptedClient:
    def __init__(self, replies=(), *, models=("scripted", "other")):
        self.replies = list(replies)
        self.calls: list[dict] = []
        self.models = set(models)
        self.cancel_after: int | None = None  # set cancel after N deltas

    def resolve(self, name):
        if name not in self.models:
            raise ModelNotFoundError(f"model '{name}' not found")
        return ResolvedModel(name=name, path=__file__)  # type: ignore[arg-type]

    def chat(self, model, messages, options=None, *, format=None, think=None, cancel=None):
        self.calls.append({"model": model, "messages": [dict(m) for m in messages],
                           "options": dict(options or {}), "format": format, "think": think})
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

    def show(self, model, options=None):
        return {"name": model, "path": "/models/x.gguf", "architecture": "llama",
                "parameters": "1M", "context length": "512", "embedding length": "32",
                "quantization": "F32", "capabilities": ["completion"], "license": "MIT",
                "template": "{{ messages }}", "template_is_fallback": False, "system": "",
                "model_options": {"temperature": 0.5}}
