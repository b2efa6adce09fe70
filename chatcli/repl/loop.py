"""The interactive loop: prompt-toolkit input, slash commands, streamed answers.

One ``PromptSession`` (persistent history, completion from the command registry, key bindings
for multi-line input); one ``one_iteration`` per input. Any error while handling an input is
shown and the loop goes on; ``EOFError`` (Ctrl+D, /bye) is the one way out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings

from chatcli.core.errors import ChatCliError
from chatcli.core.paths import history_file
from chatcli.repl.commands import REGISTRY, strip_triple_quotes
from chatcli.repl.state import ReplState as ReplState  # the REPL's entry points, with run_repl
from chatcli.repl.state import Settings as Settings
from chatcli.repl.typeahead import held_keys

PLACEHOLDER = "Send a message (/? for help)"


def multiline_open(text: str) -> bool:
    """True while a \"\"\" block is still open, so Enter should insert a newline."""
    return text.count('"""') % 2 == 1


class ToggleHistory(FileHistory):
    """FileHistory that can stop writing (/set nohistory)."""

    enabled = True

    def store_string(self, string: str) -> None:
        if self.enabled:
            super().store_string(string)


def _make_history(enabled: bool) -> ToggleHistory:
    path = history_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The history holds everything typed: readable by its owner only.
    fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    history = ToggleHistory(str(path))
    history.enabled = enabled
    return history


def _key_bindings() -> KeyBindings:
    from prompt_toolkit.filters import is_searching

    kb = KeyBindings()
    # During Ctrl+R search, Enter and Ctrl+J keep their default meaning (accept the match).
    typing = ~is_searching

    @kb.add("enter", filter=typing)
    def _enter(event: Any) -> None:
        buf = event.current_buffer
        if multiline_open(buf.text):
            buf.insert_text("\n")
        else:
            buf.validate_and_handle()

    @kb.add("escape", "enter", filter=typing)
    @kb.add("c-j", filter=typing)
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    return kb


class RegistryCompleter(Completer):
    """Completion from the command registry: names, sub-commands, parameters, paths."""

    def __init__(self, state: ReplState) -> None:
        self.state = state

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterable[Completion]:
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
        found = REGISTRY.find(name)
        if found is None or found.completer is None:
            return
        word = args.rsplit(" ", 1)[-1]
        for candidate in found.completer(self.state, args):
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

    def placeholder() -> Any:
        # Hidden while Ctrl+R searching, where the buffer previews a match.
        if get_app().layout.is_searching:
            return ""
        return FormattedText([("fg:ansibrightblack", PLACEHOLDER)])

    history = state.history = _make_history(state.settings.history)
    prompt: PromptSession[str] = PromptSession(
        history=history,
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
    # Outside the prompt typed keys wait for the next prompt unechoed; the prompt's own raw
    # mode nests inside and restores this one. Ctrl+C is no signal here: prompt-toolkit leaves
    # its raw mode a few milliseconds before prompt() returns, and a SIGINT in that time is
    # lost (its handler hands it to a prompt that is already done) or comes out of prompt() as
    # a KeyboardInterrupt that looks like Ctrl+C at the prompt, and the message that was just
    # accepted is dropped without a word. As a byte it waits in the input for
    # stopped_before_sent; once prompt() has returned, _loop turns the signal back on.
    with held_keys(signals=False):
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
    Enter, or was handing the message over. The prompt's raw mode, and the REPL's mode around
    the prompt, turn Ctrl+C into a key, not a signal, so it waits behind the Enter (in
    prompt-toolkit's typeahead or still unread); it meant "stop", so the message is not sent.
    Other typed-ahead keys are kept for the next prompt. Call it once Ctrl+C is a signal again,
    so that a Ctrl+C is either read here or raises KeyboardInterrupt, never left unread."""
    from prompt_toolkit.input.typeahead import get_typeahead, store_typeahead
    from prompt_toolkit.keys import Keys

    source = prompt.app.input
    keys = get_typeahead(source)
    for _ in range(1024):  # each read takes up to 1 KB and does not wait
        more = source.read_keys()
        if not more:
            break
        keys += more
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
        messages = state.session.messages
        tail = messages[-1] if messages else None
        try:
            # Ctrl+C is a signal again (a KeyboardInterrupt, or a clean stop during an answer),
            # then whatever was typed before that is read: a Ctrl+C among it stops the message.
            with held_keys():
                if stopped_before_sent(prompt):
                    state.out.note("Stopped before it was sent; the message is in the input "
                                   "history (press Up).")
                    continue
                one_iteration(state, text)
        except EOFError:
            break
        except ChatCliError as e:
            state.out.error(str(e))
        except KeyboardInterrupt:
            _interrupted(state, text, tail)
        except Exception as e:  # don't crash the REPL; keep the conversation
            if os.environ.get("CHATCLI_DEBUG"):
                raise
            state.out.error(f"unexpected error: {type(e).__name__}: {e}")


def _interrupted(state: ReplState, text: str, tail: dict[str, Any] | None) -> None:
    """Say what a KeyboardInterrupt out of one input did; ``tail`` is the conversation's last
    message before it. Only the answer itself turns Ctrl+C into a clean stop, so this is a
    Ctrl+C between the prompt and the answer (or a second one while a model loads), or just
    after the answer."""
    if text.lstrip().startswith("/"):
        state.out.note("Interrupted.")
        return
    messages = state.session.messages
    now = messages[-1] if messages else None
    if now is not tail and now is not None and now["role"] == "assistant":
        return  # the answer had ended: nothing was stopped, as for Ctrl+C at the prompt
    if now is not tail and now is not None and now["role"] == "user":
        messages.pop()  # taken in, never answered: out again
    state.taken_back = (tail,)  # /undo then has nothing of this input to drop
    state.out.note("Stopped before it was answered; the message is not in the conversation "
                   "(press Up to edit and resend it).")
