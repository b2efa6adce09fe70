"""Typeahead and honest interruptions, driven in a real pseudo-terminal (pexpect + pyte).

The REPL runs with a slow scripted client (words arrive one by one, and the client marks in a
file when an answer has begun), so the tests can type during an answer, or press Ctrl+C before
its first word, and read the terminal the way a user would. The last tests use the real model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pyte
import pytest

ROOT = Path(__file__).resolve().parent.parent
COLUMNS, ROWS = 100, 30
PROMPT_READY = "Send a message"

SCRIPT = '''
import sys, time
sys.path.insert(0, sys.argv[1])
from scripted import ScriptedClient
from chatcli.core.events import ContentDelta, Done, Metrics
from chatcli.repl.loop import ReplState, Settings, run_repl
from chatcli.client.session import Session

MARK = sys.argv[2]

class SlowClient(ScriptedClient):
    """Each answer: the words of the next reply, one every `pace` seconds, after `wait`."""

    def chat(self, model, messages, options=None, *, format=None, think=None, cancel=None):
        self.calls.append(messages)
        wait, pace, reply = self.replies.pop(0)
        with open(MARK, "a") as f:
            f.write("started\\n")
        if cancel.wait(wait):
            yield Done("cancelled", Metrics())
            return
        for i, word in enumerate(reply.split()):
            if cancel.wait(pace):
                yield Done("cancelled", Metrics(eval_count=i))
                return
            yield ContentDelta(word if i == 0 else " " + word)
        yield Done("stop", Metrics(eval_count=len(reply.split())))

words = " ".join(f"WORD_{i:02d}" for i in range(12))
replies = [(0, 0.25, words), (0, 0.05, "SECOND answer here"), (0, 0, "THIRD")]
if sys.argv[3] == "late":  # the second answer's first word would come after a long wait
    replies = [(0, 0, "FIRST answer"), (60, 0, "NEVER"), (0, 0.3, words), (0, 0, "LAST")]
run_repl(ReplState(Session(SlowClient(replies), "scripted"), Settings()))
'''


def child_env(cli_env) -> dict[str, str]:
    env = {k: v for k, v in cli_env.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", PYTHONPATH=str(ROOT))
    return env


class Terminal:
    """A pexpect child whose output is also fed to a pyte screen with scrollback."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.screen = pyte.HistoryScreen(COLUMNS, ROWS, history=10_000)
        self.stream = pyte.ByteStream(self.screen)

    def expect(self, pattern, timeout: float = 60) -> None:
        self.child.expect(pattern.encode() if isinstance(pattern, str) else pattern,
                          timeout=timeout)
        after = self.child.after if isinstance(self.child.after, bytes) else b""
        self.stream.feed(self.child.before + after)

    def lines(self) -> list[str]:
        rows = [[line[x] for x in range(COLUMNS)] for line in self.screen.history.top]
        rows += [[self.screen.buffer[y][x] for x in range(COLUMNS)] for y in range(ROWS)]
        return ["".join(c.data for c in row).rstrip() for row in rows]


def wait_for(path: Path, count: int, timeout: float = 60) -> None:
    """Until the scripted client has begun ``count`` answers."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text().count("started") >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the client did not begin answer {count}")


def spawn_scripted(tmp_path, cli_env, mode: str) -> tuple[Terminal, Path]:
    script = tmp_path / "slow_repl.py"
    script.write_text(SCRIPT)
    mark = tmp_path / "started"
    child = pexpect.spawn(sys.executable, [str(script), str(ROOT / "tests"), str(mark), mode],
                          env=child_env(cli_env), dimensions=(ROWS, COLUMNS), timeout=60)
    term = Terminal(child)
    term.expect(PROMPT_READY)
    return term, mark


def users(path: Path) -> list[str]:
    return [m["content"] for m in json.loads(path.read_text())["messages"] if m["role"] == "user"]


def saved_users(term, path: Path) -> list[str]:
    """/save the conversation at the prompt, and the user messages it holds."""
    term.child.send(f"/save {path}\r")
    term.expect("Saved")
    term.expect(PROMPT_READY)
    return users(path)


def test_typed_ahead_question_and_command_go_through_unechoed(tmp_path, cli_env):
    term, mark = spawn_scripted(tmp_path, cli_env, "typeahead")
    saved = tmp_path / "f.json"
    term.child.send("first question\r")
    term.expect("WORD_02")
    # Typed while the answer streams: a question, then a command, each ended by Enter (CR).
    term.child.send("typed ahead\r")
    term.child.send(f"/save {saved}\r")
    term.expect("Saved")
    term.expect(PROMPT_READY)
    term.child.send("/bye\r")
    term.expect(pexpect.EOF)
    assert users(saved) == ["first question", "typed ahead"]  # no trailing newline
    lines = term.lines()
    text = "\n".join(lines)
    # Not echoed into the answer area: each typed line shows once, at its own prompt.
    assert sum("typed ahead" in line for line in lines) == 1, text
    assert any(line.startswith(">>> typed ahead") for line in lines), text
    assert sum(f"/save {saved}" in line for line in lines) == 1, text
    assert all(sum(f"WORD_{i:02d}" in line for line in lines) == 1 for i in range(12)), text
    assert "..." not in text  # never a continuation prompt
    assert lines.index(next(x for x in lines if "SECOND answer" in x)) < lines.index(
        next(x for x in lines if x.startswith(">>> /save")))


def test_ctrl_c_before_the_first_word_says_the_question_was_taken_back(tmp_path, cli_env):
    term, mark = spawn_scripted(tmp_path, cli_env, "late")
    saved = tmp_path / "undo.json"
    term.child.send("kept question\r")
    term.expect("FIRST answer")
    term.expect(PROMPT_READY)
    term.child.send("doomed question\r")
    wait_for(mark, 2)
    term.child.sendintr()
    term.expect("taken back")
    term.expect(PROMPT_READY)
    assert "partial answer is kept" not in "\n".join(term.lines())
    term.child.send("\x1b[A")  # Up brings the taken-back question back
    term.expect("doomed question")
    term.child.send("\x15")  # Ctrl+U: clear it again
    term.expect(PROMPT_READY)
    term.child.send("/undo\r")
    term.expect("Nothing to undo")
    term.expect(PROMPT_READY)
    # The earlier, complete exchange is still there.
    assert saved_users(term, saved) == ["kept question"]
    # A partial answer is kept, and the message says so; /undo then drops that exchange.
    term.child.send("partial question\r")
    term.expect("WORD_01")
    term.child.sendintr()
    term.expect("partial answer is kept")
    term.expect(PROMPT_READY)
    term.child.send("/undo\r")
    term.expect("Removed the last exchange")
    term.expect(PROMPT_READY)
    assert saved_users(term, saved) == ["kept question"]
    term.child.send("/bye\r")
    term.expect(pexpect.EOF)


# prompt-toolkit leaves its raw mode (where Ctrl+C is a key) a few milliseconds before
# prompt() returns the message; these patches hold that hand-over open for half a second at one
# point, and say when, so that a Ctrl+C lands there every time instead of once in many runs.
HOLD_HAND_OVER = """
import asyncio.unix_events, os, signal, sys, time
from prompt_toolkit.input import vt100

def hold(where):
    if where == sys.argv[4] and not hold.done:  # the first message's hand-over only
        hold.done = True
        os.write(1, b"<<HANDING OVER>>")
        time.sleep(0.5)
hold.done = False

raw_exit = vt100.raw_mode.__exit__
def patched_raw_exit(self, *a):
    raw_exit(self, *a)
    hold("raw mode left")
vt100.raw_mode.__exit__ = patched_raw_exit

remove = asyncio.unix_events._UnixSelectorEventLoop.remove_signal_handler
def patched_remove(self, sig):
    removed = remove(self, sig)
    if sig == signal.SIGINT:
        hold("SIGINT handler removed")
    return removed
asyncio.unix_events._UnixSelectorEventLoop.remove_signal_handler = patched_remove
"""


@pytest.mark.parametrize("point", ["raw mode left", "SIGINT handler removed"])
def test_ctrl_c_while_the_prompt_hands_the_message_over_stops_it(tmp_path, cli_env, point):
    """A Ctrl+C after the prompt has left raw mode but before prompt() returned was lost (the
    SIGINT went to prompt-toolkit's handler of a prompt already done, and the answer ran to its
    end) or came out of prompt() as a Ctrl+C at the prompt (the message dropped without a
    word). It must stop the message and say so."""
    script = tmp_path / "slow_repl.py"
    script.write_text(HOLD_HAND_OVER + SCRIPT)
    mark = tmp_path / "started"
    child = pexpect.spawn(sys.executable, [str(script), str(ROOT / "tests"), str(mark), "normal",
                                           point],
                          env=child_env(cli_env), dimensions=(ROWS, COLUMNS), timeout=60)
    term = Terminal(child)
    term.expect(PROMPT_READY)
    child.send("the question\r")
    term.expect("<<HANDING OVER>>")
    child.sendintr()
    term.expect(["Stopped before it was sent", "WORD_00", PROMPT_READY], timeout=30)
    said = child.after.decode()
    term.expect(PROMPT_READY)
    child.send("/bye\r")
    term.expect(pexpect.EOF)
    assert said == "Stopped before it was sent", "\n".join(term.lines())
    assert not mark.exists()  # no answer was begun


def spawn_chat(cli_env, *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable, ["-m", "chatcli", "run", "smollm2:135m", "--temperature", "0",
                         "--seed", "42", *args],
        env=child_env(cli_env), dimensions=(ROWS, COLUMNS), timeout=120,
    )


def test_one_shot_ctrl_c_says_stopped_only(cli_env):
    child = spawn_chat(cli_env, "--num-predict", "2000",
                       "Write a very long story about a dragon, at least twenty paragraphs.")
    child.expect(rb"\w+ \w+ \w+ \w+")  # the answer has begun
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    out = child.before.decode(errors="replace")
    assert child.exitstatus == 130
    assert "Stopped." in out
    assert "/undo" not in out and "conversation" not in out


@pytest.fixture
def busy_cores():
    """Two processes that keep both cores busy, as on a loaded machine."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for p in procs:
        p.kill()
        p.wait()


LONG_PROMPT = " ".join(
    f"Item {i}: the quick brown fox number {i} jumps over the lazy dog." for i in range(190)
) + " Summarise the list."  # about 3,000 tokens


@pytest.mark.parametrize("after", [0.3, 1.5])
def test_ctrl_c_while_reading_a_long_prompt_under_load(cli_env, busy_cores, after):
    # One llama.cpp thread: with both cores taken by the busy loops, two threads spin at
    # their barriers and the warm-up answer alone can take 90 s; one thread cannot.
    child = spawn_chat(cli_env, "--num-ctx", "4096", "--num-predict", "400",
                       "-o", "num_thread=1")
    child.expect(PROMPT_READY.encode())
    child.send("Say hi.\r")  # loads the model: what is measured is reading the prompt
    child.expect(PROMPT_READY.encode())
    child.send("\x1b[200~" + LONG_PROMPT + "\x1b[201~")
    time.sleep(0.5)  # the prompt draws the paste
    child.send("\r")
    child.expect(rb"\x1b\[\?2004l", timeout=120)  # the prompt has taken the message
    time.sleep(after)
    t0 = time.monotonic()
    child.sendintr()
    child.expect(b"Stopped", timeout=30)
    child.expect(PROMPT_READY.encode(), timeout=30)
    took = time.monotonic() - t0
    child.send("/bye\r")
    child.expect(pexpect.EOF)
    print(f"Ctrl+C {after} s into a 3,000-token prompt: prompt back in {took:.2f} s")
    sys.stderr.write(f"Ctrl+C {after} s into a 3,000-token prompt: prompt back in {took:.2f} s\n")
    assert took < 3.0, took  # the goal is 1 s; generous for a loaded CI machine


@pytest.mark.skipif(__import__("shutil").which("tmux") is None, reason="needs tmux")
@pytest.mark.parametrize("after", [0.05, 0.3, 1.0])
def test_ctrl_c_right_after_the_enter_of_a_long_paste_under_load(tmp_path, cli_env,
                                                                busy_cores, after):
    """In a real terminal (tmux answers cursor-position requests, as terminals do), with both
    cores busy: a ~3,000-token paste, Enter, then Ctrl+C while the prompt may still be taking
    the paste in, or the answer has begun. The prompt is back within the 1 s goal, saying what
    happened to the message."""
    import os

    script = tmp_path / "slow_repl.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    socket = f"chatcli-paste-{os.getpid()}"

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", socket, *args], check=True, text=True,
                              stdout=subprocess.PIPE, env=env).stdout

    command = (f"env TERM=xterm-256color PYTHONPATH={ROOT} CHATCLI_HOME={cli_env['CHATCLI_HOME']}"
               f" {sys.executable} {script} {ROOT / 'tests'} {tmp_path / 'mark'} normal")
    tmux("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "100", "-y", "30", command)
    try:
        deadline = time.monotonic() + 60
        while PROMPT_READY not in tmux("capture-pane", "-p", "-t", "t"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        tmux("set-buffer", LONG_PROMPT)
        tmux("paste-buffer", "-p", "-t", "t")  # bracketed, as a terminal pastes
        tmux("send-keys", "-t", "t", "Enter")
        time.sleep(after)
        start = time.monotonic()
        tmux("send-keys", "-t", "t", "C-c")
        said = None
        while said is None and time.monotonic() - start < 30:
            pane = tmux("capture-pane", "-p", "-S", "-", "-t", "t")
            said = next((s for s in ("Stopped before it was sent", "Stopped before it was "
                                     "answered", "Stopped.") if s in pane), None)
            time.sleep(0.01)
        took = time.monotonic() - start
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], check=False)
    assert said is not None, pane[-2000:]
    assert took < 1.0, (said, took)
