"""Writing user files so that a crash or a full disk never leaves one half-written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ChatCliError


class TooLargeError(ChatCliError):
    """A file far larger than anything chatcli writes or reads of that kind."""


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_bytes_limited(path: Path, limit: int, what: str) -> bytes:
    """A file's bytes, refusing (``TooLargeError``) more than ``limit``: never reads without
    end from /dev/zero or a runaway pipe. OSError propagates for the caller to word."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLargeError(f"{what} is larger than {limit >> 20} MiB; too large to use")
    return data
