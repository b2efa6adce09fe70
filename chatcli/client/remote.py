"""Answers from a server: ``chat run --host URL`` talks to ``chat serve`` or to Ollama.

``RemoteClient`` has LocalClient's interface (``resolve``, ``chat``, ``show``), so the session,
REPL, renderer and slash commands work unchanged while the model runs on another machine.
It speaks Ollama's HTTP API: ``/api/chat`` streamed as NDJSON, ``/api/show`` for facts,
``/api/tags`` for ``chat list --host``.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from chatcli.client.interface import ChatClient
from chatcli.core import options as opts_mod
from chatcli.core.errors import ChatCliError, ModelNotFoundError, NotSupportedError, RequestError
from chatcli.core.events import ContentDelta, Done, Event, Metrics, ThinkingDelta, ToolCall, Trimmed
from chatcli.core.hosts import host_url
from chatcli.core.textclean import TooDeepError, loads
from chatcli.models.modelinfo import human_count
from chatcli.models.resolve import ResolvedModel


@dataclass(frozen=True)
class ServerModel:
    """One model a server lists (``chat list --host``); None where its protocol does not say."""

    name: str
    id: str | None = None
    size: int | None = None  # bytes
    modified: float | None = None  # seconds since the epoch


class RemoteClient(ChatClient):
    """LocalClient's interface over an Ollama-compatible HTTP API."""

    def __init__(self, base_url: str, *, connect_timeout: float = 10.0) -> None:
        self.base_url = host_url(base_url)
        self._http = http_client(self.base_url, connect_timeout)

    def close(self) -> None:
        self._http.close()

    # -- the client interface --------------------------------------------------------------

    def resolve(self, name: str) -> ResolvedModel:
        """Check the server has ``name``; ModelNotFoundError naming it if not."""
        self._show(name)
        return remote_model(name)

    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
        *,
        format: Any = None,
        think: Any = None,
        tools: Any = None,
        cancel: threading.Event | None = None,
        projector: Path | None = None,
    ) -> Iterator[Event]:
        """Stream the server's answer as chatcli events. Setting ``cancel`` closes the
        connection, which stops the generation on the server."""
        refuse_projector(projector)
        body: dict[str, Any] = {"model": model, "stream": True,
                                "messages": [_wire_message(m) for m in messages]}
        if options:
            body["options"] = dict(options)
        if format is not None:
            body["format"] = format
        if think is not None:
            body["think"] = think
        if tools:
            from chatcli.engine.output.tools import normalize_tools

            body["tools"] = normalize_tools(tools)
        cancel = cancel or threading.Event()
        yield from post_stream(self._http, "/api/chat", body, cancel,
                               lambda response: self._events(response, cancel, len(messages)),
                               lambda response: self._error(response, model), self._unreachable)

    def show(self, model: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Model facts for /show, as LocalClient.show gives them, from /api/show."""
        data = self._show(model)
        info = data.get("model_info") or {}
        details = data.get("details") or {}
        arch = info.get("general.architecture") or details.get("family") or "unknown"
        count = info.get("general.parameter_count")
        template = data.get("template") or ""
        return {
            "architecture": arch,
            "parameters": human_count(count) if isinstance(count, int) and count > 0
            else details.get("parameter_size") or "?",
            "context length": info.get(f"{arch}.context_length", "?"),
            "embedding length": info.get(f"{arch}.embedding_length", "?"),
            "quantization": details.get("quantization_level") or "unknown",
            "capabilities": list(data.get("capabilities") or ["completion"]),
            "template": template,
            "template_is_fallback": not template,
            "system": data.get("system") or "",
            "license": _text(data.get("license")),
            "model_options": parse_parameters(data.get("parameters") or ""),
            "name": model,
            "path": f"remote: {self.base_url}",
        }

    def save_state(self, model: str, *, background: bool = False) -> bool:
        """Nothing to do: the server keeps its own KV cache."""
        return False

    def list_models(self) -> list[ServerModel]:
        """The server's models (``GET /api/tags``), newest first as the server gives them."""
        models = get_list(self, "/api/tags", "models", "an Ollama server", missing=(
            f"{self.base_url} has no /api/tags: is it Ollama or `chat serve`? (--api openai "
            "for an OpenAI-compatible server)"))
        return [_server_model(m) for m in models
                if isinstance(m, dict) and isinstance(m.get("name") or m.get("model"), str)]

    # -- internals -------------------------------------------------------------------------

    def _show(self, model: str) -> dict[str, Any]:
        try:
            response = self._http.post("/api/show", json={"model": model.strip()})
        except httpx.HTTPError as e:
            raise self._unreachable(e) from None
        if response.status_code != 200:
            raise self._error(response, model)
        try:
            return response.json()
        except ValueError:
            raise ChatCliError(f"{self.base_url} did not answer like an Ollama server") \
                from None

    def _events(self, response: httpx.Response, cancel: threading.Event,
                n_messages: int) -> Iterator[Event]:
        for line in response.iter_lines():
            if cancel.is_set():
                break
            if not line.strip():
                continue
            try:
                obj = loads(line, "the server's answer")
            except ValueError:
                raise ChatCliError(f"{self.base_url} sent a line that is not JSON") from None
            if obj.get("error"):
                raise ChatCliError(f"the server failed while answering: {obj['error']}")
            yield from _message_events(obj.get("message") or {})
            if obj.get("done"):
                trimmed = int(obj.get("trimmed") or 0)
                if trimmed:
                    yield Trimmed(dropped=trimmed, kept=max(0, n_messages - trimmed))
                yield Done(done_reason=obj.get("done_reason") or "stop",
                           metrics=_metrics(obj), trimmed=trimmed)
                return
        if not cancel.is_set():
            raise ChatCliError(f"{self.base_url} ended the answer without finishing it")
        yield Done(done_reason="cancelled")

    def _error(self, response: httpx.Response, model: str) -> ChatCliError:
        try:
            message = str(response.json().get("error") or "")
        except (ValueError, AttributeError):
            message = ""
        if response.status_code == 404:
            return ModelNotFoundError(message or f"model '{model}' not found on "
                                                 f"{self.base_url}")
        if response.status_code == 400:
            return RequestError(message or "the server refused the request (400)")
        return ChatCliError(f"{self.base_url} answered {response.status_code}"
                            + (f": {message}" if message else ""))

    def _unreachable(self, e: httpx.HTTPError) -> ChatCliError:
        if isinstance(e, httpx.ConnectError):
            return ChatCliError(f"could not connect to {self.base_url}: is `chat serve` (or "
                                "ollama) running there?")
        if isinstance(e, httpx.TimeoutException):
            return ChatCliError(f"{self.base_url} did not answer in time")
        return ChatCliError(f"lost the connection to {self.base_url} ({type(e).__name__})")


def http_client(base_url: str, connect_timeout: float,
                headers: Mapping[str, str] | None = None) -> httpx.Client:
    """An HTTP client for a chat server. No read timeout: a model may take long to load, and
    the user can always press Ctrl+C. No idle connections: ``Connection`` hangs up each
    request's own socket on cancel."""
    return httpx.Client(base_url=base_url, headers=dict(headers or {}), trust_env=False,
                        timeout=httpx.Timeout(connect_timeout, read=None),
                        limits=httpx.Limits(max_keepalive_connections=0))


def refuse_projector(projector: Path | None) -> None:
    if projector is not None:
        raise NotSupportedError("--mmproj works with local models only; on a server, use "
                                "a model that has its vision projector")


def remote_model(name: str) -> ResolvedModel:
    """What ``resolve`` gives for a model a server has: its name (no local file)."""
    return ResolvedModel(name=name.strip(), path=Path(name.strip()), source="remote")


def get_list(client: Any, path: str, key: str, kind: str, missing: str | None = None
             ) -> list[Any]:
    """``GET path`` on ``client``'s server (a RemoteClient or an OpenAIClient): the JSON list
    under ``key``, or one clear error (unreachable, an error status, ``missing`` for a 404 when
    given, or an answer not shaped like ``kind``'s)."""
    try:
        response = client._http.get(path)
    except httpx.HTTPError as e:
        raise client._unreachable(e) from None
    if response.status_code == 404 and missing is not None:
        raise ChatCliError(missing)
    if response.status_code != 200:
        raise client._error(response, "")
    try:
        found = response.json().get(key)
    except (ValueError, AttributeError):
        found = None
    if not isinstance(found, list):
        raise ChatCliError(f"{client.base_url} did not answer like {kind}")
    return found


def post_stream(
    http: httpx.Client, path: str, body: dict[str, Any], cancel: threading.Event,
    read: Callable[[httpx.Response], Iterator[Event]],
    error: Callable[[httpx.Response], ChatCliError],
    unreachable: Callable[[httpx.HTTPError], ChatCliError],
) -> Iterator[Event]:
    """POST ``body`` and yield the events ``read`` makes of the streamed response. Setting
    ``cancel`` hangs up the connection (the answer then ends "cancelled"); a status other
    than 200 raises ``error(response)``, a failed connection ``unreachable(e)``."""
    connection = Connection(cancel)
    try:
        with http.stream("POST", path, json=body,
                         extensions={"trace": connection.trace}) as response:
            if response.status_code != 200:
                response.read()
                raise error(response)
            yield from read(response)
    except httpx.HTTPError as e:
        if cancel.is_set():
            yield Done(done_reason="cancelled")
            return
        raise unreachable(e) from None
    finally:
        connection.finished.set()


class Connection:
    """Hangs up one request's connection when ``cancel`` is set.

    The reading thread may be blocked waiting for the server (a model loading, a long prompt
    being read, even before the response's headers), and only shutting the socket down wakes
    it; the server then sees the disconnect and stops generating. httpx's ``trace`` extension
    hands over the new connection's stream; the client keeps no idle connections, so every
    request makes a new one.
    """

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel
        self.finished = threading.Event()
        self._socket: socket.socket | None = None
        threading.Thread(target=self._watch, daemon=True).start()

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        if event == "connection.connect_tcp.complete" and info.get("return_value") is not None:
            self._socket = info["return_value"].get_extra_info("socket")

    def _watch(self) -> None:
        while not self.finished.wait(0.05):
            if self.cancel.is_set() and self._socket is not None:
                try:
                    self._socket.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return


def _wire_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """A session message as Ollama's API takes it: images as base64, the rest as it is."""
    from chatcli.core.images import load_image

    out = {k: v for k, v in message.items() if k != "images"}
    images = message.get("images")
    if images:
        out["images"] = [base64.b64encode(load_image(i)).decode("ascii") for i in images]
    return out


def _message_events(message: Mapping[str, Any]) -> Iterator[Event]:
    if message.get("thinking"):
        yield ThinkingDelta(message["thinking"])
    if message.get("content"):
        yield ContentDelta(message["content"])
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = loads(arguments, "the tool call's arguments")
            except (ValueError, TooDeepError):
                arguments = {"arguments": arguments}
        call_id = call.get("id")
        extra = {"id": call_id} if isinstance(call_id, str) and call_id else {}
        yield ToolCall(name=str(function.get("name", "")), arguments=dict(arguments or {}),
                       **extra)


def _metrics(final: Mapping[str, Any]) -> Metrics:
    def number(key: str) -> int:
        value = final.get(key)
        return int(value) if isinstance(value, (int, float)) else 0

    return Metrics(total_duration=number("total_duration"),
                   load_duration=number("load_duration"),
                   prompt_eval_count=number("prompt_eval_count"),
                   prompt_cached_count=number("prompt_cached_count"),
                   prompt_eval_duration=number("prompt_eval_duration"),
                   eval_count=number("eval_count"),
                   eval_duration=number("eval_duration"))


def parse_parameters(text: str) -> dict[str, Any]:
    """/api/show's ``parameters`` text (``name value`` lines) as validated options; options
    chatcli does not honour (num_keep, tfs_z...) are left out, as for pulled models."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        name, _, value = line.strip().partition(" ")
        value = value.strip()
        if name not in opts_mod.SPECS or not value:
            continue
        try:
            if value.startswith('"'):  # a JSON string, escapes and all
                value = json.dumps([json.loads(value)])
            parsed = opts_mod.parse_value(name, value)
        except (ChatCliError, ValueError):
            continue
        if name == "stop":
            out.setdefault("stop", []).extend(parsed)
        else:
            out[name] = parsed
    return out


def _server_model(tag: Mapping[str, Any]) -> ServerModel:
    """One /api/tags entry; its ID is the digest's first 12 hex digits, as ``ollama list``
    shows it."""
    digest = tag.get("digest")
    size = tag.get("size")
    return ServerModel(
        name=str(tag.get("name") or tag.get("model")),
        id=digest.removeprefix("sha256:")[:12] if isinstance(digest, str) and digest else None,
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0
        else None,
        modified=_timestamp(tag.get("modified_at")))


def _timestamp(value: Any) -> float | None:
    """An RFC 3339 time as seconds since the epoch, None if it is not one. Ollama writes
    nanoseconds and a ``Z``, which ``fromisoformat`` before Python 3.11 refuses."""
    if not isinstance(value, str):
        return None
    # Six fraction digits (Go trims trailing zeros; Python before 3.11 takes 3 or 6 only).
    text = re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "000000")[:6], value.strip())
    text = text.replace("Z", "+00:00").replace("z", "+00:00")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\n\n".join(str(v) for v in value)
    return str(value or "")


