"""How much memory a llama.cpp context will take, and how much this machine can give it.

A context's size is set by num_ctx, which anyone can pass (``-o``, ``chat(options=...)``, an
HTTP request): llama.cpp allocates whatever it is asked for, so a large num_ctx fills the
machine's memory (or the swap) before a single token is read. The engine asks here first and
refuses, with the numbers, a context that would not fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from chatcli.core.errors import InvalidOptionError

# Set to a number of bytes to replace the measured available memory (tests; "what if").
AVAILABLE_ENV = "CHATCLI_TEST_MEMAVAILABLE"
_KV_BYTES = 2  # llama.cpp's default K and V cache type is f16
_F32 = 4
# The share of the available memory a context may take: the rest stays for the model's pages
# (memory-mapped, so not counted as used), Python and whatever else the machine runs.
USABLE_SHARE = 0.9


@dataclass(frozen=True)
class ModelShape:
    """The hyperparameters that size a context's buffers."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_k: int  # dimensions per key head
    head_v: int  # dimensions per value head
    n_vocab: int


def model_shape(loaded) -> ModelShape:
    """Read a loaded model's shape from llama.cpp and its GGUF metadata."""
    from chatcli.engine.binding import llama

    lc, model = llama(), loaded.model.model
    n_embd = int(lc.llama_model_n_embd(model))
    n_head = max(1, int(lc.llama_model_n_head(model)))
    n_head_kv = max(0, int(lc.llama_model_n_head_kv(model)))
    meta = loaded.metadata
    arch = meta.get("general.architecture", "")

    def dim(key: str) -> int:
        try:
            return int(meta[f"{arch}.attention.{key}"])
        except (KeyError, ValueError):
            return n_embd // n_head

    return ModelShape(
        n_layer=int(lc.llama_model_n_layer(model)), n_embd=n_embd, n_head=n_head,
        n_head_kv=n_head_kv, head_k=dim("key_length"), head_v=dim("value_length"),
        n_vocab=int(lc.llama_vocab_n_tokens(loaded.vocab)),
    )


def kv_cache_bytes(shape: ModelShape, n_ctx: int) -> int:
    """The K and V caches: every layer keeps n_head_kv heads of K and V per position (f16)."""
    return n_ctx * shape.n_layer * shape.n_head_kv * (shape.head_k + shape.head_v) * _KV_BYTES


def compute_bytes(shape: ModelShape, n_ctx: int, n_ubatch: int) -> int:
    """llama.cpp's compute buffer, reserved for its worst case: a full ubatch, a full cache.

    On the CPU llama.cpp uses flash attention (``flash_attn`` auto), so the attention scores are
    never materialised whole; what grows with n_ctx is the attention mask (f16, one per cached
    position and batch token). The logits of a whole ubatch dominate the rest; a ubatch's other
    activations are covered by a slack of eight f32 embeddings per token. (Without flash
    attention n_ctx x n_ubatch x n_head f32 scores would come on top; llama.cpp turns it off
    only on GPU backends that lack it, where chatcli does not check memory at all.)
    """
    mask = n_ctx * n_ubatch * 2
    logits = shape.n_vocab * n_ubatch * _F32
    activations = 8 * shape.n_embd * n_ubatch * _F32
    return mask + logits + activations


def context_bytes(shape: ModelShape, n_ctx: int, n_ubatch: int) -> int:
    """Memory a context of n_ctx tokens (batches of n_ubatch) may take at its fullest."""
    return kv_cache_bytes(shape, n_ctx) + compute_bytes(shape, n_ctx, n_ubatch)


def available_bytes() -> int | None:
    """Memory this process can still get: MemAvailable, or less under a cgroup limit.

    None when neither can be read (then nothing is refused).
    """
    forced = os.environ.get(AVAILABLE_ENV)
    if forced:
        return int(float(forced))
    found = [n for n in (_meminfo_available(), _cgroup_available()) if n is not None]
    return min(found) if found else None


def check_fits(n_ctx: int, needed: int, available: int | None, parallel: int = 1) -> None:
    """Refuse a context that needs more than 90% of ``available`` bytes, with the numbers.
    ``n_ctx`` is per sequence; ``parallel`` sequences share the context."""
    if available is not None and needed > available * USABLE_SHARE:
        what = f"num_ctx {n_ctx}" if parallel == 1 else \
            f"num_ctx {n_ctx} for each of {parallel} parallel requests"
        lower = "lower num_ctx" if parallel == 1 else "lower num_ctx or --parallel"
        raise InvalidOptionError(
            f"{what} needs ~{format_bytes(needed)} for the KV cache and buffers; "
            f"{format_bytes(available)} is available, of which {USABLE_SHARE:.0%} may be used; "
            f"{lower}"
        )


def format_bytes(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    return f"{max(n, 0) / (1 << 20):.0f} MiB"


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """limit - usage (less reclaimable page cache) of this process's memory cgroup, if any."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    root = Path("/sys/fs/cgroup")
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2
            dirs, files = [root / rel, root], ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # cgroup v1
            dirs = [root / "memory" / rel, root / "memory"]
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        for d in dirs:
            found = _limit_left(d, *files)
            if found is not None:
                return found
    return None


def _limit_left(d: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        limit_text = (d / limit_file).read_text().strip()
        usage = int((d / usage_file).read_text())
    except (OSError, ValueError):
        return None
    if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= 1 << 60:
        return None  # no limit here
    inactive = 0
    try:
        for line in (d / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
    except (OSError, ValueError):
        pass
    return max(0, int(limit_text) - usage + inactive)
