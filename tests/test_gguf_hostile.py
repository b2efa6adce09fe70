"""Hostile and careless model files: a clear ModelLoadError, never a crash, a hang or gigabytes.

llama.cpp aborts the whole process (GGML_ASSERT -> SIGABRT) on some malformed headers instead
of failing the load; chatcli checks those in Python first (gguf.check_model_file). Crashes are
only ever provoked in child processes.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tiny_gguf import drop_kv, patch_tensor_info, set_kv, write_tiny_llama

from chatcli.core.errors import ChatCliError, ModelLoadError
from chatcli.models.gguf import check_model_file, read_gguf

U32, I32, STR, ARR = 4, 5, 8, 9


def _vt():
    import gguf

    return gguf.GGUFValueType


def kv(key, value, kind=U32, sub=None):
    """An edit for write_tiny_llama that sets one metadata value."""
    return lambda w: set_kv(w, key, value, _vt()(kind), None if sub is None else _vt()(sub))


def tensors(name, **fields):
    return ("patch", name, fields)


def gstr(s: bytes | str) -> bytes:
    s = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(s)) + s


def no_tensors(w):
    w.tensors[0].clear()


def duplicate_token(w):
    value = w.kv_data[0]["tokenizer.ggml.tokens"].value
    value[10] = value[11]


def no_feed_forward(w):
    """feed_forward_length 0 with tensors shaped to match, which passes llama.cpp's shape checks."""
    import numpy as np

    set_kv(w, "llama.feed_forward_length", 0, _vt().UINT32)
    for i in range(2):
        for name, shape in (("ffn_gate", (0, 32)), ("ffn_up", (0, 32)), ("ffn_down", (32, 0))):
            del w.tensors[0][f"blk.{i}.{name}.weight"]
            w.add_tensor(f"blk.{i}.{name}.weight", np.zeros(shape, dtype=np.float32))


def one_token_vocabulary(w):
    """A vocabulary of one marker token, which empty_vocabulary then removes."""
    set_kv(w, "tokenizer.ggml.tokens", ["@@EMPTY@@"], _vt().ARRAY, _vt().STRING)
    set_kv(w, "tokenizer.ggml.scores", [0.0], _vt().ARRAY, _vt().FLOAT32)
    set_kv(w, "tokenizer.ggml.token_type", [1], _vt().ARRAY, _vt().INT32)
    set_kv(w, "general.description", "#" * 64, _vt().STRING)


def empty_vocabulary(path: Path) -> None:
    """Empty the token list (the gguf package refuses to write an empty array), keeping every
    offset in place by growing a description by the bytes removed."""
    data = path.read_bytes()
    one = struct.pack("<IQ", STR, 1) + gstr("@@EMPTY@@")
    desc = gstr("#" * 64)
    grown = gstr("#" * (64 + len(one) - 12))
    assert data.count(one) == 1 and data.count(desc) == 1
    data = data.replace(one, struct.pack("<IQ", STR, 0)).replace(desc, grown)
    path.write_bytes(data)


# name -> (edit or patch, the field the message must name)
VARIATIONS = {
    "block_count 0": (kv("llama.block_count", 0), "llama.block_count"),
    "block_count absurd": (kv("llama.block_count", 100_000), "llama.block_count"),
    "block_count missing": (lambda w: drop_kv(w, "llama.block_count"), "llama.block_count"),
    "embedding_length 0": (kv("llama.embedding_length", 0), "llama.embedding_length"),
    "context_length 0": (kv("llama.context_length", 0), "llama.context_length"),
    "head_count 0": (kv("llama.attention.head_count", 0), "llama.attention.head_count"),
    "head_count absurd": (kv("llama.attention.head_count", 1 << 30),
                          "llama.attention.head_count"),
    "head_count_kv 0": (kv("llama.attention.head_count_kv", 0), "llama.attention.head_count_kv"),
    "head_count_kv not dividing": (kv("llama.attention.head_count_kv", 3),
                                   "llama.attention.head_count_kv"),
    "key_length 0": (kv("llama.attention.key_length", 0), "llama.attention.key_length"),
    "feed_forward_length 0": (kv("llama.feed_forward_length", 0), "llama.feed_forward_length"),
    "feed_forward_length 0, tensors to match": (no_feed_forward, "zero dimension"),
    "expert_count absurd": (kv("llama.expert_count", 5000), "llama.expert_count"),
    "experts used without experts": (kv("llama.expert_used_count", 2),
                                     "llama.expert_used_count"),
    "nextn layers beyond block_count": (kv("llama.nextn_predict_layers", 9),
                                        "llama.nextn_predict_layers"),
    "unknown rope scaling": (kv("llama.rope.scaling.type", "sideways", STR),
                             "llama.rope.scaling.type"),
    "architecture missing": (lambda w: drop_kv(w, "general.architecture"),
                             "general.architecture"),
    "vocabulary empty": (("edit+bytes", one_token_vocabulary, empty_vocabulary),
                         "tokenizer.ggml.tokens"),
    "vocabulary duplicate": (duplicate_token, "tokenizer.ggml.tokens"),
    "alignment not a power of two": (kv("general.alignment", 48), "general.alignment"),
    "tensor count 0": (no_tensors, "tensor count is 0"),
    "tensor dim 0": (tensors("blk.0.attn_q.weight", dims=(32, 0)), "blk.0.attn_q.weight"),
    "tensor dims absurd": (tensors("blk.0.attn_q.weight", dims=(1 << 40, 32)),
                           "blk.0.attn_q.weight"),
    "tensor n_dims 5": (tensors("output_norm.weight", n_dims=5), "output_norm.weight"),
    "tensor type unknown": (tensors("output_norm.weight", ggml_type=99), "output_norm.weight"),
    "tensor type removed": (tensors("output_norm.weight", ggml_type=4), "output_norm.weight"),
    "tensor offset past the end": (tensors("output.weight", offset=1 << 40), "output.weight"),
    "tensor offset unaligned": (tensors("output.weight", offset=4), "output.weight"),
}

# The variations that kill a process which hands them to llama.cpp unchecked (proved below).
ABORTS = ["block_count 0", "block_count absurd", "expert_count absurd",
          "experts used without experts", "nextn layers beyond block_count",
          "unknown rope scaling", "vocabulary duplicate", "feed_forward_length 0, tensors to match"]


def make(tmp_path: Path, name: str) -> Path:
    change, _ = VARIATIONS[name]
    path = tmp_path / (name.replace(" ", "_") + ".gguf")
    if isinstance(change, tuple) and change[0] == "patch":
        write_tiny_llama(path)
        patch_tensor_info(path, change[1], **change[2])
    elif isinstance(change, tuple):
        write_tiny_llama(path, edit=change[1])
        change[2](path)
    else:
        write_tiny_llama(path, edit=change)
    return path


@pytest.mark.parametrize("name", sorted(VARIATIONS))
def test_each_bad_header_is_one_clear_model_load_error(tmp_path, name):
    path = make(tmp_path, name)
    with pytest.raises(ModelLoadError) as caught:
        check_model_file(path)
    message = str(caught.value)
    assert VARIATIONS[name][1] in message and "\n" not in message


def test_a_good_model_passes(tiny_gguf, bundled_path):
    for path in (tiny_gguf, bundled_path):
        info = check_model_file(path)
        assert info.tensors and info.duplicate_token is None


# Loads each file the way backend.load_model and new_context do, with or without check_gguf
# first (load_model's own extras, such as the CPU probe, are beside the point here).
_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from chatcli.engine import binding as backend
    for path in sys.argv[2:]:
        print(json.dumps([path, "loading"]), flush=True)
        try:
            if sys.argv[1] == "checked":
                backend.check_gguf(Path(path))
            lc = backend.llama()
            from llama_cpp import _internals
            params = lc.llama_model_default_params()
            params.n_gpu_layers = 0
            model = _internals.LlamaModel(path_model=path, params=params, verbose=False)
            cparams = lc.llama_context_default_params()
            cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = 64, 8, 8
            cparams.n_threads = cparams.n_threads_batch = 1
            ctx = _internals.LlamaContext(model=model, params=cparams, verbose=False)
            result = "loaded"
        except Exception as e:
            result = f"{type(e).__name__}: {e}"
        print(json.dumps([path, result]), flush=True)
""")


def run_child(mode: str, paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHILD, mode, *map(str, paths)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ABORTS)
def test_llama_cpp_alone_dies_on_it(tmp_path, name):
    """Why the checks exist: unchecked, each of these kills the process by a signal."""
    p = run_child("unchecked", [make(tmp_path, name)])
    assert p.returncode < 0, (p.returncode, p.stdout[-500:], p.stderr[-500:])
    assert -p.returncode in (signal.SIGABRT, signal.SIGSEGV, signal.SIGFPE, signal.SIGBUS)


def test_with_the_checks_every_variation_is_a_model_load_error(tmp_path):
    paths = [make(tmp_path, name) for name in sorted(VARIATIONS)]
    p = run_child("checked", paths)
    assert p.returncode == 0, (p.returncode, p.stdout[-800:], p.stderr[-800:])
    results = dict(json.loads(line) for line in p.stdout.splitlines())
    for path in paths:
        assert results[str(path)].startswith("ModelLoadError: "), (path.name, results[str(path)])


# --- the header reader: bounded memory and time ----------------------------------------------


def raw_gguf(kvs: bytes = b"", n_kv: int = 0, n_tensors: int = 0, tail: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kvs + tail


def nested(depth: int) -> bytes:
    body = struct.pack("<IQ", U32, 1) + struct.pack("<I", 7)
    for _ in range(depth):
        body = struct.pack("<IQ", ARR, 1) + body
    return gstr("deep") + struct.pack("<I", ARR) + body


HOSTILE_HEADERS = {
    "huge string length": raw_gguf(gstr("k") + struct.pack("<IQ", STR, 1 << 62), 1),
    "huge key length": raw_gguf(struct.pack("<Q", 1 << 40) + b"x" * 64, 1),
    "huge array length": raw_gguf(gstr("a") + struct.pack("<IIQ", ARR, U32, 1 << 60), 1),
    "huge string array": raw_gguf(gstr("a") + struct.pack("<IIQ", ARR, STR, 1 << 40), 1),
    "string array of huge strings": raw_gguf(
        gstr("a") + struct.pack("<IIQ", ARR, STR, 100) + struct.pack("<Q", 1 << 50) * 100, 1),
    "deeply nested arrays": raw_gguf(nested(100_000), 1),
    "bad value type": raw_gguf(gstr("k") + struct.pack("<I", 77) + b"\0" * 64, 1),
    "bad array item type": raw_gguf(gstr("k") + struct.pack("<IIQ", ARR, 200, 3), 1),
    "huge key count": raw_gguf(b"", 1 << 62),
    "huge tensor count": raw_gguf(b"", 0, 1 << 62),
    "huge n_dims": raw_gguf(b"", 0, 1, gstr("t") + struct.pack("<I", 1 << 31) + b"\0" * 64),
    "long tensor name": raw_gguf(b"", 0, 1, struct.pack("<Q", 1 << 33) + b"x" * 64),
    "truncated": raw_gguf(gstr("general.name") + struct.pack("<IQ", STR, 50) + b"abc", 1),
    "empty key": raw_gguf(gstr("") + struct.pack("<II", U32, 1), 1),
    "duplicate key": raw_gguf((gstr("k") + struct.pack("<II", U32, 1)) * 2, 2),
    "header only": raw_gguf()[:10],
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HEADERS))
def test_hostile_header_is_a_model_load_error(tmp_path, name):
    path = tmp_path / "bad.gguf"
    path.write_bytes(HOSTILE_HEADERS[name])
    with pytest.raises(ModelLoadError) as caught:
        read_gguf(path)
    assert "\n" not in str(caught.value)


_MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    from chatcli.models.gguf import read_gguf
    from chatcli.core.errors import ChatCliError
    out = {}
    for path in sys.argv[1:]:
        start = time.perf_counter()
        try:
            read_gguf(path)
            result = "ok"
        except ChatCliError as e:
            result = "error"
        out[path] = [result, time.perf_counter() - start]
    out["maxrss_kb"] = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])
    print(json.dumps(out))
""")


def test_hostile_headers_cost_little_memory_and_time(tmp_path):
    paths = []
    for i, data in enumerate(HOSTILE_HEADERS.values()):
        paths.append(tmp_path / f"h{i}.gguf")
        paths[-1].write_bytes(data)
    # A file whose header claims 4 million empty strings is real, not a lie: reading it must
    # still take bounded time and memory.
    many = tmp_path / "many.gguf"
    many.write_bytes(raw_gguf(gstr("a") + struct.pack("<IIQ", ARR, STR, 4_000_000)
                              + b"\0" * 8 * 4_000_000, 1))
    paths.append(many)
    baseline = subprocess.run([sys.executable, "-c", _MEASURE], capture_output=True, text=True,
                              timeout=120)
    p = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, paths)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-800:]
    out = json.loads(p.stdout)
    base_kb = json.loads(baseline.stdout)["maxrss_kb"]
    assert all(out[str(path)][0] == "error" for path in paths[:-1])
    # The 32 MB file itself is read in 1 MB chunks; everything else is small.
    assert out["maxrss_kb"] - base_kb < 48 * 1024, (out["maxrss_kb"], base_kb)
    assert max(t for key, (_, t) in ((k, v) for k, v in out.items() if k != "maxrss_kb")) < 20


def test_chat_show_on_a_hostile_header_is_one_line(cli_env, tmp_path):
    path = tmp_path / "deep.gguf"
    path.write_bytes(HOSTILE_HEADERS["deeply nested arrays"])
    p = subprocess.run([sys.executable, "-m", "chatcli", "show", str(path)], env=cli_env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert p.stderr.startswith("Error: ") and p.stderr.strip().count("\n") == 0, p.stderr
    assert "unexpected" not in p.stderr


# --- Modelfile FROM a special file -----------------------------------------------------------


def special_files(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    directory = tmp_path / "dir.gguf"
    directory.mkdir()
    out = {"/proc/self/mem": Path("/proc/self/mem"), "/dev/zero": Path("/dev/zero"),
           "fifo": fifo, "directory": directory}
    return {k: v for k, v in out.items() if v.exists()}


def test_create_from_special_files_is_a_clear_error_and_leaves_no_blob(tmp_path):
    from chatcli.core.names import parse_name
    from chatcli.models.modelfile import create, parse_modelfile
    from chatcli.models.store import local_store

    store = local_store()
    for label, path in special_files(tmp_path).items():
        start = time.monotonic()
        with pytest.raises(ChatCliError) as caught:
            create("special", parse_modelfile(f"FROM {path}\n"), store)
        assert time.monotonic() - start < 10, label
        assert str(path) in str(caught.value) and "\n" not in str(caught.value), label
        blobs = list(store.blobs.iterdir()) if store.blobs.is_dir() else []
        assert blobs == [], (label, blobs)
        assert store.read_manifest(parse_name("special")) is None


def test_chat_create_from_proc_self_mem_is_one_line(cli_env, tmp_path):
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM /proc/self/mem\n")
    p = subprocess.run([sys.executable, "-m", "chatcli", "create", "x", "-f", str(mf)],
                       env=cli_env, capture_output=True, text=True, timeout=120)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 1 and last.startswith("Error: "), p.stderr
    assert "unexpected" not in p.stderr and "/proc/self/mem" in last


def test_add_blob_file_refuses_special_files_and_cleans_up(tmp_path):
    from chatcli.models.store import StoreError, local_store

    store = local_store()
    for label, path in special_files(tmp_path).items():
        with pytest.raises(StoreError):
            store.add_blob_file(path)
        leftovers = list(store.blobs.iterdir()) if store.blobs.is_dir() else []
        assert leftovers == [], label


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_model_file_is_a_clear_error(tmp_path, tiny_gguf):
    path = tmp_path / "locked.gguf"
    path.write_bytes(tiny_gguf.read_bytes())
    path.chmod(0)
    with pytest.raises(ModelLoadError, match="cannot read"):
        check_model_file(path)


def test_modelfile_that_is_not_text_is_a_clear_error(tmp_path):
    from chatcli.models.modelfile import ModelfileError, read_modelfile

    mf = tmp_path / "Modelfile"
    mf.write_bytes(b"FROM x\n\xff\xfe")
    with pytest.raises(ModelfileError, match="UTF-8"):
        read_modelfile(mf)
    with pytest.raises(ModelfileError, match="not a regular file"):
        read_modelfile(Path("/dev/zero"))


def test_chat_run_on_block_count_0_is_one_line_not_a_crash(cli_env, tmp_path):
    path = make(tmp_path, "block_count 0")
    p = subprocess.run([sys.executable, "-m", "chatcli", "run", str(path), "hi"], env=cli_env,
                       input="", capture_output=True, text=True, timeout=180)
    assert p.returncode == 1, (p.returncode, p.stderr[-500:])
    assert p.stderr.startswith("Error: ") and p.stderr.strip().count("\n") == 0, p.stderr
    assert "llama.block_count is 0" in p.stderr
