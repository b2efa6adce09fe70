"""Ollama's ``keep_alive``: how long a model stays loaded after a request."""

from __future__ import annotations

import re

from .errors import RequestError

DEFAULT_KEEP_ALIVE = 300.0  # Ollama's 5m
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: str | int | float | None) -> float | None:
    """Seconds to keep the model loaded; None means forever, 0 means unload right after.

    Accepts seconds as a number, Go-style durations ("5m", "1h30m", "250ms") and negative
    values (keep forever), as Ollama does.
    """
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, bool):
        raise RequestError(f"invalid keep_alive {value!r}")
    if isinstance(value, (int, float)):
        return None if value < 0 else float(value)
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return None if seconds < 0 else seconds
    negative = text.startswith("-")
    body = text[1:] if negative else text
    pos, total = 0, 0.0
    for m in _PART.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise RequestError(
            f"invalid keep_alive {value!r}: use seconds or a duration like '5m', '1h', '30s'"
        )
    return None if negative else total
