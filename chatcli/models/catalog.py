"""What ``chat list`` prints: every model chatcli can run, from every store."""

from __future__ import annotations

import time
from dataclasses import dataclass

from chatcli.core.names import DEFAULT_MODEL
from chatcli.models.resolve import bundled_model_path
from chatcli.models.store import local_store, ollama_store


@dataclass
class Entry:
    name: str
    id: str
    size: int
    modified: float
    source: str  # "chatcli", "ollama", "bundled"


def entries() -> list[Entry]:
    """chatcli's store, then the bundled default, then Ollama's store (read-only)."""
    out: list[Entry] = []
    seen: set[str] = set()
    for store in (local_store(), ollama_store()):
        if store is None:
            continue
        for m in store.models():
            name = m.name.display
            if name in seen:
                continue
            seen.add(name)
            out.append(Entry(name, m.id, m.manifest.size, m.modified, store.label.lower()))
        if store.label == "chatcli":
            bundled = bundled_model_path()
            if bundled is not None and DEFAULT_MODEL not in seen:
                seen.add(DEFAULT_MODEL)
                st = bundled.stat()
                out.append(Entry(DEFAULT_MODEL, "bundled", st.st_size, st.st_mtime, "bundled"))
    return out


def model_names() -> list[str]:
    """Names for tab completion."""
    return [e.name for e in entries()]


def human_size(n: int) -> str:
    """Ollama's SI sizes: 98 MB, 2.0 GB."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n} B"


def human_ago(when: float, now: float | None = None) -> str:
    """'About a minute ago', '3 hours ago', '2 weeks ago' (Ollama's wording)."""
    seconds = max(0.0, (now or time.time()) - when)
    if seconds < 1:
        return "Less than a second ago"
    if seconds < 60:
        return f"{int(seconds)} seconds ago"
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400),
                       ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            if n == 1:
                return f"About a{'n' if unit == 'hour' else ''} {unit} ago"
            return f"{n} {unit}s ago"
    return "just now"


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns separated by at least three spaces (ollama's list layout)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    )


def list_text() -> str:
    rows = [["NAME", "ID", "SIZE", "MODIFIED", "STORE"]]
    for e in entries():
        rows.append([e.name, e.id, human_size(e.size), human_ago(e.modified), e.source])
    return table(rows)
