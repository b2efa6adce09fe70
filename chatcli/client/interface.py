"""The client interface: what the session, the REPL and the one-shot CLI need from whatever
answers them. ``LocalClient`` (the engine, in-process) and ``RemoteClient`` (a chat serve or
Ollama server) implement it; so does the tests' scripted fake, and mypy checks all three."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from chatcli.core.events import Event
from chatcli.models.resolve import ResolvedModel


class ChatClient(Protocol):
    """Turns (model name, messages, options) into a stream of events."""

    def resolve(self, name: str) -> ResolvedModel:
        """The model ``name`` stands for; ModelNotFoundError naming it if there is none."""
        ...

    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
        *,
        format: Any = None,
        think: Any = None,
        tools: Any = None,
        cancel: threading.Event | None = None,
        projector: Path | None = None,
    ) -> Iterator[Event]:
        """Stream one answer's events, ending with ``Done``. Setting ``cancel`` stops it (the
        final Done then says "cancelled"); ``projector`` is a vision projector file for the
        model (local models only)."""
        ...

    def show(self, model: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Model facts for /show: architecture, parameters, context length, embedding length,
        quantization, capabilities, license, template (and template_is_fallback), system,
        model_options, name and path."""
        ...

    def save_state(self, model: str, *, background: bool = False) -> bool:
        """Keep what ``model`` has read of the conversation (its KV cache) on disk, so that
        resuming the conversation later does not read the history again. A capability, not a
        duty: a client that cannot (a remote server) does nothing and returns False. Never
        raises for a failed save: the state is only a cache. ``background``: return at once
        and save while the person reads the answer (done before the process exits)."""
        ...
