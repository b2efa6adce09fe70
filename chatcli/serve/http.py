"""HTTP plumbing shared by the server's endpoints: JSON bodies, error statuses, NDJSON streams.

Every error a client can cause becomes ``{"error": "..."}`` with a status chosen from the
exception's type; anything else is a 500 whose message names no file and holds no traceback
(the traceback goes to the server's log).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from chatcli.core import textclean
from chatcli.core.errors import ChatCliError, ModelLoadError, ModelNotFoundError

log = logging.getLogger("chatcli.serve")
T = TypeVar("T")

NDJSON = "application/x-ndjson"


class HTTPError(ChatCliError):
    """An error with the HTTP status to answer it with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_for(error: BaseException) -> int:
    """The HTTP status for an exception raised while serving a request: 404 for a missing
    model, 500 for a model llama.cpp cannot load or an unexpected failure, 400 for the other
    errors a client can cause (bad fields, options, names, formats, unsupported requests)."""
    if isinstance(error, HTTPError):
        return error.status
    if isinstance(error, ModelNotFoundError):
        return 404
    if isinstance(error, ModelLoadError):
        return 500
    if isinstance(error, ChatCliError):
        return 400
    return 500


def message_for(error: BaseException) -> str:
    """What the client reads: our own errors' messages; nothing internal for the rest. Neither
    names a directory of this machine (see ``redact``)."""
    if isinstance(error, ChatCliError):
        return redact(str(error))
    if isinstance(error, RuntimeError):  # llama.cpp's failures surface as RuntimeError
        return redact(f"llama.cpp failed while answering: {error}")
    log.error("unexpected error while serving a request", exc_info=error)
    return f"internal error ({type(error).__name__}); see the server's log"


def redact(text: str) -> str:
    """``text`` with the server's directories in place of their paths: ``<models>`` (chatcli's
    store), ``<ollama-models>``, ``<bundled>`` (the bundled model's directory) and ``~`` (the
    home directory), so that an error about a bad model file tells the client which file, not
    where the store is or whose account runs the server."""
    from chatcli.core.paths import models_dir
    from chatcli.models.resolve import bundled_model_path

    ollama = os.environ.get("OLLAMA_MODELS")
    bundled = bundled_model_path()
    places = [(models_dir(), "<models>"),
              (Path(ollama).expanduser() if ollama else Path.home() / ".ollama" / "models",
               "<ollama-models>"),
              *([(bundled.parent, "<bundled>")] if bundled is not None else []),
              (Path.home(), "~")]
    names: dict[str, str] = {}
    for path, name in places:
        for form in (str(path), str(path.resolve())):
            if len(form) > 1:  # never "/"
                names.setdefault(form, name)
    for form in sorted(names, key=len, reverse=True):  # the most specific first
        text = text.replace(form, names[form])
    return text


def error_response(error: BaseException) -> JSONResponse:
    return JSONResponse({"error": message_for(error)}, status_code=status_for(error))


OPENAI_PREFIX = "/v1/"


def openai_error(status: int, message: str, *, kind: str | None = None,
                 param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object. Its ``type`` follows the status as Ollama's OpenAI layer sets
    it: ``not_found_error`` for 404, ``invalid_request_error`` for the other 4xx,
    ``api_error`` for 5xx."""
    if kind is None:
        kind = ("not_found_error" if status == 404 else
                "invalid_request_error" if status < 500 else "api_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_body(path: str, status: int, message: str) -> dict[str, Any]:
    """An error in the shape the path's clients read: OpenAI's object under ``/v1/``,
    Ollama's ``{"error": "..."}`` everywhere else."""
    if path.startswith(OPENAI_PREFIX) or path == OPENAI_PREFIX.rstrip("/"):
        return openai_error(status, message)
    return {"error": message}


def error_line(error: BaseException) -> bytes:
    """A stream's last line once an error cuts it short (the status is already sent)."""
    return ndjson_line({"error": message_for(error)})


def ndjson_line(obj: Mapping[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object; 400 for an empty, malformed, too deeply nested or non-object
    body. Invalid UTF-8 and lone surrogates (``"\\ud800"``) in it become U+FFFD."""
    body = await request.body()
    if not body.strip():
        raise HTTPError(400, "missing request body")
    try:
        data = textclean.loads(body, what="the request body")
    except textclean.TooDeepError as e:
        raise HTTPError(400, str(e)) from None
    except ValueError as e:
        raise HTTPError(400, f"invalid JSON in request body: {e}") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    return data


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that closes its body iterator however the response ends: when the
    client goes away in the middle, Starlette abandons the iterator, and only closing it stops
    the model's work."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


class NDJSONResponse(ClosingStreamingResponse):
    """A stream of JSON lines, closed as ``ClosingStreamingResponse`` is."""

    media_type = NDJSON

    def __init__(self, lines: AsyncIterator[bytes], status_code: int = 200) -> None:
        super().__init__(lines, status_code=status_code, media_type=NDJSON)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client hangs up first (which stops its model's
    work: loading aside, a long prompt is abandoned within a graph node); then HTTPError 499."""
    task = asyncio.ensure_future(work)

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            # cancel() only asks: wait until the work has stopped (and so closed its events,
            # which frees the model); reading its result before then raises InvalidStateError.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise HTTPError(499, "the client closed the connection")
    return task.result()


# -- request fields ----------------------------------------------------------------------------


def field(body: Mapping[str, Any], name: str, kinds: type | tuple[type, ...],
          default: Any = None) -> Any:
    """``body[name]`` if it is of one of ``kinds`` (null counts as absent); 400 otherwise."""
    value = body.get(name)
    if value is None:
        return default
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = {bool: "a boolean", str: "a string", int: "a number", float: "a number",
                 list: "a list", dict: "an object"}
        wanted = " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))
        raise HTTPError(400, f"'{name}' must be {wanted}")
    return value


def model_field(body: Mapping[str, Any], name: str = "model") -> str:
    """The model name a request gives in ``name``; 400 if missing, not a name, or a path."""
    value = field(body, name, str, "")
    if not value.strip():
        raise HTTPError(400, f"'{name}' is required")
    reference(value)
    return value.strip()


def reference(name: str) -> str:
    """The fully qualified form of a model name (``host/namespace/model:tag``), which the
    lookup functions can only read as a name, never as a file path.

    The server serves names only: a request must not make it open files, so anything that
    looks like a path is refused (400) rather than resolved.
    """
    from chatcli.core.names import looks_like_path, parse_name

    text = name.strip()
    if looks_like_path(text) or "\\" in text:
        raise HTTPError(400, f"invalid model name '{text}': the server takes model names, "
                             "not file paths (import a GGUF file with /api/create)")
    parsed = parse_name(text)
    return "/".join(parsed.parts[:3]) + ":" + parsed.tag
