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


EXPECTED = ["/set", "/show", "/save", "/load", "/history", "/resume", "/clear", "/retry",
            "/undo", "/read", "/copy", "/model", "/bye", "/help"]


def test_help_lists_the_commands_in_order_with_their_aliases():
    text = REGISTRY.help_text()
    rows = [line.split() for line in text.splitlines() if line.startswith("  /")]
    assert [row[0] for row in rows] == EXPECTED
    assert "(also /exit)" in text and "(also /?)" in text
    assert "/set SETTING [VALUE]  change the system prompt" in text
    assert sorted(REGISTRY.all_names()) == sorted([*EXPECTED, "/exit", "/?"])


def test_help_for_one_command_shows_subcommands():
    text = REGISTRY.help_text("set")
    assert "/set parameter NAME VALUE" in text and "/set nohistory" in text
    with pytest.raises(CommandError):
        REGISTRY.help_text("/nonsense")


def readme_command_rows() -> dict[str, set[str]]:
    """README's "Slash commands" table: each command word, with the words after it in the
    first column (sub-commands, alternatives split at \\|)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("### Slash commands", 1)[1].split("\n\n", 2)[1]
    rows: dict[str, set[str]] = {}
    for line in table.splitlines()[2:]:
        first = line.split(" | ")[0].removeprefix("| ")
        for span in re.findall(r"`([^`]+)`", first):
            name, _, rest = span.partition(" ")
            words = rows.setdefault(name, set())
            words.update(w for w in re.split(r"[\s|\\\[\]]+", rest) if w)
    return rows


def test_readme_table_has_a_row_for_every_command_and_subcommand():
    rows = readme_command_rows()
    for cmd in REGISTRY:
        if cmd.hidden:
            continue
        for name in cmd.names:
            assert name in rows, f"README's slash-command table has no row for {name}"
        for sub in cmd.subcommands:
            assert sub in rows[cmd.name], f"README's table lacks {cmd.name} {sub}"
    # ...and documents nothing that is not a command
    assert set(rows) == set(REGISTRY.all_names())
