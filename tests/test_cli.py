"""`chat run` one-shot use, as a subprocess: exit codes, stdout, stderr."""

import re
import subprocess
import sys

CHAT = [sys.executable, "-m", "chatcli"]
FILLER = "The cat sat on the mat and looked at the rain. " * 20  # well over 100 tokens


def run(args, env, input=None, timeout=120):
    return subprocess.run(CHAT + args, env=env, input=input, capture_output=True, text=True,
                          timeout=timeout)


def prompt_tokens(p) -> int:
    """The prompt's size as --verbose reports it: how much text reached the model."""
    assert p.returncode == 0, p.stderr
    found = re.search(r"prompt eval count:\s+(\d+) token", p.stdout)
    assert found, p.stdout
    return int(found.group(1))


def test_one_shot_prints_plain_answer(cli_env):
    p = run(["run", "smollm2:135m", "What is 2+2?"], cli_env, input="")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip()
    assert "\x1b" not in p.stdout


def test_piped_stdin_is_the_prompt(cli_env):
    args = ["run", "smollm2:135m", "--num-predict", "1", "--verbose"]
    short = prompt_tokens(run(args, cli_env, input="Say hello.\n"))
    long = prompt_tokens(run(args, cli_env, input=f"{FILLER}\nSay hello.\n"))
    assert long >= short + 100, (short, long)


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


def test_prompt_is_piped_stdin_then_words():
    from chatcli.cli.app import _one_shot_prompt

    expected = "Cats sleep.\n\nsummarize this"
    assert _one_shot_prompt("Cats sleep.\n", ["summarize", "this"]) == expected
    assert _one_shot_prompt("", ["hi"]) == "hi"
    assert _one_shot_prompt("only stdin\n", []) == "only stdin"
    assert _one_shot_prompt("  \n", []) == ""


def test_load_then_prompt_with_pipe(cli_env, tmp_path):
    import json

    conv = tmp_path / "c.json"
    conv.write_text(json.dumps({"model": "smollm2:135m", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": FILLER},
        {"role": "assistant", "content": "Noted."},
    ]}))
    args = ["run", "--num-predict", "1", "--temperature", "0", "--verbose", "smollm2:135m",
            "summarize this"]
    fresh = run(args, cli_env, input="Cats sleep a lot.\n")
    loaded = run([*args, "--load", str(conv)], cli_env, input="Cats sleep a lot.\n")
    assert "\x1b" not in loaded.stdout
    # the loaded conversation is in the prompt, before the piped text and the words
    assert prompt_tokens(loaded) >= prompt_tokens(fresh) + 100
    unpiped = run([*args, "--load", str(conv)], cli_env, input="")
    assert prompt_tokens(loaded) > prompt_tokens(unpiped)


def test_flags_and_options_reach_the_engine(cli_env):
    p = run(["run", "smollm2:135m", "--num-predict", "3", "-o", "temperature=0", "-o",
             "seed=1", "--verbose", "Tell me a story."], cli_env, input="")
    assert p.returncode == 0, p.stderr
    assert "eval count:           3 token(s)" in p.stdout
    assert "prompt eval rate:" in p.stdout and "\x1b" not in p.stdout


def test_bad_option_is_one_line(cli_env):
    p = run(["run", "smollm2:135m", "-o", "temperature=hot", "hi"], cli_env, input="")
    assert p.returncode == 1 and "temperature" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = run(["run", "smollm2:135m", "-o", "warmth=1", "hi"], cli_env, input="")
    assert p.returncode == 1 and "unknown option 'warmth'" in p.stderr


def test_bad_load_file_is_one_line(cli_env, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    p = run(["run", "--load", str(bad), "hi"], cli_env, input="")
    assert p.returncode == 1 and "not valid JSON" in p.stderr and "Traceback" not in p.stderr


def test_no_prompt_without_terminal_is_an_error(cli_env):
    p = run(["run", "smollm2:135m"], cli_env, input="")
    assert p.returncode == 1 and "no prompt" in p.stderr


def test_broken_pipe_exits_quietly(cli_env):
    cmd = (f"{sys.executable} -m chatcli run smollm2:135m --temperature 0 "
           "'List ten fruits, one per line.' </dev/null | head -c 5")
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=cli_env, capture_output=True,
                       text=True, timeout=120)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
    assert "Exception ignored" not in p.stderr


def test_interrupted_one_shot_exits_130(cli_env):
    import signal
    import time

    proc = subprocess.Popen(
        CHAT + ["run", "smollm2:135m", "--num-predict", "3000", "--verbose",
                "Write a very long story."],
        env=cli_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.read(20)  # the answer has started
    assert first
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    # It stopped at the signal, not at the end of the answer: far fewer tokens than asked for
    # (what --verbose reports) and well within what a long answer would take on a slow machine.
    counted = re.search(r"^eval count:\s+(\d+) token", out, re.M)
    assert counted and int(counted.group(1)) < 1000, out
    assert time.monotonic() - t0 < 20
    assert "Traceback" not in err


def test_one_shot_in_a_terminal_renders_and_honours_no_color(cli_env):
    import pexpect

    env = {**cli_env, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(sys.executable, ["-m", "chatcli", "run", "smollm2:135m",
                                           "--temperature", "0", "--num-predict", "60",
                                           "Write hello world in Python in a code block."],
                          env=env, encoding="utf-8", timeout=60)
    child.expect(pexpect.EOF)
    coloured = child.before
    env["NO_COLOR"] = "1"
    child = pexpect.spawn(sys.executable, ["-m", "chatcli", "run", "smollm2:135m",
                                           "--temperature", "0", "--num-predict", "60",
                                           "Write hello world in Python in a code block."],
                          env=env, encoding="utf-8", timeout=60)
    child.expect(pexpect.EOF)
    import re

    colours = re.compile(r"\x1b\[[0-9;]*(3[0-9]|38;)[0-9;]*m")
    assert colours.search(coloured), "expected syntax colours on a terminal"
    assert not colours.search(child.before), "NO_COLOR must disable colours"


def test_format_json_on_a_pipe_prints_plain_json(cli_env):
    import json

    p = run(["run", "smollm2:135m", "--format", "json", "--temperature", "0",
             "--num-predict", "200", "List two fruits as JSON."], cli_env, input="")
    assert p.returncode == 0, p.stderr
    assert isinstance(json.loads(p.stdout), dict)  # no code fence off a terminal
