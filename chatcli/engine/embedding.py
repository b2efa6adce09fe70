"""Sentence embeddings: one vector per input text, from any model, as Ollama gives them.

Every model can embed. Its hidden states (the last layer's output, after the final norm) are
pooled into one vector with the pooling its GGUF declares (``<arch>.pooling_type``: mean, CLS
or last token). A model that declares none is pooled as Ollama's llama.cpp runner pools it:
by its last token, the one that has attended to the whole input; an encoder made to embed
(BERT and its relatives) by the mean, as llama.cpp does. Each request uses a llama.cpp context
of its own, with ``embeddings`` on, that borrows the loaded weights: the model is loaded once
for chat and embeddings alike, and the chat's KV cache is left as it was.

``embed`` is the ``ollama`` client's ``embed()`` and answers ``/api/embed`` and ``/v1/embeddings``
(vectors L2-normalised, as Ollama's are); ``pool`` answers the legacy ``/api/embeddings`` (the
pooled vector as the model gives it: Ollama does not normalise it there).

    from chatcli import embed
    vectors = embed(model='smollm2:135m', input=['first text', 'second text']).embeddings
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatcli.core import options as opts_mod
from chatcli.core import textclean
from chatcli.core.errors import ModelLoadError, NotSupportedError, RequestError
from chatcli.core.keepalive import parse_keep_alive
from chatcli.core.names import DEFAULT_MODEL
from chatcli.engine import binding as backend
from chatcli.engine.loaded import CACHE
from chatcli.models.resolve import resolve

# Truncating: a token covers at most this many characters of real text, so a prefix of
# num_ctx x this is all that can be kept; tokenizing the rest of a huge input is wasted.
TRUNCATE_CHARS_PER_TOKEN = 64
# Architectures that exist to embed: mean-pooled when their GGUF names no pooling.
EMBEDDING_ARCHITECTURES = frozenset({
    "bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert",
    "neo-bert", "t5encoder",
})
# llama.cpp's enum llama_pooling_type.
POOLING_NONE, POOLING_MEAN, POOLING_CLS, POOLING_LAST, POOLING_RANK = 0, 1, 2, 3, 4
POOLING_NAMES = {POOLING_MEAN: "mean", POOLING_CLS: "cls", POOLING_LAST: "last"}


@dataclass
class Embeddings:
    """One vector per input text, and what they cost (durations in nanoseconds): the fields of
    the ``ollama`` client's EmbedResponse, which ``chatcli.embed`` builds from them."""

    model: str
    embeddings: list[list[float]]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0


def pooling_of(path: Any) -> int:
    """How the model at ``path`` pools its hidden states into one vector (llama.cpp's enum).

    Read from the GGUF header: the declared mean, CLS or last-token pooling; otherwise (no
    pooling key, ``none``, or ``rank``, a reranker's score head) the mean for an embedding
    encoder and the last token for every other model, as Ollama's llama.cpp runner does.
    """
    from chatcli.models.gguf import read_gguf

    info = read_gguf(path)
    declared = info.arch_value("pooling_type")
    if type(declared) is int and declared in POOLING_NAMES:
        return declared
    return POOLING_MEAN if info.architecture in EMBEDDING_ARCHITECTURES else POOLING_LAST


def embed(
    model: str = "",
    input: str | Sequence[str] = "",
    *,
    truncate: bool | None = None,
    options: Mapping[str, Any] | None = None,
    keep_alive: float | str | None = None,
    dimensions: int | None = None,
) -> Embeddings:
    """What ``chatcli.embed`` returns (see its docstring for the rules), as plain data: one
    unit vector per text, plus the counts and durations."""
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or dimensions < 1):
        raise RequestError("dimensions must be a positive integer")
    if isinstance(input, str):
        input = [input] if input else []
    result = pool(model, input, truncate=truncate, options=options, keep_alive=keep_alive)
    result.embeddings = [_normalised(v) for v in result.embeddings]
    if dimensions is not None:
        result.embeddings = [_normalised(v[:dimensions]) for v in result.embeddings]
    return result


def pool(
    model: str,
    inputs: Sequence[str],
    *,
    truncate: bool | None = None,
    options: Mapping[str, Any] | None = None,
    keep_alive: float | str | None = None,
) -> Embeddings:
    """The pooled hidden state of each text of ``inputs``, not normalised (legacy
    ``/api/embeddings``); bounds and errors as ``embed``'s."""
    start = time.perf_counter_ns()
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence) \
            or not all(isinstance(t, str) for t in inputs):
        raise RequestError("input must be a string or a list of strings")
    if truncate is not None and not isinstance(truncate, bool):
        raise RequestError("truncate must be true or false")
    texts = [textclean.clean_text(t) for t in inputs]
    options = textclean.clean_value(options, "options") if options else options
    opts = opts_mod.accept(options).options  # lenient, as chat() and Ollama are with programs
    keep = parse_keep_alive(keep_alive)
    resolved = resolve(model or DEFAULT_MODEL)
    pooling = pooling_of(resolved.path)
    entry = CACHE.acquire(resolved, opts)
    ready = time.perf_counter_ns()
    try:
        with entry.lock:
            vectors, count = _embed_all(entry.engine, texts, opts, pooling, truncate is not False)
    finally:
        CACHE.release(entry, keep)
    return Embeddings(
        model=resolved.name,
        embeddings=vectors,
        prompt_eval_count=count,
        total_duration=time.perf_counter_ns() - start,
        load_duration=ready - start,
    )


def _embed_all(engine: Any, texts: list[str], options: dict[str, Any], pooling: int,
               truncate: bool) -> tuple[list[list[float]], int]:
    # The engine owns the weights; the embedding context only borrows them for this request.
    loaded = engine.loaded_model
    llama_model = loaded.model
    opts = engine.resolve_options(options)
    limit = min(int(opts["num_ctx"]), engine.n_ctx_train or int(opts["num_ctx"]))
    token_lists = []
    for text in texts:
        if truncate:  # a token covers at most a few dozen characters: the rest would be cut
            text = text[: limit * TRUNCATE_CHARS_PER_TOKEN]
        elif engine.min_tokens(text) > limit:
            raise RequestError(f"input is at least {engine.min_tokens(text)} tokens, longer "
                               f"than the context ({limit}); shorten it or allow truncation")
        token_lists.append(_tokens(llama_model, text, limit, truncate))
    if not token_lists:
        return [], 0
    ctx = backend.new_embedding_context(loaded, n_tokens=max(len(t) for t in token_lists),
                                        pooling=pooling, n_threads=opts["num_thread"])
    try:
        return [_embed_one(ctx, llama_model, tokens) for tokens in token_lists], \
            sum(len(t) for t in token_lists)
    finally:
        ctx.close()


def _tokens(llama_model: Any, text: str, limit: int, truncate: bool) -> list[int]:
    """The text's tokens with the special tokens the model adds (BOS, or CLS/SEP), cut to
    ``limit`` if allowed."""
    tokens = llama_model.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    if not tokens:
        raise RequestError("cannot embed an empty input with this model (it has no BOS token)")
    if len(tokens) <= limit:
        return tokens
    if not truncate:
        raise RequestError(f"input is {len(tokens)} tokens, longer than the context "
                           f"({limit}); shorten it or allow truncation")
    eos = llama_model.token_eos()
    # Keep a closing EOS/SEP: encoders pool over a sequence that ends with it.
    if tokens[-1] == eos and eos >= 0:
        return tokens[: limit - 1] + [eos]
    return tokens[:limit]


def _embed_one(ctx: Any, llama_model: Any, tokens: list[int]) -> list[float]:
    lc = backend.llama()
    ctx.kv_cache_clear()
    batch = backend.new_batch(len(tokens))
    try:
        batch.add_sequence(tokens, 0, True)
        raw = llama_model.model
        encoder_only = lc.llama_model_has_encoder(raw) and not lc.llama_model_has_decoder(raw)
        ret = (lc.llama_encode if encoder_only else lc.llama_decode)(ctx.ctx, batch.batch)
        if ret != 0:
            raise ModelLoadError(f"llama.cpp could not embed the input (error {ret})")
        pointer = lc.llama_get_embeddings_seq(ctx.ctx, 0)
        if not pointer:
            raise NotSupportedError("llama.cpp produced no pooled embedding for this model")
        vector = pointer[: lc.llama_model_n_embd(raw)]
    finally:
        batch.close()
    if not all(math.isfinite(x) for x in vector):
        raise ModelLoadError("the model produced an embedding with NaN or infinite values")
    return [float(x) for x in vector]


def _normalised(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else [float(x) for x in vector]
