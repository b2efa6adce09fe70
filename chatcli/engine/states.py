"""Saved KV-cache states: a conversation resumed later does not read its history again.

After a conversation is saved, the engine writes llama.cpp's state of its sequence (the keys and
values of every token in the cache) to ``data_dir()/states/``; when a later prompt starts with
the tokens of a stored state, the engine loads it and evaluates only the rest.

One file per state, named ``<layout>-<tokens>.kv``: ``layout`` is a hash of everything that
makes a state valid for a context (the model file's identity, the context's shape and KV
layout, the llama.cpp build), ``tokens`` a hash of the token prefix. A file is::

    MAGIC | header length (uint32 LE) | header (JSON) | tokens (int32 LE) | state bytes

The header gives the token count, the state's size and a CRC-32 of it: a truncated or corrupt
file is found before llama.cpp sees a byte of it, and is ignored (and removed). There is no
shared index to keep in step between processes: the file names and headers are the index, and
headers are read once per file version (cached by size and mtime).

The store is bounded (``limits()``): the newest ``CHATCLI_STATE_MAX_COUNT`` states (20) within
``CHATCLI_STATE_MAX_MB`` megabytes (512); older ones are deleted after each save, and a state
whose tokens a newer state extends is deleted at once (the newer one serves it too).
"""

from __future__ import annotations

import array
import hashlib
import json
import logging
import os
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatcli.core.paths import data_dir

MAGIC = b"CHATCLI-KV1\n"
SUFFIX = ".kv"
MAX_MB_ENV = "CHATCLI_STATE_MAX_MB"
MAX_COUNT_ENV = "CHATCLI_STATE_MAX_COUNT"
DEFAULT_MAX_MB = 512
DEFAULT_MAX_COUNT = 20
# A state is restored only if it saves at least this many tokens over the live cache: loading
# a state costs a file read, worth it only when it replaces real prompt evaluation.
MIN_GAIN = 64
_HEADER_MAX = 1 << 16
_STALE_TMP_SECONDS = 600
_log = logging.getLogger("chatcli")


@dataclass(frozen=True)
class Limits:
    """How many states the store keeps, and how many bytes they may take together."""

    count: int
    bytes: int

    @property
    def enabled(self) -> bool:
        return self.count > 0 and self.bytes > 0


def limits() -> Limits:
    """The store's bound: ``CHATCLI_STATE_MAX_COUNT`` states within ``CHATCLI_STATE_MAX_MB``
    megabytes (defaults 20 and 512). 0 for either turns saving off. A value that is not a
    number is ignored (the default applies): a cache setting is never worth an error."""
    return Limits(count=int(_env_number(MAX_COUNT_ENV, DEFAULT_MAX_COUNT)),
                  bytes=int(_env_number(MAX_MB_ENV, DEFAULT_MAX_MB) * 1024 * 1024))


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    try:
        number = float(value) if value else default
    except ValueError:
        return default
    return number if number >= 0 and number != float("inf") else default


def states_dir() -> Path:
    """Where states are kept: beside the conversation log, in the data directory."""
    return data_dir() / "states"


def layout_key(facts: Mapping[str, Any]) -> str:
    """A short hash of what makes a state valid for a context (see Engine._layout)."""
    text = json.dumps(dict(facts), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _token_bytes(tokens: Sequence[int]) -> bytes:
    data = array.array("i", tokens)
    if sys.byteorder != "little":
        data.byteswap()
    return data.tobytes()


def tokens_key(tokens: Sequence[int]) -> str:
    return hashlib.sha256(_token_bytes(tokens)).hexdigest()[:24]


@dataclass(frozen=True)
class StoredState:
    """One state file, as its header describes it."""

    path: Path
    tokens: tuple[int, ...]
    state_size: int
    state_crc: int
    offset: int  # where the state bytes begin


class StateStore:
    """The state files of one directory (``states_dir()`` unless given)."""

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        # path -> ((size, mtime_ns), header): headers are read once per file version.
        self._headers: dict[Path, tuple[tuple[int, int], StoredState]] = {}

    @property
    def directory(self) -> Path:
        return self._directory if self._directory is not None else states_dir()

    # -- finding ---------------------------------------------------------------------------

    def best(
        self, layout: str, tokens: Sequence[int], at_least: int
    ) -> tuple[StoredState, int] | None:
        """The stored state for ``layout`` sharing the longest prefix with ``tokens``, and the
        length of that prefix; None unless it is longer than ``at_least``."""
        found: tuple[StoredState, int] | None = None
        for path in self._files(layout):
            stored = self._header(path)
            if stored is None or len(stored.tokens) <= at_least:
                continue
            n = common_prefix(stored.tokens, tokens)
            if n > at_least and (found is None or n > found[1]):
                found = (stored, n)
        return found

    def has(self, layout: str, tokens: Sequence[int]) -> bool:
        return (self.directory / _name(layout, tokens)).is_file()

    def read_state(self, stored: StoredState) -> Any:
        """The state bytes of ``stored`` as a ctypes array (what llama.cpp reads), checked
        against the header; None (and the file removed) when it is truncated or corrupt."""
        import ctypes

        buf = (ctypes.c_uint8 * stored.state_size)()
        try:
            with open(stored.path, "rb") as f:
                f.seek(stored.offset)
                n = f.readinto(memoryview(buf).cast("B"))
                extra = f.read(1)
        except OSError:
            return None
        if n != stored.state_size or extra or zlib.crc32(buf) != stored.state_crc:
            _log.debug("ignoring the corrupt state %s", stored.path)
            self._discard(stored.path)
            return None
        try:
            os.utime(stored.path)  # recently used: the last to be pruned
        except OSError:
            pass
        return buf

    # -- saving ----------------------------------------------------------------------------

    def save(self, layout: str, tokens: Sequence[int], state: Any, bound: Limits) -> Path | None:
        """Write a state (a buffer) for ``tokens``, then prune the store to ``bound``. None
        when the state alone is over the bound (nothing is written)."""
        view = memoryview(state).cast("B")
        header = json.dumps({"layout": layout, "n_tokens": len(tokens),
                             "state_size": view.nbytes, "state_crc": zlib.crc32(view),
                             "created": time.time()}).encode()
        size = len(MAGIC) + 4 + len(header) + 4 * len(tokens) + view.nbytes
        if not bound.enabled or size > bound.bytes:
            return None
        directory = self.directory
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / _name(layout, tokens)
        # No fsync: a file torn by a crash fails its CRC and is ignored, which is all a cache
        # needs; the rename keeps readers from ever seeing a half-written file.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC)
                f.write(struct.pack("<I", len(header)))
                f.write(header)
                f.write(_token_bytes(tokens))
                f.write(view)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._drop_covered(layout, tokens, keep=path)
        self.prune(bound)
        return path

    def _drop_covered(self, layout: str, tokens: Sequence[int], keep: Path) -> None:
        """Delete the states whose tokens are a prefix of ``tokens``: the new one serves all
        they could (earlier turns of the same conversation)."""
        for path in self._files(layout):
            stored = self._header(path)
            if path != keep and stored is not None and len(stored.tokens) <= len(tokens) \
                    and common_prefix(stored.tokens, tokens) == len(stored.tokens):
                self._discard(path)

    def prune(self, bound: Limits) -> None:
        """Keep the newest states within ``bound``; delete the rest, and temporary files that
        killed writes left behind."""
        entries = []
        cutoff = time.time() - _STALE_TMP_SECONDS
        try:
            with os.scandir(self.directory) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                        entries.append((st.st_mtime_ns, st.st_size, Path(entry.path)))
                    elif entry.name.endswith(".tmp") and entry.name.startswith(".") \
                            and st.st_mtime < cutoff:
                        self._discard(Path(entry.path))
        except OSError:
            return
        entries.sort(reverse=True)
        total = 0
        for kept, (_, size, path) in enumerate(entries):
            total += size
            if kept >= bound.count or total > bound.bytes:
                self._discard(path)

    def usage(self) -> tuple[int, int]:
        """(states, bytes) in the store now."""
        count = size = 0
        for path in self.directory.glob(f"*{SUFFIX}"):
            try:
                size += path.stat().st_size
                count += 1
            except OSError:
                continue
        return count, size

    # -- internals -------------------------------------------------------------------------

    def _files(self, layout: str) -> list[Path]:
        try:
            return sorted(self.directory.glob(f"{layout}-*{SUFFIX}"))
        except OSError:
            return []

    def _header(self, path: Path) -> StoredState | None:
        """The header of a state file (cached per file version); None, and the file removed,
        when it is not one of ours or is damaged."""
        try:
            st = path.stat()
        except OSError:
            return None
        version = (st.st_size, st.st_mtime_ns)
        cached = self._headers.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        stored = _read_header(path, st.st_size)
        if stored is None:
            _log.debug("ignoring the unreadable state %s", path)
            self._discard(path)
            return None
        self._headers[path] = (version, stored)
        return stored

    def _discard(self, path: Path) -> None:
        self._headers.pop(path, None)
        try:
            path.unlink()
        except OSError:
            pass


def _read_header(path: Path, file_size: int) -> StoredState | None:
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            (length,) = struct.unpack("<I", f.read(4))
            if length > _HEADER_MAX:
                return None
            header = json.loads(f.read(length))
            n, size, crc = header["n_tokens"], header["state_size"], header["state_crc"]
            if not all(type(v) is int and v >= 0 for v in (n, size, crc)):
                return None
            offset = len(MAGIC) + 4 + length + 4 * n
            if offset + size != file_size:
                return None
            tokens = array.array("i")
            tokens.frombytes(f.read(4 * n))
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    if len(tokens) != n:
        return None
    if sys.byteorder != "little":
        tokens.byteswap()
    if path.name != _name(header.get("layout", ""), tokens):
        return None  # the tokens are not those the name was made from
    return StoredState(path=path, tokens=tuple(tokens), state_size=size, state_crc=crc,
                       offset=offset)


def _name(layout: str, tokens: Sequence[int]) -> str:
    return f"{layout}-{tokens_key(tokens)}{SUFFIX}"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
