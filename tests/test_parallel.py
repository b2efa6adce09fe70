"""`chat serve --parallel N`: several requests at once on one model (engine/batch.py).

The engine-level tests drive a Batcher on the real default model; the server tests speak to
`chat serve`'s app with the real ollama and openai client libraries.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import ollama
import pytest
from conftest import DET, ENDLESS_PROMPT

from chatcli.core.errors import ChatCliError
from chatcli.core.events import ContentDelta, Done
from chatcli.engine.batch import Batcher, UnloadedError
from chatcli.engine.decode import load
from chatcli.engine.loaded import CACHE

MODEL = "smollm2:135m"
ONE = {**DET, "num_thread": 1}  # one thread: the test machine may be busy (see test_server)
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.",
             "Count from 1 to 10.", "Name three colors."]
ENDLESS = {"role": "user", "content": ENDLESS_PROMPT}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def answer(events) -> tuple[str, Done]:
    text, done = [], None
    for event in events:
        if isinstance(event, ContentDelta):
            text.append(event.text)
        elif isinstance(event, Done):
            done = event
    assert done is not None
    return "".join(text), done


def in_threads(*calls):
    """Run the calls at once; their results in order (an exception is a result)."""
    results: list[object] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i, call):
        start.wait()
        try:
            results[i] = call()
        except Exception as e:  # reported by the caller's assertions
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


@pytest.fixture(scope="module")
def engine(bundled_path):
    eng = load(bundled_path, parallel=4, options=ONE)
    yield eng
    eng.close()


@pytest.fixture
def batcher(engine):
    b = Batcher(engine)
    yield b
    b.close()
    engine.reset_cache()


# -- the engine: one decode loop, four slots --------------------------------------------------


def test_four_at_once_answer_as_each_would_alone(engine, batcher):
    opts = {**ONE, "num_predict": 40}
    alone = [answer(engine.chat(user(q), opts)) for q in QUESTIONS]
    engine.reset_cache()
    together = in_threads(*[lambda q=q: answer(batcher.chat(user(q), opts)) for q in QUESTIONS])
    for (text, done), got in zip(alone, together, strict=True):
        assert not isinstance(got, Exception), got
        assert got[0] == text and text.strip()
        assert got[1].done_reason == done.done_reason
        assert got[1].metrics.eval_count == done.metrics.eval_count
        assert got[1].context is not None and len(got[1].context) > got[1].metrics.eval_count
    # They ran side by side: each slot holds one of the conversations.
    assert sorted(s["cached"] > 0 for s in batcher.slots()) == [True] * 4


def test_each_slot_has_its_own_sampling_and_grammar(engine, batcher):
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"]}
    requests = [
        (user("Which city is the capital of France? Answer in JSON."),
         {**ONE, "num_predict": 60}, {"format": schema}),
        (user("Tell me a story."), {**ONE, "temperature": 0.9, "seed": 7, "num_predict": 30},
         {}),
        (user("Name three colors."), {**ONE, "num_predict": 30}, {}),
    ]
    alone = []
    for msgs, opts, extra in requests:
        alone.append(answer(engine.chat(msgs, opts, **extra))[0])
        engine.reset_cache()
    together = in_threads(*[lambda r=r: answer(batcher.chat(r[0], r[1], **r[2]))[0]
                            for r in requests])
    assert together == alone
    assert isinstance(json.loads(together[0])["city"], str)


def test_a_slot_keeps_its_conversation_for_the_next_turn(batcher):
    opts = {**ONE, "num_predict": 16}
    a1 = user("What is the capital of France?")
    text_a, done_a = answer(batcher.chat(a1, opts))
    answer(batcher.chat(user("Write a haiku about the sea."), opts))  # another conversation
    answer(batcher.chat(user("Name three colors."), opts))
    a2 = [*a1, {"role": "assistant", "content": text_a}, *user("And of Germany?")]
    _, done = answer(batcher.chat(a2, opts))
    # Turn 2 found turn 1 (its prompt, at least) in a slot and read only what is new.
    assert done.metrics.prompt_cached_count >= done_a.metrics.prompt_eval_count
    assert done.metrics.prompt_cached_count < done.metrics.prompt_eval_count


def test_a_new_conversation_takes_a_free_slot_not_a_kept_one(batcher):
    opts = {**ONE, "num_predict": 8}
    answer(batcher.chat(user("What is the capital of France?"), opts))
    before = [s["cached"] for s in batcher.slots()]
    answer(batcher.chat(user("Name three colors."), opts))
    after = [s["cached"] for s in batcher.slots()]
    kept = [b for b in before if b]
    assert len(kept) == 1 and kept[0] in after  # the first conversation's slot is untouched
    assert sum(1 for a in after if a) == 2


def test_a_cancelled_request_frees_its_slot_at_once(engine):
    two = Batcher(engine)
    try:
        _two_slots_test(two)
    finally:
        two.close()
        engine.reset_cache()


def _two_slots_test(b):
    """With two slots busy on long answers, a third request waits; closing one answer's
    stream lets it in while the other long answer goes on."""
    long = {**ONE, "repeat_penalty": 1.0, "num_predict": 3000}
    b._slots = b._slots[:2]  # two slots of the four-sequence context
    first = b.chat([ENDLESS], long)
    next(e for e in first if isinstance(e, ContentDelta))
    second_done = threading.Event()

    def second():
        result = answer(b.chat([ENDLESS], {**long, "seed": 1}))
        second_done.set()
        return result

    worker = threading.Thread(target=second, daemon=True)
    worker.start()
    time.sleep(0.5)
    first.close()  # the client hangs up
    start = time.monotonic()
    text, done = answer(b.chat(user("Say hi."), {**ONE, "num_predict": 4}))
    assert done.done_reason in ("stop", "length") and text
    assert not second_done.is_set(), "the third request waited for a long answer to end"
    assert time.monotonic() - start < 60
    for s in b._slots:
        if s.job is not None:
            s.job.cancel.set()
    worker.join(60)


def test_a_long_prompt_is_read_in_chunks_beside_the_others_answers(batcher):
    """While a ~1,400-token prompt is read, an answer already running keeps getting tokens
    (one per step, each step reading a chunk of the prompt), instead of stopping until the
    whole prompt is in."""
    long = {**ONE, "repeat_penalty": 1.0, "num_predict": 2000}
    stop = threading.Event()
    running = batcher.chat([ENDLESS], long, cancel=stop)
    times: list[float] = []
    next(e for e in running if isinstance(e, ContentDelta))
    reader = threading.Thread(target=lambda: times.extend(
        time.monotonic() for e in running if isinstance(e, ContentDelta)), daemon=True)
    reader.start()
    paste = "Summarise this. " + "The cat sat on the mat and looked at the rain. " * 120
    start = time.monotonic()
    events = batcher.chat(user(paste), {**ONE, "num_predict": 1})
    assert next(events) is not None  # its first event: the prompt has been read
    read = time.monotonic()
    prompt = len(batcher.engine.tokenize(paste))
    assert prompt > 1200
    during = [t for t in times if start < t < read]
    # One step per chunk of at most 128 tokens: the answer got a token in nearly every one.
    assert len(during) >= prompt // 128 // 2, (len(during), read - start)
    for _ in events:
        pass
    stop.set()
    reader.join(60)
    assert not reader.is_alive()


def test_a_request_with_another_context_size_waits_its_turn(batcher):
    opts = {**ONE, "num_predict": 12}
    results = in_threads(
        lambda: answer(batcher.chat(user("Count from 1 to 10."), opts)),
        lambda: answer(batcher.chat(user("Name three colors."), {**opts, "num_ctx": 1024})),
    )
    for got in results:
        assert not isinstance(got, Exception), got
        assert got[0].strip() and got[1].done_reason in ("stop", "length")
    assert batcher.engine.n_ctx in (1024, 4096)


def test_an_image_request_is_answered_alone_with_a_clear_error(batcher, tmp_path):
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ChatCliError, match="does not support images"):
        answer(batcher.chat([{"role": "user", "content": "What is it?", "images": [str(png)]}],
                            ONE))
    text, _ = answer(batcher.chat(user("Say hi."), {**ONE, "num_predict": 4}))
    assert text  # the loop goes on


def test_a_closed_batcher_refuses_new_requests(engine):
    b = Batcher(engine)
    answer(b.chat(user("Say hi."), {**ONE, "num_predict": 2}))
    b.close()
    with pytest.raises(UnloadedError):
        answer(b.chat(user("Say hi."), {**ONE, "num_predict": 2}))
    engine.reset_cache()


# -- the server, with the real client libraries -----------------------------------------------


@pytest.fixture
def parallel_url():
    """chat serve's app with 4 parallel slots per model, on a free port."""
    from live_server import ServerThread

    from chatcli.serve.app import build_app

    CACHE.unload_all()
    CACHE.parallel = 4
    try:
        with ServerThread(build_app()) as running:
            yield running.url
    finally:
        CACHE.unload_all()
        CACHE.parallel = 1


def test_four_ollama_clients_at_once_get_their_own_answers(parallel_url):
    opts = {**ONE, "num_predict": 48}
    client = ollama.Client(host=parallel_url, timeout=300)

    def ask(q: str):
        start, first, text = time.monotonic(), None, []
        for part in client.chat(model=MODEL, messages=user(q), options=opts, stream=True):
            if part.message.content and first is None:
                first = time.monotonic() - start
            text.append(part.message.content or "")
        return "".join(text), start + first, time.monotonic()

    alone = [ask(q)[0] for q in QUESTIONS]
    together = in_threads(*[lambda q=q: ask(q) for q in QUESTIONS])
    assert [t if isinstance(t, Exception) else t[0] for t in together] == alone
    first_end = min(t[2] for t in together)  # type: ignore[index]
    assert all(t[1] < first_end for t in together)  # type: ignore[index]


def test_openai_clients_at_once_on_the_parallel_server(parallel_url):
    import openai

    client = openai.OpenAI(base_url=parallel_url + "/v1", api_key="unused", timeout=300)

    def ask(q: str) -> str:
        r = client.chat.completions.create(model=MODEL, messages=user(q), temperature=0,
                                           seed=42, max_tokens=24)
        return r.choices[0].message.content or ""

    alone = [ask(q) for q in QUESTIONS[:2]]
    assert in_threads(*[lambda q=q: ask(q) for q in QUESTIONS[:2]]) == alone


def test_a_client_that_hangs_up_frees_its_slot(parallel_url):
    long = {"model": MODEL, "messages": [ENDLESS],
            "options": {**ONE, "repeat_penalty": 1.0, "num_predict": 3000}}
    with httpx.Client(base_url=parallel_url, timeout=120) as c:
        r = c.post("/api/chat", json={"model": MODEL, "messages": user("hi"), "stream": False,
                                      "options": {**ONE, "num_predict": 1}})
        assert r.status_code == 200
        (entry,) = CACHE.loaded()
        assert entry.batcher is not None
        with c.stream("POST", "/api/chat", json=long) as stream:
            for n, _ in enumerate(stream.iter_lines()):
                if n == 3:
                    break
            assert sum(s["busy"] for s in entry.batcher.slots()) == 1
        deadline = time.monotonic() + 30
        while any(s["busy"] for s in entry.batcher.slots()):
            assert time.monotonic() < deadline, "the slot stayed busy after the client left"
            time.sleep(0.05)


def test_generate_with_context_and_raw_on_the_parallel_server(parallel_url):
    """/api/generate's context (the tokens of an earlier answer) and raw prompts go through
    the slots too: the second call continues the first, and reads only its own tokens."""
    with httpx.Client(base_url=parallel_url, timeout=300) as c:
        body = {"model": MODEL, "stream": False, "options": {**ONE, "num_predict": 8}}
        first = c.post("/api/generate", json={**body, "prompt": "The capital of France is",
                                              "raw": True}).json()
        assert first["context"] and first["response"]
        second = c.post("/api/generate", json={**body, "prompt": " and of Spain:", "raw": True,
                                               "context": first["context"]}).json()
        assert second["prompt_cached_count"] >= len(first["context"]) - 1
        assert len(second["context"]) > len(first["context"])
        bad = c.post("/api/generate", json={**body, "prompt": "x", "context": [-5]})
        assert bad.status_code == 400


def test_keep_alive_zero_unloads_once_every_slot_is_done(parallel_url):
    """keep_alive is per request: a request that asks for 0 while another is still answering
    does not cut that answer short; the model unloads when both are done."""
    def ask(keep_alive, n):
        with httpx.Client(base_url=parallel_url, timeout=300) as c:
            r = c.post("/api/chat", json={"model": MODEL, "messages": [ENDLESS],
                                          "stream": False, "keep_alive": keep_alive,
                                          "options": {**ONE, "repeat_penalty": 1.0,
                                                      "num_predict": n}})
            return r.json()

    long, short = in_threads(lambda: ask("5m", 120), lambda: ask(0, 4))
    assert long["done_reason"] == "length" and long["eval_count"] == 120
    assert short["eval_count"] == 4
    assert httpx.get(parallel_url + "/api/ps").json()["models"] == []


# -- the command line -------------------------------------------------------------------------


def test_parallel_comes_from_the_flag_then_ollamas_variable_then_the_config(monkeypatch,
                                                                            chatcli_home):
    from chatcli.cli.guard import Fail
    from chatcli.cli.serve import serving_parallel

    try:
        monkeypatch.delenv("OLLAMA_NUM_PARALLEL", raising=False)
        assert serving_parallel(None) == 1
        (chatcli_home / "config").mkdir(parents=True, exist_ok=True)
        from chatcli.core.config import config_path

        config_path().parent.mkdir(parents=True, exist_ok=True)
        config_path().write_text("[server]\nparallel = 3\n")
        assert serving_parallel(None) == 3
        monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "2")
        assert serving_parallel(None) == 2 and CACHE.parallel == 2
        assert serving_parallel(4) == 4
        monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "0")  # Ollama's "default"
        assert serving_parallel(None) == 1
        with pytest.raises(Fail, match="--parallel 65: must be a whole number from 1 to 64"):
            serving_parallel(65)
    finally:
        CACHE.parallel = 1


def test_a_bad_parallel_flag_is_one_line_and_exit_1(cli_env):
    r = subprocess.run([sys.executable, "-m", "chatcli", "serve", "--parallel", "-3"],
                       capture_output=True, text=True, env=cli_env, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "--parallel -3" in r.stderr
