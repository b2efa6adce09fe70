"""The crash guard: a child process tries llama.cpp's default buffer types before first use.

The crash is simulated: with CHATCLI_TEST_PROBE_CRASH the probe child kills itself with SIGILL
in the named configuration, exactly as llama.cpp's AMX kernels do on an affected CPU.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx
import pytest

from chatcli.core.errors import ModelLoadError
from chatcli.engine import safemode

CHAT = [sys.executable, "-m", "chatcli"]
DET = {"temperature": 0, "seed": 42, "num_predict": 4}


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A cache of its own, and no verdict remembered in this process."""
    path = tmp_path / "safemode.json"
    monkeypatch.setenv(safemode.CACHE_ENV, str(path))
    monkeypatch.delenv(safemode.FORCE_ENV, raising=False)
    monkeypatch.setattr(safemode, "_memo", {})
    return path


@pytest.fixture
def seen_params(monkeypatch):
    """The use_extra_bufts of every model llama.cpp is asked to load in this process."""
    from llama_cpp import _internals

    from chatcli.engine.loaded import CACHE

    CACHE.unload_all()  # an earlier test's model may still be loaded (keep_alive)

    seen: list[bool] = []
    real = _internals.LlamaModel

    def spy(*args, **kwargs):
        seen.append(bool(kwargs["params"].use_extra_bufts))
        return real(*args, **kwargs)

    monkeypatch.setattr(_internals, "LlamaModel", spy)
    return seen


def _entries(path):
    return list(json.loads(path.read_text())["verdicts"].values())


def test_probe_passes_then_costs_nothing(fresh_cache, bundled_path, capsys):
    start = time.monotonic()
    first = safemode.decide(bundled_path)
    probe_s = time.monotonic() - start
    assert first.extra_bufts and first.source == "probe"
    [entry] = _entries(fresh_cache)
    assert entry["verdict"]["extra_bufts"] is True
    facts = entry["facts"]
    assert facts["llama_cpp_python"] and facts["system_info"] and facts["cpu"]
    assert facts["file_type"] != "unknown"

    safemode._memo.clear()  # as a new process would: the verdict comes from the file
    start = time.monotonic()
    again = safemode.decide(bundled_path)
    cached_s = time.monotonic() - start
    assert again.extra_bufts and again.source == "cache"
    assert cached_s < probe_s / 3
    assert capsys.readouterr().err == ""  # nothing to say when all is well
    print(f"probe {probe_s:.2f} s, cached verdict {cached_s * 1000:.1f} ms")


def test_simulated_crash_falls_back_says_so_once_and_caches(
        fresh_cache, bundled_path, monkeypatch, capsys, seen_params):
    import chatcli

    monkeypatch.setenv(safemode.SIMULATE_ENV, "full")
    verdict = safemode.decide(bundled_path)
    assert not verdict.extra_bufts and "SIGILL" in verdict.detail
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "safe configuration" in err and "SIGILL" in err
    assert "pip install --force-reinstall" in err and "-DGGML_NATIVE=OFF" in err
    [entry] = _entries(fresh_cache)
    assert entry["verdict"]["extra_bufts"] is False

    # The Python API loads with the safe configuration, answers, and says nothing more.
    safemode._memo.clear()
    reply = chatcli.chat(model="smollm2:135m", messages=[{"role": "user", "content": "Hi"}],
                         options=DET, keep_alive=0)
    assert reply.message.content
    assert seen_params == [False]
    assert capsys.readouterr().err == ""


def test_without_a_crash_the_default_buffer_types_are_used(fresh_cache, seen_params):
    import chatcli

    reply = chatcli.chat(model="smollm2:135m", messages=[{"role": "user", "content": "Hi"}],
                         options=DET, keep_alive=0)
    assert reply.message.content
    assert seen_params == [True]


def test_crash_in_both_configurations_is_one_clear_error(fresh_cache, bundled_path,
                                                         monkeypatch):
    monkeypatch.setenv(safemode.SIMULATE_ENV, "all")
    with pytest.raises(ModelLoadError) as e:
        safemode.decide(bundled_path)
    assert "SIGILL" in str(e.value) and "pip install" in str(e.value)
    assert not fresh_cache.exists()  # no verdict cached: the next run checks again


def test_forcing_either_configuration_skips_the_probe(fresh_cache, bundled_path, monkeypatch):
    monkeypatch.setenv(safemode.SIMULATE_ENV, "all")  # a probe would raise
    monkeypatch.setenv(safemode.FORCE_ENV, "1")
    assert safemode.decide(bundled_path).extra_bufts is False
    monkeypatch.setenv(safemode.FORCE_ENV, "0")
    assert safemode.decide(bundled_path).extra_bufts is True
    assert not fresh_cache.exists()  # nothing probed, nothing read


def test_a_child_that_fails_without_a_signal_is_not_a_verdict(fresh_cache, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 2000)
    verdict = safemode.probe(bad)
    assert verdict.extra_bufts and verdict.source == "inconclusive"


def _run(args, env, **kw):
    return subprocess.run(CHAT + args, env=env, capture_output=True, text=True, timeout=180,
                          **kw)


def test_chat_run_with_a_crashing_cpu(cli_env, tmp_path):
    env = {**cli_env, safemode.CACHE_ENV: str(tmp_path / "s.json"),
           safemode.SIMULATE_ENV: "full"}
    first = _run(["run", "smollm2:135m", "--temperature", "0", "--num-predict", "8", "Hi"],
                 env, input="")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip()
    assert first.stderr.count("safe configuration") == 1
    second = _run(["run", "smollm2:135m", "--temperature", "0", "--num-predict", "8", "Hi"],
                  env, input="")
    assert second.returncode == 0 and second.stdout.strip()
    assert "safe configuration" not in second.stderr  # said once, when it was found
    info = _run(["info"], env)
    assert info.returncode == 0, info.stderr
    assert "safe mode:          ON" in info.stdout and "SIGILL" in info.stdout


def test_chat_serve_with_a_crashing_cpu(cli_env, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**cli_env, safemode.CACHE_ENV: str(tmp_path / "s.json"),
           safemode.SIMULATE_ENV: "full", "CHATCLI_HOST": f"127.0.0.1:{port}"}
    proc = subprocess.Popen(CHAT + ["serve"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None
            try:
                httpx.get(f"{url}/api/version", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        r = httpx.post(f"{url}/api/chat", timeout=120, json={
            "model": "smollm2:135m", "stream": False, "options": DET,
            "messages": [{"role": "user", "content": "Hi"}]})
        assert r.status_code == 200 and r.json()["message"]["content"]
    finally:
        proc.terminate()
        proc.wait(15)
    assert proc.stderr.read().count("safe configuration") == 1


def test_chat_info_is_one_screen_for_a_bug_report(cli_env):
    p = _run(["info"], cli_env)
    assert p.returncode == 0, p.stderr
    labels = [line.split(":")[0] for line in p.stdout.splitlines()]
    for label in ("chatcli", "llama-cpp-python", "llama.cpp features", "cpu", "threads",
                  "gpu offload", "device", "safe mode", "data dir", "model store",
                  "ollama store", "bundled model"):
        assert label in labels, p.stdout
    assert len(p.stdout.splitlines()) < 40
    assert "not found" in p.stdout  # the tests' Ollama store does not exist


def test_rebuild_command_names_this_cpus_features():
    cmd = safemode.rebuild_command()
    assert cmd.startswith('CMAKE_ARGS="-DGGML_NATIVE=OFF')
    assert "llama-cpp-python==" in cmd
    flags = safemode.cpu_facts()["flags"].split()
    assert ("-DGGML_AVX2=ON" in cmd) == ("avx2" in flags)
