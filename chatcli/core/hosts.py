"""Server addresses in ``OLLAMA_HOST``'s forms, read alike by ``chat serve`` (where to listen)
and ``chat --host`` (where to connect), both from ``CHATCLI_HOST``.

``host``, ``host:port``, ``:port``, ``[::1]:port``, ``http://host[:port]``,
``https://host[:port]``, with an optional path.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatcli.core.errors import ChatCliError

HOST_ENV = "CHATCLI_HOST"
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 11434  # Ollama's


@dataclass(frozen=True)
class Host:
    scheme: str  # "http" or "https"
    address: str  # without brackets; 127.0.0.1 when none was given
    port: int | None  # None when none was given
    path: str  # without surrounding slashes


def parse_host(text: str) -> Host:
    """Parse a server address; ChatCliError names what is wrong with it."""
    raw = text.strip()
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "http", raw
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ChatCliError(f"invalid host {text!r}: use host:port or an http(s):// URL")
    hostport, _, path = rest.partition("/")
    address, port = hostport, None
    if hostport.startswith("["):  # [::1]:8080
        address, _, tail = hostport[1:].partition("]")
        if tail.startswith(":"):
            port = _port(tail[1:], text)
    elif hostport.count(":") == 1:
        address, _, number = hostport.partition(":")
        port = _port(number, text)
    return Host(scheme, address or DEFAULT_ADDRESS, port, path.strip("/"))


def host_url(text: str) -> str:
    """A server address as a client's base URL. The port defaults to 11434, where ``chat
    serve`` listens, or for https to 443 (chatcli serves no TLS, so https means a proxy in
    front of the server)."""
    host = parse_host(text)
    port = host.port or (DEFAULT_PORT if host.scheme == "http" else 443)
    shown = f"[{host.address}]" if ":" in host.address else host.address
    return f"{host.scheme}://{shown}:{port}" + (f"/{host.path}" if host.path else "")


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ChatCliError(f"invalid port in host {whole!r}: use a number from 1 to 65535")
    return int(text)
