"""A small, bounded GGUF reader, and the checks that keep llama.cpp from aborting on a bad file.

``chat show``, ``chat list`` and the store need a model's architecture, context length,
quantization, template and parameter count; reading the header is instant where loading
weights is not. Large arrays (the vocabulary) are skipped, keeping only their length.

A GGUF header is untrusted input: every count and length in it is checked against the bytes
left in the file (and against limits far above any real model) before anything is allocated,
so a crafted header costs a bounded amount of memory and time and ends in a ModelLoadError.

``check_model_file`` adds what llama.cpp asserts on while loading (``GGML_ASSERT`` aborts the
whole process, where a C++ exception only fails the load): a model is checked here, in Python,
before llama.cpp ever sees it.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from chatcli.core.errors import ModelLoadError

_SCALARS = {k: struct.Struct(fmt) for k, fmt in {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d"}.items()}
_STRING, _ARRAY = 8, 9
_U32, _U64 = _SCALARS[4], _SCALARS[10]
_INTEGERS = (0, 1, 2, 3, 4, 5, 10, 11)
KEEP_ARRAY_MAX = 64  # longer arrays are summarised as their length

# Limits far above any real model (vocabularies have ~260k entries, headers ~100 keys, chat
# templates ~10 KB) and low enough that a crafted header stays cheap to reject.
MAX_STRING = 16 << 20  # one metadata string
MAX_KEPT = 64 << 20  # all metadata strings kept in memory together
MAX_KV = 1 << 16  # key-value pairs
MAX_ARRAY = 1 << 24  # elements of one array
MAX_WALK = 1 << 22  # strings stepped over in skipped arrays, all together
MAX_TENSORS = 1 << 20
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME - 1
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_LAYERS = 512  # LLAMA_MAX_LAYERS
MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS
_CHUNK = 1 << 20
_TOKENS = "tokenizer.ggml.tokens"

# ggml's tensor types: id -> (elements per block, bytes per block). Ids not listed were removed
# from ggml and are refused by llama.cpp.
GGML_TYPES = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
    39: (32, 17), 40: (64, 36), 41: (128, 18), 42: (64, 18),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section


@dataclass
class GGUFInfo:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    parameter_count: int = 0
    tensor_count: int = 0
    value_types: dict[str, int] = field(default_factory=dict)  # key -> GGUF value type
    tensors: list[TensorInfo] = field(default_factory=list)
    file_size: int = 0
    data_offset: int = 0  # where the tensor data begins
    duplicate_token: int | None = None  # index of a vocabulary entry seen before
    layer_arrays: dict[str, list[Any]] = field(default_factory=dict)  # long per-layer values

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{suffix}", default)


class _Reader:
    """Reads through one buffer; no length is trusted beyond the bytes left in the file."""

    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f, self.path, self.size = f, path, size
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.pos = 0  # file offset of the next byte
        self.kept = 0  # bytes of strings kept
        self.walked = 0  # strings stepped over

    def corrupt(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path}: corrupt GGUF header ({what})")

    def truncated(self) -> ModelLoadError:
        return ModelLoadError(f"{self.path} is truncated (GGUF header ends early)")

    def left(self) -> int:
        return self.size - self.pos

    def _fill(self, n: int) -> None:
        if n > self.left():
            raise self.truncated()
        self.f.seek(self.pos)
        data = self.f.read(min(max(n, _CHUNK), self.left()))
        if len(data) < n:
            raise self.truncated()
        self.buf, self.base = data, self.pos

    def take(self, n: int) -> bytes:
        off = self.pos - self.base
        if off < 0 or off + n > len(self.buf):
            self._fill(n)
            off = 0
        self.pos += n
        return self.buf[off:off + n]

    def unpack(self, fmt: struct.Struct) -> Any:
        off = self.pos - self.base
        if off < 0 or off + fmt.size > len(self.buf):
            self._fill(fmt.size)
            off = 0
        self.pos += fmt.size
        return fmt.unpack_from(self.buf, off)[0]

    def string(self, what: str) -> str:
        n = self.unpack(_U64)
        if n > MAX_STRING:
            raise self.corrupt(f"{what} is a string of {n} bytes")
        if n > self.left():
            raise self.truncated()
        self.kept += n
        if self.kept > MAX_KEPT:
            raise self.corrupt(f"more than {MAX_KEPT >> 20} MB of metadata text")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, kind: int, key: str) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string(key)
        if kind != _ARRAY:
            raise self.corrupt(f"{key} has unknown value type {kind}")
        item_kind, n = self.unpack(_U32), self.unpack(_U64)
        if item_kind == _ARRAY:
            raise self.corrupt(f"{key} is an array of arrays, which llama.cpp cannot load")
        if item_kind not in _SCALARS and item_kind != _STRING:
            raise self.corrupt(f"{key} is an array of unknown value type {item_kind}")
        item_size = _SCALARS[item_kind].size if item_kind in _SCALARS else 8
        if n > MAX_ARRAY:
            raise self.corrupt(f"{key} is an array of {n} items")
        if n * item_size > self.left():
            raise self.truncated()
        if n > KEEP_ARRAY_MAX:
            if item_kind in _SCALARS and n <= MAX_LAYERS:
                # Per-layer values (head counts, ...), needed to check the model.
                return _Skipped(n, values=[self.value(item_kind, key) for _ in range(n)])
            if item_kind in _SCALARS:
                self.pos += n * item_size
                return _Skipped(n)
            return _Skipped(n, self.skip_strings(n, key))
        return [self.value(item_kind, key) for _ in range(n)]

    def skip_strings(self, n: int, key: str) -> int | None:
        """Step over n strings; for the vocabulary, the index of the first repeated entry."""
        self.walked += n
        if self.walked > MAX_WALK:
            raise self.corrupt(f"more than {MAX_WALK} strings in arrays")
        seen: set[bytes] | None = set() if key == _TOKENS else None
        duplicate = None
        unpack_from = _U64.unpack_from
        i = 0
        while i < n:
            if self.pos + 8 > self.size:
                raise self.truncated()
            off = self.pos - self.base
            if off < 0 or off + 8 > len(self.buf):
                self._fill(8)
                off = 0
            buf, end = self.buf, len(self.buf)
            # The hot loop: as many strings as this buffer holds whole.
            while i < n and off + 8 <= end:
                (length,) = unpack_from(buf, off)
                off += 8
                if seen is not None:
                    if off + length > end:
                        off -= 8
                        break
                    # llama.cpp renames an empty entry, so "[EMPTY_3]" may clash with one.
                    word = buf[off:off + length] or f"[EMPTY_{i}]".encode()
                    if duplicate is None and word in seen:
                        duplicate = i
                    seen.add(word)
                off += length
                i += 1
            self.pos = self.base + off
            if self.pos > self.size:
                raise self.truncated()
            if seen is not None and i < n and off + 8 <= end:
                # A vocabulary entry that crosses the buffer's end: read it on its own.
                length = self.unpack(_U64)
                if length > self.left():
                    raise self.truncated()
                word = self.take(length) or f"[EMPTY_{i}]".encode()
                if duplicate is None and word in seen:
                    duplicate = i
                seen.add(word)
                i += 1
        return duplicate


class _Skipped:
    def __init__(self, n: int, duplicate: int | None = None, values: list | None = None) -> None:
        self.n, self.duplicate, self.values = n, duplicate, values


def _open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open a regular file for reading; never blocks on a FIFO or reads a device."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{path} is a directory, not a GGUF model file") from None
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {path}: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ModelLoadError(f"{path} is {kind}, not a GGUF model file")
    return os.fdopen(fd, "rb"), st.st_size


def read_gguf(path: Path) -> GGUFInfo:
    """Parse a GGUF file's header; ModelLoadError if it is not one, is cut short or is corrupt."""
    path = Path(path)
    f, size = _open_regular(path)
    try:
        with f:
            return _read(f, path, size)
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {path}: {e.strerror or e}") from None


def _read(f: BinaryIO, path: Path, size: int) -> GGUFInfo:
    r = _Reader(f, path, size)
    if size < 4 or r.take(4) != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF model file")
    version = r.unpack(_U32)
    if version not in (2, 3):
        raise ModelLoadError(f"{path}: unsupported GGUF version {version}")
    n_tensors, n_kv = r.unpack(_U64), r.unpack(_U64)
    # The smallest key-value pair takes 14 bytes, the smallest tensor description 24.
    for count, what, limit, least in ((n_kv, "metadata keys", MAX_KV, 14),
                                      (n_tensors, "tensors", MAX_TENSORS, 24)):
        if count > limit:
            raise r.corrupt(f"{count} {what}")
        if count * least > r.left():
            raise ModelLoadError(f"{path} is truncated or corrupt (its header lists {count} "
                                 f"{what}, more than the rest of the file can hold)")
    info = GGUFInfo(path=path, version=version, tensor_count=n_tensors, file_size=size)
    for _ in range(n_kv):
        key = r.string("a key")
        if not key:
            raise r.corrupt("an empty key")
        if key in info.value_types:
            raise r.corrupt(f"key {key} appears twice")
        kind = r.unpack(_U32)
        value = r.value(kind, key)
        info.value_types[key] = kind
        if isinstance(value, _Skipped):
            info.array_lengths[key] = value.n
            if key == _TOKENS:
                info.duplicate_token = value.duplicate
            if value.values is not None:
                info.layer_arrays[key] = value.values
        else:
            info.metadata[key] = value
    for _ in range(n_tensors):
        info.tensors.append(_tensor(r))
    for t in info.tensors:
        count = 1
        for d in t.dims:
            count *= d
        info.parameter_count += count
    alignment = info.metadata.get("general.alignment", 32)
    if isinstance(alignment, int) and alignment > 0:
        info.data_offset = -(-r.pos // alignment) * alignment
    return info


def _tensor(r: _Reader) -> TensorInfo:
    n = r.unpack(_U64)
    if n > MAX_TENSOR_NAME:
        raise r.corrupt(f"a tensor name of {n} bytes")
    name = r.take(n).decode("utf-8", errors="replace")
    n_dims = r.unpack(_U32)
    if n_dims > MAX_DIMS:
        raise r.corrupt(f"tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})")
    dims = tuple(r.unpack(_U64) for _ in range(n_dims))
    ggml_type, offset = r.unpack(_U32), r.unpack(_U64)
    return TensorInfo(name, dims, ggml_type, offset)


# --- what llama.cpp aborts on --------------------------------------------------------------

# Architectures with layers that have no attention (state-space, RWKV, hybrids), where a head
# count of 0 is legitimate (llama-arch.cpp: llm_arch_is_recurrent / llm_arch_is_hybrid).
_NOT_ALL_ATTENTION = frozenset({
    "mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "jamba", "falcon-h1", "plamo2",
    "granitehybrid", "lfm2", "lfm2moe", "nemotron_h", "nemotron_h_moe", "qwen3next",
    "kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next", "qwen35", "qwen35moe", "qwen4exp",
    "deepseek4", "minimax-01", "wavtokenizer-dec",
})
_NO_HPARAMS = frozenset({"clip"})  # projectors: llama.cpp reads no hyperparameters for them
_ROPE_SCALING = ("none", "linear", "yarn", "longrope")


def check_model_file(path: Path) -> GGUFInfo:
    """Read a model's header and refuse, in one line, what would make llama.cpp abort.

    llama.cpp ends the process (SIGABRT, no message) on some malformed headers instead of
    failing the load, so those are checked here first; the rest it refuses on its own.
    """
    try:
        st = os.stat(path)
        identity = (str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        identity = None  # read_gguf says what is wrong
    if identity is not None and identity in _checked:
        return _checked[identity]
    info = read_gguf(path)
    check_loadable(info)
    if identity is not None and stat.S_ISREG(st.st_mode):
        # Every model load checks its file; a server switching between models reads each once.
        if len(_checked) >= 16:
            _checked.pop(next(iter(_checked)))
        _checked[identity] = info
    return info


_checked: dict[tuple[Any, ...], GGUFInfo] = {}


def check_loadable(info: GGUFInfo) -> None:
    """ModelLoadError naming the field, for a header llama.cpp would abort on (or cannot use)."""
    _check_tensors(info)
    arch = info.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise _bad(info, "general.architecture", "missing", "the file names no architecture")
    if arch not in _NO_HPARAMS:
        _check_hparams(info, arch)
        _check_vocabulary(info)


def _bad(info: GGUFInfo, key: str, value: Any, why: str) -> ModelLoadError:
    shown = value if isinstance(value, str) and value == "missing" else repr(value)
    return ModelLoadError(f"{info.path}: invalid model file: {key} is {shown} ({why})")


def _check_tensors(info: GGUFInfo) -> None:
    if info.tensor_count == 0:
        raise ModelLoadError(
            f"{info.path} has no model weights (tensor count is 0: a vocabulary-only file?)")
    alignment = info.get("general.alignment", 32)
    if "general.alignment" in info.value_types and (
            info.value_types["general.alignment"] != 4
            or alignment <= 0 or alignment & (alignment - 1)):
        raise _bad(info, "general.alignment", alignment, "must be a power of two, as uint32")
    for t in info.tensors:
        if t.ggml_type not in GGML_TYPES:
            raise ModelLoadError(
                f"{info.path}: invalid model file: tensor {t.name} has unknown type {t.ggml_type}")
        block, block_bytes = GGML_TYPES[t.ggml_type]
        dims = t.dims or (1,)
        if 0 in dims:
            raise ModelLoadError(
                f"{info.path}: invalid model file: tensor {t.name} has a zero dimension {dims}")
        if dims[0] % block:
            raise ModelLoadError(
                f"{info.path}: invalid model file: tensor {t.name} rows of {dims[0]} values do "
                f"not fill blocks of {block}")
        if t.offset % alignment:
            raise ModelLoadError(
                f"{info.path}: invalid model file: tensor {t.name} data offset {t.offset} is "
                f"not a multiple of the alignment {alignment}")
        count = 1
        for d in dims:
            count *= d
        end = info.data_offset + t.offset + count // block * block_bytes
        if end > info.file_size:
            raise ModelLoadError(
                f"{info.path} is truncated or corrupt: tensor {t.name} ends at byte {end}, "
                f"past the end of the file ({info.file_size} bytes)")


def _int(info: GGUFInfo, key: str) -> int | None:
    """An integer value (bools are not), or None when absent or of another type."""
    if info.value_types.get(key) in _INTEGERS:
        return int(info.metadata[key])
    return None


def _per_layer(info: GGUFInfo, key: str, n_layer: int) -> list[int] | None:
    """A value llama.cpp reads as one integer or one per layer; None when absent or odd."""
    value = _int(info, key)
    if value is not None:
        return [value] * n_layer
    values = info.layer_arrays.get(key, info.metadata.get(key))
    if isinstance(values, list) and values and all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        return values[:n_layer]
    return None


def _check_hparams(info: GGUFInfo, arch: str) -> None:
    def key(suffix: str) -> str:
        return f"{arch}.{suffix}"

    def required(suffix: str, low: int, high: int | None = None) -> int:
        value = _int(info, key(suffix))
        if value is None:
            raise _bad(info, key(suffix), info.get(key(suffix), "missing"),
                       "an unsigned integer is required")
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"from {low} to {high}"
            raise _bad(info, key(suffix), value, f"must be {bound}")
        return value

    n_layer = required("block_count", 1, MAX_LAYERS)
    required("context_length", 1)
    n_embd = required("embedding_length", 1)
    nextn = _int(info, key("nextn_predict_layers"))
    if nextn is not None and nextn > n_layer:
        raise _bad(info, key("nextn_predict_layers"), nextn, f"more than the {n_layer} layers")
    _check_experts(info, arch, n_layer)
    scaling = info.get(key("rope.scaling.type"))
    if isinstance(scaling, str) and scaling not in _ROPE_SCALING:
        raise _bad(info, key("rope.scaling.type"), scaling,
                   "must be one of " + ", ".join(_ROPE_SCALING))
    if arch in _NOT_ALL_ATTENTION:
        return
    # Every layer attends: a dimension computed from these would be 0, which aborts llama.cpp
    # when it sizes the attention tensors.
    heads = _per_layer(info, key("attention.head_count"), n_layer)
    if heads is None or not any(heads):
        raise _bad(info, key("attention.head_count"),
                   info.get(key("attention.head_count"), "missing" if heads is None else 0),
                   "an attention model needs at least one head")
    kv_heads = _per_layer(info, key("attention.head_count_kv"), n_layer) or heads
    scalar_kv = _int(info, key("attention.head_count_kv"))
    if scalar_kv == 0:
        raise _bad(info, key("attention.head_count_kv"), 0, "must be at least 1")
    for il, (h, kv) in enumerate(zip(heads, kv_heads, strict=False)):
        if h and kv and h % kv:
            raise _bad(info, key("attention.head_count_kv"), kv,
                       f"must divide the head count {h}, at layer {il}")
    for suffix in ("attention.key_length", "attention.value_length"):
        if _int(info, key(suffix)) == 0:
            raise _bad(info, key(suffix), 0, "must be at least 1")
    if _int(info, key("attention.key_length")) is None and n_embd < max(heads):
        raise _bad(info, key("attention.head_count"), max(heads),
                   f"more heads than the embedding length {n_embd}")
    if not _int(info, key("expert_count")) and _int(info, key("feed_forward_length")) == 0:
        raise _bad(info, key("feed_forward_length"), 0, "must be at least 1")


def _check_experts(info: GGUFInfo, arch: str, n_layer: int) -> None:
    def key(suffix: str) -> str:
        return f"{arch}.{suffix}"

    n_expert = _int(info, key("expert_count")) or 0
    used = max(_per_layer(info, key("expert_used_count"), n_layer) or [0])
    groups = _int(info, key("expert_group_count")) or 0
    group_used = _int(info, key("expert_group_used_count")) or 0
    if n_expert > MAX_EXPERTS:
        raise _bad(info, key("expert_count"), n_expert, f"at most {MAX_EXPERTS}")
    if used > n_expert:
        raise _bad(info, key("expert_used_count"), used, f"more than the {n_expert} experts")
    if n_expert and not used:
        raise _bad(info, key("expert_used_count"), used, "a mixture of experts must use some")
    if not n_expert and groups:
        raise _bad(info, key("expert_group_count"), groups, "the model has no experts")
    if n_expert and groups >= n_expert:
        raise _bad(info, key("expert_group_count"), groups, f"must be below {n_expert} experts")
    if groups > 1 and (n_expert % groups or not 0 < group_used < groups):
        raise _bad(info, key("expert_group_used_count"), group_used,
                   f"inconsistent with {groups} groups of {n_expert} experts")


def _check_vocabulary(info: GGUFInfo) -> None:
    if info.get("tokenizer.ggml.model") in ("none", "no_vocab"):
        return
    tokens = info.get(_TOKENS)
    n = info.array_lengths.get(_TOKENS, len(tokens) if isinstance(tokens, list) else None)
    if n == 0:
        raise _bad(info, _TOKENS, "empty", "the vocabulary needs at least one token")
    duplicate = info.duplicate_token
    if isinstance(tokens, list):
        words = [str(w) or f"[EMPTY_{i}]" for i, w in enumerate(tokens)]
        duplicate = next((i for i, w in enumerate(words) if w in words[:i]), None)
    if duplicate is not None:
        raise ModelLoadError(f"{info.path}: invalid model file: {_TOKENS} repeats an entry "
                             f"(token {duplicate})")
