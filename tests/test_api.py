"""`from chatcli import chat` behaves like `from ollama import chat`, on the real default model."""

import json
import time

import pytest
from conftest import DET

from chatcli import chat
from chatcli.core.errors import (
    InvalidOptionError,
    ModelNotFoundError,
    NotSupportedError,
    RequestError,
)
from chatcli.core.keepalive import parse_keep_alive
from chatcli.engine.loaded import CACHE

MODEL = "smollm2:135m"
METRICS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
           "eval_count", "eval_duration")


def test_seed_multi_turn_example():
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    response = chat(model=MODEL, messages=messages, options=DET)
    messages.append(response.message)
    messages.append({"role": "user", "content": "What is its population?"})
    response2 = chat(model=MODEL, messages=messages, options=DET)

    assert response.message.role == "assistant" and response.message.content.strip()
    assert response2.message.role == "assistant" and response2.message.content.strip()
    assert response2["message"]["content"] == response2.message.content
    for r in (response, response2):
        assert r.done is True and r.done_reason == "stop"
        for name in METRICS:
            assert r[name] > 0, name
        assert r.total_duration >= r.load_duration + r.prompt_eval_duration + r.eval_duration
    # The second turn reuses the first turn's KV cache: its prompt is the whole conversation,
    # and all of the first turn's prompt came from the cache.
    assert response2.prompt_eval_count > response.prompt_eval_count
    assert response2.prompt_cached_count >= response.prompt_eval_count


def test_seed_pirate_system_prompt_example():
    messages = [
        {"role": "system", "content": "You are a helpful assistant that speaks like a pirate."},
        {"role": "user", "content": "Tell me about Python programming."},
    ]
    response = chat(model=MODEL, messages=messages, options={**DET, "num_predict": 64})
    assert response.message.content.strip()
    assert response.eval_count <= 64


def test_streaming_chunk_shape():
    # A question whose answer is longer than 20 tokens on any build, so the cut is "length".
    ask = [{"role": "user", "content": "Write a long story about a dragon."}]
    chunks = list(chat(MODEL, ask, stream=True, options={**DET, "num_predict": 20}))
    assert len(chunks) >= 2
    *deltas, last = chunks
    for c in deltas:
        assert c.done is False and c.message.role == "assistant"
        assert isinstance(c.message.content, str) and c.message.content
        assert c.total_duration is None
        assert c.created_at.endswith("Z")
    assert last.done is True and last.message.content == ""
    assert last.eval_count == 20 and last.done_reason == "length"
    for name in METRICS:
        assert last[name] > 0
    # Streaming and non-streaming give the same text for the same seed.
    whole = chat(MODEL, ask, options={**DET, "num_predict": 20})
    assert "".join(c.message.content for c in deltas) == whole.message.content


def test_response_item_and_attribute_access_and_dump():
    r = chat(MODEL, [{"role": "user", "content": "Hi"}], options={**DET, "num_predict": 4})
    assert r["model"] == MODEL and r.model == MODEL
    assert "message" in r and r.get("missing", 1) == 1
    dumped = r.model_dump()
    assert json.loads(json.dumps(dumped))["message"]["role"] == "assistant"
    assert set(METRICS) <= set(dumped)


def test_messages_accept_message_objects_from_responses():
    r = chat(MODEL, [{"role": "user", "content": "Hi"}], options={**DET, "num_predict": 4})
    r2 = chat(MODEL, [{"role": "user", "content": "Hi"}, r.message,
                      {"role": "user", "content": "Again"}], options={**DET, "num_predict": 4})
    assert r2.message.content


def test_unknown_model_names_it():
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        chat("no-such-model", [{"role": "user", "content": "hi"}])


def test_bad_option_and_role():
    # Unknown names are ignored, as Ollama does (tests/test_lenient_options.py); bad values not.
    with pytest.raises(InvalidOptionError, match="top_p"):
        chat(MODEL, [{"role": "user", "content": "hi"}], options={"top_p": 7})
    with pytest.raises(RequestError, match="robot"):
        chat(MODEL, [{"role": "robot", "content": "hi"}])


def test_parameters_the_model_cannot_serve_are_refused_clearly():
    with pytest.raises(NotSupportedError, match="smollm2:135m' does not support tools"):
        chat(MODEL, [{"role": "user", "content": "hi"}],
             tools=[{"type": "function", "function": {"name": "f", "parameters": {
                 "type": "object", "properties": {}}}}])
    with pytest.raises(NotSupportedError, match="does not support thinking"):
        chat(MODEL, [{"role": "user", "content": "hi"}], think=True)
    with pytest.raises(NotSupportedError, match="does not support images"):
        chat(MODEL, [{"role": "user", "content": "hi", "images": [
            b"\x89PNG\r\n\x1a\n" + bytes(64)]}])


def test_keep_alive_parsing():
    assert parse_keep_alive(None) == 300
    assert parse_keep_alive("5m") == 300
    assert parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive("250ms") == 0.25
    assert parse_keep_alive(0) == 0
    assert parse_keep_alive(-1) is None and parse_keep_alive("-1m") is None
    assert parse_keep_alive("10") == 10
    with pytest.raises(RequestError):
        parse_keep_alive("soon")


def test_keep_alive_zero_unloads_and_expiry_unloads():
    CACHE.unload_all()
    chat(MODEL, [{"role": "user", "content": "hi"}], options={**DET, "num_predict": 1},
         keep_alive=0)
    assert CACHE.loaded() == []
    chat(MODEL, [{"role": "user", "content": "hi"}], options={**DET, "num_predict": 1},
         keep_alive=0.3)
    assert len(CACHE.loaded()) == 1
    deadline = time.monotonic() + 5
    while CACHE.loaded() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert CACHE.loaded() == []
    chat(MODEL, [{"role": "user", "content": "hi"}], options={**DET, "num_predict": 1},
         keep_alive=-1)
    (entry,) = CACHE.loaded()
    assert entry.expires_at is None


def test_unread_stream_does_not_pin_the_model():
    import gc

    CACHE.unload_all()
    stream = chat(MODEL, [{"role": "user", "content": "hi"}], stream=True, keep_alive=0)
    assert len(CACHE.loaded()) == 1
    del stream
    gc.collect()
    assert CACHE.loaded() == []
