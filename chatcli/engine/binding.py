"""The one module that imports llama-cpp-python.

It checks a file is a GGUF before handing it to llama.cpp, keeps llama.cpp's log quiet, and
builds the objects the engine drives with its own decode loop: models, contexts (for chat and
for embeddings), batches, samplers, the multimodal library. ``llama_cpp`` is imported here,
lazily, so that ``chat --help`` never pays for it; the rest of the engine reaches llama.cpp's
C functions through ``llama()``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatcli.core.errors import ModelLoadError

_backend_ready = False


def llama():
    """Import llama_cpp once, initialise its backend and silence its log."""
    global _backend_ready
    import llama_cpp

    if not _backend_ready:
        # llama-cpp-python prints every llama.cpp log line unless its logger says otherwise.
        level = logging.DEBUG if os.environ.get("CHATCLI_DEBUG") else logging.CRITICAL
        logging.getLogger("llama-cpp-python").setLevel(level)
        import llama_cpp._logger  # noqa: F401  (installs the log callback)

        llama_cpp.llama_backend_init()
        _backend_ready = True
    return llama_cpp


def check_gguf(path: Path) -> None:
    """Fail with a clear message for a file llama.cpp would refuse or abort on.

    Missing, not a regular file, not GGUF, truncated, corrupt header, or hyperparameters that
    make llama.cpp assert (kill the process) instead of failing the load: see gguf.py.
    """
    from chatcli.models.gguf import check_model_file

    check_model_file(path)


def gpu_offload_supported() -> bool:
    return bool(llama().llama_supports_gpu_offload())


def build_facts() -> dict[str, str]:
    """llama-cpp-python's version and llama.cpp's system-info string (its CPU features)."""
    lc = llama()
    info = lc.llama_print_system_info()
    return {
        "llama_cpp_python": getattr(lc, "__version__", "?"),
        "system_info": info.decode("utf-8", "replace").strip() if info else "",
    }


def devices() -> list[str]:
    """ggml's backend devices (CPU, CUDA, Metal, Vulkan ...) with their memory."""
    import ctypes

    try:
        lib = llama().llama_cpp._lib
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = ctypes.c_char_p
        lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p] + [
            ctypes.POINTER(ctypes.c_size_t)] * 2
        out = []
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            free, total = ctypes.c_size_t(), ctypes.c_size_t()
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            name = lib.ggml_backend_dev_name(dev).decode(errors="replace")
            desc = lib.ggml_backend_dev_description(dev).decode(errors="replace")
            memory = (f", {free.value / 2**30:.1f} of {total.value / 2**30:.1f} GiB free"
                      if total.value else "")
            out.append(f"{name} ({desc}{memory})")
        return out
    except (AttributeError, OSError):  # an older build without the device API
        return ["(this llama.cpp build does not list its devices)"]


def mtmd():
    """llama.cpp's multimodal library (``mtmd_cpp``), its log sent through the quiet logger."""
    import ctypes

    llama()
    from llama_cpp import _logger, mtmd_cpp

    # mtmd logs every tensor it loads; send it through llama-cpp-python's quiet logger.
    mtmd_cpp.mtmd_helper_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    return mtmd_cpp


def physical_cores() -> int:
    """Physical cores this process may use: llama.cpp runs slower on hyper-threads."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        phys = core = ""
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                    cores.add((phys, core))
    except OSError:
        pass
    n = len(cores) or usable
    return max(1, min(n, usable))


@dataclass
class LoadedModel:
    """A llama.cpp model plus the facts the engine needs about it."""

    path: Path
    model: Any  # llama_cpp._internals.LlamaModel
    metadata: dict[str, str]
    n_gpu_layers: int

    @property
    def n_ctx_train(self) -> int:
        return int(self.model.n_ctx_train())

    @property
    def vocab(self):
        return self.model.vocab

    def close(self) -> None:
        self.model.close()


def load_model(path: Path, n_gpu_layers: int, *, extra_bufts: bool) -> LoadedModel:
    """Load a GGUF file's weights (memory-mapped), already checked with ``check_gguf``.

    ``extra_bufts`` allows llama.cpp's repacked-weight kernels, which kill the process on some
    CPUs: the engine loads through ``safemode.load_model``, which decides it.
    """
    lc = llama()
    from llama_cpp import _internals

    params = lc.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.use_mmap = True
    params.use_extra_bufts = extra_bufts
    try:
        model = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
    except ValueError:
        raise ModelLoadError(
            f"llama.cpp could not load {path}: the file is truncated, corrupt, or of an "
            "architecture this llama.cpp build does not know"
        ) from None
    return LoadedModel(path=path, model=model, metadata=model.metadata(), n_gpu_layers=n_gpu_layers)


def new_context(model: LoadedModel, *, n_ctx: int, n_batch: int, n_threads: int,
                n_seq: int = 1):
    """A fresh llama.cpp context (KV cache) for ``model``, plus a decode batch of n_batch.

    With ``n_seq`` > 1 the context holds that many sequences (ids 0..n_seq-1), each with a KV
    cache of its own of ``n_ctx`` tokens (not unified: a token attends only over its own
    sequence's cells, so one busy slot costs what a single-sequence context does)."""
    lc = llama()
    params = _context_params(n_ctx=n_ctx * n_seq, n_batch=max(n_batch, n_seq),
                             n_threads=n_threads)
    params.n_seq_max = n_seq
    params.kv_unified = False
    # AUTO turns flash attention on where the backend supports it (GPU builds), off elsewhere.
    params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO
    ctx = _context(model, params, f"a context of {n_ctx} tokens for {model.path} "
                                  "(out of memory?); try a smaller num_ctx")
    return ctx, new_batch(max(n_batch, n_seq))


def new_embedding_context(model: LoadedModel, *, n_tokens: int, pooling: int, n_threads: int):
    """A llama.cpp context of ``n_tokens`` with embeddings on, pooled with ``pooling`` (the
    enum llama_pooling_type), that borrows ``model``'s weights."""
    # Non-causal encoders need the whole input in one micro-batch: n_batch = n_ctx.
    params = _context_params(n_ctx=n_tokens, n_batch=n_tokens, n_threads=n_threads)
    params.embeddings = True
    params.pooling_type = pooling
    return _context(model, params, f"an embedding context for {model.path}")


def new_batch(n_tokens: int):
    """A decode batch of up to ``n_tokens`` tokens for one sequence."""
    from llama_cpp import _internals

    return _internals.LlamaBatch(n_tokens=n_tokens, embd=0, n_seq_max=1, verbose=False)


def new_sampler():
    """An empty sampler chain; the engine adds its samplers through ``llama()``."""
    llama()
    from llama_cpp import _internals

    return _internals.LlamaSampler()


def context_layout() -> dict[str, Any]:
    """What this build puts into a context's KV cache besides the model and its shape: a saved
    sequence state is only valid for a context made the same way (see ``new_context``)."""
    lc = llama()
    return {
        "llama_cpp_python": getattr(lc, "__version__", "?"),
        "state_seq_version": getattr(lc, "LLAMA_STATE_SEQ_VERSION", 0),
        "type_k": "f16",  # llama_context_default_params; new_context keeps them
        "type_v": "f16",
        "flash_attn": "auto",
        "gpu_offload": gpu_offload_supported(),
        "n_seq_max": 1,
    }


def get_sequence_state(ctx) -> Any:
    """The KV-cache state of sequence 0 of ``ctx`` (a LlamaContext), as a ctypes byte array
    (a buffer: write it with ``memoryview``); None when llama.cpp cannot serialise it."""
    import ctypes

    lc = llama()
    size = lc.llama_state_seq_get_size(ctx.ctx, 0)
    if size <= 0:
        return None
    buf = (ctypes.c_uint8 * size)()
    written = lc.llama_state_seq_get_data(ctx.ctx, buf, size, 0)
    if written != size:
        return None
    return buf


def set_sequence_state(ctx, data: Any) -> bool:
    """Load a state from ``get_sequence_state`` (a ctypes uint8 array) into sequence 0 of
    ``ctx``, whose KV cache must be empty. False when llama.cpp refuses it (another layout,
    another format); the caller then clears the cache, which may hold part of it."""
    lc = llama()
    return lc.llama_state_seq_set_data(ctx.ctx, data, len(data), 0) > 0


def _context_params(*, n_ctx: int, n_batch: int, n_threads: int):
    params = llama().llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_seq_max = 1
    params.n_threads = n_threads
    params.n_threads_batch = n_threads
    params.no_perf = True
    return params


def _context(model: LoadedModel, params, what: str):
    from llama_cpp import _internals

    try:
        return _internals.LlamaContext(model=model.model, params=params, verbose=False)
    except ValueError:
        raise ModelLoadError(f"llama.cpp could not create {what}") from None
