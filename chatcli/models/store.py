"""The model store: content-addressed blobs plus manifests, in Ollama's own layout.

    <root>/blobs/sha256-<hex>                          a blob (a GGUF, params JSON, ...)
    <root>/manifests/<host>/<namespace>/<model>/<tag>  a docker-v2 manifest of layers

Two names can share a blob; removing a name frees a blob only when no manifest uses it. The
same reader serves Ollama's store (``~/.ollama/models`` or ``$OLLAMA_MODELS``), read-only.
Every path is built from validated names and digests, never from raw input.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from chatcli.core.errors import ChatCliError
from chatcli.core.fileio import atomic_write_text
from chatcli.core.names import InvalidNameError, ModelName, parse_digest, parse_name

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA = "application/vnd.ollama.image."
MODEL_MEDIA_TYPE = MEDIA + "model"
CHUNK = 1 << 20


class StoreError(ChatCliError):
    """The store cannot do what was asked (read-only, missing blob, bad manifest, ...)."""


@dataclass
class Layer:
    media_type: str
    digest: str  # "sha256:<hex>"
    size: int

    @property
    def kind(self) -> str:
        """"model", "params", "system", "template", "license", "projector", "messages"..."""
        return self.media_type.removeprefix(MEDIA)

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass
class Manifest:
    layers: list[Layer]
    config: Layer | None = None
    raw: bytes = b""

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers) + (self.config.size if self.config else 0)

    def layer(self, kind: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.kind == kind), None)

    def all_digests(self) -> set[str]:
        out = {layer.digest for layer in self.layers}
        if self.config:
            out.add(self.config.digest)
        return out

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE}
        if self.config:
            data["config"] = self.config.to_json()
        data["layers"] = [layer.to_json() for layer in self.layers]
        return json.dumps(data, indent=None, separators=(",", ":")).encode()


def parse_manifest(raw: bytes, source: str = "manifest") -> Manifest:
    """Validate a manifest's JSON: every digest must be a proper sha256."""
    try:
        data = json.loads(raw)
        layers = [_layer(item) for item in data["layers"]]
        config = _layer(data["config"]) if data.get("config") else None
    except (ValueError, KeyError, TypeError, AttributeError, InvalidNameError) as e:
        raise StoreError(f"{source} is not a valid model manifest ({e})") from None
    if not any(layer.kind == "model" for layer in layers):
        raise StoreError(f"{source} has no model layer")
    return Manifest(layers=layers, config=config, raw=raw)


def _layer(item: dict[str, Any]) -> Layer:
    digest = "sha256:" + parse_digest(item["digest"])
    size = int(item.get("size", 0))
    if size < 0:
        raise ValueError("negative size")
    return Layer(media_type=str(item["mediaType"]), digest=digest, size=size)


@dataclass
class StoredModel:
    """One name in a store, for ``chat list``."""

    name: ModelName
    manifest: Manifest
    modified: float
    store: Store

    @property
    def id(self) -> str:
        return self.manifest.digest.removeprefix("sha256:")[:12]


@dataclass
class Store:
    root: Path
    readonly: bool = False
    label: str = "chatcli"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    # -- blobs -----------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / f"sha256-{parse_digest(digest)}"

    def partial_path(self, digest: str) -> Path:
        return self.blobs / f"sha256-{parse_digest(digest)}-partial"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob_text(self, digest: str) -> str:
        return self.blob_path(digest).read_text(encoding="utf-8", errors="replace")

    def commit_partial(self, digest: str) -> Path:
        """Verify a finished ``-partial`` download and move it into place."""
        self._writable()
        partial, final = self.partial_path(digest), self.blob_path(digest)
        actual = sha256_file(partial)
        if "sha256:" + actual != "sha256:" + parse_digest(digest):
            partial.unlink(missing_ok=True)
            raise StoreError(
                f"digest mismatch for {digest}: got sha256:{actual}; the download was discarded"
            )
        os.replace(partial, final)
        return final

    def add_blob_bytes(self, data: bytes) -> Layer:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            self._writable()
            self.blobs.mkdir(parents=True, exist_ok=True)
            tmp = self.partial_path(digest)
            tmp.write_bytes(data)
            os.replace(tmp, self.blob_path(digest))
        return Layer(media_type="", digest=digest, size=len(data))

    def add_blob_file(self, src: Path) -> Layer:
        """Copy a file into the store (hashing as it goes); an existing blob is reused.

        Only a regular file is read (a FIFO, a device or /proc/self/mem would block, never end
        or fail midway); nothing half-copied is left in the store when anything goes wrong.
        """
        self._writable()
        tmp = self.blobs / f".import-{os.getpid()}-{time.monotonic_ns()}-partial"
        size = 0
        try:
            fin = open_regular_file(src)
            self.blobs.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            with fin, open(tmp, "wb") as fout:
                while chunk := _read_chunk(fin, src):
                    h.update(chunk)
                    fout.write(chunk)
                    size += len(chunk)
            digest = "sha256:" + h.hexdigest()
            if self.has_blob(digest):
                tmp.unlink()
            else:
                os.replace(tmp, self.blob_path(digest))
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot copy {src} into the store at {self.root}: "
                             f"{e.strerror or e}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Layer(media_type="", digest=digest, size=size)

    # -- manifests -------------------------------------------------------------------------

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests.joinpath(*name.parts)

    def read_manifest(self, name: ModelName) -> Manifest | None:
        path = self.manifest_path(name)
        if not path.is_file():
            found = self._case_insensitive(name)
            if found is None:
                return None
            path = found
        return parse_manifest(path.read_bytes(), source=f"manifest of {name}")

    def _case_insensitive(self, name: ModelName) -> Path | None:
        # Tags like Q4_K_M may be typed in any case.
        directory = self.manifests.joinpath(*name.parts[:3])
        if not directory.is_dir():
            return None
        for entry in directory.iterdir():
            if entry.name.lower() == name.tag.lower() and entry.is_file():
                return entry
        return None

    def write_manifest(self, name: ModelName, manifest: Manifest) -> Manifest:
        self._writable()
        missing = [d for d in manifest.all_digests() if not self.has_blob(d)]
        if missing:
            raise StoreError(f"cannot register {name}: missing blob {missing[0]}")
        # Keep a registry's bytes as they came, so the model's ID (the manifest's sha256) is
        # the one Ollama shows for it.
        raw = manifest.raw or manifest.to_bytes()
        path = self.manifest_path(name)
        atomic_write_text(path, raw.decode())
        return Manifest(layers=manifest.layers, config=manifest.config, raw=raw)

    def models(self) -> Iterator[StoredModel]:
        """Every name in the store (malformed manifests are skipped)."""
        if not self.manifests.is_dir():
            return
        for path in sorted(self.manifests.glob("*/*/*/*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            host, namespace, model, tag = path.relative_to(self.manifests).parts
            try:
                name = parse_name(f"{host}/{namespace}/{model}:{tag}")
                manifest = parse_manifest(path.read_bytes(), source=str(path))
            except ChatCliError:
                continue
            yield StoredModel(name, manifest, path.stat().st_mtime, self)

    def remove(self, name: ModelName) -> list[str]:
        """Delete a name; returns the digests of blobs freed (used by no other manifest)."""
        self._writable()
        manifest = self.read_manifest(name)
        if manifest is None:
            raise StoreError(f"model '{name}' not found")
        path = self.manifest_path(name)
        if not path.is_file():
            path = self._case_insensitive(name) or path
        path.unlink()
        for parent in list(path.parents)[:3]:
            try:
                parent.rmdir()  # prune empty directories
            except OSError:
                break
        still_used = {d for m in self.models() for d in m.manifest.all_digests()}
        freed = []
        for digest in sorted(manifest.all_digests() - still_used):
            self.blob_path(digest).unlink(missing_ok=True)
            freed.append(digest)
        return freed

    def copy(self, src: ModelName, dst: ModelName) -> None:
        manifest = self.read_manifest(src)
        if manifest is None:
            raise StoreError(f"model '{src}' not found")
        self.write_manifest(dst, manifest)

    def _writable(self) -> None:
        if self.readonly:
            raise StoreError(f"the {self.label} store at {self.root} is read-only for chatcli")


def open_regular_file(path: Path) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; StoreError otherwise.

    O_NONBLOCK keeps a FIFO from blocking the open; the check on the open descriptor (not the
    name) leaves no window for the file to be swapped for something else.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise StoreError(f"cannot read {path}: it is {kind}")
    return os.fdopen(fd, "rb")


def _read_chunk(f: BinaryIO, path: Path) -> bytes:
    try:
        return f.read(CHUNK)
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def local_store() -> Store:
    from chatcli.core.paths import models_dir

    return Store(models_dir())


def ollama_store() -> Store | None:
    """Ollama's own store, read-only, if there is one."""
    root = os.environ.get("OLLAMA_MODELS")
    path = Path(root).expanduser() if root else Path.home() / ".ollama" / "models"
    if not (path / "manifests").is_dir():
        return None
    return Store(path, readonly=True, label="Ollama")
