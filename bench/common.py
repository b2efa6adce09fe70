"""Shared pieces: machine facts, the bare llama-cpp-python baseline, timing helpers."""

from __future__ import annotations

import os
import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Row:
    """One line of RESULTS.md: a figure as a ratio to a baseline measured in the same run."""

    name: str
    ours: str
    baseline: str
    ratio: float | None
    goal: str
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.ratio is None or not self.goal:
            return ""
        op, value = self.goal.split()
        ok = self.ratio >= float(value) if op == ">=" else self.ratio <= float(value)
        return "ok" if ok else "MISSED"


@dataclass
class Section:
    title: str
    rows: list[Row] = field(default_factory=list)
    text: str = ""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values)


def best(values: list[float]) -> float:
    """The best of interleaved repetitions: on a shared machine noise only ever slows a run."""
    return max(values)


@contextmanager
def never_eog():
    """Within the block, generation runs to num_predict (so long answers can be measured):
    the end-of-generation check is replaced by a constant. Used as a plain call by the child
    process of the end-to-end benchmark, where it stays on."""
    from chatcli.engine import binding as backend

    lc = backend.llama()
    real = lc.llama_vocab_is_eog
    lc.llama_vocab_is_eog = lambda vocab, token: False
    try:
        yield
    finally:
        lc.llama_vocab_is_eog = real


class BareLoop:
    """The floor: llama-cpp-python's low-level API, nothing else — batch-evaluate the prompt,
    then sample (greedy) and decode one token at a time. Same model file, same context
    parameters as the engine."""

    def __init__(self, model_path: Path, n_ctx: int, n_batch: int, n_threads: int) -> None:
        from chatcli.engine import binding as backend

        self.lc = backend.llama()
        from llama_cpp import _internals

        mparams = self.lc.llama_model_default_params()
        mparams.n_gpu_layers = -1 if self.lc.llama_supports_gpu_offload() else 0
        # The same crash guard as the engine, so both load the weights the same way.
        from chatcli.engine.safemode import decide

        mparams.use_extra_bufts = decide(Path(model_path)).extra_bufts
        self.model = _internals.LlamaModel(path_model=str(model_path), params=mparams,
                                           verbose=False)
        cparams = self.lc.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, n_batch, n_batch
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.flash_attn_type = self.lc.LLAMA_FLASH_ATTN_TYPE_AUTO
        cparams.no_perf = True
        self.ctx = _internals.LlamaContext(model=self.model, params=cparams, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self.sampler = _internals.LlamaSampler()
        self.sampler.add_greedy()
        self.n_batch = n_batch
        self.cached: list[int] = []

    def eval_prompt(self, tokens: list[int]) -> float:
        """Seconds to evaluate ``tokens`` from an empty cache."""
        self.ctx.kv_cache_clear()
        self.cached = []
        start = time.perf_counter()
        self._decode(tokens, 0)
        return time.perf_counter() - start

    def sync(self, tokens: list[int], upto: int) -> None:
        """Make the KV cache hold exactly tokens[:upto] (untimed catch-up)."""
        from chatcli.engine.decode import common_prefix

        keep = common_prefix(self.cached, tokens[:upto])
        self.ctx.kv_cache_seq_rm(0, keep, -1)
        self._decode(tokens[keep:upto], keep)
        self.cached = list(tokens[:upto])

    def first_token(self, tokens: list[int], start: int) -> float:
        """Seconds to evaluate tokens[start:] on top of the cache and sample one token."""
        begin = time.perf_counter()
        self._decode(tokens[start:], start)
        self.lc.llama_sampler_sample(self.sampler.sampler, self.ctx.ctx, -1)
        elapsed = time.perf_counter() - begin
        self.cached = list(tokens)
        return elapsed

    def _decode(self, tokens: list[int], n_past: int) -> None:
        for i in range(0, len(tokens), self.n_batch):
            self.batch.set_batch(tokens[i : i + self.n_batch], n_past=n_past + i,
                                 logits_all=False)
            self.ctx.decode(self.batch)

    def generate(self, tokens: list[int], n: int) -> float:
        """Seconds to generate ``n`` tokens after the prompt (prompt time excluded)."""
        self.eval_prompt(tokens)
        lc, smpl, cctx, b = self.lc, self.sampler.sampler, self.ctx.ctx, self.batch.batch
        pos = len(tokens)
        start = time.perf_counter()
        for _ in range(n):
            tok = lc.llama_sampler_sample(smpl, cctx, -1)
            b.n_tokens = 1
            b.token[0] = tok
            b.pos[0] = pos
            b.n_seq_id[0] = 1
            b.seq_id[0][0] = 0
            b.logits[0] = True
            lc.llama_decode(cctx, b)
            pos += 1
        return time.perf_counter() - start

    def close(self) -> None:
        self.sampler.close()
        self.batch.close()
        self.ctx.close()
        self.model.close()


def threads() -> int:
    from chatcli.engine.binding import physical_cores

    return physical_cores()


def env_summary(model: str) -> dict[str, str]:
    import llama_cpp

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": f"{cpu_name()} ({os.cpu_count()} logical CPUs)",
        "threads": str(threads()),
        "model": model,
        "llama-cpp-python": llama_cpp.__version__,
        "python": platform.python_version(),
    }
