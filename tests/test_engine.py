"""The engine on the real bundled model (and tiny random GGUFs for edge cases)."""

from pathlib import Path

import pytest
from conftest import DET

from chatcli.core.errors import ModelLoadError, TemplateError
from chatcli.core.events import ContentDelta, Done, Trimmed
from chatcli.engine.decode import Engine, common_prefix


@pytest.fixture(scope="module")
def engine(bundled_path):
    eng = Engine(bundled_path, name="smollm2:135m", options={"num_ctx": 2048})
    yield eng
    eng.close()


def answer(engine, messages, **options):
    events = list(engine.chat(messages, {**DET, **options}))
    text = "".join(e.text for e in events if isinstance(e, ContentDelta))
    done = events[-1]
    assert isinstance(done, Done)
    return text, done, events


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2


def test_answers_with_metrics(engine):
    text, done, _ = answer(engine, [{"role": "user", "content": "What is the capital of France?"}])
    assert text.strip()
    m = done.metrics
    assert m.prompt_eval_count > 0 and m.prompt_eval_duration > 0
    assert m.eval_count > 0 and m.eval_duration > 0
    assert done.done_reason == "stop"


def test_deterministic_for_fixed_seed(engine):
    msgs = [{"role": "user", "content": "Name three colours."}]
    first, _, _ = answer(engine, msgs, temperature=0.7, seed=7)
    engine.reset_cache()
    second, _, _ = answer(engine, msgs, temperature=0.7, seed=7)
    assert first == second


def test_num_predict_limits_length(engine):
    _, done, _ = answer(engine, [{"role": "user", "content": "Write a long story."}],
                        num_predict=5)
    assert done.metrics.eval_count == 5
    assert done.done_reason == "length"


def test_stop_string_ends_answer(engine):
    text, done, _ = answer(engine, [{"role": "user", "content": "Count from 1 to 10."}],
                           stop=["5"])
    assert "5" not in text and "6" not in text
    assert done.done_reason == "stop"


def test_second_turn_reuses_kv_cache(engine):
    engine.reset_cache()
    msgs = [{"role": "system", "content": "You are a helpful assistant. " * 20},
            {"role": "user", "content": "What is the capital of France?"}]
    text, done1, _ = answer(engine, msgs)
    full1 = len(engine.tokenize(engine.render(msgs)))
    assert done1.metrics.prompt_eval_count == full1  # the whole prompt, as the seed says
    assert done1.metrics.prompt_cached_count == 0  # cold cache: everything evaluated
    msgs += [{"role": "assistant", "content": text},
             {"role": "user", "content": "What is its population?"}]
    _, done2, _ = answer(engine, msgs)
    full2 = len(engine.tokenize(engine.render(msgs)))
    # Only the new turn (and at most a re-tokenised tail of the answer) is evaluated.
    evaluated = done2.metrics.prompt_eval_count - done2.metrics.prompt_cached_count
    assert done2.metrics.prompt_eval_count == full2
    assert evaluated < full2 - full1 + 5
    assert evaluated < full2 / 2


def test_overflow_drops_oldest_messages(bundled_path):
    eng = Engine(bundled_path, options={"num_ctx": 256})
    try:
        msgs = [{"role": "system", "content": "Be brief."}]
        for i in range(12):
            msgs += [{"role": "user", "content": f"Question {i}: tell me about the number {i}."},
                     {"role": "assistant", "content": f"The number {i} is a number. " * 3}]
        msgs.append({"role": "user", "content": "And the number 99?"})
        events = list(eng.chat(msgs, {**DET, "num_ctx": 256, "num_predict": 16}))
        trimmed = [e for e in events if isinstance(e, Trimmed)]
        assert trimmed and trimmed[0].dropped > 0
        done = events[-1]
        assert isinstance(done, Done) and done.trimmed == trimmed[0].dropped
        assert done.metrics.eval_count > 0
    finally:
        eng.close()


def test_changing_num_ctx_reloads_context(engine):
    list(engine.chat([{"role": "user", "content": "hi"}], {**DET, "num_predict": 2,
                                                          "num_ctx": 1024}))
    assert engine.n_ctx == 1024
    list(engine.chat([{"role": "user", "content": "hi"}], {**DET, "num_predict": 2,
                                                          "num_ctx": 2048}))
    assert engine.n_ctx == 2048


def test_non_gguf_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("this is not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        Engine(path)


def test_truncated_gguf_is_a_clear_error(tmp_path, bundled_path):
    path = tmp_path / "cut.gguf"
    with open(bundled_path, "rb") as src:
        path.write_bytes(src.read(5_000_000))
    with pytest.raises(ModelLoadError, match="truncated|corrupt"):
        Engine(path)


def test_tiny_gguf_without_template_uses_chatml(tiny_gguf):
    eng = Engine(tiny_gguf)
    try:
        assert eng.template.is_fallback
        prompt = eng.render([{"role": "user", "content": "hello"}])
        assert prompt.endswith("<|im_start|>assistant\n")
        # Special tokens written in the template are single control tokens.
        toks = eng.tokenize("<|im_start|>")
        assert len(toks) <= 2
        events = list(eng.chat([{"role": "user", "content": "hello"}], {**DET, "num_predict": 8}))
        assert isinstance(events[-1], Done)
    finally:
        eng.close()


def test_hostile_template_in_gguf_runs_nothing(tmp_path):
    from tiny_gguf import write_tiny_llama

    marker = tmp_path / "pwned"
    evil = ("{{ ''.__class__.__mro__[1].__subclasses__() }}"
            "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}")
    path = write_tiny_llama(tmp_path / "evil.gguf", chat_template=evil)
    eng = Engine(path, name="evil")
    try:
        with pytest.raises(TemplateError, match="evil.*unsafe"):
            list(eng.chat([{"role": "user", "content": "hi"}], DET))
    finally:
        eng.close()
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Engine(Path(tmp_path / "nope.gguf"))


def test_cancel_during_generation_keeps_engine_usable(engine):
    import threading

    cancel = threading.Event()
    got = []
    for ev in engine.chat([{"role": "user", "content": "Write a long story about a cat."}],
                          {**DET, "num_predict": 400}, cancel=cancel):
        got.append(ev)
        if isinstance(ev, ContentDelta) and len(got) == 5:
            cancel.set()
    done = got[-1]
    assert isinstance(done, Done) and done.done_reason == "cancelled"
    assert 4 <= done.metrics.eval_count <= 6
    text, done2, _ = answer(engine, [{"role": "user", "content": "Say hi."}])
    assert text and done2.done_reason == "stop"


def test_cancel_during_long_prompt_eval_is_prompt(bundled_path):
    import threading
    import time

    eng = Engine(bundled_path, options={"num_ctx": 4096, "num_batch": 4096})
    try:
        long_msg = "The quick brown fox jumps over the lazy dog. " * 300  # ~3000 tokens
        cancel = threading.Event()
        threading.Timer(0.05, cancel.set).start()
        t0 = time.perf_counter()
        events = list(eng.chat([{"role": "user", "content": long_msg}],
                               {**DET, "num_ctx": 4096, "num_batch": 4096}, cancel=cancel))
        elapsed = time.perf_counter() - t0
        assert events[-1].done_reason == "cancelled"
        assert events[-1].metrics.eval_count == 0
        # Generous for a loaded machine, yet well under one full 3000-token batch on 2 cores
        # (~15 s); the C-side poll is what makes it prompt.
        assert elapsed < 5
        # The cache record is still truthful: the next turn answers normally.
        events = list(eng.chat([{"role": "user", "content": "Say hi."}],
                               {**DET, "num_ctx": 4096, "num_batch": 4096, "num_predict": 8}))
        assert events[-1].metrics.eval_count > 0
    finally:
        eng.close()


def test_trimming_keeps_rules_and_renders_logarithmically(tiny_gguf):
    eng = Engine(tiny_gguf, options={"num_ctx": 256})
    try:
        msgs = [{"role": "system", "content": "sys"}]
        for i in range(200):
            msgs += [{"role": "user", "content": f"question {i} " + "a " * 10},
                     {"role": "assistant", "content": f"answer {i} " + "b " * 10}]
        msgs.append({"role": "user", "content": "last question"})
        calls = []
        real_render = eng.render
        eng.render = lambda m, **kw: calls.append(m) or real_render(m, **kw)
        tokens, dropped, kept, _ = eng._fit(msgs, eng.resolve_options({"num_ctx": 256}), {})
        assert len(calls) <= 12  # binary search over 200 turns, not one render per drop
        kept_msgs = [m for m in calls if len(eng.tokenize(real_render(m))) == len(tokens)][-1]
        assert kept_msgs[0]["role"] == "system" and kept_msgs[-1]["content"] == "last question"
        assert kept_msgs[1]["role"] == "user"
        assert dropped == len(msgs) - kept and dropped > 300
        assert len(tokens) + 64 <= 256  # room is left for the answer
    finally:
        eng.close()


def test_after_a_trim_later_turns_keep_the_cut_and_reuse_the_cache(tiny_gguf):
    eng = Engine(tiny_gguf, options={"num_ctx": 512})
    try:
        opts = {**DET, "num_ctx": 512, "num_predict": 4}
        msgs = [{"role": "system", "content": "sys"}]
        for i in range(30):
            msgs += [{"role": "user", "content": f"question {i} " + "a " * 10},
                     {"role": "assistant", "content": f"answer {i} " + "b " * 10}]
        msgs.append({"role": "user", "content": "next"})
        first = list(eng.chat(msgs, opts))[-1]
        assert first.trimmed > 0
        evaluated = []
        for turn in range(4):
            msgs += [{"role": "assistant", "content": f"reply {turn}"},
                     {"role": "user", "content": f"more {turn}"}]
            done = list(eng.chat(msgs, opts))[-1]
            evaluated.append(done.metrics.prompt_eval_count - done.metrics.prompt_cached_count)
            assert done.trimmed >= first.trimmed
        # Only the new turn is read each time: the cut did not move.
        assert max(evaluated) < 40, evaluated
        # And half the context was freed, so the prompt sits well below num_ctx.
        assert len(eng._cache) < 512 * 0.75
    finally:
        eng.close()


def test_cancel_flag_is_polled_from_c_during_prompt_eval(bundled_path):
    import threading
    import time

    from chatcli.engine.cancel import STRLEN, CancelFlag

    assert STRLEN is not None  # Linux/macOS: libc's strlen is the C-side poll
    flag = CancelFlag()
    assert flag.address and not flag.is_set()
    eng = Engine(bundled_path, options={"num_ctx": 4096, "num_batch": 4096})
    try:
        long_msg = "The quick brown fox jumps over the lazy dog. " * 300
        threading.Timer(0.05, flag.set).start()
        t0 = time.perf_counter()
        events = list(eng.chat([{"role": "user", "content": long_msg}],
                               {**DET, "num_ctx": 4096, "num_batch": 4096}, cancel=flag))
        assert events[-1].done_reason == "cancelled"
        assert time.perf_counter() - t0 < 5  # a full 3,000-token batch takes ~15 s on 2 cores
        flag.clear()
        assert not flag.is_set()
    finally:
        eng.close()
