"""What a web page, or a client that vanishes, can make `chat serve` do, and what the server
tells anyone about the machine it runs on."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import pytest
from conftest import DET, ENDLESS_PROMPT
from live_server import ErrorLog, hang_up_during
from registry_server import RegistryServer

from chatcli.serve.app import build_app

MODEL = "smollm2:135m"
MODEL_MEDIA = "application/vnd.ollama.image.model"
EVIL = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
# A page on an allowed origin, sending the same "simple" request: it runs.
LOCAL = {"Origin": "http://localhost:3000", "Content-Type": "text/plain"}
ONE = {**DET, "num_thread": 1}


@pytest.fixture
def handled(monkeypatch) -> list[str]:
    """The paths whose handler read its request body: every JSON endpoint does so first."""
    from chatcli.serve import ollama_api, openai_api

    seen: list[str] = []
    for module in (ollama_api, openai_api):
        original = module.read_json

        async def read_json(request, original=original):
            seen.append(request.url.path)
            return await original(request)

        monkeypatch.setattr(module, "read_json", read_json)
    return seen


def _models(http) -> list[str]:
    return [m["name"] for m in http.get("/api/tags").json()["models"]]


def _upload(http, data: bytes, headers: dict | None = None) -> httpx.Response:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return http.post(f"/api/blobs/{digest}", content=data, headers=headers or {})


def _tiny_model(http, tiny_gguf, name: str) -> str:
    data = tiny_gguf.read_bytes()
    assert _upload(http, data).status_code in (200, 201)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = http.post("/api/create", json={"model": name, "files": {"tiny.gguf": digest},
                                       "stream": False})
    assert r.status_code == 200, r.text
    return name


def _send(http, method: str, path: str, body: dict, headers: dict) -> httpx.Response:
    return http.request(method, path, content=json.dumps(body), headers=headers)


# Requests that only read or compute: a foreign page must not run them either (its answer
# would be hidden from it by CORS, but the model would still be loaded and run).
COMPUTE = [
    ("POST", "/api/generate", {"model": "no-such-model", "prompt": "hi"}),
    ("POST", "/api/chat", {"model": "no-such-model",
                           "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/api/embed", {"model": "no-such-model", "input": "hi"}),
    ("POST", "/api/embeddings", {"model": "no-such-model", "prompt": "hi"}),
    ("POST", "/api/show", {"model": "no-such-model"}),
    ("POST", "/v1/chat/completions", {"model": "no-such-model",
                                      "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/completions", {"model": "no-such-model", "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": "no-such-model", "input": "hi"}),
]


@pytest.mark.parametrize("method, path, body", COMPUTE, ids=[c[1] for c in COMPUTE])
def test_a_foreign_page_cannot_run_a_request(http, handled, method, path, body):
    r = _send(http, method, path, body, EVIL)
    assert r.status_code == 403, r.text
    assert "origin 'http://evil.example' is not allowed" in r.text
    assert "access-control-allow-origin" not in r.headers
    assert handled == []  # the handler never started
    # The same simple request from an allowed origin runs (and fails on the missing model).
    r = _send(http, method, path, body, LOCAL)
    assert r.status_code != 403 and handled == [path]
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_a_foreign_page_cannot_change_the_store(http, handled, tiny_gguf):
    victim = _tiny_model(http, tiny_gguf, "victim")
    handled.clear()
    data = tiny_gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    steps = [
        ("POST", "/api/create", {"model": "made", "files": {"tiny.gguf": digest}}),
        ("POST", "/api/create", {"model": "made2", "from": victim}),
        ("POST", "/api/copy", {"source": victim, "destination": "copied"}),
        ("DELETE", "/api/delete", {"model": victim}),
    ]
    for method, path, body in steps:
        r = _send(http, method, path, body, EVIL)
        assert r.status_code == 403, (path, r.text)
    new_blob = b"not a model, but a blob all the same"
    assert _upload(http, new_blob, EVIL).status_code == 403
    assert handled == []
    assert sorted(m for m in _models(http) if m != MODEL) == ["victim:latest"]
    assert http.head(f"/api/blobs/sha256:{hashlib.sha256(new_blob).hexdigest()}") \
        .status_code == 404
    # From an allowed origin, the very same requests change the store.
    for method, path, body in steps:
        r = _send(http, method, path, body, LOCAL)
        assert r.status_code == 200, (path, r.text)
    assert _upload(http, new_blob, LOCAL).status_code == 201
    assert sorted(m for m in _models(http) if m != MODEL) == [
        "copied:latest", "made2:latest", "made:latest"]


def test_a_foreign_page_cannot_pull(http, handled, tiny_gguf):
    with RegistryServer() as registry:
        registry.add_model("library", "tiny", "latest", [(MODEL_MEDIA, tiny_gguf)])
        name = f"{registry.host}/library/tiny:latest"
        for stream in (True, False):
            body = {"model": name, "insecure": True, "stream": stream}
            assert _send(http, "POST", "/api/pull", body, EVIL).status_code == 403
        time.sleep(0.5)  # a pull started in the background would have reached it by now
        assert registry.log == [] and handled == []
        r = _send(http, "POST", "/api/pull", {"model": name, "insecure": True,
                                              "stream": False}, LOCAL)
        assert r.status_code == 200 and r.json() == {"status": "success"}
        assert registry.log


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/tags"), ("GET", "/api/version"), ("GET", "/api/ps"), ("GET", "/"),
    ("HEAD", "/"), ("GET", "/v1/models"), ("GET", "/api/nothing"), ("PUT", "/api/chat"),
    ("PATCH", "/v1/chat/completions"), ("OPTIONS", "/api/chat"), ("POST", "/api/tags"),
    ("POST", "/api/push"), ("HEAD", "/api/blobs/sha256:" + "0" * 64),
])
def test_every_method_and_path_refuses_a_foreign_origin(http, method, path):
    r = http.request(method, path, headers={"Origin": "http://evil.example",
                                            "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers


def test_foreign_origins_get_the_error_in_the_paths_shape(http):
    r = _send(http, "POST", "/v1/chat/completions", {"model": MODEL}, EVIL)
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "not allowed" in error["message"]
    r = _send(http, "POST", "/api/chat", {"model": MODEL}, EVIL)
    assert r.status_code == 403 and "not allowed" in r.json()["error"]


def test_requests_without_an_origin_and_allowed_origins_still_work(http):
    assert http.get("/api/version").status_code == 200  # curl, the Python clients
    for origin in ("http://localhost:5173", "http://127.0.0.1:8080", "http://[::1]:3000",
                   "app://obsidian.md", "vscode-webview://abc"):
        r = http.get("/api/version", headers={"Origin": origin})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    preflight = http.options("/api/chat", headers={"Origin": "http://localhost:3000",
                                                   "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    for origin in ("null", "http://localhost.evil.example", "http://evil.example:11434",
                   "https://127.0.0.1.evil.example", "file://"):
        assert http.get("/api/version", headers={"Origin": origin}).status_code == 403


def test_chatcli_origins_and_same_origin_pages(monkeypatch):
    from starlette.testclient import TestClient

    monkeypatch.setenv("CHATCLI_ORIGINS", "https://*.example.org")
    with TestClient(build_app()) as tc:  # not on loopback: no Host check, only the Origin one
        r = tc.post("/api/show", content=b"{}", headers={"Origin": "https://ui.example.org"})
        assert r.status_code == 400  # it ran: the body lacks a model
        assert tc.post("/api/show", content=b"{}",
                       headers={"Origin": "https://evil.example"}).status_code == 403
        # A page served (through a proxy) from this server's own local name and port.
        same = {"Host": "gpu-box.local:11434", "Origin": "http://gpu-box.local:11434"}
        assert tc.get("/api/version", headers=same).status_code == 200
        # "Same origin" under a name that is not local is what DNS rebinding looks like.
        rebound = {"Host": "evil.example:11434", "Origin": "http://evil.example:11434"}
        assert tc.get("/api/version", headers=rebound).status_code == 403


# -- what the server reveals -------------------------------------------------------------------


def test_no_response_names_a_path_on_the_server(http, tiny_gguf, chatcli_home, bundled_path):
    tiny = _tiny_model(http, tiny_gguf, "tiny")
    assert http.post("/api/generate", json={"model": tiny, "keep_alive": "1m"}).status_code \
        == 200  # loaded, so /api/ps lists it
    texts = [http.get(p).text for p in ("/api/tags", "/api/ps", "/api/version", "/v1/models")]
    for name in (MODEL, tiny):
        show = http.post("/api/show", json={"model": name})
        assert show.status_code == 200
        texts.append(show.text)
        (source,) = [line for line in show.json()["modelfile"].splitlines()
                     if line.startswith("FROM ")]
        assert source in (f"FROM {name}", f"FROM {name}:latest")  # a name, not a file
    assert tiny in texts[1]
    # An error about a file in the store names the file within the store, not the store.
    junk = b"not a GGUF file" * 10
    assert _upload(http, junk).status_code == 201
    r = http.post("/api/create", json={"model": "junk", "stream": False, "files": {
        "m.gguf": "sha256:" + hashlib.sha256(junk).hexdigest()}})
    assert r.status_code == 400 and "<models>/blobs/" in r.json()["error"]
    texts.append(r.text)
    for text in texts:
        for secret in (str(chatcli_home), str(bundled_path.parent)):
            assert secret not in text
    http.post("/api/generate", json={"model": tiny, "keep_alive": 0})


# -- a client that goes away -----------------------------------------------------------------


def _free_soon(http, path: str, body: dict) -> float:
    start = time.monotonic()
    r = http.post(path, json=body)
    assert r.status_code == 200, r.text
    return time.monotonic() - start


ENDLESS = [{"role": "user", "content": ENDLESS_PROMPT}]
LONG = {**ONE, "repeat_penalty": 1.0, "num_predict": 1500}


def test_a_non_streamed_request_whose_client_hangs_up_logs_no_error(http, url):
    with ErrorLog() as errors:
        hang_up_during(url, "/api/chat", {"model": MODEL, "messages": ENDLESS, "stream": False,
                                          "options": LONG})
        took = _free_soon(http, "/api/chat", {"model": MODEL, "messages": ENDLESS,
                                              "stream": False,
                                              "options": {**ONE, "num_predict": 4}})
        hang_up_during(url, "/api/generate", {"model": MODEL, "prompt": ENDLESS[0]["content"],
                                              "stream": False, "options": LONG})
        took = max(took, _free_soon(http, "/api/generate", {
            "model": MODEL, "prompt": "hi", "stream": False,
            "options": {**ONE, "num_predict": 4}}))
        time.sleep(0.2)
    assert errors.messages() == []
    assert took < 10  # the 1500-token answers stopped when their clients left
