"""The REPL's slash commands. Each is registered once, with the metadata that /help and tab
completion are generated from. Handlers get the REPL state and the argument text."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chatcli.client.inputs import load_format
from chatcli.core import options as opts_mod
from chatcli.core.errors import ChatCliError
from chatcli.core.fileio import NoSuchDirectoryError
from chatcli.repl.registry import ArgCompleter, CommandError, Registry
from chatcli.repl.state import ReplState

REGISTRY = Registry()
command = REGISTRY.command


def counted(n: int, noun: str) -> str:
    """'1 message', '2 messages': a count with its noun in the right number."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# -- completers ----------------------------------------------------------------------------


def path_candidates(word: str) -> list[str]:
    """File names completing ``word`` (directories end with '/')."""
    expanded = os.path.expanduser(word)
    directory, prefix = os.path.split(expanded)
    try:
        names = sorted(os.listdir(directory or "."))
    except OSError:
        return []
    shown_dir = word[: len(word) - len(prefix)]
    out = []
    for name in names:
        if name.startswith(prefix) and (prefix.startswith(".") or not name.startswith(".")):
            full = os.path.join(directory or ".", name)
            out.append(shown_dir + name + ("/" if os.path.isdir(full) else ""))
    return out


def complete_path(state: ReplState, args: str) -> Iterable[str]:
    return path_candidates(args)


def complete_subcommand(subcommands: Iterable[str],
                        then: dict[str, ArgCompleter] | None = None) -> ArgCompleter:
    """Complete the first word from ``subcommands``; hand later words to ``then[sub]``."""
    subs = list(subcommands)

    def complete(state: ReplState, args: str) -> Iterable[str]:
        first, sep, rest = args.partition(" ")
        if not sep:
            return [s for s in subs if s.startswith(first)]
        nxt = (then or {}).get(first)
        return nxt(state, rest) if nxt else []

    return complete


def complete_parameter(state: ReplState, args: str) -> Iterable[str]:
    name, sep, _ = args.partition(" ")
    return [] if sep else [n for n in opts_mod.SPECS if n.startswith(name)]


def complete_model(state: ReplState, args: str) -> Iterable[str]:
    return [n for n in state.model_names() if n.startswith(args)] + path_candidates(args)


def complete_command(state: ReplState, args: str) -> Iterable[str]:
    return [n.lstrip("/") for n in REGISTRY.all_names() if n.lstrip("/").startswith(args)]


# -- /set ----------------------------------------------------------------------------------

SET_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "system": ('/set system TEXT', 'set the system prompt (""" for several lines)'),
    "parameter": ("/set parameter NAME VALUE", "set an option, e.g. temperature 0.2"),
    "verbose": ("/set verbose", "show timings after each answer"),
    "quiet": ("/set quiet", "hide timings"),
    "format": ("/set format json|SCHEMA_FILE", "ask for JSON answers"),
    "noformat": ("/set noformat", "free-form answers"),
    "think": ("/set think", "let a thinking model reason first"),
    "nothink": ("/set nothink", "ask a thinking model not to reason"),
    "hidethinking": ("/set hidethinking", "do not show the model's reasoning"),
    "showthinking": ("/set showthinking", "show the model's reasoning"),
    "wordwrap": ("/set wordwrap", "wrap plain text at word boundaries"),
    "nowordwrap": ("/set nowordwrap", "do not wrap plain text"),
    "history": ("/set history", "save what you type to the input history"),
    "nohistory": ("/set nohistory", "stop saving input history"),
    "markdown": ("/set markdown", "render answers as Markdown"),
    "plain": ("/set plain", "print answers as raw text"),
}

_FLAGS = {
    "verbose": ("verbose", True), "quiet": ("verbose", False),
    "hidethinking": ("hide_thinking", True), "showthinking": ("hide_thinking", False),
    "wordwrap": ("wordwrap", True), "nowordwrap": ("wordwrap", False),
    "history": ("history", True), "nohistory": ("history", False),
    "markdown": ("markdown", True), "plain": ("markdown", False),
}


def strip_triple_quotes(text: str) -> str:
    """'\"\"\"a\\nb\"\"\"' -> 'a\\nb' (ollama's multi-line syntax); other text unchanged."""
    t = text.strip()
    if t.startswith('"""'):
        t = t[3:]
        if t.endswith('"""'):
            t = t[:-3]
        return t.strip("\n")
    return text


@command(
    "/set", "/set SETTING [VALUE]", "change the system prompt, an option or a display setting",
    subcommands=SET_SUBCOMMANDS,
    completer=complete_subcommand(SET_SUBCOMMANDS, {"parameter": complete_parameter,
                                                    "format": lambda s, a: [
                                                        c for c in ["json"] if c.startswith(a)
                                                    ] + path_candidates(a)}),
)
def cmd_set(state: ReplState, args: str) -> None:
    sub, _, rest = args.partition(" ")
    rest = rest.strip()
    if sub == "system":
        text = strip_triple_quotes(rest)
        state.session.set_system(text)
        state.out.info("Set system message." if text else "Cleared system message.")
    elif sub == "parameter":
        name, _, value = rest.partition(" ")
        if not name or not value.strip():
            raise CommandError("usage: /set parameter NAME VALUE  (names: /show parameters)")
        parsed = opts_mod.parse_value(name, value)
        state.session.set_option(name, parsed)
        state.out.info(f"Set parameter '{name}' to '{_show_value(parsed)}'")
    elif sub == "format":
        if not rest:
            raise CommandError("usage: /set format json|SCHEMA_FILE")
        state.session.format = load_format(rest)
        state.out.info("Set format to JSON." if rest == "json" else f"Set format to schema {rest}.")
    elif sub == "noformat":
        state.session.format = None
        state.out.info("Disabled format.")
    elif sub in ("think", "nothink"):
        state.session.think = sub == "think"
        state.out.info("Set 'think' mode." if sub == "think" else "Set 'nothink' mode.")
    elif sub in _FLAGS:
        attr, flag = _FLAGS[sub]
        setattr(state.settings, attr, flag)
        state.settings_changed()
        state.out.info(f"Set '{sub}' mode.")
    else:
        raise CommandError(
            f"unknown setting '{sub}'; try: {', '.join(SET_SUBCOMMANDS)}" if sub
            else "usage: /set SETTING [VALUE]; /help set lists the settings"
        )


def _show_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list) else str(value)


# -- /show ---------------------------------------------------------------------------------

SHOW_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("/show info", "the model's architecture, size, context and capabilities"),
    "parameters": ("/show parameters", "options in effect (model defaults and yours)"),
    "system": ("/show system", "the system prompt"),
    "template": ("/show template", "the model's chat template"),
    "license": ("/show license", "the model's license"),
    "modelfile": ("/show modelfile", "a Modelfile that recreates this setup"),
}


@command("/show", "/show WHAT", "show model and session information",
         subcommands=SHOW_SUBCOMMANDS, completer=complete_subcommand(SHOW_SUBCOMMANDS))
def cmd_show(state: ReplState, args: str) -> None:
    what = args.strip()
    session = state.session
    if what not in SHOW_SUBCOMMANDS:
        raise CommandError(f"usage: /show {'|'.join(SHOW_SUBCOMMANDS)}")
    if what == "system":
        state.out.info(session.system or _model_info(state).get("system") or "No system message.")
        return
    if what == "parameters":
        state.out.info(_parameters_text(state))
        return
    info = _model_info(state)
    if what == "info":
        from chatcli.models.modelinfo import file_lines, model_lines

        show_verbatim(state, "\n".join(model_lines(info) + file_lines(info)))
    elif what == "template":
        fallback = info["template_is_fallback"]
        note = "  (no template in the model: ChatML is used)\n" if fallback else ""
        show_verbatim(state, note + info["template"])
    elif what == "license":
        state.out.info(info.get("license") or "No license information in this model.")
    elif what == "modelfile":
        show_verbatim(state, _modelfile(state, info))


def show_verbatim(state: ReplState, text: str) -> None:
    """Print ``text`` exactly, never word-wrapped: a Modelfile, a template or a path is copied
    from the screen and must still work (``FROM`` and its path on one line)."""
    state.out.end()  # begin at the start of a line, styles reset
    state.write_terminal(text if text.endswith("\n") else text + "\n")


def _model_info(state: ReplState) -> dict[str, Any]:
    return state.session.client.show(state.session.model, state.session.options)


def _parameters_text(state: ReplState) -> str:
    session = state.session
    try:
        model_opts = _model_info(state).get("model_options", {})
    except ChatCliError:
        model_opts = {}
    lines = []
    if model_opts:
        lines.append("Model defaults:")
        lines += [f"  {k:<20}{_show_value(v)}" for k, v in model_opts.items()]
    if session.options:
        lines.append("Set in this session:")
        lines += [f"  {k:<20}{_show_value(v)}" for k, v in session.options.items()]
    if not lines:
        lines.append("No parameters set; built-in defaults apply.")
    lines.append("")
    lines.append("Available: " + ", ".join(opts_mod.SPECS))
    return "\n".join(lines)


def _modelfile(state: ReplState, info: dict[str, Any]) -> str:
    """A Modelfile that recreates this setup: the model, with this session's system prompt and
    options over its own."""
    from chatcli.models.modelfile import Modelfile, render

    session = state.session
    modelfile = Modelfile(
        base=info["path"],
        template=None if info["template_is_fallback"] else info["template"],
        system=session.system or info.get("system"),
        parameters={**info.get("model_options", {}), **session.options},
        licenses=[info["license"]] if info.get("license") else [],
    )
    return render(modelfile, '# Modelfile generated by "/show modelfile"')


# -- conversation --------------------------------------------------------------------------


@command("/save", "/save FILE", "save the conversation (messages, model, options) as JSON",
         completer=complete_path)
def cmd_save(state: ReplState, args: str) -> None:
    if not args:
        raise CommandError("usage: /save FILE")
    path = Path(args).expanduser()
    try:
        state.session.save(path)
    except NoSuchDirectoryError as e:
        raise CommandError(f"cannot save to {path}: {e}") from None
    except OSError as e:
        raise CommandError(f"cannot save to {path}: {e.strerror or e}") from None
    n = sum(1 for m in state.session.messages if m["role"] != "system")
    state.out.info(f"Saved {counted(n, 'message')} to {path}")


@command("/load", "/load FILE", "replace the conversation with a saved one",
         completer=complete_path)
def cmd_load(state: ReplState, args: str) -> None:
    if not args:
        raise CommandError("usage: /load FILE")
    conv = state.session.load(Path(args).expanduser())
    n = sum(1 for m in conv.messages if m["role"] != "system")
    state.out.info(f"Loaded {counted(n, 'message')} from {args} (model {state.session.model})")


def _log(state: ReplState) -> Any:
    """The conversation log this REPL records into (or the default one when logging is off)."""
    from chatcli.client.log import Log, Recorder

    recorder = state.session.recorder
    return recorder.log if isinstance(recorder, Recorder) else Log()


@command("/history", "/history", "list recent conversations from the log (see /resume)")
def cmd_history(state: ReplState, args: str) -> None:
    from chatcli.client.log import Recorder

    summaries = _log(state).recent(20)
    if not summaries:
        state.out.info("No conversations logged yet.")
        return
    recorder = state.session.recorder
    current = recorder.conversation_id if isinstance(recorder, Recorder) else None
    lines = []
    for s in summaries:
        mark = "*" if s.id == current else " "
        lines.append(f"{mark} {s.id}  {s.updated[:16].replace('T', ' ')}  {s.model:<20} "
                     f"{counted(s.turns, 'turn'):>9}  {s.first_words}")
    state.out.info("\n".join(lines) + "\n/resume ID continues one.")


@command("/resume", "/resume ID", "continue a logged conversation (ids: /history)")
def cmd_resume(state: ReplState, args: str) -> None:
    from chatcli.client.log import Recorder

    if not args:
        raise CommandError("usage: /resume ID  (/history lists them)")
    logged = _log(state).get(args)
    state.session.apply(logged.conversation)
    recorder = state.session.recorder
    if isinstance(recorder, Recorder):
        recorder.attach(logged.id, logged.conversation.messages)
    n = sum(1 for m in logged.conversation.messages if m["role"] != "system")
    state.out.info(f"Resumed conversation {logged.id}: {counted(n, 'message')} "
                   f"(model {state.session.model})")


@command("/clear", "/clear", "forget the conversation (the system prompt stays)")
def cmd_clear(state: ReplState, args: str) -> None:
    state.session.clear()
    state.out.info("Cleared session context.")


@command("/retry", "/retry", "answer the last question again")
def cmd_retry(state: ReplState, args: str) -> None:
    state.retry()


@command("/undo", "/undo", "drop the last question and its answer")
def cmd_undo(state: ReplState, args: str) -> None:
    # After Ctrl+C took the last question back, the last exchange in the conversation is an
    # older one the user did not just make: say so rather than drop it.
    taken_back = getattr(state, "taken_back", None)
    messages = state.session.messages
    if taken_back is not None and taken_back[0] is (messages[-1] if messages else None):
        state.taken_back = None
        state.out.info("Nothing to undo: your last question was taken back unanswered (press Up "
                       "to get it again). /undo again drops the exchange before it.")
        return
    if state.session.undo():
        state.out.info("Removed the last exchange.")
    else:
        state.out.info("Nothing to undo.")


@command("/read", "/read FILE", "add a file's text to your next message", completer=complete_path)
def cmd_read(state: ReplState, args: str) -> None:
    if not args:
        raise CommandError("usage: /read FILE")
    path = Path(args).expanduser()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror or e}") from None
    if b"\0" in data[:8192]:
        raise CommandError(f"{path} looks like a binary file; /read takes text")
    text = data.decode("utf-8", errors="replace")
    state.pending_files.append((str(path), text))
    state.out.info(f"Added {path} ({counted(len(text), 'character')}) to your next message.")


@command("/copy", "/copy", "send the last answer to the terminal's clipboard (OSC 52)")
def cmd_copy(state: ReplState, args: str) -> None:
    answer = state.session.last_answer
    if not answer:
        raise CommandError("no answer to copy yet")
    state.write_terminal(osc52(answer))
    # The terminal never answers OSC 52, so whether it copied cannot be known: say what we did.
    state.out.info(
        f"Sent {counted(len(answer), 'character')} to the terminal's clipboard (OSC 52; "
        "in tmux: set -g set-clipboard on)"
    )


def osc52(text: str) -> str:
    """The escape sequence that asks the terminal to put ``text`` on the clipboard."""
    return "\x1b]52;c;" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "\x07"


@command("/model", "/model NAME", "switch to another model; the conversation is kept",
         completer=complete_model)
def cmd_model(state: ReplState, args: str) -> None:
    if not args:
        state.out.info(f"Current model: {state.session.model}")
        return
    from chatcli.core.config import aliases
    from chatcli.models.resolve import expand_alias

    name = state.session.switch_model(expand_alias(args, aliases()))
    state.out.info(f"Switched to {name}; the conversation is kept.")


@command("/bye", "/bye", "exit", aliases=("/exit",))
def cmd_bye(state: ReplState, args: str) -> None:
    raise EOFError


@command("/help", "/help [COMMAND]", "show help", aliases=("/?",), completer=complete_command)
def cmd_help(state: ReplState, args: str) -> None:
    state.out.info(REGISTRY.help_text(args or None))
