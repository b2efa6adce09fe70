"""The OpenAI-compatible routes, driven by the official ``openai`` client over real HTTP.

A server runs in this process on a free loopback port (the whole ``chat serve`` app when it is
there, else an app of the OpenAI routes alone) and answers with the real bundled model.
"""

from __future__ import annotations

import base64
import json
import struct
import time

import httpx
import jsonschema
import openai
import pytest
from conftest import DET, ENDLESS_PROMPT
from live_server import ErrorLog, ServerThread, hang_up_during

from chatcli.serve.app import build_app

MODEL = "smollm2:135m"
HI = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module")
def server():
    with ServerThread(build_app()) as running:
        yield running


@pytest.fixture
def client(server, bundled_path):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def ask(client, **kw):
    params = {"model": MODEL, "messages": HI, "temperature": DET["temperature"],
              "seed": DET["seed"], "max_tokens": 24, **kw}
    return client.chat.completions.create(**params)


# -- chat completions ----------------------------------------------------------------------


def test_chat_completion(client):
    r = ask(client)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == MODEL
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_chunks_join_to_the_same_answer(client):
    whole = ask(client).choices[0].message.content
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage.completion_tokens > 0


def test_stream_ends_with_done_marker(server, bundled_path):
    body = {"model": MODEL, "messages": HI, "max_tokens": 4, "stream": True, **DET}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_max_tokens_gives_finish_reason_length(client):
    r = ask(client, max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


def test_json_object_response_format(client):
    r = ask(client, messages=[{"role": "user", "content": "Give a JSON object with a name"}],
            response_format={"type": "json_object"}, max_tokens=120)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_json_schema_response_format(client):
    schema = {"type": "object",
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = ask(client, messages=[{"role": "user", "content": "Invent a person."}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "person", "schema": schema}},
            max_tokens=120)
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_data_url_images_reach_the_engine(client):
    # A valid PNG in a data: URL gets past the HTTP layer; the bundled model has no projector,
    # so the engine's own refusal comes back.
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, messages=[{"role": "user", "content": content}])
    assert "does not support images" in info.value.body["message"]


def wait_for_model_lock(timeout: float = 60) -> None:
    """Fail unless the bundled model's lock is free within ``timeout`` (no answer running).
    Generous: the machine may be loaded; what the KV cache holds afterwards is the proof that
    the work stopped (see the callers)."""
    from chatcli.engine.loaded import CACHE

    entry = next(e for e in CACHE.loaded() if e.model.name == MODEL)
    deadline = time.monotonic() + timeout
    while not entry.lock.acquire(blocking=False):
        assert time.monotonic() < deadline, "the generation went on after the client left"
        time.sleep(0.01)
    entry.lock.release()


def test_client_disconnect_cancels_the_generation(client):
    from chatcli.engine.loaded import CACHE

    stream = ask(client, messages=[{"role": "user", "content": "Write a long story about a "
                                                               "dragon."}],
                 max_tokens=400, stream=True)
    chunks = iter(stream)
    for _ in range(4):
        next(chunks)
    stream.close()
    wait_for_model_lock()
    entry = next(e for e in CACHE.loaded() if e.model.name == MODEL)
    assert entry.engine.cached_tokens < 100  # the prompt and a few tokens, not 400 more


def test_client_gone_before_the_first_token_frees_the_model(client):
    from chatcli.engine.loaded import CACHE

    # The client gives up while the long prompt is still being read (or just after): the
    # server must not go on to read it all and write 400 tokens for nobody.
    long = [{"role": "user", "content": "Summarise: " + "the cat sat on the mat. " * 200}]
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(
            model=MODEL, messages=long, max_tokens=400, **DET)
    wait_for_model_lock()
    entry = next(e for e in CACHE.loaded() if e.model.name == MODEL)
    prompt = len(entry.engine.tokenize(long[0]["content"]))
    assert entry.engine.cached_tokens < prompt + 100  # not the 400 tokens of an answer


# -- completions, models -------------------------------------------------------------------


def test_completions(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is",
                                  max_tokens=8, **DET)
    assert r.object == "text_completion"
    assert r.choices[0].text.strip() and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0
    streamed = client.completions.create(model=MODEL, prompt=["The capital of France is"],
                                         max_tokens=8, stream=True, **DET)
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text


def test_completions_refuse_a_suffix(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="def f(", suffix="return x", max_tokens=4)
    assert info.value.body["param"] == "suffix"


def test_models(client):
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.owned_by == "chatcli" and model.created > 0
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model:1b")


# -- errors --------------------------------------------------------------------------------


def error_of(info) -> dict:
    body = info.value.body
    assert set(body) == {"message", "type", "param", "code"}, body
    return body


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        ask(client, model="no-such-model:1b")
    body = error_of(info)
    assert body["message"] == "model 'no-such-model:1b' not found; try: chat pull no-such-model:1b"
    assert body["code"] == "model_not_found"
    assert body["type"] == "not_found_error"  # as Ollama's OpenAI layer answers a 404


def test_every_route_answers_an_unknown_model_with_not_found_error(client):
    for call in (lambda: client.completions.create(model="no-such-model", prompt="hi"),
                 lambda: client.embeddings.create(model="no-such-model", input="hi"),
                 lambda: client.models.retrieve("no-such-model"),
                 lambda: ask(client, model="no-such-model", stream=True)):
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert error_of(info)["type"] == "not_found_error"


def test_unknown_v1_paths_answer_in_openais_shape(server):
    r = httpx.get(server.url + "/v1/no/such/thing")
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "not found: GET /v1/no/such/thing",
                                  "type": "not_found_error", "param": None, "code": None}}
    r = httpx.get(server.url + "/v1/chat/completions")  # a route, but not for GET
    assert r.status_code == 405
    assert r.json()["error"]["type"] == "invalid_request_error"
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.get("/no/such/thing", cast_to=httpx.Response)
    assert error_of(info)["message"] == "not found: GET /v1/no/such/thing"
    # The Ollama routes keep Ollama's shape.
    assert httpx.get(server.url + "/api/nothing").json() == {
        "error": "not found: GET /api/nothing"}


def test_a_non_streamed_client_that_hangs_up_logs_no_error(server, bundled_path):
    long = [{"role": "user", "content": ENDLESS_PROMPT}]
    with ErrorLog() as errors:
        for path, body in (("/v1/chat/completions", {"messages": long}),
                           ("/v1/completions", {"prompt": long[0]["content"]})):
            # ~200 tokens: many seconds of work, stopped when its client leaves.
            hang_up_during(server.url, path, {"model": MODEL, "max_tokens": 1500, **DET, **body})
            wait_for_model_lock(10)
        time.sleep(0.2)
    assert errors.messages() == []


def test_bad_role_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, messages=[{"role": "wizard", "content": "hi"}])
    body = error_of(info)
    assert "role 'wizard'" in body["message"] and body["type"] == "invalid_request_error"


def test_http_image_urls_are_never_fetched(client):
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, messages=[{"role": "user", "content": content}])
    assert "never fetches" in error_of(info)["message"]


def test_tools_on_a_model_without_tool_support(client):
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, tools=[tool])
    assert error_of(info)["message"] == f"model '{MODEL}' does not support tools"
    # tool_choice "none" sends no tools, so the same model answers.
    assert ask(client, tools=[tool], tool_choice="none", max_tokens=2).choices[0].message.content


def test_paths_are_not_model_names(client):
    with pytest.raises(openai.BadRequestError):
        ask(client, model="/etc/passwd")


def test_embeddings_from_a_chat_model(client):
    # Any model embeds, as in Ollama (tests/test_embed.py checks the vectors).
    result = client.embeddings.create(model=MODEL, input="hello", encoding_format="float")
    assert len(result.data) == 1 and len(result.data[0].embedding) > 0


def test_embeddings(client, tmp_path):
    from tiny_gguf import write_tiny_llama

    from chatcli.models.modelfile import create, parse_modelfile

    gguf = write_tiny_llama(tmp_path / "embedder.gguf", pooling_type=1)
    create("tiny-embed", parse_modelfile(f"FROM {gguf}"))
    floats = client.embeddings.create(model="tiny-embed", input=["hello world", "the end"],
                                      encoding_format="float")
    assert floats.object == "list" and [d.index for d in floats.data] == [0, 1]
    assert all(len(d.embedding) == 32 for d in floats.data)
    assert floats.usage.prompt_tokens > 0
    # The client's default asks for base64: little-endian float32s.
    packed = client.embeddings.with_raw_response.create(
        model="tiny-embed", input="hello world", encoding_format="base64").http_response.json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-6)


# -- translation both ways, with a scripted engine -----------------------------------------


@pytest.fixture
def scripted(monkeypatch):
    """Replace the engine behind the routes: record the request, answer with ``events``."""
    from chatcli.core.events import Done, Metrics, ThinkingDelta, ToolCall
    from chatcli.serve import openai_api

    seen: dict = {}
    events = [ThinkingDelta("The user wants weather."),
              ToolCall("get_weather", {"city": "Paris"}),
              Done("stop", Metrics(prompt_eval_count=5, eval_count=7))]

    async def answer(model, messages, options, **request):
        seen.update(model=model, messages=messages, options=options, **request)
        for event in events:
            yield event

    monkeypatch.setattr(openai_api.runner, "answer", answer)
    return seen


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_requests_become_ollama_requests(client, scripted):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather"},
                                     {"type": "text", "text": "in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22C"},
    ]
    client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], temperature=0.2, top_p=0.5, seed=7,
        max_completion_tokens=50, stop="END", frequency_penalty=0.5, presence_penalty=0.25,
        response_format={"type": "json_object"}, reasoning_effort="high")
    assert scripted["model"] == "registry.ollama.ai/library/smollm2:135m"
    assert scripted["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather\nin Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "22C", "tool_name": "get_weather"},
    ]
    assert scripted["options"] == {"temperature": 0.2, "top_p": 0.5, "seed": 7,
                                   "num_predict": 50, "stop": ["END"],
                                   "frequency_penalty": 0.5, "presence_penalty": 0.25}
    assert scripted["tools"][0]["function"]["name"] == "get_weather"
    assert scripted["format"] == "json" and scripted["think"] == "high"


def test_llama_server_style_sampling_fields_are_honoured(client, scripted):
    """vLLM and llama-server read top_k, min_p, repeat_penalty ... at the top of the body (and
    chatcli's own REPL sends them there); a wrong value is a 400 like any other."""
    client.chat.completions.create(model=MODEL, messages=HI, temperature=0, extra_body={
        "top_k": 5, "min_p": 0.1, "repeat_penalty": 1.0, "mirostat": 0, "not_an_option": 1})
    assert scripted["options"] == {"temperature": 0, "top_k": 5, "min_p": 0.1,
                                   "repeat_penalty": 1.0, "mirostat": 0}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=HI, extra_body={"top_k": "many"})


def test_tool_calls_and_reasoning_come_back_in_openai_shape(client, scripted):
    r = client.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.model_extra["reasoning"] == "The user wants weather."
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments, str)  # a JSON string, as OpenAI sends it
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (5, 7)

    chunks = list(client.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER],
                                                 stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    assert [d.model_extra.get("reasoning") for d in deltas if d.model_extra.get("reasoning")] \
        == ["The user wants weather."]
    calls = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert len(calls) == 1 and calls[0].index == 0
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_what_cannot_be_honoured_is_refused(client, scripted):
    for bad, param in [({"n": 2}, "n"), ({"tool_choice": "required", "tools": [WEATHER]},
                                          "tool_choice"),
                       ({"response_format": {"type": "xml"}}, "response_format"),
                       ({"reasoning_effort": "extreme"}, "reasoning_effort")]:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=HI, **bad)
        assert error_of(info)["param"] == param
    assert not scripted  # none of them reached the engine
