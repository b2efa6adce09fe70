"""The command registry: dispatch, help and completion all come from the same records."""

import pytest

from chatcli.repl.commands import REGISTRY
from chatcli.repl.registry import CommandError, CommandNotFound, Registry


def test_register_dispatch_and_aliases():
    reg = Registry()
    seen = []

    @reg.command("/echo", "/echo TEXT", "say it back", aliases=("/e",))
    def echo(state, args):
        seen.append(args)

    reg.dispatch(None, "/echo hello world")
    reg.dispatch(None, "/E  again ")
    assert seen == ["hello world", "again"]
    with pytest.raises(CommandNotFound, match="unknown command '/nope'"):
        reg.dispatch(None, "/nope")
    with pytest.raises(ValueError):
        reg.command("/e", "/e", "dup")(echo)


def test_help_lists_every_visible_command_from_the_registry():
    text = REGISTRY.help_text()
    for cmd in REGISTRY:
        assert cmd.syntax in text and cmd.help in text
    for name in ["/set", "/show", "/save", "/load", "/clear", "/retry", "/undo", "/read",
                 "/copy", "/model", "/bye", "/exit", "/help", "/?"]:
        assert name in REGISTRY.all_names()


def test_help_for_one_command_shows_subcommands():
    text = REGISTRY.help_text("set")
    assert "/set parameter NAME VALUE" in text and "/set nohistory" in text
    with pytest.raises(CommandError):
        REGISTRY.help_text("/nonsense")


def test_readme_documents_every_command():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for cmd in REGISTRY:
        for name in cmd.names:
            assert f"`{name}" in readme, f"{name} is missing from README.md"
        for sub in cmd.subcommands:
            assert sub in readme, f"{cmd.name} {sub} is missing from README.md"
