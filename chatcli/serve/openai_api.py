"""OpenAI-compatible endpoints (/v1/...). Filled in by the OpenAI part of the server work."""

from __future__ import annotations


def routes() -> list:
    return []
