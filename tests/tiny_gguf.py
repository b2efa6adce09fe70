"""Tiny random-weight llama GGUF files, written at test time with the ``gguf`` package.

They load in milliseconds and let tests choose any chat template (including hostile ones) and
edge cases; what they say is noise, so behaviour is tested on the real bundled model instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
WORDS = ["▁hello", "▁world", "▁the", "▁a", "▁is", "▁of", "▁to", "▁and", "▁user", "▁assistant"]


def write_tiny_llama(
    path: Path,
    *,
    chat_template: str | None = None,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 4,
    n_ff: int = 64,
    context_length: int = 512,
    seed: int = 0,
    pooling_type: int | None = None,
    edit: Callable[[Any], None] | None = None,
) -> Path:
    """Write a llama-architecture GGUF with an SPM byte-fallback vocabulary (~270 tokens).

    ``pooling_type`` (gguf.PoolingType's values: 1 mean, 2 cls, 3 last) declares a sentence
    embedding model, as ``llama.pooling_type`` in the header. ``edit`` gets the GGUFWriter just
    before it writes, to change what a test needs (see ``set_kv``, ``drop_kv``).
    """
    import gguf

    rng = np.random.default_rng(seed)
    tokens = list(SPECIALS)
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    tokens += ["▁"] + WORDS + list("abcdefghijklmnopqrstuvwxyz")
    types += [gguf.TokenType.NORMAL] * (1 + len(WORDS) + 26)
    scores = [0.0] * len(SPECIALS) + [0.0] * 256 + [-float(i) for i in range(len(tokens) - 261)]
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    if pooling_type is not None:
        w.add_pooling_type(gguf.PoolingType(pooling_type))

    def t(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w.add_tensor("token_embd.weight", t(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", t(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", t(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", t(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", t(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", t(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", t(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", t(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", t(n_embd, n_ff))
    if edit is not None:
        edit(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- hostile variations (tests/test_gguf_hostile.py) -------------------------------------------


def set_kv(writer, key: str, value, value_type, sub_type=None) -> None:
    """Replace (or add) one metadata value in a GGUFWriter before it writes the header."""
    import gguf

    writer.kv_data[0][key] = gguf.GGUFValue(value, value_type, sub_type)


def drop_kv(writer, key: str) -> None:
    """Remove one metadata value from a GGUFWriter before it writes the header."""
    writer.kv_data[0].pop(key, None)


def patch_tensor_info(
    path: Path,
    name: str,
    *,
    n_dims: int | None = None,
    dims: tuple[int, ...] | None = None,
    ggml_type: int | None = None,
    offset: int | None = None,
) -> Path:
    """Overwrite fields of one tensor's description in a written GGUF, in place.

    ``dims`` must have as many entries as the tensor has; ``n_dims`` changes only the count
    (the bytes after it are then misread, as a reader of a corrupt file would).
    """
    import struct

    data = bytearray(Path(path).read_bytes())
    encoded = name.encode()
    at = data.index(struct.pack("<Q", len(encoded)) + encoded) + 8 + len(encoded)
    old_dims = struct.unpack_from("<I", data, at)[0]
    if n_dims is not None:
        struct.pack_into("<I", data, at, n_dims)
    if dims is not None:
        assert len(dims) == old_dims, "dims must keep the tensor's number of dimensions"
        struct.pack_into(f"<{old_dims}Q", data, at + 4, *dims)
    after = at + 4 + 8 * old_dims
    if ggml_type is not None:
        struct.pack_into("<I", data, after, ggml_type)
    if offset is not None:
        struct.pack_into("<Q", data, after + 4, offset)
    Path(path).write_bytes(bytes(data))
    return Path(path)
