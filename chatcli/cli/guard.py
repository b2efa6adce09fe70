"""The CLI boundary: every command's body runs under ``guarded``, where errors become one line
and an exit code. Sub-command modules import this, never app.py (which imports them)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import typer


class Fail(Exception):
    """A usage error found by the CLI itself."""


def guarded(debug: bool, action: Callable[[], int | None]) -> int:
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
