"""`chat pull` on the command line, against the local registry server; then list/show/run/rm."""

import hashlib
import json
import subprocess
import sys

import pexpect
import pytest
from registry_server import RegistryServer

from chatcli.models.store import MEDIA

CHAT = [sys.executable, "-m", "chatcli"]


@pytest.fixture
def registry(monkeypatch):
    with RegistryServer() as server:
        yield server


def chat(args, env, timeout=120):
    return subprocess.run(CHAT + args, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def test_pull_list_show_run_rm_from_the_command_line(registry, bundled_path, cli_env):
    manifest = registry.add_model("library", "smol", "latest", [
        (MEDIA + "model", bundled_path),
        (MEDIA + "params", json.dumps({"temperature": 0.1, "stop": ["<|im_end|>"]}).encode()),
        (MEDIA + "system", b"You are a small model."),
        (MEDIA + "license", b"Apache License 2.0"),
    ])
    name = f"{registry.host}/library/smol"
    p = chat(["pull", "--insecure", name], cli_env)
    assert p.returncode == 0, p.stderr
    # Off a terminal: a few plain status lines, no bars, no escape codes.
    lines = p.stderr.splitlines()
    assert lines[0] == "pulling manifest" and lines[-1] == "success"
    assert "verifying sha256 digest" in lines and "writing manifest" in lines
    assert "\x1b" not in p.stderr and len(lines) <= 12

    row = next(line for line in chat(["list"], cli_env).stdout.splitlines()
               if line.startswith(name))
    served_id = hashlib.sha256(json.dumps(manifest).encode()).hexdigest()[:12]
    assert row.split()[1] == served_id  # the registry's manifest bytes are kept: same ID
    show = chat(["show", name], cli_env).stdout
    assert "parameters          134.52M" in show and "You are a small model." in show
    assert 'stop           "<|im_end|>"' in show
    p = chat(["run", name, "--temperature", "0", "--num-predict", "8", "Say hi."], cli_env)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    assert chat(["rm", name], cli_env).returncode == 0
    assert chat(["list"], cli_env).stdout.count(name) == 0


def test_pull_errors_are_one_line(registry, cli_env):
    p = chat(["pull", "--insecure", f"{registry.host}/library/missing"], cli_env)
    assert p.returncode == 1 and "not found" in p.stderr and "Traceback" not in p.stderr
    p = chat(["pull", "../escape"], cli_env)
    assert p.returncode == 1 and "invalid model name" in p.stderr
    assert registry.paths() == ["/v2/library/missing/manifests/latest"]


def test_pull_on_a_terminal_shows_progress_bars_and_ctrl_c_resumes(registry, cli_env, tmp_path,
                                                                  chatcli_home):
    blob = tmp_path / "big.gguf"
    blob.write_bytes(b"GGUF" + bytes(range(256)) * 40000)  # ~10 MB, served slowly
    registry.add_model("library", "slow", "latest", [(MEDIA + "model", blob)])
    registry.chunk_delay = 0.02
    name = f"{registry.host}/library/slow"
    child = pexpect.spawn(sys.executable, ["-m", "chatcli", "pull", "--insecure", name],
                          env={**cli_env, "TERM": "xterm-256color"}, encoding="utf-8",
                          timeout=30, dimensions=(24, 120))
    child.expect(r"[1-9]\.[0-9]/10\.[0-9] MB")  # the bar shows bytes done of the size
    child.sendintr()
    child.expect("run the same command again to resume")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    partials = list((chatcli_home / "models" / "blobs").glob("*-partial"))
    assert partials, "Ctrl+C must leave a resumable partial file"
    registry.chunk_delay = 0
    registry.clear_log()
    p = chat(["pull", "--insecure", name], cli_env)
    assert p.returncode == 0, p.stderr
    ranges = [r.range for r in registry.blob_requests() if r.range]
    assert ranges and ranges[0].startswith("bytes=")
