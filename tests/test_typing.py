"""The type checker over the declared interfaces: mypy (configured in pyproject.toml) must find
nothing in chatcli, nor in tests/scripted.py, whose fake client must keep satisfying the
ChatClient protocol that LocalClient and RemoteClient implement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_is_clean(monkeypatch):
    api = pytest.importorskip("mypy.api")
    monkeypatch.chdir(ROOT)  # pyproject.toml's [tool.mypy] applies
    stdout, stderr, status = api.run(
        ["--no-incremental", "--cache-dir", os.devnull,  # nothing written into the checkout
         "--config-file", str(ROOT / "pyproject.toml"), "chatcli", "tests/scripted.py"]
    )
    assert status == 0, stdout + stderr
    assert "Success: no issues found" in stdout
