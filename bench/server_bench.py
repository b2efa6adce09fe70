"""`chat serve --parallel`: several clients at once on one model, against llama-server.

Every server here is a real process on a free loopback port, spoken to over its OpenAI-style
streaming endpoint (/v1/chat/completions), the one both servers have, by client threads that
start together. Each answer is ``n`` tokens of a prompt the model answers at great length.

- ``chat serve --parallel 4``, 4 clients: every client's time to first token, when the first
  answer completed, and the aggregate tokens/s (all tokens / wall time of the whole load).
- the same with 1 client, and ``chat serve --parallel 1`` with 1 client (single-client speed),
  in interleaved pairs.
- ``llama-server --parallel 4`` (``LLAMA_SERVER=path``, else the build in
  ``$LLAMA_SERVER_BUILD`` / the vendored llama.cpp's build/bin) with the same 4-client load, as
  the anchor: same model, same context per slot, same threads.

Runs are interleaved (one of each per repetition) and the medians compared.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from .common import Row, Section, median, threads

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Write a very long story about a dragon, at least 2000 words."
N_CTX = 4096  # per slot
PAIRS = 3  # interleaved one-client runs on --parallel N and --parallel 1 per repetition


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_llama_server() -> str | None:
    """The llama-server binary to compare against, if there is one."""
    for candidate in (os.environ.get("LLAMA_SERVER"), shutil.which("llama-server")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


class Server:
    """A server process; ``url`` once it answers /v1/models."""

    def __init__(self, cmd: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not start")
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def chatcli_server(parallel: int, model: str) -> Server:
    port = _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("OLLAMA_NUM_PARALLEL", None)
    server = Server([sys.executable, "-m", "chatcli", "serve", "--port", str(port),
                     "--parallel", str(parallel)], port, env)
    server.model = model  # type: ignore[attr-defined]
    return server


def llama_server(binary: str, path: Path, parallel: int) -> Server:
    port = _free_port()
    server = Server([binary, "-m", str(path), "--port", str(port), "--host", "127.0.0.1",
                     "-c", str(N_CTX * parallel), "--parallel", str(parallel),
                     "-t", str(threads()), "-b", "512", "-ub", "512", "--jinja",
                     "--no-webui", "--no-kv-unified"], port)
    server.model = path.name  # type: ignore[attr-defined]
    return server


def one_answer(url: str, model: str, n: int, start: threading.Barrier) -> dict[str, float]:
    """Stream one answer of up to ``n`` tokens; when its first and last token came, and how
    many tokens it had (the server's usage)."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": n, "temperature": 0, "seed": 42, "stream": True,
            "stream_options": {"include_usage": True},
            # Ollama's options on our server; llama-server reads the same names at the top.
            "repeat_penalty": 1.0, "options": {"repeat_penalty": 1.0}}
    start.wait()
    t0 = time.perf_counter()
    first = None
    tokens = 0
    with httpx.Client(timeout=600) as client, \
            client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                if first is None:
                    first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"t0": t0, "first": (first or end) - t0, "end": end, "tokens": tokens}


def load(server: Server, clients: int, n: int) -> dict[str, object]:
    """``clients`` answers at once; their first-token times, the first completion, and the
    aggregate tokens/s."""
    barrier = threading.Barrier(clients)
    results: list[dict[str, float]] = [{}] * clients

    def run(i: int) -> None:
        results[i] = one_answer(server.url, server.model, n, barrier)  # type: ignore[attr-defined]

    ts = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    t0 = min(r["t0"] for r in results)
    wall = max(r["end"] for r in results) - t0
    return {
        "ttft": [r["first"] for r in results],
        "first_done": min(r["end"] for r in results) - t0,
        "last_first": max(r["t0"] + r["first"] for r in results) - t0,
        "tokens": sum(r["tokens"] for r in results),
        "rate": sum(r["tokens"] for r in results) / wall,
    }


def parallel(model: str, path: Path, n: int, reps: int, clients: int = 4) -> Section:
    section = Section(f"Parallel requests: chat serve --parallel {clients}")
    ours = chatcli_server(clients, model)
    single = chatcli_server(1, model)
    anchor_bin = find_llama_server()
    anchor = llama_server(anchor_bin, path, clients) if anchor_bin else None
    runs: dict[str, list[dict[str, object]]] = {"ours4": [], "ours1": [], "single": [],
                                                "anchor4": [], "anchor1": []}
    try:
        for server in (ours, single, anchor):  # warm up: model loaded, first answer read
            if server is not None:
                load(server, 1, 8)
        for _ in range(reps):
            runs["ours4"].append(load(ours, clients, n))
            if anchor is not None:
                runs["anchor4"].append(load(anchor, clients, n))
                runs["anchor1"].append(load(anchor, 1, n))
            for _ in range(PAIRS):  # single-client speed: cheap runs, so more of them
                runs["ours1"].append(load(ours, 1, n))
                runs["single"].append(load(single, 1, n))
    finally:
        for server in (ours, single, anchor):
            if server is not None:
                server.close()

    def rates(key: str) -> list[float]:
        return [float(r["rate"]) for r in runs[key]]  # type: ignore[arg-type]

    def spread(values: list[float]) -> str:
        return f"{min(values):.1f}-{max(values):.1f}"

    ours4, ours1, single1 = median(rates("ours4")), median(rates("ours1")), median(rates("single"))
    pairs = [a / b for a, b in zip(rates("ours1"), rates("single"), strict=True)]
    section.rows.append(Row(
        f"one client on --parallel {clients} vs on --parallel 1 (tokens/s)", f"{ours1:.1f}",
        f"{single1:.1f}", ours1 / single1, ">= 0.97",
        f"{len(pairs)} interleaved pairs, pairwise ratio {min(pairs):.3f}-{max(pairs):.3f}, "
        f"median {median(pairs):.3f}"))
    section.rows.append(Row(
        f"{clients} clients vs 1 client, aggregate tokens/s", f"{ours4:.1f}", f"{ours1:.1f}",
        ours4 / ours1, "", f"spread {spread(rates('ours4'))}"))
    lasts = [float(r["last_first"]) for r in runs["ours4"]]  # type: ignore[arg-type]
    firsts_done = [float(r["first_done"]) for r in runs["ours4"]]  # type: ignore[arg-type]
    worst = max(last / done for last, done in zip(lasts, firsts_done, strict=True))
    section.rows.append(Row(
        "last client's first token / first answer complete (worst run)",
        f"{max(lasts):.2f} s", f"{min(firsts_done):.2f} s", worst, "<= 1.0",
        "every first token before the first answer is complete"))
    ttfts = [t for r in runs["ours4"] for t in r["ttft"]]  # type: ignore[attr-defined]
    text = [f"Each answer: {n} tokens (greedy) of a prompt the model answers at length; "
            f"{reps} interleaved repetitions, medians. Time to first token, all clients of all "
            f"runs: {min(ttfts):.2f}-{max(ttfts):.2f} s."]
    if anchor is not None:
        anchor4 = median(rates("anchor4"))
        section.rows.append(Row(
            f"{clients} clients, aggregate tokens/s vs llama-server --parallel {clients}",
            f"{ours4:.1f}", f"{anchor4:.1f}", ours4 / anchor4, ">= 0.9",
            f"spread {spread(rates('ours4'))} vs {spread(rates('anchor4'))}"))
        anchor1 = median(rates("anchor1"))
        text.append(f"llama-server itself: {clients} clients {anchor4:.1f} tokens/s, 1 client "
                    f"{anchor1:.1f} ({anchor4 / anchor1:.2f}x). Binary: {anchor_bin}.")
    else:
        text.append("llama-server not found (set LLAMA_SERVER=path): no anchor this run.")
    section.text = " ".join(text)
    return section
