"""Several conversations at once on one model: slots in one context, one batched decode loop.

``chat serve --parallel N`` loads a model with a context of N sequences (``Engine(parallel=N)``:
N x num_ctx cells, each sequence with a KV cache of its own, as Ollama sizes it). A ``Batcher``
owns that context from one thread, its decode loop. Each request is prepared (template, tokens,
fitting) on its caller's thread, then joins the loop in a free *slot* (a sequence id). Every
step builds one llama.cpp batch with the next token of each answering slot plus a chunk of the
prompts still being read, decodes it once, and samples each slot from its own logits with its
own sampler chain (options, seed, grammar). A request joins or leaves between steps (continuous
batching); a long prompt is read in chunks beside the others' tokens so it does not stall them.

A slot keeps its tokens' K/V after its answer, so a client that continues its conversation is
given the slot whose cache holds the most of its prompt, and only the new part is read.

Requests that need the whole context (images, a different num_ctx / num_batch / num_gpu /
num_thread) wait until the slots are idle, then run alone: the context is rebuilt for them or
the single-sequence engine answers them, and every slot's cache starts empty afterwards.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any

from chatcli.core.errors import ChatCliError
from chatcli.core.events import Done, Event, Metrics, Trimmed
from chatcli.engine import binding as backend
from chatcli.engine.cancel import CancelFlag
from chatcli.engine.decode import AnswerText, Engine, Prepared
from chatcli.engine.states import common_prefix

_log = logging.getLogger("chatcli")
END = object()  # the last thing emitted for a request that ended well
# While some slots are answering, a prompt is read at most this many tokens per step (or
# n_batch / 4 if larger), so each step, and the others' next token, waits for a short chunk.
SHARED_CHUNK = 128


class UnloadedError(ChatCliError):
    """The model was unloaded while a request was waiting for it."""


class _Job:
    """One request in the loop: its prepared prompt, its sampler and its output state."""

    def __init__(self, ready: Prepared | None, cancel: threading.Event,
                 emit: Callable[[Any], None], alone: Callable[[], Iterator[Event]] | None):
        self.ready = ready
        self.cancel = cancel
        self.emit = emit  # Event, BaseException or END
        self.alone = alone  # a request the single-sequence engine answers (images)
        self.slot: _Slot | None = None
        self.fed = 0  # prompt tokens in the slot's cache
        self.next: int = -1  # the sampled token to decode next step (-1: none yet)
        self.sampler: Any = None
        self.metrics = Metrics()
        self.count = 0
        self.limit = 0
        self.out: AnswerText | None = None  # its text, once it has a slot
        self.started = 0  # ns: when it got its slot
        self.first = 0  # ns: when its prompt was read (first token sampled)
        self.done = False

    @property
    def shape(self) -> tuple[int, int, int, int] | None:
        return None if self.ready is None else self.ready.shape


class _Slot:
    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.cache: list[int] = []  # tokens whose K/V this sequence holds, from position 0
        self.job: _Job | None = None
        self.used = -1  # when it last took a job (a counter; -1: never)
        self.prompt = 0  # the length of the last prompt it read


class Batcher:
    """Answers up to ``engine.parallel`` requests at once from one decode thread.

    ``lock`` is held while the context is rebuilt or a request runs alone (the same lock other
    users of the engine, e.g. embeddings, hold while they use its weights).
    """

    def __init__(self, engine: Engine, lock: threading.RLock | None = None) -> None:
        self.engine = engine
        self._lock = lock or threading.RLock()
        self._prep = threading.Lock()  # Engine.prepare, and never during a model reload
        self._cond = threading.Condition()
        self._pending: deque[_Job] = deque()
        self._slots = [_Slot(i) for i in range(engine.parallel)]
        self._closing = False
        self._thread: threading.Thread | None = None
        self._turn = 0

    # -- the callers' side -------------------------------------------------------------------

    def submit(
        self,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None,
        *,
        emit: Callable[[Any], None],
        cancel: threading.Event,
        **request: Any,
    ) -> None:
        """Prepare a request (its errors raise here, before anything is emitted) and queue
        it. Its events then go to ``emit``, from the decode thread (Trimmed first, from this
        one), ending with ``END`` after Done, or with an exception instead. ``emit`` must not
        block: a server hands each event to its event loop."""
        if any(m.get("images") for m in messages):
            def alone() -> Iterator[Event]:
                return self.engine.chat(messages, options, cancel=cancel, **request)
            job = _Job(None, cancel, emit, alone)
        else:
            with self._prep:
                ready = self.engine.prepare(messages, options, **request)
            job = _Job(ready, cancel, emit, None)
            if ready.dropped:
                emit(Trimmed(dropped=ready.dropped, kept=ready.kept))
        self._submit(job)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
        *,
        cancel: threading.Event | None = None,
        **request: Any,
    ) -> Generator[Event, None, None]:
        """``Engine.chat``'s events for one request, answered beside the others."""
        cancel = cancel if cancel is not None else CancelFlag()
        out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.submit(messages, options, emit=out.put, cancel=cancel, **request)
        try:
            while True:
                item = out.get()
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()  # a caller that stops listening frees its slot within a step

    def close(self) -> None:
        """Stop the decode thread (requests still waiting get UnloadedError)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def slots(self) -> list[dict[str, Any]]:
        """What each slot holds (for tests and diagnostics): cached tokens, whether busy."""
        return [{"seq": s.seq, "cached": len(s.cache), "busy": s.job is not None}
                for s in self._slots]

    def _submit(self, job: _Job) -> None:
        with self._cond:
            if self._closing:
                raise UnloadedError(f"{self.engine.name} was unloaded")
            self._pending.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"batch-{self.engine.name}")
                self._thread.start()
            self._cond.notify()

    # -- the decode thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                jobs = self._take()
                if jobs is None:
                    return
                try:
                    for job in jobs:
                        self._start(job)
                    if any(s.job is not None for s in self._slots):
                        self._step()
                except Exception as e:  # a failed step: its requests hear it, the loop goes on
                    _log.debug("a decode step of %s failed: %s", self.engine.name, e)
                    for s in self._slots:
                        if s.job is not None:
                            self._fail(s.job, e)
                    self._forget_all()
        finally:
            self._fail_all(UnloadedError(f"{self.engine.name} was unloaded"))

    def _take(self) -> list[_Job] | None:
        """Requests to start now, in arrival order: as many as there are free slots; a request
        that must run alone (or in another context shape) waits for every slot to be idle."""
        busy = sum(s.job is not None for s in self._slots)
        with self._cond:
            while not self._closing and not self._pending and not busy:
                self._cond.wait()
            if self._closing:
                return None
            taken: list[_Job] = []
            shape = self._shape()
            while self._pending and busy + len(taken) < len(self._slots):
                head = self._pending[0]
                if head.alone is not None or head.shape != shape:
                    if busy or taken:
                        break  # drain first (later requests wait behind it: no overtaking)
                    taken.append(self._pending.popleft())
                    break
                taken.append(self._pending.popleft())
            return taken

    def _shape(self) -> tuple[int, int, int, int] | None:
        """The context's shape as ``Prepared.shape`` writes it (None: no context yet)."""
        e = self.engine
        if e._ctx_shape is None:
            return None
        return (*e._ctx_shape, e._model.n_gpu_layers, e._threads)

    def _start(self, job: _Job) -> None:
        if job.cancel.is_set():
            return self._finish(job, "cancelled")
        try:
            if job.alone is not None:
                return self._run_alone(job)
            assert job.ready is not None
            if job.shape != self._shape():
                with self._lock, self._prep:
                    before = self.engine._ctx
                    job.metrics.load_duration += self.engine._ensure_context(job.ready.opts)
                    if self.engine._ctx is not before:
                        self._forget_all()
            self._place(job)
        except BaseException as e:
            self._fail(job, e)

    def _run_alone(self, job: _Job) -> None:
        """A request for the single-sequence engine (images): the whole context is its own."""
        assert job.alone is not None
        with self._lock:
            self._forget_all()
            try:
                for event in job.alone():
                    job.emit(event)
                job.emit(END)
            finally:
                self._forget_all()

    def _forget_all(self) -> None:
        self.engine.reset_cache()  # clears every sequence's KV
        for s in self._slots:
            s.cache.clear()

    def _place(self, job: _Job) -> None:
        """Give ``job`` a free slot, drop what that slot holds past the shared prefix, and get
        it ready. The slot is the one whose last prompt this one continues (a client going on
        with its conversation), else the least recently used: a new conversation, which
        shares only a system prompt with the others, never takes a slot someone may come back
        to while an older one is free."""
        assert job.ready is not None
        tokens = job.ready.tokens
        free = [s for s in self._slots if s.job is None]
        best, shared = None, 0
        for s in free:
            n = common_prefix(s.cache, tokens)
            if s.cache and n >= min(s.prompt, len(s.cache)) and n > shared:
                best, shared = s, n
        slot = best or min(free, key=lambda s: s.used)
        slot.prompt = len(tokens)
        self._turn += 1
        slot.used = self._turn
        n_past = min(common_prefix(slot.cache, tokens), len(tokens) - 1)
        ctx, _, (n_ctx, _) = self.engine._live
        del slot.cache[n_past:]
        ctx.kv_cache_seq_rm(slot.seq, n_past, -1)
        opts = job.ready.opts
        job.sampler = self.engine._sampler(opts, tokens, job.ready.grammar)
        limit = opts["num_predict"]
        job.limit = n_ctx if limit < 0 else limit
        job.out = AnswerText(self.engine.loaded_model.vocab,
                             [*opts["stop"], *self.engine.template.stop_strings],
                             job.ready.parser, job.ready.special)
        job.fed = n_past
        job.metrics.prompt_eval_count = len(tokens)
        job.metrics.prompt_cached_count = n_past
        job.started = time.perf_counter_ns()
        job.slot, slot.job = slot, job

    def _step(self) -> None:
        """One llama_decode over every busy slot: a token each for the answering ones, prompt
        chunks for the reading ones; then sample each slot whose logits came out."""
        lc = backend.llama()
        ctx, batch, (n_ctx, n_batch) = self.engine._live
        for s in self._slots:
            if s.job is not None and s.job.cancel.is_set():
                self._finish(s.job, "cancelled")
        busy = [s for s in self._slots if s.job is not None]
        if not busy:
            return
        cb = batch.batch
        room = max(n_batch, len(self._slots))
        n = 0
        outputs: list[tuple[_Slot, int]] = []  # (slot, index of its logits in the batch)
        added: list[tuple[_Slot, list[int]]] = []
        answering = [s for s in busy if s.job and s.job.next >= 0]
        for s in answering:
            assert s.job is not None
            self._put(cb, n, s.job.next, len(s.cache), s.seq, True)
            outputs.append((s, n))
            added.append((s, [s.job.next]))
            n += 1
        chunk_room = room - n
        if answering:
            chunk_room = min(chunk_room, max(SHARED_CHUNK, n_batch // 4))
        for s in sorted((s for s in busy if s.job and s.job.next < 0),
                        key=lambda s: s.used):
            if chunk_room <= 0:
                break
            job = s.job
            assert job is not None and job.ready is not None
            tokens = job.ready.tokens
            chunk = tokens[job.fed:job.fed + chunk_room]
            for i, tok in enumerate(chunk):
                last = job.fed + i == len(tokens) - 1
                self._put(cb, n, tok, job.fed + i, s.seq, last)
                if last:
                    outputs.append((s, n))
                n += 1
            added.append((s, chunk))
            chunk_room -= len(chunk)
        cb.n_tokens = n
        ret = lc.llama_decode(ctx.ctx, cb)
        if ret != 0:
            # 1: no room in the KV cache for this batch (nothing was written). Answers end
            # there; a prompt cannot be read.
            for s, _ in added:
                if s.job is None:
                    continue
                if s.job.next >= 0:
                    self._finish(s.job, "length", held=s.job.next)
                else:
                    self._fail(s.job, RuntimeError(
                        f"llama_decode returned {ret} while reading the prompt"))
            return
        for s, toks in added:
            s.cache.extend(toks)
            if s.job is not None and s.job.next < 0:
                s.job.fed += len(toks)
        for s, index in outputs:
            if s.job is not None:
                self._sample(s.job, index, ctx.ctx, n_ctx)

    @staticmethod
    def _put(cb: Any, i: int, tok: int, pos: int, seq: int, logits: bool) -> None:
        cb.token[i] = tok
        cb.pos[i] = pos
        cb.n_seq_id[i] = 1
        cb.seq_id[i][0] = seq
        cb.logits[i] = logits

    def _sample(self, job: _Job, index: int, cctx: Any, n_ctx: int) -> None:
        """Sample ``job``'s next token from the logits at ``index`` and pass its text on."""
        lc = backend.llama()
        engine = self.engine
        now = time.perf_counter_ns()
        if not job.first:
            job.first = now
            job.metrics.prompt_eval_duration = now - job.started
        try:
            out, slot = job.out, job.slot
            assert out is not None and slot is not None
            tok = lc.llama_sampler_sample(job.sampler.sampler, cctx, index)
            if lc.llama_vocab_is_eog(engine.loaded_model.vocab, tok):
                return self._finish(job, "stop")
            job.count += 1
            for event in out.feed(tok):
                job.emit(event)
            if out.stopped:
                return self._finish(job, "stop")
            if job.count >= job.limit or len(slot.cache) + 1 >= n_ctx:
                return self._finish(job, "length", held=tok)
            job.next = tok
        except BaseException as e:
            self._fail(job, e)

    def _finish(self, job: _Job, reason: str, held: int = -1) -> None:
        """End ``job``'s answer: the text still held back, then Done; its slot is free."""
        if job.done:
            return
        try:
            if job.out is not None:
                for event in job.out.finish():
                    job.emit(event)
            m = job.metrics
            m.eval_count = job.count
            m.eval_duration = max(time.perf_counter_ns() - job.first, 1) if job.first else 1
            context = None
            if job.slot is not None:
                context = list(job.slot.cache) + ([held] if held >= 0 else [])
            trimmed = job.ready.dropped if job.ready is not None else 0
            self._release(job)
            job.emit(Done(done_reason=reason, metrics=m, trimmed=trimmed, context=context))
            job.emit(END)
        except BaseException as e:
            self._fail(job, e)

    def _fail(self, job: _Job, error: BaseException) -> None:
        if job.done:
            return
        self._release(job)
        job.emit(error)

    def _release(self, job: _Job) -> None:
        job.done = True
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None
        if job.slot is not None:
            job.slot.job = None  # its cache stays: the prompt read so far and the answer
            job.slot = None

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            self._closing = True
            waiting = list(self._pending)
            self._pending.clear()
        for job in waiting + [s.job for s in self._slots if s.job is not None]:
            self._fail(job, error)
