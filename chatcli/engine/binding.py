"""The one module that talks to llama-cpp-python to load things.

It checks a file is a GGUF before handing it to llama.cpp, keeps llama.cpp's log quiet, and
builds the model and context objects the engine drives with its own decode loop. ``llama_cpp``
is imported here, lazily, so that ``chat --help`` never pays for it.
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


def load_model(path: Path, n_gpu_layers: int) -> LoadedModel:
    """Load a GGUF file's weights (memory-mapped)."""
    check_gguf(path)
    lc = llama()
    from llama_cpp import _internals

    from chatcli.engine.safemode import decide

    params = lc.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.use_mmap = True
    # The crash guard: llama.cpp's repacked-weight kernels only where a child process proved
    # they do not kill us on this CPU (safemode.py).
    params.use_extra_bufts = decide(path).extra_bufts
    try:
        model = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
    except ValueError:
        raise ModelLoadError(
            f"llama.cpp could not load {path}: the file is truncated, corrupt, or of an "
            "architecture this llama.cpp build does not know"
        ) from None
    return LoadedModel(path=path, model=model, metadata=model.metadata(), n_gpu_layers=n_gpu_layers)


def new_context(model: LoadedModel, *, n_ctx: int, n_batch: int, n_threads: int):
    """A fresh llama.cpp context (KV cache) for ``model``, plus a decode batch of n_batch."""
    lc = llama()
    from llama_cpp import _internals

    params = lc.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_seq_max = 1
    params.n_threads = n_threads
    params.n_threads_batch = n_threads
    # AUTO turns flash attention on where the backend supports it (GPU builds), off elsewhere.
    params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO
    params.no_perf = True
    try:
        ctx = _internals.LlamaContext(model=model.model, params=params, verbose=False)
    except ValueError:
        raise ModelLoadError(
            f"llama.cpp could not create a context of {n_ctx} tokens for {model.path} "
            "(out of memory?); try a smaller num_ctx"
        ) from None
    batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
    return ctx, batch
