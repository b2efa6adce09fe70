"""Shell completion scripts: generated from the CLI, checked for drift and syntax."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chatcli.cli.completion import GENERATORS, SHELLS

ROOT = Path(__file__).parent.parent
FIX = "python -m chatcli.cli.completion"


@pytest.mark.parametrize("shell", list(SHELLS))
def test_committed_scripts_match_the_cli(shell):
    committed = (ROOT / "completions" / SHELLS[shell]).read_text()
    assert committed == GENERATORS[shell](), f"completions/ drifted from the CLI: run {FIX}"


def test_scripts_mention_every_run_option():
    from chatcli.cli.completion import describe_cli

    _, commands = describe_cli()
    run = next(c for c in commands if c.name == "run")
    names = {n for o in run.options for n in o.names}
    assert {"--system", "--option", "--load", "--think", "--nothink", "--plain"} <= names
    for shell, filename in SHELLS.items():
        text = (ROOT / "completions" / filename).read_text()
        for n in ("system", "load", "nowordwrap", "hidethinking"):
            assert n in text, (shell, n)


def test_bash_script_completes():
    script = ROOT / "completions" / "chat.bash"
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run(
        ["bash", "-c", f"source {script}; COMP_WORDS=(chat run --lo); COMP_CWORD=2; _chat; "
                       'echo "${COMPREPLY[@]}"; COMP_WORDS=(chat ru); COMP_CWORD=1; _chat; '
                       'echo "${COMPREPLY[@]}"'],
        capture_output=True, text=True, check=True,
    ).stdout.split("\n")
    assert out[0] == "--load" and out[1] == "run"


@pytest.mark.parametrize("shell, check", [("zsh", ["zsh", "-n"]), ("fish", ["fish", "-n"])])
def test_other_shells_parse(shell, check):
    if shutil.which(check[0]) is None:
        pytest.skip(f"{shell} is not installed")
    subprocess.run([*check, str(ROOT / "completions" / SHELLS[shell])], check=True)


def test_typer_dynamic_completion_is_available(cli_env):
    p = subprocess.run([sys.executable, "-m", "chatcli", "--show-completion", "bash"],
                       env=cli_env, capture_output=True, text=True)
    assert p.returncode == 0 and "complete" in p.stdout


def test_bash_completes_model_names_from_chat_list(cli_env):
    import os

    script = ROOT / "completions" / "chat.bash"
    env = {**cli_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{cli_env['PATH']}"}
    out = subprocess.run(
        ["bash", "-c", f"source {script}; COMP_WORDS=(chat run smol); COMP_CWORD=2; _chat; "
                       'echo "${COMPREPLY[@]}"'],
        capture_output=True, text=True, check=True, env=env,
    ).stdout.strip()
    assert out == "smollm2:135m"


@pytest.mark.parametrize("words, expected", [
    ("chat log s", "search show"),
    ("chat log ", "export rm search show"),
    ("chat config e", "edit"),
    ("chat log search --l", "--limit"),
])
def test_bash_completes_sub_commands_and_fixed_choices(words, expected):
    script = ROOT / "completions" / "chat.bash"
    parts = words.split(" ")
    out = subprocess.run(
        ["bash", "-c", f"source {script}; COMP_WORDS=({' '.join(repr(p) for p in parts)}); "
                       f"COMP_CWORD={len(parts) - 1}; _chat; " 'echo "${COMPREPLY[@]}"'],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert out == expected
