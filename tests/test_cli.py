"""`chat run` one-shot use, as a subprocess: exit codes, stdout, stderr."""

import subprocess
import sys

CHAT = [sys.executable, "-m", "chatcli"]


def run(args, env, input=None, timeout=120):
    return subprocess.run(CHAT + args, env=env, input=input, capture_output=True, text=True,
                          timeout=timeout)


def test_one_shot_prints_plain_answer(cli_env):
    p = run(["run", "smollm2:135m", "What is 2+2?"], cli_env, input="")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip()
    assert "\x1b" not in p.stdout


def test_piped_stdin_is_the_prompt(cli_env):
    p = run(["run", "smollm2:135m"], cli_env, input="Say hello.\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip()


def test_unknown_model_is_one_line_and_exit_1(cli_env):
    p = run(["run", "no-such-model", "hi"], cli_env, input="")
    assert p.returncode == 1
    assert p.stderr.strip().count("\n") == 0
    assert "no-such-model" in p.stderr and "Traceback" not in p.stderr


def test_not_a_gguf_is_one_line(cli_env, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope" * 100)
    p = run(["run", str(bad), "hi"], cli_env, input="")
    assert p.returncode == 1 and "not a GGUF" in p.stderr and "Traceback" not in p.stderr


def test_help_is_quick_and_lists_run(cli_env):
    p = run(["--help"], cli_env)
    assert p.returncode == 0 and "run" in p.stdout
