"""From the synchronous engine to async request handlers.

Each answer runs in a worker thread that holds its model's lock (one request per model at a
time, so answers never interleave in one KV cache) and pushes the engine's events onto an
asyncio queue; a model with parallel slots (``chat serve --parallel``) pushes them there from
its own decode loop (engine/batch.py). When the client goes away, the async side sets the
cancel flag and the engine stops within a token, freeing the model for the next request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

from chatcli.client.accumulate import Accumulator
from chatcli.client.local import run_chat, with_model_system
from chatcli.core.events import Done, Event
from chatcli.core.keepalive import parse_keep_alive
from chatcli.engine.batch import END
from chatcli.engine.cancel import CancelFlag
from chatcli.engine.loaded import CACHE
from chatcli.models.resolve import resolve

_END = object()


async def load(model: str, options: Mapping[str, Any] | None, keep_alive: Any) -> str:
    """Load ``model`` (or refresh its keep_alive); returns its resolved name."""
    keep = parse_keep_alive(keep_alive)
    resolved = await asyncio.to_thread(resolve, model)
    entry = await asyncio.to_thread(CACHE.acquire, resolved, dict(options or {}))
    CACHE.release(entry, keep)
    return resolved.name


def unload(model: str) -> str:
    resolved = resolve(model)
    for entry in CACHE.loaded():
        if entry.model.path == resolved.path:
            CACHE.release_now(entry)
    return resolved.name


async def answer(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any] | None,
    *,
    keep_alive: Any = None,
    **request: Any,
) -> AsyncGenerator[Event, None]:
    """Stream the engine's events for one chat request; the final Done carries Ollama's
    total_duration and load_duration. Errors (bad model, bad option) raise before the first
    event, so the handler can still answer with a status code."""
    start = time.perf_counter_ns()
    keep = parse_keep_alive(keep_alive)
    resolved = await asyncio.to_thread(resolve, model)
    msgs = with_model_system([dict(m) for m in messages], resolved)
    entry = await asyncio.to_thread(CACHE.acquire, resolved, dict(options or {}))
    ready = time.perf_counter_ns()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = CancelFlag()

    def send(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the server's event loop is gone (shutdown): nobody listens
            cancel.set()

    if entry.batcher is not None:
        # Parallel slots: the model's decode loop hands each event straight to this event
        # loop (no thread per request in between: on a busy CPU every wake-up counts).
        released = False

        def emit(item: Any) -> None:
            nonlocal released
            if isinstance(item, Done):
                item.metrics.load_duration += ready - start
                item.metrics.total_duration = time.perf_counter_ns() - start
            if (item is END or isinstance(item, BaseException)) and not released:
                released = True
                # Not on the decode thread: releasing may unload the model (keep_alive 0),
                # which stops that very loop. The response ends once the model is released.
                last = _END if item is END else item

                def release() -> None:
                    CACHE.release(entry, keep)
                    send(last)

                threading.Thread(target=release, name="release", daemon=True).start()
                return
            send(item)

        try:
            await asyncio.to_thread(entry.batcher.submit, msgs, options, emit=emit,
                                    cancel=cancel, **request)
        except BaseException:
            if not released:
                released = True
                CACHE.release(entry, keep)
            raise
    else:
        def work() -> None:
            try:
                for event in run_chat(entry, msgs, options, start=start, ready=ready,
                                      cancel=cancel, **request):
                    send(event)
            except BaseException as e:  # handed to the async side, raised there
                send(e)
            finally:
                CACHE.release(entry, keep)
                send(_END)

        thread = threading.Thread(target=work, name=f"answer-{resolved.name}", daemon=True)
        thread.start()
    try:
        first = await queue.get()
        if isinstance(first, BaseException):
            raise first
        item = first
        while item is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
            item = await queue.get()
    finally:
        cancel.set()  # a disconnected client (or an error) frees the model within a token


async def chain(first: Event, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """``first`` (awaited before the response began), then the rest of ``events``."""
    yield first
    async for event in events:
        yield event


async def collect(first: Event, events: AsyncGenerator[Event, None]) -> Accumulator:
    """The whole answer, for a client that did not ask for a stream; ``events`` is closed
    however this ends (which stops the model's work when the client has gone)."""
    answer = Accumulator()
    try:
        async for event in chain(first, events):
            answer.add(event)
    finally:
        await events.aclose()
    return answer
