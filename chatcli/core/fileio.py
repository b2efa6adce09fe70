"""Writing user files so that a crash or a full disk never leaves one half-written."""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from pathlib import Path

from chatcli.core.errors import ChatCliError

# A temporary file this old beside its target belongs to a write that was killed (kill -9, power
# loss): a live write renames its file into place within seconds.
STALE_TMP_SECONDS = 60


class TooLargeError(ChatCliError):
    """A file far larger than anything chatcli writes or reads of that kind."""


class NoSuchDirectoryError(ChatCliError):
    """The directory a user named to write into does not exist."""


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write one of chatcli's own data files atomically, creating its directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(path, text, mode)


def write_user_file(path: Path, text: str) -> None:
    """Write a file at a path the user typed, atomically. Its directory must exist: a typo in
    the path is an error (``NoSuchDirectoryError``), never a new directory tree."""
    path = Path(path)
    if not path.parent.is_dir():
        raise NoSuchDirectoryError(f"no such directory: {path.parent}")
    _replace_atomically(path, text, None)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _replace_atomically(path: Path, text: str, mode: int | None) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then rename it into place."""
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
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


def remove_stale_temp_files(path: Path, *, older_than: float = STALE_TMP_SECONDS) -> None:
    """Delete the temporary files that killed writes of ``path`` left beside it: regular files
    named as ``_replace_atomically`` names them and untouched for ``older_than`` seconds.
    Nothing else is touched, and a failure here never stops the write."""
    # mkstemp's names: the prefix, 8 characters from [a-z0-9_], the suffix.
    pattern = re.compile(re.escape(_temp_prefix(path)) + r"[a-z0-9_]{8}\.tmp")
    cutoff = time.time() - older_than
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not pattern.fullmatch(name):
            continue
        candidate = path.parent / name
        try:
            st = candidate.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                candidate.unlink()
        except OSError:
            continue


def read_bytes_limited(path: Path, limit: int, what: str) -> bytes:
    """A file's bytes, refusing (``TooLargeError``) more than ``limit``: never reads without
    end from /dev/zero or a runaway pipe. OSError propagates for the caller to word."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLargeError(f"{what} is larger than {limit >> 20} MiB; too large to use")
    return data
