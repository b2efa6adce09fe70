"""In-process figures: generation and prompt speed vs the bare loop, multi-turn, memory."""

from __future__ import annotations

import time
from pathlib import Path

from .common import BareLoop, Row, Section, best, median, never_eog, rss_mb, threads

GEN_OPTS = {"temperature": 0, "repeat_penalty": 1.0}  # greedy: the same sampler as the bare loop
LONG_PROMPT = "Here is a passage to read carefully. " + "The quick brown fox jumps over the " \
    "lazy dog while the five boxing wizards jump quickly. " * 30 + "Summarise it."


def _engine(path: Path, n_ctx: int, n_batch: int = 512):
    from chatcli.engine.decode import Engine

    return Engine(path, options={"num_ctx": n_ctx, "num_batch": n_batch})


def _engine_generate(engine, msgs, n: int, n_ctx: int) -> float:
    """Seconds the engine spends generating n tokens (its prompt evaluation excluded)."""
    engine.reset_cache()
    start = time.perf_counter()
    events = list(engine.chat(msgs, {**GEN_OPTS, "num_predict": n, "num_ctx": n_ctx}))
    total = time.perf_counter() - start
    done = events[-1]
    assert done.metrics.eval_count == n, done
    return total - done.metrics.prompt_eval_duration / 1e9


def generation(path: Path, lengths: tuple[int, ...], reps: int) -> Section:
    with never_eog():
        return _generation(path, lengths, reps)


def _generation(path: Path, lengths: tuple[int, ...], reps: int) -> Section:
    n_ctx = 4096
    engine = _engine(path, n_ctx)
    bare = BareLoop(path, n_ctx, 512, threads())
    msgs = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
    tokens = engine.tokenize(engine.render(msgs))
    section = Section("Generation: engine vs bare llama-cpp-python decode loop (greedy)")
    try:
        _engine_generate(engine, msgs, 8, n_ctx)  # warm-up
        bare.generate(tokens, 8)
        for n in lengths:
            ours, base = [], []
            for _ in range(reps):  # interleaved, so drift hits both alike
                base.append(n / bare.generate(tokens, n))
                ours.append(n / _engine_generate(engine, msgs, n, n_ctx))
            o, b = best(ours), best(base)
            section.rows.append(Row(f"{n} tokens generated", f"{o:.1f} tok/s", f"{b:.1f} tok/s",
                                    o / b, ">= 0.97"))
        # Prompt evaluation: same tokens, empty cache, same batch size.
        ptoks = engine.tokenize(engine.render([{"role": "user", "content": LONG_PROMPT}]))
        ours, base = [], []

        def engine_prompt() -> None:
            engine.reset_cache()
            events = list(engine.chat([{"role": "user", "content": LONG_PROMPT}],
                                      {**GEN_OPTS, "num_predict": 1, "num_ctx": n_ctx}))
            m = events[-1].metrics
            assert m.prompt_eval_count == len(ptoks) and m.prompt_cached_count == 0
            ours.append(m.prompt_eval_count / (m.prompt_eval_duration / 1e9))

        for i in range(reps * 2):  # cheap: more repetitions, alternating which goes first
            if i % 2:
                engine_prompt()
            base.append(len(ptoks) / bare.eval_prompt(ptoks))
            if not i % 2:
                engine_prompt()
        o, b = best(ours), best(base)
        section.rows.append(Row(f"prompt evaluation ({len(ptoks)} tokens)", f"{o:.1f} tok/s",
                                f"{b:.1f} tok/s", o / b, ">= 0.97"))
    finally:
        engine.close()
        bare.close()
    return section


def multi_turn(path: Path, turns: int) -> Section:
    """Per turn: tokens evaluated (only the new turn's?) and time to first token, against the
    bare loop evaluating the same new tokens at the same depth (attention over a longer
    history costs llama.cpp more, for both)."""
    from chatcli.core.events import ContentDelta

    engine = _engine(path, 8192)
    bare = BareLoop(path, 8192, 512, threads())
    msgs: list[dict] = [{"role": "system", "content": "You are a helpful assistant."}]
    lines = ["| turn | prompt tokens | evaluated | new in this turn | time to first token "
             "| bare loop, same tokens | ratio |", "|---:|---:|---:|---:|---:|---:|---:|"]
    ratios, ttfts, only_new = [], [], True
    previous = 0
    try:
        for turn in range(1, turns + 1):
            msgs.append({"role": "user", "content": f"Give me fact number {turn} about the sea."})
            tokens = engine.tokenize(engine.render(msgs))
            start = time.perf_counter()
            first, text = None, []
            for event in engine.chat(msgs, {**GEN_OPTS, "num_predict": 24, "num_ctx": 8192}):
                if isinstance(event, ContentDelta):
                    first = first or time.perf_counter()
                    text.append(event.text)
                done = event
            ttft = (first or time.perf_counter()) - start
            # prompt_eval_count is the whole prompt; what was read is the part not cached.
            evaluated = done.metrics.prompt_eval_count - done.metrics.prompt_cached_count
            reused = len(tokens) - evaluated
            bare.sync(tokens, reused)
            base = bare.first_token(tokens, reused)
            new = len(tokens) - previous
            only_new &= turn == 1 or evaluated <= new + 1  # +1: the last token of a cut answer
            ttfts.append(ttft)
            ratios.append(ttft / base)
            lines.append(f"| {turn} | {len(tokens)} | {evaluated} | {new} | {ttft * 1000:.0f} ms "
                         f"| {base * 1000:.0f} ms | {ttft / base:.2f} |")
            msgs.append({"role": "assistant", "content": "".join(text)})
            previous = len(tokens) + done.metrics.eval_count
    finally:
        engine.close()
        bare.close()
    section = Section(f"Multi-turn: {turns} turns, 24-token answers")
    early, late = median(ratios[1:4]), median(ratios[-3:])
    section.rows.append(Row(f"time to first token vs bare loop, turns {turns - 2}-{turns}",
                            f"{late:.2f}x", f"{early:.2f}x (turns 2-4)", late / early, "<= 1.5",
                            "our overhead per turn does not grow with the history"))
    section.rows.append(Row(f"raw time to first token, turns {turns - 2}-{turns} vs 2-4",
                            f"{median(ttfts[-3:]) * 1000:.0f} ms",
                            f"{median(ttfts[1:4]) * 1000:.0f} ms",
                            median(ttfts[-3:]) / median(ttfts[1:4]), "",
                            "llama.cpp's attention over a longer history, same for the bare loop"))
    section.rows.append(Row("only the new turn evaluated, every turn",
                            "yes" if only_new else "NO", "", None, ""))
    section.text = "\n".join(lines)
    return section


def memory(path: Path, turns: int) -> Section:
    from chatcli.engine.decode import Engine

    n_ctx = 8192
    engine = Engine(path, options={"num_ctx": n_ctx})
    msgs: list[dict] = []
    after_first = None
    try:
        for turn in range(1, turns + 1):
            msgs.append({"role": "user", "content": f"Say a word about the number {turn}."})
            events = list(engine.chat(msgs, {**GEN_OPTS, "num_predict": 8, "num_ctx": n_ctx}))
            text = "".join(getattr(e, "text", "") for e in events)
            msgs.append({"role": "assistant", "content": text})
            if turn == 1:
                after_first = rss_mb()
        after_all = rss_mb()
        kv_mb = engine._ctx.get_state_size() / 2**20
    finally:
        engine.close()
    section = Section(f"Memory: RSS after 1 turn and after {turns} turns (num_ctx {n_ctx})")
    section.rows.append(Row(f"RSS after {turns} turns vs after 1", f"{after_all:.0f} MB",
                            f"{after_first:.0f} MB", after_all / after_first, "<= 1.05",
                            f"KV cache + state {kv_mb:.0f} MB, allocated up front"))
    return section


def resume(path: Path, reps: int, target: int = 3000) -> Section:
    """Time to first token of the next turn of a ~3,000-token conversation resumed in a fresh
    context: with its saved KV state (engine/states.py) vs evaluating the history again.
    Interleaved in one run; each try starts from an empty cache, as a new process would."""
    import os
    import tempfile

    from chatcli.core.events import ContentDelta
    from chatcli.engine import states

    n_ctx = 4096
    opts = {**GEN_OPTS, "num_ctx": n_ctx}
    engine = _engine(path, n_ctx)
    home = os.environ.get("CHATCLI_HOME")
    empty = tempfile.mkdtemp(prefix="chatcli-bench-nostate-")
    msgs: list[dict] = [{"role": "system", "content": "You are a helpful assistant."}]
    topics = ["lighthouses", "tides", "whales", "coral", "storms", "harbours", "sailing",
              "islands", "fishing", "navigation", "salt", "waves", "shells", "ferries"]
    i = 0
    while len(engine.tokenize(engine.render(msgs))) < target:
        topic = topics[i % len(topics)]
        msgs.append({"role": "user", "content": f"Question {i + 1}: tell me about {topic}."})
        msgs.append({"role": "assistant", "content": (
            f"Here is what I know about {topic} (part {i + 1}). " + LONG_PROMPT[:700])})
        i += 1
    msgs.append({"role": "user", "content": "Now sum up the first topic in one line."})
    try:
        # The conversation as it was saved: answered, then its state written.
        text = "".join(e.text for e in engine.chat(msgs, {**opts, "num_predict": 16})
                       if isinstance(e, ContentDelta))
        msgs.append({"role": "assistant", "content": text})
        tokens = engine.cached_tokens
        start = time.perf_counter()
        assert engine.save_state(), "the state was not saved"
        save_s = time.perf_counter() - start
        count, size = states.StateStore().usage()
        assert count == 1
        msgs.append({"role": "user", "content": "And the second one?"})

        def first_token(with_state: bool) -> tuple[float, int]:
            os.environ["CHATCLI_HOME"] = home if with_state and home else empty
            engine.reset_cache()  # a fresh context: nothing of the conversation in it
            start = time.perf_counter()
            ttft = None
            for event in engine.chat(msgs, {**opts, "num_predict": 1}):
                if isinstance(event, ContentDelta) and ttft is None:
                    ttft = time.perf_counter() - start
                done = event
            ttft = ttft or time.perf_counter() - start
            m = done.metrics
            return ttft, m.prompt_eval_count - m.prompt_cached_count

        first_token(True)  # warm-up: the state file in the page cache, as right after a save
        ours, base, evaluated = [], [], []
        for rep in range(reps):
            for with_state in ((True, False) if rep % 2 == 0 else (False, True)):
                ttft, n = first_token(with_state)
                (ours if with_state else base).append(ttft)
                if with_state:
                    evaluated.append(n)
    finally:
        if home is not None:
            os.environ["CHATCLI_HOME"] = home
        engine.close()
    o, b = median(ours), median(base)
    section = Section(f"Resume: the next turn of a {tokens}-token conversation (num_ctx {n_ctx})")
    section.rows.append(Row("time to first token: saved state vs re-evaluation",
                            f"{o * 1000:.0f} ms", f"{b * 1000:.0f} ms", o / b, "<= 0.1",
                            f"median of {reps}; {max(evaluated)} tokens evaluated, not {tokens}"))
    section.rows.append(Row("state size per 1k tokens", f"{size / tokens * 1000 / 2**20:.1f} MiB",
                            "", None, "", f"{size / 2**20:.1f} MiB for {tokens} tokens"))
    section.rows.append(Row("time to save the state", f"{save_s * 1000:.0f} ms", "", None, ""))
    section.text = (
        f"Spread: with the state {min(ours) * 1000:.0f}-{max(ours) * 1000:.0f} ms, "
        f"re-evaluation {min(base) * 1000:.0f}-{max(base) * 1000:.0f} ms. The state file was "
        "in the page cache (as right after it was saved); read from a cold disk it adds its "
        "size over the disk's read speed.")
    return section
