"""Facts about a loaded model, for ``/show`` (and later ``chat show`` and ``/api/show``)."""

from __future__ import annotations

from typing import Any

# llama.cpp's enum llama_ftype (general.file_type in a GGUF).
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}


def human_count(n: int) -> str:
    """134515008 -> '134.52M' (Ollama's parameter-size style)."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def quantization(metadata: dict[str, str]) -> str:
    raw = metadata.get("general.file_type")
    try:
        return FILE_TYPES.get(int(raw), f"type {raw}") if raw is not None else "unknown"
    except ValueError:
        return str(raw)


def capabilities(metadata: dict[str, str]) -> list[str]:
    """What the model can do, judged from its template (as Ollama does)."""
    template = metadata.get("tokenizer.chat_template", "")
    caps = ["completion"]
    if "tools" in template:
        caps.append("tools")
    if "<think>" in template or "enable_thinking" in template or "reasoning" in template:
        caps.append("thinking")
    return caps


def describe(engine: Any) -> dict[str, Any]:
    """The model's architecture, size, context and quantization."""
    meta = engine.metadata
    arch = meta.get("general.architecture", "unknown")
    return {
        "architecture": arch,
        "parameters": human_count(int(engine.n_params)),
        "context length": meta.get(f"{arch}.context_length", str(engine.n_ctx_train)),
        "embedding length": meta.get(f"{arch}.embedding_length", "?"),
        "quantization": quantization(meta),
        "capabilities": capabilities(meta),
        "license": meta.get("general.license", ""),
    }
