"""Chat formatting with the model's own Jinja template, in a sandbox with limits.

GGUF files carry ``tokenizer.chat_template``, a Jinja template written by whoever published the
model; Modelfiles and the server's /api/create supply others. Rendering one with a plain
``jinja2.Environment`` lets a malicious file run Python (CVE-2024-34359), so templates are
compiled in jinja2's immutable sandbox: attribute access to dunders, ``import`` and mutation of
shared objects are refused.

The sandbox bounds what a template may reach, not how much it may do, so every render is also
bounded in time and size (the limits below):

- a deadline: a watchdog thread raises an exception inside the rendering thread once
  ``RENDER_SECONDS`` have passed, which stops any loop of Python code (nested ``for`` loops with
  empty bodies included). It cannot interrupt one long C call, hence the size checks;
- sizes, checked *before* anything is allocated wherever an argument decides the size:
  ``*``, ``+``, ``**``, ``%``, ``~``, ``range``, the string methods and filters that pad, repeat,
  join, indent, replace or format, blocks and macros; and the output itself, rendered piece by
  piece and stopped once it passes the limit. Lists count 8 characters an item (a pointer);
- all the text built during one render, summed, so that many values each under the limit cannot
  add up to gigabytes either.

The size limits grow with the conversation (twice its size, and more for the total), so that a
long conversation is never refused for being long: only what the template adds is bounded.
Every refusal, timeout, ``OverflowError``, ``MemoryError`` or ``RecursionError`` becomes a
``TemplateError`` that names the model and the limit.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from chatcli.core.errors import TemplateError

# Used when a GGUF has no chat template: ChatML, which llama.cpp also falls back to.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_STOPS = ("<|im_end|>", "<|im_start|>")

# Limits. Real templates render a conversation in milliseconds and emit about as much text as
# they are given plus a few markers per message; these are orders of magnitude above that.
RENDER_SECONDS = 10.0
"""Wall-clock deadline of one render (tests lower it)."""
MAX_CHARS = 16 * 1024 * 1024
"""Largest value (string, list) a render may build, and its largest output, on top of twice the
size of its input: 16 Mi characters is ~4 M tokens, more than any model's context."""
MAX_TOTAL_CHARS = 64 * 1024 * 1024
"""All the text one render may build, summed (on top of 16 times its input): bounds memory to
about 256 MB (4-byte characters) however the work is split."""
MAX_RANGE = 100_000
"""Longest ``range()`` (jinja2's own sandbox limit)."""
MAX_INT_BITS = 1 << 16
"""Largest integer ``*`` and ``**`` may build (~20,000 digits)."""
MAX_JSON_INDENT = 64
"""Widest ``tojson(indent=...)``."""

_END = object()


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value: Any, indent: int | str | None = None, ensure_ascii: bool = False,
            **_: Any) -> str:
    # Hugging Face's tojson: plain json.dumps (jinja's own escapes <, > and & for HTML).
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


# --- sizes -----------------------------------------------------------------------------------

def _size(obj: Any, limit: int, indent: int = 0) -> int:
    """About ``len(str(obj))`` (or its JSON with ``indent``), counted without building it and
    without going further once it passes ``limit``: a list holding the same large string a
    thousand times is large although it took little memory to build."""
    if isinstance(obj, str):
        return len(obj)
    if obj is None or isinstance(obj, (bool, float)):
        return 8
    from jinja2.utils import Namespace

    total = 0
    stack = [(iter((obj,)), 0)]
    while stack and total <= limit:
        items, depth = stack[-1]
        item = next(items, _END)
        if item is _END:
            stack.pop()
            continue
        total += 2 + depth * indent
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.append((itertools.chain.from_iterable(item.items()), depth + 1))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.append((iter(item), depth + 1))
        elif isinstance(item, Namespace):
            stack.append((iter(item._Namespace__attrs.items()), depth + 1))
        elif isinstance(item, (bytes, bytearray)):
            total += 4 * len(item)
        elif isinstance(item, int):
            total += item.bit_length() // 3
        else:
            total += 8
    return total


def _length(value: Any) -> int:
    """The size a string or sequence takes: characters, or 8 an item."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple, bytes, bytearray)):
        return 8 * len(value)
    return 0


def _format_size(fmt: str, values: Iterable[Any], limit: int, nested: bool) -> int:
    """Bound on the length of ``fmt % values`` or ``fmt.format(*values)``."""
    widths = [0]
    for run in re.findall(r"\d+", fmt):
        widths.append(int(run) if len(run) <= 18 else 10**18)
    biggest = 0
    for value in values:
        if nested and isinstance(value, int) and not isinstance(value, bool):
            widths.append(abs(value))  # may be a width given as an argument ('%*d', '{:{}}')
        biggest = max(biggest, _size(value, limit))
    fields = fmt.count("%") + fmt.count("{") + 1
    return len(fmt) + fields * (max(widths) + biggest)


def _format_values(args: Any) -> Iterable[Any]:
    if isinstance(args, tuple):
        return args
    if isinstance(args, dict):
        return args.values()
    return (args,)


def _replace_size(s: str, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(s)
    hits = len(s) + 1 if not old else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(len(new) - len(old), 0)


class _Budget:
    """The limits of one render and what it has built so far.

    The limits start at their base and grow by the size of the render's input the first time
    something passes them, so that the input is measured only when it could matter.
    """

    __slots__ = ("model_name", "size", "total", "used", "_inputs")

    def __init__(self, model_name: str, inputs: Any = None) -> None:
        self.model_name = model_name
        self.size = MAX_CHARS
        self.total = MAX_TOTAL_CHARS
        self.used = 0
        self._inputs = inputs

    def refuse(self, what: str) -> TemplateError:
        return TemplateError(f"chat template of {self.model_name} was stopped: {what}")

    def _grow(self) -> bool:
        """Add what the input allows; False if that was done already."""
        if self._inputs is None:
            return False
        input_chars = _size(self._inputs, 1 << 62)
        self._inputs = None
        self.size += 2 * input_chars
        self.total += 16 * input_chars
        return True

    def check(self, n: int, what: str) -> None:
        """Refuse a value of about ``n`` characters before it is built, or count it."""
        self.used += n
        if n > self.size or self.used > self.total:
            self._over(n, what)

    def _over(self, n: int, what: str) -> None:
        while n > self.size or self.used > self.total:
            if self._grow():
                continue
            if n > self.size:
                raise self.refuse(f"{what} would be about {n:,} characters, over the limit "
                                  f"of {self.size:,}")
            raise self.refuse(f"it built more than {self.total:,} characters of text in all")

    def measure(self, value: Any, what: str, indent: int = 0) -> int:
        """Check what turning ``value`` into text would cost; returns the size."""
        n = _size(value, self.size, indent)
        while n > self.size and self._grow():
            n = _size(value, self.size, indent)
        if n > self.size:
            raise self.refuse(f"{what} would be over {self.size:,} characters")
        return n


class _Unbounded(_Budget):
    """Outside a render (jinja2 folding constants while compiling): sizes only."""

    def __init__(self) -> None:
        super().__init__("model")
        self.total = float("inf")  # type: ignore[assignment]


_local = threading.local()


_UNBOUNDED = _Unbounded()


def _budget() -> _Budget:
    return getattr(_local, "budget", None) or _UNBOUNDED


# --- the deadline ----------------------------------------------------------------------------

class _RenderTimeout(BaseException):
    """Raised inside the rendering thread at its deadline (a BaseException, so that no
    ``except Exception`` on the way out can swallow it)."""


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    # exc None (NULL) withdraws an exception set but not yet raised.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None)


class _Guard:
    __slots__ = ("thread_id", "deadline", "fired")

    def __init__(self, thread_id: int, deadline: float) -> None:
        self.thread_id = thread_id
        self.deadline = deadline
        self.fired = False


class _Watchdog:
    """One daemon thread that interrupts renders past their deadline.

    ``start`` and ``stop`` take one lock, under which the watchdog also fires: it can only fire
    at a render that has not yet stopped, and ``stop`` withdraws an exception that was set but
    not yet raised, so none ever escapes into the code after the render.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._guards: set[_Guard] = set()
        self._thread: threading.Thread | None = None
        self._sleeping_until = float("inf")

    def start(self, seconds: float) -> _Guard:
        guard = _Guard(threading.get_ident(), time.monotonic() + seconds)
        with self._lock:
            self._guards.add(guard)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="chatcli-template-deadline",
                                                daemon=True)
                self._thread.start()
            elif guard.deadline < self._sleeping_until:
                self._wake.notify()
        return guard

    def stop(self, guard: _Guard) -> bool:
        """End a guard; True if its deadline passed (its exception is then withdrawn)."""
        with self._lock:
            self._guards.discard(guard)
            fired = guard.fired
        if fired:
            _set_async_exc(guard.thread_id, None)
        return fired

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for guard in [g for g in self._guards if g.deadline <= now]:
                    self._guards.discard(guard)
                    guard.fired = True
                    _set_async_exc(guard.thread_id, _RenderTimeout)
                self._sleeping_until = min((g.deadline for g in self._guards),
                                           default=float("inf"))
                self._wake.wait(None if not self._guards else self._sleeping_until - now)
                self._sleeping_until = float("inf")


_WATCHDOG = _Watchdog()


def _reset_watchdog() -> None:
    global _WATCHDOG
    _WATCHDOG = _Watchdog()  # a forked child has no watchdog thread, and maybe a held lock


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_watchdog)


# --- the environment -------------------------------------------------------------------------

def _bounded_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise _budget().refuse(f"range() of {len(rng):,} numbers is over the limit of "
                               f"{MAX_RANGE:,}")
    return rng


def _check_binop(budget: _Budget, operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise budget.refuse(f"a product of over {MAX_INT_BITS:,} bits")
            return
        seq, times = (right, left) if isinstance(left, int) else (left, right)
        if isinstance(times, int) and _length(seq):
            budget.check(_length(seq) * max(times, 0), "a repeated value")
    elif operator == "+":
        if _length(left) or _length(right):
            budget.check(_length(left) + _length(right), "a concatenation")
    elif operator == "**":
        if (isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
                and left.bit_length() * right > MAX_INT_BITS):
            raise budget.refuse(f"a power of over {MAX_INT_BITS:,} bits")
    elif operator == "%" and isinstance(left, str):
        budget.check(_format_size(left, _format_values(right), budget.size, "*" in left),
                     "a formatted string")


def _check_str_call(budget: _Budget, s: str, name: str, args: tuple, kwargs: dict) -> tuple:
    """Check a string method call before it runs; returns its arguments (join's iterable is
    read into a list to be measured)."""
    if name in ("ljust", "rjust", "center", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        if isinstance(width, int):
            budget.check(max(len(s), width), f"str.{name}()")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            budget.check(len(s) + s.count("\t") * max(size, 0), "str.expandtabs()")
    elif name == "replace":
        budget.check(_replace_size(s, *args, **kwargs), "str.replace()")
    elif name == "join" and len(args) == 1:
        items = list(args[0])
        budget.check(sum(budget.measure(x, "str.join()") for x in items)
                     + len(s) * len(items), "str.join()")
        args = (items,)
    elif name in ("format", "format_map"):
        values = list(args) + list(kwargs.values())
        if name == "format_map" and args and isinstance(args[0], dict):
            values = list(args[0].values())
        budget.check(_format_size(s, values, budget.size, "{" in s.replace("{{", "")),
                     f"str.{name}()")
    return args


def _check_result(budget: _Budget, result: Any, what: str) -> Any:
    n = _length(result)
    if n:
        budget.check(n, what)
    return result


@functools.cache
def _make_environment() -> Any:
    from jinja2.compiler import CodeGenerator, Frame, optimizeconst
    from jinja2.nodes import Concat
    from jinja2.runtime import markup_join, str_join
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedCodeGenerator(CodeGenerator):
        @optimizeconst
        def visit_Concat(self, node: Concat, frame: Frame) -> None:
            # '~' joins in C, out of reach of the binop hooks: send it through a checked join.
            self.write("environment.checked_concat(context, (")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        code_generator_class = BoundedCodeGenerator
        intercepted_binops = frozenset({"+", "*", "**", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            budget = getattr(_local, "budget", None) or _UNBOUNDED
            if operator == "+" and type(left) is str and type(right) is str:  # the common case
                budget.check(len(left) + len(right), "a concatenation")
                return left + right
            _check_binop(budget, operator, left, right)
            return self.binop_table[operator](left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            budget = _budget()
            target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
            owner = getattr(target, "__self__", None)
            if isinstance(owner, str):
                args = _check_str_call(budget, owner, target.__name__, args, kwargs)
            result = super().call(__context, __obj, *args, **kwargs)
            return _check_result(budget, result, "a call's result")

        def checked_concat(self, context: Any, items: tuple) -> str:
            budget = _budget()
            budget.check(sum(budget.measure(x, "a '~' join") for x in items), "a '~' join")
            join = markup_join if context.eval_ctx.autoescape else str_join
            return join(items)

    return BoundedEnvironment


def _checked_block_concat(parts: Iterable[str]) -> str:
    # environment.concat joins the output of blocks, macros and {% set %} captures.
    if not isinstance(parts, list):
        parts = list(parts)
    _budget().check(sum(map(len, parts)), "a block's output")
    return "".join(parts)


def _finalize(value: Any) -> Any:
    # Every {{ expression }} passes here before str(): measure what str() would build.
    if not isinstance(value, str):
        _budget().measure(value, "printing a value")
    return value


def _indent_width(indent: Any) -> int:
    return len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0


def _estimate_filter(budget: _Budget, name: str, value: Any, args: tuple,
                     kwargs: dict) -> Any:
    """Check a filter call before it runs; returns the value (read into a list for join)."""
    def arg(i: int, key: str, default: Any) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)

    if name == "join":
        value = list(value)
        sep = budget.measure(arg(0, "d", ""), "join()")
        budget.check(sum(budget.measure(x, "join()") for x in value) + sep * len(value),
                     "join()")
        return value
    size = budget.measure(value, f"{name}()")
    if name == "center":
        width = arg(0, "width", 80)
        budget.check(max(size, width if isinstance(width, int) else 0), "center()")
    elif name == "indent":
        lines = value.count("\n") + 1 if isinstance(value, str) else size
        budget.check(size + lines * _indent_width(arg(0, "width", 4)), "indent()")
    elif name == "replace" and isinstance(value, str):
        budget.check(_replace_size(value, arg(0, "old", ""), arg(1, "new", ""),
                                   arg(2, "count", None)), "replace()")
    elif name == "wordwrap":
        wrap = arg(3, "wrapstring", None)
        budget.check(size * (1 + (len(wrap) if isinstance(wrap, str) else 1)), "wordwrap()")
    elif name == "format" and isinstance(value, str):
        budget.check(_format_size(value, list(args) + list(kwargs.values()), budget.size,
                                  True), "format()")
    elif name == "tojson":
        width = _indent_width(arg(0, "indent", None))
        if width > MAX_JSON_INDENT:
            raise budget.refuse(f"tojson indent {width:,} is over the limit of {MAX_JSON_INDENT}")
        budget.check(budget.measure(value, "tojson()", indent=width + 1), "tojson()")
    elif name == "pprint":
        budget.check(2 * budget.measure(value, "pprint()", indent=1), "pprint()")
    elif name in ("batch", "slice"):
        count = arg(0, "linecount" if name == "batch" else "slices", 1)
        if isinstance(count, int):
            budget.check(8 * max(count, 0), f"{name}()")
    return value


# Filters that only pick, count or reorder what exists (their result is checked afterwards).
_SHAPE_FILTERS = frozenset({
    "abs", "attr", "bool", "count", "d", "default", "dictsort", "first", "float", "groupby",
    "int", "items", "last", "length", "list", "map", "max", "min", "random", "reject",
    "rejectattr", "reverse", "round", "select", "selectattr", "sort", "sum", "unique",
})


def _guard_filter(name: str, func: Any) -> Any:
    passes = getattr(func, "jinja_pass_arg", None)  # @pass_environment & co. take one more arg
    what = f"{name}()"

    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        if name not in _SHAPE_FILTERS:
            first = 1 if passes else 0
            value = _estimate_filter(budget, name, args[first], args[first + 1:], kwargs)
            args = (*args[:first], value, *args[first + 1:])
        return _check_result(budget, func(*args, **kwargs), what)

    guarded.__name__ = getattr(func, "__name__", name)
    if passes is not None:
        guarded.jinja_pass_arg = passes  # type: ignore[attr-defined]
    return guarded


def _sum(environment: Any, iterable: Iterable[Any], attribute: Any = None,
         start: Any = 0) -> Any:
    """jinja2's sum, but strings and lists are added one checked '+' at a time (the builtin
    would copy quadratically inside one C call that no deadline can stop)."""
    from jinja2.filters import make_attrgetter

    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    items = list(iterable)
    if all(isinstance(x, (int, float)) for x in items) and isinstance(start, (int, float)):
        if any(isinstance(x, int) and x.bit_length() > MAX_INT_BITS for x in items):
            raise _budget().refuse(f"a sum of over {MAX_INT_BITS:,} bits")
        return sum(items, start)
    total = start
    for item in items:
        total = environment.call_binop(None, "+", total, item)
    return total


class ChatTemplate:
    """A compiled chat template for one model."""

    def __init__(
        self,
        source: str | None,
        *,
        bos_token: str = "",
        eos_token: str = "",
        model_name: str = "model",
    ) -> None:
        from jinja2 import TemplateError as JinjaTemplateError
        from jinja2.utils import pass_environment

        self.is_fallback = not source
        self.source = source or CHATML_TEMPLATE
        self.model_name = model_name
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = _make_environment()(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols"],
            autoescape=False,
            finalize=_finalize,
        )
        env.concat = _checked_block_concat
        env.filters["tojson"] = _tojson
        env.filters["sum"] = pass_environment(_sum)
        env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items()}
        env.globals["range"] = _bounded_range
        env.globals.pop("lipsum", None)  # lipsum(n) builds n paragraphs; no template needs it
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(self.source)
        except JinjaTemplateError as e:
            raise TemplateError(f"chat template of {model_name} does not compile: {e}") from None
        except (RecursionError, MemoryError) as e:
            raise TemplateError(f"chat template of {model_name} does not compile: it is too "
                                f"deeply nested or too large ({type(e).__name__})") from None

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text stops implied by the fallback template (real templates use EOG tokens)."""
        return CHATML_STOPS if self.is_fallback else ()

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **variables: Any,
    ) -> str:
        """Render a conversation into the prompt text the model was trained on.

        Raises ``TemplateError`` when the template fails, refuses the conversation, tries
        something unsafe or passes a limit (time, size); nothing else escapes.
        """
        from jinja2 import TemplateError as JinjaTemplateError
        from jinja2.exceptions import SecurityError

        name = self.model_name
        try:
            return self._render_bounded(list(messages), add_generation_prompt, variables)
        except _RenderTimeout:
            raise TemplateError(f"chat template of {name} was stopped: it ran longer than "
                                f"{RENDER_SECONDS:g} s") from None
        except TemplateError:
            raise
        except SecurityError as e:
            raise TemplateError(
                f"chat template of {name} tried an unsafe operation and was stopped: {e}"
            ) from None
        except RecursionError:
            raise TemplateError(f"chat template of {name} was stopped: it recursed too "
                                "deeply") from None
        except MemoryError:
            raise TemplateError(f"chat template of {name} was stopped: it ran out of "
                                "memory") from None
        except OverflowError as e:
            raise TemplateError(f"chat template of {name} was stopped: a number overflowed "
                                f"({e})") from None
        except (JinjaTemplateError, TypeError, ValueError, KeyError, AttributeError,
                IndexError, ZeroDivisionError) as e:
            raise TemplateError(f"chat template of {name} failed: {e}") from None

    def _render_bounded(self, messages: list[Mapping[str, Any]], add_generation_prompt: bool,
                        variables: dict[str, Any]) -> str:
        budget = _Budget(self.model_name, [messages, variables])
        outer = getattr(_local, "budget", None)
        _local.budget = budget
        guard = _WATCHDOG.start(RENDER_SECONDS)
        try:
            pieces = []
            length = 0
            for piece in self._template.generate(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **variables,
            ):
                length += len(piece)
                if length > budget.size and not (budget._grow() and length <= budget.size):
                    raise budget.refuse(f"its output passed {budget.size:,} characters")
                pieces.append(piece)
        finally:
            _local.budget = outer
            fired = _WATCHDOG.stop(guard)
        if fired:
            raise _RenderTimeout
        return "".join(pieces)
