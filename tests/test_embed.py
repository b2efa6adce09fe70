"""Embeddings from any model: ``chatcli.embed()``, ``/api/embed``, ``/api/embeddings`` and
``/v1/embeddings``.

llama.cpp pools a llama-architecture model's hidden states as its GGUF's ``llama.pooling_type``
says, so tiny random-weight files written here stand in for an embedding model and check the
pooling, the bounds and the normalisation; the real bundled chat model (which declares no
pooling) is embedded through the Python API, the official ``ollama`` and ``openai`` clients.
"""

from __future__ import annotations

import math

import httpx
import ollama
import openai
import pytest
from live_server import ServerThread
from tiny_gguf import write_tiny_llama

import chatcli
from chatcli.core.errors import ModelNotFoundError, RequestError
from chatcli.engine.embedding import embed, pool, pooling_of
from chatcli.engine.loaded import CACHE
from chatcli.models.gguf import read_gguf
from chatcli.serve.app import build_app

NONE, MEAN, CLS, LAST, RANK = 0, 1, 2, 3, 4
MODEL = "smollm2:135m"
TEXTS = ["The cat sat on the mat.", "Quarterly revenue grew by four percent.",
         "The cat sat on the mat."]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("embed") / "mean.gguf", pooling_type=MEAN)


@pytest.fixture(scope="module")
def n_embd(bundled_path):
    return read_gguf(bundled_path).arch_value("embedding_length")


def norm(vector):
    return math.sqrt(sum(x * x for x in vector))


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def assert_same_different(vectors, n_embd):
    """Three unit vectors of the model's width; the 1st and 3rd (same text) equal, the 2nd not."""
    assert len(vectors) == 3
    assert all(len(v) == n_embd for v in vectors)
    assert all(abs(norm(v) - 1) < 1e-6 for v in vectors)
    assert dot(vectors[0], vectors[2]) == pytest.approx(1.0, abs=1e-6)
    assert dot(vectors[0], vectors[1]) < 0.99


# -- the pooling ---------------------------------------------------------------------------------


def test_one_unit_vector_per_input(embedder):
    result = embed(str(embedder), ["hello world", "the a is of", "hello world"])
    assert len(result.embeddings) == 3
    assert all(len(v) == 32 for v in result.embeddings)  # the model's n_embd
    assert all(abs(norm(v) - 1) < 1e-6 for v in result.embeddings)
    same, other = result.embeddings[0], result.embeddings[1]
    assert dot(same, result.embeddings[2]) == pytest.approx(1.0, abs=1e-9)
    assert dot(same, other) < 0.999
    assert result.prompt_eval_count > 6  # every input's tokens, BOS included
    assert result.total_duration >= result.load_duration > 0
    assert result.model == str(embedder)


def test_the_models_pooling_is_used(tmp_path, embedder):
    # Same weights (same seed), another pooling: another vector.
    last = write_tiny_llama(tmp_path / "last.gguf", pooling_type=LAST)
    assert pooling_of(last) == LAST
    mean_vec = embed(str(embedder), ["hello world"]).embeddings[0]
    last_vec = embed(str(last), ["hello world"]).embeddings[0]
    assert dot(mean_vec, last_vec) < 0.999


def test_a_chat_model_is_pooled_by_its_last_token(tmp_path, tiny_gguf):
    # Ollama's llama.cpp runner: no pooling declared -> the last token's hidden state. Same
    # weights declared as last-token pooled give the very same vectors.
    assert pooling_of(tiny_gguf) == LAST
    last = write_tiny_llama(tmp_path / "last.gguf", pooling_type=LAST)
    texts = ["hello world", "the user is of the world"]
    for chat_vec, last_vec in zip(embed(str(tiny_gguf), texts).embeddings,
                                  embed(str(last), texts).embeddings, strict=True):
        assert chat_vec == pytest.approx(last_vec, abs=1e-6)
    mean = write_tiny_llama(tmp_path / "mean.gguf", pooling_type=MEAN)
    assert dot(embed(str(tiny_gguf), texts).embeddings[1],
               embed(str(mean), texts).embeddings[1]) < 0.999


@pytest.mark.parametrize(("arch", "declared", "expected"), [
    ("llama", None, LAST), ("llama", NONE, LAST), ("llama", RANK, LAST), ("llama", CLS, CLS),
    ("llama", MEAN, MEAN), ("bert", None, MEAN), ("bert", RANK, MEAN), ("bert", CLS, CLS),
])
def test_every_model_has_a_pooling(tmp_path, arch, declared, expected):
    import gguf

    path = tmp_path / f"{arch}.gguf"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    if declared is not None:
        w.add_pooling_type(gguf.PoolingType(declared))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    assert pooling_of(path) == expected


# -- bounds ----------------------------------------------------------------------------------------


def test_long_inputs_are_cut_to_the_context(embedder):
    long_a = "hello world " * 20 + "the end"
    long_b = "hello world " * 20 + "is of a user"
    whole = embed(str(embedder), [long_a, long_b])
    assert dot(whole.embeddings[0], whole.embeddings[1]) < 0.9999
    cut = embed(str(embedder), [long_a, long_b], options={"num_ctx": 64})
    assert cut.prompt_eval_count == 2 * 64
    # Both were cut inside their shared beginning, so now they embed the same.
    assert dot(cut.embeddings[0], cut.embeddings[1]) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(RequestError, match="longer than the context"):
        embed(str(embedder), [long_a], truncate=False, options={"num_ctx": 64})


def test_a_huge_input_is_not_tokenized_whole(embedder):
    # 8 MB (the server's body limit) is ~25 s of tokenizing: cut first, or refuse by the bound.
    import time

    huge = "hello world " * 700_000
    start = time.monotonic()
    cut = embed(str(embedder), [huge], options={"num_ctx": 64})
    assert cut.prompt_eval_count == 64
    with pytest.raises(RequestError, match="at least .* tokens, longer than the context"):
        embed(str(embedder), [huge], truncate=False, options={"num_ctx": 64})
    assert time.monotonic() - start < 5


def test_dimensions_keep_a_normalised_prefix(embedder):
    full = embed(str(embedder), ["hello world"]).embeddings[0]
    short = embed(str(embedder), ["hello world"], dimensions=8).embeddings[0]
    assert len(short) == 8 and abs(norm(short) - 1) < 1e-6
    scale = norm(full[:8])
    assert short == pytest.approx([x / scale for x in full[:8]])
    assert embed(str(embedder), "hello world", dimensions=1000).embeddings[0] == \
        pytest.approx(full)


def test_pool_is_not_normalised(embedder):
    raw = pool(str(embedder), ["hello world"]).embeddings[0]
    unit = embed(str(embedder), ["hello world"]).embeddings[0]
    assert abs(norm(raw) - 1) > 1e-3
    assert [x / norm(raw) for x in raw] == pytest.approx(unit, abs=1e-9)


def test_no_inputs_no_vectors(embedder):
    assert embed(str(embedder), []).embeddings == []
    assert embed(str(embedder), "").embeddings == []  # as Ollama: an empty string embeds nothing


@pytest.mark.parametrize("kwargs", [
    {"input": 5}, {"input": ["a", 5]}, {"input": b"bytes"}, {"input": "a", "truncate": "no"},
    {"input": "a", "dimensions": 0}, {"input": "a", "dimensions": True},
    {"input": "a", "keep_alive": "soon"}, {"input": "a", "options": {"num_ctx": "big"}},
])
def test_bad_arguments_are_request_errors(embedder, kwargs):
    with pytest.raises(chatcli.ChatCliError):
        embed(str(embedder), **kwargs)


def test_options_are_lenient_as_chats(embedder):
    # LangChain's OllamaEmbeddings sends every option, most of them null.
    options = {"temperature": None, "mirostat": 0, "tfs_z": None, "not_an_option": 1}
    assert len(embed(str(embedder), "hello world", options=options).embeddings) == 1


# -- the bundled chat model, through the Python API --------------------------------------------


def test_the_python_api_embeds_with_a_chat_model(bundled_path, n_embd):
    import chatcli.engine.embedding  # noqa: F401  the submodule's import must not hide chatcli.embed

    result = chatcli.embed(model=MODEL, input=TEXTS)
    assert isinstance(result, chatcli.EmbedResponse)
    assert_same_different(result.embeddings, n_embd)
    assert result["embeddings"] is result.embeddings and result["model"] == MODEL
    assert result.prompt_eval_count > 10
    assert result.total_duration >= result.load_duration >= 0
    one = chatcli.embed(MODEL, TEXTS[1], truncate=True, keep_alive="5m")
    assert one.embeddings[0] == pytest.approx(result.embeddings[1], abs=1e-6)
    with pytest.raises(ModelNotFoundError):
        chatcli.embed("no-such-model", "hello")


def test_chat_right_after_an_embedding_shares_the_weights(bundled_path):
    chatcli.embed(MODEL, "hello")
    loaded = [e for e in CACHE.loaded() if e.model.path == bundled_path.resolve()]
    answer = chatcli.chat(MODEL, [{"role": "user", "content": "Say hi"}],
                          options={"num_predict": 4, "temperature": 0})
    assert answer.message.content and answer.eval_count > 0
    after = [e for e in CACHE.loaded() if e.model.path == bundled_path.resolve()]
    assert len(after) == 1 and after[0] is loaded[0]  # one load, for both


# -- the server, through the official clients --------------------------------------------------


@pytest.fixture(scope="module")
def server():
    with ServerThread(build_app()) as running:
        yield running


def test_ollama_client_embed(server, bundled_path, n_embd):
    client = ollama.Client(host=server.url, timeout=300)
    result = client.embed(model=MODEL, input=TEXTS)
    assert result.model == MODEL
    assert_same_different(result.embeddings, n_embd)
    assert result.prompt_eval_count > 10 and result.total_duration > 0
    direct = chatcli.embed(MODEL, TEXTS)
    assert result.embeddings[1] == pytest.approx(direct.embeddings[1], abs=1e-6)
    short = client.embed(model=MODEL, input=TEXTS[0], dimensions=64).embeddings[0]
    assert len(short) == 64 and abs(norm(short) - 1) < 1e-6
    # The legacy endpoint: the same direction, not normalised (as Ollama's).
    legacy = client.embeddings(model=MODEL, prompt=TEXTS[0]).embedding
    assert len(legacy) == n_embd and abs(norm(legacy) - 1) > 1e-3
    assert [x / norm(legacy) for x in legacy] == pytest.approx(result.embeddings[0], abs=1e-5)
    # And a chat with the same model right after, on the same loaded weights.
    answer = client.chat(model=MODEL, messages=[{"role": "user", "content": "Say hi"}],
                         options={"num_predict": 4, "temperature": 0})
    assert answer.message.content
    assert [m.model for m in client.ps().models].count(MODEL) == 1


def test_openai_client_embeddings(server, bundled_path, n_embd):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)
    result = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert [d.index for d in result.data] == [0, 1, 2]
    assert_same_different([d.embedding for d in result.data], n_embd)
    assert result.usage.prompt_tokens > 10
    packed = client.embeddings.create(model=MODEL, input=TEXTS[1])  # the client's base64
    assert packed.data[0].embedding == pytest.approx(result.data[1].embedding, abs=1e-6)


def test_api_embed_edges(server, bundled_path):
    with httpx.Client(base_url=server.url, timeout=300) as http:
        r = http.post("/api/embed", json={"model": MODEL, "input": ""})
        assert r.status_code == 200 and r.json()["embeddings"] == []
        r = http.post("/api/embeddings", json={"model": MODEL, "prompt": ""})
        assert r.status_code == 200 and r.json() == {"embedding": []}
        r = http.post("/api/embed", json={"model": MODEL, "input": "hi", "dimensions": 0})
        assert r.status_code == 200 and len(r.json()["embeddings"][0]) > 64
        r = http.post("/api/embed", json={"model": MODEL, "input": "hi", "dimensions": -1})
        assert r.status_code == 400
        r = http.post("/api/embed", json={"model": "no-such-model", "input": "hi"})
        assert r.status_code == 404
        r = http.post("/api/embeddings", json={"model": "no-such-model", "prompt": ""})
        assert r.status_code == 404
