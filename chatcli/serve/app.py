"""The server's ASGI app: Ollama's API, the OpenAI-compatible one, and what guards both."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from . import ollama_api, openai_api
from .http import error_response
from .middleware import BodyLimit, HostCheck, origin_regex

BANNER = "chatcli is running"


async def root(request: Request) -> Response:
    """``GET /``: what Ollama's clients probe to see whether a server is up."""
    return PlainTextResponse(BANNER)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own 404/405 (no such route, wrong method), in the API's error shape.
    assert isinstance(exc, HTTPException)
    message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, exc.detail)
    return JSONResponse({"error": f"{message}: {request.method} {request.url.path}"},
                        status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    return error_response(exc)  # a 500 with no traceback; the log has it


def build_app() -> Starlette:
    """The Starlette app ``chat serve`` runs.

    Browsers may call it only from local origins (plus ``CHATCLI_ORIGINS``), read when the app
    is built; bodies are limited in size; a loopback-only server answers local Host names only.
    """
    routes = [Route("/", root, methods=["GET", "HEAD"]), *ollama_api.routes(),
              *openai_api.routes()]
    middleware = [
        Middleware(CORSMiddleware, allow_origin_regex=origin_regex(),
                   allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                   allow_headers=["*"]),
        Middleware(HostCheck),
        Middleware(BodyLimit),
    ]
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={HTTPException: _http_error, Exception: _unexpected})
