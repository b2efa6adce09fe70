"""The chatcli server running in-process on a free loopback port, for HTTP tests."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import uvicorn


class ServerThread:
    """uvicorn on 127.0.0.1:<free port> in a daemon thread (``with ServerThread(app) as s``)."""

    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


class ErrorLog(logging.Handler):
    """ERROR records from chatcli's and uvicorn's loggers while in use (``with ErrorLog() as
    log``); uvicorn's loggers do not propagate, so caplog alone would miss them."""

    NAMES = ("chatcli", "uvicorn", "uvicorn.error")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]

    def __enter__(self) -> ErrorLog:
        for name in self.NAMES:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        for name in self.NAMES:
            logging.getLogger(name).removeHandler(self)


def hang_up_during(url: str, path: str, body: dict, seconds: float = 1.5) -> None:
    """POST ``body`` as JSON from a raw socket, wait ``seconds`` without reading the answer,
    then close the connection (a client that gives up on a non-streamed answer)."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                     "\r\n".encode() + data)
        time.sleep(seconds)


def create_model(http, name: str, path, filename: str = "m.gguf") -> str:
    """Create model ``name`` on the server from the GGUF file at ``path``, as a client does:
    upload it as a blob, then /api/create from it."""
    import hashlib

    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
    r = http.post("/api/create", json={"model": name, "files": {filename: digest},
                                       "stream": False})
    assert r.status_code == 200, r.text
    return name
