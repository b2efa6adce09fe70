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

from chatcli.cli import config as config_cli
from chatcli.cli import info, log, models, serve
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

MODEL defaults to $CHATCLI_MODEL, else `model` in config.toml (chat config path), else
smollm2:135m; an alias from the file's [aliases] table works too. Flags override the
environment, which overrides config.toml, which overrides the model's own defaults.
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
    # None: not given on the command line (config.toml or the environment decide)
    hidethinking: bool | None = None
    verbose: bool | None = None
    nowordwrap: bool | None = None
    plain: bool | None = None
    load: Path | None = None
    mmproj: Path | None = None
    host: str | None = None
    api: str = "auto"  # --api: the --host server's protocol (openai, ollama or auto)
    api_key: str | None = field(default=None, repr=False)  # --api-key; never shown
    cont: bool = False  # --continue: the most recent logged conversation
    conversation: str | None = None  # --conversation ID
    log: bool | None = None  # False with --no-log


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
    # The display flags come in pairs, so that either can override config.toml.
    hidethinking: bool | None = typer.Option(
        None, "--hidethinking/--showthinking", help="Do not show reasoning (or do)."
    ),
    verbose: bool | None = typer.Option(
        None, "--verbose/--noverbose", help="Show timings after each answer (or not)."
    ),
    nowordwrap: bool | None = typer.Option(
        None, "--nowordwrap/--wordwrap", help="Do not wrap plain text (or do)."
    ),
    plain: bool | None = typer.Option(
        None, "--plain/--markdown", help="Raw text instead of Markdown (or Markdown)."
    ),
    load: Path | None = typer.Option(
        None, "--load", help="Start from a conversation saved with /save."
    ),
    mmproj: Path | None = typer.Option(
        None, "--mmproj", help="Vision projector (mmproj GGUF) for image input."
    ),
    host: str | None = typer.Option(
        None, "--host", envvar="CHATCLI_HOST",
        help="Use the model on a server: chat serve, Ollama or OpenAI-compatible (URL or "
        "host:port; a URL ending in /v1 means OpenAI).",
    ),
    api: str = models.API,
    api_key: str | None = models.API_KEY,
    cont: bool = typer.Option(
        False, "--continue", "-c", help="Continue the most recent logged conversation."
    ),
    conversation: str | None = typer.Option(
        None, "--conversation", help="Continue the logged conversation ID (see chat log)."
    ),
    no_log: bool = typer.Option(
        False, "--no-log", help="Do not record this chat in the conversation log."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and llama.cpp logs."),
) -> None:
    def action() -> int:
        return _run(RunOptions(
            model=model, words=tuple(prompt or ()), system=system,
            options=_options(temperature, num_ctx, seed, num_predict, option),
            format=format, think=think, hidethinking=hidethinking, verbose=verbose,
            nowordwrap=nowordwrap, plain=plain, load=load, mmproj=mmproj, host=host,
            api=api, api_key=api_key, cont=cont, conversation=conversation,
            log=False if no_log else None,
        ))

    raise typer.Exit(guarded(debug, action))


def _run(opts: RunOptions) -> int:
    from chatcli.client.conversation import load as load_conversation
    from chatcli.client.inputs import find_images, load_format
    from chatcli.client.interface import ChatClient
    from chatcli.client.local import LocalClient
    from chatcli.client.session import Session
    from chatcli.core import config
    from chatcli.models.resolve import expand_alias
    from chatcli.repl.loop import ReplState, Settings, run_repl

    interactive = not opts.words and sys.stdin.isatty() and sys.stdout.isatty()
    conv = load_conversation(opts.load) if opts.load else None
    logged = _logged_conversation(opts)
    if logged is not None:
        conv = logged.conversation
        opts = _prompt_not_model(opts)
        interactive = not opts.words and sys.stdin.isatty() and sys.stdout.isatty()
    model = opts.model or (conv.model if conv and conv.model else None) or config.default_model()
    model = expand_alias(model, config.aliases())
    fmt = load_format(opts.format) if opts.format else None
    if opts.host and opts.mmproj is not None:
        raise Fail("--mmproj needs a local model; it cannot be used with --host")
    client: ChatClient
    if opts.host:
        from chatcli.client.openai_remote import connect

        say = (lambda line: typer.secho(line, dim=True, err=True)) \
            if config.get_bool("verbose", opts.verbose) else None
        client = connect(opts.host, api=opts.api, key=opts.api_key, say=say)
    else:
        client = LocalClient()
    # config.toml's (and the environment's) options and system prompt: below a loaded
    # conversation's and the flags, above the model's own defaults.
    session = Session(client, model, recorder=_recorder(opts, logged),
                      options=config.options(), system=config.get("system"))
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
    settings = Settings(
        verbose=config.get_bool("verbose", opts.verbose),
        markdown=config.get_bool("markdown", None if opts.plain is None else not opts.plain),
        wordwrap=config.get_bool("wordwrap",
                                 None if opts.nowordwrap is None else not opts.nowordwrap),
        hide_thinking=config.get_bool("hidethinking", opts.hidethinking),
    )
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
                            verbose=settings.verbose, fence=state.fence())
    return 130 if outcome.cancelled else 0


def _logged_conversation(opts: RunOptions) -> Any:
    """The logged conversation that --continue or --conversation asks for, or None."""
    if not opts.cont and opts.conversation is None:
        return None
    from chatcli.client.log import Log

    if opts.load is not None:
        raise Fail("--load and --continue/--conversation cannot be used together")
    log = Log()
    wanted = opts.conversation or log.latest_id()
    if wanted is None:
        raise Fail("no logged conversation to continue yet")
    return log.get(wanted)


def _prompt_not_model(opts: RunOptions) -> RunOptions:
    """`chat run -c "and Italy?"`: when continuing, a MODEL argument that names no model is
    the prompt's first word (the conversation's own model answers)."""
    from dataclasses import replace

    from chatcli.core import config
    from chatcli.core.errors import ChatCliError
    from chatcli.models.resolve import resolve

    if not opts.model or opts.host:
        return opts
    try:
        resolve(opts.model, config.aliases())
    except ChatCliError:
        return replace(opts, model=None, words=(opts.model, *opts.words))
    return opts


def _recorder(opts: RunOptions, logged: Any) -> Any:
    """The conversation log's recorder, attached to a continued conversation; None when
    logging is off (--no-log, CHATCLI_NOLOG)."""
    from chatcli.client.log import Recorder, logging_enabled

    if not logging_enabled(opts.log):
        return None
    recorder = Recorder()
    if logged is not None:
        recorder.attach(logged.id, logged.conversation.messages)
    return recorder


def _one_shot_prompt(piped: str, words: Sequence[str]) -> str:
    """Piped stdin first, then the PROMPT words."""
    prompt = " ".join(words).strip()
    piped = piped.strip("\n")
    if piped.strip() and prompt:
        return f"{piped}\n\n{prompt}"
    return piped.strip() and piped or prompt


config_cli.register(app)
info.register(app)
log.register(app)
models.register(app)
serve.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
