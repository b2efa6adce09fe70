"""embed(): sentence vectors from models that declare a pooling, refusal for the others.

llama.cpp pools a llama-architecture model's token vectors when its GGUF has
``llama.pooling_type``, so tiny random-weight files written here stand in for an embedding
model; the refusal is checked on the real bundled chat model.
"""

from __future__ import annotations

import math

import pytest
from tiny_gguf import write_tiny_llama

from chatcli.embed import embed, pooling_of
from chatcli.errors import NotSupportedError, RequestError
from chatcli.loaded import CACHE

MEAN, CLS, LAST = 1, 2, 3


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("embed") / "mean.gguf", pooling_type=MEAN)


def norm(vector):
    return math.sqrt(sum(x * x for x in vector))


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


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


def test_no_inputs_no_vectors(embedder):
    assert embed(str(embedder), []).embeddings == []
    with pytest.raises(RequestError):
        embed(str(embedder), "not a list")


def test_chat_models_are_refused_before_loading(tmp_path, tiny_gguf):
    with pytest.raises(NotSupportedError, match="does not support embeddings"):
        embed(str(tiny_gguf), ["hello"])
    assert all(e.model.path != tiny_gguf.resolve() for e in CACHE.loaded())


def test_the_bundled_chat_model_is_refused(bundled_path):
    with pytest.raises(NotSupportedError) as info:
        embed("smollm2:135m", ["hello"])
    assert str(info.value) == "model 'smollm2:135m' does not support embeddings"


def test_embedding_architectures_need_no_pooling_key(tmp_path):
    import gguf

    path = tmp_path / "fake-bert.gguf"
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    assert pooling_of(path) == MEAN
