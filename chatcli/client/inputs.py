"""What a front end reads from the user's files before a request: a JSON-schema file for
``format``, image paths named in a message. The REPL (``/set format``, typed messages) and the
one-shot CLI (``--format``, the prompt) share these, so both say the same thing about a bad file.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from chatcli.core import textclean
from chatcli.core.errors import RequestError
from chatcli.core.fileio import TooLargeError, read_bytes_limited
from chatcli.core.images import IMAGE_SUFFIXES

MAX_SCHEMA_FILE = 4 << 20  # real schemas are kilobytes
MAX_IMAGES = 32  # image paths looked at in one message (each costs a stat)


def load_format(value: str) -> str | dict[str, Any]:
    """``"json"``, or the JSON schema in the file ``value`` names; RequestError saying what
    is wrong with the file otherwise."""
    if value == "json":
        return "json"
    path = Path(value).expanduser()
    try:
        raw = read_bytes_limited(path, MAX_SCHEMA_FILE, f"JSON schema file {value}")
        schema = textclean.loads(raw, what=f"the JSON schema {value}")
    except FileNotFoundError:
        raise RequestError(
            f"format must be 'json' or a JSON schema file; no such file: {value}"
        ) from None
    except (OSError, json.JSONDecodeError, textclean.TooDeepError, TooLargeError) as e:
        raise RequestError(f"cannot read JSON schema {value}: {e}") from None
    if not isinstance(schema, dict):
        raise RequestError(f"{value} does not hold a JSON schema object")
    return schema


def find_images(text: str) -> tuple[str, list[str]]:
    """Image files named in a message (as `ollama run` attaches them): the text without those
    paths, and the paths."""
    lower = text.lower()
    if not any(suffix in lower for suffix in IMAGE_SUFFIXES):
        return text, []  # the common case, and cheap for a huge paste (shlex is ~1 s per MB)
    try:
        # Quoted paths with spaces need shlex; past a typed message's size, whitespace will do.
        words = shlex.split(text, posix=True) if len(text) < 100_000 else text.split()
    except ValueError:
        words = text.split()
    named = dict.fromkeys(w for w in words if w.lower().endswith(IMAGE_SUFFIXES))
    paths = [w for w in list(named)[:MAX_IMAGES] if Path(w).expanduser().is_file()]
    for path in paths:
        for form in (f"'{path}'", f'"{path}"', path):
            text = text.replace(form, "", 1) if form in text else text
    return " ".join(text.split()) if paths else text, paths
