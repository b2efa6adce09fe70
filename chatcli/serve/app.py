"""The server's ASGI app: Ollama's API, the OpenAI-compatible one, and what guards both."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from chatcli.serve import ollama_api, openai_api
from chatcli.serve.http import error_body, message_for, status_for
from chatcli.serve.middleware import BodyLimit, HostCheck, OriginCheck, origin_regex

BANNER = "chatcli is running"


async def root(request: Request) -> Response:
    """``GET /``: what Ollama's clients probe to see whether a server is up."""
    return PlainTextResponse(BANNER)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own 404/405 (no such route, wrong method), in the API's error shape.
    assert isinstance(exc, HTTPException)
    # Under /v1/ in OpenAI's error object, so OpenAI's clients raise NotFoundError.
    message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, exc.detail)
    body = error_body(request.url.path, exc.status_code,
                      f"{message}: {request.method} {request.url.path}")
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # A 500 with no traceback (the log has it), in the shape the path's clients read.
    status = status_for(exc)
    return JSONResponse(error_body(request.url.path, status, message_for(exc)),
                        status_code=status)


def build_app() -> Starlette:
    """The Starlette app ``chat serve`` runs.

    Browsers may call it only from local origins (plus ``CHATCLI_ORIGINS``), read when the app
    is built: any other ``Origin`` gets 403 before anything runs; bodies are limited in size; a
    loopback-only server answers local Host names only.
    """
    routes = [Route("/", root, methods=["GET", "HEAD"]), *ollama_api.routes(),
              *openai_api.routes()]
    allowed = origin_regex()
    middleware = [
        Middleware(OriginCheck, allowed=allowed),
        Middleware(CORSMiddleware, allow_origin_regex=allowed,
                   allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                   allow_headers=["*"]),
        Middleware(HostCheck),
        Middleware(BodyLimit),
    ]
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={HTTPException: _http_error, Exception: _unexpected})
