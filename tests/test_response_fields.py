"""Response fields as the seed defines them: the whole prompt in prompt_eval_count (what the KV
cache held in prompt_cached_count), tool call ids and indexes, /api/generate's context, suffix and
template, /api/tags' capabilities and order, /api/ps' memory and order, keep_alive 0 while busy.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time

import gguf
import pytest
from conftest import DET, ENDLESS_PROMPT
from tiny_gguf import set_kv, write_tiny_llama

from chatcli import chat

MODEL = "smollm2:135m"
# One llama.cpp thread: on a busy machine several threads per answer spin at their barriers.
ONE = {**DET, "num_thread": 1, "num_predict": 8}
HI = [{"role": "user", "content": "Name a fruit."}]
CALL_ID = re.compile(r"call_[a-z0-9]{8}")


def _loaded(http) -> list[str]:
    return [m["name"] for m in http.get("/api/ps").json()["models"]]


def _upload(http, path, name: str) -> str:
    """Create model ``name`` on the server from the GGUF at ``path``."""
    from live_server import create_model

    return create_model(http, name, path)


@pytest.fixture(scope="module")
def fim_gguf(tmp_path_factory):
    """A tiny model whose vocabulary has fill-in-the-middle tokens."""

    def edit(writer) -> None:
        for part, token in (("pre", 3), ("suf", 4), ("mid", 5)):
            set_kv(writer, f"tokenizer.ggml.fim_{part}_token_id", token,
                   gguf.GGUFValueType.UINT32)

    return write_tiny_llama(tmp_path_factory.mktemp("fim") / "fim.gguf", edit=edit)


# -- prompt_eval_count is the whole prompt; prompt_cached_count what the cache held --------------


def test_api_counts_the_whole_prompt_and_reports_the_cached_part():
    first = chat(MODEL, HI, options=ONE)
    again = chat(MODEL, HI, options=ONE)
    assert first.prompt_eval_count > 10  # the templated prompt, system prompt and all
    assert again.prompt_eval_count == first.prompt_eval_count
    # Only the last token is evaluated again (fresh logits); the rest came from the cache.
    assert again.prompt_cached_count == again.prompt_eval_count - 1
    assert again.model_dump()["prompt_cached_count"] == again.prompt_cached_count


def test_server_and_v1_count_the_whole_prompt_and_report_the_cached_part(http):
    body = {"model": MODEL, "messages": HI, "options": ONE, "stream": False}
    first = http.post("/api/chat", json=body).json()
    again = http.post("/api/chat", json=body).json()
    assert again["prompt_eval_count"] == first["prompt_eval_count"] > 10
    assert 0 < again["prompt_cached_count"] == again["prompt_eval_count"] - 1
    with http.stream("POST", "/api/chat", json={**body, "stream": True}) as r:
        last = [json.loads(line) for line in r.iter_lines() if line][-1]
    assert last["prompt_eval_count"] == first["prompt_eval_count"]
    assert last["prompt_cached_count"] == last["prompt_eval_count"] - 1
    v1 = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI,
                                                 "max_tokens": 4, "temperature": 0}).json()
    usage = v1["usage"]
    assert usage["prompt_tokens"] == first["prompt_eval_count"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1


# -- tool calls carry id and function.index ------------------------------------------------------


@pytest.fixture
def two_calls(monkeypatch):
    """The engine behind the routes answers with two tool calls."""
    from chatcli.core.events import Done, Metrics, ToolCall
    from chatcli.serve import runner

    async def answer(model, messages, options, **request):
        yield ToolCall("get_weather", {"city": "Paris"})
        yield ToolCall("get_time", {"zone": "CET"})
        yield Done("stop", Metrics(prompt_eval_count=5, eval_count=7))

    monkeypatch.setattr(runner, "answer", answer)


def test_tool_calls_carry_ollama_ids_and_indexes(http, two_calls):
    body = {"model": MODEL, "messages": HI, "stream": False}
    calls = http.post("/api/chat", json=body).json()["message"]["tool_calls"]
    assert [c["function"]["index"] for c in calls] == [0, 1]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert all(CALL_ID.fullmatch(c["id"]) for c in calls) and calls[0]["id"] != calls[1]["id"]
    with http.stream("POST", "/api/chat", json={**body, "stream": True}) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    streamed = [c for o in lines for c in o["message"].get("tool_calls", [])]
    assert [c["function"]["index"] for c in streamed] == [0, 1]
    assert all(CALL_ID.fullmatch(c["id"]) for c in streamed)
    v1 = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI}).json()
    v1_calls = v1["choices"][0]["message"]["tool_calls"]
    assert all(CALL_ID.fullmatch(c["id"]) for c in v1_calls)  # one id form on both APIs


def test_python_api_tool_calls_carry_ids_and_indexes(monkeypatch):
    from chatcli.core.events import Done, ToolCall
    from chatcli.engine.decode import Engine

    def scripted(self, messages, options=None, **kw):
        yield ToolCall("get_weather", {"city": "Paris"})
        yield ToolCall("get_time", {"zone": "CET"})
        yield Done("stop")

    monkeypatch.setattr(Engine, "chat", scripted)
    r = chat(MODEL, HI)
    assert [c.function.index for c in r.message.tool_calls] == [0, 1]
    assert all(CALL_ID.fullmatch(c.id) for c in r.message.tool_calls)
    chunks = [c for c in chat(MODEL, HI, stream=True) if c.message.tool_calls]
    assert [c.message.tool_calls[0]["function"]["index"] for c in chunks] == [0, 1]


def test_remote_client_keeps_the_servers_ids_and_cached_count():
    from chatcli.client.remote import _message_events, _metrics

    (call,) = _message_events({"tool_calls": [{"id": "call_abcd1234", "function": {
        "index": 0, "name": "f", "arguments": {}}}]})
    assert call.id == "call_abcd1234"
    assert _metrics({"prompt_eval_count": 9, "prompt_cached_count": 8}).prompt_cached_count == 8


# -- /api/generate: context, suffix, template ---------------------------------------------------


def test_generate_returns_a_context_that_continues_it(http):
    body = {"model": MODEL, "prompt": "The capital of France is", "raw": True, "options": ONE,
            "stream": False}
    first = http.post("/api/generate", json=body).json()
    context = first["context"]
    # The prompt's tokens, then one per answer token.
    assert len(context) == first["prompt_eval_count"] + first["eval_count"]
    more = http.post("/api/generate", json={**body, "prompt": " and the capital of Italy is",
                                             "context": context}).json()
    assert more["prompt_eval_count"] > len(context)  # the context, then the new prompt
    assert more["prompt_cached_count"] >= len(context) - 1  # continued in the KV cache
    assert more["context"][:len(context)] == context
    # A templated (non-raw) prompt continues a context too, without a second BOS.
    chatty = http.post("/api/generate", json={"model": MODEL, "prompt": "And Italy?",
                                              "context": context, "options": ONE,
                                              "stream": False}).json()
    assert chatty["context"][:len(context)] == context and chatty["response"]


@pytest.mark.parametrize("context", [[-1], ["a"], [10**9], [True]])
def test_generate_refuses_a_context_that_is_not_token_ids(http, context):
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "context": context,
                                         "options": ONE, "stream": False})
    assert r.status_code == 400 and "context" in r.json()["error"]


def test_suffix_uses_the_models_fim_tokens(http, fim_gguf):
    from chatcli.engine.decode import Engine

    engine = Engine(fim_gguf, options={"num_ctx": 256})
    try:
        prefix, suffix = engine.tokenize("hello")[1:], engine.tokenize("world")[1:]
        tokens = engine._fit_infill("hello", "world", engine.n_ctx)[0]
    finally:
        engine.close()
    assert tokens == [1, 3, *prefix, 4, *suffix, 5]  # BOS <pre> prefix <suf> suffix <mid>
    name = _upload(http, fim_gguf, "fim")
    r = http.post("/api/generate", json={"model": name, "prompt": "hello", "suffix": "world",
                                         "options": {**ONE, "num_predict": 2}, "stream": False})
    assert r.status_code == 200, r.text
    assert r.json()["prompt_eval_count"] == len(tokens)
    # A model without FIM tokens: Ollama's words.
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "def f(", "suffix": "x"})
    assert r.status_code == 400 and "does not support insert" in r.json()["error"]


def test_template_of_placeholders_is_honoured_and_others_are_refused(http):
    raw = http.post("/api/generate", json={"model": MODEL, "prompt": "The sky is", "raw": True,
                                           "options": ONE, "stream": False}).json()
    templated = http.post("/api/generate", json={
        "model": MODEL, "prompt": "sky is", "template": "{{/* c */}}The {{- \" \" -}} "
        "{{ .Prompt }}{{ .Response }}", "options": ONE, "stream": False})
    assert templated.status_code == 400  # {{ " " }} is Go, not a placeholder
    templated = http.post("/api/generate", json={
        "model": MODEL, "prompt": "sky is", "template": "{{/* a comment */}}The {{.Prompt}}"
        "{{ .Response }}", "options": ONE, "stream": False}).json()
    assert templated["response"] == raw["response"]
    assert templated["prompt_eval_count"] == raw["prompt_eval_count"]
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "x", "template":
                                         "{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}"})
    assert r.status_code == 400 and "{{ if .System }}" in r.json()["error"]


def test_go_template_placeholders_and_trim_markers():
    from chatcli.serve.ollama_api import _go_template

    text = _go_template("<s>{{ .System }}\n  {{- .Prompt -}}  \n[{{ .Suffix }}]{{.Response}}",
                        prompt="P", system="S", suffix="X")
    assert text == "<s>SP[X]"
    with pytest.raises(Exception, match=r"\.Suffix"):
        _go_template("{{ .Prompt }}", prompt="P", system="", suffix="X")


# -- /api/tags and /api/ps -----------------------------------------------------------------------


def test_tags_have_capabilities_context_length_and_newest_first(http, tiny_gguf):
    from chatcli.core.names import parse_name
    from chatcli.models.store import local_store
    from chatcli.serve.http import reference

    _upload(http, tiny_gguf, "older")
    _upload(http, tiny_gguf, "newer")
    store = local_store()
    now = time.time()
    os.utime(store.manifest_path(parse_name(reference("older"))), (now - 3600, now - 3600))
    os.utime(store.manifest_path(parse_name(reference("newer"))), (now + 60, now + 60))
    models = http.get("/api/tags").json()["models"]
    names = [m["name"] for m in models]
    assert names.index("newer:latest") < names.index("older:latest")
    stamps = [m["modified_at"] for m in models]
    assert stamps == sorted(stamps, reverse=True)
    (smol,) = [m for m in models if m["name"] == MODEL]
    assert smol["details"]["context_length"] == 8192
    assert "completion" in smol["capabilities"]
    (tiny,) = [m for m in models if m["name"] == "newer:latest"]
    assert tiny["details"]["context_length"] == 512


def test_ps_size_is_memory_in_use_and_longest_stay_comes_first(http, tiny_gguf, bundled_path):
    name = _upload(http, tiny_gguf, "tiny")
    http.post("/api/generate", json={"model": name, "keep_alive": "10m",
                                     "options": {"num_ctx": 256}})
    http.post("/api/generate", json={"model": MODEL, "keep_alive": "1h"})
    try:
        models = http.get("/api/ps").json()["models"]
        assert [m["name"] for m in models][:2] == [MODEL, "tiny:latest"]
        smol = models[0]
        # The weights plus a 4096-token KV cache and buffers, not the file's size.
        assert smol["size"] > bundled_path.stat().st_size + 50e6
        assert smol["size_vram"] in (0, smol["size"])
        http.post("/api/generate", json={"model": name, "keep_alive": -1})
        assert [m["name"] for m in http.get("/api/ps").json()["models"]][0] == "tiny:latest"
    finally:
        for model in (name, MODEL):
            http.post("/api/generate", json={"model": model, "keep_alive": 0})


# -- keep_alive 0 while the model is busy --------------------------------------------------------


def test_unload_requested_while_busy_happens_when_the_busy_request_ends(http):
    body = {"model": MODEL, "stream": True,
            "messages": [{"role": "user", "content": ENDLESS_PROMPT}],
            "options": {**DET, "num_thread": 1, "num_predict": 160}}
    unloaded: list[dict] = []
    with http.stream("POST", "/api/chat", json=body) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["done"] is False  # generating now

        def unload() -> None:
            unloaded.append(http.post("/api/chat", json={"model": MODEL, "messages": [],
                                                          "keep_alive": 0}).json())

        thread = threading.Thread(target=unload)
        thread.start()
        thread.join(60)
        assert unloaded and unloaded[0]["done_reason"] == "unload"
        rest = [json.loads(line) for line in lines if line]
    assert len(rest) > 1, "the answer ended before the unload request: nothing was tested"
    assert rest[-1]["done"] is True
    deadline = time.monotonic() + 10
    while MODEL in _loaded(http):
        assert time.monotonic() < deadline, "keep_alive 0 sent while busy was lost"
        time.sleep(0.1)


def test_cache_remembers_keep_alive_zero_until_the_last_user_is_done(bundled_path):
    from chatcli.engine.loaded import ModelCache
    from chatcli.models.resolve import resolve

    cache = ModelCache()
    model = resolve(MODEL)
    first = cache.acquire(model, {"num_ctx": 256})
    second = cache.acquire(model, {"num_ctx": 256})
    cache.release(second, 0)  # keep_alive 0 while the first is still busy
    assert cache.loaded() == [first]
    cache.release(first, 300.0)
    assert cache.loaded() == []  # unloaded, not kept for 5 minutes
    # A request that comes after the unload request decides again.
    entry = cache.acquire(model, {"num_ctx": 256})
    cache.release_now(entry)
    again = cache.acquire(model, {"num_ctx": 256})
    cache.release(entry, 300.0)
    cache.release(again, 300.0)
    try:
        assert cache.loaded() == [again]
    finally:
        cache.unload_all()
