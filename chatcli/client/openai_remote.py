"""Answers from an OpenAI-compatible server: ``chat run --host http://gpu-box:8000/v1``.

``OpenAIClient`` has LocalClient's interface over the chat-completions protocol that vLLM,
SGLang, llama.cpp's ``llama-server``, LM Studio, Ollama and ``chat serve`` all speak:
``POST /v1/chat/completions`` streamed as server-sent events, ``GET /v1/models`` for names.
``connect`` picks this client or the Ollama one (``RemoteClient``) for a ``--host``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from chatcli.client.interface import ChatClient
from chatcli.client.remote import (
    RemoteClient,
    ServerModel,
    get_list,
    http_client,
    post_stream,
    refuse_projector,
    remote_model,
)
from chatcli.core.errors import ChatCliError, ModelNotFoundError, RequestError
from chatcli.core.events import ContentDelta, Done, Event, Metrics, ThinkingDelta, ToolCall
from chatcli.core.hosts import host_url
from chatcli.core.textclean import TooDeepError, loads
from chatcli.models.modelinfo import human_count
from chatcli.models.resolve import ResolvedModel

KEY_ENVS = ("CHATCLI_API_KEY", "OPENAI_API_KEY")
APIS = ("auto", "openai", "ollama")

# chatcli option -> the chat-completions field; every other option goes into the body under
# its own name (vLLM and llama-server read top_k, min_p, repeat_penalty... from there).
_FIELDS = {"temperature": "temperature", "top_p": "top_p", "num_predict": "max_tokens",
           "seed": "seed", "stop": "stop", "presence_penalty": "presence_penalty",
           "frequency_penalty": "frequency_penalty"}
# The request fields of OpenAI's own API that chatcli sends; never dropped. Anything else in a
# body (top_k, min_p, chat_template_kwargs...) is an extra that a strict server may refuse.
STANDARD_FIELDS = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens",
    "seed", "stop", "presence_penalty", "frequency_penalty", "response_format", "tools",
    "reasoning_effort"})
# How a strict server words "this field is not allowed": OpenAI's "Unrecognized request
# argument supplied: top_k", pydantic's "Extra inputs are not permitted", Groq's "property
# 'top_k' is unsupported", Gemini's 'Unknown name "top_k"'.
_REFUSED_FIELD = re.compile(r"unrecogni[sz]ed|unknown|unexpected|extra|additional propert|"
                            r"not permitted|not allowed|unsupported|not supported|forbidden",
                            re.IGNORECASE)

_log = logging.getLogger("chatcli")


def find_api_key(explicit: str | None = None) -> str | None:
    """The key to send: ``explicit``, else $CHATCLI_API_KEY, else $OPENAI_API_KEY."""
    for value in (explicit, *(os.environ.get(name) for name in KEY_ENVS)):
        if value and value.strip():
            return value.strip()
    return None


def openai_base(url: str) -> str:
    """``url`` as an OpenAI base URL: ending in ``/v1`` (added when it is not there)."""
    base = host_url(url)
    return base if base.endswith("/v1") else base + "/v1"


class OpenAIClient(ChatClient):
    """LocalClient's interface over an OpenAI chat-completions API."""

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 connect_timeout: float = 10.0) -> None:
        self.base_url = openai_base(base_url)
        self._key = find_api_key(api_key)
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self._http = http_client(self.base_url, connect_timeout, headers)
        # Set once the server has refused extra fields: later requests leave them out
        # without a refused round trip first.
        self._strict = False
        self._dropped: set[str] = set()  # extras the user has been told about

    def close(self) -> None:
        self._http.close()

    # -- the client interface --------------------------------------------------------------

    def resolve(self, name: str) -> ResolvedModel:
        """Check the server lists ``name`` in /v1/models; ModelNotFoundError naming it if not."""
        self._card(name)
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
        connection, which stops the generation on the server.

        Options outside OpenAI's fields go in the body under their own names. A server that
        refuses them (400/422 naming one) is asked once more without them, with a one-line
        notice, and is sent none from then on."""
        refuse_projector(projector)
        body = request_body(model, messages, options, format=format, think=think, tools=tools)
        cancel = cancel or threading.Event()
        started = time.perf_counter_ns()
        extras = [name for name in body if name not in STANDARD_FIELDS]
        if extras and self._strict:
            self._tell_dropped(extras)
            body, extras = _without(body, extras), []
        try:
            yield from self._post(body, model, cancel, started, extras)
        except _ExtrasRefused:
            yield from self._post(_without(body, extras), model, cancel, started, [],
                                  accepted=lambda: self._became_strict(extras))

    def show(self, model: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Model facts for /show, from what /v1/models says of the model (vLLM gives its
        max_model_len, llama-server its ``meta``); the rest the protocol does not tell."""
        card = self._card(model)
        meta: dict[str, Any] = card["meta"] if isinstance(card.get("meta"), dict) else {}
        context = card.get("max_model_len") or meta.get("n_ctx_train") or "?"
        params = meta.get("n_params")
        return {
            "architecture": "unknown",
            "parameters": human_count(params) if isinstance(params, int) and params > 0
            else "?",
            "context length": context,
            "embedding length": meta.get("n_embd") or "?",
            "quantization": "unknown",
            "capabilities": ["completion"],
            "template": "",
            "template_is_fallback": True,
            "system": "",
            "license": "",
            "model_options": {},
            "name": model,
            "path": f"remote: {self.base_url}",
        }

    def save_state(self, model: str, *, background: bool = False) -> bool:
        """Nothing to do: the server keeps its own KV cache."""
        return False

    def list_models(self) -> list[ServerModel]:
        """The server's models for ``chat list --host``. /v1/models gives no ID and no date
        (vLLM and llama-server send the time of the request as ``created``); llama-server's
        ``meta`` gives the size."""
        out = []
        for card in self.models():
            if not isinstance(card.get("id"), str):
                continue
            meta = card.get("meta")
            size = meta.get("size") if isinstance(meta, dict) else None
            out.append(ServerModel(card["id"], size=size if isinstance(size, int)
                                   and not isinstance(size, bool) and size >= 0 else None))
        return out

    def models(self) -> list[dict[str, Any]]:
        """The server's model cards (``GET /v1/models``)."""
        data = get_list(self, "/models", "data", "an OpenAI server")
        return [card for card in data if isinstance(card, dict)]

    # -- internals -------------------------------------------------------------------------

    def _post(self, body: dict[str, Any], model: str, cancel: threading.Event, started: int,
              extras: list[str], accepted: Callable[[], None] | None = None) -> Iterator[Event]:
        """One chat-completions request; ``accepted`` is called once the server said 200."""
        stream = _Stream(self.base_url, started)

        def read(response: httpx.Response) -> Iterator[Event]:
            if accepted is not None:
                accepted()
            return stream.events(response, cancel)

        yield from post_stream(self._http, "/chat/completions", body, cancel, read,
                               lambda response: self._error(response, model, extras),
                               self._unreachable)

    def _became_strict(self, extras: list[str]) -> None:
        self._strict = True
        self._tell_dropped(extras)

    def _tell_dropped(self, extras: list[str]) -> None:
        """The one-line notice, once per option name for this client."""
        new = [name for name in extras if name not in self._dropped]
        if new:
            self._dropped.update(new)
            _log.warning("the server does not accept %s; sent without %s", ", ".join(new),
                         "it" if len(new) == 1 else "them")

    def _card(self, model: str) -> dict[str, Any]:
        name = model.strip()
        cards = self.models()
        for card in cards:
            if card.get("id") == name:
                return card
        raise ModelNotFoundError(f"model '{name}' not found on {self.base_url}"
                                 + (f" (it has {_names(cards)})" if cards else ""))

    def _error(self, response: httpx.Response, model: str,
               extras: Sequence[str] = ()) -> ChatCliError:
        message = self._scrub(_error_text(response))
        status = response.status_code
        if status in (400, 422) and extras and _refuses_extras(message, extras):
            return _ExtrasRefused(message)
        if status in (401, 403):
            hint = ("" if self._key else
                    "; give the server's key with --api-key or $CHATCLI_API_KEY")
            return ChatCliError(f"{self.base_url} refused the request ({status})"
                                + (f": {message}" if message else "") + hint)
        if status == 404 and model:
            return ModelNotFoundError(message or f"model '{model}' not found on "
                                                 f"{self.base_url}")
        if status in (400, 422):
            return RequestError(message or f"the server refused the request ({status})")
        return ChatCliError(f"{self.base_url} answered {status}"
                            + (f": {message}" if message else ""))

    def _scrub(self, text: str) -> str:
        """``text`` with the API key blanked out (a server may echo it back)."""
        return text.replace(self._key, "***") if self._key else text

    def _unreachable(self, e: httpx.HTTPError) -> ChatCliError:
        if isinstance(e, httpx.ConnectError):
            return ChatCliError(f"could not connect to {self.base_url}: is the server "
                                "running there?")
        if isinstance(e, httpx.TimeoutException):
            return ChatCliError(f"{self.base_url} did not answer in time")
        return ChatCliError(f"lost the connection to {self.base_url} in the middle of the "
                            f"answer ({type(e).__name__})")


class _ExtrasRefused(RequestError):
    """A strict server refused the request's extra fields (chat() asks again without them)."""


def _refuses_extras(message: str, extras: Sequence[str]) -> bool:
    """Whether an error says fields were not accepted, naming one of ``extras`` or no field
    at all ("Extra inputs are not permitted"). One that names only a standard field (an
    o-series model's "'max_tokens' is not supported") is not about the extras; nor is one
    about an extra's value ("top_k must be at least 1"), which does not say "not accepted"."""
    if not _REFUSED_FIELD.search(message):
        return False
    named = {name for name in (*extras, *STANDARD_FIELDS)
             if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", message)}
    return bool(named & set(extras)) or not named


def _without(body: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in names}


class _Stream:
    """One streamed answer: SSE ``data:`` chunks -> events; tool-call fragments gathered by
    index and given whole at the end; usage and client-side timings into the Done."""

    def __init__(self, base_url: str, started: int) -> None:
        self.base_url = base_url
        self.started = started
        self.first: int | None = None
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.calls: dict[int, dict[str, Any]] = {}

    def events(self, response: httpx.Response, cancel: threading.Event) -> Iterator[Event]:
        for line in response.iter_lines():
            if cancel.is_set():
                yield Done(done_reason="cancelled")
                return
            if not line.startswith("data:"):
                continue  # blank lines, comments (": ping"), event: lines
            data = line[5:].strip()
            if data == "[DONE]":
                yield from self._end()
                return
            try:
                chunk = loads(data, "the server's answer")
            except (ValueError, TooDeepError):
                raise ChatCliError(f"{self.base_url} sent an event that is not JSON") from None
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                raise ChatCliError(f"the server failed while answering: "
                                   f"{_one_line(chunk['error'])}")
            yield from self._chunk(chunk)
        if cancel.is_set():
            yield Done(done_reason="cancelled")
        elif self.finish is not None:  # finished, only the [DONE] line left out
            yield from self._end()
        else:
            raise ChatCliError(f"{self.base_url} ended the answer without finishing it")

    def _chunk(self, chunk: dict[str, Any]) -> Iterator[Event]:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thinking, str) and thinking:
                self._token()
                yield ThinkingDelta(thinking)
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._token()
                yield ContentDelta(content)
            for i, fragment in enumerate(delta.get("tool_calls") or ()):
                self._token()
                self._add_call(fragment, i)
            if choice.get("finish_reason"):
                self.finish = str(choice["finish_reason"])

    def _add_call(self, fragment: Any, position: int) -> None:
        if not isinstance(fragment, dict):
            return
        index = fragment.get("index")
        call = self.calls.setdefault(index if isinstance(index, int) else position,
                                     {"id": "", "name": "", "arguments": ""})
        if isinstance(fragment.get("id"), str) and fragment["id"]:
            call["id"] = fragment["id"]
        function = fragment.get("function") or {}
        if isinstance(function.get("name"), str):
            call["name"] += function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            call["arguments"] += arguments
        elif isinstance(arguments, dict):
            call["arguments"] = json.dumps(arguments)

    def _token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter_ns()

    def _end(self) -> Iterator[Event]:
        for index in sorted(self.calls):
            call = self.calls[index]
            try:
                arguments = loads(call["arguments"] or "{}", "the tool call's arguments")
            except (ValueError, TooDeepError):
                arguments = {"arguments": call["arguments"]}
            if not isinstance(arguments, dict):
                arguments = {"arguments": arguments}
            extra = {"id": call["id"]} if call["id"] else {}
            yield ToolCall(name=call["name"], arguments=arguments, **extra)
        yield Done(done_reason="length" if self.finish == "length" else "stop",
                   metrics=self._metrics())

    def _metrics(self) -> Metrics:
        now = time.perf_counter_ns()
        first = self.first or now
        details = self.usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        return Metrics(total_duration=now - self.started,
                       prompt_eval_count=_int(self.usage.get("prompt_tokens")),
                       prompt_cached_count=_int(cached),
                       # Measured here: the wait for the first token includes the network.
                       prompt_eval_duration=first - self.started,
                       eval_count=_int(self.usage.get("completion_tokens")),
                       eval_duration=now - first)


def request_body(model: str, messages: Sequence[Mapping[str, Any]],
                 options: Mapping[str, Any] | None, *, format: Any = None, think: Any = None,
                 tools: Any = None) -> dict[str, Any]:
    """The chat-completions request for one answer."""
    body: dict[str, Any] = {"model": model, "messages": wire_messages(messages),
                            "stream": True, "stream_options": {"include_usage": True}}
    for name, value in (options or {}).items():
        body[_FIELDS.get(name, name)] = value
    if format == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(format, Mapping):
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "response", "schema": dict(format)}}
    elif format is not None:
        raise RequestError("format must be 'json' or a JSON schema object")
    if isinstance(think, str):
        body["reasoning_effort"] = think
    elif isinstance(think, bool):
        # Qwen3-style templates' switch; vLLM, SGLang and llama-server pass it to the template.
        body["chat_template_kwargs"] = {"enable_thinking": think}
    if tools:
        from chatcli.engine.output.tools import normalize_tools

        body["tools"] = normalize_tools(tools)
    return body


def wire_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Session messages as chat-completions takes them: images as data-URL content parts,
    tool calls with ids and string arguments, tool results answering those ids in order."""
    from chatcli.core.images import load_image

    out: list[dict[str, Any]] = []
    pending: list[str] = []  # ids of the last assistant message's calls not yet answered
    for n, message in enumerate(messages):
        role = message.get("role")
        wire: dict[str, Any] = {"role": role, "content": message.get("content") or ""}
        images = message.get("images")
        if images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": wire["content"]}]
            for image in images:
                data = base64.b64encode(load_image(image)).decode("ascii")
                parts.append({"type": "image_url",
                              "image_url": {"url": f"data:image/png;base64,{data}"}})
            wire["content"] = parts
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for i, call in enumerate(message["tool_calls"]):
                function = call.get("function") or {}
                arguments = function.get("arguments")
                call_id = call.get("id") or f"call_{n}_{i}"
                calls.append({"id": call_id, "type": "function",
                              "function": {"name": function.get("name", ""),
                                           "arguments": arguments if isinstance(arguments, str)
                                           else json.dumps(arguments or {})}})
            wire["tool_calls"] = calls
            pending = [str(c["id"]) for c in calls]
        elif role == "tool":
            call_id = message.get("tool_call_id") or (pending.pop(0) if pending else None)
            if call_id:
                wire["tool_call_id"] = call_id
            if message.get("tool_name"):
                wire["name"] = message["tool_name"]
        out.append(wire)
    return out


def detect_api(url: str, key: str | None = None, *, timeout: float = 10.0) -> str:
    """"openai" or "ollama" for the server at ``url``: a URL ending in /v1 is OpenAI's;
    otherwise Ollama's /api/version answers an Ollama (or chat serve), /v1/models an OpenAI
    server. A server that answers neither (or none at all) counts as Ollama, whose client
    then reports the problem."""
    base = host_url(url)
    if base.endswith("/v1"):
        return "openai"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=base, headers=headers, timeout=timeout,
                      trust_env=False) as http:
        try:
            version = http.get("/api/version")
            if version.status_code == 200 and "version" in version.json():
                return "ollama"
        except (httpx.HTTPError, ValueError, TypeError):
            pass
        try:
            if http.get("/v1/models").status_code in (200, 401, 403):
                return "openai"
        except httpx.HTTPError:
            pass
    return "ollama"


def connect(host: str, *, api: str = "auto", key: str | None = None,
            say: Callable[[str], None] | None = None) -> OpenAIClient | RemoteClient:
    """The client for ``--host`` (``chat run``, ``chat list``): ``api`` is "openai",
    "ollama" or "auto" (detect); ``say`` hears which protocol was chosen."""
    if api not in APIS:
        raise ChatCliError(f"unknown --api {api!r}: use openai, ollama or auto")
    key = find_api_key(key)
    chosen = detect_api(host, key) if api == "auto" else api
    client: OpenAIClient | RemoteClient
    if chosen == "openai":
        client = OpenAIClient(host, api_key=key)
        where = client.base_url
    else:
        client = RemoteClient(host)
        where = client.base_url
    if say is not None:
        how = "detected" if api == "auto" else "--api"
        say(f"using the {'OpenAI' if chosen == 'openai' else 'Ollama'} API at {where} ({how})")
    return client


def _error_text(response: httpx.Response) -> str:
    """The message in an error body: OpenAI's ``{"error": {"message"}}``, a bare
    ``{"error": "..."}``, FastAPI's ``{"detail"}``, or short plain text."""
    try:
        data = response.json()
    except ValueError:
        text = response.text.strip()
        return _one_line(text) if text and len(text) < 300 and "<" not in text else ""
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message")
        return _one_line(error) if error else ""
    return ""


def _one_line(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("message") or json.dumps(value)
    return " ".join(str(value).split())


def _names(cards: list[dict[str, Any]]) -> str:
    names = [str(c.get("id")) for c in cards[:5]]
    return ", ".join(names) + (", ..." if len(cards) > 5 else "")


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) else 0


