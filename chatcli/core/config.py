"""User configuration: ``config.toml`` in the config directory (``chat config path``).

    model = "qwen3:0.6b"          # the default model
    system = "Answer briefly."    # the default system prompt
    markdown = true               # render settings: markdown, wordwrap, verbose, hidethinking
    log = true                    # record conversations in the log

    [options]                     # any engine option, checked as strictly as -o NAME=VALUE
    temperature = 0.7

    [aliases]                     # names a person may type for a model (CLI and REPL)
    fast = "qwen3:0.6b"

    [server]                      # chat serve
    host = "127.0.0.1:11434"
    origins = ["https://*.example.com"]
    parallel = 4                  # requests each model answers at once

Precedence, highest first: command-line flags, environment variables, this file, the model's
own defaults (its Modelfile or GGUF). Each key has an environment variable (``ENV``).

A broken file never stops chatcli and is never ignored in silence: each problem (a TOML syntax
error, an unknown key, a wrong type, a bad option value) is one line on stderr naming the file
and the key, printed once per process, and the bad key (or, for a syntax error, the file) is
left out. The old ``config.json`` is still read, for one release, with a notice.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatcli.core.errors import ChatCliError
from chatcli.core.names import DEFAULT_MODEL
from chatcli.core.paths import config_dir

CONFIG_NAME = "config.toml"
LEGACY_NAME = "config.json"
MAX_BYTES = 1 << 20  # a config file is a few lines; refuse to parse a stray huge file

RENDER_KEYS = ("markdown", "wordwrap", "verbose", "hidethinking")
BOOL_KEYS = (*RENDER_KEYS, "log")

# Every setting, in the order `chat config show` lists them, with its default.
DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "system": None,
    "options": {},
    "markdown": True,
    "wordwrap": True,
    "verbose": False,
    "hidethinking": False,
    "log": True,
    "server.host": "127.0.0.1:11434",
    "server.origins": [],
    "server.parallel": 1,
    "aliases": {},
}

# The environment variable of each setting. CHATCLI_NOLOG turns the log off (any value but 0).
ENV: dict[str, str] = {
    "model": "CHATCLI_MODEL",
    "system": "CHATCLI_SYSTEM",
    "options": "CHATCLI_OPTIONS",  # NAME=VALUE pairs, shell-quoted: 'temperature=0 stop="a b"'
    "markdown": "CHATCLI_MARKDOWN",
    "wordwrap": "CHATCLI_WORDWRAP",
    "verbose": "CHATCLI_VERBOSE",
    "hidethinking": "CHATCLI_HIDETHINKING",
    "log": "CHATCLI_NOLOG",
    "server.host": "CHATCLI_HOST",
    "server.origins": "CHATCLI_ORIGINS",  # comma separated
    "server.parallel": "OLLAMA_NUM_PARALLEL",  # Ollama's name: its users have it set already
}

MAX_PARALLEL = 64  # parallel slots per model; each holds num_ctx tokens of KV cache

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Value:
    """A setting's value and where it came from."""

    value: Any
    source: str  # "flag", "env", "file" or "default"
    where: str = ""  # the environment variable or the file, when there is one


@dataclass
class FileConfig:
    """What the configuration files hold once checked: the good values, and one line per
    problem (each already naming the file and the key)."""

    path: Path
    values: dict[str, Any] = field(default_factory=dict)  # flat keys: "server.host", ...
    problems: list[str] = field(default_factory=list)
    legacy: Path | None = None  # config.json, when it was read too
    origins: dict[str, Path] = field(default_factory=dict)  # keys config.json supplied


def config_path() -> Path:
    """Where the configuration file is (it may not exist)."""
    return config_dir() / CONFIG_NAME


def _toml() -> Any:
    """``tomllib`` (3.11+) or its backport ``tomli`` (3.10), which has the same API."""
    return importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")


def _syntax_problem(path: Path, text: str, error: Exception) -> str:
    """One line for a TOML syntax error: the file, the line (with its text) and the error."""
    import re

    message = str(error)
    lineno = getattr(error, "lineno", None)
    found = re.search(r"\(at line (\d+), column (\d+)\)$", message)
    if found:
        message = message[: found.start()].rstrip()
        lineno = int(found.group(1))
    where = f"{path}"
    if lineno:
        lines = text.splitlines()
        shown = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
        if len(shown) > 60:
            shown = shown[:57] + "..."
        where += f" line {lineno}" + (f" ({shown})" if shown else "")
    return f"{where}: TOML syntax error: {message}; the whole file is ignored"


def read_file(path: Path) -> FileConfig:
    """Read and check one ``config.toml``, never raising: problems are collected."""
    config = FileConfig(path)
    try:
        raw = path.read_bytes()[: MAX_BYTES + 1]
    except FileNotFoundError:
        return config
    except OSError as e:
        config.problems.append(f"{path}: cannot read it ({e.strerror or e}); it is ignored")
        return config
    if len(raw) > MAX_BYTES:
        config.problems.append(f"{path}: larger than {MAX_BYTES >> 20} MiB; it is ignored")
        return config
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # TOML is UTF-8; a guess would garble names silently
        config.problems.append(f"{path}: not UTF-8 text (byte {e.start}); the whole file is "
                               "ignored")
        return config
    toml = _toml()
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as e:
        config.problems.append(_syntax_problem(path, text, e))
        return config
    _check(data, config, path)
    return config


def _read_legacy(path: Path, into: FileConfig) -> None:
    """The old ``config.json`` (``{"default_model": ...}``), under config.toml's values."""
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        into.problems.append(f"{path}: cannot read it ({e}); it is ignored")
        into.legacy = path
        return
    into.legacy = path
    if not isinstance(data, dict):
        into.problems.append(f"{path}: not a JSON object; it is ignored")
        return
    if "default_model" in data:
        data = dict(data)
        data["model"] = data.pop("default_model")
    legacy = FileConfig(path)
    _check(data, legacy, path)
    for key, value in legacy.values.items():
        if key not in into.values:
            into.values[key] = value
            into.origins[key] = path
    into.problems += legacy.problems


def _problem(path: Path, key: str, what: str) -> str:
    return f"{path}: '{key}': {what}; it is ignored"


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _check(data: Mapping[str, Any], config: FileConfig, path: Path) -> None:
    """Keep the good keys of ``data`` in ``config.values``; a line per bad one."""
    top = ("model", "system", *BOOL_KEYS, "options", "aliases", "server")
    for key, value in data.items():
        if key in ("model", "system"):
            if not isinstance(value, str):
                config.problems.append(_problem(
                    path, key, f"must be a string, not {_type_name(value)}"))
            elif key == "model" and not value.strip():
                config.problems.append(_problem(path, key, "must not be empty"))
            else:
                config.values[key] = value.strip() if key == "model" else value
        elif key in BOOL_KEYS:
            if isinstance(value, bool):
                config.values[key] = value
            else:
                config.problems.append(_problem(
                    path, key, f"must be true or false, not {_type_name(value)}"))
        elif key == "options":
            _check_options(value, config, path)
        elif key == "aliases":
            _check_aliases(value, config, path)
        elif key == "server":
            _check_server(value, config, path)
        else:
            config.problems.append(_problem(path, key, "unknown key" + _did_you_mean(key, top)))


def _did_you_mean(name: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_table(value: Any, key: str, config: FileConfig, path: Path) -> bool:
    """Whether ``value`` is a TOML table; if not, one problem naming ``[key]``."""
    if isinstance(value, dict):
        return True
    config.problems.append(_problem(path, key, f"must be a table ([{key}]), "
                                    f"not {_type_name(value)}"))
    return False


def _check_options(value: Any, config: FileConfig, path: Path) -> None:
    from chatcli.core import options as opts_mod

    if not _is_table(value, "options", config, path):
        return
    good: dict[str, Any] = {}
    for name, v in value.items():
        key = f"options.{name}"
        if name not in opts_mod.SPECS and name not in opts_mod.UNSUPPORTED:
            config.problems.append(_problem(
                path, key, "unknown option" + _did_you_mean(name, opts_mod.SPECS)))
            continue
        try:
            good.update(opts_mod.validate({name: v}))
        except ChatCliError as e:
            config.problems.append(_problem(path, key, str(e)))
    config.values["options"] = good


def _check_aliases(value: Any, config: FileConfig, path: Path) -> None:
    if not _is_table(value, "aliases", config, path):
        return
    good: dict[str, str] = {}
    for name, target in value.items():
        if not name.strip() or any(c.isspace() for c in name):
            config.problems.append(_problem(path, f"aliases.{name}",
                                            "an alias is one word"))
        elif not isinstance(target, str) or not target.strip():
            config.problems.append(_problem(path, f"aliases.{name}",
                                            "must be a model name (a string)"))
        else:
            good[name] = target.strip()
    config.values["aliases"] = good


def _check_server(value: Any, config: FileConfig, path: Path) -> None:
    from chatcli.core.hosts import parse_host

    if not _is_table(value, "server", config, path):
        return
    for name, v in value.items():
        key = f"server.{name}"
        if name == "host":
            try:
                if not isinstance(v, str):
                    raise ChatCliError(f"must be host[:port], not {_type_name(v)}")
                parse_host(v)
            except ChatCliError as e:
                config.problems.append(_problem(path, key, str(e)))
                continue
            config.values[key] = v
        elif name == "origins":
            items = [v] if isinstance(v, str) else v
            if isinstance(items, list) and all(isinstance(i, str) for i in items):
                config.values[key] = [i.strip() for i in items if i.strip()]
            else:
                config.problems.append(_problem(path, key, "must be an array of strings"))
        elif name == "parallel":
            try:
                config.values[key] = parse_parallel(v)
            except ChatCliError as e:
                config.problems.append(_problem(path, key, str(e)))
        else:
            config.problems.append(_problem(
                path, key, "unknown key" + _did_you_mean(name, ("host", "origins", "parallel"))))


def parse_parallel(value: Any) -> int:
    """A number of parallel requests per model: a whole number from 1 to MAX_PARALLEL (0, as
    in Ollama, means the default: 1)."""
    if isinstance(value, str):
        text = value.strip()
        value = int(text) if text.isdigit() else text
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PARALLEL:
        raise ChatCliError(f"must be a whole number from 1 to {MAX_PARALLEL}, not {value!r}")
    return value or 1


# -- the process's view: read once per change of the file, each problem said once ---------

_cache: dict[tuple[Any, ...], FileConfig] = {}
_said: set[str] = set()


def warn_once(line: str) -> None:
    """Print one line on stderr, once per process."""
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr, flush=True)


def _stamp(path: Path) -> tuple[Any, ...]:
    try:
        st = path.stat()
    except OSError:
        return (str(path), None)
    return (str(path), st.st_mtime_ns, st.st_size, st.st_ino)


def load() -> FileConfig:
    """The configuration files as checked, re-read when they change; their problems (and
    the notice about config.json) are printed on stderr, each once per process."""
    path = config_path()
    legacy = path.with_name(LEGACY_NAME)
    key = (_stamp(path), _stamp(legacy))
    config = _cache.get(key)
    if config is None:
        config = read_file(path)
        _read_legacy(legacy, config)
        _cache.clear()
        _cache[key] = config
    if config.legacy is not None:
        warn_once(f"Notice: {config.legacy} is read for this release only; move its settings "
                  f"to {path} (chat config edit)")
    for line in config.problems:
        warn_once(f"Warning: {line}")
    return config


def _env_bool(key: str) -> bool | None:
    name = ENV[key]
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return None
    if key == "log":  # CHATCLI_NOLOG: set means off
        return text in _FALSE
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    warn_once(f"Warning: ${name}={text!r}: expected 1/0, true/false, yes/no or on/off; "
              "it is ignored")
    return None


def _env_options() -> dict[str, Any]:
    from chatcli.core import options as opts_mod

    text = os.environ.get(ENV["options"], "")
    out: dict[str, Any] = {}
    try:
        items = shlex.split(text)
    except ValueError as e:
        warn_once(f"Warning: ${ENV['options']}: {e}; it is ignored")
        return out
    for item in items:
        try:
            name, value = opts_mod.parse_assignment(item)
        except ChatCliError as e:
            warn_once(f"Warning: ${ENV['options']}: {e}; it is ignored")
            continue
        out[name] = value
    return out


def _env_value(key: str) -> Any:
    """The environment's value for ``key``, or None."""
    if key in BOOL_KEYS:
        return _env_bool(key)
    if key == "options":
        return _env_options() or None
    if key == "server.origins":
        text = os.environ.get(ENV[key], "")
        return [i.strip() for i in text.split(",") if i.strip()] or None
    if key in ENV:
        text = os.environ.get(ENV[key], "")
        return text if text.strip() else None
    return None


def setting(key: str, flag: Any = None) -> Value:
    """A setting (a key of DEFAULTS) and its source: ``flag`` when it is not None, else the
    environment, else the file, else the default. For "options", see ``option_values``."""
    if key not in DEFAULTS:
        raise KeyError(key)
    if flag is not None:
        return Value(flag, "flag")
    env = _env_value(key) if key != "options" else None
    if env is not None:
        return Value(env, "env", "$" + ENV[key])
    config = load()
    if key in config.values:
        return Value(config.values[key], "file", str(config.origins.get(key, config.path)))
    return Value(DEFAULTS[key], "default")


def get(key: str, flag: Any = None) -> Any:
    """A setting's value: ``flag`` if given, else environment, file, default."""
    return setting(key, flag).value


def get_bool(key: str, flag: bool | None = None) -> bool:
    """A true/false setting (markdown, wordwrap, verbose, hidethinking, log)."""
    if key not in BOOL_KEYS:
        raise KeyError(key)
    return bool(get(key, flag))


def option_values() -> dict[str, Value]:
    """The default engine options, each with its source: environment over file."""
    config = load()
    where = str(config.origins.get("options", config.path))
    out = {name: Value(v, "file", where) for name, v in config.values.get("options", {}).items()}
    out.update({name: Value(v, "env", "$" + ENV["options"])
                for name, v in _env_options().items()})
    return out


def options() -> dict[str, Any]:
    """The default engine options (environment over file); flags go on top of these."""
    return {name: v.value for name, v in option_values().items()}


def aliases() -> dict[str, str]:
    """The ``[aliases]`` table: a name a person types -> the model it stands for."""
    return dict(load().values.get("aliases", {}))


def default_model() -> str:
    """The model `chat run` uses when none is named (an alias in the file is followed)."""
    name = str(get("model"))
    return aliases().get(name, name)


def effective() -> list[tuple[str, Value]]:
    """Every setting with its value and source, as ``chat config show`` lists them: options
    and aliases one line each."""
    rows: list[tuple[str, Value]] = []
    for key in DEFAULTS:
        if key == "options":
            rows += [(f"options.{name}", v) for name, v in sorted(option_values().items())]
        elif key == "aliases":
            config = load()
            where = str(config.origins.get("aliases", config.path))
            rows += [(f"aliases.{name}", Value(target, "file", where))
                     for name, target in sorted(aliases().items())]
        else:
            rows.append((key, setting(key)))
    return rows


TEMPLATE = '''\
# chatcli configuration (chat config show lists what is in effect, and where from).
# Precedence, highest first: command-line flags, environment variables, this file, the
# model's own defaults. Uncomment and change what you need.

# The model `chat run` uses when none is named ($CHATCLI_MODEL).
# model = "smollm2:135m"

# The default system prompt ($CHATCLI_SYSTEM).
# system = "You are a concise assistant."

# Rendering: Markdown or plain text, word wrap, timings after each answer, hide reasoning.
# markdown = true
# wordwrap = true
# verbose = false
# hidethinking = false

# Record conversations in the log (CHATCLI_NOLOG=1 or --no-log turns it off).
# log = true

# Default engine options: any option of -o NAME=VALUE ($CHATCLI_OPTIONS="temperature=0.2").
[options]
# temperature = 0.7
# num_ctx = 4096
# stop = ["<|end|>"]

# Short names for models, for what you type: `chat run fast`, /model fast.
[aliases]
# fast = "qwen3:0.6b"

# chat serve: where it listens ($CHATCLI_HOST), which browser origins may call it
# ($CHATCLI_ORIGINS) besides this machine's own pages, and how many requests each model
# answers at once ($OLLAMA_NUM_PARALLEL; each holds num_ctx tokens of KV cache).
[server]
# host = "127.0.0.1:11434"
# origins = ["https://*.example.com"]
# parallel = 1
'''
