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

from chatcli.client.conversation import ROLES
from chatcli.client.local import run_chat, with_model_system
from chatcli.core import options as opts_mod
from chatcli.core import textclean
from chatcli.core.errors import ChatCliError, RequestError
from chatcli.core.events import ContentDelta, Done, ThinkingDelta, ToolCall
from chatcli.core.keepalive import parse_keep_alive
from chatcli.engine.loaded import CACHE
from chatcli.models.resolve import DEFAULT_MODEL, resolve
from chatcli.responses import ChatResponse, Message, ToolCallFunction, ToolCallRecord


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _field(message: Any, name: str) -> Any:
    if isinstance(message, Mapping):
        return message.get(name)
    return getattr(message, name, None)


def _tool_calls(value: Any, index: int) -> list[dict[str, Any]]:
    """The seed's tool_calls: [{"function": {"name": str, "arguments": dict}}] (objects too)."""
    import json

    calls = []
    where = f"message {index}: tool call arguments"
    for call in value:
        function = _field(call, "function")
        name = _field(function, "name") if function is not None else None
        arguments = _field(function, "arguments") if function is not None else None
        if isinstance(arguments, str):
            try:
                arguments = textclean.loads(arguments, what=where)
            except json.JSONDecodeError:
                arguments = None
        if hasattr(arguments, "items") and not isinstance(arguments, dict):
            arguments = dict(arguments)
        if not isinstance(name, str) or not isinstance(arguments, dict):
            raise RequestError(f"message {index}: each tool call needs function.name and "
                               "function.arguments (an object)")
        calls.append({"function": {"name": textclean.clean_text(name),
                                   "arguments": textclean.clean_value(arguments, where)}})
    return calls


def normalize_messages(messages: Sequence[Any] | None) -> list[dict[str, Any]]:
    """Check roles and fields; return plain dicts (the seed's message shape), their text with
    lone surrogates as U+FFFD and tool call arguments bounded in depth (``textclean``)."""
    if messages is None:
        return []
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise RequestError("messages must be a list of {'role': ..., 'content': ...} objects")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = _field(message, "role")
        if role not in ROLES:
            raise RequestError(
                f"message {i} has role {role!r}; roles are: {', '.join(ROLES)}"
            )
        content = _field(message, "content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise RequestError(f"message {i}: content must be a string")
        clean: dict[str, Any] = {"role": role, "content": textclean.clean_text(content)}
        for key in ("thinking", "tool_name"):
            value = _field(message, key)
            if value is not None:
                if not isinstance(value, str):
                    raise RequestError(f"message {i}: {key} must be a string")
                clean[key] = textclean.clean_text(value)
        if _field(message, "tool_calls"):
            clean["tool_calls"] = _tool_calls(_field(message, "tool_calls"), i)
        images = _field(message, "images")
        if images:
            if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
                raise RequestError(f"message {i}: images must be a list")
            clean["images"] = list(images)
        out.append(clean)
    return out


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
) -> ChatResponse | Iterator[ChatResponse]:
    """Answer ``messages`` with ``model``, loading it in this process if needed.

    With ``stream=False`` returns one ``ChatResponse``; with ``stream=True`` an iterator of
    chunks: ``done=False`` chunks carry ``message.content`` deltas, the last one (``done=True``)
    carries the metrics. Raises ``ChatCliError`` subclasses for anything the caller got wrong.
    """
    start = time.perf_counter_ns()
    msgs = normalize_messages(messages)
    # What a caller passes may be nested without bound (even cyclic) or hold lone surrogates:
    # bounded and cleaned before anything recursive (template, grammar) sees it.
    tools = textclean.clean_value(tools, "tools") if tools else tools
    format = textclean.clean_value(format, "format") if format else format
    options = textclean.clean_value(options, "options") if options else options
    opts = opts_mod.accept(options).options  # lenient, as Ollama is with programs
    keep = parse_keep_alive(keep_alive)
    resolved = resolve(model or DEFAULT_MODEL)
    msgs = with_model_system(msgs, resolved)
    request = {"tools": tools, "think": think, "format": format}
    chunks = _run(resolved, msgs, opts, request, keep, start)
    if stream:
        return chunks
    content: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCallRecord] = []
    final: ChatResponse | None = None
    for chunk in chunks:
        if chunk.done:
            final = chunk
            continue
        content.append(chunk.message.content or "")
        thinking.append(chunk.message.thinking or "")
        calls.extend(chunk.message.tool_calls or [])
    assert final is not None
    final.message.content = "".join(content)
    final.message.thinking = "".join(thinking) or None
    final.message.tool_calls = calls or None
    return final


def _chunk(name: str, event: Any, calls: int = 0) -> ChatResponse | None:
    """One streamed chunk for a thinking, content or tool-call event (``calls``: how many tool
    calls came before this one, its ``function.index``)."""
    if isinstance(event, ContentDelta):
        message = Message(role="assistant", content=event.text)
    elif isinstance(event, ThinkingDelta):
        message = Message(role="assistant", content="", thinking=event.text)
    elif isinstance(event, ToolCall):
        function = ToolCallFunction(name=event.name, arguments=event.arguments, index=calls)
        record = ToolCallRecord(function=function, id=event.id)
        message = Message(role="assistant", content="", tool_calls=[record])
    else:
        return None
    return ChatResponse(model=name, created_at=_now(), message=message)


def _run(resolved, msgs, opts, request, keep, start) -> Iterator[ChatResponse]:
    # Load eagerly so that a bad model fails at the call, not at the first next().
    entry = CACHE.acquire(resolved, opts)
    ready = time.perf_counter_ns()
    name = resolved.name
    released = []

    def release() -> None:
        if not released:
            released.append(True)
            CACHE.release(entry, keep)

    def generate() -> Iterator[ChatResponse]:
        calls = 0
        try:
            for event in run_chat(entry, msgs, opts, start=start, ready=ready, **request):
                chunk = _chunk(name, event, calls)
                calls += isinstance(event, ToolCall)
                if chunk is not None:
                    yield chunk
                elif isinstance(event, Done):
                    m = event.metrics
                    yield ChatResponse(
                        model=name,
                        created_at=_now(),
                        message=Message(role="assistant", content=""),
                        done=True,
                        done_reason=event.done_reason,
                        total_duration=m.total_duration,
                        load_duration=m.load_duration,
                        prompt_eval_count=m.prompt_eval_count,
                        prompt_cached_count=m.prompt_cached_count,
                        prompt_eval_duration=m.prompt_eval_duration,
                        eval_count=m.eval_count,
                        eval_duration=m.eval_duration,
                        trimmed=event.trimmed,
                    )
        except RuntimeError as e:
            raise ChatCliError(f"llama.cpp failed while answering: {e}") from None
        finally:
            release()

    stream = generate()
    # A stream that is dropped without being read must still let its model expire.
    weakref.finalize(stream, release)
    return stream
