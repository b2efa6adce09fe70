"""`chat serve`: Ollama's HTTP API, spoken to by the official ollama client and by raw HTTP.

One server runs in-process (uvicorn in a thread) on a free loopback port for the whole module;
each test still gets its own CHATCLI_HOME, which the server reads per request.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import httpx
import ollama
import pytest
from conftest import DET, ENDLESS_PROMPT
from registry_server import RegistryServer

from chatcli import __version__
from chatcli.cli.serve import listen_address
from chatcli.serve.app import build_app

MODEL = "smollm2:135m"
METRICS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
           "eval_count", "eval_duration")
# One llama.cpp thread: on a busy machine (tests running side by side) several threads per
# answer spin at their barriers and a 12-token answer can take a minute; one thread cannot.
ONE = {**DET, "num_thread": 1}
SHORT = {**ONE, "num_predict": 12}
MODEL_MEDIA = "application/vnd.ollama.image.model"
# A prompt smollm2 answers at great length (see conftest.ENDLESS_PROMPT).
ENDLESS = {"role": "user", "content": ENDLESS_PROMPT}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def client(url):
    return ollama.Client(host=url)


def _lines(response: httpx.Response) -> list[dict]:
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.iter_lines() if line]


def _assert_final(obj: dict) -> None:
    assert obj["done"] is True and obj["done_reason"] in ("stop", "length")
    for name in METRICS:
        assert obj[name] > 0, name
    assert obj["total_duration"] >= obj["eval_duration"]
    assert obj["created_at"].endswith("Z")


def _loaded(http) -> list[str]:
    return [m["name"] for m in http.get("/api/ps").json()["models"]]


def _tiny_model(http, tiny_gguf, name: str = "tiny") -> str:
    """Upload the tiny GGUF as a blob and create a model from it."""
    from live_server import create_model

    return create_model(http, name, tiny_gguf, "tiny.gguf")


# -- the seed's examples, through the official ollama client --------------------------------------


def test_seed_multi_turn_example_with_the_ollama_client(client):
    messages = [
        {'role': 'user', 'content': 'What is the capital of France?'}
    ]

    response = client.chat(model=MODEL, messages=messages, options=SHORT)
    messages.append(response.message)

    # Follow-up question
    messages.append({
        'role': 'user',
        'content': 'What is its population?'
    })

    response2 = client.chat(model=MODEL, messages=messages, options=SHORT)
    print(response2.message.content)

    for r in (response, response2):
        assert r.message.role == "assistant" and r.message.content.strip()
        assert r.done is True and r.done_reason in ("stop", "length")
        for name in METRICS:
            assert getattr(r, name) > 0, name
    # The second turn's prompt is the whole conversation, as the seed counts it (what came from
    # the KV cache: tests/test_response_fields.py).
    assert response2.prompt_eval_count > response.prompt_eval_count


def test_seed_pirate_example_with_the_ollama_client(client):
    messages = [
        {
            'role': 'system',
            'content': 'You are a helpful assistant that speaks like a pirate.'
        },
        {
            'role': 'user',
            'content': 'Tell me about Python programming.'
        }
    ]

    response = client.chat(model=MODEL, messages=messages, options=SHORT)
    print(response.message.content)
    assert response.message.role == "assistant" and response.message.content.strip()
    assert response.eval_count <= SHORT["num_predict"]


def test_streaming_with_the_ollama_client(client):
    chunks = list(client.chat(model=MODEL, stream=True, options=SHORT,
                              messages=[{'role': 'user', 'content': 'Why is the sky blue?'}]))
    *deltas, last = chunks
    assert len(deltas) >= 2
    for c in deltas:
        assert c.done is False and c.message.role == "assistant"
        assert isinstance(c.message.content, str)
    assert "".join(c.message.content for c in deltas).strip()
    assert last.done is True and last.done_reason == "length" and last.eval_count == 12
    assert last.message.content == ""
    for name in METRICS:
        assert getattr(last, name) > 0, name
    # Streaming and non-streaming agree for the same seed.
    whole = client.chat(model=MODEL, options=SHORT,
                        messages=[{'role': 'user', 'content': 'Why is the sky blue?'}])
    assert whole.message.content == "".join(c.message.content for c in deltas)


def test_generate_with_the_ollama_client(client):
    r = client.generate(model=MODEL, prompt="Why is the sky blue?", options=SHORT)
    assert r.response.strip() and r.done and r.eval_count == 12
    assert r.context and len(r.context) > r.eval_count  # the prompt's and answer's tokens
    parts = list(client.generate(model=MODEL, prompt="Why is the sky blue?", options=SHORT,
                                 stream=True))
    assert "".join(p.response for p in parts) == r.response


# -- raw HTTP ------------------------------------------------------------------------------------


SEED_CURL_BODY = {
    "model": "llama3.2",
    "messages": [
        {"role": "user", "content": "why is the sky blue?"},
        {"role": "assistant", "content": "due to rayleigh scattering."},
        {"role": "user", "content": "how is that different than mie scattering?"},
    ],
}


def test_seed_curl_example_streams_ndjson(http):
    body = {**SEED_CURL_BODY, "model": MODEL, "options": {**ONE, "num_predict": 24}}
    with http.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200
        lines = _lines(r)
    *deltas, last = lines
    assert len(deltas) >= 2
    for obj in deltas:
        assert obj["done"] is False and obj["model"] == MODEL
        assert obj["message"]["role"] == "assistant"
        assert isinstance(obj["message"]["content"], str)
        assert obj["created_at"].endswith("Z")
    assert "".join(o["message"]["content"] for o in deltas).strip()
    assert last["message"] == {"role": "assistant", "content": ""}
    _assert_final(last)


def test_stream_false_is_one_object(http):
    body = {**SEED_CURL_BODY, "model": MODEL, "options": SHORT, "stream": False}
    r = http.post("/api/chat", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    obj = r.json()
    assert obj["message"]["role"] == "assistant" and obj["message"]["content"].strip()
    _assert_final(obj)


def test_generate_over_http(http):
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "Name a color.",
                                         "system": "Answer in one word.", "options": SHORT,
                                         "stream": False})
    obj = r.json()
    assert r.status_code == 200 and obj["response"].strip()
    assert obj["context"] and all(isinstance(t, int) for t in obj["context"])
    _assert_final(obj)
    with http.stream("POST", "/api/generate", json={"model": MODEL, "prompt": "Name a color.",
                                                    "options": SHORT}) as r:
        lines = _lines(r)
    assert all("response" in o for o in lines) and lines[-1]["done"] is True


def test_generate_raw_sends_the_prompt_untemplated(http):
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "The capital of France is",
                                         "raw": True, "options": SHORT, "stream": False})
    obj = r.json()
    assert r.status_code == 200 and obj["response"].strip()
    # The prompt is only its own few tokens: no template, no default system prompt.
    assert obj["prompt_eval_count"] <= 8


def test_generate_with_a_suffix_says_the_model_cannot_insert(http):
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "def add(a, b):",
                                         "suffix": "    return c"})
    assert r.status_code == 400 and "does not support insert" in r.json()["error"]
    r = http.post("/api/generate", json={"model": "no-such-model", "prompt": "x", "suffix": "y"})
    assert r.status_code == 404


def test_empty_messages_load_and_unload_the_model(http):
    r = http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"
    assert MODEL not in _loaded(http)
    r = http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": "10m"})
    assert r.status_code == 200
    obj = r.json()
    assert obj["done"] is True and obj["done_reason"] == "load"
    assert obj["message"] == {"role": "assistant", "content": ""}
    (entry,) = [m for m in http.get("/api/ps").json()["models"] if m["name"] == MODEL]
    expires = datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00"))
    left = expires - datetime.now(timezone.utc)
    assert timedelta(minutes=9) < left <= timedelta(minutes=10)
    assert entry["size"] > 50e6 and entry["size_vram"] in (0, entry["size"])
    assert entry["details"]["format"] == "gguf" and len(entry["digest"]) == 64
    assert entry["processor"] in ("100% CPU", "100% GPU")
    # Kept forever: far in the future, as Ollama shows it.
    http.post("/api/generate", json={"model": MODEL, "keep_alive": -1})
    (entry,) = [m for m in http.get("/api/ps").json()["models"] if m["name"] == MODEL]
    assert entry["expires_at"] > "2200"
    r = http.post("/api/generate", json={"model": MODEL, "keep_alive": 0})
    assert r.json()["done_reason"] == "unload" and r.json()["response"] == ""
    assert MODEL not in _loaded(http)


def test_keep_alive_expiry_unloads(http):
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "keep_alive": "1s",
                                         "options": {**ONE, "num_predict": 2}, "stream": False})
    assert r.status_code == 200
    assert MODEL in _loaded(http)
    deadline = time.monotonic() + 10
    while MODEL in _loaded(http):
        assert time.monotonic() < deadline, "keep_alive 1s did not unload the model"
        time.sleep(0.1)


def test_tags_show_version_and_root(http, client):
    assert http.get("/").text == "chatcli is running"
    assert http.head("/").status_code == 200
    # The Ollama release whose API this matches (clients gate features on it), and ours.
    assert http.get("/api/version").json() == {"version": "0.12.10",
                                               "chatcli_version": __version__}
    assert http.head("/api/version").status_code == 200
    models = client.list().models
    (tag,) = [m for m in models if m.model == MODEL]
    assert tag.details.format == "gguf" and tag.details.family == "llama"
    assert tag.details.quantization_level and tag.details.parameter_size.endswith("M")
    assert tag.size > 50e6 and len(tag.digest) == 64 and tag.modified_at
    info = client.show(MODEL)
    assert "completion" in info.capabilities
    assert info.modelinfo["general.architecture"] == "llama"
    assert info.modelinfo["llama.context_length"] == 8192
    assert "<|im_start|>" in info.template and info.modelfile.startswith("#")
    assert info.details.family == "llama" and info.modified_at
    # Older clients send "name".
    assert http.post("/api/show", json={"name": MODEL}).json()["details"]["format"] == "gguf"


# -- errors ----------------------------------------------------------------------------------


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "invalid JSON"),
    (b"", 400, "missing request body"),
    (b"[1, 2]", 400, "JSON object"),
    ({"messages": USER}, 400, "'model' is required"),
    ({"model": MODEL, "messages": USER, "options": {"temperature": "hot"}}, 400, "temperature"),
    ({"model": MODEL, "messages": USER, "options": {"top_p": 7}}, 400, "top_p"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, 400, "robot"),
    ({"model": MODEL, "messages": "hi"}, 400, "'messages' must be a list"),
    ({"model": MODEL, "messages": USER, "stream": "yes"}, 400, "'stream' must be a boolean"),
    ({"model": MODEL, "messages": USER, "format": "xml"}, 400, "'format'"),
    ({"model": MODEL, "messages": USER, "think": "very"}, 400, "'think'"),
    ({"model": MODEL, "messages": USER, "think": True}, 400, "does not support thinking"),
    ({"model": MODEL, "messages": USER, "keep_alive": "soon"}, 400, "keep_alive"),
    ({"model": MODEL, "messages": USER, "format": {"type": "integer", "minimum": 3}}, 400,
     "minimum"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi", "images": ["/etc/hosts"]}]},
     400, "base64"),
    ({"model": "no-such-model", "messages": USER}, 404,
     'model "no-such-model" not found, try pulling it first'),
])
def test_errors_are_json_with_the_right_status(http, body, status, words):
    if isinstance(body, bytes):
        r = http.post("/api/chat", content=body)
    else:
        r = http.post("/api/chat", json=body)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert words in r.json()["error"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize("name", ["/etc/passwd", "../x.gguf", "./model.gguf", "~/m.gguf",
                                  "models/x.gguf", "a/../../b"])
def test_path_like_model_names_are_refused(http, name, tmp_path):
    for path, body in (("/api/chat", {"model": name, "messages": USER}),
                       ("/api/generate", {"model": name, "prompt": "hi"}),
                       ("/api/show", {"model": name}),
                       ("/api/create", {"model": "x", "from": name}),
                       ("/api/copy", {"source": name, "destination": "y"})):
        r = http.post(path, json=body)
        assert r.status_code == 400, (path, r.text)
        assert "error" in r.json()


def test_bodies_over_the_limit_get_413(http):
    big = b'{"model": "' + b"x" * (9 << 20) + b'"}'
    r = http.post("/api/chat", content=big)
    assert r.status_code == 413 and "too large" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        for _ in range(9):
            yield b" " * (1 << 20)

    r = http.post("/api/chat", content=chunks())
    assert r.status_code == 413


def test_unknown_routes_and_methods_are_json_errors(http):
    r = http.get("/api/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = http.get("/api/chat")
    assert r.status_code == 405 and "error" in r.json()


def test_cors_allows_local_origins_only(http):
    local = http.get("/api/version", headers={"Origin": "http://localhost:3000"})
    assert local.headers["access-control-allow-origin"] == "http://localhost:3000"
    for origin in ("http://127.0.0.1:8080", "app://obsidian.md"):
        r = http.get("/api/version", headers={"Origin": origin})
        assert r.headers["access-control-allow-origin"] == origin
    evil = http.get("/api/version", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in evil.headers
    preflight = http.options("/api/chat", headers={"Origin": "http://evil.example",
                                                   "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_chatcli_origins_extends_cors(monkeypatch):
    from starlette.testclient import TestClient

    monkeypatch.setenv("CHATCLI_ORIGINS", "http://evil.example, https://*.example.org")
    with TestClient(build_app()) as tc:
        for origin in ("http://evil.example", "https://app.example.org"):
            r = tc.get("/api/version", headers={"Origin": origin})
            assert r.headers["access-control-allow-origin"] == origin
        r = tc.get("/api/version", headers={"Origin": "http://other.example"})
        assert "access-control-allow-origin" not in r.headers
    monkeypatch.setenv("CHATCLI_ORIGINS", "*")
    with TestClient(build_app()) as tc:
        r = tc.get("/api/version", headers={"Origin": "http://other.example"})
        assert r.headers["access-control-allow-origin"] == "http://other.example"


def test_dns_rebinding_hosts_are_refused(http):
    assert http.get("/api/version", headers={"Host": "evil.example"}).status_code == 403
    assert http.get("/api/version", headers={"Host": "localhost:11434"}).status_code == 200


def _scripted_answer(monkeypatch, events):
    """Make the server's runner answer with ``events`` (an exception in them is raised)."""
    from chatcli.serve import runner

    async def answer(model, messages, options, **request):
        for event in events:
            if isinstance(event, BaseException):
                raise event
            yield event

    monkeypatch.setattr(runner, "answer", answer)


def test_thinking_and_tool_calls_take_ollamas_shape(http, monkeypatch):
    from chatcli.core.events import ContentDelta, Done, Metrics, ThinkingDelta, ToolCall

    metrics = Metrics(total_duration=1, load_duration=2, prompt_eval_count=3,
                      prompt_eval_duration=4, eval_count=5, eval_duration=6)
    _scripted_answer(monkeypatch, [ThinkingDelta("Hmm."), ContentDelta("Hi"),
                                   ToolCall("get_weather", {"city": "Paris"}),
                                   Done("stop", metrics)])
    with http.stream("POST", "/api/chat", json={"model": MODEL, "messages": USER}) as r:
        lines = _lines(r)
    assert [o["message"].get("thinking") for o in lines[:3]] == ["Hmm.", None, None]
    assert lines[1]["message"]["content"] == "Hi"
    [call] = lines[2]["message"]["tool_calls"]
    assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"])
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert lines[3]["done"] is True and lines[3]["eval_duration"] == 6
    whole = http.post("/api/chat", json={"model": MODEL, "messages": USER,
                                         "stream": False}).json()
    assert whole["message"] == {"role": "assistant", "content": "Hi", "thinking": "Hmm.",
                                "tool_calls": lines[2]["message"]["tool_calls"]}
    gen = http.post("/api/generate", json={"model": MODEL, "prompt": "x", "stream": False}).json()
    assert gen["response"] == "Hi" and gen["thinking"] == "Hmm."


def test_an_error_after_the_stream_began_is_its_last_line(http, monkeypatch):
    from chatcli.core.events import ContentDelta

    _scripted_answer(monkeypatch, [ContentDelta("Hi"), RuntimeError("llama_decode returned -3")])
    with http.stream("POST", "/api/chat", json={"model": MODEL, "messages": USER}) as r:
        assert r.status_code == 200
        lines = _lines(r)
    assert lines[0]["message"]["content"] == "Hi"
    assert lines[-1] == {"error": "llama.cpp failed while answering: llama_decode returned -3"}
    _scripted_answer(monkeypatch, [KeyError("/secret/path")])
    r = http.post("/api/chat", json={"model": MODEL, "messages": USER})
    assert r.status_code == 500 and "/secret/path" not in r.text and "Traceback" not in r.text


# -- concurrency and cancellation ----------------------------------------------------------------


def test_concurrent_clients_all_get_whole_answers(url):
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=120) as c:
                if i % 2:
                    r = c.post("/api/generate", json={"model": MODEL, "prompt": f"Count to {i}.",
                                                      "options": SHORT})
                    results[i] = _lines(r)
                else:
                    r = c.post("/api/chat", json={"model": MODEL, "options": SHORT, "messages": [
                        {"role": "user", "content": f"Say {i} words."}]})
                    results[i] = _lines(r)
        except Exception as e:  # reported by the assertions below
            results[i] = e

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == [0, 1, 2, 3]
    for i, lines in results.items():
        assert isinstance(lines, list), lines
        *deltas, last = lines
        _assert_final(last)
        assert last["eval_count"] == 12
        text = "".join(o["response"] if i % 2 else o["message"]["content"] for o in deltas)
        assert text.strip()


def test_a_client_that_hangs_up_frees_the_model(http, url):
    body = {"model": MODEL, "messages": [ENDLESS],
            "options": {**ONE, "repeat_penalty": 1.0, "num_predict": 1500}}
    with httpx.Client(base_url=url, timeout=60) as c, \
            c.stream("POST", "/api/chat", json=body) as r:
        for n, _line in enumerate(r.iter_lines()):
            if n == 5:
                break
    # The long answer (1500 tokens: many seconds) must stop now, so the model is free.
    start = time.monotonic()
    r = http.post("/api/chat", json={"model": MODEL, "messages": USER, "stream": False,
                                     "options": {**ONE, "num_predict": 4}})
    assert r.status_code == 200 and r.json()["done"] is True
    assert time.monotonic() - start < 4


def test_a_non_streaming_client_that_hangs_up_frees_the_model(http, url):
    body = {"model": MODEL, "messages": [ENDLESS], "stream": False,
            "options": {**ONE, "repeat_penalty": 1.0, "num_predict": 1500}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/api/chat", json=body, timeout=1.0)
    start = time.monotonic()
    r = http.post("/api/chat", json={"model": MODEL, "messages": USER, "stream": False,
                                     "options": {**ONE, "num_predict": 4}})
    assert r.status_code == 200
    assert time.monotonic() - start < 4


def test_a_stalled_reader_does_not_hold_up_another_model(http, url, tiny_gguf):
    tiny = _tiny_model(http, tiny_gguf)
    body = {"model": MODEL, "messages": [ENDLESS],
            "options": {**ONE, "repeat_penalty": 1.0, "num_predict": 1500}}
    with httpx.Client(base_url=url, timeout=60) as c, \
            c.stream("POST", "/api/chat", json=body) as r:
        next(r.iter_lines())  # then read nothing more while the other model answers
        start = time.monotonic()
        other = http.post("/api/generate", json={"model": tiny, "prompt": "hello",
                                                 "options": {**ONE, "num_predict": 4},
                                                 "stream": False})
        assert other.status_code == 200 and other.json()["done"] is True
        assert time.monotonic() - start < 4


# -- the store: pull, copy, delete, create, blobs --------------------------------------------


def test_pull_copy_show_delete(http, client, tiny_gguf):
    with RegistryServer() as registry:
        registry.add_model("library", "tiny", "latest", [(MODEL_MEDIA, tiny_gguf)])
        name = f"{registry.host}/library/tiny:latest"
        with http.stream("POST", "/api/pull", json={"model": name, "insecure": True}) as r:
            assert r.status_code == 200
            events = _lines(r)
        statuses = [e["status"] for e in events]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        layer = next(e for e in events if "total" in e)
        assert layer["digest"].startswith("sha256:") and layer["total"] > 0
        assert any(e.get("completed") == e.get("total") for e in events if "total" in e)
        # The official client, again: nothing left to fetch.
        progress = list(client.pull(name, insecure=True, stream=True))
        assert progress[-1].status == "success"
        assert client.pull(name, insecure=True).status == "success"

        # A missing model, as Ollama answers it: streamed, "pulling manifest" then the error
        # (status 200, already sent); not streamed, an error status (500, as Ollama's).
        missing = {"model": f"{registry.host}/library/nope", "insecure": True}
        with http.stream("POST", "/api/pull", json=missing) as r:
            assert r.status_code == 200
            events = _lines(r)
        assert events[0] == {"status": "pulling manifest"}
        assert list(events[-1]) == ["error"] and "not found" in events[-1]["error"]
        r = http.post("/api/pull", json={**missing, "stream": False})
        assert r.status_code == 500 and "not found" in r.json()["error"]
        with pytest.raises(ollama.ResponseError) as e:  # the official client, both ways
            list(client.pull(missing["model"], insecure=True, stream=True))
        assert "not found" in str(e.value)
        with pytest.raises(ollama.ResponseError) as e:
            client.pull(missing["model"], insecure=True)
        assert e.value.status_code == 500 and "not found" in str(e.value)

    assert name in [m.model for m in client.list().models]
    assert http.post("/api/copy", json={"source": name, "destination": "tiny-copy"}) \
        .status_code == 200
    assert client.show("tiny-copy").details.family == "llama"
    assert http.post("/api/copy", json={"source": "missing", "destination": "x"}) \
        .status_code == 404
    assert http.request("DELETE", "/api/delete", json={"model": "tiny-copy"}).status_code == 200
    r = http.request("DELETE", "/api/delete", json={"model": "tiny-copy"})
    assert r.status_code == 404 and "not found" in r.json()["error"]
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("tiny-copy")
    assert e.value.status_code == 404
    assert client.delete(name).status == "success"
    r = http.request("DELETE", "/api/delete", json={"model": MODEL})
    assert r.status_code == 400 and "bundled" in r.json()["error"]


def test_delete_refuses_ollamas_read_only_store(http, tiny_gguf, chatcli_home, monkeypatch):
    from chatcli.core.names import parse_name
    from chatcli.models.store import MODEL_MEDIA_TYPE, Layer, Manifest, Store

    ollama_root = chatcli_home / "ollama-models"
    store = Store(ollama_root)
    blob = store.add_blob_file(tiny_gguf)
    store.write_manifest(parse_name("theirs"),
                         Manifest([Layer(MODEL_MEDIA_TYPE, blob.digest, blob.size)]))
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_root))
    r = http.request("DELETE", "/api/delete", json={"model": "theirs"})
    assert r.status_code == 400 and "ollama rm theirs" in r.json()["error"]
    assert store.read_manifest(parse_name("theirs")) is not None


def test_create_from_a_name_with_system_and_parameters(http, client):
    progress = list(client.create(model="pirate", from_=MODEL, stream=True,
                                  system="You are a pirate. Answer in one short sentence.",
                                  parameters={"temperature": 0, "num_predict": 8, "seed": 1,
                                              "num_thread": 1}))
    statuses = [p.status for p in progress]
    assert statuses[-2:] == ["writing manifest", "success"]
    assert any(s.startswith(("using existing layer", "creating new layer")) for s in statuses)
    info = http.post("/api/show", json={"model": "pirate"}).json()
    assert info["system"].startswith("You are a pirate.")
    assert "temperature" in info["parameters"] and "num_predict" in info["parameters"]
    assert "SYSTEM" in info["modelfile"]
    r = client.chat(model="pirate", messages=[{"role": "user", "content": "Who are you?"}])
    assert r.message.content.strip() and r.eval_count <= 8  # the model's own num_predict
    r = http.post("/api/create", json={"model": "bad", "from": MODEL,
                                       "parameters": {"temperature": "hot"}})
    assert r.status_code == 400 and "temperature" in r.json()["error"]
    r = http.post("/api/create", json={"model": "bad", "from": "no-such-model"})
    assert r.status_code == 404
    r = http.post("/api/create", json={"model": "bad"})
    assert r.status_code == 400


def test_blobs_and_create_from_an_uploaded_gguf(http, client, tiny_gguf, chatcli_home):
    data = tiny_gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.head(f"/api/blobs/{digest}").status_code == 404
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    r = http.post(f"/api/blobs/{wrong}", content=data)
    assert r.status_code == 400 and "mismatch" in r.json()["error"]
    assert http.head(f"/api/blobs/{wrong}").status_code == 404
    assert http.post("/api/blobs/sha256:../../etc", content=b"x").status_code in (400, 404)
    assert http.post("/api/blobs/md5:abc", content=b"x").status_code == 400
    assert client.create_blob(tiny_gguf) == digest  # the official client's upload
    assert http.head(f"/api/blobs/{digest}").status_code == 200
    blobs = chatcli_home / "models" / "blobs"
    assert (blobs / digest.replace(":", "-")).read_bytes() == data
    assert not [p for p in blobs.iterdir() if p.name.startswith(".")]  # no temp files left

    progress = list(client.create(model="mine", files={"tiny.gguf": digest}, stream=True,
                                  system="Be brief.", parameters={"num_predict": 3}))
    assert progress[-1].status == "success"
    assert f"using existing layer {digest}" in [p.status for p in progress]
    info = client.show("mine")
    assert info.details.family == "llama"
    r = http.post("/api/generate", json={"model": "mine", "prompt": "hello", "stream": False,
                                         "options": ONE})
    assert r.status_code == 200 and r.json()["eval_count"] <= 3
    missing = "sha256:" + "0" * 64
    r = http.post("/api/create", json={"model": "x", "files": {"m.gguf": missing}})
    assert r.status_code == 400 and "upload it first" in r.json()["error"]


def test_embed(http, tiny_gguf, tmp_path):
    r = http.post("/api/embed", json={"model": MODEL, "input": "hello"})  # any model embeds
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1
    r = http.post("/api/embed", json={"model": "no-such-model", "input": "hello"})
    assert r.status_code == 404
    from tiny_gguf import write_tiny_llama

    embedder = write_tiny_llama(tmp_path / "embed.gguf", pooling_type=1)
    _tiny_model(http, embedder, "embedder")
    r = http.post("/api/embed", json={"model": "embedder", "input": ["hello", "the world"]})
    assert r.status_code == 200, r.text
    obj = r.json()
    assert obj["model"] == "embedder" and len(obj["embeddings"]) == 2
    assert all(len(v) == len(obj["embeddings"][0]) > 0 for v in obj["embeddings"])
    assert obj["prompt_eval_count"] > 0 and obj["total_duration"] > 0
    one = http.post("/api/embeddings", json={"model": "embedder", "prompt": "hello"}).json()
    scale = sum(x * x for x in one["embedding"]) ** 0.5  # not normalised, as Ollama's
    assert [x / scale for x in one["embedding"]] == pytest.approx(obj["embeddings"][0], abs=1e-5)


# -- chat serve, the command ---------------------------------------------------------------------


def test_listen_address():
    assert listen_address("0.0.0.0") == ("0.0.0.0", 11434)
    assert listen_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert listen_address("http://localhost:9000") == ("localhost", 9000)
    assert listen_address(":9000") == ("127.0.0.1", 9000)
    assert listen_address("[::1]:9000") == ("::1", 9000)


def _serve(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "chatcli", "serve", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(url: str, proc: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.stderr.read()
        try:
            return httpx.get(f"{url}/api/version", timeout=1).json()
        except httpx.TransportError:
            assert time.monotonic() < deadline, "chat serve did not start"
            time.sleep(0.1)


def test_chat_serve_answers_and_stops_on_ctrl_c(cli_env):
    port = _free_port()
    proc = _serve([], {**cli_env, "CHATCLI_HOST": f"http://127.0.0.1:{port}"})
    try:
        assert _wait_for(f"http://127.0.0.1:{port}", proc)["chatcli_version"] == __version__
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        err = proc.stderr.read()
        assert "Traceback" not in err and "Warning" not in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_chat_serve_warns_when_not_on_loopback(cli_env):
    port = _free_port()
    proc = _serve(["--host", "0.0.0.0", "--port", str(port)], cli_env)
    try:
        _wait_for(f"http://127.0.0.1:{port}", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        warnings = [line for line in proc.stderr.read().splitlines() if "Warning" in line]
        assert len(warnings) == 1 and "0.0.0.0" in warnings[0]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_chat_serve_on_a_busy_port_fails_in_one_line(cli_env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = _serve(["--port", str(port)], cli_env)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "already in use" in lines[0] and str(port) in lines[0]


def test_the_cli_is_registered():
    from typer.testing import CliRunner

    from chatcli.cli.app import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={**os.environ, "NO_COLOR": "1"})
    assert result.exit_code == 0 and "--port" in result.output
