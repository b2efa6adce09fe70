"""The ``chat`` command line (Typer): parses flags, picks a mode, turns errors into one line.

Heavy modules (llama_cpp, rich.markdown, prompt_toolkit) are imported inside the commands, so
``chat --help`` stays instant.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from chatcli.cli import info, models, serve
from chatcli.cli.guard import Fail, guarded

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


@dataclass(frozen=True)
class RunOptions:
    """What ``chat run`` was asked to do, as its flags said it."""

    model: str | None = None
    words: tuple[str, ...] = ()  # the PROMPT words
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # engine options, validated
    format: str | None = None  # "json" or a JSON-schema file
    think: bool | None = None
    hidethinking: bool = False
    verbose: bool = False
    nowordwrap: bool = False
    plain: bool = False
    load: Path | None = None
    mmproj: Path | None = None
    host: str | None = None


def _options(
    temperature: float | None, num_ctx: int | None, seed: int | None, num_predict: int | None,
    option: list[str],
) -> dict[str, Any]:
    from chatcli.core import options as opts_mod

    pairs = [opts_mod.parse_assignment(o) for o in option]
    out: dict[str, Any] = {}
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
    def action() -> int:
        return _run(RunOptions(
            model=model, words=tuple(prompt or ()), system=system,
            options=_options(temperature, num_ctx, seed, num_predict, option),
            format=format, think=think, hidethinking=hidethinking, verbose=verbose,
            nowordwrap=nowordwrap, plain=plain, load=load, mmproj=mmproj, host=host,
        ))

    raise typer.Exit(guarded(debug, action))


def _run(opts: RunOptions) -> int:
    from chatcli.client.conversation import load as load_conversation
    from chatcli.client.inputs import find_images, load_format
    from chatcli.client.interface import ChatClient
    from chatcli.client.local import LocalClient
    from chatcli.client.session import Session
    from chatcli.core.config import default_model
    from chatcli.repl.loop import ReplState, Settings, run_repl

    interactive = not opts.words and sys.stdin.isatty() and sys.stdout.isatty()
    conv = load_conversation(opts.load) if opts.load else None
    model = opts.model or (conv.model if conv and conv.model else None) or default_model()
    fmt = load_format(opts.format) if opts.format else None
    if opts.host and opts.mmproj is not None:
        raise Fail("--mmproj needs a local model; it cannot be used with --host")
    client: ChatClient
    if opts.host:
        from chatcli.client.remote import RemoteClient

        client = RemoteClient(opts.host)
    else:
        client = LocalClient()
    session = Session(client, model)
    if conv:
        session.apply(conv)
        session.model = model
    session.options.update(opts.options)
    if opts.system is not None:
        session.set_system(opts.system)
    if fmt is not None:
        session.format = fmt
    if opts.think is not None:
        session.think = opts.think
    if opts.mmproj is not None:
        if not opts.mmproj.is_file():
            raise Fail(f"no such projector file: {opts.mmproj}")
        session.projector = opts.mmproj.resolve()
    session.switch_model(model)  # fail now, with the model's name, if it does not exist
    settings = Settings(verbose=opts.verbose, markdown=not opts.plain,
                        wordwrap=not opts.nowordwrap, hide_thinking=opts.hidethinking)
    state = ReplState(session, settings)
    if interactive:
        run_repl(state)
        return 0
    text = _one_shot_prompt(_read_stdin(), opts.words)
    if not text:
        raise Fail("no prompt: give one (chat run MODEL PROMPT) or pipe text on stdin; "
                   "the interactive REPL needs a terminal on stdin and stdout")

    from chatcli.engine.cancel import CancelFlag
    from chatcli.repl.answer import stream_answer

    text, images = find_images(text)
    cancel = CancelFlag()
    outcome = stream_answer(session.ask(text, cancel, images=images), state.out, cancel,
                            verbose=opts.verbose, fence=state.fence())
    return 130 if outcome.cancelled else 0


def _one_shot_prompt(piped: str, words: Sequence[str]) -> str:
    """Piped stdin first, then the PROMPT words."""
    prompt = " ".join(words).strip()
    piped = piped.strip("\n")
    if piped.strip() and prompt:
        return f"{piped}\n\n{prompt}"
    return piped.strip() and piped or prompt


info.register(app)
models.register(app)
serve.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
