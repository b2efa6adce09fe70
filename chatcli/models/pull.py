"""Downloading models into the store: from Ollama's registry, or from a Hugging Face GGUF repo.

The registry speaks the docker-v2 protocol: a manifest lists layers by sha256 digest, and each
layer is a blob (usually redirected to a CDN). Hugging Face has no manifests, so one is made
from the repo's file listing, whose LFS ``oid`` is the file's sha256. Either way, blobs stream
into ``sha256-<hex>-partial`` files so that an interrupted pull resumes with a Range request,
and a name is registered only after every blob has matched its digest. Progress is reported as
the status objects Ollama's ``POST /api/pull`` streams.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from chatcli import __version__
from chatcli.core.errors import ChatCliError
from chatcli.core.names import DEFAULT_TAG, InvalidNameError, ModelName, parse_digest, parse_name
from chatcli.models.store import (
    CHUNK,
    MANIFEST_MEDIA_TYPE,
    MEDIA,
    MODEL_MEDIA_TYPE,
    Layer,
    Manifest,
    Store,
    StoreError,
    local_store,
    parse_manifest,
)

Progress = Callable[[dict[str, Any]], None]

TIMEOUT = 30.0  # seconds without a byte before a connection counts as dead
MANIFEST_LIMIT = 4 << 20
LISTING_LIMIT = 16 << 20
PROGRESS_INTERVAL = 0.1  # at most ~10 progress events a second per layer
MAX_REDIRECTS = 5
MAX_LISTING_PAGES = 50
HF_ENDPOINT = "https://huggingface.co"
PROJECTOR_MEDIA_TYPE = MEDIA + "projector"
# What a bare hf.co/USER/REPO pulls, best first; failing all of these, the smallest file.
HF_PREFERRED_QUANTS = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q8_0")
_REDIRECTS = (301, 302, 303, 307, 308)
_SPLIT = re.compile(r"-\d{5}-of-\d{5}$", re.IGNORECASE)
_QUANT = re.compile(r"(?<![A-Za-z0-9])((?:I|T)?Q\d+(?:_[A-Za-z0-9]+)*|BF16|F16|F32|FP16|FP32)"
                    r"(?![A-Za-z0-9])", re.IGNORECASE)


class PullError(ChatCliError):
    """A pull that cannot finish: unknown model, unreachable host, bad or corrupt data."""


def pull(
    name: str,
    *,
    insecure: bool = False,
    on_progress: Progress | None = None,
    store: Store | None = None,
) -> ModelName:
    """Download the model ``name`` into ``store`` (chatcli's own by default) and register it.

    ``name`` is an Ollama name (``llama3.2``, ``host:port/ns/model:tag``) or
    ``hf.co/USER/REPO[:QUANT]``. ``insecure`` allows a registry over plain http. Blobs already
    in the store are not fetched again; a half-finished download resumes where it stopped.
    Raises InvalidNameError (before any request) for a bad name and PullError for anything
    else; Ctrl+C propagates as KeyboardInterrupt and keeps what was downloaded for next time.
    """
    parsed = parse_name(name)
    store = store if store is not None else local_store()
    if store.readonly:
        raise PullError(f"the {store.label} store at {store.root} is read-only for chatcli")
    report = on_progress or _ignore
    report({"status": "pulling manifest"})
    if parsed.is_huggingface:
        manifest, urls, client = _plan_huggingface(parsed)
    else:
        manifest, urls, client = _plan_registry(parsed, insecure)
    downloaded = []
    for layer in _unique_layers(manifest):
        if store.has_blob(layer.digest):
            _report_layer(report, layer, layer.size)
            continue
        _download(client, store, layer, urls[layer.digest], report)
        downloaded.append(layer)
    report({"status": "verifying sha256 digest"})
    failures = []
    for layer in downloaded:  # keep every good blob, so a retry fetches only the bad ones
        try:
            store.commit_partial(layer.digest)
        except StoreError as e:
            failures.append(str(e))
    if failures:
        raise PullError(failures[0])
    report({"status": "writing manifest"})
    store.write_manifest(parsed, manifest)
    report({"status": "success"})
    return parsed


def _ignore(event: dict[str, Any]) -> None:
    pass


def _unique_layers(manifest: Manifest) -> list[Layer]:
    """Layers then config, each digest once (two layers may share a blob)."""
    layers = list(manifest.layers) + ([manifest.config] if manifest.config else [])
    unique: dict[str, Layer] = {}
    for layer in layers:
        unique.setdefault(layer.digest, layer)
    return list(unique.values())


def _report_layer(report: Progress, layer: Layer, completed: int) -> None:
    short = layer.digest.removeprefix("sha256:")[:12]
    report({"status": f"pulling {short}", "digest": layer.digest, "total": layer.size,
            "completed": completed})


# -- HTTP ------------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Redirects are followed by _Client, which checks each target's scheme first.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class _Client:
    """GETs with a timeout, redirects limited to safe schemes, errors as one-line PullErrors.

    ``auth`` (host, header value) is sent to that host only, never to a redirect target.
    HTTP error statuses are raised as urllib's HTTPError for the caller to word.
    """

    def __init__(self, *, allow_http: bool, https_hint: str = "",
                 auth: tuple[str, str] | None = None) -> None:
        self.allow_http = allow_http
        self.https_hint = https_hint
        self.auth = auth

    def get(self, url: str, headers: dict[str, str] | None = None) -> HTTPResponse:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme != "https" and not (parts.scheme == "http" and self.allow_http):
                raise PullError(f"refusing to download from {parts.scheme}://{parts.netloc}: "
                                "only https is allowed (use --insecure for a plain-http registry)")
            request = urllib.request.Request(url, headers={
                "User-Agent": f"chatcli/{__version__}", **(headers or {})})
            if self.auth and parts.netloc == self.auth[0]:
                request.add_unredirected_header("Authorization", self.auth[1])
            try:
                return _OPENER.open(request, timeout=TIMEOUT)
            except urllib.error.HTTPError as e:
                location = e.headers.get("Location")
                if e.code not in _REDIRECTS or not location:
                    raise
                e.close()
                url = urljoin(url, location)
            except (urllib.error.URLError, OSError, HTTPException) as e:
                raise PullError(self._unreachable(parts, e)) from None
        raise PullError(f"too many redirects downloading from {urlsplit(url).netloc}")

    def _unreachable(self, parts, error: BaseException) -> str:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, TimeoutError):
            return f"{parts.netloc} did not answer within {TIMEOUT:.0f} s"
        if isinstance(reason, ssl.SSLCertVerificationError):
            return f"cannot verify the https certificate of {parts.netloc}: {reason.verify_message}"
        if parts.scheme == "https" and isinstance(
            reason, (ssl.SSLError, ConnectionResetError, HTTPException)
        ):
            return f"{parts.netloc} did not answer over https{self.https_hint}"
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return f"cannot reach {parts.netloc}: {text}"


def _read_limited(response: HTTPResponse, limit: int, what: str) -> bytes:
    host = urlsplit(response.url).netloc
    with response:
        try:
            body = response.read(limit + 1)
        except (OSError, HTTPException) as e:
            raise PullError(f"reading {what} from {host} failed: {e or type(e).__name__}") from None
    if len(body) > limit:
        raise PullError(f"{what} from {host} is larger than {limit >> 20} MiB; refusing it")
    return body


def _http_error(error: urllib.error.HTTPError, what: str) -> PullError:
    """``what`` failed with an HTTP status: one line, with the server's own message if any."""
    detail = ""
    try:
        data = json.loads(error.read(64 * 1024) or b"null")
        if isinstance(data, dict) and isinstance(data.get("errors"), list) and data["errors"]:
            detail = str(data["errors"][0].get("message") or data["errors"][0].get("code") or "")
        elif isinstance(data, dict):
            detail = str(data.get("error") or "")
    except (ValueError, OSError, HTTPException, AttributeError):
        pass
    finally:
        error.close()
    detail = " ".join(detail.split())[:200]
    return PullError(f"{what} failed: HTTP {error.code} {error.reason}"
                     + (f" ({detail})" if detail else ""))


# -- blobs -----------------------------------------------------------------------------------


def _download(client: _Client, store: Store, layer: Layer, url: str, report: Progress) -> None:
    """Stream one blob into its ``-partial`` file, resuming what an earlier pull left."""
    partial = store.partial_path(layer.digest)
    short = layer.digest.removeprefix("sha256:")[:12]
    offset = partial.stat().st_size if partial.is_file() else 0
    if offset > layer.size:
        partial.unlink()
        offset = 0
    _report_layer(report, layer, offset)
    if partial.is_file() and offset == layer.size:
        return  # complete; verified with the others
    try:
        response = client.get(url, {"Range": f"bytes={offset}-"} if offset else None)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the server disowns our partial: start over
            e.close()
            partial.unlink()
            return _download(client, store, layer, url, report)
        raise _http_error(e, f"downloading {short}") from None
    host = urlsplit(response.url).netloc
    with response:
        if response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != offset:
                raise PullError(f"{host} sent the wrong part of {short}; pull again")
        else:
            offset = 0  # a 200 is the whole blob, whatever we asked for
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and offset + int(length) > layer.size:
            raise PullError(f"{host} sent {offset + int(length)} bytes for {short}, "
                            f"but its manifest says {layer.size}; refusing it")
        store.blobs.mkdir(parents=True, exist_ok=True)
        done = _stream(response, partial, offset, layer, report, host)
    if done < layer.size:
        raise PullError(f"the download of {short} from {host} stopped at {done} of "
                        f"{layer.size} bytes; pull again to resume")
    _report_layer(report, layer, done)


def _stream(response: HTTPResponse, partial, offset: int, layer: Layer, report: Progress,
            host: str) -> int:
    short = layer.digest.removeprefix("sha256:")[:12]
    done, last = offset, time.monotonic()
    with open(partial, "ab" if offset else "wb") as f:
        while True:
            try:
                chunk = response.read1(CHUNK)
            except (OSError, HTTPException) as e:
                reason = "no data for 30 s" if isinstance(e, TimeoutError) else (
                    str(e) or type(e).__name__)
                raise PullError(f"the download of {short} from {host} broke off at {done} of "
                                f"{layer.size} bytes ({reason}); pull again to resume") from None
            if not chunk:
                return done
            if done + len(chunk) > layer.size:
                f.close()
                partial.unlink(missing_ok=True)
                raise PullError(f"{host} sent more than the {layer.size} bytes the manifest "
                                f"declares for {short}; refusing it")
            f.write(chunk)
            done += len(chunk)
            now = time.monotonic()
            if now - last >= PROGRESS_INTERVAL and done < layer.size:
                last = now
                _report_layer(report, layer, done)


def _content_range_start(header: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)$", (header or "").strip())
    return int(match.group(1)) if match else None


# -- Ollama's registry -----------------------------------------------------------------------


def _plan_registry(name: ModelName, insecure: bool) -> tuple[Manifest, dict[str, str], _Client]:
    scheme = "http" if insecure else "https"
    client = _Client(allow_http=insecure,
                     https_hint="; if it is a plain-http registry, pull with --insecure")
    base = f"{scheme}://{name.host}/v2/{name.namespace}/{name.model}"
    try:
        response = client.get(f"{base}/manifests/{name.tag}", {"Accept": MANIFEST_MEDIA_TYPE})
    except urllib.error.HTTPError as e:
        if e.code == 404:
            e.close()
            where = "the registry" if name.host in name.display else name.host
            raise PullError(f"model '{name}' not found in {where}") from None
        raise _http_error(e, f"pulling the manifest of {name} from {name.host}") from None
    raw = _read_limited(response, MANIFEST_LIMIT, f"the manifest of {name}")
    try:
        manifest = parse_manifest(raw, source=f"the manifest of {name} from {name.host}")
    except StoreError as e:
        raise PullError(str(e)) from None
    except InvalidNameError as e:
        raise PullError(f"the manifest of {name} from {name.host} is not valid: {e}") from None
    urls = {layer.digest: f"{base}/blobs/{layer.digest}" for layer in _unique_layers(manifest)}
    return manifest, urls, client


# -- Hugging Face ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HfFile:
    """A file in a Hugging Face repo listing."""

    path: str
    size: int
    sha256: str | None  # the LFS oid; plain git files have none

    @property
    def stem(self) -> str:
        return PurePosixPath(self.path).name[: -len(".gguf")]

    @property
    def is_split(self) -> bool:
        return bool(_SPLIT.search(self.stem))

    @property
    def quant(self) -> str:
        """The quantization named in the file name (``Q4_K_M``), else the whole stem."""
        found = _QUANT.findall(_SPLIT.sub("", self.stem))
        return found[-1].upper() if found else self.stem


def _plan_huggingface(name: ModelName) -> tuple[Manifest, dict[str, str], _Client]:
    base = (os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")
    token = os.environ.get("HF_TOKEN")
    endpoint = urlsplit(base)
    # http only when the user pointed HF_ENDPOINT at an http mirror themselves.
    client = _Client(allow_http=endpoint.scheme == "http",
                     auth=(endpoint.netloc, f"Bearer {token}") if token else None)
    repo = f"{name.namespace}/{name.model}"
    files = _hf_listing(client, base, name)
    ggufs = [f for f in files if f.path.lower().endswith(".gguf")]
    models = [f for f in ggufs if "mmproj" not in PurePosixPath(f.path).name.lower()]
    projectors = [f for f in ggufs if f not in models]
    if not models:
        raise PullError(f"hf.co/{repo} has no GGUF model files")
    chosen = [(choose_hf_model(models, name), MODEL_MEDIA_TYPE)]
    if projectors:
        chosen.append((_choose_projector(projectors), PROJECTOR_MEDIA_TYPE))
    layers, urls = [], {}
    for file, media_type in chosen:
        if file.sha256 is None:
            raise PullError(f"hf.co/{repo}: {file.path} has no sha256 in the listing, "
                            "so its download cannot be verified")
        layer = Layer(media_type=media_type, digest=f"sha256:{file.sha256}", size=file.size)
        layers.append(layer)
        urls[layer.digest] = f"{base}/{quote(repo)}/resolve/main/{quote(file.path)}"
    return Manifest(layers=layers), urls, client


def _hf_listing(client: _Client, base: str, name: ModelName) -> list[HfFile]:
    """Every file of the repo at ``main``, following the API's pagination links."""
    repo = f"{name.namespace}/{name.model}"
    url: str | None = f"{base}/api/models/{quote(repo)}/tree/main?recursive=true"
    files: list[HfFile] = []
    for _ in range(MAX_LISTING_PAGES):
        if url is None:
            return files
        try:
            response = client.get(url, {"Accept": "application/json"})
        except urllib.error.HTTPError as e:
            if e.code in (401, 404):
                e.close()
                raise PullError(f"model 'hf.co/{repo}' not found on Hugging Face (if it is "
                                "private or gated, set HF_TOKEN to a token with access)") from None
            raise _http_error(e, f"listing the files of hf.co/{repo}") from None
        next_url = _next_link(response.headers.get("Link"), url)
        body = _read_limited(response, LISTING_LIMIT, f"the file list of hf.co/{repo}")
        files += _parse_listing(body, repo)
        url = next_url
    raise PullError(f"the file list of hf.co/{repo} is too long")


def _parse_listing(body: bytes, repo: str) -> list[HfFile]:
    try:
        entries = json.loads(body)
        out = []
        for entry in entries:
            if entry.get("type") != "file":
                continue
            lfs = entry.get("lfs") or {}
            oid = lfs.get("oid")
            sha = parse_digest(f"sha256:{oid}") if oid else None
            out.append(HfFile(str(entry["path"]), int(lfs.get("size", entry.get("size", 0))),
                              sha))
        return out
    except (ValueError, KeyError, TypeError, AttributeError, InvalidNameError) as e:
        raise PullError(f"the file list of hf.co/{repo} is not valid ({e})") from None


def _next_link(header: str | None, current: str) -> str | None:
    for part in (header or "").split(","):
        match = re.match(r'\s*<([^>]+)>\s*;.*rel="?next"?', part)
        if match:
            return urljoin(current, match.group(1))
    return None


def _token_match(file: HfFile, token: str, *, prefix: bool = False) -> bool:
    # A quant is a token of the file name: "Q4_K" is not in "model-Q4_K_M" (unless prefix).
    after = r"_" if prefix else r"(?![A-Za-z0-9_])"
    pattern = rf"(?<![A-Za-z0-9]){re.escape(token)}{after}"
    return re.search(pattern, PurePosixPath(file.path).name, re.IGNORECASE) is not None


def _best(files: list[HfFile]) -> HfFile:
    """Among files that all fit the request: unsplit first, then the preferred quants, then the
    plainest name, then the smallest."""
    def key(f: HfFile) -> tuple:
        rank = next((i for i, q in enumerate(HF_PREFERRED_QUANTS) if _token_match(f, q)),
                    len(HF_PREFERRED_QUANTS))
        return (f.is_split, rank, len(f.path), f.size, f.path)

    return min(files, key=key)


def choose_hf_model(models: list[HfFile], name: ModelName) -> HfFile:
    """The GGUF file a ``hf.co/USER/REPO[:QUANT]`` name means, among the repo's model files."""
    repo = f"hf.co/{name.namespace}/{name.model}"
    if name.tag == DEFAULT_TAG:
        chosen = _best(models)
        if not any(_token_match(chosen, q) for q in HF_PREFERRED_QUANTS):
            unsplit = [f for f in models if not f.is_split] or models
            chosen = min(unsplit, key=lambda f: (f.size, f.path))
    else:
        matches = ([f for f in models if _token_match(f, name.tag)]
                   or [f for f in models if _token_match(f, name.tag, prefix=True)])
        if not matches:
            quants = ", ".join(sorted({f.quant for f in models}))
            raise PullError(f"{repo} has no {name.tag} file; available quantizations: {quants}")
        chosen = _best(matches)
    if chosen.is_split:
        raise PullError(f"{repo}:{chosen.quant} is split into several files ({chosen.path}); "
                        "split GGUF files are not supported yet")
    return chosen


def _choose_projector(projectors: list[HfFile]) -> HfFile:
    f16 = [f for f in projectors if _token_match(f, "f16")]
    return sorted(f16 or projectors, key=lambda f: f.path)[0]
