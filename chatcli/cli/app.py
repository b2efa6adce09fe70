"""The ``chat`` command line (Typer): parses flags, picks a mode, turns errors into one line.

Heavy modules (llama_cpp, rich.markdown, prompt_toolkit) are imported inside the commands, so
``chat --help`` stays instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

app = typer.Typer(
    name="chat",
    help="Chat with local models in your terminal (llama.cpp in-process, no server).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

RUN_HELP = """Chat with MODEL, or answer one PROMPT and exit.

The interactive REPL starts only when stdin and stdout are both terminals and no PROMPT is
given. Otherwise chat answers once and exits: the prompt is the piped stdin followed by the
PROMPT words, so `cat notes.txt | chat run m "summarize this"` works. When stdout is not a
terminal the answer is plain text with no escape codes.

MODEL defaults to `default_model` in config.json (or $CHATCLI_MODEL), else smollm2:135m.
Exit codes: 0 ok, 1 error, 130 interrupted.
"""


def _version(value: bool) -> None:
    if value:
        from chatcli import __version__

        typer.echo(f"chat {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """Chat with local models in your terminal (llama.cpp in-process, no server)."""


class Fail(Exception):
    """A usage error found by the CLI itself."""


def _options(
    temperature: float | None, num_ctx: int | None, seed: int | None, num_predict: int | None,
    option: list[str],
) -> dict:
    from chatcli.core import options as opts_mod

    pairs = [opts_mod.parse_assignment(o) for o in option]
    out: dict = {}
    for name, value in pairs:
        if name == "stop":
            out.setdefault("stop", []).extend(value)
        else:
            out[name] = value
    flags = {"temperature": temperature, "num_ctx": num_ctx, "seed": seed,
             "num_predict": num_predict}
    out.update({k: v for k, v in flags.items() if v is not None})
    return opts_mod.validate(out)


def _read_stdin() -> str:
    """Piped stdin as text: read as bytes, so that invalid UTF-8 becomes U+FFFD."""
    from chatcli.core.textclean import clean_text, decode

    if sys.stdin is None or sys.stdin.isatty():
        return ""
    buffer = getattr(sys.stdin, "buffer", None)
    return decode(buffer.read()) if buffer is not None else clean_text(sys.stdin.read())


@app.command(help=RUN_HELP)
def run(
    model: str | None = typer.Argument(None, help="Model name or path to a .gguf file."),
    prompt: list[str] | None = typer.Argument(None, help="Answer this and exit."),
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    temperature: float | None = typer.Option(None, "--temperature", help="Temperature."),
    num_ctx: int | None = typer.Option(None, "--num-ctx", help="Context window (tokens)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed."),
    num_predict: int | None = typer.Option(None, "--num-predict", help="Max tokens."),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="Any engine option as NAME=VALUE (repeatable)."
    ),
    format: str | None = typer.Option(None, "--format", help="json, or a JSON schema file."),
    think: bool | None = typer.Option(
        None, "--think/--nothink", help="Let a thinking model reason first (or not)."
    ),
    hidethinking: bool = typer.Option(False, "--hidethinking", help="Do not show reasoning."),
    verbose: bool = typer.Option(False, "--verbose", help="Show timings after each answer."),
    nowordwrap: bool = typer.Option(False, "--nowordwrap", help="Do not wrap plain text."),
    plain: bool = typer.Option(False, "--plain", help="Raw text instead of Markdown."),
    load: Path | None = typer.Option(
        None, "--load", help="Start from a conversation saved with /save."
    ),
    mmproj: Path | None = typer.Option(
        None, "--mmproj", help="Vision projector (mmproj GGUF) for image input."
    ),
    host: str | None = typer.Option(
        None, "--host", envvar="CHATCLI_HOST",
        help="Use the model on a chat serve or Ollama server (URL or host:port).",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and llama.cpp logs."),
) -> None:
    code = guarded(debug, lambda: _run(
        model, prompt or [], system,
        _options(temperature, num_ctx, seed, num_predict, option),
        format, think, hidethinking, verbose, nowordwrap, plain, load, mmproj, host,
    ))
    raise typer.Exit(code)


def guarded(debug: bool, action) -> int:
    """Run a command's body: errors become one line and exit 1 (a traceback only with
    --debug); Ctrl+C exits 130; a closed pipe exits quietly."""
    from chatcli.core.errors import ChatCliError

    if debug:
        os.environ["CHATCLI_DEBUG"] = "1"
    try:
        return action() or 0
    except (ChatCliError, Fail) as e:
        if debug:
            raise
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(1) from None
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(0) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as e:  # never a traceback for the user; --debug shows it
        if debug:
            raise
        typer.echo(f"Error: unexpected {type(e).__name__}: {e} (--debug shows details)", err=True)
        raise typer.Exit(1) from None


def _silence_stdout() -> None:
    # The reader went away (`| head -1`): point stdout at /dev/null so that the interpreter's
    # final flush does not complain, and exit quietly.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _run(model_arg, words, system, options, format_arg, think, hidethinking, verbose,
         nowordwrap, plain, load, mmproj, host=None) -> int:
    from chatcli.client.conversation import load as load_conversation
    from chatcli.client.local import LocalClient
    from chatcli.client.session import Session
    from chatcli.core.config import default_model
    from chatcli.repl.commands import load_format
    from chatcli.repl.loop import ReplState, Settings, run_repl
    from chatcli.repl.registry import CommandError

    interactive = not words and sys.stdin.isatty() and sys.stdout.isatty()
    conv = load_conversation(load) if load else None
    model = model_arg or (conv.model if conv and conv.model else None) or default_model()
    try:
        fmt = load_format(format_arg) if format_arg else None
    except CommandError as e:
        raise Fail(str(e)) from None
    if host and mmproj is not None:
        raise Fail("--mmproj needs a local model; it cannot be used with --host")
    if host:
        from chatcli.client.remote import RemoteClient

        client = RemoteClient(host)
    else:
        client = LocalClient()
    session = Session(client, model)
    if conv:
        session.apply(conv)
        session.model = model
    session.options.update(options)
    if system is not None:
        session.set_system(system)
    if fmt is not None:
        session.format = fmt
    if think is not None:
        session.think = think
    if mmproj is not None:
        if not mmproj.is_file():
            raise Fail(f"no such projector file: {mmproj}")
        session.projector = mmproj.resolve()
    session.switch_model(model)  # fail now, with the model's name, if it does not exist
    settings = Settings(verbose=verbose, markdown=not plain, wordwrap=not nowordwrap,
                        hide_thinking=hidethinking)
    state = ReplState(session, settings)
    if interactive:
        run_repl(state)
        return 0
    text = _one_shot_prompt(_read_stdin(), words)
    if not text:
        raise Fail("no prompt: give one (chat run MODEL PROMPT) or pipe text on stdin; "
                   "the interactive REPL needs a terminal on stdin and stdout")

    from chatcli.engine.cancel import CancelFlag
    from chatcli.repl.answer import stream_answer
    from chatcli.repl.loop import find_images

    text, images = find_images(text)
    cancel = CancelFlag()
    outcome = stream_answer(session.ask(text, cancel, images=images), state.out, cancel,
                            verbose=verbose, fence=state.fence())
    return 130 if outcome.cancelled else 0


def _one_shot_prompt(piped: str, words: list[str]) -> str:
    """Piped stdin first, then the PROMPT words."""
    prompt = " ".join(words).strip()
    piped = piped.strip("\n")
    if piped.strip() and prompt:
        return f"{piped}\n\n{prompt}"
    return piped.strip() and piped or prompt


from chatcli.cli import info as _info  # noqa: E402,F401  (registers info)
from chatcli.cli import models as _models  # noqa: E402,F401  (registers pull, list, show, rm, cp, create)
from chatcli.cli import serve as _serve  # noqa: E402,F401  (registers serve)


def main() -> None:
    """Console-script entry point."""
    app()
