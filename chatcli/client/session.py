"""The state of one chat: model, messages, system prompt, options, format, think.

The REPL and the one-shot CLI drive a Session; it talks to a client (the local engine, or a
server) and keeps the history well-formed whatever happens to an answer: a finished or
interrupted answer becomes the assistant message; an answer that produced nothing (an error, or
Ctrl+C before the first token) takes its user message back out, so two user messages never
follow each other.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any, Protocol

from chatcli.client import conversation
from chatcli.client.accumulate import Accumulator
from chatcli.client.interface import ChatClient
from chatcli.core import options as opts_mod
from chatcli.core.errors import RequestError
from chatcli.core.events import Done, Event
from chatcli.core.textclean import clean_text


class Recorder(Protocol):
    """Something that keeps finished exchanges (the conversation log, ``client/log.py``)."""

    def record(self, conversation: conversation.Conversation, done: Done | None) -> None:
        """Called once after each answer that joined the conversation; must not raise."""


class Session:
    def __init__(
        self,
        client: ChatClient,
        model: str,
        *,
        system: str | None = None,
        options: dict[str, Any] | None = None,
        format: Any = None,
        think: Any = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.client = client
        self.recorder = recorder
        self.model = model
        self.messages: list[dict[str, Any]] = []
        self.options: dict[str, Any] = opts_mod.validate(options)
        self.format = format
        self.think = think
        self.projector: Path | None = None  # --mmproj: a vision projector for the model
        self.last_done: Done | None = None
        if system:
            self.set_system(system)

    # -- system prompt and options ---------------------------------------------------------

    @property
    def system(self) -> str | None:
        if self.messages and self.messages[0]["role"] == "system":
            return self.messages[0]["content"]
        return None

    def set_system(self, text: str | None) -> None:
        """Set (or with None/empty, remove) the system prompt, kept as the first message."""
        if self.messages and self.messages[0]["role"] == "system":
            self.messages.pop(0)
        if text:
            self.messages.insert(0, {"role": "system", "content": clean_text(text)})

    def set_option(self, name: str, value: Any) -> None:
        self.options.update(opts_mod.validate({name: value}))

    # -- the conversation ------------------------------------------------------------------

    def ask(
        self, text: str, cancel: threading.Event | None = None, images: list[Any] | None = None
    ) -> Generator[Event, None, None]:
        """Send a user message (with optional images) and stream the answer's events."""
        # Typed, piped or given as an argument, text may hold lone surrogates (undecodable
        # bytes smuggled in by surrogateescape): they become U+FFFD here, once for every front end.
        message: dict[str, Any] = {"role": "user", "content": clean_text(text)}
        if images:
            message["images"] = list(images)
        self.messages.append(message)
        return self._answer(cancel)

    def retry(self, cancel: threading.Event | None = None) -> Generator[Event, None, None]:
        """Answer the last user message again (dropping the previous answer)."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        if not self.messages or self.messages[-1]["role"] != "user":
            raise RequestError("nothing to retry: no question has been asked yet")
        return self._answer(cancel)

    def undo(self) -> bool:
        """Drop the last exchange (the last user message and the answers after it)."""
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i]["role"] == "user":
                del self.messages[i:]
                return True
        return False

    def clear(self) -> None:
        """Forget the conversation but keep the system prompt."""
        system = self.system
        self.messages = []
        self.set_system(system)

    @property
    def last_answer(self) -> str | None:
        for m in reversed(self.messages):
            if m["role"] == "assistant":
                return m["content"]
        return None

    def _answer(self, cancel: threading.Event | None) -> Generator[Event, None, None]:
        answer = Accumulator()
        self.last_done = None
        try:
            extra = {"projector": self.projector} if self.projector else {}
            for event in self.client.chat(
                self.model, self.messages, self.options,
                format=self.format, think=self.think, cancel=cancel, **extra,
            ):
                answer.add(event)
                self.last_done = answer.done
                yield event
        finally:
            message = answer.message()
            if message is not None:
                self.messages.append(message)
                if self.recorder is not None:  # after the answer, never inside the stream
                    self.recorder.record(self.to_conversation(), answer.done)
                    # Its KV cache, for a resume: written while the person reads the answer.
                    self.client.save_state(self.model, background=True)
            elif self.messages and self.messages[-1]["role"] == "user":
                self.messages.pop()

    # -- files and models ------------------------------------------------------------------

    def to_conversation(self) -> conversation.Conversation:
        return conversation.Conversation(
            model=self.model, messages=list(self.messages), options=dict(self.options),
            format=self.format, think=self.think,
        )

    def save(self, path: Path) -> None:
        conversation.save(path, self.to_conversation())
        self.client.save_state(self.model)  # its KV cache: resuming it skips the history

    def load(self, path: Path) -> conversation.Conversation:
        """Replace the conversation with a saved one (validated first: all or nothing)."""
        conv = conversation.load(path)
        self.apply(conv)
        return conv

    def apply(self, conv: conversation.Conversation) -> None:
        """Take over a loaded conversation: its messages (and so its system prompt, or none)
        and its model replace the session's; its options, format and think apply where the
        file sets them, over the session's own (``/set parameter`` survives a ``/load``)."""
        if conv.model:
            self.model = conv.model
        self.messages = list(conv.messages)
        self.options = opts_mod.merge(self.options, conv.options)
        if conv.format is not None:
            self.format = conv.format
        if conv.think is not None:
            self.think = conv.think

    def switch_model(self, name: str) -> str:
        """Use another model from the next answer on; the conversation is kept."""
        resolved = self.client.resolve(name)
        self.model = resolved.name
        return resolved.name
