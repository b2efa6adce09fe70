"""A local stand-in for Ollama's registry, its blob CDN and the Hugging Face Hub, for tests.

It speaks the parts of each protocol that ``chatcli.models.pull`` uses, over http on 127.0.0.1:

    GET /v2/{namespace}/{model}/manifests/{tag}     docker-v2 manifest
    GET /v2/{namespace}/{model}/blobs/sha256:{hex}  a blob (or a 307 to another instance)
    GET /cdn/sha256-{hex}                           a blob, as the CDN a registry redirects to
    GET /api/models/{user}/{repo}/tree/main         Hugging Face's file listing (JSON)
    GET /{user}/{repo}/resolve/main/{path}          a Hugging Face file (or a 307 to the CDN)

Blobs honour ``Range: bytes=N-`` with 206 and Content-Range. Knobs break things on purpose:
``cut_next_blob_after`` (close the connection early, once), ``corrupt_blob`` (wrong bytes of
the right length), ``raw_manifest`` (any manifest body), ``chunk_delay`` (a slow link),
``ignore_range`` (always the whole blob). Every request is logged (path, Range and
Authorization headers) so tests can assert what was, or was not, sent.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
DEFAULT_CONFIG = json.dumps(
    {"model_format": "gguf", "model_family": "llama", "model_type": "tiny",
     "file_type": "F32", "architecture": "amd64", "os": "linux"}
).encode()
SEND_CHUNK = 64 * 1024

Content = bytes | Path


@dataclass(frozen=True)
class Request:
    path: str  # without the query string
    range: str | None  # the Range header, if any
    authorization: str | None = None


def digest_of(content: Content) -> str:
    """``sha256:<hex>`` of bytes or of a file's contents."""
    h = hashlib.sha256()
    if isinstance(content, Path):
        with open(content, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    else:
        h.update(content)
    return "sha256:" + h.hexdigest()


def size_of(content: Content) -> int:
    return content.stat().st_size if isinstance(content, Path) else len(content)


class RegistryServer:
    """A threaded HTTP server on 127.0.0.1 (port chosen by the OS); use it as a context manager."""

    def __init__(self) -> None:
        self.blobs: dict[str, Content] = {}  # hex -> content
        self.manifests: dict[tuple[str, str, str], bytes] = {}
        self.hf_repos: dict[tuple[str, str], list[dict]] = {}  # tree entries
        self.hf_files: dict[tuple[str, str, str], str] = {}  # (user, repo, path) -> hex
        self.corrupt: set[str] = set()
        self.log: list[Request] = []
        self.blob_bytes_sent = 0
        self.redirect_blobs_to: RegistryServer | None = None
        self.cut_next_blob_after: int | None = None
        self.chunk_delay = 0.0  # seconds to sleep after each 64 KiB of a blob body
        self.ignore_range = False  # answer Range requests with the whole blob (200)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the host part of model names served here."""
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> RegistryServer:
        # A short poll interval: shutdown() waits for it, once per test.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- content ---------------------------------------------------------------------------

    def add_blob(self, content: Content) -> tuple[str, int]:
        """Serve ``content``; returns its (``sha256:<hex>``, size)."""
        digest = digest_of(content)
        self.blobs[digest.removeprefix("sha256:")] = content
        return digest, size_of(content)

    def add_model(
        self,
        namespace: str,
        model: str,
        tag: str,
        layers: list[tuple[str, Content]],
        config: bytes | None = DEFAULT_CONFIG,
    ) -> dict:
        """Serve a docker-v2 manifest of ``layers`` (media type, content); returns it as JSON."""
        manifest: dict = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE}
        if config is not None:
            digest, size = self.add_blob(config)
            manifest["config"] = {"mediaType": CONFIG_MEDIA_TYPE, "digest": digest, "size": size}
        manifest["layers"] = []
        for media_type, content in layers:
            digest, size = self.add_blob(content)
            manifest["layers"].append({"mediaType": media_type, "digest": digest, "size": size})
        self.raw_manifest(namespace, model, tag, json.dumps(manifest).encode())
        return manifest

    def raw_manifest(self, namespace: str, model: str, tag: str, body: bytes) -> None:
        """Serve ``body`` as the manifest, whatever it holds."""
        self.manifests[(namespace, model, tag)] = body

    def corrupt_blob(self, digest: str) -> None:
        """Serve wrong bytes (of the right length) for this blob from now on."""
        self.corrupt.add(digest.removeprefix("sha256:"))

    def add_hf_repo(
        self, user: str, repo: str, files: dict[str, Content], no_lfs: tuple[str, ...] = ()
    ) -> None:
        """Serve a Hugging Face repo; ``.gguf`` files are LFS files (with a sha256 ``oid``)
        unless named in ``no_lfs``."""
        tree: list[dict] = []
        dirs: set[str] = set()
        for path, content in files.items():
            parts = path.split("/")
            for i in range(1, len(parts)):
                dirs.add("/".join(parts[:i]))
            digest, size = self.add_blob(content)
            hexdigest = digest.removeprefix("sha256:")
            self.hf_files[(user, repo, path)] = hexdigest
            git_oid = hashlib.sha1(f"blob {size}\0".encode() + hexdigest.encode()).hexdigest()
            entry: dict = {"type": "file", "oid": git_oid, "size": size, "path": path}
            if path.lower().endswith(".gguf") and path not in no_lfs:
                entry["lfs"] = {"oid": hexdigest, "size": size, "pointerSize": 134}
            tree.append(entry)
        for d in sorted(dirs):
            tree.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": d})
        self.hf_repos[(user, repo)] = tree

    # -- log -------------------------------------------------------------------------------

    def paths(self) -> list[str]:
        return [r.path for r in self.log]

    def blob_requests(self) -> list[Request]:
        return [r for r in self.log if "/blobs/" in r.path or "/cdn/" in r.path
                or "/resolve/" in r.path]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()
            self.blob_bytes_sent = 0


def _make_handler(server: RegistryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle(self) -> None:
            # A TLS ClientHello (https tried against this plain-http server): hang up at once,
            # rather than wait for a request line that never comes.
            try:
                if self.connection.recv(1, socket.MSG_PEEK) == b"\x16":
                    return
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away mid-body, as tests make it do

        def log_message(self, format: str, *args) -> None:
            pass

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            with server._lock:
                server.log.append(Request(path, self.headers.get("Range"),
                                          self.headers.get("Authorization")))
            parts = path.strip("/").split("/")
            if len(parts) == 5 and parts[0] == "v2" and parts[3] == "manifests":
                return self._manifest(parts[1], parts[2], parts[4])
            if len(parts) == 5 and parts[0] == "v2" and parts[3] == "blobs":
                return self._registry_blob(parts[4])
            if len(parts) == 2 and parts[0] == "cdn" and parts[1].startswith("sha256-"):
                return self._blob(parts[1].removeprefix("sha256-"))
            if parts[:2] == ["api", "models"] and parts[4:6] == ["tree", "main"]:
                return self._hf_tree(parts[2], parts[3])
            if len(parts) > 4 and parts[2:4] == ["resolve", "main"]:
                hexdigest = server.hf_files.get((parts[0], parts[1], "/".join(parts[4:])))
                if hexdigest is not None:
                    return self._maybe_redirect(hexdigest)
            self._send_json(404, {"errors": [{"code": "NOT_FOUND", "message": "not found"}]})

        def _manifest(self, namespace: str, model: str, tag: str) -> None:
            body = server.manifests.get((namespace, model, tag))
            if body is None:
                self._send_json(404, {"errors": [{"code": "MANIFEST_UNKNOWN",
                                                  "message": "manifest unknown"}]})
                return
            self._send_bytes(200, body, MANIFEST_MEDIA_TYPE)

        def _registry_blob(self, ref: str) -> None:
            if not ref.startswith("sha256:"):
                self._send_json(404, {"errors": [{"code": "BLOB_UNKNOWN"}]})
                return
            self._maybe_redirect(ref.removeprefix("sha256:"))

        def _maybe_redirect(self, hexdigest: str) -> None:
            target = server.redirect_blobs_to
            if target is None or hexdigest not in server.blobs:
                return self._blob(hexdigest)
            target.blobs[hexdigest] = server.blobs[hexdigest]
            if hexdigest in server.corrupt:
                target.corrupt.add(hexdigest)
            self.send_response(307)
            self.send_header("Location", f"{target.url}/cdn/sha256-{hexdigest}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _hf_tree(self, user: str, repo: str) -> None:
            tree = server.hf_repos.get((user, repo))
            if tree is None:
                self._send_json(404, {"error": "Repository not found"})
                return
            self._send_json(200, tree)

        def _blob(self, hexdigest: str) -> None:
            content = server.blobs.get(hexdigest)
            if content is None:
                self._send_json(404, {"errors": [{"code": "BLOB_UNKNOWN"}]})
                return
            size = size_of(content)
            start = None if server.ignore_range else _range_start(self.headers.get("Range"))
            if start is not None and start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if start is None:
                start = 0
                self.send_response(200)
            else:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            with server._lock:
                cut, server.cut_next_blob_after = server.cut_next_blob_after, None
            limit = size - start if cut is None else min(cut, size - start)
            sent = 0
            for chunk in _chunks(content, start, limit, hexdigest in server.corrupt):
                self.wfile.write(chunk)
                sent += len(chunk)
                with server._lock:
                    server.blob_bytes_sent += len(chunk)
                if server.chunk_delay:
                    time.sleep(server.chunk_delay)
            if cut is not None:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def _send_json(self, code: int, data) -> None:
            self._send_bytes(code, json.dumps(data).encode(), "application/json")

        def _send_bytes(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _range_start(header: str | None) -> int | None:
    if not header or not header.startswith("bytes="):
        return None
    first = header.removeprefix("bytes=").split(",")[0]
    start = first.split("-")[0].strip()
    return int(start) if start.isdigit() else None


def _chunks(content: Content, start: int, limit: int, corrupt: bool):
    """``limit`` bytes of ``content`` from ``start``, in 64 KiB pieces (streamed from a file)."""
    if isinstance(content, Path):
        with open(content, "rb") as f:
            f.seek(start)
            left = limit
            while left > 0 and (chunk := f.read(min(SEND_CHUNK, left))):
                left -= len(chunk)
                yield _maybe_flip(chunk, corrupt)
                corrupt = False
        return
    for offset in range(start, start + limit, SEND_CHUNK):
        yield _maybe_flip(content[offset:min(offset + SEND_CHUNK, start + limit)], corrupt)
        corrupt = False


def _maybe_flip(chunk: bytes, corrupt: bool) -> bytes:
    if not corrupt or not chunk:
        return chunk
    return bytes([chunk[0] ^ 0xFF]) + chunk[1:]
