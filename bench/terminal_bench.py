"""Figures that involve the terminal: `chat run` end to end, rendering alone, start-up."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import Row, Section, median, never_eog

MARKDOWN_PROMPT = ("Write a long Markdown guide to sorting algorithms with headings, bullet "
                   "lists, a comparison table and Python code blocks for each algorithm.")
ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    env["TERM"] = "xterm-256color"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _pty_rate(model: str, n: int, *flags: str) -> float:
    """tokens/s of `chat run` in a pseudo-terminal rendering Markdown (or with ``--plain``):
    from the first answer text to the end of rendering, as recorded by the child itself."""
    import json
    import tempfile

    import pexpect

    with tempfile.NamedTemporaryFile(suffix=".json") as marks:
        env = {**_env(), "BENCH_TIMING_FILE": marks.name}
        child = pexpect.spawn(sys.executable, ["-m", "bench.child_chat", "run", model,
                                               "--temperature", "0", "-o", "repeat_penalty=1",
                                               "--num-predict", str(n), *flags,
                                               MARKDOWN_PROMPT],
                              env=env, cwd=str(ROOT), timeout=600, dimensions=(40, 120))
        child.expect(pexpect.EOF)
        child.close()
        if child.exitstatus != 0:
            raise RuntimeError(f"chat run exited {child.exitstatus}: {child.before[-500:]!r}")
        t = json.loads(Path(marks.name).read_text())
    return n / (t["end"] - t["first"])


def _api_rate(model: str, n: int) -> float:
    """tokens/s of the Python API streaming the same answer: first chunk to the last."""
    import chatcli

    with never_eog():
        first = None
        for part in chatcli.chat(model, [{"role": "user", "content": MARKDOWN_PROMPT}],
                                 stream=True, keep_alive=0,
                                 options={"temperature": 0, "repeat_penalty": 1.0,
                                          "num_predict": n}):
            if part.message.content and first is None:
                first = time.perf_counter()
        return n / (time.perf_counter() - first)


def end_to_end(model: str, model_path: Path, n: int, reps: int) -> Section:
    """`chat run` on a pty vs the Python API, interleaved (API, Markdown, plain, API, ...).

    The plain-text run separates what Markdown rendering costs (Markdown vs plain, same
    process and pty) from what the rest of the path costs (plain vs the API)."""
    md, plain, base = [], [], []
    for _ in range(reps):
        base.append(_api_rate(model, n))
        md.append(_pty_rate(model, n))
        plain.append(_pty_rate(model, n, "--plain"))
    section = Section("End to end: `chat run` in a pseudo-terminal vs the Python API streaming "
                      "the same answer")

    def row(name: str, ours: list[float], theirs: list[float], baseline: str, goal: str) -> Row:
        ratios = sorted(o / b for o, b in zip(ours, theirs, strict=True))
        spread = f"; pairwise ratios {ratios[0]:.3f}-{ratios[-1]:.3f}" if len(ratios) > 1 else ""
        return Row(name, f"{median(ours):.1f} tok/s", f"{median(theirs):.1f} tok/s ({baseline})",
                   median(ratios), goal,
                   f"first answer text to the end of drawing, 120x40 pty, median of {reps} "
                   f"interleaved pairs{spread}")

    section.rows.append(row(f"{n}-token Markdown answer", md, base, "API", ">= 0.97"))
    section.rows.append(row(f"{n}-token answer, --plain", plain, base, "API", ""))
    section.rows.append(row("Markdown vs --plain (the rendering alone)", md, plain, "--plain",
                            ">= 0.97"))
    return section


SAMPLE = """## Quicksort

Quicksort picks a *pivot* and partitions the list around it. It runs in `O(n log n)` on average.

- pick a pivot
- partition into smaller and larger items
- recurse on both halves

```python
def quicksort(items):
    if len(items) <= 1:
        return items
    pivot, *rest = items
    return quicksort([x for x in rest if x < pivot]) + [pivot] + \\
        quicksort([x for x in rest if x >= pivot])
```

| algorithm | best | worst |
|---|---|---|
| quicksort | n log n | n^2 |
| mergesort | n log n | n log n |

"""


def _render_cost(tokens: int) -> float:
    """Seconds per token to stream ``tokens`` 4-character pieces of Markdown to a terminal."""
    from chatcli.repl.render import MarkdownRenderer

    text = SAMPLE * (tokens * 4 // len(SAMPLE) + 1)
    pieces = [text[i : i + 4] for i in range(0, tokens * 4, 4)]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    renderer = MarkdownRenderer(out)
    start = time.perf_counter()
    renderer.begin()
    for piece in pieces:
        renderer.content(piece)
    renderer.end()
    return (time.perf_counter() - start) / tokens


def rendering(reps: int) -> Section:
    small = median([_render_cost(400) for _ in range(reps)])
    large = median([_render_cost(4000) for _ in range(reps)])
    section = Section("Rendering alone: streamed Markdown, cost per token")
    section.rows.append(Row("per token at 4,000 vs 400 tokens", f"{large * 1e6:.0f} µs",
                            f"{small * 1e6:.0f} µs", large / small, "<= 1.5"))
    return section


def _time(cmd: list[str], until_output: bool = False) -> float:
    env = _env()
    start = time.perf_counter()
    if until_output:
        proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        proc.stdout.read(1)
        elapsed = time.perf_counter() - start
        proc.kill()
        proc.wait()
        return elapsed
    subprocess.run(cmd, env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def startup(model: str, reps: int) -> Section:
    base = median([_time([sys.executable, "-c", "pass"]) for _ in range(reps)])
    help_t = median([_time([sys.executable, "-m", "chatcli", "--help"]) for _ in range(reps)])
    first = median([_time([sys.executable, "-m", "chatcli", "run", model, "--temperature", "0",
                           "hi"], until_output=True) for _ in range(reps)])
    section = Section("Start-up, vs `python -c pass`")
    section.rows.append(Row("`chat --help`", f"{help_t * 1000:.0f} ms", f"{base * 1000:.0f} ms",
                            help_t / base, ""))
    section.rows.append(Row(f"`chat run {model} \"hi\"` to first token", f"{first * 1000:.0f} ms",
                            f"{base * 1000:.0f} ms", first / base, "",
                            "includes loading the model"))
    return section
