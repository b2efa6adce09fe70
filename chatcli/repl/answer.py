"""Showing one answer: events to the renderer, with Ctrl+C turned into a clean stop.

While an answer streams, SIGINT only sets a cancel flag that the engine checks between tokens
(and llama.cpp between graph nodes), so the answer stops within a token or two and no
KeyboardInterrupt tears through the renderer. Python runs a signal handler only when the main
thread is back in Python, which during a long llama.cpp call (a batch of a pasted prompt) can
be seconds away; so the signal also wakes a small watcher thread (``signal.set_wakeup_fd``) that
sets the flag at once. A second Ctrl+C, if the first one has not been honoured yet (a model
still loading), interrupts at once. Keys typed meanwhile wait for the next prompt (typeahead).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from chatcli.core.events import ContentDelta, Done, Event, ThinkingDelta, ToolCall, Trimmed
from chatcli.repl.render import Renderer
from chatcli.repl.typeahead import held_keys


@dataclass
class Outcome:
    done: Done | None
    interrupted: bool

    @property
    def cancelled(self) -> bool:
        return self.interrupted or (self.done is not None and self.done.done_reason == "cancelled")


@contextmanager
def sigint_cancels(cancel: threading.Event) -> Iterator[None]:
    """During the block, the first Ctrl+C sets ``cancel``; a second one raises."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    presses = 0

    def handler(signum: int, frame: Any) -> None:
        nonlocal presses
        presses += 1
        cancel.set()
        if presses > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with _wake_on_sigint(cancel):
            yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _wake_on_sigint(cancel: threading.Event) -> Iterator[None]:
    """Set ``cancel`` from a watcher thread as soon as SIGINT arrives, even while the main
    thread is inside a long C call (it has released the GIL; the watcher takes it)."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except ValueError:  # not the main thread of the main interpreter
        os.close(read_end)
        os.close(write_end)
        yield
        return

    def watch() -> None:
        while True:
            data = os.read(read_end, 64)  # one byte per signal: its number
            if not data:
                return  # the write end was closed: the block is over
            if signal.SIGINT in data:
                cancel.set()

    watcher = threading.Thread(target=watch, name="chatcli-sigint", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        os.close(write_end)
        watcher.join()
        os.close(read_end)


def stream_answer(
    events: Generator[Event, None, None], out: Renderer, cancel: threading.Event, *,
    verbose: bool = False, fence: str | None = None,
) -> Outcome:
    """Render ``events`` to ``out``; returns how the answer ended. With ``fence`` (a language
    name) the answer is shown as a code block of that language (JSON answers)."""
    done: Done | None = None
    opened = False
    trimmed: Trimmed | None = None
    interrupted = False
    with held_keys(), sigint_cancels(cancel):
        out.begin()
        try:
            for event in events:
                if isinstance(event, ContentDelta):
                    if fence and not opened:
                        out.content(f"```{fence}\n")
                        opened = True
                    out.content(event.text)
                elif isinstance(event, ThinkingDelta):
                    out.thinking(event.text)
                elif isinstance(event, ToolCall):
                    out.tool_call(event.name, event.arguments)
                elif isinstance(event, Trimmed):
                    trimmed = event
                elif isinstance(event, Done):
                    done = event
        except KeyboardInterrupt:
            interrupted = True
            events.close()
        finally:
            if opened:
                out.content("\n```")
            out.end()
    outcome = Outcome(done, interrupted)
    if trimmed is not None:
        n = trimmed.dropped
        out.note(f"Dropped {n} old message{'s' if n != 1 else ''} to fit the context window "
                 "(num_ctx).")
    if outcome.cancelled:
        out.note("Stopped.")  # what it means for a conversation is the REPL's to say
    if verbose and done is not None:
        out.stats(done.metrics)
    return outcome
