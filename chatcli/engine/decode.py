"""The in-process engine: one GGUF model, one llama.cpp context, our own decode loop.

``Engine.chat`` formats a conversation with the model's template, evaluates only the tokens
after the longest prefix already in the KV cache (so turn N does not re-read turns 1..N-1),
then samples token by token, yielding typed events. Per-token work is a fixed handful of C calls
plus incremental detokenization, so it does not grow with the answer's length.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatcli.core import options as opts_mod
from chatcli.core.errors import (
    ContextOverflowError,
    ModelLoadError,
    NotSupportedError,
    RequestError,
)
from chatcli.core.events import Done, Event, Metrics, Trimmed
from chatcli.engine import binding as backend
from chatcli.engine import memory, safemode, states
from chatcli.engine.cancel import CancelFlag, abort_callback
from chatcli.engine.output.parsing import OutputParser
from chatcli.engine.states import common_prefix
from chatcli.engine.template import ChatTemplate
from chatcli.engine.textstream import StopMatcher, Utf8Stream

if TYPE_CHECKING:
    from llama_cpp._internals import LlamaBatch, LlamaContext

    from chatcli.engine.vision import Vision

DEFAULT_NUM_CTX = 4096
# Room kept free for the answer when old messages must be dropped to fit num_ctx.
ANSWER_RESERVE = 512
_RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed
# num_ctx above the model's training context is lowered to it unless this is set (to 1).
LONG_CONTEXT_ENV = "CHATCLI_ALLOW_LONG_CONTEXT"
_log = logging.getLogger("chatcli")


@dataclass
class Prepared:
    """A request made ready for decoding (``Engine.prepare``)."""

    tokens: list[int]  # the whole prompt, from position 0
    dropped: int  # old messages left out to fit num_ctx (0: none)
    kept: int
    prompt: str  # the prompt's text (what the output parser may need to see)
    opts: dict[str, Any]  # every option resolved
    images: list[bytes]  # images to read with the vision projector (the prompt has markers)
    grammar: str | None  # GBNF that constrains the answer (format / tools), if any
    parser: OutputParser  # splits the answer into content, thinking and tool calls
    special: bool  # whether control tokens are rendered as text

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """What the context must be for this request: (num_ctx, n_batch, num_gpu, threads)."""
        return (*context_size(self.opts), self.opts["num_gpu"], self.opts["num_thread"])


def context_size(opts: Mapping[str, Any]) -> tuple[int, int]:
    """(n_ctx, n_batch) of the context that resolved options ask for."""
    return int(opts["num_ctx"]), min(int(opts["num_batch"]), int(opts["num_ctx"]))


class AnswerText:
    """From sampled tokens to the answer's events: each token's piece (special tokens as
    text only when ``special``), whole UTF-8 characters only, cut at the first stop string,
    split by ``parser`` into content, thinking and tool calls. Work per token does not grow
    with the answer. One per answer (the single-sequence loop's, or a parallel slot's)."""

    def __init__(self, vocab: Any, stops: Sequence[str], parser: OutputParser,
                 special: bool) -> None:
        self._vocab = vocab
        self._stops = StopMatcher(list(stops))
        self._utf8 = Utf8Stream()
        self._parser = parser
        self._special = special
        self._size = 256
        self._buf = ctypes.create_string_buffer(self._size)
        self._to_piece = backend.llama().llama_token_to_piece

    @property
    def stopped(self) -> bool:
        """A stop string was found: the answer ends here."""
        return self._stops.stopped

    def feed(self, tok: int) -> list[Event]:
        """The events that token ``tok`` completes (often none)."""
        n = self._to_piece(self._vocab, tok, self._buf, self._size, 0, self._special)
        if n < 0:  # piece longer than the buffer: grow it once
            self._size = -n
            self._buf = ctypes.create_string_buffer(self._size)
            n = self._to_piece(self._vocab, tok, self._buf, self._size, 0, self._special)
        text = self._utf8.feed(self._buf.raw[:n])
        if not text:
            return []
        text = self._stops.feed(text)
        return self._parser.feed(text) if text else []

    def finish(self) -> list[Event]:
        """What was held back (a partial character, a possible stop string), then the
        parser's last events."""
        stops = self._stops
        tail = "" if stops.stopped else stops.feed(self._utf8.flush()) + stops.flush()
        return (self._parser.feed(tail) if tail else []) + self._parser.finish()


class Engine:
    """A loaded model ready to chat. Not thread-safe: callers serialise access."""

    def __init__(
        self,
        path: Path,
        *,
        name: str | None = None,
        model_options: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        projector: Path | None = None,
        parallel: int = 1,
    ) -> None:
        self.path = Path(path)
        # Sequences the context holds at once (``chat serve --parallel``): each gets num_ctx
        # tokens of its own, so the KV cache is parallel x num_ctx, as in Ollama.
        self.parallel = max(1, int(parallel))
        self.name = name or self.path.name
        self._projector = projector
        self._vision: Vision | None = None
        self._controls: list[int] | None = None
        # Defaults that come with the model (Modelfile PARAMETER lines, registry params layer).
        self.model_options = opts_mod.validate(model_options)
        start = time.perf_counter_ns()
        wanted = self.resolve_options(options, _loaded=False)
        self._model = safemode.load_model(self.path, wanted["num_gpu"])
        # The llama.cpp context, its decode batch and their (n_ctx, n_batch): all three set, or
        # none (before the first context, after a failed one, after close). See _live.
        self._ctx: LlamaContext | None = None
        self._batch: LlamaBatch | None = None
        self._ctx_shape: tuple[int, int] | None = None
        self._threads = 0
        self._cache: list[int] = []  # tokens whose K/V are in the context, from position 0
        self._cut: tuple[int, Any] | None = None  # where the last trim cut the conversation
        self._shape: memory.ModelShape | None = None
        self._pieces: tuple[int, bool] | None = None  # see min_tokens
        self._clamped: set[int] = set()  # num_ctx values already lowered to n_ctx_train
        self._states = states.StateStore()  # saved KV caches (see save_state and _resume)
        self._layouts: dict[tuple[int, int, int], str] = {}  # (n_ctx, n_batch, gpu) -> key
        meta = self._model.metadata
        self.template = ChatTemplate(
            meta.get("tokenizer.chat_template"),
            bos_token=self._token_text(self._model.model.token_bos()),
            eos_token=self._token_text(self._model.model.token_eos()),
            model_name=self.name,
        )
        try:
            self._ensure_context(self.resolve_options(options))
        except BaseException:
            self._model.close()
            raise
        self.load_duration = time.perf_counter_ns() - start

    # -- facts -----------------------------------------------------------------------------

    @property
    def metadata(self) -> dict[str, str]:
        return self._model.metadata

    @property
    def projector(self) -> Path | None:
        """The vision projector (mmproj) GGUF, loaded on the first image. Fixed for the engine's
        life: another projector is another engine (see ``loaded.cache_key``)."""
        return self._projector

    @property
    def n_ctx(self) -> int:
        return self._ctx_shape[0] if self._ctx_shape else 0

    @property
    def n_ctx_train(self) -> int:
        return self._model.n_ctx_train

    @property
    def loaded_model(self) -> backend.LoadedModel:
        """The weights and their llama.cpp handle, for work that shares them (embeddings)."""
        return self._model

    @property
    def gpu_layers(self) -> int:
        """Layers offloaded to a GPU: 0 = none (a CPU build, or num_gpu 0), -1 = all."""
        return self._model.n_gpu_layers if backend.gpu_offload_supported() else 0

    @property
    def context_bytes(self) -> int:
        """Memory the context holds now besides the weights: its KV cache and compute buffers
        (memory.context_bytes, the estimate that refuses a context too big for the machine).
        Reads only values set when the context was made, so any thread may ask."""
        shape, ctx_shape = self._shape, self._ctx_shape
        if shape is None or ctx_shape is None:
            return 0
        return memory.context_bytes(shape, ctx_shape[0] * self.parallel, ctx_shape[1])

    @property
    def _live(self) -> tuple[LlamaContext, LlamaBatch, tuple[int, int]]:
        """The context, its batch and (n_ctx, n_batch); an error once the engine is closed."""
        ctx, batch, shape = self._ctx, self._batch, self._ctx_shape
        if ctx is None or batch is None or shape is None:
            raise RuntimeError(f"the engine for {self.name} has no context (it was closed)")
        return ctx, batch, shape

    @property
    def cached_tokens(self) -> int:
        """How many tokens of the last conversation are still in the KV cache."""
        return len(self._cache)

    def resolve_options(
        self, options: Mapping[str, Any] | None = None, *, _loaded: bool = True
    ) -> dict[str, Any]:
        """Built-in defaults < the model's own options < ``options``; Nones filled in."""
        merged = opts_mod.merge(
            {name: spec.default for name, spec in opts_mod.SPECS.items()},
            self.model_options,
            opts_mod.validate(options),
        )
        if merged["num_ctx"] is None:
            train = self._model.n_ctx_train if _loaded else 0
            merged["num_ctx"] = min(DEFAULT_NUM_CTX, train) if train > 0 else DEFAULT_NUM_CTX
        elif _loaded:
            merged["num_ctx"] = self._within_training(merged["num_ctx"])
        if merged["num_gpu"] is None:
            merged["num_gpu"] = -1 if backend.gpu_offload_supported() else 0
        if not merged["num_thread"]:
            merged["num_thread"] = backend.physical_cores()
        return merged

    def _within_training(self, n_ctx: int) -> int:
        """num_ctx, lowered to the model's training context unless CHATCLI_ALLOW_LONG_CONTEXT=1.

        As in Ollama: past its training context a model's answers degrade, and the memory is
        spent for nothing. A notice says so once per value.
        """
        train = self._model.n_ctx_train
        if train <= 0 or n_ctx <= train or os.environ.get(LONG_CONTEXT_ENV, "") not in ("", "0"):
            return n_ctx
        if n_ctx not in self._clamped:
            self._clamped.add(n_ctx)
            _log.warning(
                "num_ctx %d is more than %s was trained for; using %d "
                "(set %s=1 to go beyond it)", n_ctx, self.name, train, LONG_CONTEXT_ENV,
            )
        return train

    def tokenize(self, text: str) -> list[int]:
        """Tokenize prompt text; special tokens written in the text are parsed as such."""
        model = self._model.model
        bos = self.template.bos_token
        add_bos = bool(model.add_bos_token()) and not (bos and text.startswith(bos))
        return model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def render(self, messages: Sequence[Mapping[str, Any]], **variables: Any) -> str:
        """The prompt text for ``messages``, ready for the assistant's reply."""
        return self.template.render(messages, add_generation_prompt=True, **variables)

    # -- chat ------------------------------------------------------------------------------

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
        *,
        cancel: threading.Event | None = None,
        **request: Any,
    ) -> Iterator[Event]:
        """Answer the conversation; yields Trimmed (if old turns were dropped), then thinking,
        content and tool-call events, then Done.

        ``request`` is ``prepare``'s keywords (and template variables):
        ``tools``, ``think`` and ``format`` have Ollama's meaning (see capabilities.plan).
        ``raw`` is Ollama's raw mode: that text is the whole prompt, with no template.
        ``context`` (token ids from an earlier Done) goes before the prompt, which continues it.
        ``suffix`` makes it fill-in-the-middle: ``raw`` is the text before the gap, ``suffix``
        the text after it, joined with the model's FIM tokens.
        Setting ``cancel`` stops the answer within one token (or, during prompt evaluation,
        within one llama.cpp graph node); the final event is then ``Done("cancelled")``.
        """
        ready = self.prepare(messages, options, **request)
        load_ns = self._ensure_context(ready.opts)
        if ready.dropped:
            yield Trimmed(dropped=ready.dropped, kept=ready.kept)
        tokens: list[int] | None = ready.tokens  # None once images put the prompt in the context
        if ready.images:
            load_ns += self._eval_images(ready.prompt, ready.images)
            tokens = None
        yield from self._generate(tokens, ready.opts, load_ns, ready.dropped,
                                  cancel or CancelFlag(), ready.grammar, ready.parser,
                                  ready.special)

    def prepare(
        self,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
        *,
        tools: Any = None,
        think: Any = None,
        format: Any = None,
        raw: str | None = None,
        context: Sequence[int] | None = None,
        suffix: str | None = None,
        **template_vars: Any,
    ) -> Prepared:
        """Everything about a request that needs no llama.cpp context: its options, the output
        plan, the prompt's tokens fitted to its num_ctx (turns dropped if needed), its images.
        Errors in the request (bad option, too long, images without a projector) raise here.
        Reads only the model, so a server may prepare one request while another decodes;
        callers serialise ``prepare`` itself (it remembers where it last cut a conversation)."""
        from chatcli.engine.output.plan import plan

        opts = self.resolve_options(options)
        n_ctx = int(opts["num_ctx"])
        source = "" if self.template.is_fallback else self.template.source
        how = plan(source, self.name, messages, tools=tools, think=think, format=format)
        images = self._attach_images(how.messages)
        if images and context:
            raise NotSupportedError("'context' cannot be combined with images")
        if suffix is not None:
            tokens, dropped, kept, prompt = self._fit_infill(raw or "", suffix, n_ctx)
        elif raw is None:
            tokens, dropped, kept, prompt = self._fit(how.messages, opts,
                                                      {**how.template_vars, **template_vars})
        else:
            tokens, dropped, kept, prompt = self._fit_raw(raw, n_ctx)
        if context:
            tokens = self._after_context(context, tokens, n_ctx)
        return Prepared(tokens=tokens, dropped=dropped, kept=kept, prompt=prompt, opts=opts,
                        images=images, grammar=how.grammar, parser=how.make_parser(prompt),
                        special=how.special)

    def _attach_images(self, messages: list[dict[str, Any]]) -> list[bytes]:
        """Load the messages' images and put one media marker per image in their text."""
        from chatcli.core.images import load_image
        from chatcli.engine.vision import MARKER

        images: list[bytes] = []
        for message in messages:
            data = [load_image(x) for x in message.pop("images", None) or ()]
            if data:
                images += data
                message["content"] = MARKER * len(data) + "\n" + message.get("content", "")
        if images:
            self._projector_path()
        return images

    def _projector_path(self) -> Path:
        """The vision projector; NotSupportedError when the model has none."""
        if self.projector is None:
            raise NotSupportedError(
                f"model '{self.name}' does not support images (it has no vision projector; "
                "use a model that has one, or give its mmproj file with --mmproj)"
            )
        return self.projector

    def _eval_images(self, prompt: str, images: list[bytes]) -> int:
        """Evaluate a prompt with images from position 0 (no KV reuse across image turns)."""
        from chatcli.engine.vision import Vision

        start = time.perf_counter_ns()
        ctx, _, (_, n_batch) = self._live
        if self._vision is None:
            self._vision = Vision(self._projector_path(), self._model.model.model, self._threads)
        self._cache.clear()
        ctx.kv_cache_clear()
        n_past = self._vision.eval(ctx.ctx, prompt, images, n_batch)
        # Positions only: -1 never equals a real token, so the next turn re-reads everything.
        self._cache.extend([-1] * n_past)
        return time.perf_counter_ns() - start

    def save_state(self) -> bool:
        """Save the KV cache (the tokens read so far and their keys and values) to the state
        store, so that a later process resuming this conversation need not read it again.
        False when there is nothing to save, saving is off (``states.limits``), or the same
        state is stored already. Not an error when it fails: a state is only a cache."""
        tokens = list(self._cache)
        bound = states.limits()
        if len(tokens) < states.MIN_GAIN or min(tokens) < 0 or not bound.enabled:
            return False  # nothing worth keeping, or image positions (no token ids)
        ctx = self._ctx
        if ctx is None:  # closed (unloaded) meanwhile
            return False
        layout = self._layout()
        if self._states.has(layout, tokens):
            return False
        data = backend.get_sequence_state(ctx)
        if data is None:
            return False
        try:
            return self._states.save(layout, tokens, data, bound) is not None
        except OSError as e:
            _log.debug("could not save the KV cache state: %s", e)
            return False

    def _layout(self) -> str:
        """The state store's key for this context: a state saved under it is valid here, and
        under any other key is not (another model file, context shape, offload or build)."""
        _, _, (n_ctx, n_batch) = self._live
        shape = (n_ctx, n_batch, self.gpu_layers)
        if shape not in self._layouts:
            path = self._model.path.resolve()
            st = path.stat()
            self._layouts[shape] = states.layout_key({
                "model": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "n_ctx": n_ctx, "n_batch": n_batch, "gpu_layers": self.gpu_layers,
                **backend.context_layout(),
            })
        return self._layouts[shape]

    def _resume(self, tokens: list[int], n_past: int) -> int:
        """Load a stored state that covers more of ``tokens`` than the live cache does (its
        first ``n_past``); returns how many tokens the cache now holds. A state that does not
        load (corrupt, unreadable by this llama.cpp) is ignored: the prompt is read as usual."""
        if len(tokens) - n_past <= states.MIN_GAIN:
            return n_past
        try:
            found = self._states.best(self._layout(), tokens, n_past + states.MIN_GAIN)
            data = None if found is None else self._states.read_state(found[0])
        except OSError:
            return n_past
        if found is None or data is None:
            return n_past
        stored, n = found
        ctx, _, _ = self._live
        self._cache.clear()
        ctx.kv_cache_clear()
        # Keep only the shared prefix: the stored tail may differ from this prompt. A memory
        # that cannot drop a tail (recurrent models) refuses, and the state is not used.
        if not backend.set_sequence_state(ctx, data) or (
            n < len(stored.tokens) and not ctx.kv_cache_seq_rm(0, n, -1)
        ):
            _log.debug("ignoring the state %s: llama.cpp did not load it", stored.path)
            ctx.kv_cache_clear()
            return 0
        self._cache.extend(tokens[:n])
        return n

    def reset_cache(self) -> None:
        """Forget the KV cache (the next turn evaluates its whole prompt)."""
        self._cache.clear()
        if self._ctx is not None:
            self._ctx.kv_cache_clear()

    def close(self) -> None:
        """Free the context and the weights."""
        self._cache.clear()
        if self._vision is not None:
            self._vision.close()
            self._vision = None
        if self._batch is not None:
            self._batch.close()
        if self._ctx is not None:
            self._ctx.close()
        self._ctx = self._batch = None
        self._model.close()

    # -- internals -------------------------------------------------------------------------

    def _control_tokens(self) -> list[int]:
        """Control tokens that do not end generation (computed once per model)."""
        if self._controls is None:
            lc, vocab = backend.llama(), self._model.vocab
            self._controls = [
                t for t in range(lc.llama_vocab_n_tokens(vocab))
                if lc.llama_vocab_get_attr(vocab, t) & lc.LLAMA_TOKEN_ATTR_CONTROL
                and not lc.llama_vocab_is_eog(vocab, t)
            ]
        return self._controls

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._model.model.token_get_text(token)

    def _ensure_context(self, opts: Mapping[str, Any]) -> int:
        """(Re)create the context when num_ctx/num_batch change; returns ns spent loading."""
        start = time.perf_counter_ns()
        if opts["num_gpu"] != self._model.n_gpu_layers:
            self._drop_context()
            path = self._model.path
            self._model.close()
            self._model = safemode.load_model(path, opts["num_gpu"])
        shape = context_size(opts)
        if shape != self._ctx_shape:
            self._check_memory(*shape)  # before dropping the context we have
            self._drop_context()
            self._ctx, self._batch = backend.new_context(
                self._model, n_ctx=shape[0], n_batch=shape[1], n_threads=opts["num_thread"],
                n_seq=self.parallel,
            )
            self._ctx_shape = shape
            self._threads = opts["num_thread"]
            if self._shape is None:  # for context_bytes, which /api/ps reads from any thread
                self._shape = memory.model_shape(self._model)
        elif opts["num_thread"] != self._threads:
            ctx, _, _ = self._live
            ctx.set_n_threads(opts["num_thread"], opts["num_thread"])
            self._threads = opts["num_thread"]
        else:
            return 0
        return time.perf_counter_ns() - start

    def _check_memory(self, n_ctx: int, n_batch: int) -> None:
        """Refuse a context that would not fit in the memory left (InvalidOptionError).

        Skipped when layers are offloaded to a GPU: the KV cache then lives in VRAM, which
        cannot be measured here (llama.cpp's own failure to allocate is reported instead).
        """
        if self.gpu_layers != 0:
            return
        if self._shape is None:
            self._shape = memory.model_shape(self._model)
        available = memory.available_bytes()
        if available is not None and self._ctx_shape is not None:
            # The current context's KV cache is freed before the new one is made.
            available += memory.kv_cache_bytes(self._shape, self._ctx_shape[0] * self.parallel)
        total = n_ctx * self.parallel
        memory.check_fits(n_ctx, memory.context_bytes(self._shape, total, n_batch), available,
                          self.parallel)

    def _drop_context(self) -> None:
        self._cache.clear()
        if self._batch is not None:
            self._batch.close()
        if self._ctx is not None:
            self._ctx.close()
        self._ctx = self._batch = None
        self._ctx_shape = None

    def _fit(
        self,
        messages: Sequence[Mapping[str, Any]],
        opts: Mapping[str, Any],
        template_vars: Mapping[str, Any],
    ) -> tuple[list[int], int, int, str]:
        """Tokenize the conversation, dropping the oldest turns until it fits num_ctx.

        System messages and the latest message are never dropped, and the kept history starts
        with a user message so that templates insisting on alternation accept it. When turns
        must go, enough go to free half the context, and later turns keep that same cut while
        it fits: the prompt's start then stays put and the KV cache is reused, instead of every
        turn shifting the cut by one turn and re-reading everything (Ollama's context shift
        plays the same role). Cut points are found by binary search: O(log n) renders. A
        candidate whose cheap lower bound (``min_tokens``) already exceeds the room is never
        tokenized, so a huge conversation costs renders, not minutes of tokenizing, and a huge
        latest message is refused at once (ContextOverflowError).
        """
        n_ctx = int(opts["num_ctx"])
        predict = opts["num_predict"]
        reserve = min(predict if predict > 0 else ANSWER_RESERVE, n_ctx // 4)
        msgs = list(messages)
        last = len(msgs) - 1
        fitted: dict[int, tuple[list[int], str]] = {}  # start -> (tokens, text)
        at_least: dict[int, int] = {}  # start -> a lower bound on its token count

        def count(start: int, limit: int) -> int:
            """Tokens of the prompt that keeps msgs[start:] (and the system messages): exact,
            or only a lower bound when that bound already exceeds ``limit``."""
            if start in fitted:
                return len(fitted[start][0])
            if at_least.get(start, 0) > limit:
                return at_least[start]
            kept = [m for i, m in enumerate(msgs) if i >= start or m.get("role") == "system"]
            text = self.render(kept, **template_vars)
            at_least[start] = self.min_tokens(text, n_ctx)
            if at_least[start] > limit:  # cannot fit: not worth tokenizing (~3 s per MB)
                return at_least[start]
            fitted[start] = (self.tokenize(text), text)
            return len(fitted[start][0])

        def result(start: int) -> tuple[list[int], int, int, str]:
            dropped = sum(1 for m in msgs[:start] if m.get("role") != "system")
            self._cut = (start, msgs[start].get("content")) if dropped else None
            tokens, text = fitted[start]
            return tokens, dropped, len(msgs) - dropped, text

        def overflow(start: int) -> ContextOverflowError:
            n = f"{len(fitted[start][0])}" if start in fitted else f"at least {at_least[start]}"
            return ContextOverflowError(
                f"the prompt is {n} tokens but num_ctx is {n_ctx}; "
                "shorten the message or raise num_ctx"
            )

        if count(0, n_ctx - reserve) + reserve <= n_ctx:
            return result(0)
        # Nothing to drop (only system messages before the latest): the one prompt must fit.
        only = all(m.get("role") == "system" for m in msgs[:last])
        if only:
            if count(0, n_ctx - 1) >= n_ctx:
                raise overflow(0)
            return result(0)
        if self._cut is not None:
            index, content = self._cut
            if 0 < index <= last and msgs[index].get("content") == content:
                if count(index, n_ctx - reserve) + reserve <= n_ctx:
                    return result(index)
        cuts = [i for i, m in enumerate(msgs) if 0 < i < last and m.get("role") == "user"]
        cuts.append(last)
        for room in (max(reserve, n_ctx // 2), reserve):
            found = self._earliest_cut(cuts, count, n_ctx - room)
            if found is not None:
                return result(found)
        if count(last, n_ctx - 1) >= n_ctx:
            raise overflow(last)
        return result(last)  # only the essentials left: answer in the room remaining

    def _fit_raw(self, prompt: str, n_ctx: int) -> tuple[list[int], int, int, str]:
        """A raw prompt is taken as it is: nothing to drop, so it must fit."""
        bound = self.min_tokens(prompt, n_ctx)
        if bound >= n_ctx:
            raise ContextOverflowError(
                f"the prompt is at least {bound} tokens but num_ctx is {n_ctx}; "
                "shorten the prompt or raise num_ctx"
            )
        tokens = self.tokenize(prompt)
        if len(tokens) >= n_ctx:
            raise ContextOverflowError(
                f"the prompt is {len(tokens)} tokens but num_ctx is {n_ctx}; "
                "shorten the prompt or raise num_ctx"
            )
        return tokens, 0, 0, prompt

    def _fit_infill(self, prefix: str, suffix: str, n_ctx: int) -> tuple[list[int], int, int, str]:
        """Fill-in-the-middle with the vocabulary's FIM tokens, in llama.cpp's order:
        [BOS] <fim_pre> prefix <fim_suf> suffix <fim_mid>; the answer is the middle."""
        lc, vocab, model = backend.llama(), self._model.vocab, self._model.model
        pre, suf, mid = (lc.llama_vocab_fim_pre(vocab), lc.llama_vocab_fim_suf(vocab),
                         lc.llama_vocab_fim_mid(vocab))
        if min(pre, suf, mid) < 0:
            raise NotSupportedError(f'model "{self.name}" does not support insert')
        self._fit_raw(prefix + suffix, n_ctx)  # the same bounds as a raw prompt, before tokenizing

        def text(s: str) -> list[int]:
            return model.tokenize(s.encode("utf-8"), add_bos=False, special=False) if s else []

        bos = [model.token_bos()] if model.add_bos_token() and model.token_bos() >= 0 else []
        tokens = [*bos, pre, *text(prefix), suf, *text(suffix), mid]
        if len(tokens) >= n_ctx:
            raise ContextOverflowError(
                f"the prompt is {len(tokens)} tokens but num_ctx is {n_ctx}; "
                "shorten the prompt or raise num_ctx"
            )
        return tokens, 0, 0, prefix

    def _after_context(self, context: Sequence[int], tokens: list[int], n_ctx: int) -> list[int]:
        """``context`` (an earlier answer's tokens) followed by this prompt's tokens, without
        the prompt's own BOS: the sequence already has one."""
        n_vocab = self._model.model.n_vocab()
        if not all(type(t) is int and 0 <= t < n_vocab for t in context):
            raise RequestError(f"'context' must be token ids from this model (0..{n_vocab - 1})")
        bos = self._model.model.token_bos()
        if tokens and tokens[0] == bos and context:
            tokens = tokens[1:]
        whole = [*context, *tokens]
        if len(whole) >= n_ctx:
            raise ContextOverflowError(
                f"the context and prompt are {len(whole)} tokens but num_ctx is {n_ctx}; "
                "start a new context or raise num_ctx"
            )
        return whole

    def min_tokens(self, text: str, n_ctx: int | None = None) -> int:
        """A lower bound on ``len(self.tokenize(text))``, found without tokenizing.

        No token stands for more bytes than the vocabulary's longest piece, so a text of B
        bytes needs at least B / longest tokens: enough to refuse a text far too long for the
        context at once. Texts of at most 4 x n_ctx characters, which can fit and are cheap to
        tokenize, get 0 at no cost: the happy path never pays for the vocabulary scan.
        """
        if len(text) <= 4 * (self.n_ctx if n_ctx is None else n_ctx):
            return 0
        longest, strips = self._piece_facts()
        if not longest:
            return 0
        size = len(text.encode("utf-8", "replace"))
        if strips:  # a special token with lstrip/rstrip also swallows the whitespace beside it
            size -= sum(text.count(c) for c in " \t\n\r\v\f")
        return max(0, -(-size // longest))

    def _piece_facts(self) -> tuple[int, bool]:
        """(longest piece in bytes, whether some token strips whitespace), once per model.

        The longest piece is 0 (no bound) for tokenizers that normalise their input (WPM,
        UGM), where a token may stand for more text than its piece.
        """
        if self._pieces is None:
            lc, vocab = backend.llama(), self._model.vocab
            longest, strips = 0, False
            if lc.llama_vocab_type(vocab) in (lc.LLAMA_VOCAB_TYPE_SPM, lc.LLAMA_VOCAB_TYPE_BPE,
                                              lc.LLAMA_VOCAB_TYPE_RWKV):
                strip = lc.LLAMA_TOKEN_ATTR_LSTRIP | lc.LLAMA_TOKEN_ATTR_RSTRIP
                size = 256
                buf = ctypes.create_string_buffer(size)
                longest = 4  # an unknown character (one token) is up to 4 bytes of UTF-8
                for t in range(lc.llama_vocab_n_tokens(vocab)):
                    n = lc.llama_token_to_piece(vocab, t, buf, size, 0, True)
                    longest = max(longest, abs(n))  # < 0: the piece needs -n bytes
                    strips = strips or bool(lc.llama_vocab_get_attr(vocab, t) & strip)
            self._pieces = (longest, strips)
        return self._pieces

    @staticmethod
    def _earliest_cut(cuts, count, limit: int) -> int | None:
        """Binary search for the earliest cut whose prompt is at most ``limit`` tokens."""
        lo, hi = 0, len(cuts) - 1
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            if count(cuts[mid], limit) <= limit:
                best, hi = cuts[mid], mid - 1
            else:
                lo = mid + 1
        return best

    def _sampler(self, opts: Mapping[str, Any], prompt: Sequence[int], grammar: str | None):
        from chatcli.engine.output.structured import StructuredOutputError

        sampler = backend.new_sampler()
        if grammar is not None:
            lc = backend.llama()
            # Control tokens (<|im_start|>...) never belong in structured output.
            sampler.add_logit_bias(self._model.model.n_vocab(),
                                   dict.fromkeys(self._control_tokens(), float("-inf")))
            constraint = lc.llama_sampler_init_grammar(self._model.vocab, grammar.encode(),
                                                       b"root")
            if not constraint:
                sampler.close()
                raise StructuredOutputError("llama.cpp's grammar engine rejected the format")
            lc.llama_sampler_chain_add(sampler.sampler, constraint)
        last_n = opts["repeat_last_n"]
        if last_n == -1 or last_n > opts["num_ctx"]:
            # llama.cpp allocates a ring buffer of last_n tokens; none older than the context
            # can be in it anyway.
            last_n = int(opts["num_ctx"])
        penalize = last_n > 0 and (
            opts["repeat_penalty"] != 1.0
            or opts["presence_penalty"] != 0.0
            or opts["frequency_penalty"] != 0.0
        )
        if penalize:
            lc = backend.llama()
            penalties = lc.llama_sampler_init_penalties(
                self._model.model.n_vocab(), last_n, opts["repeat_penalty"],
                opts["frequency_penalty"], opts["presence_penalty"],
            )
            # The penalties look back over the conversation too, as in Ollama. Only this
            # sampler sees the prompt: a grammar fed the template's tokens would throw (a C++
            # exception that ends the process).
            for tok in prompt[-last_n:]:
                lc.llama_sampler_accept(penalties, tok)
            lc.llama_sampler_chain_add(sampler.sampler, penalties)
        seed = opts["seed"]
        seed = _RANDOM_SEED if seed is None or seed < 0 else seed
        if opts["temperature"] <= 0:
            sampler.add_greedy()  # temperature 0 is greedy, Mirostat or not
        elif opts["mirostat"]:
            # As llama.cpp's common sampler (which Ollama's runner used) builds it: Mirostat
            # does its own truncation, so top_k/top_p/min_p/typical_p do not apply.
            sampler.add_temp(opts["temperature"])
            tau, eta = opts["mirostat_tau"], opts["mirostat_eta"]
            if opts["mirostat"] == 1:
                sampler.add_mirostat(self._model.model.n_vocab(), seed, tau, eta, 100)
            else:
                sampler.add_mirostat_v2(seed, tau, eta)
        else:
            # llama.cpp's default order: top_k, typical_p, top_p, min_p, temperature.
            if opts["top_k"] > 0:
                sampler.add_top_k(opts["top_k"])
            if opts["typical_p"] < 1.0:
                sampler.add_typical(opts["typical_p"], 1)
            if opts["top_p"] < 1.0:
                sampler.add_top_p(opts["top_p"], 1)
            if opts["min_p"] > 0.0:
                sampler.add_min_p(opts["min_p"], 1)
            sampler.add_temp(opts["temperature"])
            sampler.add_dist(seed)
        return sampler

    def _eval_prompt(self, tokens: list[int], n_past: int, cancel: threading.Event) -> bool:
        """Decode tokens[n_past:] in n_batch chunks; False if cancelled midway."""
        lc = backend.llama()
        (ctx, batch, (_, n_batch)), cache = self._live, self._cache
        # llama.cpp polls this between graph nodes, so a long batch stops promptly.
        abort, data = abort_callback(lc, cancel)
        lc.llama_set_abort_callback(ctx.ctx, abort, data)
        try:
            for i in range(n_past, len(tokens), n_batch):
                chunk = tokens[i : i + n_batch]
                batch.set_batch(chunk, n_past=i, logits_all=False)
                ret = lc.llama_decode(ctx.ctx, batch.batch)
                if ret == 2 or cancel.is_set():
                    return False
                if ret != 0:
                    raise RuntimeError(f"llama_decode returned {ret} while reading the prompt")
                cache.extend(chunk)
        finally:
            lc.llama_set_abort_callback(ctx.ctx, lc.ggml_abort_callback(), None)
        return True

    def _generate(
        self,
        tokens: list[int] | None,
        opts: Mapping[str, Any],
        load_ns: int,
        dropped: int,
        cancel: threading.Event,
        grammar: str | None,
        parser: OutputParser,
        special: bool,
    ) -> Iterator[Event]:
        lc = backend.llama()
        (ctx, batch, (n_ctx, _)), cache = self._live, self._cache
        metrics = Metrics(load_duration=load_ns)

        if tokens is None:  # the prompt (with images) is already in the context
            tokens = list(cache)
            metrics.prompt_eval_count = len(cache)
        else:
            # Prompt: evaluate only what the KV cache does not already hold. At least one token
            # is evaluated so that there are fresh logits to sample from.
            n_past = min(common_prefix(cache, tokens), len(tokens) - 1)
            # A saved state (an earlier process's cache) may cover more of it.
            restore_start = time.perf_counter_ns()
            n_past = min(self._resume(tokens, n_past), len(tokens) - 1)
            metrics.load_duration += time.perf_counter_ns() - restore_start
            del cache[n_past:]  # shrink our record first: it must never claim more than the KV
            ctx.kv_cache_seq_rm(0, n_past, -1)
            start = time.perf_counter_ns()
            finished = self._eval_prompt(tokens, n_past, cancel)
            # The seed's "number of tokens in the prompt": all of it, the cached part included.
            metrics.prompt_eval_count = len(tokens)
            metrics.prompt_cached_count = n_past
            metrics.prompt_eval_duration = time.perf_counter_ns() - start
            if not finished:
                yield Done(done_reason="cancelled", metrics=metrics, trimmed=dropped)
                return

        sampler = self._sampler(opts, [t for t in tokens if t >= 0], grammar)
        limit = opts["num_predict"]
        if limit < 0:
            limit = n_ctx  # -1 (until done) and -2 (fill the context) both end at the context
        out = AnswerText(self._model.vocab, [*opts["stop"], *self.template.stop_strings],
                         parser, special)

        # Hot loop: bind everything to locals.
        sample = lc.llama_sampler_sample
        is_eog = lc.llama_vocab_is_eog
        decode = lc.llama_decode
        feed = out.feed
        smpl, cctx, vocab = sampler.sampler, ctx.ctx, self._model.vocab
        cb = batch.batch
        now = time.perf_counter_ns
        cancelled = cancel.is_set
        eval_ns = 0
        count = 0
        done_reason = "stop"
        held = -1
        t = now()
        try:
            while True:
                if cancelled():
                    done_reason = "cancelled"
                    break
                tok = sample(smpl, cctx, -1)
                if is_eog(vocab, tok):
                    break
                count += 1
                events = feed(tok)
                if events:
                    eval_ns += now() - t
                    yield from events
                    t = now()
                if out.stopped:
                    break
                if count >= limit or len(cache) + 1 >= n_ctx:
                    done_reason = "length"
                    held = tok  # part of the answer, though never decoded into the cache
                    break
                cb.n_tokens = 1
                cb.token[0] = tok
                cb.pos[0] = len(cache)
                cb.n_seq_id[0] = 1
                cb.seq_id[0][0] = 0
                cb.logits[0] = True
                if decode(cctx, cb) != 0:
                    done_reason = "length"  # no KV slot left
                    held = tok
                    break
                cache.append(tok)
            eval_ns += now() - t
            yield from out.finish()
        finally:
            sampler.close()
        metrics.eval_count = count
        metrics.eval_duration = max(eval_ns, 1)
        yield Done(done_reason=done_reason, metrics=metrics, trimmed=dropped,
                   context=self._context(held))

    def _context(self, held: int) -> list[int] | None:
        """The tokens that continue this answer (/api/generate's ``context``): the cache, plus
        the answer's last token if it was never decoded; None after images (no token ids)."""
        tokens = list(self._cache)
        if held >= 0:
            tokens.append(held)
        return None if tokens and min(tokens) < 0 else tokens


def load(path: Path, **kwargs: Any) -> Engine:
    """Load ``path`` as an Engine, turning llama.cpp's failures into ModelLoadError."""
    try:
        return Engine(path, **kwargs)
    except (OSError, RuntimeError) as e:
        raise ModelLoadError(f"could not load {path}: {e}") from None
