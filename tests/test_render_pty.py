"""The Markdown renderer in a real pseudo-terminal: what ends up on the screen and in scrollback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pyte
import pytest

ROOT = Path(__file__).resolve().parent.parent
COLUMNS, ROWS = 80, 24

SCRIPT = '''
import random, sys, time
from chatcli.repl.render import make_renderer

def document():
    parts = ["# Heading HEAD_A", "", "Intro PARA_0 with **bold** and `code`.", ""]
    for p in range(1, 4):
        parts += [f"Paragraph PARA_{p} line one.", f"Paragraph PARA_{p}b line two.", ""]
    parts += ["## Code HEAD_B", "", "```python"]
    parts += [f"value_{i:02d} = compute('LINE_{i:02d}', {i})  # step {i}" for i in range(60)]
    parts += ["```", "", "## List HEAD_C", ""]
    parts += [f"- item ITEM_{i:02d} has some words" for i in range(30)]
    parts += ["", "| name | value |", "|------|-------|"]
    parts += [f"| ROW_{i} | {i * 7} |" for i in range(5)]
    parts += ["", "Closing words PARA_END."]
    return "\\n".join(parts) + "\\n"

if sys.argv[1] == "document":
    sys.stdout.write(document())
    sys.exit()
renderer = make_renderer(markdown=sys.argv[1] == "markdown")
text, rng, i = document(), random.Random(7), 0
renderer.begin()
try:
    while i < len(text):
        n = rng.randint(3, 8)
        renderer.content(text[i : i + n])
        i += n
        time.sleep(float(sys.argv[2]))
except KeyboardInterrupt:
    pass
renderer.end()
print("AFTER")
'''

MARKERS = (
    [f"HEAD_{c}" for c in "ABC"]
    + [f"PARA_{p}" for p in ("0", "1", "1b", "2", "2b", "3", "3b", "END")]
    + [f"LINE_{i:02d}" for i in range(60)]
    + [f"ITEM_{i:02d}" for i in range(30)]
    + [f"ROW_{i}" for i in range(5)]
)


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "stream.py"
    path.write_text(SCRIPT)
    return path


def child_env() -> dict[str, str]:
    # Colour on (the test fixture sets NO_COLOR), size from the pty rather than the environment.
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", PYTHONPATH=str(ROOT))
    return env


def run_in_pty(script: Path, delay: float, interrupt_at: str | None = None) -> bytes:
    child = pexpect.spawn(
        sys.executable, [str(script), "markdown", str(delay)],
        env=child_env(), dimensions=(ROWS, COLUMNS), timeout=60,
    )
    chunks = []
    if interrupt_at:
        child.expect(interrupt_at)
        chunks.append(child.before + child.after)
        child.sendintr()
    child.expect(pexpect.EOF)
    chunks.append(child.before)
    child.close()
    assert child.exitstatus == 0, b"".join(chunks)[-2000:]
    return b"".join(chunks)


def transcript(raw: bytes) -> tuple[list[str], list[list]]:
    """Scrollback plus screen as text lines, and the same lines as pyte characters."""
    screen = pyte.HistoryScreen(COLUMNS, ROWS, history=10_000)
    pyte.ByteStream(screen).feed(raw)
    rows = [[line[x] for x in range(COLUMNS)] for line in screen.history.top]
    rows += [[screen.buffer[y][x] for x in range(COLUMNS)] for y in range(ROWS)]
    return ["".join(c.data for c in row).rstrip() for row in rows], rows


def occurrences(lines: list[str], marker: str) -> int:
    return sum(len(re.findall(rf"\b{marker}\b", line)) for line in lines)


def test_long_markdown_answer_scrolls_without_duplicated_or_lost_lines(script):
    raw = run_in_pty(script, delay=0.002)
    lines, chars = transcript(raw)
    assert len(lines) > 3 * ROWS
    for marker in MARKERS:
        assert occurrences(lines, marker) == 1, (marker, "\n".join(lines))
    # Markdown was rendered: no fences, no bullets or hashes left as typed, a table drawn.
    text = "\n".join(lines)
    assert "```" not in text and "# Heading" not in text and "- item" not in text
    assert "• item ITEM_00" in text
    assert "AFTER" in lines and lines.index("AFTER") > max(
        i for i, line in enumerate(lines) if "PARA_END" in line
    )
    # Syntax highlighting: SGR colours in the raw bytes, several colours on one code line.
    assert b"\x1b[38;" in raw
    row = chars[next(i for i, line in enumerate(lines) if "LINE_07" in line)]
    assert len({c.fg for c in row if c.data.strip()}) > 1
    # The list and the code block, each cut into parts, show no gap where they were cut.
    first, last = (next(i for i, s in enumerate(lines) if m in s) for m in ("ITEM_00", "ITEM_29"))
    assert last - first == 29
    first, last = (next(i for i, s in enumerate(lines) if m in s) for m in ("LINE_00", "LINE_59"))
    assert last - first == 59
    assert raw.rfind(b"\x1b[?25h") > raw.rfind(b"\x1b[?25l")  # cursor shown again


def test_interrupted_answer_ends_cleanly(script):
    raw = run_in_pty(script, delay=0.01, interrupt_at="LINE_30")
    lines, _ = transcript(raw)
    assert "AFTER" in lines
    assert all(occurrences(lines, marker) <= 1 for marker in MARKERS), "\n".join(lines)
    assert occurrences(lines, "LINE_20") == 1
    assert occurrences(lines, "PARA_END") == 0
    assert raw.rfind(b"\x1b[?25h") > raw.rfind(b"\x1b[?25l")


def test_piped_plain_output_has_no_escape_codes_and_is_the_text(script):
    env = child_env()
    plain = subprocess.run(
        [sys.executable, str(script), "plain", "0"], env=env, stdout=subprocess.PIPE, check=True
    ).stdout
    document = subprocess.run(
        [sys.executable, str(script), "document"], env=env, stdout=subprocess.PIPE, check=True
    ).stdout
    assert b"\x1b" not in plain
    assert plain == document + b"AFTER\n"
