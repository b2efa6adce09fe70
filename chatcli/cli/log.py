"""``chat log``: the conversation log (``client/log.py``) from the command line: list, search,
show, export and remove logged conversations."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from chatcli.cli.guard import Fail, guarded

log_app = typer.Typer(
    name="log",
    help="List, search, show, export and remove logged conversations.",
    invoke_without_command=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

BOLD, RESET = "\x1b[1m", "\x1b[0m"


def _tty() -> bool:
    return sys.stdout.isatty()


def _when(stamp: str) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM' in local time."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return stamp[:16]


@log_app.callback()
def recent(
    ctx: typer.Context,
    limit: int = typer.Option(20, "--limit", "-n", help="How many conversations to list."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """List recent conversations (newest first); sub-commands search, show, export, rm."""
    if ctx.invoked_subcommand is not None:
        return

    def action() -> None:
        from chatcli.client.log import Log

        summaries = Log().recent(max(1, limit))
        if not summaries:
            typer.echo("No conversations logged yet.", err=True)
            return
        typer.echo(f"{'ID':<10}{'WHEN':<18}{'MODEL':<22}{'TURNS':>5}  FIRST WORDS")
        for s in summaries:
            typer.echo(f"{s.id:<10}{_when(s.updated):<18}{s.model[:21]:<22}{s.turns:>5}  "
                       f"{s.first_words}")

    raise typer.Exit(guarded(debug, action))


@log_app.command()
def search(
    text: list[str] = typer.Argument(..., help="Words to find (all of them, taken literally)."),
    limit: int = typer.Option(20, "--limit", "-n", help="How many messages to show."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Search every logged message; best matches first, with the words highlighted."""

    def action() -> None:
        from chatcli.client.log import MARK_END, MARK_START, Log

        hits = Log().search(" ".join(text), max(1, limit))
        if not hits:
            typer.echo("No matches.", err=True)
            return
        start, end = (BOLD, RESET) if _tty() else ("", "")
        for hit in hits:
            snippet = " ".join(hit.snippet.split())
            snippet = snippet.replace(MARK_START, start).replace(MARK_END, end)
            typer.echo(f"{hit.conversation_id}  {_when(hit.created)}  {hit.role:<9} {snippet}")

    raise typer.Exit(guarded(debug, action))


@log_app.command()
def show(
    conversation_id: str = typer.Argument(..., metavar="ID", help="Conversation id."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Show one conversation (rendered as Markdown on a terminal)."""

    def action() -> None:
        from chatcli.client.log import Log, to_markdown

        text = to_markdown(Log().get(conversation_id))
        if _tty():
            from rich.console import Console
            from rich.markdown import Markdown

            Console().print(Markdown(text))
        else:
            typer.echo(text, nl=False)

    raise typer.Exit(guarded(debug, action))


@log_app.command()
def export(
    conversation_id: str = typer.Argument(..., metavar="ID", help="Conversation id."),
    format: str = typer.Option("json", "--format", "-f", help="json (the /save format) or "
                               "markdown."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Export one conversation: JSON that /load and --load read, or Markdown."""

    def action() -> None:
        from chatcli.client.log import Log, to_markdown
        from chatcli.core.fileio import write_user_file

        if format not in ("json", "markdown", "md"):
            raise Fail(f"unknown format '{format}': use json or markdown")
        logged = Log().get(conversation_id)
        text = logged.conversation.to_json() if format == "json" else to_markdown(logged)
        if output is None:
            typer.echo(text, nl=False)
        else:
            try:
                write_user_file(output.expanduser(), text)
            except OSError as e:
                raise Fail(f"cannot write {output}: {e.strerror or e}") from None
            typer.echo(f"Exported {logged.id} to {output}", err=True)

    raise typer.Exit(guarded(debug, action))


@log_app.command()
def rm(
    conversation_id: str = typer.Argument(..., metavar="ID", help="Conversation id."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Remove a conversation from the log (and from search)."""

    def action() -> None:
        from chatcli.client.log import Log

        typer.echo(f"deleted conversation {Log().delete(conversation_id)}")

    raise typer.Exit(guarded(debug, action))


def register(app: typer.Typer) -> None:
    """Add ``chat log`` to the ``chat`` app."""
    app.add_typer(log_app, name="log")
