"""Showing one answer: events to the renderer, with Ctrl+C turned into a clean stop.

While an answer streams, SIGINT only sets a cancel flag that the engine checks between tokens
(and llama.cpp between graph nodes), so the answer stops within a token or two, the partial text
stays on screen and in the history, and no KeyboardInterrupt tears through the renderer. A second
Ctrl+C, if the first one has not been honoured yet (a model still loading), interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .events import ContentDelta, Done, ThinkingDelta, ToolCall, Trimmed


@dataclass
class Outcome:
    done: Done | None
    interrupted: bool

    @property
    def cancelled(self) -> bool:
        return self.interrupted or (self.done is not None and self.done.done_reason == "cancelled")


@contextmanager
def sigint_cancels(cancel: threading.Event):
    """During the block, the first Ctrl+C sets ``cancel``; a second one raises."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def stream_answer(
    events: Generator, out: Any, cancel: threading.Event, *, verbose: bool = False,
    fence: str | None = None,
) -> Outcome:
    """Render ``events`` to ``out``; returns how the answer ended. With ``fence`` (a language
    name) the answer is shown as a code block of that language (JSON answers)."""
    done: Done | None = None
    opened = False
    trimmed: Trimmed | None = None
    interrupted = False
    with sigint_cancels(cancel):
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
        out.note(f"Dropped {trimmed.dropped} old messages to fit the context window (num_ctx).")
    if outcome.cancelled:
        out.note("Stopped. The partial answer is kept in the conversation (/undo drops it).")
    if verbose and done is not None:
        out.stats(done.metrics)
    return outcome
