"""Ollama's ``keep_alive``: how long a model stays loaded after a request."""

from __future__ import annotations

import math
import re

from chatcli.core.errors import RequestError

DEFAULT_KEEP_ALIVE = 300.0  # Ollama's 5m
# Longer than this is "forever": no process waits a year to unload a model, and a longer wait
# would overflow timers (threading.TIMEOUT_MAX is 49 days on Windows) and date arithmetic.
MAX_KEEP_ALIVE = 365 * 24 * 3600.0
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: str | int | float | None) -> float | None:
    """Seconds to keep the model loaded; None means forever, 0 means unload right after.

    Accepts seconds as a number, Go-style durations ("5m", "1h30m", "250ms") and negative
    values (keep forever), as Ollama does. A duration over ``MAX_KEEP_ALIVE`` (a year),
    infinity included, also means forever; NaN is refused.
    """
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, bool):
        raise RequestError(f"invalid keep_alive {_shown(value)}")
    if isinstance(value, (int, float)):
        return _bounded(value, value)
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return _bounded(seconds, value)
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
            f"invalid keep_alive {_shown(value)}: use seconds or a duration like '5m', '1h', '30s'"
        )
    return None if negative else _bounded(total, value)


def _bounded(seconds: int | float, value: object) -> float | None:
    """Negative or longer than a year: forever (None); NaN: a RequestError."""
    if isinstance(seconds, float) and math.isnan(seconds):
        raise RequestError(f"invalid keep_alive {_shown(value)}: not a number of seconds")
    if seconds < 0 or seconds > MAX_KEEP_ALIVE:  # compared as given: a huge int never overflows
        return None
    return float(seconds)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
