"""Sentence embeddings: a vector per input text, from a model that declares a pooling.

Ollama's ``/api/embed`` in-process. A model can embed when its GGUF says how to pool token
vectors into one (``<arch>.pooling_type``) or when its architecture is an encoder made for it
(BERT and its relatives); a chat model is refused, as Ollama refuses it. Each request uses a
llama.cpp context of its own, with ``embeddings`` on, beside the model's chat context; vectors
come back L2-normalised.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import backend
from . import options as opts_mod
from .errors import ModelLoadError, NotSupportedError, RequestError
from .keepalive import parse_keep_alive
from .loaded import CACHE
from .models import resolve

# Architectures that exist to embed: llama.cpp pools them even without a pooling key.
# Truncating: a token covers at most this many characters of real text, so a prefix of
# num_ctx x this is all that can be kept; tokenizing the rest of a huge input is wasted.
TRUNCATE_CHARS_PER_TOKEN = 64
EMBEDDING_ARCHITECTURES = frozenset({
    "bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert",
    "neo-bert", "t5encoder",
})
_POOLING_NONE, _POOLING_MEAN, _POOLING_RANK = 0, 1, 4


@dataclass
class EmbedResult:
    """Ollama's embed response: one vector per input, durations in nanoseconds."""

    model: str
    embeddings: list[list[float]]
    prompt_eval_count: int = 0
    total_duration: int = 0
    load_duration: int = 0


def pooling_of(path: Any) -> int | None:
    """The pooling llama.cpp should use for the model at ``path``, or None if it cannot embed.

    Read from the GGUF header, so a chat model is refused before its weights are loaded.
    """
    from .gguf import read_gguf

    info = read_gguf(path)
    pooling = info.arch_value("pooling_type")
    if isinstance(pooling, int) and pooling not in (_POOLING_NONE, _POOLING_RANK):
        return pooling
    if info.architecture in EMBEDDING_ARCHITECTURES and pooling != _POOLING_RANK:
        return _POOLING_MEAN
    return None


def embed(
    model: str,
    inputs: Sequence[str],
    *,
    truncate: bool = True,
    options: Mapping[str, Any] | None = None,
    keep_alive: Any = None,
    dimensions: int | None = None,
) -> EmbedResult:
    """Embed each text of ``inputs`` with ``model``.

    A text longer than the context (``num_ctx``, at most the model's training context) is cut
    to fit when ``truncate`` is true and refused otherwise. ``dimensions`` keeps only the first
    N components (for Matryoshka-trained models), normalised again.
    """
    start = time.perf_counter_ns()
    if isinstance(inputs, (str, bytes)) or not all(isinstance(t, str) for t in inputs):
        raise RequestError("input must be a string or a list of strings")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or dimensions < 1):
        raise RequestError("dimensions must be a positive integer")
    opts = opts_mod.validate(options)
    keep = parse_keep_alive(keep_alive)
    resolved = resolve(model)
    pooling = pooling_of(resolved.path)
    if pooling is None:
        raise NotSupportedError(f"model '{resolved.name}' does not support embeddings")
    entry = CACHE.acquire(resolved, opts)
    ready = time.perf_counter_ns()
    try:
        with entry.lock:
            vectors, count = _embed_all(entry.engine, list(inputs), opts, pooling, truncate)
    finally:
        CACHE.release(entry, keep)
    if dimensions is not None:
        vectors = [_normalised(v[:dimensions]) for v in vectors]
    return EmbedResult(
        model=resolved.name,
        embeddings=vectors,
        prompt_eval_count=count,
        total_duration=time.perf_counter_ns() - start,
        load_duration=ready - start,
    )


def _embed_all(engine: Any, texts: list[str], options: dict[str, Any], pooling: int,
               truncate: bool) -> tuple[list[list[float]], int]:
    # The engine owns the weights; the embedding context only borrows them for this request.
    loaded = engine._model
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
    ctx = _context(loaded, max(len(t) for t in token_lists), pooling, opts["num_thread"])
    try:
        return [_embed_one(ctx, llama_model, tokens) for tokens in token_lists], \
            sum(len(t) for t in token_lists)
    finally:
        ctx.close()


def _tokens(llama_model: Any, text: str, limit: int, truncate: bool) -> list[int]:
    """The text's tokens with the model's BOS/EOS (CLS/SEP), cut to ``limit`` if allowed."""
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


def _context(loaded: Any, n_tokens: int, pooling: int, n_threads: int) -> Any:
    lc = backend.llama()
    from llama_cpp import _internals

    params = lc.llama_context_default_params()
    params.n_ctx = n_tokens
    # Non-causal encoders need the whole input in one micro-batch.
    params.n_batch = params.n_ubatch = n_tokens
    params.n_seq_max = 1
    params.n_threads = params.n_threads_batch = n_threads
    params.embeddings = True
    params.pooling_type = pooling
    params.no_perf = True
    try:
        return _internals.LlamaContext(model=loaded.model, params=params, verbose=False)
    except ValueError:
        raise ModelLoadError(
            f"llama.cpp could not create an embedding context for {loaded.path}"
        ) from None


def _embed_one(ctx: Any, llama_model: Any, tokens: list[int]) -> list[float]:
    lc = backend.llama()
    from llama_cpp import _internals

    ctx.kv_cache_clear()
    batch = _internals.LlamaBatch(n_tokens=len(tokens), embd=0, n_seq_max=1, verbose=False)
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
        return _normalised(pointer[: lc.llama_model_n_embd(raw)])
    finally:
        batch.close()


def _normalised(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else [float(x) for x in vector]
