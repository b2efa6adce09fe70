"""What stands between the network and the endpoints: body size limits, the Host check that
stops DNS rebinding, and which browser origins may call the API (the Origin check and CORS)."""

from __future__ import annotations

import ipaddress
import json
import re
import socket

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatcli.serve.http import HTTPError, error_body

BODY_LIMIT = 8 << 20  # JSON requests: far more than any chat needs
BLOB_LIMIT = 64 << 30  # /api/blobs uploads are model weights (GGUF files of many GB)
ORIGINS_ENV = "CHATCLI_ORIGINS"

# Browsers' origins for pages served from this machine, and local app shells (Electron's
# app://, Tauri, VS Code webviews), as Ollama allows by default.
LOCAL_ORIGINS = (
    r"https?://(localhost|127\.0\.0\.1|\[::1\]|0\.0\.0\.0)(:\d+)?",
    r"(app|tauri|vscode-webview|vscode-file)://.*",
)


async def _send_error(scope: Scope, send: Send, status: int, message: str) -> None:
    body = json.dumps(error_body(scope.get("path", ""), status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(HTTPError):
    """Raised while a body is read past its limit; a handler that catches it answers 413."""


class BodyLimit:
    """413 for a request body over the limit, whether it says its length or streams."""

    def __init__(self, app: ASGIApp, limit: int = BODY_LIMIT, blob_limit: int = BLOB_LIMIT):
        self.app, self.limit, self.blob_limit = app, limit, blob_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.blob_limit if scope["path"].startswith("/api/blobs/") else self.limit
        too_large = f"request body too large (the limit is {limit >> 20} MiB)"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_error(scope, send, 413, too_large)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(413, too_large)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await _send_error(scope, send, 413, too_large)


class HostCheck:
    """When the server listens on loopback only, answer only requests addressed to a local
    name (localhost, an IP address, this machine's name): a web page whose DNS name is
    re-pointed at 127.0.0.1 (DNS rebinding) gets 403 instead of the API."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _loopback(scope.get("server")):
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not allowed_host(host):
                await _send_error(scope, send, 403, f"host '{host}' is not allowed")
                return
        await self.app(scope, receive, send)


class OriginCheck:
    """403 for a request from a browser page whose origin is not allowed, before anything
    runs, whatever its method and path (as Ollama's CORS middleware does).

    CORS alone only hides the answer from the page: a "simple" request (a POST with
    ``Content-Type: text/plain`` needs no preflight) would still create, pull or generate.
    Requests without an ``Origin`` header (curl, the Python clients) are not browsers' and
    pass; so does a same-origin request (``Origin`` is ``scheme://Host``) to a local host
    name, i.e. a page served by a proxy in front of this server.
    """

    def __init__(self, app: ASGIApp, allowed: str) -> None:
        self.app = app
        self.allowed = re.compile(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            if origin is not None:
                text = origin.decode("latin-1")
                host = headers.get(b"host", b"").decode("latin-1")
                if not (self.allowed.fullmatch(text) or _same_origin(text, host)):
                    await _send_error(scope, send, 403,
                                      f"origin '{text}' is not allowed; add it to "
                                      f"{ORIGINS_ENV} or to [server] origins in config.toml "
                                      "to let its pages call this server")
                    return
        await self.app(scope, receive, send)


def _same_origin(origin: str, host: str) -> bool:
    return bool(host) and origin in (f"http://{host}", f"https://{host}") \
        and allowed_host(host)


def _loopback(server: tuple[str, int] | None) -> bool:
    if not server:
        return False
    try:
        return ipaddress.ip_address(server[0]).is_loopback
    except ValueError:
        return False


def allowed_host(host: str) -> bool:
    """Ollama's rule: localhost and *.localhost/.local/.internal, this machine's name, and
    loopback, private or unspecified IP addresses."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name in ("", "localhost") or name.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return name == socket.gethostname().lower()
    return ip.is_loopback or ip.is_private or ip.is_unspecified


def origin_regex(extra: str | None = None) -> str:
    """One regex for the allowed origins: the local ones plus ``CHATCLI_ORIGINS`` (comma
    separated), else ``[server] origins`` in config.toml; ``*`` matches anything, so
    ``https://*.example.com`` or ``*`` work."""
    if extra is None:
        from chatcli.core import config

        extra = ",".join(config.get("server.origins"))
    patterns = list(LOCAL_ORIGINS)
    for item in extra.split(","):
        item = item.strip().rstrip("/")
        if item:
            patterns.append(".*".join(re.escape(part) for part in item.split("*")))
    return "^(" + "|".join(patterns) + ")$"
