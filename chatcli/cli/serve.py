"""``chat serve``: Ollama's HTTP API (and an OpenAI-compatible one) on the in-process engine."""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys

import typer

from chatcli.cli.guard import Fail, guarded
from chatcli.core.hosts import DEFAULT_PORT, parse_host


def listen_address(text: str) -> tuple[str, int]:
    """Where ``chat serve`` listens for ``CHATCLI_HOST=text`` (any path is ignored)."""
    host = parse_host(text)
    return host.address, host.port or DEFAULT_PORT


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line Fail (port in use, unknown host, no permission)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise Fail(f"cannot listen on {host}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise Fail(f"port {port} on {host} is already in use (is another server running? "
                       "choose another with --port)") from None
        raise Fail(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serving_parallel(flag: int | None) -> int:
    """Parallel requests per model: --parallel (strict: a typo is an error), else
    $OLLAMA_NUM_PARALLEL or config.toml (a bad value there is a warning, and 1 is used).
    Sets it on the model cache, before any model is loaded."""
    from chatcli.core import config as user_config
    from chatcli.core.errors import ChatCliError
    from chatcli.engine.loaded import CACHE

    if flag is not None:
        try:
            n = user_config.parse_parallel(flag)
        except ChatCliError as e:
            raise Fail(f"--parallel {flag}: {e}") from None
    else:
        found = user_config.setting("server.parallel")
        try:
            n = user_config.parse_parallel(found.value)
        except ChatCliError as e:
            user_config.warn_once(f"Warning: {found.where or 'server.parallel'}={found.value!r}:"
                                  f" {e}; using 1")
            n = 1
    CACHE.parallel = n
    return n


def serve(
    host: str | None = typer.Option(None, "--host", help="Address to listen on [default: "
                                    "$CHATCLI_HOST, else [server] host in config.toml, "
                                    "else 127.0.0.1]"),
    port: int | None = typer.Option(None, "--port", help=f"Port [default: {DEFAULT_PORT}]"),
    parallel: int | None = typer.Option(
        None, "--parallel", "-np", metavar="N",
        help="Requests each model answers at once, in one batched context of N x num_ctx "
             "[default: $OLLAMA_NUM_PARALLEL, else [server] parallel in config.toml, else 1]"),
    verbose: bool = typer.Option(False, "--verbose", help="Log every request."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Serve Ollama's HTTP API (/api/chat, /api/generate, ...) and an OpenAI-compatible one
    (/v1/...) from the in-process engine, so Ollama's clients can use chatcli's models."""

    def action() -> None:
        import uvicorn

        from chatcli.core import config as user_config
        from chatcli.serve.app import build_app

        # --host/--port, else $CHATCLI_HOST, else config.toml's [server] host
        env_host, env_port = listen_address(user_config.get("server.host"))
        address = host or env_host
        number = port if port is not None else env_port
        if not 0 <= number < 65536:
            raise Fail(f"--port {number}: the port must be a number from 1 to 65535")
        slots = serving_parallel(parallel)
        sock = bind(address, number)
        number = sock.getsockname()[1]
        shown = f"[{address}]" if ":" in address else address
        if not is_loopback(address):
            typer.echo(f"Warning: listening on {shown}, not loopback: anyone who can reach "
                       "this machine can use its models", err=True)
        at_once = f"; {slots} requests per model at once" if slots > 1 else ""
        typer.echo(f"chatcli is serving on http://{shown}:{number}{at_once} (Ctrl+C to stop)",
                   err=True)
        config = uvicorn.Config(
            build_app(), log_level="info" if verbose else "warning", access_log=verbose,
            lifespan="off", timeout_graceful_shutdown=3, server_header=False,
        )
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:
            pass  # uvicorn re-raises the Ctrl+C it shut down for; for a server it is success

    code = guarded(debug, action)
    sys.stderr.flush()
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``chat`` app."""
    app.command()(serve)
