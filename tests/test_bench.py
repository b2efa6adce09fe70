"""The benchmark suite runs (opt-in: `python -m pytest -m slow`)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_quick_benchmark_run_writes_a_results_table(tmp_path, cli_env):
    out = tmp_path / "RESULTS.md"
    p = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                       cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    text = out.read_text()
    for heading in ["Generation", "Multi-turn", "End to end", "Rendering alone", "Start-up",
                    "Memory", "Parallel requests"]:
        assert heading in text
    assert "| 32 tokens generated |" in text and "tok/s" in text
