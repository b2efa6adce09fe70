"""``chat config path|show|edit``: where config.toml is, what is in effect, and editing it."""

from __future__ import annotations

import enum
import json
import os
import shlex
import shutil
import subprocess
from typing import Any

import typer

from chatcli.cli.guard import Fail, guarded


class Action(str, enum.Enum):
    path = "path"
    show = "show"
    edit = "edit"


def config(
    action: Action = typer.Argument(
        Action.show, help="path: print the file's path; show: the settings in effect and "
        "where each comes from; edit: open the file in $VISUAL or $EDITOR, then check it."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """The configuration file, config.toml: default model, options, system prompt, aliases,
    display, log and server settings."""

    def action_() -> int:
        if action is Action.path:
            from chatcli.core.config import config_path

            typer.echo(str(config_path()))
            return 0
        if action is Action.show:
            show()
            return 0
        return edit()

    raise typer.Exit(guarded(debug, action_))


def _toml_value(value: Any) -> str:
    """A value as TOML writes it (strings and arrays in JSON's syntax are valid TOML)."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def show() -> None:
    """Each setting in effect, with its source: flag, env, file or default."""
    from chatcli.core.config import config_path, effective, load

    path = config_path()
    state = "" if path.is_file() else " (not created yet: chat config edit)"
    typer.echo(f"# {path}{state}")
    rows = [(key, _toml_value(v.value), v.source + (f" {v.where}" if v.where else ""))
            for key, v in effective()]
    width = max(len(f"{k} = {v}") for k, v, _ in rows)
    for key, value, source in rows:
        typer.echo(f"{f'{key} = {value}':<{width}}  # {source}")
    problems = load().problems
    if problems:
        typer.echo(f"# {len(problems)} problem(s) in the file, left out above:")
        for line in problems:
            typer.echo(f"#   {line}")


def editor_command() -> list[str]:
    """$VISUAL, else $EDITOR, else nano or vi, as an argument list."""
    for name in ("VISUAL", "EDITOR"):
        value = os.environ.get(name, "").strip()
        if value:
            return shlex.split(value)
    for fallback in ("nano", "vi"):
        if shutil.which(fallback):
            return [fallback]
    raise Fail("no editor found: set $EDITOR (or $VISUAL), e.g. export EDITOR=nano")


def edit() -> int:
    """Open config.toml in the user's editor (a commented template when it does not exist),
    then check what was saved: exit 1 with each problem listed if there are any."""
    from chatcli.core.config import TEMPLATE, config_path, read_file
    from chatcli.core.fileio import atomic_write_text

    path = config_path()
    if not path.exists():
        atomic_write_text(path, TEMPLATE)
        typer.echo(f"Created {path} from a commented template", err=True)
    command = [*editor_command(), str(path)]
    try:
        code = subprocess.call(command)
    except OSError as e:
        raise Fail(f"cannot run the editor {command[0]!r}: {e.strerror or e}") from None
    if code != 0:
        raise Fail(f"the editor {command[0]!r} exited with status {code}")
    problems = read_file(path).problems
    if not problems:
        typer.echo(f"{path} is valid", err=True)
        return 0
    for line in problems:
        typer.echo(f"Error: {line}", err=True)
    typer.echo("Fix these with: chat config edit (chatcli starts meanwhile, without them)",
               err=True)
    return 1


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``chat`` app."""
    app.command()(config)
