"""Generation and load options, by their Ollama names, validated.

One table (``SPECS``) says each option's type, default, allowed range and meaning; it drives
validation here, ``/set parameter`` completion and ``/show parameters`` in the REPL, and the
``-o NAME=VALUE`` parser of the CLI. A second table (``UNSUPPORTED``) holds the rest of
Ollama's option names: ones chatcli cannot honour, each with the reason.

Two entry points, one per kind of caller:

- ``validate`` is strict, for what a person types (``-o``, ``/set parameter``, Modelfile
  ``PARAMETER`` lines, saved conversations): an unknown name, an option chatcli cannot honour,
  or ``null`` is an error, because a typo there deserves one.
- ``accept`` is lenient like Ollama, for programs (the HTTP server, ``chatcli.chat()``): ``null``
  means "the default", unknown names and options chatcli cannot honour are logged (logger
  ``chatcli``) and left out. A wrong type or range for an option chatcli knows is still an error.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from chatcli.core.errors import InvalidOptionError


@dataclass(frozen=True)
class OptionSpec:
    name: str
    kind: type  # int, float, bool or list (list of strings)
    default: Any
    help: str
    check: Callable[[Any], bool] = lambda v: True
    rule: str = ""  # what `check` demands, for the error message


def _ge(lo: float) -> Callable[[Any], bool]:
    return lambda v: v >= lo


def _between(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: lo <= v <= hi


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Threads beyond the CPUs only wait at ggml's spinning barriers: thousands make every token crawl
# (10000 hangs), and 100000 crashes the process when libgomp cannot create them. ggml itself
# takes at most GGML_MAX_N_THREADS (512). Four per usable CPU leaves room to experiment with
# oversubscription, which stops paying off well before that.
THREADS_PER_CPU = 4
MAX_THREADS = max(1, min(512, THREADS_PER_CPU * usable_cpus()))

# Defaults follow Ollama's where it has one. None means "decided at load time"
# (num_ctx from the model, num_gpu from the build, num_thread from the CPU, seed random).
SPECS: dict[str, OptionSpec] = {
    s.name: s
    for s in [
        OptionSpec("temperature", float, 0.8, "sampling temperature; 0 = greedy", _ge(0), ">= 0"),
        OptionSpec("top_p", float, 0.9, "nucleus sampling threshold", _between(0, 1), "0..1"),
        OptionSpec("top_k", int, 40, "sample from the k most likely tokens; 0 = off",
                   _ge(0), ">= 0"),
        OptionSpec("min_p", float, 0.0, "drop tokens below p x the top probability",
                   _between(0, 1), "0..1"),
        OptionSpec("typical_p", float, 1.0, "locally typical sampling; 1 = off",
                   _between(0, 1), "0..1"),
        OptionSpec("mirostat", int, 0, "Mirostat sampling (replaces top_k/top_p/min_p/"
                   "typical_p): 0 = off, 1 = Mirostat, 2 = Mirostat 2.0",
                   _between(0, 2), "0, 1 or 2"),
        OptionSpec("mirostat_tau", float, 5.0, "Mirostat's target surprise; lower = more "
                   "focused text", _ge(0), ">= 0"),
        OptionSpec("mirostat_eta", float, 0.1, "Mirostat's learning rate", _ge(0), ">= 0"),
        OptionSpec("seed", int, None, "random seed; fixed seed + temperature 0 = repeatable",
                   _ge(-1), ">= -1"),
        OptionSpec("num_predict", int, -1, "max tokens to generate; -1 = until done",
                   _ge(-2), ">= -2"),
        OptionSpec("num_ctx", int, None, "context window in tokens (reloads the context)",
                   _between(16, 1 << 22), "16..4194304"),
        OptionSpec("repeat_penalty", float, 1.1, "penalty for repeated tokens; 1 = off",
                   _ge(0), ">= 0"),
        OptionSpec("repeat_last_n", int, 64, "how far back repeat_penalty looks; -1 = num_ctx",
                   _ge(-1), ">= -1"),
        OptionSpec("presence_penalty", float, 0.0, "penalty for tokens already present",
                   _between(-2, 2), "-2..2"),
        OptionSpec("frequency_penalty", float, 0.0, "penalty by token frequency",
                   _between(-2, 2), "-2..2"),
        OptionSpec("stop", list, [], "strings that end the answer (repeatable)"),
        OptionSpec("num_gpu", int, None, "layers to offload to the GPU; -1 = all",
                   _ge(-1), ">= -1"),
        OptionSpec("num_thread", int, None,
                   f"CPU threads; default = physical cores; at most {MAX_THREADS}",
                   _between(0, MAX_THREADS),
                   f"0..{MAX_THREADS} (at most {THREADS_PER_CPU} per CPU this process may use, "
                   f"{usable_cpus()} here)"),
        OptionSpec("num_batch", int, 512, "prompt batch size (reloads the context)",
                   _between(1, 1 << 16), "1..65536"),
    ]
}


@dataclass(frozen=True)
class Unsupported:
    """An option of Ollama's that chatcli cannot honour (its type is still checked)."""

    name: str
    kind: type
    inert: Any  # the value that asks for what chatcli does anyway: ignoring it changes nothing
    reason: str


_FROM_MODEL = "read from the model file (an option of old Ollama versions)"

# The rest of Ollama's options (api/types.go Options and Runner, and a few of its older ones).
UNSUPPORTED: dict[str, Unsupported] = {
    u.name: u
    for u in [
        Unsupported("num_keep", int, None, "when a conversation outgrows num_ctx chatcli keeps "
                    "the system messages and drops whole old turns, not a number of tokens"),
        Unsupported("tfs_z", float, 1.0, "llama.cpp no longer has tail-free sampling"),
        Unsupported("penalize_newline", bool, True,
                    "llama.cpp's penalties treat a newline like any other token"),
        Unsupported("numa", bool, False, "NUMA placement is llama.cpp's default"),
        Unsupported("main_gpu", int, 0, "llama.cpp splits the layers over every GPU it sees"),
        Unsupported("low_vram", bool, False, "llama.cpp no longer has a low-VRAM mode"),
        Unsupported("f16_kv", bool, True, "the KV cache is always 16-bit"),
        Unsupported("logits_all", bool, False, "chatcli needs only the last token's logits"),
        Unsupported("vocab_only", bool, False, "chatcli always loads the weights"),
        Unsupported("use_mmap", bool, True, "chatcli always memory-maps the weights"),
        Unsupported("use_mlock", bool, False, "chatcli does not lock the weights in memory"),
        Unsupported("embedding_only", bool, False, "every chatcli model can chat"),
        Unsupported("num_gqa", int, None, _FROM_MODEL),
        Unsupported("rope_frequency_base", float, None, _FROM_MODEL),
        Unsupported("rope_frequency_scale", float, None, _FROM_MODEL),
    ]
}

_log = logging.getLogger("chatcli")
_LOGGED_NAMES = 10  # ignored names logged per request; a body can hold thousands
_NAME_CHARS = 64  # of each logged name: a request's key is not the log's to keep whole


def _coerce(spec: OptionSpec | Unsupported, value: Any) -> Any:
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise InvalidOptionError(f"option '{spec.name}' must be true or false")
        return value
    if spec.kind is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise InvalidOptionError(f"option '{spec.name}' must be a string or a list of strings")
    if isinstance(value, bool) or value is None:
        raise InvalidOptionError(f"option '{spec.name}' must be a number, not {value!r}")
    if spec.kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise InvalidOptionError(f"option '{spec.name}' must be an integer, not {value!r}")
        return value
    if not isinstance(value, (int, float)):
        raise InvalidOptionError(f"option '{spec.name}' must be a number, not {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int past float's range, e.g. 10**400 in JSON
        number = math.inf
    if not math.isfinite(number):
        # inf passes every ">= x" check and turns sampling into noise; nan fails every check
        # with a confusing message. Neither is a setting.
        raise InvalidOptionError(f"option '{spec.name}' must be a finite number, not {number!r}")
    return number


def _refuse_name(name: Any) -> NoReturn:
    """The error for an option name that is not one of SPECS."""
    if name in UNSUPPORTED:
        raise InvalidOptionError(
            f"option '{name}' is not supported by chatcli: {UNSUPPORTED[name].reason}"
        )
    raise InvalidOptionError(
        f"unknown option '{name}'; valid options: {', '.join(sorted(SPECS))}"
    )


def validate(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Strict, for what a person types: check names, types and ranges; return a new dict
    with normalised values. An unknown name, an option chatcli cannot honour and a null
    value are errors (InvalidOptionError)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidOptionError("options must be a mapping of option names to values")
    out: dict[str, Any] = {}
    for name, value in options.items():
        spec = SPECS.get(name)
        if spec is None:
            _refuse_name(name)
        value = _coerce(spec, value)
        if spec.kind is not list and not spec.check(value):
            raise InvalidOptionError(f"option '{name}' must be {spec.rule}, got {value!r}")
        out[name] = value
    return out


@dataclass(frozen=True)
class Accepted:
    """What ``accept`` made of a program's options."""

    options: dict[str, Any]  # validated and normalised, ready for the engine
    ignored: dict[str, str] = field(default_factory=dict)  # name -> why it has no effect


def accept(options: Mapping[str, Any] | None) -> Accepted:
    """Lenient, as Ollama is with the options a program sends (the server, ``chatcli.chat()``).

    ``null`` means "the default" and is left out. Options chatcli honours are validated as
    ``validate`` does: a wrong type or an out-of-range value is still InvalidOptionError.
    Ollama's options that chatcli cannot honour are type-checked, then ignored; unknown
    names are ignored. Each ignored option is logged (logger ``chatcli``) unless its value
    asks for what chatcli does anyway (``use_mmap: true``, ``tfs_z: 1``).
    """
    if options is None:
        return Accepted({})
    if not isinstance(options, Mapping):
        raise InvalidOptionError("options must be a mapping of option names to values")
    out: dict[str, Any] = {}
    ignored: dict[str, str] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in SPECS:
            out.update(validate({name: value}))
        elif name in UNSUPPORTED:
            spec = UNSUPPORTED[name]
            if _coerce(spec, value) != spec.inert:
                ignored[name] = spec.reason
        else:
            ignored[str(name)] = "unknown option"
    _log_ignored(ignored)
    return Accepted(out, ignored)


def _log_ignored(ignored: Mapping[str, str]) -> None:
    for name, why in list(ignored.items())[:_LOGGED_NAMES]:
        shown = name if len(name) <= _NAME_CHARS else name[:_NAME_CHARS] + "..."
        _log.warning("option %r ignored: %s", shown, why)
    if len(ignored) > _LOGGED_NAMES:
        _log.warning("%d more options ignored", len(ignored) - _LOGGED_NAMES)


def parse_value(name: str, text: str) -> Any:
    """Parse a value typed by a user (``-o NAME=VALUE``, ``/set parameter NAME VALUE``)."""
    spec = SPECS.get(name)
    if spec is None:
        _refuse_name(name)
    text = text.strip()
    if spec.kind is list:
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise InvalidOptionError(f"option '{name}': bad JSON list: {e.msg}") from None
        else:
            value = [_unquote(text)]
        return validate({name: value})[name]
    try:
        number: Any = int(text) if spec.kind is int else float(text)
    except ValueError:
        kind = "an integer" if spec.kind is int else "a number"
        raise InvalidOptionError(f"option '{name}' must be {kind}, got {text!r}") from None
    return validate({name: number})[name]


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``NAME=VALUE`` into a validated pair."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise InvalidOptionError(f"expected NAME=VALUE, got {text!r}")
    name = name.strip()
    return name, parse_value(name, value)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def merge(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Later layers win; ``stop`` lists are replaced, not concatenated (as in Ollama)."""
    out: dict[str, Any] = {}
    for layer in layers:
        if layer:
            out.update(layer)
    return out
