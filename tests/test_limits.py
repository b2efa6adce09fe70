"""Every input bounded: thread count, context size, penalty window and input size.

Each careless or hostile value gets a clear error (or a safe clamp), never a crash, a hang or
gigabytes; memory bounds are asserted with the peak RSS of a child process that ran the case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from live_server import ServerThread

from chatcli.core import options
from chatcli.core.errors import ChatCliError, ContextOverflowError, InvalidOptionError
from chatcli.core.events import ContentDelta, Done, Trimmed
from chatcli.engine import memory
from chatcli.engine.decode import LONG_CONTEXT_ENV, Engine

OPTS = {"temperature": 0, "seed": 42, "num_predict": 8}
MODEL = "smollm2:135m"
MIB = 1 << 20
GIB = 1 << 30
# SmolLM2-135M as llama.cpp sees it.
SMOLLM2 = memory.ModelShape(n_layer=30, n_embd=576, n_head=9, n_head_kv=3, head_k=64, head_v=64,
                            n_vocab=49152)
WORDS = "lorem ipsum dolor sit amet, consectetur adipiscing elit. "
# A resident model plus a context is ~400 MiB; each bug below went to gigabytes.
RSS_LIMIT_MIB = 1024


@pytest.fixture(scope="module")
def engine(bundled_path):
    eng = Engine(bundled_path, name=MODEL)
    yield eng
    eng.close()


def answer(engine, messages, opts=OPTS, **kw):
    events = list(engine.chat(messages, opts, **kw))
    assert isinstance(events[-1], Done)
    return "".join(e.text for e in events if isinstance(e, ContentDelta)), events


def text_of(size: int) -> str:
    return (WORDS * (size // len(WORDS) + 1))[:size]


def conversation(size: int, last: str = "What is 2+2?") -> list[dict]:
    """About ``size`` bytes of alternating ~2 KB turns, then a short question."""
    turn = WORDS * 35
    msgs: list[dict] = [{"role": "system", "content": "Be brief."}]
    for i in range(size // (2 * len(turn))):
        msgs += [{"role": "user", "content": f"{i} {turn}"},
                 {"role": "assistant", "content": turn}]
    msgs.append({"role": "user", "content": last})
    return msgs


# A child that runs one case through the engine and reports what happened and its peak RSS.
CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from test_limits import conversation, text_of, OPTS
from chatcli.engine.decode import Engine
from chatcli.core.errors import ChatCliError
from chatcli.core.events import ContentDelta, Trimmed
from chatcli.models.resolve import bundled_model_path

case = sys.argv[2]
eng = Engine(bundled_model_path())
opts, raw, msgs = dict(OPTS), None, [{"role": "user", "content": "What is 2+2?"}]
if case == "message":
    msgs = [{"role": "user", "content": text_of(50_000_000)}]
elif case == "raw":
    raw = text_of(50_000_000)
elif case == "conversation":
    msgs, opts["num_ctx"] = conversation(50_000_000), 1024
elif case.startswith("repeat_last_n="):
    opts.update(repeat_last_n=int(case.partition("=")[2]), repeat_penalty=1.3)
start = time.monotonic()
out = {"text": "", "trimmed": 0}
try:
    for e in eng.chat(msgs, opts, raw=raw):
        if isinstance(e, ContentDelta):
            out["text"] += e.text
        elif isinstance(e, Trimmed):
            out["trimmed"] = e.dropped
except ChatCliError as e:
    out["error"] = f"{type(e).__name__}: {e}"
out["seconds"] = time.monotonic() - start
# ru_maxrss starts from the parent's RSS at the fork (Linux keeps it across exec); VmHWM is
# this process image's own peak.
out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
try:
    with open("/proc/self/status") as f:
        out["peak_mib"] = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
except OSError:
    pass
print(json.dumps(out))
"""


def in_child(case: str, timeout: float = 600) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, os.path.dirname(__file__), case],
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


# `chat ...` under a wrapper that reports the peak RSS of the chat process. The small wrapper
# also keeps this (large) test process's RSS out of the figure: see CHILD.
MEASURE = r"""
import resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))
sys.exit(rc)
"""


def chat_cli(args, env, tmp_path, input="", timeout=600):
    """Run `chat ARGS`; return (CompletedProcess, peak RSS of the chat process in MiB)."""
    peak = tmp_path / "peak"
    p = subprocess.run([sys.executable, "-c", MEASURE, str(peak), sys.executable, "-m",
                        "chatcli", *args], env=env, input=input, capture_output=True, text=True,
                       timeout=timeout)
    return p, float(peak.read_text())


def assert_one_line_error(p, *fragments):
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    err = p.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("Error: "), err
    assert "unexpected" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture(scope="module")
def server():
    from chatcli.serve.app import build_app

    with ServerThread(build_app()) as running:
        with httpx.Client(base_url=running.url, timeout=600) as http:
            yield http


def chat_request(http, options=None, content="What is 2+2?"):
    return http.post("/api/chat", json={
        "model": MODEL, "stream": False, "options": {**OPTS, "num_thread": 1, **(options or {})},
        "messages": [{"role": "user", "content": content}],
    })


def assert_answered(response):
    assert response.status_code == 200, response.text
    assert response.json()["message"]["content"].strip()


# -- thread count --------------------------------------------------------------------------------

def test_num_thread_is_capped_at_four_per_usable_cpu():
    cpus = len(os.sched_getaffinity(0))
    assert options.MAX_THREADS == min(512, 4 * cpus)
    assert options.validate({"num_thread": options.MAX_THREADS}) == {
        "num_thread": options.MAX_THREADS}
    for bad in (options.MAX_THREADS + 1, 10000, 100000):
        with pytest.raises(InvalidOptionError) as e:
            options.parse_assignment(f"num_thread={bad}")
        assert f"0..{options.MAX_THREADS}" in str(e.value) and str(bad) in str(e.value)
    # What help shows is what validation enforces.
    spec = options.SPECS["num_thread"]
    assert str(options.MAX_THREADS) in spec.help and spec.rule.startswith(
        f"0..{options.MAX_THREADS} ")


def test_num_thread_from_the_cli_is_one_line(cli_env, tmp_path):
    p, _ = chat_cli(["run", MODEL, "-o", "num_thread=100000", "hi"], cli_env, tmp_path)
    assert_one_line_error(p, "num_thread", f"0..{options.MAX_THREADS}")


def test_num_thread_from_the_api_raises(bundled_path):
    import chatcli

    with pytest.raises(ChatCliError, match="num_thread"):
        chatcli.chat(MODEL, [{"role": "user", "content": "hi"}],
                     options={**OPTS, "num_thread": 10000})


def test_num_thread_over_http_is_a_400_and_the_server_lives_on(server):
    r = chat_request(server, {"num_thread": 100000})
    assert r.status_code == 400 and "num_thread" in r.json()["error"]
    assert_answered(chat_request(server))


# -- context size --------------------------------------------------------------------------------

def test_kv_cache_estimate_matches_llama_cpp():
    # llama.cpp reports "KV buffer size = 45.00 MiB" (2048), 180 (8192), 720 (32768), 2880.
    for n_ctx, mib in ((2048, 45), (8192, 180), (32768, 720), (131072, 2880)):
        assert memory.kv_cache_bytes(SMOLLM2, n_ctx) == mib * MIB
    # Its compute buffer was 102.5 MiB (2048), 98.3 (8192, 32768), 141.5 (131072): the
    # estimate never falls short, nor overshoots by more than the f16 mask.
    for n_ctx, mib in ((2048, 102.5), (8192, 98.3), (32768, 98.3), (131072, 141.5)):
        est = memory.compute_bytes(SMOLLM2, n_ctx, 512) / MIB
        assert mib <= est <= mib + n_ctx * 512 * 2 / MIB + 16, (n_ctx, est)
    assert 4.5 * GIB < memory.context_bytes(SMOLLM2, 200000, 512) < 4.7 * GIB


def test_check_fits_refuses_with_the_numbers():
    needed = memory.context_bytes(SMOLLM2, 200000, 512)
    with pytest.raises(InvalidOptionError) as e:
        memory.check_fits(200000, needed, int(3.1 * GIB))
    assert str(e.value) == ("num_ctx 200000 needs ~4.6 GiB for the KV cache and buffers; "
                            "3.1 GiB is available, of which 90% may be used; lower num_ctx")
    # A tenth of what is available stays free.
    memory.check_fits(200000, needed, int(needed / 0.9) + 1)
    with pytest.raises(InvalidOptionError):
        memory.check_fits(200000, needed, needed)
    memory.check_fits(200000, needed, None)  # unknown: nothing refused


def test_available_memory_reads_meminfo_and_cgroups(monkeypatch, tmp_path):
    monkeypatch.setenv(memory.AVAILABLE_ENV, str(123 * MIB))
    assert memory.available_bytes() == 123 * MIB
    monkeypatch.delenv(memory.AVAILABLE_ENV)
    real = memory.available_bytes()
    assert real is not None and real > 0
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text(f"{2 * GIB}\n")
    (v2 / "memory.current").write_text(f"{GIB}\n")
    (v2 / "memory.stat").write_text(f"anon 5\ninactive_file {100 * MIB}\n")
    assert memory._limit_left(v2, "memory.max", "memory.current", "inactive_file") == (
        GIB + 100 * MIB)
    (v2 / "memory.max").write_text("max\n")
    assert memory._limit_left(v2, "memory.max", "memory.current", "inactive_file") is None


def test_engine_shape_is_read_from_the_model(engine):
    assert memory.model_shape(engine._model) == SMOLLM2


def test_a_context_that_does_not_fit_is_refused_and_the_engine_lives_on(engine, monkeypatch):
    n_ctx = engine.n_ctx
    monkeypatch.setenv(memory.AVAILABLE_ENV, str(MIB))
    with pytest.raises(InvalidOptionError) as e:
        answer(engine, [{"role": "user", "content": "hi"}], {**OPTS, "num_ctx": 8192})
    assert "num_ctx 8192 needs ~" in str(e.value) and "1 MiB is available" in str(e.value)
    # The context it had is untouched and still answers.
    assert engine.n_ctx == n_ctx
    text, _ = answer(engine, [{"role": "user", "content": "What is 2+2?"}])
    assert text.strip()


def test_a_first_context_that_does_not_fit_is_refused(bundled_path, monkeypatch):
    monkeypatch.setenv(memory.AVAILABLE_ENV, str(10 * MIB))
    with pytest.raises(InvalidOptionError, match="num_ctx 2048 needs ~"):
        Engine(bundled_path, options={"num_ctx": 2048})


# Each case below sets the memory "available" so that, were its fix broken, it would fail
# cleanly instead of allocating gigabytes on the machine running the tests.

def test_num_ctx_above_training_is_lowered_with_a_notice(engine, caplog, monkeypatch):
    monkeypatch.delenv(LONG_CONTEXT_ENV, raising=False)
    monkeypatch.setenv(memory.AVAILABLE_ENV, str(2 * GIB))
    train = engine.n_ctx_train
    assert train == 8192
    text, _ = answer(engine, [{"role": "user", "content": "What is 2+2?"}],
                     {**OPTS, "num_ctx": 1000000})
    assert text.strip() and engine.n_ctx == train
    notices = [r.getMessage() for r in caplog.records if "num_ctx 1000000" in r.getMessage()]
    assert notices == [f"num_ctx 1000000 is more than {MODEL} was trained for; using {train} "
                       f"(set {LONG_CONTEXT_ENV}=1 to go beyond it)"]
    answer(engine, [{"role": "user", "content": "What is 2+2?"}], {**OPTS, "num_ctx": 1000000})
    assert len([r for r in caplog.records if "num_ctx 1000000" in r.getMessage()]) == 1


def test_long_context_when_asked_is_checked_against_memory(engine, monkeypatch):
    monkeypatch.setenv(LONG_CONTEXT_ENV, "1")
    monkeypatch.setenv(memory.AVAILABLE_ENV, str(100 * MIB))
    with pytest.raises(InvalidOptionError) as e:
        answer(engine, [{"role": "user", "content": "hi"}], {**OPTS, "num_ctx": 16384})
    assert "num_ctx 16384 needs ~" in str(e.value)
    assert engine.resolve_options({"num_ctx": 9000})["num_ctx"] == 9000


def test_num_ctx_from_the_cli(cli_env, tmp_path):
    env = {**cli_env, LONG_CONTEXT_ENV: "1", memory.AVAILABLE_ENV: str(300 * MIB)}
    p, peak = chat_cli(["run", MODEL, "-o", "num_ctx=16384", "hi"], env, tmp_path)
    assert_one_line_error(p, "num_ctx 16384 needs ~", "300 MiB is available")
    assert peak < RSS_LIMIT_MIB, peak
    # Without asking for a long context, it is lowered to the training context and answers.
    env = {**cli_env, memory.AVAILABLE_ENV: str(2 * GIB)}
    p, peak = chat_cli(["run", MODEL, "-o", "num_ctx=1000000", "-o", "num_predict=4",
                        "-o", "temperature=0", "hi"], env, tmp_path)
    assert p.returncode == 0, p.stderr
    assert "using 8192" in p.stderr and "unexpected" not in p.stderr
    assert peak < RSS_LIMIT_MIB, peak


def test_num_ctx_over_http_is_a_400_and_the_server_lives_on(server, monkeypatch):
    assert_answered(chat_request(server))  # loaded, with a context of 4096
    monkeypatch.setenv(LONG_CONTEXT_ENV, "1")
    monkeypatch.setenv(memory.AVAILABLE_ENV, str(200 * MIB))
    r = chat_request(server, {"num_ctx": 16384})
    assert r.status_code == 400, r.text
    # 200 MiB, plus the KV cache of the context it has (90 MiB), which would be freed first.
    assert r.json()["error"] == ("num_ctx 16384 needs ~481 MiB for the KV cache and buffers; "
                                 "290 MiB is available, of which 90% may be used; "
                                 "lower num_ctx")
    monkeypatch.delenv(LONG_CONTEXT_ENV)
    monkeypatch.setenv(memory.AVAILABLE_ENV, str(2 * GIB))
    assert_answered(chat_request(server))
    assert_answered(chat_request(server, {"num_ctx": 200000}))  # lowered to 8192


# -- penalty window ------------------------------------------------------------------------------

def test_repeat_last_n_is_clamped_to_the_context():
    huge = in_child("repeat_last_n=1000000000")
    assert "error" not in huge and huge["text"].strip()
    assert huge["peak_mib"] < RSS_LIMIT_MIB, huge
    # The same answer as a window of the whole context.
    assert huge["text"] == in_child("repeat_last_n=-1")["text"]


# -- input size ----------------------------------------------------------------------------------

def test_min_tokens_is_a_lower_bound(engine):
    pieces = [
        WORDS,
        "日本語のテキスト、絵文字 🎉🎉 と記号。",
        " " * 2000 + "x",
        "\n\n\t\t    ",
        "<|im_start|>user\nhi<|im_end|>\n",
        "def f(x):\n        return x  # comment\n",
        "\U0010fffd\x00\x01",
        "a" * 60,
    ]
    for piece in pieces:
        text = piece * (4 * engine.n_ctx // len(piece) + 1)  # long enough to be bounded
        bound = engine.min_tokens(text)
        assert 0 < bound <= len(engine.tokenize(text)), piece
    # Texts that may fit cost nothing (no vocabulary scan).
    assert engine.min_tokens("short") == engine.min_tokens("x" * 4 * engine.n_ctx) == 0


def test_a_huge_message_is_refused_at_once():
    out = in_child("message")
    assert out["error"].startswith("ContextOverflowError: the prompt is at least ")
    assert out["seconds"] < 60 and out["peak_mib"] < RSS_LIMIT_MIB, out


def test_a_huge_raw_prompt_is_refused_at_once():
    out = in_child("raw")
    assert out["error"].startswith("ContextOverflowError: the prompt is at least ")
    assert out["seconds"] < 60 and out["peak_mib"] < RSS_LIMIT_MIB, out


def test_a_huge_conversation_is_trimmed_and_answered():
    out = in_child("conversation")
    assert "error" not in out and out["text"].strip() and out["trimmed"] > 20000, out
    assert out["peak_mib"] < RSS_LIMIT_MIB, out


def test_long_history_with_short_last_message_still_answers(engine):
    msgs = conversation(2_000_000)
    text, events = answer(engine, msgs, {**OPTS, "num_ctx": 1024})
    assert text.strip()
    trimmed = [e for e in events if isinstance(e, Trimmed)]
    assert trimmed and trimmed[0].dropped > 900


def test_essentials_that_barely_fit_are_still_tokenized(engine):
    # Longer than n_ctx characters (so bounded) yet within n_ctx tokens.
    msgs = [{"role": "user", "content": "hello " * 300}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "word " * 700 + "How many words?"}]
    _, events = answer(engine, msgs, {**OPTS, "num_ctx": 1024})
    assert events[-1].metrics.prompt_eval_count > 700
    with pytest.raises(ContextOverflowError, match=r"the prompt is \d+ tokens"):
        answer(engine, [{"role": "user", "content": "word " * 1500}], {**OPTS, "num_ctx": 1024})


def test_huge_inputs_from_the_cli(cli_env, tmp_path):
    start = time.monotonic()
    p, peak = chat_cli(["run", MODEL], cli_env, tmp_path, input=text_of(50_000_000))
    assert_one_line_error(p, "the prompt is at least")
    assert time.monotonic() - start < 120 and peak < RSS_LIMIT_MIB + 512, peak
    conv = tmp_path / "big.json"
    conv.write_text(json.dumps({"model": MODEL, "messages": conversation(50_000_000)[:-1]}))
    p, peak = chat_cli(["run", "--load", str(conv), "-o", "num_predict=8", "-o", "num_ctx=1024",
                        "-o", "temperature=0"], cli_env, tmp_path, input="What is 2+2?\n")
    assert p.returncode == 0 and p.stdout.strip(), p.stderr[-2000:]
    assert "unexpected" not in p.stderr
    assert peak < RSS_LIMIT_MIB + 512, peak


def test_a_huge_prompt_over_http_is_a_400_and_the_server_lives_on(server):
    start = time.monotonic()
    r = server.post("/api/generate", json={"model": MODEL, "prompt": text_of(8_000_000),
                                          "stream": False, "options": {**OPTS, "num_thread": 1}})
    assert r.status_code == 400 and "at least" in r.json()["error"], r.text
    assert time.monotonic() - start < 60
    r = server.post("/api/generate", json={"model": MODEL, "prompt": text_of(8_000_000),
                                          "raw": True, "stream": False})
    assert r.status_code == 400 and "at least" in r.json()["error"], r.text
    assert_answered(chat_request(server))
