"""Ollama's HTTP API (``/api/...``) on the in-process engine.

Requests and responses have Ollama's fields, so Ollama's clients work unchanged. Answers stream
as NDJSON by default (``"stream": false`` gives one object). Errors are ``{"error": "..."}``
with a status; once a stream has begun, an error is its last line instead. The server accepts
model names only, never file paths.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chatcli import __version__
from chatcli.client.accumulate import Accumulator
from chatcli.core import options as opts_mod
from chatcli.core.errors import ModelNotFoundError, NotSupportedError, RequestError
from chatcli.core.events import ContentDelta, Done, Event, ThinkingDelta, ToolCall
from chatcli.core.keepalive import parse_keep_alive
from chatcli.core.messages import check_messages, check_think
from chatcli.core.names import parse_digest
from chatcli.models.resolve import resolve
from chatcli.serve import facts, runner
from chatcli.serve.http import (
    HTTPError,
    NDJSONResponse,
    error_line,
    error_response,
    field,
    model_field,
    ndjson_line,
    read_json,
    reference,
    until_disconnect,
)

_END = object()


def routes() -> list[Route]:
    """The /api/... routes."""
    return [
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/embed", embed, methods=["POST"]),
        Route("/api/embeddings", embeddings, methods=["POST"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/api/pull", pull, methods=["POST"]),
        Route("/api/push", push, methods=["POST"]),
        Route("/api/delete", delete, methods=["DELETE"]),
        Route("/api/copy", copy, methods=["POST"]),
        Route("/api/create", create, methods=["POST"]),
        Route("/api/blobs/{digest}", blob_exists, methods=["HEAD"]),
        Route("/api/blobs/{digest}", blob_upload, methods=["POST"]),
    ]


def endpoint(handler: Callable[[Request], Awaitable[Response]]):
    """Errors raised before a response starts become ``{"error": ...}`` with their status."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as e:
            return error_response(e)

    return wrapped


def not_found(name: str) -> HTTPError:
    return HTTPError(404, f'model "{name}" not found, try pulling it first')


async def lookup(name: str):
    """Resolve a request's model name (404 in Ollama's words if there is no such model)."""
    try:
        return await asyncio.to_thread(resolve, reference(name))
    except ModelNotFoundError:
        raise not_found(name) from None


# -- request fields ----------------------------------------------------------------------------


def _name_field(body: Mapping[str, Any]) -> str:
    """``model``, or the older clients' ``name``."""
    return model_field(body, "model" if body.get("model") is not None or "name" not in body
                       else "name")


def _generation(body: Mapping[str, Any]) -> dict[str, Any]:
    """options, format, think and keep_alive, checked (400 on a bad value)."""
    options = opts_mod.accept(field(body, "options", dict)).options
    fmt = body.get("format")
    if fmt == "":
        fmt = None
    if fmt is not None and fmt != "json" and not isinstance(fmt, dict):
        raise HTTPError(400, "'format' must be \"json\" or a JSON schema object")
    think = check_think(body.get("think"))
    keep_alive = body.get("keep_alive")
    parse_keep_alive(keep_alive)  # 400 now rather than after the answer
    return {"options": options, "format": fmt, "think": think, "keep_alive": keep_alive}


def _images(value: Any, where: str) -> list[bytes]:
    """Base64 images, decoded here: a request's strings are never read as file paths."""
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise HTTPError(400, f"{where}: images must be a list of base64 strings")
    from chatcli.core.images import decode_base64_image

    try:
        return [decode_base64_image(text) for text in value]
    except RequestError as e:
        raise HTTPError(400, f"{where}: {e} (chatcli takes image bytes only, never paths or "
                             "URLs)") from None


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = field(body, "messages", list, [])
    messages = check_messages(raw)
    for i, message in enumerate(messages):
        if "images" in message:
            message["images"] = _images(message["images"], f"message {i}")
    return messages


# -- /api/chat and /api/generate ---------------------------------------------------------------


def _metrics(done: Done) -> dict[str, Any]:
    """The final object's fields: ``prompt_eval_count`` is the whole prompt (the seed's
    meaning), ``prompt_cached_count`` (chatcli's) how many of its tokens the KV cache held."""
    return {"done": True, "done_reason": done.done_reason, **asdict(done.metrics)}


def _tool_call(event: ToolCall, index: int) -> dict[str, Any]:
    """Ollama's tool call: its id, and its position among the answer's calls."""
    return {"id": event.id,
            "function": {"index": index, "name": event.name, "arguments": event.arguments}}


class _ChatShape:
    """Events as /api/chat's objects."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.calls = 0  # tool calls streamed so far: the next one's index

    def chunk(self, event: Event) -> dict[str, Any] | None:
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if isinstance(event, ContentDelta):
            message["content"] = event.text
        elif isinstance(event, ThinkingDelta):
            message["thinking"] = event.text
        elif isinstance(event, ToolCall):
            message["tool_calls"] = [_tool_call(event, self.calls)]
            self.calls += 1
        else:
            return None
        return {"model": self.model, "created_at": facts.now(), "message": message,
                "done": False}

    def final(self, done: Done, answer: Accumulator | None = None) -> dict[str, Any]:
        """The last object: the metrics, and ``answer`` (none after a stream of chunks)."""
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if answer is not None:
            message["content"] = answer.content
            if answer.thinking:
                message["thinking"] = answer.thinking
            if answer.tool_calls:
                message["tool_calls"] = [_tool_call(c, i) for i, c in enumerate(answer.tool_calls)]
        return {"model": self.model, "created_at": facts.now(), "message": message,
                **_metrics(done)}


class _GenerateShape(_ChatShape):
    """Events as /api/generate's objects: ``response`` (and ``thinking``) instead of a
    message; the final object carries ``context``, the tokens a next request continues from."""

    def chunk(self, event: Event) -> dict[str, Any] | None:
        out: dict[str, Any] = {"model": self.model, "created_at": facts.now(), "response": ""}
        if isinstance(event, ContentDelta):
            out["response"] = event.text
        elif isinstance(event, ThinkingDelta):
            out["thinking"] = event.text
        else:
            return None
        return {**out, "done": False}

    def final(self, done: Done, answer: Accumulator | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": facts.now(),
                               "response": answer.content if answer is not None else ""}
        if answer is not None and answer.thinking:
            out["thinking"] = answer.thinking
        if done.context is not None:
            out["context"] = done.context
        return {**out, **_metrics(done)}


async def _respond(request: Request, events: AsyncGenerator[Event, None], shape: _ChatShape,
                   stream: bool) -> Response:
    """Answer with the events: NDJSON lines as they come, or one object at the end.

    The first event is awaited before anything is sent, so that a bad model or option still
    gets its status code. Closing ``events`` (done in every path) stops the generation.
    """
    try:
        first = await events.__anext__()
    except BaseException:
        await events.aclose()
        raise
    if not stream:
        answer = await until_disconnect(request, runner.collect(first, events))
        if answer.done is None:  # the engine always ends with Done unless it raised
            raise HTTPError(500, "the answer ended before it was complete")
        return JSONResponse(shape.final(answer.done, answer))

    async def lines() -> AsyncIterator[bytes]:
        try:
            event = first
            while True:
                if isinstance(event, Done):
                    yield ndjson_line(shape.final(event))
                    return
                chunk = shape.chunk(event)
                if chunk is not None:
                    yield ndjson_line(chunk)
                event = await events.__anext__()
        except StopAsyncIteration:
            return
        except Exception as e:
            yield error_line(e)
        finally:
            await events.aclose()

    return NDJSONResponse(lines())


async def _load_or_unload(name: str, gen: Mapping[str, Any], shape: _ChatShape) -> Response:
    """An empty request: load the model (keep_alive as given), or unload it (keep_alive 0)."""
    ref = reference(name)
    try:
        if parse_keep_alive(gen["keep_alive"]) == 0:
            await asyncio.to_thread(runner.unload, ref)
            reason = "unload"
        else:
            await runner.load(ref, gen["options"], gen["keep_alive"])
            reason = "load"
    except ModelNotFoundError:
        raise not_found(name) from None
    out = shape.final(Done(done_reason=reason))
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_cached_count",
                "prompt_eval_duration", "eval_count", "eval_duration"):
        del out[key]
    return JSONResponse(out)


def _answer(name: str, messages: list[dict[str, Any]], gen: Mapping[str, Any],
            **request: Any) -> AsyncGenerator[Event, None]:
    async def events() -> AsyncGenerator[Event, None]:
        source = runner.answer(reference(name), messages, gen["options"],
                               keep_alive=gen["keep_alive"], format=gen["format"],
                               think=gen["think"], **request)
        try:
            async for event in source:
                yield event
        except ModelNotFoundError:
            raise not_found(name) from None
        finally:
            await source.aclose()

    return events()


@endpoint
async def chat(request: Request) -> Response:
    """POST /api/chat: the next message of a conversation."""
    body = await read_json(request)
    name = _name_field(body)
    messages = _messages(body)
    gen = _generation(body)
    tools = field(body, "tools", list)
    stream = field(body, "stream", bool, True)
    shape = _ChatShape(name)
    if not messages:
        return await _load_or_unload(name, gen, shape)
    events = _answer(name, messages, gen, tools=tools or None)
    return await _respond(request, events, shape, stream)


@endpoint
async def generate(request: Request) -> Response:
    """POST /api/generate: a completion for one prompt (a one-message chat unless raw)."""
    body = await read_json(request)
    name = _name_field(body)
    prompt = field(body, "prompt", str, "")
    suffix = field(body, "suffix", str, "")
    system = field(body, "system", str)
    raw = field(body, "raw", bool, False)
    images = _images(body["images"], "request") if body.get("images") is not None else []
    gen = _generation(body)
    stream = field(body, "stream", bool, True)
    template = field(body, "template", str, "")
    # The token array an earlier answer returned: the prompt continues it (ids checked by
    # the engine against the model's vocabulary).
    context = field(body, "context", list)
    extra: dict[str, Any] = {"context": context} if context else {}
    shape = _GenerateShape(name)
    if not prompt and not images:
        return await _load_or_unload(name, gen, shape)
    if (raw or template or suffix) and images:
        raise NotSupportedError("images are not supported with raw, template or suffix")
    if template and not raw:
        resolved = await lookup(name)
        text = _go_template(template, prompt=prompt, suffix=suffix,
                            system=system if system is not None else resolved.system or "")
        events = _answer(name, [], gen, raw=text, **extra)
    elif suffix:  # fill-in-the-middle with the model's FIM tokens (400 if it has none)
        events = _answer(name, [], gen, raw=prompt, suffix=suffix, **extra)
    elif raw:
        events = _answer(name, [], gen, raw=prompt, **extra)
    else:
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system \
            else []
        user: dict[str, Any] = {"role": "user", "content": prompt}
        if images:
            user["images"] = images
        events = _answer(name, [*messages, user], gen, **extra)
    return await _respond(request, events, shape, stream)


_GO_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.DOTALL)
_GO_FIELDS = (".Prompt", ".System", ".Suffix", ".Response")


def _go_template(template: str, *, prompt: str, system: str, suffix: str) -> str:
    """A request's ``template`` (Go template syntax in Ollama) filled in, for the templates
    chatcli can honour without running Go: text with ``{{ .Prompt }}``, ``{{ .System }}``,
    ``{{ .Suffix }}`` and ``{{ .Response }}`` (empty) in it, trim markers (``{{-``/``-}}``)
    and comments. Anything else (``if``, ``range``, ``.Messages``...) is a 400."""
    values = {".Prompt": prompt, ".System": system, ".Suffix": suffix, ".Response": ""}
    out: list[str] = []
    at = 0
    used: set[str] = set()
    for match in _GO_ACTION.finditer(template):
        text = template[at:match.start()]
        out.append(text.rstrip() if match.group(1) else text)
        action = match.group(2)
        if action.startswith("/*") and action.endswith("*/"):
            value = ""
        elif action in _GO_FIELDS:
            value = values[action]
            used.add(action)
        else:
            raise HTTPError(400, f"'template': chatcli fills in only {{{{ .System }}}}, "
                                 f"{{{{ .Prompt }}}}, {{{{ .Suffix }}}} and {{{{ .Response }}}}, "
                                 f"not {{{{ {action[:40]} }}}}; leave 'template' out to use "
                                 "the model's own chat template")
        out.append(value)
        at = match.end()
        if match.group(3):
            rest = template[at:]
            at += len(rest) - len(rest.lstrip())
    out.append(template[at:])
    if ".Prompt" not in used:
        raise HTTPError(400, "'template' must use {{ .Prompt }}")
    if suffix and ".Suffix" not in used:
        raise HTTPError(400, "'suffix' needs a 'template' that uses {{ .Suffix }}")
    return "".join(out)


# -- embeddings --------------------------------------------------------------------------------


async def _embed(run: Callable[..., Any], name: str, inputs: list[str],
                 body: Mapping[str, Any], **extra: Any):
    """``run`` (``embedding.embed`` or ``embedding.pool``) on ``inputs`` with the body's
    truncate, options and keep_alive; any model embeds, as in Ollama."""
    truncate = field(body, "truncate", bool, True)
    options = opts_mod.accept(field(body, "options", dict)).options
    keep_alive = body.get("keep_alive")
    parse_keep_alive(keep_alive)
    try:
        return await asyncio.to_thread(run, reference(name), inputs, truncate=truncate,
                                       options=options, keep_alive=keep_alive, **extra)
    except ModelNotFoundError:
        raise not_found(name) from None


@endpoint
async def embed(request: Request) -> Response:
    """POST /api/embed: one unit vector per input text, from any model."""
    from chatcli.engine.embedding import embed as run

    body = await read_json(request)
    name = _name_field(body)
    value = body.get("input", [])
    if value is None:
        value = []
    inputs = ([value] if value else []) if isinstance(value, str) else value
    if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
        raise HTTPError(400, "'input' must be a string or a list of strings")
    # 0 is Ollama's "absent" (Go's zero value); a negative number stays a 400.
    dimensions = field(body, "dimensions", int) or None
    result = await _embed(run, name, inputs, body, dimensions=dimensions)
    return JSONResponse({"model": name, "embeddings": result.embeddings,
                         "total_duration": result.total_duration,
                         "load_duration": result.load_duration,
                         "prompt_eval_count": result.prompt_eval_count})


@endpoint
async def embeddings(request: Request) -> Response:
    """POST /api/embeddings: the older, one-prompt form of /api/embed. As in Ollama, the
    vector is the model's pooled one, not normalised."""
    from chatcli.engine.embedding import pool

    body = await read_json(request)
    name = _name_field(body)
    prompt = field(body, "prompt", str, "")
    # An empty prompt loads the model and embeds nothing, as in Ollama.
    result = await _embed(pool, name, [prompt] if prompt else [], body)
    return JSONResponse({"embedding": result.embeddings[0] if result.embeddings else []})


# -- models ------------------------------------------------------------------------------------


@endpoint
async def tags(request: Request) -> Response:
    """GET /api/tags: the models chatcli can run."""
    return JSONResponse({"models": await asyncio.to_thread(facts.tags)})


@endpoint
async def show(request: Request) -> Response:
    """POST /api/show: a model's Modelfile, parameters, template, details and capabilities."""
    body = await read_json(request)
    resolved = await lookup(_name_field(body))
    return JSONResponse(await asyncio.to_thread(facts.show, resolved))


@endpoint
async def ps(request: Request) -> Response:
    """GET /api/ps: the models loaded now, and when each will be unloaded."""
    return JSONResponse({"models": await asyncio.to_thread(facts.running)})


# The Ollama release whose API chatcli's server matches: clients gate features on it (think,
# tool-call ids, embeddings' encoding_format are in 0.12.10; logprobs, which chatcli lacks,
# came in 0.12.11). chatcli's own version goes beside it.
OLLAMA_API_VERSION = "0.12.10"


@endpoint
async def version(request: Request) -> Response:
    """GET /api/version: the Ollama version whose API this server matches, and chatcli's."""
    return JSONResponse({"version": OLLAMA_API_VERSION, "chatcli_version": __version__})


class _PullStopped(Exception):
    """The client went away: the pull stops at its next progress report (resumable)."""


@endpoint
async def pull(request: Request) -> Response:
    """POST /api/pull: download a model, streaming Ollama's progress objects."""
    from chatcli.models.pull import pull as do_pull

    body = await read_json(request)
    name = _name_field(body)
    insecure = field(body, "insecure", bool, False)
    stream = field(body, "stream", bool, True)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def progress(event: dict[str, Any]) -> None:
        if stop.is_set():
            raise _PullStopped
        loop.call_soon_threadsafe(queue.put_nowait, dict(event))

    def work() -> None:
        try:
            do_pull(name, insecure=insecure, on_progress=progress)
        except BaseException as e:  # handed to the request's side
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    threading.Thread(target=work, name=f"pull-{name}", daemon=True).start()

    async def events() -> AsyncGenerator[dict[str, Any], None]:
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise _pull_error(item)
                yield item
        finally:
            stop.set()

    source = events()
    if not stream:  # any failure is an error status (500, as Ollama answers)
        try:
            async for _ in source:
                pass
        finally:
            await source.aclose()
        return JSONResponse({"status": "success"})
    # As Ollama: a failure before the first progress object still gets a status; after it (an
    # unknown model fails once "pulling manifest" is out) it is the stream's last line.
    try:
        first = await source.__anext__()
    except BaseException:
        await source.aclose()
        raise

    async def lines() -> AsyncIterator[bytes]:
        try:
            yield ndjson_line(first)
            async for item in source:
                yield ndjson_line(item)
        except Exception as e:
            yield error_line(e)
        finally:
            await source.aclose()

    return NDJSONResponse(lines())


def _pull_error(error: BaseException) -> BaseException:
    """A failed pull (unknown model, unreachable registry, bad data) is a 500 with its
    message, as Ollama answers (a 404 would also read as "no such endpoint")."""
    from chatcli.models.pull import PullError

    if isinstance(error, PullError):
        return HTTPError(500, str(error))
    return error


@endpoint
async def push(request: Request) -> Response:
    raise NotSupportedError("push is not supported: chatcli does not upload models")


def _delete(name: str) -> None:
    from chatcli.engine.loaded import CACHE
    from chatcli.models.manage import remove_model

    reference(name)  # a model name, never a path
    try:
        removed = remove_model(name)
    except ModelNotFoundError:
        raise HTTPError(404, f'model "{name}" not found') from None
    for entry in CACHE.loaded():
        if entry.model.name == removed.display:
            CACHE.release_now(entry)


@endpoint
async def delete(request: Request) -> Response:
    """DELETE /api/delete: remove a model from chatcli's store."""
    body = await read_json(request)
    await asyncio.to_thread(_delete, _name_field(body))
    return Response(status_code=200)


def _copy(source: str, destination: str) -> None:
    from chatcli.models.manage import copy_model

    try:
        copy_model(reference(source), reference(destination))
    except ModelNotFoundError:
        raise not_found(source) from None


@endpoint
async def copy(request: Request) -> Response:
    """POST /api/copy: a second name for a model (its blobs are shared)."""
    body = await read_json(request)
    source, destination = model_field(body, "source"), model_field(body, "destination")
    await asyncio.to_thread(_copy, source, destination)
    return Response(status_code=200)


def _create(name: str, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Register the model a /api/create body describes; returns the statuses to report."""
    from chatcli.models.modelfile import Modelfile
    from chatcli.models.modelfile import create as do_create
    from chatcli.models.store import local_store

    if field(body, "quantize", str):
        raise NotSupportedError("quantize is not supported: create from a GGUF file that is "
                                "already quantized")
    if field(body, "adapters", dict):
        raise NotSupportedError("adapters (LoRA) are not supported yet")
    store = local_store()
    base = field(body, "from", str, "")
    files = field(body, "files", dict, {})
    if files:
        base = str(_uploaded_gguf(store, files))
    elif base:
        base = reference(base)
    else:
        raise HTTPError(400, "give 'from' (a model name) or 'files' (an uploaded GGUF blob)")
    license = body.get("license")
    licenses = [license] if isinstance(license, str) else license or []
    if not isinstance(licenses, list) or not all(isinstance(x, str) for x in licenses):
        raise HTTPError(400, "'license' must be a string or a list of strings")
    messages = check_messages(field(body, "messages", list, []))
    modelfile = Modelfile(
        base=base,
        parameters=opts_mod.accept(field(body, "parameters", dict)).options,
        system=field(body, "system", str),
        template=field(body, "template", str),
        messages=[{"role": m["role"], "content": m["content"]} for m in messages],
        licenses=licenses,
        directory=store.root,
    )
    before = set(os.listdir(store.blobs)) if store.blobs.is_dir() else set()
    try:
        created = do_create(reference(name), modelfile, store)
    except ModelNotFoundError:
        raise not_found(field(body, "from", str, "")) from None
    manifest = store.read_manifest(created)
    statuses = []
    for layer in manifest.layers if manifest else ():
        blob = layer.digest.replace(":", "-")
        verb = "using existing" if blob in before else "creating new"
        statuses.append({"status": f"{verb} layer {layer.digest}"})
    return [*statuses, {"status": "writing manifest"}, {"status": "success"}]


def _uploaded_gguf(store, files: Mapping[str, Any]):
    """The one GGUF blob a create request names in ``files`` (uploaded to /api/blobs)."""
    ggufs = {k: v for k, v in files.items() if k.lower().endswith(".gguf")}
    if len(ggufs) != 1 or len(files) != 1:
        raise NotSupportedError("'files' must name exactly one GGUF file (safetensors, "
                                "adapters and separate projectors are not supported)")
    (filename, digest), = ggufs.items()
    if not isinstance(digest, str):
        raise HTTPError(400, f"files: the digest of {filename} must be a string")
    path = store.blob_path(digest)
    if not path.is_file():
        raise HTTPError(400, f"blob {digest} for {filename} is not on the server; upload it "
                             "first with POST /api/blobs/" + digest)
    return path


@endpoint
async def create(request: Request) -> Response:
    """POST /api/create: a model from another model or an uploaded GGUF, plus system prompt,
    template, parameters, messages and license."""
    body = await read_json(request)
    name = _name_field(body)
    stream = field(body, "stream", bool, True)
    statuses = await asyncio.to_thread(_create, name, body)
    if not stream:
        return JSONResponse(statuses[-1])

    async def lines() -> AsyncIterator[bytes]:
        for status in statuses:
            yield ndjson_line(status)

    return NDJSONResponse(lines())


# -- blobs -------------------------------------------------------------------------------------


def _digest(request: Request) -> str:
    """The path's digest as ``sha256:<hex>`` (400 unless it is exactly that)."""
    return "sha256:" + parse_digest(request.path_params["digest"])


@endpoint
async def blob_exists(request: Request) -> Response:
    """HEAD /api/blobs/sha256:<hex>: 200 if chatcli's store has the blob, else 404."""
    from chatcli.models.store import local_store

    found = local_store().has_blob(_digest(request))
    return Response(status_code=200 if found else 404)


@endpoint
async def blob_upload(request: Request) -> Response:
    """POST /api/blobs/sha256:<hex>: store the body as a blob, checking its sha256 as it
    streams in (201; 400 if the body does not match the digest)."""
    from chatcli.models.store import local_store

    digest = _digest(request)
    store = local_store()
    if store.has_blob(digest):
        return Response(status_code=200)
    store.blobs.mkdir(parents=True, exist_ok=True)
    partial = store.blobs / f".upload-{uuid.uuid4().hex}-partial"
    h = hashlib.sha256()
    try:
        with open(partial, "wb") as f:
            async for chunk in request.stream():
                h.update(chunk)
                f.write(chunk)
        if "sha256:" + h.hexdigest() != digest:
            raise HTTPError(400, f"digest mismatch: the body's sha256 is {h.hexdigest()}, "
                                 f"not {digest.removeprefix('sha256:')}")
        os.replace(partial, store.blob_path(digest))
    finally:
        partial.unlink(missing_ok=True)
    return Response(status_code=201)

