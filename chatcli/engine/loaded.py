"""The models loaded in this process, and when each one expires (``keep_alive``)."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from chatcli.engine.batch import Batcher
from chatcli.engine.decode import Engine, load
from chatcli.models.resolve import ResolvedModel

log = logging.getLogger("chatcli.engine.loaded")

# The longest single wait of an expiry timer; a longer keep_alive re-arms it. Far below
# threading.TIMEOUT_MAX on every platform (49 days on Windows), so no value can overflow it.
TIMER_STEP = 24 * 3600.0


@dataclass
class LoadedEntry:
    engine: Engine
    model: ResolvedModel
    key: tuple[str, str | None]  # cache_key(model) when loaded
    lock: threading.RLock = field(default_factory=threading.RLock)
    expires_at: float | None = None  # monotonic seconds; None = never
    users: int = 0
    timer: threading.Timer | None = None
    # keep_alive 0 asked for while the model was busy: unload when its last user is done.
    unload_when_idle: bool = False
    # With parallel slots (chat serve --parallel N > 1): the decode loop that answers them.
    batcher: Batcher | None = None


def cache_key(model: ResolvedModel) -> tuple[str, str | None]:
    """What identifies a loaded engine: the model file and its vision projector. The projector
    is loaded into the engine, so a request with another one needs an engine of its own."""
    return str(model.path), None if model.projector is None else str(model.projector)


class ModelCache:
    """Engines keyed by model file and projector; unloaded when their keep_alive runs out."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str | None], LoadedEntry] = {}
        self._lock = threading.Lock()
        # Requests each model answers at once (chat serve --parallel); set before loading.
        self.parallel = 1

    def acquire(self, model: ResolvedModel, options: dict[str, Any] | None) -> LoadedEntry:
        """The loaded entry for ``model`` (loading it if needed), marked in use."""
        key = cache_key(model)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                engine = load(model.path, name=model.name, model_options=model.options,
                              options=options, projector=model.projector,
                              parallel=self.parallel)
                entry = LoadedEntry(engine=engine, model=model, key=key)
                if engine.parallel > 1:
                    entry.batcher = Batcher(engine, entry.lock)
                self._entries[key] = entry
            entry.users += 1
            entry.unload_when_idle = False  # a later request's keep_alive decides now
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
            return entry

    def release(self, entry: LoadedEntry, keep_alive: float | None) -> None:
        """The caller is done with ``entry``; schedule its unload after ``keep_alive``.

        While others still use it, a keep_alive of 0 is remembered rather than lost: the model
        is unloaded when the last of them is done (unless a request that came later asks
        otherwise), as Ollama does.
        """
        with self._lock:
            entry.users -= 1
            zero = keep_alive is not None and keep_alive == 0  # negative means forever
            if entry.users > 0:
                entry.unload_when_idle |= zero
                return
            if entry.unload_when_idle:
                self._unload_locked(entry)
                return
            if keep_alive is None or math.isnan(keep_alive) or math.isinf(keep_alive):
                entry.expires_at = None  # forever (parse_keep_alive never gives NaN)
                return
            if keep_alive <= 0:
                self._unload_locked(entry)
                return
            entry.expires_at = time.monotonic() + keep_alive
            self._arm_locked(entry)

    def _arm_locked(self, entry: LoadedEntry) -> None:
        """Start the timer that unloads ``entry`` at ``expires_at`` (in steps of at most
        TIMER_STEP, so that any deadline is a valid timeout)."""
        assert entry.expires_at is not None
        delay = min(max(entry.expires_at - time.monotonic(), 0.0), TIMER_STEP)
        entry.timer = threading.Timer(delay, self._expire, args=(entry,))
        entry.timer.daemon = True
        entry.timer.start()

    def release_now(self, entry: LoadedEntry) -> None:
        """Unload ``entry`` as soon as nobody uses it (keep_alive 0)."""
        with self._lock:
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
            if entry.users == 0:
                self._unload_locked(entry)
            else:
                entry.expires_at = time.monotonic()
                entry.unload_when_idle = True  # the busy request's own keep_alive is overruled

    def _expire(self, entry: LoadedEntry) -> None:
        with self._lock:
            if entry.users > 0 or entry.expires_at is None \
                    or self._entries.get(entry.key) is not entry:
                return  # in use again, kept forever, or already unloaded
            try:
                if entry.expires_at <= time.monotonic() + 0.01:
                    self._unload_locked(entry)
                else:
                    self._arm_locked(entry)  # a keep_alive longer than one step
            except Exception:  # a timer thread has nobody to report to: log, never die
                log.exception("unloading %s after its keep_alive failed", entry.model.name)

    def _unload_locked(self, entry: LoadedEntry) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        if entry.batcher is not None:
            entry.batcher.close()  # its decode thread ends (nobody uses the model now)
        with entry.lock:
            entry.engine.close()

    def loaded(self) -> list[LoadedEntry]:
        with self._lock:
            return list(self._entries.values())

    def unload_all(self) -> None:
        with self._lock:
            for entry in list(self._entries.values()):
                if entry.timer is not None:
                    entry.timer.cancel()
                self._unload_locked(entry)


CACHE = ModelCache()
