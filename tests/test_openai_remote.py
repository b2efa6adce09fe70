"""OpenAIClient and ``chat run --host URL/v1``: the REPL's client over chat completions.

Two servers answer: ``chat serve``'s own /v1 with the real bundled model, and a minimal
OpenAI-only server written here (no Ollama endpoints at all, as vLLM), scripted by model name.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import pytest
from conftest import DET
from live_server import ServerThread

from chatcli.client.openai_remote import OpenAIClient, detect_api, request_body
from chatcli.core.errors import ChatCliError, ModelNotFoundError
from chatcli.core.events import ContentDelta, Done, ThinkingDelta, ToolCall

MODEL = "smollm2:135m"
HI = [{"role": "user", "content": "Say hi"}]
KEY = "sk-test-secret-4242"


# -- a minimal OpenAI-only server --------------------------------------------------------


class Fake:
    """What the fake server saw and did."""

    def __init__(self, key: str | None = None) -> None:
        self.key = key
        self.bodies: list[dict] = []
        self.closed = threading.Event()  # the "slow" stream was closed by its client


def _chunk(delta: dict, finish: str | None = None) -> str:
    return "data: " + json.dumps({"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"


def _script(model: str) -> list[dict]:
    if model == "thinker":
        return [{"reasoning_content": "Let me "}, {"reasoning_content": "think."},
                {"content": "Four."}]
    if model == "tools":
        return [{"tool_calls": [{"index": 0, "id": "call_abc", "type": "function",
                                 "function": {"name": "get_weather", "arguments": ""}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
                {"tool_calls": [{"index": 1, "id": "call_def",
                                 "function": {"name": "get_time", "arguments": "{}"}}]}]
    return [{"content": "Hello"}, {"content": " world"}]


def fake_app(fake: Fake):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def refused(request: Request) -> JSONResponse | None:
        given = request.headers.get("authorization", "")
        if fake.key is None or given == f"Bearer {fake.key}":
            return None
        # Like OpenAI, the message quotes (part of) the key it was given.
        return JSONResponse({"error": {"message": f"Incorrect API key provided: {given}",
                                       "type": "invalid_request_error"}}, status_code=401)

    async def models(request: Request):
        return refused(request) or JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "fake", "max_model_len": 4096}
            for m in ("plain", "thinker", "tools", "dropper", "slow")]})

    async def completions(request: Request):
        if (answer := refused(request)) is not None:
            return answer
        body = await request.json()
        fake.bodies.append(body)
        model = body["model"]

        async def stream():
            try:
                yield _chunk({"role": "assistant", "content": ""})
                if model == "dropper":
                    yield _chunk({"content": "Partial"})
                    await asyncio.sleep(0.05)
                    raise RuntimeError("the GPU fell over")  # uvicorn cuts the connection
                if model == "slow":
                    for _ in range(400):
                        yield _chunk({"content": "la "})
                        await asyncio.sleep(0.05)
                for delta in _script(model):
                    yield _chunk(delta)
                yield _chunk({}, "tool_calls" if model == "tools" else "stop")
                yield "data: " + json.dumps({"choices": [], "usage": {
                    "prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
                    "prompt_tokens_details": {"cached_tokens": 4}}}) + "\n\n"
                yield "data: [DONE]\n\n"
            finally:
                fake.closed.set()

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models),
                             Route("/v1/chat/completions", completions, methods=["POST"])])


@pytest.fixture(scope="module")
def open_fake():
    fake = Fake()
    with ServerThread(fake_app(fake)) as running:
        yield fake, running.url


@pytest.fixture(scope="module")
def keyed_fake():
    fake = Fake(KEY)
    with ServerThread(fake_app(fake)) as running:
        yield fake, running.url


@pytest.fixture
def fake_client(open_fake):
    client = OpenAIClient(open_fake[1] + "/v1")
    yield client
    client.close()


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentDelta))


# -- the client against the fake ---------------------------------------------------------


def test_streams_content_and_usage_becomes_metrics(fake_client, open_fake):
    events = list(fake_client.chat("plain", HI, {"temperature": 0.2, "num_predict": 9,
                                                 "top_k": 5, "stop": ["\n\n"]},
                                   format={"type": "object"}))
    assert text_of(events) == "Hello world"
    done = events[-1]
    assert isinstance(done, Done) and done.done_reason == "stop"
    assert (done.metrics.prompt_eval_count, done.metrics.eval_count) == (12, 3)
    assert done.metrics.prompt_cached_count == 4
    assert done.metrics.total_duration >= done.metrics.eval_duration > 0
    body = open_fake[0].bodies[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["max_tokens"], body["top_k"]) == (0.2, 9, 5)
    assert body["stop"] == ["\n\n"] and "num_predict" not in body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}


def test_reasoning_content_becomes_thinking(fake_client):
    events = list(fake_client.chat("thinker", HI))
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    assert thinking == "Let me think." and text_of(events) == "Four."


def test_tool_call_deltas_become_whole_calls(fake_client):
    events = list(fake_client.chat("tools", HI, tools=[
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]))
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert calls == [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_time", {})]
    assert [c.id for c in calls] == ["call_abc", "call_def"]


def test_tool_results_answer_their_calls_on_the_wire():
    messages = [HI[0], {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "sunny"}]
    wire = request_body("m", messages, None)["messages"]
    call = wire[1]["tool_calls"][0]
    assert call["function"]["arguments"] == '{"city": "Paris"}'
    assert wire[2]["tool_call_id"] == call["id"]


def test_resolve_and_show_use_v1_models(fake_client):
    assert fake_client.resolve("plain").name == "plain"
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        fake_client.resolve("no-such-model")
    facts = fake_client.show("plain")
    assert facts["context length"] == 4096 and facts["path"].startswith("remote: ")
    assert fake_client.save_state("plain") is False


def test_a_dropped_connection_is_one_clear_error(fake_client):
    seen = []
    with pytest.raises(ChatCliError) as caught:
        for event in fake_client.chat("dropper", HI):
            seen.append(event)
    message = str(caught.value)
    assert "lost the connection" in message and "\n" not in message
    assert text_of(seen) == "Partial"  # what came before the drop was passed on


def test_cancel_closes_the_stream(fake_client, open_fake):
    fake = open_fake[0]
    fake.closed.clear()
    cancel = threading.Event()
    events = []
    for event in fake_client.chat("slow", HI, cancel=cancel):
        events.append(event)
        if len(events) == 3:
            cancel.set()
    assert isinstance(events[-1], Done) and events[-1].done_reason == "cancelled"
    assert fake.closed.wait(5), "the server went on streaming"


def test_a_server_that_needs_a_key(keyed_fake, monkeypatch):
    _, url = keyed_fake
    for name in ("CHATCLI_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ChatCliError) as caught:
        list(OpenAIClient(url + "/v1").chat("plain", HI))
    assert "401" in str(caught.value) and "--api-key" in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(ChatCliError) as wrong:  # the server quotes the wrong key back
        list(OpenAIClient(url + "/v1", api_key="sk-wrong-secret").chat("plain", HI))
    assert "sk-wrong-secret" not in str(wrong.value)
    monkeypatch.setenv("CHATCLI_API_KEY", KEY)
    assert text_of(OpenAIClient(url + "/v1").chat("plain", HI)) == "Hello world"


def test_auto_detection(open_fake, keyed_fake, url):
    assert detect_api(open_fake[1]) == "openai"  # no /api/version there
    assert detect_api(keyed_fake[1]) == "openai"  # 401 from /v1/models still says OpenAI
    assert detect_api(url) == "ollama"  # chat serve answers /api/version
    assert detect_api(url + "/v1") == "openai"
    assert detect_api("http://127.0.0.1:9") == "ollama"  # whose client then reports it


# -- chat serve's own /v1 ----------------------------------------------------------------


def test_chat_serve_v1_answers_like_the_local_client(url, bundled_path):
    from chatcli.client.local import LocalClient

    client = OpenAIClient(url + "/v1")
    options = {**DET, "num_predict": 24}
    events = list(client.chat(MODEL, HI, options))
    assert isinstance(events[-1], Done) and events[-1].metrics.eval_count > 0
    local = text_of(LocalClient().chat(MODEL, HI, options))
    assert text_of(events) == local and local
    assert client.resolve(MODEL).name == MODEL
    with pytest.raises(ModelNotFoundError, match="no-such-model:1b"):
        client.resolve("no-such-model:1b")


# -- chat run --host ---------------------------------------------------------------------


def chat(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatcli", "run", *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def test_one_shot_detects_openai_and_uses_the_key(keyed_fake, cli_env):
    _, url = keyed_fake
    env = {k: v for k, v in cli_env.items() if k not in ("CHATCLI_API_KEY", "OPENAI_API_KEY")}
    refused = chat("--host", url, "plain", "Say hi", env=env)
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1
    assert "401" in refused.stderr
    ok = chat("--host", url, "plain", "Say hi", "--verbose", env={**env, "OPENAI_API_KEY": KEY})
    assert ok.returncode == 0, ok.stderr
    assert "Hello world" in ok.stdout
    assert "using the OpenAI API" in ok.stderr and KEY not in ok.stderr + ok.stdout
    flag = chat("--host", url + "/v1", "--api-key", KEY, "plain", "Say hi", env=env)
    assert flag.returncode == 0 and "Hello world" in flag.stdout


def test_repl_through_an_openai_server(open_fake, cli_env, tmp_path):
    import pexpect

    saved = tmp_path / "talk.json"
    child = pexpect.spawn(sys.executable, ["-m", "chatcli", "run", "--host",
                                           open_fake[1] + "/v1", "thinker"],
                          env={**cli_env, "TERM": "xterm-256color"}, encoding="utf-8",
                          timeout=60, dimensions=(30, 100))
    ready = "Send a message"
    child.expect(ready)
    child.send("What is 2+2?\r")
    child.expect("Four.")
    child.expect(ready)
    child.send(f"/save {saved}\r")
    child.expect(ready)
    child.send("/model no-such-model\r")
    child.expect("no-such-model")
    child.expect(ready)
    child.send("/bye\r")
    child.expect(pexpect.EOF)
    deadline = time.monotonic() + 5
    while not saved.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    messages = json.loads(saved.read_text())["messages"]
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"] == "Four."
    assert messages[-1]["thinking"] == "Let me think."
