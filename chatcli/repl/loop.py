"""The interactive loop: prompt-toolkit input, slash commands, streamed answers.

One ``PromptSession`` (persistent history, completion from the command registry, key bindings
for multi-line input); one ``one_iteration`` per input. Any error while handling an input is
shown and the loop goes on; ``EOFError`` (Ctrl+D, /bye) is the one way out.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prompt_toolkit.completion import Completer, Completion

from chatcli.core.errors import ChatCliError
from chatcli.core.paths import history_file
from chatcli.engine.cancel import CancelFlag
from chatcli.repl.answer import stream_answer
from chatcli.repl.commands import REGISTRY, strip_triple_quotes
from chatcli.repl.typeahead import held_keys

PLACEHOLDER = "Send a message (/? for help)"


@dataclass
class Settings:
    """Display settings that /set changes."""

    verbose: bool = False
    markdown: bool = True
    wordwrap: bool = True
    hide_thinking: bool = False
    history: bool = True


def multiline_open(text: str) -> bool:
    """True while a \"\"\" block is still open, so Enter should insert a newline."""
    return text.count('"""') % 2 == 1


MAX_IMAGES = 32  # image paths looked at in one message (each costs a stat)


def find_images(text: str) -> tuple[str, list[str]]:
    """Image files named in a message (as `ollama run` attaches them): the text without those
    paths, and the paths."""
    import shlex

    from chatcli.core.images import IMAGE_SUFFIXES

    lower = text.lower()
    if not any(suffix in lower for suffix in IMAGE_SUFFIXES):
        return text, []  # the common case, and cheap for a huge paste (shlex is ~1 s per MB)
    try:
        # Quoted paths with spaces need shlex; past a typed message's size, whitespace will do.
        words = shlex.split(text, posix=True) if len(text) < 100_000 else text.split()
    except ValueError:
        words = text.split()
    named = dict.fromkeys(w for w in words if w.lower().endswith(IMAGE_SUFFIXES))
    paths = [w for w in list(named)[:MAX_IMAGES] if Path(w).expanduser().is_file()]
    for path in paths:
        for form in (f"'{path}'", f'"{path}"', path):
            text = text.replace(form, "", 1) if form in text else text
    return " ".join(text.split()) if paths else text, paths


def compose_message(text: str, files: list[tuple[str, str]]) -> str:
    """The user's text, with files added by /read placed before it."""
    parts = [f"Content of {name}:\n```\n{body.rstrip()}\n```" for name, body in files]
    return "\n\n".join([*parts, text]) if parts else text


class ReplState:
    """What slash commands may touch: the session, settings, output and pending files."""

    def __init__(self, session: Any, settings: Settings, *, stdout=None) -> None:
        self.session = session
        self.settings = settings
        self.stdout = stdout or sys.stdout
        self.pending_files: list[tuple[str, str]] = []
        self.history: Any = None
        # After Ctrl+C took a question back: the conversation's tail at that moment, so that
        # /undo can tell that nothing was just added (and not drop an older exchange).
        self.taken_back: tuple[Any] | None = None
        self._out = None

    @property
    def out(self):
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

    def _answer(self, start) -> None:
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
        from chatcli.models.catalog import model_names

        return model_names()

    def write_terminal(self, data: str) -> None:
        self.stdout.write(data)
        self.stdout.flush()


def _make_history(enabled: bool):
    from prompt_toolkit.history import FileHistory

    class ToggleHistory(FileHistory):
        """FileHistory that can stop writing (/set nohistory)."""

        enabled = True

        def store_string(self, string: str) -> None:
            if self.enabled:
                super().store_string(string)

    path = history_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The history holds everything typed: readable by its owner only.
    fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    history = ToggleHistory(str(path))
    history.enabled = enabled
    return history


def _key_bindings():
    from prompt_toolkit.filters import is_searching
    from prompt_toolkit.key_binding import KeyBindings

    kb = KeyBindings()
    # During Ctrl+R search, Enter and Ctrl+J keep their default meaning (accept the match).
    typing = ~is_searching

    @kb.add("enter", filter=typing)
    def _enter(event) -> None:
        buf = event.current_buffer
        if multiline_open(buf.text):
            buf.insert_text("\n")
        else:
            buf.validate_and_handle()

    @kb.add("escape", "enter", filter=typing)
    @kb.add("c-j", filter=typing)
    def _newline(event) -> None:
        event.current_buffer.insert_text("\n")

    return kb


class RegistryCompleter(Completer):
    """Completion from the command registry: names, sub-commands, parameters, paths."""

    def __init__(self, state: ReplState) -> None:
        self.state = state

    def get_completions(self, document, complete_event):
        text = document.text_before_cursor
        if not text.startswith("/") or "\n" in text:
            return
        name, sep, args = text.partition(" ")
        if not sep:
            for cmd in REGISTRY:
                if cmd.hidden:
                    continue
                for n in cmd.names:
                    if n.startswith(name):
                        yield Completion(n, start_position=-len(name), display_meta=cmd.help)
            return
        cmd = REGISTRY.find(name)
        if cmd is None or cmd.completer is None:
            return
        word = args.rsplit(" ", 1)[-1]
        for candidate in cmd.completer(self.state, args):
            # Candidates replace the current word (the last space-separated one).
            tail = candidate.rsplit(" ", 1)[-1]
            yield Completion(tail, start_position=-len(word))


def one_iteration(state: ReplState, text: str) -> None:
    """Handle one input: a slash command or a message."""
    if not text.strip():
        return
    if text.lstrip().startswith("/"):
        REGISTRY.dispatch(state, text.strip())
        return
    state.ask(strip_triple_quotes(text))


def run_repl(state: ReplState) -> None:
    """Read and answer until Ctrl+D or /bye."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.application import get_app
    from prompt_toolkit.formatted_text import FormattedText

    def placeholder():
        # Hidden while Ctrl+R searching, where the buffer previews a match.
        if get_app().layout.is_searching:
            return ""
        return FormattedText([("fg:ansibrightblack", PLACEHOLDER)])

    state.history = _make_history(state.settings.history)
    prompt = PromptSession(
        history=state.history,
        completer=RegistryCompleter(state),
        complete_while_typing=False,
        key_bindings=_key_bindings(),
        multiline=True,
        # "... " marks a real new line; soft-wrapped lines get no marker.
        prompt_continuation=lambda width, line, wrap: "" if wrap else "... ",
        placeholder=placeholder,
        enable_history_search=False,
    )
    _keep_scrollback(prompt.app.output)
    # Outside the prompt (answers, commands, model loading) typed keys wait for the next
    # prompt unechoed; the prompt's own raw mode nests inside and restores this one.
    with held_keys():
        _loop(state, prompt)


def _keep_scrollback(output: Any) -> None:
    """prompt-toolkit erases below the prompt with ESC [ J; at the top-left corner (the first
    prompt of a fresh tmux pane, or after `clear`) tmux pushes the screen into its scrollback
    first, which left the typed line there twice. Erase the same cells another way."""
    from prompt_toolkit.output.vt100 import Vt100_Output

    from chatcli.repl.render import ERASE_DOWN

    if isinstance(output, Vt100_Output):
        output.erase_down = lambda: output.write_raw(ERASE_DOWN)  # type: ignore[method-assign]


def stopped_before_sent(prompt: Any) -> bool:
    """Whether a Ctrl+C was typed while the prompt was still taking in a long paste and its
    Enter. The prompt's raw mode turns Ctrl+C into a key, not a signal, so it waits behind the
    Enter (in prompt-toolkit's typeahead or still unread); it meant "stop", so the message is
    not sent. Other typed-ahead keys are kept for the next prompt."""
    from prompt_toolkit.input.typeahead import get_typeahead, store_typeahead
    from prompt_toolkit.keys import Keys

    source = prompt.app.input
    keys = get_typeahead(source) + source.read_keys()  # read_keys does not wait
    stops = [i for i, key in enumerate(keys) if key.key == Keys.ControlC]
    store_typeahead(source, keys[stops[-1] + 1:] if stops else keys)
    return bool(stops)


def _loop(state: ReplState, prompt: Any) -> None:
    while True:
        try:
            text = prompt.prompt(">>> ")
        except KeyboardInterrupt:
            continue  # Ctrl+C at the prompt clears the line
        except EOFError:
            break
        if stopped_before_sent(prompt):
            state.out.note("Stopped before it was sent; the message is in the input history "
                           "(press Up).")
            continue
        try:
            one_iteration(state, text)
        except EOFError:
            break
        except ChatCliError as e:
            state.out.error(str(e))
        except KeyboardInterrupt:
            state.out.note("Interrupted.")
        except Exception as e:  # don't crash the REPL; keep the conversation
            if os.environ.get("CHATCLI_DEBUG"):
                raise
            state.out.error(f"unexpected error: {type(e).__name__}: {e}")
