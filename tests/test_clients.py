"""The libraries people point at Ollama, against ``chat serve`` in-process.

LangChain (``langchain-ollama``) runs live. LiteLLM and llama-index are too heavy for the test
extra (hundreds of MB, LiteLLM ~15 s to import), so ``fixtures/client_requests.json`` holds the
exact requests they sent (recorded by ``fixtures/record_clients.py``, which runs them for
real), and these tests replay every one and check the answer has what each library reads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import ollama
import pytest
from pydantic import BaseModel

MODEL = "smollm2:135m"
# One llama.cpp thread: the machine may be busy with other tests (see test_server.py).
SHORT = {"temperature": 0, "seed": 42, "num_predict": 8, "num_thread": 1}
RECORDED = json.loads((Path(__file__).parent / "fixtures" / "client_requests.json").read_text())
REPLAYS = [pytest.param(r, id=f"{client}-{r['label']}-{r['path']}".replace(" ", ""))
           for client, recording in RECORDED.items() for r in recording["requests"]]


@pytest.fixture(autouse=True)
def no_telemetry(monkeypatch):
    # LangSmith traces only when asked to; make sure nothing here is asked to.
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING"):
        monkeypatch.setenv(name, "false")
    monkeypatch.delenv("OLLAMA_HOST", raising=False)


# --- LangChain, live ------------------------------------------------------------------------


def _chat(url: str, **options):
    # Imported here, not at the top: LangChain takes seconds to import, paid only when run.
    from langchain_ollama import ChatOllama

    return ChatOllama(model=MODEL, base_url=url, **{**SHORT, **options})


def test_langchain_invoke_and_stream_agree(url):
    llm = _chat(url)
    answer = llm.invoke("Say hi.")
    assert isinstance(answer.content, str) and answer.content.strip()
    assert answer.response_metadata["model"] == MODEL
    assert answer.response_metadata["done_reason"] in ("stop", "length")
    usage = answer.usage_metadata
    assert usage["input_tokens"] > 1 and 0 < usage["output_tokens"] <= 8

    chunks = list(llm.stream("Say hi."))
    assert len(chunks) > 1
    assert "".join(c.content for c in chunks) == answer.content  # greedy: the same tokens
    # The prompt's size, not what the KV cache left to evaluate (the same prompt twice).
    assert sum((c.usage_metadata or {}).get("input_tokens", 0) for c in chunks) == \
        usage["input_tokens"]


class Sum(BaseModel):
    result: int


def test_langchain_structured_output(url):
    structured = _chat(url, num_predict=32).with_structured_output(Sum)
    answer = structured.invoke("What is 2 + 2? Answer in JSON.")
    assert isinstance(answer, Sum)


def test_langchain_embeddings_with_defaults(url):
    from langchain_ollama import OllamaEmbeddings

    # Defaults: LangChain sends every option it knows as null (mirostat, tfs_z, ...), and
    # smollm2 is a chat model: both must work, as with Ollama.
    embeddings = OllamaEmbeddings(model=MODEL, base_url=url)
    hello, world = embeddings.embed_documents(["hello", "world"])
    assert len(hello) == len(world) > 100
    assert math.isclose(math.fsum(x * x for x in hello), 1, rel_tol=1e-3)  # unit length
    assert hello != world
    assert embeddings.embed_query("hello") == pytest.approx(hello, abs=1e-5)


# --- LiteLLM and llama-index, replayed --------------------------------------------------------


def test_recordings_cover_what_the_libraries_do():
    """The fixture still holds the cases that matter (a re-recording that lost them fails)."""
    litellm = {(r["label"], r["path"]) for r in RECORDED["litellm"]["requests"]}
    assert {("ollama/ completion", "/api/generate"), ("ollama/ stream", "/api/generate"),
            ("ollama_chat/ completion", "/api/chat"), ("ollama_chat/ stream", "/api/chat"),
            ("embedding", "/api/embed")} <= litellm
    llama_index = RECORDED["llama-index-llms-ollama"]["requests"]
    chats = [r["body"] for r in llama_index if r["path"] == "/api/chat"]
    assert chats and all(body["options"]["temperature"] is None for body in chats)
    assert any(r["path"] == "/api/show" for r in llama_index)


def _send(http: httpx.Client, request: dict) -> httpx.Response:
    # Exactly as recorded: LiteLLM sends its generate/chat bodies without a Content-Type.
    headers = {"content-type": request["content_type"]} if request["content_type"] else {}
    body = json.dumps(request["body"]).encode() if request["body"] is not None else None
    return http.request(request["method"], request["path"], content=body, headers=headers)


def _ndjson(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def _check_counts(final: dict, body: dict) -> None:
    # LiteLLM builds usage only when both counts are ints; llama-index reads them as keys.
    assert isinstance(final["prompt_eval_count"], int) and final["prompt_eval_count"] > 1
    assert isinstance(final["eval_count"], int) and final["eval_count"] > 0
    limit = (body.get("options") or {}).get("num_predict")
    if limit:
        assert final["eval_count"] <= limit


@pytest.mark.parametrize("request_", REPLAYS)
def test_replayed_request(url, request_):
    body = request_["body"]
    with httpx.Client(base_url=url, timeout=120) as http:
        response = _send(http, request_)
    assert response.status_code == 200, response.text
    path = request_["path"]
    if path == "/api/show":
        info = response.json()["model_info"]
        # llama-index sizes num_ctx from it; LiteLLM its max_tokens.
        assert [v for k, v in info.items() if k.endswith(".context_length")] == [8192]
    elif path == "/api/embed":
        answer = response.json()
        assert len(answer["embeddings"]) == len(body["input"])
        assert all(len(v) > 100 and isinstance(v[0], float) for v in answer["embeddings"])
        assert answer["prompt_eval_count"] > 0
    elif path == "/api/generate":
        lines = _ndjson(response) if body["stream"] else [response.json()]
        assert "".join(line["response"] for line in lines).strip()
        assert lines[-1]["done"] is True and not any(line["done"] for line in lines[:-1])
        _check_counts(lines[-1], body)
    elif path == "/api/chat":
        lines = _ndjson(response) if body["stream"] else [response.json()]
        # llama-index reads them through the ollama client's own types.
        parsed = [ollama.ChatResponse.model_validate(line) for line in lines]
        assert "".join(p.message.content or "" for p in parsed).strip()
        assert all(p.message.role == "assistant" for p in parsed)
        assert lines[-1]["done"] is True
        _check_counts(lines[-1], body)
    else:
        pytest.fail(f"no check for a recorded {path}: add one")
