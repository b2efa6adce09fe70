"""Hostile and careless input is bounded: a clear error (or U+FFFD), never a crash, an
``unexpected ...`` error, a 500, a dead timer or gigabytes.

Covers schema repetition (grammar expansion), text that is not valid UTF-8, deeply nested JSON
and absurd keep_alive values, through the CLI (a subprocess), the Python API and the server.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest
from conftest import DET

from chatcli import chat
from chatcli.core.errors import ChatCliError, RequestError
from chatcli.core.keepalive import MAX_KEEP_ALIVE, parse_keep_alive
from chatcli.core.textclean import MAX_DEPTH, TooDeepError, clean_text, clean_value, loads
from chatcli.engine.output.structured import (
    MAX_REPEAT,
    MAX_WORK,
    StructuredOutputError,
    grammar_for,
)

MODEL = "smollm2:135m"
FAST = {**DET, "num_predict": 8, "num_thread": 1}
CHAT = [sys.executable, "-m", "chatcli"]
USER = [{"role": "user", "content": "Say hi."}]


def deep_json(levels: int) -> str:
    return "[" * levels + "]" * levels


def deep_list(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def one_line_error(p: subprocess.CompletedProcess) -> str:
    """The CLI's contract for a user's mistake: exit 1, one line, ours, never 'unexpected'."""
    err = p.stderr.decode(errors="replace") if isinstance(p.stderr, bytes) else p.stderr
    assert p.returncode == 1, err
    assert err.startswith("Error:") and err.strip().count("\n") == 0, err
    assert "unexpected" not in err and "Traceback" not in err, err
    return err


def still_answers(http: httpx.Client) -> None:
    """The server survived: a normal request is answered."""
    r = http.post("/api/chat", json={"model": MODEL, "messages": USER, "stream": False,
                                     "options": FAST})
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True
    assert http.get("/api/ps").status_code == 200


# -- grammar expansion ---------------------------------------------------------------------

HUGE = 100_000_000
EXPENSIVE_SCHEMAS = [
    ({"type": "array", "items": {"type": "string"}, "minItems": HUGE}, "'minItems'"),
    ({"type": "array", "items": {"type": "string"}, "maxItems": HUGE}, "'maxItems'"),
    ({"type": "string", "minLength": HUGE}, "'minLength'"),
    ({"type": "string", "maxLength": HUGE}, "'maxLength'"),
    ({"type": "string", "pattern": "^a{100000000}$"}, "pattern quantifier"),
    ({"type": "string", "pattern": "^(ab){2,100000000}$"}, "pattern quantifier"),
    ({"type": "string", "pattern": "^x{99999999999999999999999999}$"}, "pattern quantifier"),
    # Each count within the limit, together far beyond it.
    ({"type": "object", "properties": {
        f"p{i}": {"type": "array", "items": {"type": "string"}, "minItems": MAX_REPEAT}
        for i in range(50)}}, f"limit of {MAX_WORK}"),
    # Hundreds of optional properties: the converter's work is quadratic in them.
    ({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2000)}},
     "optional properties"),
    # allOf copies its components' properties each time: doubling at every level.
    ({"$defs": {"d0": {"properties": {"x": {"type": "string", "maxLength": 500}}},
                **{f"d{i}": {"properties": {"x": {"allOf": [{"$ref": f"#/$defs/d{i - 1}"},
                                                            {"$ref": f"#/$defs/d{i - 1}"}]}}}
                   for i in range(1, 12)}},
      "allOf": [{"$ref": "#/$defs/d11"}]}, f"limit of {MAX_WORK}"),
]


@pytest.mark.parametrize("schema, words", EXPENSIVE_SCHEMAS)
def test_schema_repetition_is_refused_before_the_grammar_is_built(schema, words):
    with pytest.raises(StructuredOutputError, match="limit") as info:
        grammar_for(schema)
    assert words in str(info.value)


@pytest.mark.parametrize("schema, words", [
    ({"type": "string", "maxLength": -1}, "non-negative integer"),
    ({"type": "string", "maxLength": "10"}, "non-negative integer"),
    ({"type": "array", "items": {}, "minItems": 1.5}, "non-negative integer"),
    ({"type": "array", "items": {}, "minItems": 5, "maxItems": 2}, "greater than"),
])
def test_malformed_counts_are_clear_errors(schema, words):
    with pytest.raises(StructuredOutputError, match=words):
        grammar_for(schema)


def test_reasonable_repetition_still_builds():
    schema = {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 200},
                 "minItems": 1, "maxItems": 1000},
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{1,6}$"},
        **{f"opt{i}": {"type": "integer"} for i in range(100)},
    }, "required": ["tags", "code"]}
    assert "tags" in grammar_for(schema)


CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from chatcli.engine.output.structured import grammar_for
    from chatcli.core.errors import ChatCliError
    schema = json.loads(sys.argv[1])
    start = time.perf_counter()
    try:
        grammar_for(schema)
        outcome = "built"
    except ChatCliError as e:
        outcome = "refused: " + str(e)
    # VmHWM: this process image's own peak (ru_maxrss would start from pytest's RSS).
    peak_kb = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])
    print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - start,
                      "peak_mb": peak_kb / 1024}))
""")


@pytest.mark.parametrize("schema", [s for s, _ in EXPENSIVE_SCHEMAS[:5]])
def test_schema_refusal_costs_little_memory_and_time(schema):
    """The issue's 70-byte schema cost 5.4 GB and 10 s before its 400: measure the child's
    peak RSS and the time, not assume them."""
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(schema)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["outcome"].startswith("refused"), result
    assert result["peak_mb"] < 300, result
    assert result["seconds"] < 2, result


def test_schema_refusal_through_the_api_and_the_server(http):
    schema = EXPENSIVE_SCHEMAS[0][0]
    with pytest.raises(StructuredOutputError, match="minItems"):
        chat(MODEL, USER, format=schema, options=FAST)
    r = http.post("/api/chat", json={"model": MODEL, "messages": USER, "format": schema,
                                     "stream": False})
    assert r.status_code == 400 and "minItems" in r.json()["error"]
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": USER,
        "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}})
    assert r.status_code == 400 and "minItems" in r.json()["error"]["message"]
    still_answers(http)


# -- text that is not valid UTF-8 -----------------------------------------------------------


def test_clean_text_replaces_lone_surrogates_and_keeps_the_rest():
    assert clean_text("plain") == "plain"
    assert clean_text("caf\u00e9 \U0001f600") == "caf\u00e9 \U0001f600"
    assert clean_text("a\ud800b") == "a\ufffdb"
    assert clean_text("\udcff\udcfe bad") == "\ufffd\ufffd bad"  # surrogateescape'd bytes
    assert clean_text("\ud83d\ude00") == "\U0001f600"  # a split pair is joined
    assert clean_text("x\ude00\ud83d") == "x\ufffd\ufffd"
    assert loads(b'{"a": "\\ud800", "\\udfff": ["\xff"]}') == {"a": "\ufffd",
                                                               "\ufffd": ["\ufffd"]}


def test_invalid_utf8_on_stdin_is_replaced(cli_env):
    p = subprocess.run(CHAT + ["run", MODEL, "--num-predict", "8", "--temperature", "0"],
                       env=cli_env, input=b"\xff\xfe bad \xed\xa0\x80 input\n",
                       capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip()


def test_undecodable_prompt_argument_is_replaced(cli_env):
    p = subprocess.run([*(a.encode() for a in CHAT), b"run", MODEL.encode(), b"--num-predict",
                        b"8", b"--temperature", b"0", b"hello \xff\xfe"],
                       env=cli_env, input=b"", capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip()


def test_lone_surrogate_in_a_loaded_conversation(cli_env, tmp_path):
    conv = tmp_path / "conv.json"
    conv.write_bytes(b'{"model": "smollm2:135m", "messages": [{"role": "system", '
                     b'"content": "Be brief \\ud800."}, {"role": "user", '
                     b'"content": "Hi \\udfff \xff"}]}')
    p = subprocess.run(CHAT + ["run", MODEL, "--load", str(conv), "--num-predict", "8",
                               "--temperature", "0", "And now?"],
                       env=cli_env, input=b"", capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip()


def test_lone_surrogates_through_the_python_api():
    messages = [{"role": "system", "content": "Be brief \ud800."},
                {"role": "user", "content": "Hi \udcff"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "f\ud800", "arguments": {"k\udfff": ["\ud800"]}}}]},
                {"role": "tool", "content": "ok \ud800", "tool_name": "f"},
                {"role": "user", "content": "Go on \ud800"}]
    r = chat(MODEL, messages, options=FAST)
    assert r.done
    r = chat(MODEL, USER, format={"type": "object", "description": "\ud800",
                                  "properties": {"a\ud800": {"type": "string", "maxLength": 5}}},
             options=FAST)
    assert r.done


@pytest.mark.parametrize("path, body", [
    ("/api/chat", b'{"model": "smollm2:135m", "stream": false, "options": {"num_predict": 8, '
                  b'"temperature": 0}, "messages": [{"role": "user", "content": '
                  b'"Hi \\ud800 \xff\xfe"}]}'),
    ("/api/generate", b'{"model": "smollm2:135m", "stream": false, "options": '
                      b'{"num_predict": 8, "temperature": 0}, "prompt": "Hi \\udfff \xff", '
                      b'"system": "Be \\ud800 brief"}'),
    ("/v1/chat/completions", b'{"model": "smollm2:135m", "max_tokens": 8, "temperature": 0, '
                             b'"messages": [{"role": "user", "content": "Hi \\ud800 \xff"}]}'),
    ("/v1/completions", b'{"model": "smollm2:135m", "max_tokens": 8, "temperature": 0, '
                        b'"prompt": "Hi \\ud800 \xff"}'),
])
def test_invalid_text_in_request_bodies_is_replaced(http, path, body):
    r = http.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    still_answers(http)


# -- deeply nested JSON ----------------------------------------------------------------------


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 500, 100_000])
def test_loads_refuses_deep_nesting_at_any_depth(levels):
    with pytest.raises(TooDeepError, match=f"the limit is {MAX_DEPTH}"):
        loads(deep_json(levels))
    assert loads(deep_json(MAX_DEPTH)) == deep_list(MAX_DEPTH - 1)


def test_clean_value_is_iterative_and_stops_cycles():
    with pytest.raises(TooDeepError):
        clean_value(deep_list(100_000))
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(TooDeepError):
        clean_value({"a": cycle})


@pytest.mark.parametrize("levels", [500, 100_000])
def test_deep_conversation_file_is_a_one_line_error(cli_env, tmp_path, levels):
    conv = tmp_path / "deep.json"
    conv.write_text('{"model": "smollm2:135m", "messages": ' + deep_json(levels) + "}")
    p = subprocess.run(CHAT + ["run", "--load", str(conv), "hi"], env=cli_env, input="",
                       capture_output=True, text=True, timeout=300)
    assert "nested too deeply" in one_line_error(p)


def test_deep_format_file_is_a_one_line_error(cli_env, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "default": ' + deep_json(100_000) + "}")
    p = subprocess.run(CHAT + ["run", MODEL, "--format", str(schema), "hi"], env=cli_env,
                       input="", capture_output=True, text=True, timeout=300)
    assert "nested too deeply" in one_line_error(p)


POST_ENDPOINTS = ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show",
                  "/api/pull", "/api/copy", "/api/create", "/v1/chat/completions",
                  "/v1/completions", "/v1/embeddings"]


@pytest.mark.parametrize("levels", [200, 100_000])
@pytest.mark.parametrize("path", POST_ENDPOINTS + ["/api/delete"])
def test_deep_request_bodies_are_400_on_every_endpoint(http, path, levels):
    body = '{"model": "smollm2:135m", "messages": ' + deep_json(levels) + "}"
    method = "DELETE" if path == "/api/delete" else "POST"
    r = http.request(method, path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert "nested too deeply" in message


def test_deep_tool_call_arguments_in_a_request(http):
    calls = [{"function": {"name": "f", "arguments": deep_json(50_000)}}]
    body = {"model": MODEL, "stream": False, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": calls}]}
    r = http.post("/api/chat", json=body)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]
    still_answers(http)


@pytest.mark.parametrize("kwargs", [
    {"messages": [*USER, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": {"a": deep_list(100_000)}}}]}]},
    {"messages": [*USER, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": '{"a": ' + deep_json(100_000) + "}"}}]}]},
    {"messages": USER, "format": {"type": "object", "default": deep_list(100_000)}},
    {"messages": USER, "format": json.dumps({"type": "object", "default": deep_list(500)})},
    {"messages": USER, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "default": deep_list(100_000)}}}]},
])
def test_deep_python_objects_given_to_the_api_are_request_errors(kwargs):
    with pytest.raises(RequestError, match="nested too deeply"):
        chat(MODEL, options=FAST, **kwargs)


# -- keep_alive ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1e30, "1e30", 10**400, "99999999999h", float("inf"),
                                   "inf", "Infinity", 1e308 * 10, MAX_KEEP_ALIVE + 1])
def test_absurd_keep_alive_means_forever(value):
    assert parse_keep_alive(value) is None


@pytest.mark.parametrize("value", [float("nan"), "NaN", "nan", "1e30s", "-nan"])
def test_keep_alive_that_is_not_a_duration_is_refused(value):
    with pytest.raises(RequestError, match="keep_alive"):
        parse_keep_alive(value)


def test_keep_alive_within_a_year_is_kept():
    assert parse_keep_alive(MAX_KEEP_ALIVE) == MAX_KEEP_ALIVE
    assert parse_keep_alive("8760h") == MAX_KEEP_ALIVE


@pytest.fixture
def thread_errors(monkeypatch):
    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    return errors


@pytest.mark.parametrize("keep", [1e30, 1e300, float("inf"), float("nan"),
                                  float(threading.TIMEOUT_MAX) * 2])
def test_the_expiry_timer_survives_any_value(bundled_path, thread_errors, keep):
    from chatcli.engine.loaded import CACHE
    from chatcli.models.resolve import resolve

    entry = CACHE.acquire(resolve(MODEL), DET)
    try:
        CACHE.release(entry, keep)
        time.sleep(0.3)
        assert not thread_errors, thread_errors
        if entry.timer is not None:
            assert entry.timer.is_alive()
        assert entry in CACHE.loaded()
    finally:
        CACHE.unload_all()


def test_a_long_keep_alive_is_waited_out_in_steps(bundled_path, thread_errors, monkeypatch):
    from chatcli.engine import loaded
    from chatcli.engine.loaded import CACHE
    from chatcli.models.resolve import resolve

    monkeypatch.setattr(loaded, "TIMER_STEP", 0.1)
    entry = CACHE.acquire(resolve(MODEL), DET)
    CACHE.release(entry, 0.5)
    time.sleep(0.25)
    assert entry in CACHE.loaded()  # two steps in: still loaded
    deadline = time.monotonic() + 10
    while entry in CACHE.loaded():
        assert time.monotonic() < deadline, "the re-armed timer never unloaded the model"
        time.sleep(0.05)
    assert not thread_errors


@pytest.mark.parametrize("keep_alive", [1e30, "1e30", "99999999999h", 1e400])
def test_absurd_keep_alive_over_http_keeps_ps_working(http, thread_errors, keep_alive):
    body = json.dumps({"model": MODEL, "keep_alive": keep_alive})  # 1e400 is sent as Infinity
    r = http.post("/api/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    time.sleep(0.2)
    r = http.get("/api/ps")
    assert r.status_code == 200, r.text
    assert r.json()["models"][0]["expires_at"] > "2200"  # forever
    assert not thread_errors
    still_answers(http)
    http.post("/api/generate", json={"model": MODEL, "keep_alive": 0})


@pytest.mark.parametrize("keep_alive", ["NaN", "1e30s", "soon"])
def test_keep_alive_that_is_not_a_duration_is_400(http, keep_alive):
    r = http.post("/api/chat", json={"model": MODEL, "messages": USER, "keep_alive": keep_alive})
    assert r.status_code == 400 and "keep_alive" in r.json()["error"]
    body = '{"model": "smollm2:135m", "keep_alive": NaN}'
    r = http.post("/api/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "keep_alive" in r.json()["error"]
    still_answers(http)


def test_api_keep_alive_nan_is_a_request_error():
    with pytest.raises(ChatCliError, match="keep_alive"):
        chat(MODEL, USER, options=FAST, keep_alive=math.nan)
