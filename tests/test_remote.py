"""RemoteClient and ``chat run --host``: the REPL's client over Ollama's HTTP API.

The server is ``chat serve``'s app running in this process on a free loopback port, answering
with the real bundled model.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from conftest import DET
from live_server import ServerThread

from chatcli.client.remote import RemoteClient, parse_parameters
from chatcli.core.errors import ChatCliError, ModelNotFoundError
from chatcli.core.events import ContentDelta, Done
from chatcli.core.hosts import host_url

MODEL = "smollm2:135m"
HI = [{"role": "user", "content": "Say hi"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon."}]


@pytest.fixture(scope="module")
def server():
    from chatcli.serve.app import build_app

    with ServerThread(build_app()) as running:
        yield running


@pytest.fixture
def remote(server, bundled_path):
    client = RemoteClient(server.url)
    yield client
    client.close()


def wait_for_model_lock(timeout: float) -> None:
    """Fail unless the bundled model's lock is free within ``timeout`` (no answer running)."""
    from chatcli.engine.loaded import CACHE

    entry = next(e for e in CACHE.loaded() if e.model.name == MODEL)
    deadline = time.monotonic() + timeout
    while not entry.lock.acquire(blocking=False):
        assert time.monotonic() < deadline, "the server went on generating"
        time.sleep(0.01)
    entry.lock.release()


# -- the client ----------------------------------------------------------------------------


def test_chat_streams_events_like_the_local_client(remote):
    from chatcli.client.local import LocalClient

    options = {**DET, "num_predict": 24}
    events = list(remote.chat(MODEL, HI, options))
    assert isinstance(events[-1], Done)
    assert all(isinstance(e, ContentDelta) for e in events[:-1]) and len(events) > 2
    metrics = events[-1].metrics
    assert metrics.eval_count > 0 and metrics.prompt_eval_count > 0
    assert metrics.total_duration > 0 and metrics.eval_duration > 0
    text = "".join(e.text for e in events[:-1])
    local = "".join(e.text for e in LocalClient().chat(MODEL, HI, options)
                    if isinstance(e, ContentDelta))
    assert text == local


def test_resolve(remote):
    assert remote.resolve(MODEL).name == MODEL
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        remote.resolve("no-such-model:1b")


def test_show_matches_the_local_client(remote):
    from chatcli.client.local import LocalClient

    info = remote.show(MODEL)
    local = LocalClient().show(MODEL)
    for key in ("architecture", "parameters", "context length", "embedding length",
                "quantization", "capabilities", "template", "template_is_fallback"):
        assert info[key] == local[key], key
    assert info["path"] == f"remote: {remote.base_url}" and info["name"] == MODEL


def test_cancel_mid_stream_stops_the_server(remote):
    cancel = threading.Event()
    events = []
    for event in remote.chat(MODEL, STORY, {**DET, "num_predict": 400}, cancel=cancel):
        events.append(event)
        if len(events) == 3:
            cancel.set()
            cancelled_at = time.monotonic()
    assert events[-1] == Done(done_reason="cancelled")
    assert len(events) <= 5  # at most a token already on the wire
    assert time.monotonic() - cancelled_at < 5  # generous: the event count above is the test
    wait_for_model_lock(2)  # the whole story would take several seconds


def test_cancel_before_the_first_token(remote):
    # A long prompt keeps the server busy before it sends anything: cancel must still end
    # the answer at once (the socket is shut, not waited on).
    long_prompt = [{"role": "user", "content": "Summarise: " + "the cat sat on the mat. " * 50}]
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    start = time.monotonic()
    events = list(remote.chat(MODEL, long_prompt, {**DET, "num_predict": 400}, cancel=cancel))
    assert events[-1].done_reason == "cancelled"
    assert time.monotonic() - start < 3.0  # a whole 400-token answer takes > 5 s
    # The server notices the hang-up once it has something to send, at the latest.
    wait_for_model_lock(60)


def test_a_session_keeps_the_conversation(remote):
    from chatcli.client.session import Session

    session = Session(remote, MODEL, options={**DET, "num_predict": 12})
    list(session.ask("Say hi"))
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    assert session.last_answer and session.last_done.metrics.eval_count > 0


def test_unreachable_server_is_one_clear_error():
    client = RemoteClient("127.0.0.1:9")
    with pytest.raises(ChatCliError, match=r"could not connect to http://127\.0\.0\.1:9"):
        list(client.chat(MODEL, HI))
    with pytest.raises(ChatCliError, match="could not connect"):
        client.resolve(MODEL)


@pytest.mark.parametrize("text, url", [
    ("localhost", "http://localhost:11434"),
    ("example.com:8080", "http://example.com:8080"),
    (":9000", "http://127.0.0.1:9000"),
    ("http://example.com", "http://example.com:11434"),  # where `chat serve` would listen
    ("https://example.com/ollama/", "https://example.com:443/ollama"),
    ("[::1]:11500", "http://[::1]:11500"),
])
def test_host_forms_are_ollamas(text, url):
    assert host_url(text) == url


def test_bad_hosts_are_refused():
    for text in ("ftp://example.com", "example.com:http", "example.com:70000"):
        with pytest.raises(ChatCliError):
            host_url(text)


def test_show_parameters_text_becomes_options():
    text = ('stop                           "<|im_end|>"\nstop "a\\nb"\ntemperature 0.2\n'
            'mirostat 1\nnum_keep 24\ntfs_z 0.9')
    assert parse_parameters(text) == {"stop": ["<|im_end|>", "a\nb"], "temperature": 0.2,
                                      "mirostat": 1}


# -- chat run --host -----------------------------------------------------------------------


def chat(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatcli", "run", *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def test_one_shot_through_the_server(server, bundled_path, cli_env):
    result = chat("--host", server.url, MODEL, "Say hi", "--temperature", "0", "--seed", "42",
                  "--num-predict", "16", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    # CHATCLI_HOST does the same; a model the server lacks fails with its name.
    missing = chat("no-such-model:1b", "Say hi", env={**cli_env, "CHATCLI_HOST": server.url})
    assert missing.returncode == 1
    assert "no-such-model:1b" in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_unreachable_host_fails_in_one_line(cli_env):
    result = chat("--host", "http://127.0.0.1:9", MODEL, "Say hi", env=cli_env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Error: could not connect to http://127.0.0.1:9: is `chat serve` (or ollama) running "
        "there?"
    ]


def test_repl_through_the_server(server, bundled_path, cli_env):
    """The REPL unchanged over --host: Ctrl+C stops the remote answer (the server frees the
    model), /show reads the server's facts, /model checks the server."""
    import pexpect

    child = pexpect.spawn(sys.executable, ["-m", "chatcli", "run", "--host", server.url, MODEL,
                                           "--temperature", "0", "--seed", "42"],
                          env={**cli_env, "TERM": "xterm-256color"}, encoding="utf-8",
                          timeout=60, dimensions=(30, 100))
    ready = "Send a message"
    child.expect(ready)
    child.send("/set parameter num_predict 2000\r")
    child.expect("num_predict")
    child.send("Write a very long story about a dragon, at least twenty paragraphs.\r")
    child.expect("dragon", timeout=30)  # the echo
    time.sleep(1.5)
    started = time.monotonic()
    child.send("\x03")
    child.expect("Stopped.", timeout=10)
    child.expect(ready, timeout=10)
    assert time.monotonic() - started < 5.0  # generous; the whole answer takes > 20 s
    wait_for_model_lock(2)
    child.send("/show info\r")
    child.expect(f"remote: {server.url}")
    child.expect(ready)
    child.send("/model no-such-model:1b\r")
    child.expect("no-such-model:1b")
    child.expect(ready)
    child.send("/bye\r")
    child.expect(pexpect.EOF)
