"""Options as lenient as Ollama's for programs (server, chatcli.chat()), strict for people (CLI).

The request bodies are those the libraries people point at Ollama send: llama-index's
``Ollama(model=...)`` (``temperature: null``), LangChain's ChatOllama and OllamaEmbeddings
(every option null, mirostat included). They go through the official ``ollama`` client, which
is what those libraries call, and keeps the nulls.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys

import ollama
import pytest

from chatcli import chat
from chatcli.core.errors import InvalidOptionError
from chatcli.engine import binding as backend
from chatcli.engine.decode import load

MODEL = "smollm2:135m"
FAST = {"num_predict": 8, "num_thread": 1}
HI = [{"role": "user", "content": "Say hi."}]
# llama-index-llms-ollama: {"temperature": self.temperature, "num_ctx": context_window}, with
# temperature None by default and the window read from /api/show (8192 for smollm2).
LLAMA_INDEX = {"temperature": None, "num_ctx": 8192}
# langchain-ollama ChatOllama (before it dropped unset values) and OllamaEmbeddings: each
# field it knows, None unless set.
LANGCHAIN_CHAT = dict.fromkeys(
    ["mirostat", "mirostat_eta", "mirostat_tau", "num_ctx", "num_gpu", "num_thread",
     "num_predict", "repeat_last_n", "repeat_penalty", "temperature", "seed", "stop", "tfs_z",
     "top_k", "top_p"])
LANGCHAIN_EMBEDDINGS = dict.fromkeys(
    ["mirostat", "mirostat_eta", "mirostat_tau", "num_ctx", "num_gpu", "num_thread",
     "repeat_last_n", "repeat_penalty", "temperature", "stop", "tfs_z", "top_k", "top_p"])


@pytest.fixture
def client(url):
    return ollama.Client(host=url, timeout=120)


# -- the server ----------------------------------------------------------------------------------


def test_llama_index_payload_is_served(client):
    r = client.chat(model=MODEL, messages=HI, stream=False, format="", tools=None,
                    options={**LLAMA_INDEX, **FAST}, keep_alive=None)
    assert r.done and r.message.content.strip()


def test_langchain_chat_payload_is_served(client):
    chunks = list(client.chat(model=MODEL, messages=HI, stream=True,
                              options={**LANGCHAIN_CHAT, "num_predict": 8, "num_thread": 1}))
    assert chunks[-1].done and "".join(c.message.content for c in chunks).strip()
    r = client.generate(model=MODEL, prompt="Say hi.", stream=False,
                        options={**LANGCHAIN_CHAT, "num_predict": 8, "num_thread": 1})
    assert r.done and r.response.strip()


def test_langchain_embeddings_payload_is_served(http, client, tmp_path):
    from tiny_gguf import write_tiny_llama

    # An embedding model of its own, so that this test is about options only.
    data = write_tiny_llama(tmp_path / "embed.gguf", pooling_type=1).read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
    r = http.post("/api/create", json={"model": "embedder", "files": {"e.gguf": digest},
                                       "stream": False})
    assert r.status_code == 200, r.text
    r = client.embed(model="embedder", input=["hello", "world"], options=LANGCHAIN_EMBEDDINGS)
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) > 0


def test_unknown_and_unsupported_options_are_ignored(http, caplog):
    caplog.set_level(logging.WARNING, logger="chatcli")
    body = {"model": MODEL, "messages": HI, "stream": False,
            "options": {**FAST, "mirostat": 0, "tfs_z": 0.5, "no_such_option": 1,
                        "use_mmap": True}}
    r = http.post("/api/chat", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["message"]["content"].strip()
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "chatcli"]
    assert "option 'no_such_option' ignored: unknown option" in logged
    assert any(m.startswith("option 'tfs_z' ignored") for m in logged)
    assert not any("use_mmap" in m or "mirostat" in m for m in logged)


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
@pytest.mark.parametrize("bad, words", [
    ({"temperature": "hot"}, "'temperature' must be a number"),
    ({"mirostat": 3}, "'mirostat' must be 0, 1 or 2"),
    ({"typical_p": 2}, "'typical_p' must be 0..1"),
    ({"use_mmap": "yes"}, "'use_mmap' must be true or false"),
    ({"top_k": 1.5}, "'top_k' must be an integer"),
])
def test_a_bad_value_of_a_known_option_is_400(http, path, bad, words):
    body = {"model": MODEL, "stream": False, "options": bad,
            **({"messages": HI} if path == "/api/chat" else {"prompt": "hi"})}
    r = http.post(path, json=body)
    assert r.status_code == 400 and words in r.json()["error"]


def test_embed_refuses_a_bad_value_of_a_known_option(http):
    r = http.post("/api/embed", json={"model": MODEL, "input": "hi",
                                      "options": {"temperature": "hot"}})
    assert r.status_code == 400 and "'temperature' must be a number" in r.json()["error"]


def test_openai_route_nulls_are_defaults_and_bad_values_400(http):
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI,
                                                "temperature": None, "top_p": None,
                                                "max_tokens": 8, "seed": 42})
    assert r.status_code == 200, r.text
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI,
                                                "temperature": "hot"})
    assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]


def test_create_parameters_keep_what_chatcli_honours(http):
    r = http.post("/api/create", json={"model": "lenient", "from": MODEL, "stream": False,
                                       "parameters": {"temperature": 0, "mirostat": 2,
                                                      "num_keep": 4, "top_k": None}})
    assert r.status_code == 200, r.text
    params = http.post("/api/show", json={"model": "lenient"}).json()["parameters"]
    assert "mirostat" in params and "temperature" in params
    assert "num_keep" not in params and "top_k" not in params


# -- the Python API --------------------------------------------------------------------------------


def test_python_api_takes_the_same_payloads():
    for options in (LLAMA_INDEX, LANGCHAIN_CHAT, {"mirostat": 0, "tfs_z": 1, "whatever": 2}):
        r = chat(MODEL, HI, options={**options, **FAST})
        assert r.done and r.message.content.strip()
    with pytest.raises(InvalidOptionError, match="'mirostat' must be 0, 1 or 2"):
        chat(MODEL, HI, options={"mirostat": 7})


# -- sampling: mirostat and typical_p take effect --------------------------------------------


def _chain(engine, opts):
    lc = backend.llama()
    sampler = engine._sampler(engine.resolve_options(opts), [], None)
    try:
        n = lc.llama_sampler_chain_n(sampler.sampler)
        return [lc.llama_sampler_name(lc.llama_sampler_chain_get(sampler.sampler, i)).decode()
                for i in range(n)]
    finally:
        sampler.close()


def test_sampler_chain(bundled_path):
    engine = load(bundled_path, options={"num_ctx": 256, "num_thread": 1})
    try:
        assert _chain(engine, {}) == ["penalties", "top-k", "top-p", "temp", "dist"]
        assert _chain(engine, {"typical_p": 0.5}) == ["penalties", "top-k", "typical", "top-p",
                                                      "temp", "dist"]
        assert _chain(engine, {"mirostat": 1}) == ["penalties", "temp", "mirostat"]
        assert _chain(engine, {"mirostat": 2, "top_k": 5}) == ["penalties", "temp",
                                                               "mirostat-v2"]
        assert _chain(engine, {"mirostat": 2, "temperature": 0}) == ["penalties", "greedy"]
    finally:
        engine.close()


def test_mirostat_and_typical_p_change_what_is_sampled():
    ask = [{"role": "user", "content": "Tell me a story about a cat."}]
    base = {**FAST, "temperature": 1.5, "repeat_penalty": 1.0}

    def text(**options):
        return chat(MODEL, ask, options={**base, **options}).message.content

    # At temperature 1.5 the seed decides the text...
    assert text(seed=1) != text(seed=2)
    # ...unless typical_p keeps a single candidate per step (the one whose surprise is closest
    # to the distribution's entropy)...
    assert text(seed=1, typical_p=0) == text(seed=2, typical_p=0)
    # ...or Mirostat 2.0 aims at zero surprise, which leaves only the most likely token.
    greedy = text(temperature=0)
    assert text(seed=1, mirostat=2, mirostat_tau=0) == greedy
    assert text(seed=2, mirostat=2, mirostat_tau=0) == greedy


# -- people: strict ------------------------------------------------------------------------------


@pytest.mark.parametrize("option, words", [
    ("mirostatt=1", "unknown option 'mirostatt'"),
    ("tfs_z=0.9", "option 'tfs_z' is not supported by chatcli"),
    ("mirostat=3", "'mirostat' must be 0, 1 or 2"),
])
def test_cli_refuses_in_one_line(cli_env, option, words):
    p = subprocess.run([sys.executable, "-m", "chatcli", "run", MODEL, "-o", option, "hi"],
                       env=cli_env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1
    assert words in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_modelfile_parameters_are_strict():
    from chatcli.models.modelfile import ModelfileError, parse_modelfile

    mf = parse_modelfile("FROM x\nPARAMETER mirostat 2\nPARAMETER typical_p 0.5")
    assert mf.parameters == {"mirostat": 2, "typical_p": 0.5}
    with pytest.raises(ModelfileError, match="line 2: unknown option 'mirostatt'"):
        parse_modelfile("FROM x\nPARAMETER mirostatt 2")
    with pytest.raises(ModelfileError, match="line 2: option 'tfs_z' is not supported"):
        parse_modelfile("FROM x\nPARAMETER tfs_z 0.9")
