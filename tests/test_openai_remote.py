"""OpenAIClient and ``chat run --host URL/v1``: the REPL's client over chat completions.

Two servers answer: ``chat serve``'s own /v1 with the real bundled model, and a minimal
OpenAI-only server written here (no Ollama endpoints at all, as vLLM), scripted by model name;
in its strict mode it refuses unknown request fields with a 400, as OpenAI's own API does.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time

import pytest
from conftest import DET
from live_server import ServerThread

from chatcli.client.openai_remote import OpenAIClient, detect_api, request_body
from chatcli.core.errors import ChatCliError, ModelNotFoundError, RequestError
from chatcli.core.events import ContentDelta, Done, ThinkingDelta, ToolCall

MODEL = "smollm2:135m"
HI = [{"role": "user", "content": "Say hi"}]
KEY = "sk-test-secret-4242"


# -- a minimal OpenAI-only server --------------------------------------------------------


# The request fields OpenAI's own API knows; its strict mode refuses any other.
OPENAI_FIELDS = {"model", "messages", "stream", "stream_options", "temperature", "top_p",
                 "max_tokens", "max_completion_tokens", "seed", "stop", "presence_penalty",
                 "frequency_penalty", "response_format", "tools", "tool_choice", "n", "user",
                 "logit_bias", "logprobs", "top_logprobs", "reasoning_effort",
                 "parallel_tool_calls"}
NOTICE = "the server does not accept top_k, min_p; sent without them"


class Fake:
    """What the fake server saw and did."""

    def __init__(self, key: str | None = None, strict: bool = False) -> None:
        self.key = key
        self.strict = strict  # refuse unknown request fields (400), as OpenAI does
        self.bodies: list[dict] = []  # the requests answered
        self.refused: list[dict] = []  # the requests answered 400
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


def _strict_refusal(body: dict) -> str | None:
    """OpenAI's 400 message for ``body``, None when it would answer it."""
    if body["model"] == "o1" and "max_tokens" in body:  # about a standard field
        return ("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                "'max_completion_tokens' instead.")
    unknown = sorted(set(body) - OPENAI_FIELDS)
    if unknown:
        return (f"Unrecognized request argument{'s' if len(unknown) > 1 else ''} supplied: "
                f"{', '.join(unknown)}")
    return None


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
            {"id": m, "object": "model", "owned_by": "fake", "max_model_len": 4096,
             # llama-server says the model file's size in its "meta"
             **({"meta": {"size": 98_000_000}} if m == "plain" else {})}
            for m in ("plain", "thinker", "tools", "dropper", "slow")]})

    async def completions(request: Request):
        if (answer := refused(request)) is not None:
            return answer
        body = await request.json()
        model = body["model"]
        if fake.strict and (message := _strict_refusal(body)):
            fake.refused.append(body)
            return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                           "param": None, "code": None}}, status_code=400)
        fake.bodies.append(body)

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


@pytest.fixture(scope="module")
def strict_fake():
    fake = Fake(strict=True)
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


def notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "does not accept" in r.getMessage()]


def test_a_strict_server_is_asked_again_without_the_extra_options(strict_fake, caplog):
    fake, url = strict_fake
    client = OpenAIClient(url + "/v1")
    options = {"temperature": 0.2, "num_predict": 9, "seed": 1, "stop": ["\n\n"],
               "presence_penalty": 0.1, "frequency_penalty": 0.1, "top_p": 0.9,
               "top_k": 5, "min_p": 0.1}
    refused, answered = len(fake.refused), len(fake.bodies)
    assert text_of(client.chat("plain", HI, options, format="json")) == "Hello world"
    assert len(fake.refused) == refused + 1 and "top_k" in fake.refused[-1]
    body = fake.bodies[-1]
    assert "top_k" not in body and "min_p" not in body
    # OpenAI's own fields are never dropped.
    assert {"temperature", "max_tokens", "seed", "stop", "presence_penalty",
            "frequency_penalty", "top_p", "response_format", "stream_options"} <= set(body)
    assert notices(caplog) == [NOTICE]
    # The client remembers: no refused round trip again, and no second notice.
    assert text_of(client.chat("plain", HI, options)) == "Hello world"
    assert len(fake.refused) == refused + 1 and len(fake.bodies) == answered + 2
    assert "top_k" not in fake.bodies[-1] and notices(caplog) == [NOTICE]
    # Only a new option gets a notice of its own.
    assert text_of(client.chat("plain", HI, {**options, "repeat_penalty": 1.1})) \
        == "Hello world"
    assert notices(caplog) == [NOTICE, "the server does not accept repeat_penalty; sent "
                                       "without it"]
    assert len(fake.refused) == refused + 1


def test_a_refusal_about_a_standard_field_is_not_retried(strict_fake, caplog):
    fake, url = strict_fake
    client = OpenAIClient(url + "/v1")
    refused, answered = len(fake.refused), len(fake.bodies)
    with pytest.raises(RequestError, match="'max_tokens' is not supported"):
        list(client.chat("o1", HI, {"num_predict": 9, "top_k": 5}))
    assert len(fake.refused) == refused + 1 and len(fake.bodies) == answered
    assert notices(caplog) == []


def test_a_lenient_server_keeps_the_extra_options(fake_client, open_fake, caplog):
    assert text_of(fake_client.chat("plain", HI, {"top_k": 5, "min_p": 0.1})) == "Hello world"
    assert (open_fake[0].bodies[-1]["top_k"], open_fake[0].bodies[-1]["min_p"]) == (5, 0.1)
    assert notices(caplog) == []


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


def test_repl_on_a_strict_server_shows_the_notice_once(strict_fake, cli_env):
    import io

    import pexpect

    fake, url = strict_fake
    refused, answered = len(fake.refused), len(fake.bodies)
    seen = io.StringIO()
    child = pexpect.spawn(sys.executable, ["-m", "chatcli", "run", "--host", url + "/v1",
                                           "-o", "top_k=5", "-o", "min_p=0.1", "plain"],
                          env={**cli_env, "TERM": "xterm-256color"}, encoding="utf-8",
                          timeout=60, dimensions=(30, 100))
    child.logfile_read = seen
    ready = "Send a message"
    child.expect(ready)
    for question in ("Say hi", "Again"):
        child.send(question + "\r")
        child.expect("Hello world")
        child.expect(ready)
    child.send("/bye\r")
    child.expect(pexpect.EOF)
    assert seen.getvalue().count(NOTICE) == 1, seen.getvalue()
    assert (len(fake.refused), len(fake.bodies)) == (refused + 1, answered + 2)


def list_models(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatcli", "list", *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def table_rows(p: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """``chat list``'s rows by model name (columns split on runs of 3+ spaces)."""
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED", "STORE"]
    return {cells[0]: cells for cells in (re.split(r" {3,}", line) for line in lines[1:])}


def test_chat_list_host_lists_an_openai_servers_models(open_fake, cli_env):
    _, url = open_fake
    rows = table_rows(list_models("--host", url + "/v1", env=cli_env))
    assert list(rows) == ["plain", "thinker", "tools", "dropper", "slow"]
    assert rows["plain"] == ["plain", "?", "98 MB", "?", "remote"]
    assert rows["thinker"] == ["thinker", "?", "?", "?", "remote"]
    # Detected (no /api/version there), and from $CHATCLI_HOST, alike.
    assert table_rows(list_models("--host", url, env=cli_env)) == rows
    assert table_rows(list_models(env={**cli_env, "CHATCLI_HOST": url})) == rows
    assert table_rows(list_models("--host", url, "--api", "openai", env=cli_env)) == rows


def test_chat_list_host_with_a_key(keyed_fake, cli_env):
    _, url = keyed_fake
    env = {k: v for k, v in cli_env.items() if k not in ("CHATCLI_API_KEY", "OPENAI_API_KEY")}
    refused = list_models("--host", url, env=env)
    assert refused.returncode == 1 and refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1 and "Traceback" not in refused.stderr
    assert "401" in refused.stderr and "--api-key" in refused.stderr
    assert "plain" in table_rows(list_models("--host", url, "--api-key", KEY, env=env))
    assert "plain" in table_rows(list_models("--host", url + "/v1",
                                             env={**env, "OPENAI_API_KEY": KEY}))
    assert "plain" in table_rows(list_models("--host", url + "/v1",
                                             env={**env, "CHATCLI_API_KEY": KEY}))


def test_chat_list_host_on_chat_serve(url, cli_env, bundled_path):
    local = table_rows(list_models(env=cli_env))
    assert local[MODEL][4] == "bundled"
    ollama = table_rows(list_models("--host", url, env=cli_env))  # Ollama's /api/tags
    assert list(ollama) == list(local)
    name, digest, size, modified, store = ollama[MODEL]
    assert len(digest) == 12 and int(digest, 16) >= 0
    assert (size, store) == (local[MODEL][2], "remote") and modified.endswith(" ago")
    openai = table_rows(list_models("--host", url + "/v1", env=cli_env))  # /v1/models
    assert openai[MODEL] == [MODEL, "?", "?", "?", "remote"]
    assert table_rows(list_models("--host", url, "--api", "ollama", env=cli_env)) == ollama


@pytest.mark.parametrize("args, expected", [
    (["--host", "http://127.0.0.1:9"], "could not connect to http://127.0.0.1:9"),
    (["--host", "http://127.0.0.1:9/v1"], "could not connect to http://127.0.0.1:9/v1"),
    (["--host", "127.0.0.1:9", "--api", "openai"], "could not connect"),
    (["--host", "ftp://gpu-box"], "invalid host 'ftp://gpu-box'"),
    (["--host", "gpu-box:99999"], "invalid port"),
    (["--host", "127.0.0.1:9", "--api", "grpc"], "unknown --api 'grpc'"),
])
def test_chat_list_host_errors_are_one_line(args, expected, cli_env):
    p = list_models(*args, env=cli_env)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("Error: ") and len(p.stderr.splitlines()) == 1, p.stderr
    assert expected in p.stderr


def test_chat_list_host_on_a_server_that_is_not_ollama(open_fake, cli_env):
    p = list_models("--host", open_fake[1], "--api", "ollama", env=cli_env)
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1
    assert "has no /api/tags" in p.stderr


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


def test_model_completes_the_servers_model_names(fake_client, tmp_path, monkeypatch):
    """/model <Tab> in a REPL on a server offers the server's models, not the local store's."""
    monkeypatch.chdir(tmp_path)  # no files to offer beside them
    from chatcli.client.session import Session
    from chatcli.repl.commands import complete_model
    from chatcli.repl.state import ReplState, Settings

    names = [m.name for m in fake_client.list_models()]
    assert names and "smollm2:135m" not in names
    state = ReplState(Session(fake_client, names[0]), Settings())
    assert sorted(complete_model(state, "")) == sorted(names)
    gone = ReplState(Session(OpenAIClient("http://127.0.0.1:9/v1"), "x"), Settings())
    assert list(complete_model(gone, "")) == []
