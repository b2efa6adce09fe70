"""Where answers come from, for the REPL: models loaded in this process.

A client turns (model name, messages, options) into the engine's event stream. The REPL only
talks to a client, so a remote server can stand in for the local engine.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from chatcli.client.interface import ChatClient
from chatcli.core.errors import ChatCliError
from chatcli.core.events import Done, Event
from chatcli.engine.loaded import CACHE
from chatcli.engine.output.plan import capabilities
from chatcli.models.gguf import read_gguf
from chatcli.models.modelinfo import describe
from chatcli.models.resolve import ResolvedModel, resolve


def with_model_system(messages: list[dict[str, Any]], model: ResolvedModel) -> list[dict[str, Any]]:
    """Prepend what the model brings: its MESSAGE lines, and its SYSTEM prompt unless the
    caller gave one."""
    has_system = any(m.get("role") == "system" for m in messages)
    prefix = [{"role": "system", "content": model.system}] if model.system and not has_system \
        else []
    if model.messages:
        system = [m for m in messages[:1] if m.get("role") == "system"]
        rest = messages[len(system):]
        return [*prefix, *system, *model.messages, *rest]
    return [*prefix, *messages]


def run_chat(entry: Any, messages: Any, options: Any, *, start: int, ready: int,
             **request: Any) -> Iterator[Event]:
    """One request's events from a loaded model, under its lock (answers never interleave in
    one KV cache); the final Done gets Ollama's load_duration (time to get the model ready in
    this request) and total_duration. A model loaded with parallel slots answers beside the
    other requests (engine.batch) instead of taking the lock."""
    if entry.batcher is not None:
        events = entry.batcher.chat(messages, options, **request)
    else:
        events = _locked(entry, entry.engine.chat(messages, options, **request))
    try:
        for event in events:
            if isinstance(event, Done):
                event.metrics.load_duration += ready - start
                event.metrics.total_duration = time.perf_counter_ns() - start
            yield event
    finally:
        events.close()  # now, not when collected: the lock (or the slot) is freed at once


def _locked(entry: Any, events: Iterator[Event]) -> Generator[Event, None, None]:
    with entry.lock:
        yield from events


class _Saves:
    """KV-cache saves running in the background; joined before the process exits."""

    def __init__(self) -> None:
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._registered = False

    def start(self, entry: Any) -> None:
        def save() -> None:
            try:
                with entry.lock:
                    entry.engine.save_state()
            except Exception:  # a cache that is not written is only a cache
                pass
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=save, name="save-state", daemon=True)
        with self._lock:
            if not self._registered:
                atexit.register(self.wait)
                self._registered = True
            self._threads.add(thread)
        thread.start()

    def wait(self, timeout: float = 60.0) -> None:
        """Wait for the saves under way (at exit: a state is never left half-made)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = list(self._threads)
            if not pending:
                return
            for thread in pending:
                thread.join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return


_SAVES = _Saves()


def wait_for_saves() -> None:
    """Wait for background KV-cache saves (``LocalClient.save_state(background=True)``)."""
    _SAVES.wait()


class LocalClient(ChatClient):
    """Runs models in-process; they stay loaded for the life of the REPL."""

    def resolve(self, name: str) -> ResolvedModel:
        """The model ``name`` stands for (store, bundled model, Ollama's, or a .gguf path)."""
        return resolve(name)

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
        """Load ``model`` (or reuse it, loaded) and stream its answer's events."""
        start = time.perf_counter_ns()
        resolved = resolve(model)
        if projector is not None:
            resolved.projector = projector
        msgs = with_model_system([dict(m) for m in messages], resolved)
        entry = CACHE.acquire(resolved, dict(options or {}))
        try:
            yield from run_chat(entry, msgs, options, start=start, ready=time.perf_counter_ns(),
                                format=format, think=think, tools=tools, cancel=cancel)
        finally:
            CACHE.release(entry, None)

    def save_state(self, model: str, *, background: bool = False) -> bool:
        """Save the KV cache of ``model``'s loaded engine to the state store (engine.states);
        nothing when the model is not loaded. The next process that resumes the conversation
        restores it instead of reading the history again.

        With ``background`` (after each answer in the REPL) the save runs on a thread that
        holds the model's lock, so the prompt comes back at once (a 3,000-token cache takes
        ~0.35 s to copy and write) and the next answer waits only if it comes sooner; the
        process waits for it before exiting. Returns whether a save was made (or started)."""
        try:
            path = str(resolve(model).path)
        except ChatCliError:
            return False
        entries = [e for e in CACHE.loaded() if e.key[0] == path]
        if background:
            for entry in entries:
                _SAVES.start(entry)
            return bool(entries)
        saved = False
        for entry in entries:
            with entry.lock:  # never while an answer is being written into the cache
                saved = entry.engine.save_state() or saved
        return saved

    def show(self, model: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Model facts for /show, read from the GGUF header (nothing is loaded)."""
        from chatcli.engine.template import CHATML_TEMPLATE

        resolved = resolve(model)
        header = read_gguf(resolved.path)
        info = describe(header)
        info["capabilities"] = capabilities(header, resolved.projector)
        template = info.pop("chat_template")
        info.update(
            name=resolved.name,
            path=str(resolved.path),
            template=template or CHATML_TEMPLATE,
            template_is_fallback=not template,
            system=resolved.system or "",
            license=resolved.license or info.pop("gguf_license"),
            model_options=dict(resolved.options),
        )
        return info
