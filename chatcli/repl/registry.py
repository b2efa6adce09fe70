"""Slash commands as data: one record per command drives dispatch, ``/help`` and completion.

Modelled on pgspecial's ``@special_command``: a handler is registered with its name, syntax,
help text, aliases, sub-commands and an argument completer; nothing else lists commands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from chatcli.core.errors import ChatCliError
from chatcli.repl.state import ReplState

Handler = Callable[[ReplState, str], None]
# A completer gets (repl state, the argument text typed so far) and offers whole-word candidates
# for the word being typed.
ArgCompleter = Callable[[ReplState, str], Iterable[str]]


class CommandNotFound(ChatCliError):
    """The input starts with '/' but names no command."""


class CommandError(ChatCliError):
    """A command got arguments it cannot use; the REPL shows the message and goes on."""


@dataclass(frozen=True)
class Command:
    name: str  # with the slash: "/set"
    syntax: str
    help: str
    handler: Handler
    aliases: tuple[str, ...] = ()
    # Sub-command name -> (syntax, help), e.g. "/set" -> {"system": ("/set system TEXT", ...)}
    subcommands: dict[str, tuple[str, str]] = field(default_factory=dict)
    completer: ArgCompleter | None = None
    hidden: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


class Registry:
    """An ordered set of commands, looked up by name or alias."""

    def __init__(self) -> None:
        self._commands: list[Command] = []
        self._by_name: dict[str, Command] = {}

    def command(
        self,
        name: str,
        syntax: str,
        help: str,
        *,
        aliases: Iterable[str] = (),
        subcommands: dict[str, tuple[str, str]] | None = None,
        completer: ArgCompleter | None = None,
        hidden: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Decorator registering ``handler(state, args)`` as a slash command."""

        def register(handler: Handler) -> Handler:
            cmd = Command(name, syntax, help, handler, tuple(aliases), subcommands or {},
                          completer, hidden)
            for n in cmd.names:
                if n in self._by_name:
                    raise ValueError(f"command {n} registered twice")
                self._by_name[n] = cmd
            self._commands.append(cmd)
            return handler

        return register

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands)

    def find(self, name: str) -> Command | None:
        return self._by_name.get(name.lower())

    def all_names(self) -> list[str]:
        return [n for c in self._commands if not c.hidden for n in c.names]

    def dispatch(self, state: ReplState, line: str) -> None:
        """Run the command in ``line`` (which starts with '/')."""
        name, _, args = line.strip().partition(" ")
        cmd = self.find(name)
        if cmd is None:
            raise CommandNotFound(f"unknown command '{name}'. Type /? for help")
        cmd.handler(state, args.strip())

    def help_text(self, name: str | None = None) -> str:
        """The overview (no name) or one command's help, with its sub-commands."""
        if name:
            key = name if name.startswith("/") else "/" + name
            cmd = self.find(key.split()[0])
            if cmd is None:
                raise CommandError(f"no command '{name}'. Type /? for the list")
            lines = [f"{cmd.syntax}", f"  {cmd.help}"]
            if cmd.aliases:
                lines.append(f"  aliases: {', '.join(cmd.aliases)}")
            if cmd.subcommands:
                width = max(len(s) for s, _ in cmd.subcommands.values())
                lines.append("")
                lines += [f"  {s.ljust(width)}  {h}" for s, h in cmd.subcommands.values()]
            return "\n".join(lines)
        visible = [c for c in self._commands if not c.hidden]
        width = max(len(c.syntax) for c in visible)
        lines = ["Available commands:"]
        for c in visible:
            alias = f" (also {', '.join(c.aliases)})" if c.aliases else ""
            lines.append(f"  {c.syntax.ljust(width)}  {c.help}{alias}")
        lines += [
            "",
            'Use """ to begin and end a multi-line message; Alt+Enter or Ctrl+J inserts a newline.',
            "Ctrl+C stops an answer (or clears the line); Ctrl+D on an empty line exits.",
            "/help COMMAND shows a command's details.",
        ]
        return "\n".join(lines)
