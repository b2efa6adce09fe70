"""Turning a token stream into text: constant work per token, whatever the answer's length.

``Utf8Stream`` decodes token pieces incrementally and holds back an incomplete UTF-8 sequence
(a multi-byte character split across tokens) until its last byte arrives. ``StopMatcher`` holds
back only the tail that could still become a stop string, so the cost of checking stops does not
grow with the answer.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable


class Utf8Stream:
    """Incremental UTF-8 decoder for token pieces."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """Whatever is held back at the end (an unfinished sequence becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Finds stop strings in streamed text without rescanning what was already emitted."""

    __slots__ = ("_stops", "_pending", "stopped")

    def __init__(self, stops: Iterable[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add text; return the part that can be shown now. Sets ``stopped`` on a match."""
        if not self._stops:
            return text
        pending = self._pending + text
        cut = -1
        for stop in self._stops:
            i = pending.find(stop)
            if i != -1 and (cut == -1 or i < cut):
                cut = i
        if cut != -1:
            self._pending = ""
            self.stopped = True
            return pending[:cut]
        hold = self._held_suffix(pending)
        self._pending = pending[len(pending) - hold:] if hold else ""
        return pending[: len(pending) - hold]

    def flush(self) -> str:
        """Release the held-back tail when generation ends without a stop."""
        rest, self._pending = self._pending, ""
        return rest

    def _held_suffix(self, text: str) -> int:
        # Longest suffix of `text` that is a proper prefix of some stop string.
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
