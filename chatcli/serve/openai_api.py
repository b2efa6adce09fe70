"""OpenAI-compatible endpoints (``/v1/...``) on the in-process engine.

What an OpenAI client sends is translated into chatcli's own request (Ollama's message shape,
option names, ``format``, ``think``, ``tools``) and answered by ``runner.answer``; the events
come back as OpenAI's JSON objects or server-sent ``chat.completion.chunk`` events. Errors have
OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, so the official clients
raise their usual exceptions with chatcli's message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chatcli.client.accumulate import Accumulator
from chatcli.core import options as opts_mod
from chatcli.core.errors import ChatCliError, ModelNotFoundError, RequestError
from chatcli.core.events import ContentDelta, Done, Event, ThinkingDelta, ToolCall
from chatcli.core.messages import THINK_EFFORTS, check_messages
from chatcli.serve import runner
from chatcli.serve.http import (
    ClosingStreamingResponse,
    message_for,
    model_field,
    openai_error,
    read_json,
    reference,
    status_for,
    until_disconnect,
)

FINGERPRINT = "fp_chatcli"
# OpenAI's reasoning efforts as Ollama's think values.
_EFFORTS: dict[str, bool | str] = {"none": False, "minimal": "low", **{e: e for e in THINK_EFFORTS}}


class BadRequest(RequestError):
    """A request OpenAI's API would refuse, naming the offending parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# -- errors --------------------------------------------------------------------------------


def error_response(status: int, message: str, *, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    """OpenAI's error body; its ``type`` follows the status (``not_found_error`` for 404)."""
    return JSONResponse(openai_error(status, message, param=param, code=code),
                        status_code=status)


def _from_exception(e: BaseException) -> JSONResponse:
    """The same statuses and messages as the Ollama routes, in OpenAI's error object."""
    status = status_for(e)
    code = "model_not_found" if isinstance(e, ModelNotFoundError) else None
    param = getattr(e, "param", None) or ("model" if code else None)
    return error_response(status, message_for(e), param=param, code=code)


def _error_event(e: BaseException) -> str:
    """A stream that already started can only report an error as one more event."""
    body = json.loads(bytes(_from_exception(e).body))
    return _sse(body)


def _endpoint(handler: Callable[[Request], Awaitable[Response]]):
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as e:  # noqa: BLE001  (every failure becomes OpenAI's error shape)
            return _from_exception(e)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def _model(body: dict[str, Any]) -> str:
    """The requested model's name; 400 for none, or for a path (requests name models, never
    files: they are looked up by their fully qualified ``reference``)."""
    if not body.get("model"):
        raise BadRequest("you must provide a model parameter", "model")
    return model_field(body)


# -- requests: OpenAI's shape to chatcli's -------------------------------------------------


@dataclass
class ChatRequest:
    """One /v1/chat/completions or /v1/completions request, in chatcli's terms."""

    model: str
    messages: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    think: bool | str | None = None
    format: str | dict | None = None
    stream: bool = False
    include_usage: bool = False


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    """Translate a chat.completions request; BadRequest for what chatcli cannot honour."""
    req = ChatRequest(model=_model(body), messages=chat_messages(body.get("messages")),
                      options=sampling_options(body))
    _stream_flags(body, req)
    req.tools = _tools(body.get("tools"), body.get("tool_choice"))
    req.format = response_format(body.get("response_format"))
    req.think = _think(body)
    return req


def parse_completion(body: dict[str, Any]) -> ChatRequest:
    """Translate a legacy completions request: the prompt becomes one user message (as Ollama
    does, the model's template is applied)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string (or a list of one string)", "prompt")
    if body.get("suffix"):
        raise BadRequest("suffix (fill-in-the-middle) is not supported", "suffix")
    if body.get("echo"):
        raise BadRequest("echo is not supported", "echo")
    req = ChatRequest(model=_model(body), messages=[{"role": "user", "content": prompt}],
                      options=sampling_options(body))
    _stream_flags(body, req)
    return req


def chat_messages(raw: Any) -> list[dict[str, Any]]:
    """OpenAI messages -> Ollama's: content parts flattened to text plus images, tool results
    named after the call they answer, ``developer`` read as ``system``."""
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty list", "messages")
    names: dict[str, Any] = {}  # tool_call_id -> function name, as the call gave it
    out: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object", "messages")
        role = "system" if m.get("role") == "developer" else m.get("role")
        text, images = _content(m.get("content"), i)
        message: dict[str, Any] = {"role": role, "content": text}
        if images:
            message["images"] = images
        if role == "assistant":
            reasoning = m.get("reasoning") or m.get("reasoning_content")
            if isinstance(reasoning, str):
                message["thinking"] = reasoning
            calls = m.get("tool_calls")
            if calls:
                message["tool_calls"] = calls
                for call in calls if isinstance(calls, list) else ():
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict) and isinstance(call.get("id"), str):
                        names[call["id"]] = function.get("name")
        elif role == "tool":
            call_id = m.get("tool_call_id")
            name = (names.get(call_id) if isinstance(call_id, str) else None) or m.get("name")
            if isinstance(name, str):
                message["tool_name"] = name
        out.append(message)
    try:
        return check_messages(out)
    except BadRequest:
        raise
    except RequestError as e:
        raise BadRequest(str(e), "messages") from None


def _content(content: Any, i: int) -> tuple[str, list[bytes]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise BadRequest(f"messages[{i}].content must be a string or a list of content parts",
                         "messages")
    texts: list[str] = []
    images: list[bytes] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            images.append(_data_url(url.get("url") if isinstance(url, dict) else url, i))
        else:
            raise BadRequest(f"messages[{i}]: content part of type {kind!r} is not supported "
                             "(text and image_url are)", "messages")
    return "\n".join(texts), images


def _data_url(url: Any, i: int) -> bytes:
    """An image from a ``data:`` URL; chatcli never fetches remote URLs."""
    from chatcli.core.images import decode_base64_image

    if not isinstance(url, str) or not url.startswith("data:"):
        raise BadRequest(f"messages[{i}]: image_url must be a data: URL "
                         "(data:image/png;base64,...); chatcli never fetches http URLs",
                         "messages")
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise BadRequest(f"messages[{i}]: image data URLs must be base64-encoded", "messages")
    return decode_base64_image(payload)  # never a path: a request cannot read local files


# OpenAI's sampling parameters and the Ollama options they set.
_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
            "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
            "max_tokens": "num_predict", "max_completion_tokens": "num_predict"}
# Sampling options outside OpenAI's set that vLLM and llama-server read at the top level of the
# body under these names (chatcli's REPL sends them there too): honoured the same way here.
_EXTRA_OPTIONS = ("top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n",
                  "mirostat", "mirostat_tau", "mirostat_eta")


def sampling_options(body: dict[str, Any]) -> dict[str, Any]:
    """temperature, top_p, seed, penalties, max_tokens and stop as validated Ollama options,
    and the extra sampling fields vLLM and llama-server accept (top_k, min_p, ...)."""
    n = body.get("n")
    if n not in (None, 1):
        raise BadRequest("only n=1 is supported", "n")
    options = {ours: body[theirs] for theirs, ours in _OPTIONS.items()
               if body.get(theirs) is not None}
    options.update({name: body[name] for name in _EXTRA_OPTIONS if body.get(name) is not None})
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop must be a string or a list of strings", "stop")
        if stop:
            options["stop"] = stop
    return opts_mod.accept(options).options


def _stream_flags(body: dict[str, Any], req: ChatRequest) -> None:
    req.stream = bool(body.get("stream"))
    stream_options = body.get("stream_options")
    if isinstance(stream_options, dict):
        req.include_usage = req.stream and bool(stream_options.get("include_usage"))


def _tools(tools: Any, choice: Any) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    if choice == "none":
        return None
    if choice not in (None, "auto"):
        shown = choice if isinstance(choice, str) else "a named function"
        raise BadRequest(f"tool_choice {shown!r} is not supported; use 'auto' or 'none'",
                         "tool_choice")
    from chatcli.engine.output.tools import normalize_tools

    return normalize_tools(tools)


def response_format(value: Any) -> str | dict | None:
    """``{"type": "json_object"}`` -> "json"; ``json_schema`` -> its schema."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be a JSON schema object",
                             "response_format")
        return schema
    raise BadRequest("response_format.type must be 'text', 'json_object' or 'json_schema'",
                     "response_format")


def _think(body: dict[str, Any]) -> bool | str | None:
    effort = body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    if effort is None and isinstance(reasoning, dict):
        effort = reasoning.get("effort")
    if effort is None:
        return None
    if effort not in _EFFORTS:
        raise BadRequest("reasoning_effort must be 'none', 'minimal', 'low', 'medium' or "
                         "'high'", "reasoning_effort")
    return _EFFORTS[effort]


# -- responses -----------------------------------------------------------------------------


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _usage(done: Done | None) -> dict[str, Any]:
    """OpenAI's usage: the whole prompt, and in ``prompt_tokens_details.cached_tokens`` how
    many of its tokens the KV cache already held."""
    prompt = done.metrics.prompt_eval_count if done else 0
    cached = done.metrics.prompt_cached_count if done else 0
    completion = done.metrics.eval_count if done else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _finish_reason(done: Done | None, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if done is not None and done.done_reason == "length" else "stop"


def _tool_call(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """OpenAI's tool call: an id, and the arguments as a JSON *string*."""
    out: dict[str, Any] = {
        "id": call.id,  # the one id the call has everywhere (Ollama's form)
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }
    return out if index is None else {"index": index, **out}


async def _start(req: ChatRequest) -> tuple[Event, AsyncGenerator[Event, None]]:
    """Start answering; errors (unknown model, unsupported tools...) raise here, before any
    byte of the response is sent, so they still get a status code."""
    ref = reference(req.model)
    events = runner.answer(ref, req.messages, req.options, tools=req.tools, think=req.think,
                           format=req.format)
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        raise ChatCliError("the engine produced no answer") from None
    except ModelNotFoundError as e:
        raise _as_named(e, ref, req.model) from None
    except BaseException:
        await events.aclose()
        raise
    return first, events


def _as_named(error: ModelNotFoundError, ref: str, name: str) -> ModelNotFoundError:
    """The error with the name the client used, not its fully qualified form."""
    return ModelNotFoundError(str(error).replace(ref, name))


def _ids(prefix: str) -> tuple[str, int]:
    return f"{prefix}-{secrets.token_hex(12)}", int(time.time())


# -- /v1/chat/completions ------------------------------------------------------------------


async def _answer(request: Request, req: Any, prefix: str, chunks: Any, body: Any) -> Response:
    """Start the answer (499 if the client left meanwhile), then stream ``chunks`` as SSE or
    answer once with ``body``; shared by /v1/chat/completions and /v1/completions."""
    first, events = await until_disconnect(request, _start(req))
    rid, created = _ids(prefix)
    if req.stream:
        return ClosingStreamingResponse(chunks(req, first, events, rid, created),
                                        media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache"})
    answer = await until_disconnect(request, runner.collect(first, events))
    return JSONResponse(body(req, answer, rid, created))


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions"""
    req = parse_chat(await read_json(request))
    return await _answer(request, req, "chatcmpl", _chat_chunks, _chat_body)


def _chat_body(req: ChatRequest, result: Accumulator, rid: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant",
                               "content": result.content or (None if result.tool_calls else "")}
    if result.thinking:
        message["reasoning"] = result.thinking
    if result.tool_calls:
        message["tool_calls"] = [_tool_call(c) for c in result.tool_calls]
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": req.model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": _finish_reason(result.done, bool(result.tool_calls))}],
        "usage": _usage(result.done),
    }


async def _chat_chunks(req: ChatRequest, first: Event, events: AsyncGenerator[Event, None],
                       rid: str, created: int) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                     "model": req.model, "system_fingerprint": FINGERPRINT,
                     "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                  "finish_reason": finish}]})

    done: Done | None = None
    calls = 0
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for event in runner.chain(first, events):
            if isinstance(event, ContentDelta):
                yield chunk({"content": event.text})
            elif isinstance(event, ThinkingDelta):
                yield chunk({"reasoning": event.text})
            elif isinstance(event, ToolCall):
                yield chunk({"tool_calls": [_tool_call(event, calls)]})
                calls += 1
            elif isinstance(event, Done):
                done = event
        yield chunk({}, _finish_reason(done, calls > 0))
        if req.include_usage:
            yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                        "model": req.model, "system_fingerprint": FINGERPRINT, "choices": [],
                        "usage": _usage(done)})
        yield "data: [DONE]\n\n"
    except Exception as e:  # noqa: BLE001  (the status line is gone: report in the stream)
        yield _error_event(e)
    finally:
        await events.aclose()


# -- /v1/completions -----------------------------------------------------------------------


async def completions(request: Request) -> Response:
    """POST /v1/completions"""
    req = parse_completion(await read_json(request))
    return await _answer(request, req, "cmpl", _completion_chunks, _completion_body)


def _completion_body(req: ChatRequest, result: Accumulator, rid: str,
                     created: int) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": created, "model": req.model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "text": result.content, "logprobs": None,
                     "finish_reason": _finish_reason(result.done, False)}],
        "usage": _usage(result.done),
    }


async def _completion_chunks(req: ChatRequest, first: Event,
                             events: AsyncGenerator[Event, None], rid: str,
                             created: int) -> AsyncIterator[str]:
    def chunk(text: str, finish: str | None = None) -> str:
        return _sse({"id": rid, "object": "text_completion", "created": created,
                     "model": req.model, "system_fingerprint": FINGERPRINT,
                     "choices": [{"index": 0, "text": text, "logprobs": None,
                                  "finish_reason": finish}]})

    done: Done | None = None
    try:
        async for event in runner.chain(first, events):
            if isinstance(event, ContentDelta):
                yield chunk(event.text)
            elif isinstance(event, Done):
                done = event
        yield chunk("", _finish_reason(done, False))
        if req.include_usage:
            yield _sse({"id": rid, "object": "text_completion", "created": created,
                        "model": req.model, "system_fingerprint": FINGERPRINT, "choices": [],
                        "usage": _usage(done)})
        yield "data: [DONE]\n\n"
    except Exception as e:  # noqa: BLE001
        yield _error_event(e)
    finally:
        await events.aclose()


# -- /v1/models ----------------------------------------------------------------------------


def _model_card(entry: Any) -> dict[str, Any]:
    return {"id": entry.name, "object": "model", "created": int(entry.modified),
            "owned_by": "chatcli"}


async def list_models(request: Request) -> Response:
    """GET /v1/models"""
    from chatcli.models import catalog

    entries = await asyncio.to_thread(catalog.entries)
    return JSONResponse({"object": "list", "data": [_model_card(e) for e in entries]})


async def get_model(request: Request) -> Response:
    """GET /v1/models/{model}"""
    from chatcli.core.names import parse_name
    from chatcli.models import catalog

    name = request.path_params["model"]
    entries = await asyncio.to_thread(catalog.entries)
    try:
        wanted = {name, parse_name(name).display}
    except ChatCliError:
        wanted = {name}
    for entry in entries:
        if entry.name in wanted:
            return JSONResponse(_model_card(entry))
    return error_response(404, f"The model '{name}' does not exist", param="model",
                          code="model_not_found")


# -- /v1/embeddings ------------------------------------------------------------------------


async def embeddings(request: Request) -> Response:
    """POST /v1/embeddings: /api/embed's unit vectors, from any model, in OpenAI's shape."""
    from chatcli.engine.embedding import embed

    body = await read_json(request)
    model = _model(body)
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("input must be a string or a non-empty list of strings", "input")
    if not all(isinstance(text, str) for text in inputs):
        raise BadRequest("input must be text: token arrays are not supported", "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("encoding_format must be 'float' or 'base64'", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or dimensions < 1):
        raise BadRequest("dimensions must be a positive integer", "dimensions")
    ref = reference(model)
    try:
        result = await asyncio.to_thread(embed, ref, inputs, dimensions=dimensions)
    except ModelNotFoundError as e:
        raise _as_named(e, ref, model) from None

    def encode(vector: list[float]) -> list[float] | str:
        if encoding == "float":
            return vector
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")

    data = [{"object": "embedding", "embedding": encode(v), "index": i}
            for i, v in enumerate(result.embeddings)]
    usage = {"prompt_tokens": result.prompt_eval_count,
             "total_tokens": result.prompt_eval_count}
    return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})


def routes() -> list[Route]:
    """The OpenAI-compatible routes, for ``serve.app.build_app``."""
    return [
        Route("/v1/chat/completions", _endpoint(chat_completions), methods=["POST"]),
        Route("/v1/completions", _endpoint(completions), methods=["POST"]),
        Route("/v1/embeddings", _endpoint(embeddings), methods=["POST"]),
        Route("/v1/models", _endpoint(list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", _endpoint(get_model), methods=["GET"]),
    ]
