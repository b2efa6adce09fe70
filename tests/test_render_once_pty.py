"""The REPL as a user sees it: every line of a streamed answer reaches the terminal once, in order.

A scripted client streams an answer with a tall table, a code block with long lines and nested
lists into the real REPL in a pseudo-terminal. The screen is read back through a terminal
emulator (pyte, which keeps the scrollback), and through tmux for a resize in the middle of the
answer (tmux rewraps lines on resize, as most terminals do, pyte does not).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pyte
import pytest

ROOT = Path(__file__).resolve().parent.parent
COLUMNS, ROWS = 80, 24
QUESTION = "Show me QUESTION_ONE please"
PROMPT_READY = "Send a message"

DRIVER = """
import sys, time
sys.path.insert(0, {tests!r})
from scripted import ScriptedClient
from chatcli.repl.loop import ReplState, Settings, run_repl
from chatcli.client.session import Session

class Slow(ScriptedClient):
    def chat(self, *args, **kwargs):
        for event in super().chat(*args, **kwargs):
            time.sleep({delay})
            yield event

answer = open(sys.argv[1], encoding="utf-8").read()
run_repl(ReplState(Session(Slow([answer]), "scripted"), Settings()))
"""


def answer() -> tuple[str, list[str]]:
    """The scripted answer, and its markers in the order they must appear."""
    lines = ["Intro PARA_A before the list.", ""]
    lines += ["1. First OL_1", "   - nested NEST_1a", "   - nested NEST_1b", "2. Second OL_2",
              "   1. inner INNER_2a", "3. Third OL_3", ""]
    lines += ["```python"]
    for i in range(30):
        tail = ", ".join(f"argument_{k}" for k in range(12)) if i % 3 == 0 else "1"
        lines.append(f"CODE_{i:02d} = compute({tail})  # END_{i:02d}")
    lines += ["```", "", "| key | value | note |", "|---|---|---|"]
    lines += [f"| TR_{i:02d} | {i * 7} | row {i} |" for i in range(60)]
    lines += ["", "Closing PARA_END words."]
    markers = re.findall(r"\b(?:PARA|OL|NEST|INNER|CODE|END|TR)_\w+", "\n".join(lines))
    return "\n".join(lines) + "\n", markers


def occurrences(text: str, marker: str) -> int:
    return len(re.findall(rf"\b{marker}\b", text))


def assert_once_in_order(lines: list[str], markers: list[str]) -> None:
    text = "\n".join(lines)
    for marker in markers:
        assert occurrences(text, marker) == 1, (marker, text)
    positions = [text.index(marker) for marker in markers]
    assert positions == sorted(positions), text


@pytest.fixture
def driver(tmp_path) -> tuple[Path, Path]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(ROOT / "tests"), delay=0.004))
    source = tmp_path / "answer.md"
    source.write_text(answer()[0])
    return script, source


def child_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", PYTHONPATH=str(ROOT), CHATCLI_HOME=str(home))
    return env


def screen_lines(raw: bytes) -> list[str]:
    screen = pyte.HistoryScreen(COLUMNS, ROWS, history=10_000)
    pyte.ByteStream(screen).feed(raw)
    rows = [[line[x] for x in range(COLUMNS)] for line in screen.history.top]
    rows += [[screen.buffer[y][x] for x in range(COLUMNS)] for y in range(ROWS)]
    return ["".join(c.data for c in row).rstrip() for row in rows]


def test_streamed_answer_scrolls_by_once_in_order(driver, chatcli_home):
    script, source = driver
    child = pexpect.spawn(sys.executable, [str(script), str(source)],
                          env=child_env(chatcli_home), dimensions=(ROWS, COLUMNS), timeout=120)
    child.logfile_read = log = io.BytesIO()  # every byte the terminal got
    child.expect(PROMPT_READY)
    child.send(QUESTION + "\r")
    child.expect("PARA_END")
    child.expect(PROMPT_READY)
    child.send("/bye\r")
    child.expect(pexpect.EOF)
    child.close()
    lines = screen_lines(log.getvalue())
    markers = answer()[1]
    assert_once_in_order(lines, markers)
    text = "\n".join(lines)
    # The question is shown once; the table header once; ordered items with their dot.
    assert occurrences(text, "QUESTION_ONE") == 1, text
    assert sum("key" in line and "value" in line for line in lines) == 1, text
    assert re.search(r"^ *1\. First OL_1$", text, re.M) and re.search(r"^ *2\. Second", text, re.M)
    # Long code lines wrap under a marker, not at column 0, and lose nothing.
    row = next(i for i, line in enumerate(lines) if "CODE_00" in line)
    assert lines[row + 1].startswith(" ↪ ")
    assert all(len(line) <= COLUMNS for line in lines)



def tmux(*args: str) -> str:
    # The server's environment becomes the pane's: without COLUMNS/LINES (something in the
    # test process may have set them at the C level, where os.environ does not show them),
    # which would pin the child's idea of the window size through the resize.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(["tmux", "-L", SOCKET, *args], check=True, text=True,
                          stdout=subprocess.PIPE, env=env).stdout


SOCKET = f"chatcli-test-{os.getpid()}"


def wait_for(predicate, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        pane = tmux("capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", "t")
        if predicate(pane):
            return pane
        assert time.monotonic() < deadline, pane
        time.sleep(0.05)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_resizing_during_an_answer_prints_no_line_twice(driver, chatcli_home):
    """In colour (code blocks on a background), as a user sees it; tmux rewraps on resize."""
    script, source = driver
    env = child_env(chatcli_home)
    command = " ".join(["-u COLUMNS -u LINES -u NO_COLOR"] + [
        f"{k}={v!r}" for k, v in env.items() if k in ("PYTHONPATH", "CHATCLI_HOME", "TERM")
    ] + [sys.executable, str(script), str(source)])
    tmux("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", str(COLUMNS), "-y",
         str(ROWS), f"env {command}")
    try:
        tmux("set-option", "-g", "history-limit", "10000")
        wait_for(lambda pane: PROMPT_READY in pane)
        tmux("send-keys", "-t", "t", QUESTION, "Enter")
        wait_for(lambda pane: "CODE_05" in pane)  # mid-answer, the tail holds long code lines
        tmux("resize-window", "-t", "t", "-x", "50", "-y", "20")
        wait_for(lambda pane: "TR_10" in pane)
        tmux("resize-window", "-t", "t", "-x", "100", "-y", "30")
        pane = wait_for(lambda pane: "PARA_END" in pane and PROMPT_READY in pane)
    finally:
        subprocess.run(["tmux", "-L", SOCKET, "kill-server"], check=False)
    assert_once_in_order(pane.split("\n"), answer()[1])
    assert occurrences(pane, "QUESTION_ONE") == 1, pane
