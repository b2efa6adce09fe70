"""The ``chat`` command line (Typer). Parses flags, picks a mode, turns errors into one line."""

from __future__ import annotations

import os
import sys

import typer

from .models import DEFAULT_MODEL

app = typer.Typer(
    name="chat",
    help="Chat with local models in your terminal (llama.cpp in-process, no server).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"chat {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """Chat with local models in your terminal (llama.cpp in-process, no server)."""


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def run(
    model: str = typer.Argument(DEFAULT_MODEL, help="Model name or path to a .gguf file."),
    prompt: list[str] | None = typer.Argument(None, help="The message; omit for a REPL."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and llama.cpp logs."),
) -> None:
    """Answer PROMPT (and piped stdin) with MODEL and print the answer as plain text."""
    from .errors import ChatCliError

    if debug:
        os.environ["CHATCLI_DEBUG"] = "1"
    text = " ".join(prompt or [])
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        text = f"{piped.rstrip()}\n\n{text}".strip() if piped.strip() else text
    if not text:
        _fail("no prompt given: chat run MODEL PROMPT, or pipe text on stdin")
    try:
        from .api import chat

        for chunk in chat(model, [{"role": "user", "content": text}], stream=True):
            if not chunk.done:
                sys.stdout.write(chunk.message.content)
                sys.stdout.flush()
        sys.stdout.write("\n")
    except ChatCliError as e:
        if debug:
            raise
        _fail(str(e))
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        raise typer.Exit(130) from None


def main() -> None:
    """Console-script entry point."""
    app()
