"""``chat()``: the Ollama client's ``chat`` function, answered in-process.

    from chatcli import chat
    response = chat(model='smollm2:135m', messages=[{'role': 'user', 'content': 'Hi'}])
    print(response.message.content)
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from chatcli.client.accumulate import Accumulator, accumulate
from chatcli.client.conversation import Conversation
from chatcli.client.local import run_chat, with_model_system
from chatcli.client.log import Recorder, log_path
from chatcli.core import options as opts_mod
from chatcli.core import textclean
from chatcli.core.errors import ChatCliError
from chatcli.core.events import ContentDelta, Done, Event, ThinkingDelta, ToolCall
from chatcli.core.keepalive import parse_keep_alive
from chatcli.core.messages import check_messages
from chatcli.core.names import DEFAULT_MODEL
from chatcli.engine.loaded import CACHE
from chatcli.models.resolve import resolve
from chatcli.responses import (
    ChatResponse,
    EmbedResponse,
    Message,
    ToolCallFunction,
    ToolCallRecord,
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def chat(
    model: str = "",
    messages: Sequence[Any] | None = None,
    *,
    tools: Sequence[Any] | None = None,
    stream: bool = False,
    think: bool | str | None = None,
    format: str | dict | None = None,
    options: Mapping[str, Any] | None = None,
    keep_alive: float | str | None = None,
    log: bool = False,
) -> ChatResponse | Iterator[ChatResponse]:
    """Answer ``messages`` with ``model``, loading it in this process if needed.

    With ``stream=False`` returns one ``ChatResponse``; with ``stream=True`` an iterator of
    chunks: ``done=False`` chunks carry ``message.content`` deltas, the last one (``done=True``)
    carries the metrics. Raises ``ChatCliError`` subclasses for anything the caller got wrong.
    With ``log=True`` the exchange is recorded in the conversation log (``chat log``); a call
    whose messages continue the previous logged call's is added to the same conversation.
    """
    start = time.perf_counter_ns()
    msgs = check_messages(messages)
    # What a caller passes may be nested without bound (even cyclic) or hold lone surrogates:
    # bounded and cleaned before anything recursive (template, grammar) sees it.
    tools = textclean.clean_value(tools, "tools") if tools else tools
    format = textclean.clean_value(format, "format") if format else format
    options = textclean.clean_value(options, "options") if options else options
    opts = opts_mod.accept(options).options  # lenient, as Ollama is with programs
    keep = parse_keep_alive(keep_alive)
    resolved = resolve(model or DEFAULT_MODEL)
    logged = list(msgs)
    msgs = with_model_system(msgs, resolved)
    request = {"tools": tools, "think": think, "format": format}
    events = _events(resolved, msgs, opts, request, keep, start)
    if log:
        events = _logged(events, Conversation(resolved.name, logged, opts, format, think))
    if stream:
        return _chunks(resolved.name, events)
    answer = accumulate(events)
    if answer.done is None:  # the engine always ends with Done unless it raised
        raise ChatCliError("the answer ended before it was complete")
    calls = [_record(call, i) for i, call in enumerate(answer.tool_calls)]
    message = Message(role="assistant", content=answer.content,
                      thinking=answer.thinking or None, tool_calls=calls or None)
    return _final(resolved.name, answer.done, message)


_recorders: dict[Any, Recorder] = {}


def _logged(events: Iterator[Event], conv: Conversation) -> Iterator[Event]:
    """The events, passed on; once they end, the exchange goes into the conversation log."""
    answer = Accumulator()
    for event in events:
        answer.add(event)
        yield event
    message = answer.message()
    if message is not None:
        # One recorder per log file for the process, so that a caller's growing conversation
        # stays one logged conversation.
        recorder = _recorders.setdefault(log_path(), Recorder())
        conv.messages.append(message)
        recorder.record(conv, answer.done)


def _record(call: ToolCall, index: int) -> ToolCallRecord:
    """A tool call with its id and ``function.index``, its position among the answer's calls."""
    function = ToolCallFunction(name=call.name, arguments=call.arguments, index=index)
    return ToolCallRecord(function=function, id=call.id)


def _final(name: str, done: Done, message: Message) -> ChatResponse:
    """The last response: ``message`` (empty when streaming) and the metrics."""
    m = done.metrics
    return ChatResponse(
        model=name,
        created_at=_now(),
        message=message,
        done=True,
        done_reason=done.done_reason,
        total_duration=m.total_duration,
        load_duration=m.load_duration,
        prompt_eval_count=m.prompt_eval_count,
        prompt_cached_count=m.prompt_cached_count,
        prompt_eval_duration=m.prompt_eval_duration,
        eval_count=m.eval_count,
        eval_duration=m.eval_duration,
        trimmed=done.trimmed,
    )


def _chunks(name: str, events: Iterator[Event]) -> Iterator[ChatResponse]:
    """The streamed responses: one per thinking, content or tool-call event, then the last."""
    calls = 0
    for event in events:
        if isinstance(event, ContentDelta):
            message = Message(role="assistant", content=event.text)
        elif isinstance(event, ThinkingDelta):
            message = Message(role="assistant", content="", thinking=event.text)
        elif isinstance(event, ToolCall):
            message = Message(role="assistant", content="", tool_calls=[_record(event, calls)])
            calls += 1
        elif isinstance(event, Done):
            yield _final(name, event, Message(role="assistant", content=""))
            continue
        else:
            continue
        yield ChatResponse(model=name, created_at=_now(), message=message)


def _events(resolved, msgs, opts, request, keep, start) -> Iterator[Event]:
    # Load eagerly so that a bad model fails at the call, not at the first next().
    entry = CACHE.acquire(resolved, opts)
    ready = time.perf_counter_ns()
    released: list[bool] = []

    def release() -> None:
        if not released:
            released.append(True)
            CACHE.release(entry, keep)

    def generate() -> Iterator[Event]:
        try:
            yield from run_chat(entry, msgs, opts, start=start, ready=ready, **request)
        except RuntimeError as e:
            raise ChatCliError(f"llama.cpp failed while answering: {e}") from None
        finally:
            release()

    stream = generate()
    # A stream that is dropped without being read must still let its model expire.
    weakref.finalize(stream, release)
    return stream


def embed(
    model: str = "",
    input: str | Sequence[str] = "",
    *,
    truncate: bool | None = None,
    options: Mapping[str, Any] | None = None,
    keep_alive: float | str | None = None,
    dimensions: int | None = None,
) -> EmbedResponse:
    """Embed ``input`` (a text or a list of texts) with ``model``, loading it in this process
    if needed: one unit vector per text, as the ``ollama`` client's ``embed()`` returns them.

    A text longer than the context (``num_ctx``, at most the model's training context) is cut
    to fit unless ``truncate`` is false, which refuses it. ``dimensions`` keeps only the first
    N components (for Matryoshka-trained models), normalised again; more than the model has
    keeps them all. An empty string embeds nothing. Raises ``ChatCliError`` subclasses for
    anything the caller got wrong.
    """
    from chatcli.engine import embedding

    result = embedding.embed(model, input, truncate=truncate, options=options,
                             keep_alive=keep_alive, dimensions=dimensions)
    return EmbedResponse(model=result.model, embeddings=result.embeddings,
                         total_duration=result.total_duration,
                         load_duration=result.load_duration,
                         prompt_eval_count=result.prompt_eval_count)
