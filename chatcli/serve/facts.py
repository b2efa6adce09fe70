"""What /api/tags, /api/show and /api/ps say about a model, in Ollama's shapes.

Facts come from the GGUF header (nothing is loaded) and the store's manifests. Headers and the
bundled model's digest are cached by file identity, so listing models stays cheap.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from chatcli.core.errors import ChatCliError
from chatcli.engine.output.plan import capabilities
from chatcli.models.gguf import GGUFInfo, read_gguf
from chatcli.models.modelinfo import human_count, quantization
from chatcli.models.resolve import ResolvedModel, resolve
from chatcli.models.store import CHUNK
from chatcli.serve.http import reference

# What Ollama's /api/ps shows for a model kept loaded forever: now plus Go's longest duration.
FOREVER = timedelta(seconds=(2**63 - 1) / 1e9)


def rfc3339(when: datetime | float) -> str:
    """RFC 3339 in UTC with a Z, as Ollama's clients parse it."""
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(when, timezone.utc)
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def now() -> str:
    return rfc3339(datetime.now(timezone.utc))


def _identity(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _header(identity: tuple[str, int, int]) -> GGUFInfo:
    return read_gguf(Path(identity[0]))


def header(path: Path) -> GGUFInfo:
    return _header(_identity(path))


@functools.lru_cache(maxsize=16)
def _file_digest(identity: tuple[str, int, int]) -> str:
    h = hashlib.sha256()
    with open(identity[0], "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest(model: ResolvedModel) -> str:
    """The model's ID as Ollama gives it: the manifest's sha256 (hex), or for a model that has
    no manifest (the bundled one), its file's sha256."""
    if model.digest:
        return model.digest.removeprefix("sha256:")
    return _file_digest(_identity(model.path))


def details(info: GGUFInfo) -> dict[str, Any]:
    arch = info.architecture
    return {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch],
        "parameter_size": human_count(info.parameter_count),
        "quantization_level": quantization(info),
    }


def model_size(model: ResolvedModel) -> int:
    """Bytes on disk: the weights plus a vision projector."""
    size = model.path.stat().st_size
    if model.projector is not None and model.projector.is_file():
        size += model.projector.stat().st_size
    return size


def model_info(info: GGUFInfo) -> dict[str, Any]:
    """The header's metadata (the chat template is /api/show's ``template``; the vocabulary's
    long arrays are not kept by the reader, so, as in Ollama's non-verbose show, they are
    null), plus the parameter count."""
    out: dict[str, Any] = {"general.architecture": info.architecture,
                           "general.parameter_count": info.parameter_count}
    for key, value in info.metadata.items():
        if key == "tokenizer.chat_template":
            continue
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # not representable in JSON
        out.setdefault(key, value)
    for key in info.array_lengths:
        out.setdefault(key, None)
    return out


def parameters_text(options: dict[str, Any]) -> str:
    """A model's default options as Ollama's /api/show ``parameters`` text."""
    lines = []
    for key, value in options.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {json.dumps(v) if isinstance(v, str) else v}")
    return "\n".join(lines)


def expires_at(expires: float | None) -> str:
    """A monotonic deadline as wall-clock RFC 3339; None (kept loaded) is far in the future."""
    wall = datetime.now(timezone.utc)
    left = FOREVER.total_seconds() if expires is None else expires - time.monotonic()
    # Clamped, so that no deadline (however it was set) can overflow the date arithmetic.
    return rfc3339(wall + timedelta(seconds=min(max(0.0, left), FOREVER.total_seconds())))


# -- the endpoints' objects --------------------------------------------------------------------


def tags() -> list[dict[str, Any]]:
    """/api/tags: every model chatcli can run (its store, the bundled model, Ollama's store),
    newest first as in Ollama, each with its capabilities and training context length."""
    from chatcli.models.catalog import entries

    found = []
    for entry in entries():
        try:
            resolved = resolve(reference(entry.name))
            info = header(resolved.path)
        except (ChatCliError, OSError):
            continue  # an incomplete or unreadable model is left out, as `chat list` shows it
        found.append((entry.modified, {
            "name": entry.name,
            "model": entry.name,
            "modified_at": rfc3339(entry.modified),
            "size": entry.size,
            "digest": digest(resolved),
            "details": {**details(info), "context_length": _context_length(info)},
            "capabilities": capabilities(info, resolved.projector),
        }))
    found.sort(key=lambda pair: pair[0], reverse=True)
    return [tag for _, tag in found]


def _context_length(info: GGUFInfo) -> int:
    """The context the model was trained for (0 if its header does not say)."""
    value = info.arch_value("context_length")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def show(resolved: ResolvedModel) -> dict[str, Any]:
    """/api/show: the model's Modelfile, parameters, template, system prompt, license,
    details, header metadata and capabilities."""
    from chatcli.engine.template import CHATML_TEMPLATE
    from chatcli.models.modelfile import render_modelfile

    info = header(resolved.path)
    return {
        "modelfile": _modelfile(render_modelfile(resolved), resolved),
        "parameters": parameters_text(resolved.options),
        "template": resolved.template or info.get("tokenizer.chat_template") or CHATML_TEMPLATE,
        "system": resolved.system or "",
        "license": resolved.license or str(info.get("general.license", "")),
        "details": details(info),
        "model_info": model_info(info),
        "capabilities": capabilities(info, resolved.projector),
        "modified_at": rfc3339(modified(resolved)),
    }


def _modelfile(text: str, resolved: ResolvedModel) -> str:
    """The Modelfile with ``FROM`` naming the model rather than its file: the server does
    not tell clients where its store is (and ``FROM name`` recreates it on any machine)."""
    return text.replace(f"\nFROM {resolved.path}\n", f"\nFROM {resolved.name}\n", 1)


def modified(resolved: ResolvedModel) -> float:
    """When the model's name was last written (its manifest), else its file's mtime."""
    from chatcli.core.names import parse_name
    from chatcli.models.store import local_store, ollama_store

    store = {"chatcli": local_store, "ollama": ollama_store}.get(resolved.source, lambda: None)()
    if store is not None:
        path = store.manifest_path(parse_name(resolved.name))
        if path.is_file():
            return path.stat().st_mtime
    return resolved.path.stat().st_mtime


def running() -> list[dict[str, Any]]:
    """/api/ps: the models loaded in this process and when each one will be unloaded, the one
    that stays longest first (Ollama's order). ``size`` is the memory in use: the weights
    plus the context's KV cache and compute buffers."""
    from chatcli.engine.loaded import CACHE

    out = []
    for entry in sorted(CACHE.loaded(), key=_staying, reverse=True):
        model = entry.model
        try:
            info = header(model.path)
            size = model_size(model) + entry.engine.context_bytes
            ident = digest(model)
        except (ChatCliError, OSError):
            continue
        vram = _vram(size, entry.engine.gpu_layers, info.arch_value("block_count") or 0)
        out.append({
            "name": model.name,
            "model": model.name,
            "size": size,
            "digest": ident,
            "details": details(info),
            "expires_at": expires_at(entry.expires_at),
            "size_vram": vram,
            "context_length": entry.engine.n_ctx,
            "processor": processor(size, vram),
        })
    return out


def _staying(entry: Any) -> float:
    """How long ``entry`` stays loaded (in use or kept forever: longest)."""
    return math.inf if entry.expires_at is None or entry.users else entry.expires_at


def _vram(size: int, gpu_layers: int, blocks: int) -> int:
    """Bytes on the GPU, estimated from the share of layers offloaded (the output layer
    counts as one more, as in llama.cpp's n_gpu_layers)."""
    if gpu_layers == 0:
        return 0
    if gpu_layers < 0 or not blocks or gpu_layers > blocks:
        return size
    return size * gpu_layers // (blocks + 1)


def processor(size: int, vram: int) -> str:
    """`ollama ps`'s PROCESSOR column: "100% CPU", "100% GPU" or "40%/60% CPU/GPU"."""
    if vram <= 0 or size <= 0:
        return "100% CPU"
    if vram >= size:
        return "100% GPU"
    gpu = round(100 * vram / size)
    return f"{100 - gpu}%/{gpu}% CPU/GPU"
