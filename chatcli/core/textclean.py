"""Text and JSON from outside (pipes, files, arguments, HTTP bodies, callers), made safe to use.

Text that is not valid Unicode becomes U+FFFD where it enters, never an error deep inside:
invalid UTF-8 bytes are decoded with ``errors="replace"``, and lone surrogates in a ``str`` (a
JSON ``"\\ud800"`` escape, or the bytes of an argument that the interpreter smuggled in with
``surrogateescape``) are replaced too. JSON is bounded in nesting depth right after parsing and
before anything recursive (templates, grammars, ``json.dumps``) sees it: deep nesting is the
client's mistake, reported as a ``RequestError``, not a ``RecursionError`` from somewhere inside.
"""

from __future__ import annotations

import json
from typing import Any

from chatcli.core.errors import RequestError

# Far deeper than any real message, tool call or schema needs, and shallow enough that every
# recursive step after it (the chat template, the grammar builder, json.dumps) stays well inside
# Python's recursion limit.
MAX_DEPTH = 100


class TooDeepError(RequestError):
    """JSON (or the equivalent Python objects) nested deeper than ``MAX_DEPTH``."""


def decode(data: bytes) -> str:
    """Bytes as text: UTF-8 (a byte-order mark is dropped), each invalid byte as U+FFFD."""
    return data.decode("utf-8-sig", errors="replace")


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (a split pair is joined)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _too_deep(what: str, limit: int) -> TooDeepError:
    return TooDeepError(f"{what} is nested too deeply (the limit is {limit} levels of "
                        "objects and arrays)")


def clean_value(value: Any, what: str = "the request", limit: int = MAX_DEPTH) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples as lists, strings, scalars) with every
    string and key cleaned by ``clean_text``; ``TooDeepError`` when containers nest deeper than
    ``limit``. Iterative, so no input depth can exhaust the stack; other objects are kept as
    they are."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 0)]
    while stack:
        item, parent, slot, depth = stack.pop()
        if isinstance(item, str):
            item = clean_text(item)
        elif isinstance(item, dict):
            if depth >= limit:
                raise _too_deep(what, limit)
            copy: Any = {}
            for key, sub in item.items():
                key = clean_text(key) if isinstance(key, str) else key
                copy[key] = None
                stack.append((sub, copy, key, depth + 1))
            item = copy
        elif isinstance(item, (list, tuple)):
            if depth >= limit:
                raise _too_deep(what, limit)
            copy = [None] * len(item)
            stack.extend((sub, copy, i, depth + 1) for i, sub in enumerate(item))
            item = copy
        parent[slot] = item
    return root[0]


def loads(data: str | bytes, what: str = "the JSON", limit: int = MAX_DEPTH) -> Any:
    """``json.loads`` for untrusted input: bytes decoded leniently (``decode``; UTF-16 and
    UTF-32 as ``json`` detects them), the result cleaned and bounded by ``clean_value``.
    Raises ``json.JSONDecodeError`` for malformed JSON and ``TooDeepError`` for deep nesting,
    however deep (the parser's own RecursionError included)."""
    if isinstance(data, (bytes, bytearray)):
        encoding = json.detect_encoding(data)
        data = decode(data) if encoding.startswith("utf-8") else \
            data.decode(encoding, errors="replace")
    try:
        parsed = json.loads(data)
    except RecursionError:
        raise _too_deep(what, limit) from None
    return clean_value(parsed, what, limit)
