"""The crash guard: llama.cpp's optimized CPU kernels are tried in a child process first.

Some llama.cpp builds die with a signal on some CPUs (a native ``-march=native`` build on an
Intel Xeon with AMX hits ``Illegal instruction`` in the AMX matmul kernels that its "extra
buffer types" bring in for quantized weights). A signal cannot be caught in-process, so before
the first real use of a llama-cpp-python build on a CPU, chatcli loads the model in a child
process and runs a batched decode with the default buffer types. If the child dies by a signal,
chatcli loads models without extra buffer types (the safe configuration), says so on stderr in
one line, once, with the rebuild command that gets full speed back.

The verdict is cached in ``safemode.json`` in the cache directory, keyed by the llama-cpp-python
version, llama.cpp's system-info string, the CPU and the model's quantization (a model whose
weights have no repacked kernels says nothing about one that does), so the check costs nothing
after the first run. ``CHATCLI_SAFE_MODE=1`` forces the safe configuration, ``=0`` the default
one (no probe); ``chat info --probe`` runs the check again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatcli.engine.binding import LoadedModel

FORCE_ENV = "CHATCLI_SAFE_MODE"  # 1/on/safe: no extra buffer types; 0/off/full: the default
CACHE_ENV = "CHATCLI_PROBE_CACHE"  # the verdict file (the test suite shares one per run)
SIMULATE_ENV = "CHATCLI_TEST_PROBE_CRASH"  # test-only: the child kills itself with SIGILL in
# this configuration ("full", "safe" or "all")
PROBE_TIMEOUT = 600.0  # a very large model on a slow CPU still loads and decodes well within
PROBE_TOKENS = 128  # a batched decode: a question's worth of tokens reaches the tiled kernels

FULL, SAFE = "full", "safe"


@dataclass
class Verdict:
    """Which configuration to load models with, and why."""

    extra_bufts: bool
    source: str  # "probe", "cache", "forced", "inconclusive"
    detail: str
    probe_seconds: float | None = None
    when: str = ""

    @property
    def mode(self) -> str:
        return FULL if self.extra_bufts else SAFE

    def describe(self) -> str:
        name = "off (full speed)" if self.extra_bufts else "ON (no extra buffer types)"
        how = {"probe": "checked now", "cache": f"checked {self.when}".strip(),
               "forced": f"forced by {FORCE_ENV}", "inconclusive": "check inconclusive"}
        extra = f", probe took {self.probe_seconds:.1f} s" if self.probe_seconds else ""
        return f"{name}: {self.detail} ({how.get(self.source, self.source)}{extra})"


_memo: dict[str, Verdict] = {}


# -- facts that key the verdict ----------------------------------------------------------------


def cpu_facts() -> dict[str, str]:
    """The CPU's model name and feature flags (from /proc/cpuinfo where there is one)."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = value.strip()
                if model and flags:
                    break
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(), "flags": flags}


def build_facts() -> dict[str, str]:
    """llama-cpp-python's version and llama.cpp's system-info string (its CPU features)."""
    from chatcli.engine import binding

    return binding.build_facts()


def load_model(path: Path, n_gpu_layers: int) -> LoadedModel:
    """Load a model's weights behind the crash guard: llama.cpp's repacked-weight kernels
    only where a child process proved they do not kill us on this CPU."""
    from chatcli.engine import binding

    binding.check_gguf(path)  # first: the probe must never be run on a file llama.cpp refuses
    return binding.load_model(path, n_gpu_layers, extra_bufts=decide(path).extra_bufts)


def model_kind(path: Path) -> str:
    """The model's quantization (``general.file_type``, e.g. Q4_K_M). The header is the one
    ``backend.check_gguf`` has just read and remembered before every load: no second read."""
    from chatcli.core.errors import ChatCliError
    from chatcli.models.gguf import check_model_file
    from chatcli.models.modelinfo import quantization

    try:
        return quantization(check_model_file(path))
    except ChatCliError:  # an unreadable header is reported by the real load, not here
        return "unknown"


def fingerprint(path: Path) -> dict[str, str]:
    cpu = cpu_facts()
    return {**build_facts(), "cpu": cpu["model"],
            "cpu_flags": hashlib.sha256(cpu["flags"].encode()).hexdigest()[:16],
            "file_type": model_kind(path)}


def cache_key(facts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


# -- the verdict --------------------------------------------------------------------------------


def forced() -> Verdict | None:
    """The configuration ``CHATCLI_SAFE_MODE`` asks for, if it asks."""
    value = os.environ.get(FORCE_ENV, "").strip().lower()
    if value in ("1", "on", "yes", "true", SAFE):
        return Verdict(False, "forced", "no extra buffer types")
    if value in ("0", "off", "no", "false", FULL):
        return Verdict(True, "forced", "default buffer types, no check")
    return None


def decide(path: Path) -> Verdict:
    """How to load ``path`` on this build and CPU: probed once, then cached."""
    verdict = forced()
    if verdict is None:
        facts = fingerprint(path)
        key = cache_key(facts)
        verdict = _memo.get(key) or _read_cache().get(key) or _check(path, facts, key)
        _memo[key] = verdict
    if os.environ.get("CHATCLI_DEBUG"):
        print(f"chatcli: safe mode {verdict.describe()}", file=sys.stderr)
    return verdict


def recheck(path: Path) -> Verdict:
    """Run the check again for ``path`` now, whatever the cache says, and cache the result."""
    facts = fingerprint(path)
    return _check(path, facts, cache_key(facts))


def _check(path: Path, facts: dict[str, str], key: str) -> Verdict:
    verdict = probe(path)
    _memo[key] = verdict
    if verdict.source == "probe":
        _write_cache(key, facts, verdict)
        if not verdict.extra_bufts:
            _announce(verdict)
    return verdict


def probe(path: Path) -> Verdict:
    """Run the check now: the default configuration, then the safe one if that one died.

    Raises ModelLoadError when llama.cpp dies even in the safe configuration.
    """
    from chatcli.core.errors import ModelLoadError

    start = time.monotonic()
    died = _run_child(path, FULL)
    if died is None:
        return Verdict(True, "probe", "the default buffer types work on this CPU",
                       time.monotonic() - start, _today())
    if died == "inconclusive":
        return Verdict(True, "inconclusive", "the check could not run; default buffer types")
    died_safe = _run_child(path, SAFE)
    seconds = time.monotonic() - start
    if died_safe not in (None, "inconclusive"):
        raise ModelLoadError(
            f"llama.cpp dies with {died} on this CPU even without extra buffer types; "
            f"rebuild llama-cpp-python for this CPU: {rebuild_command()}"
        )
    return Verdict(False, "probe", f"the default buffer types died with {died} in a test run",
                   seconds, _today())


def _run_child(path: Path, mode: str) -> str | None:
    """None if a child decoding with ``mode`` exits cleanly, the signal's name if it is killed
    by one, "inconclusive" if it fails any other way (the real load reports that failure)."""
    env = dict(os.environ)
    env.pop("CHATCLI_DEBUG", None)
    cmd = [sys.executable, "-m", "chatcli.engine.safemode", str(path), mode]
    try:
        proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return "inconclusive"
    except OSError:
        return "inconclusive"
    if proc.returncode < 0:
        try:
            return signal.Signals(-proc.returncode).name
        except ValueError:
            return f"signal {-proc.returncode}"
    if proc.returncode != 0:
        if os.environ.get("CHATCLI_DEBUG"):
            sys.stderr.write(proc.stderr.decode("utf-8", "replace")[-2000:])
        return "inconclusive"
    return None


def _announce(verdict: Verdict) -> None:
    print(
        f"chatcli: llama.cpp's optimized CPU kernels crash on this CPU ({verdict.detail}); "
        f"using the safe configuration (slower on quantized models). For full speed, rebuild: "
        f"{rebuild_command()}",
        file=sys.stderr,
    )


def rebuild_command() -> str:
    """The pip command that rebuilds llama-cpp-python for this CPU without ``-march=native``
    (which is what brings in the AMX kernels), with the vector extensions the CPU has."""
    flags = set(cpu_facts()["flags"].split())
    wanted = [("avx", "AVX"), ("avx2", "AVX2"), ("fma", "FMA"), ("f16c", "F16C"),
              ("avx_vnni", "AVX_VNNI"), ("avx512f", "AVX512"), ("avx512vbmi", "AVX512_VBMI"),
              ("avx512_vnni", "AVX512_VNNI"), ("avx512_bf16", "AVX512_BF16")]
    args = ["-DGGML_NATIVE=OFF"] + [f"-DGGML_{name}=ON" for flag, name in wanted if flag in flags]
    try:
        from importlib.metadata import version

        pin = f"=={version('llama-cpp-python')}"
    except Exception:
        pin = ""
    return (f'CMAKE_ARGS="{" ".join(args)}" pip install --force-reinstall --no-cache-dir '
            f"'llama-cpp-python{pin}'")


# -- the cache ----------------------------------------------------------------------------------


def cache_file() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    from chatcli.core.paths import cache_dir

    return cache_dir() / "safemode.json"


def _read_all() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict):
        data = {}
    return {part: data[part] if isinstance(data.get(part), dict) else {}
            for part in ("verdicts",)}


def _read_cache() -> dict[str, Verdict]:
    out = {}
    for key, entry in _read_all()["verdicts"].items():
        try:
            v = entry["verdict"]
            out[key] = Verdict(bool(v["extra_bufts"]), "cache", str(v["detail"]),
                               v.get("probe_seconds"), str(v.get("when", "")))
        except (KeyError, TypeError):
            continue
    return out


def _write_cache(key: str, facts: dict[str, str], verdict: Verdict) -> None:
    from chatcli.core.fileio import atomic_write_text

    data = _read_all()
    data["verdicts"][key] = {"facts": facts, "verdict": asdict(verdict)}
    try:
        atomic_write_text(cache_file(), json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # an unwritable cache costs a probe next time, nothing else


def cached_verdicts() -> list[tuple[dict[str, str], Verdict]]:
    """Every cached verdict, for ``chat info``."""
    verdicts = _read_cache()
    return [(entry["facts"], verdicts[key]) for key, entry in _read_all()["verdicts"].items()
            if key in verdicts and isinstance(entry.get("facts"), dict)]


def _today() -> str:
    return time.strftime("%Y-%m-%d %H:%M")


# -- the child ----------------------------------------------------------------------------------


def _child(path: str, mode: str) -> int:
    """Load the model on the CPU in ``mode`` and decode a batch, then single tokens."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash here is expected: no core file
    from chatcli.engine import binding

    lc = binding.llama()
    loaded = binding.load_model(Path(path), 0, extra_bufts=mode == FULL)
    # One thread: an illegal instruction needs no more.
    ctx, batch = binding.new_context(loaded, n_ctx=512, n_batch=512, n_threads=1)
    if os.environ.get(SIMULATE_ENV) in (mode, "all"):
        os.kill(os.getpid(), signal.SIGILL)
    n_vocab = loaded.model.n_vocab()
    tokens = [(7 + 31 * i) % n_vocab for i in range(PROBE_TOKENS)]
    batch.set_batch(tokens, n_past=0, logits_all=False)
    if lc.llama_decode(ctx.ctx, batch.batch) != 0:
        return 3
    for i in range(2):
        batch.set_batch([tokens[i]], n_past=PROBE_TOKENS + i, logits_all=True)
        if lc.llama_decode(ctx.ctx, batch.batch) != 0:
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
