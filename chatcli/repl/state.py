"""What one REPL holds between inputs, and what slash commands may touch: the session, the
display settings, the output and the files added by /read."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from chatcli.client.inputs import find_images
from chatcli.client.session import Session
from chatcli.core.errors import ChatCliError
from chatcli.core.events import Event
from chatcli.engine.cancel import CancelFlag
from chatcli.repl.answer import stream_answer
from chatcli.repl.render import Renderer


class HistorySwitch(Protocol):
    """The input history, as far as /set history and /set nohistory touch it."""

    enabled: bool


@dataclass
class Settings:
    """Display settings that /set changes."""

    verbose: bool = False
    markdown: bool = True
    wordwrap: bool = True
    hide_thinking: bool = False
    history: bool = True


def compose_message(text: str, files: list[tuple[str, str]]) -> str:
    """The user's text, with files added by /read placed before it."""
    parts = [f"Content of {name}:\n```\n{body.rstrip()}\n```" for name, body in files]
    return "\n\n".join([*parts, text]) if parts else text


class ReplState:
    """What slash commands may touch: the session, settings, output and pending files."""

    def __init__(self, session: Session, settings: Settings, *,
                 stdout: TextIO | None = None) -> None:
        self.session = session
        self.settings = settings
        self.stdout = stdout or sys.stdout
        self.pending_files: list[tuple[str, str]] = []
        self.history: HistorySwitch | None = None
        # After Ctrl+C took a question back: the conversation's tail at that moment, so that
        # /undo can tell that nothing was just added (and not drop an older exchange).
        self.taken_back: tuple[dict[str, Any] | None] | None = None
        self._out: Renderer | None = None
        self._server_names: tuple[float, list[str]] | None = None  # (when asked, names)

    @property
    def out(self) -> Renderer:
        """The renderer for answers and notes, made afresh after a display setting changed."""
        if self._out is None:
            from chatcli.repl.render import make_renderer

            self._out = make_renderer(
                markdown=self.settings.markdown,
                wordwrap=self.settings.wordwrap,
                hide_thinking=self.settings.hide_thinking,
                file=self.stdout,
            )
        return self._out

    def settings_changed(self) -> None:
        self._out = None
        if self.history is not None:
            self.history.enabled = self.settings.history

    def ask(self, text: str) -> None:
        """Send a message (with any /read files) and show the answer."""
        text, images = find_images(text)
        for path in images:
            self.out.note(f"Added image '{path}'")
        message = compose_message(text, self.pending_files)
        self.pending_files = []
        self._answer(lambda cancel: self.session.ask(message, cancel, images=images))

    def retry(self) -> None:
        """Answer the last question again."""
        self._answer(self.session.retry)

    def _answer(self, start: Callable[[CancelFlag], Generator[Event, None, None]]) -> None:
        """Stream one answer; if it was stopped, say what the conversation now holds."""
        messages = self.session.messages
        tail = messages[-1] if messages else None
        cancel = CancelFlag()
        events = start(cancel)
        try:
            outcome = stream_answer(events, self.out, cancel,
                                    verbose=self.settings.verbose, fence=self.fence())
        finally:  # also after an error: the session has taken the question back then too
            messages = self.session.messages
            kept = bool(messages) and messages[-1]["role"] == "assistant" \
                and messages[-1] is not tail
            self.taken_back = None if kept else (messages[-1] if messages else None,)
        if outcome.cancelled and kept:
            self.out.note("The partial answer is kept in the conversation (/undo drops it).")
        elif outcome.cancelled:
            self.out.note("Nothing was answered, so the question was taken back out of the "
                          "conversation (press Up to edit and resend it).")

    def fence(self) -> str | None:
        """JSON answers (format set) are shown as a highlighted JSON block when the output
        renders Markdown; a pipe or --plain gets the bare JSON."""
        from chatcli.repl.render import MarkdownRenderer

        return "json" if self.session.format and isinstance(self.out, MarkdownRenderer) else None

    def model_names(self) -> list[str]:
        """Names /model completes: the server's models when the REPL talks to one (asked at
        most every 10 s; none when it cannot be reached), else the local ones."""
        server_list = getattr(self.session.client, "list_models", None)
        if server_list is None:
            from chatcli.models.catalog import model_names

            return model_names()
        now = time.monotonic()
        if self._server_names is None or now - self._server_names[0] > 10:
            try:
                names = [m.name for m in server_list()]
            except ChatCliError:
                names = []
            self._server_names = (now, names)
        return list(self._server_names[1])

    def write_terminal(self, data: str) -> None:
        self.stdout.write(data)
        self.stdout.flush()
