"""A small GGUF reader: metadata and tensor shapes, without loading the model.

``chat show``, ``chat list`` and the store need a model's architecture, context length,
quantization, template and parameter count; reading the header is instant where loading
weights is not. Large arrays (the vocabulary) are skipped, keeping only their length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ModelLoadError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
KEEP_ARRAY_MAX = 64  # longer arrays are summarised as their length


@dataclass
class GGUFInfo:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    parameter_count: int = 0
    tensor_count: int = 0

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{suffix}", default)


class _Reader:
    def __init__(self, f: BinaryIO, path: Path) -> None:
        self.f, self.path = f, path

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ModelLoadError(f"{self.path} is truncated (GGUF header ends early)")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 28:
            raise ModelLoadError(f"{self.path}: corrupt GGUF header (string of {n} bytes)")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, n = self.unpack("<I"), self.unpack("<Q")
            if n > KEEP_ARRAY_MAX:
                self.skip_array(item_kind, n)
                return _Skipped(n)
            return [self.value(item_kind) for _ in range(n)]
        raise ModelLoadError(f"{self.path}: corrupt GGUF header (value type {kind})")

    def skip_array(self, kind: int, n: int) -> None:
        if kind in _SCALARS:
            self.f.seek(struct.calcsize(_SCALARS[kind]) * n, 1)
        elif kind == _STRING:
            for _ in range(n):
                self.f.seek(self.unpack("<Q"), 1)
        else:
            for _ in range(n):
                self.value(kind)


class _Skipped:
    def __init__(self, n: int) -> None:
        self.n = n


def read_gguf(path: Path) -> GGUFInfo:
    """Parse a GGUF file's header; ModelLoadError if it is not one or is cut short."""
    path = Path(path)
    try:
        f = path.open("rb")
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        r = _Reader(f, path)
        head = f.read(4)
        if head != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF model file")
        version = r.unpack("<I")
        if version not in (2, 3):
            raise ModelLoadError(f"{path}: unsupported GGUF version {version}")
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        info = GGUFInfo(path=path, version=version, tensor_count=n_tensors)
        for _ in range(n_kv):
            key = r.string()
            value = r.value(r.unpack("<I"))
            if isinstance(value, _Skipped):
                info.array_lengths[key] = value.n
            else:
                info.metadata[key] = value
        for _ in range(n_tensors):
            r.string()
            n_dims = r.unpack("<I")
            dims = struct.unpack(f"<{n_dims}Q", r.read(8 * n_dims))
            r.read(4 + 8)  # type, offset
            count = 1
            for d in dims:
                count *= d
            info.parameter_count += count
    return info
