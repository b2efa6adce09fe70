"""Showing ``pull`` progress events: a rich bar per layer on a terminal, plain lines otherwise.

The events are Ollama's ``/api/pull`` objects (``{"status", "digest", "total", "completed"}``),
so the same stream feeds this printer and the HTTP server.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_printer(terminal: bool) -> Iterator[Callable[[dict], None]]:
    if not terminal:
        yield _plain()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(file=sys.stderr)
    tasks: dict[str, TaskID] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                  transient=False) as progress:

        def show(event: dict) -> None:
            digest = event.get("digest")
            if digest and "total" in event:
                if digest not in tasks:
                    tasks[digest] = progress.add_task(event["status"], total=event["total"])
                progress.update(tasks[digest], completed=event.get("completed", 0))
            elif event.get("status") != "success":
                progress.console.print(event.get("status", ""))

        yield show
    console.print("success")


def _plain() -> Callable[[dict], None]:
    """One line per status change; no bars, no escape codes."""
    last = {"status": None}

    def show(event: dict) -> None:
        status = event.get("status", "")
        if status == last["status"]:
            return
        last["status"] = status
        print(status, file=sys.stderr, flush=True)

    return show
