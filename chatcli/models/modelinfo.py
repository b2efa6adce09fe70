"""Facts about a model read from its GGUF header (no weights loaded), for ``show`` and /show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chatcli.models.gguf import GGUFInfo, read_gguf

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


def quantization(info: GGUFInfo) -> str:
    raw = info.get("general.file_type")
    return FILE_TYPES.get(raw, f"type {raw}") if isinstance(raw, int) else "unknown"


def capabilities(info: GGUFInfo, projector: Path | None = None) -> list[str]:
    """What the model can do, judged from its template and files (as Ollama does)."""
    template = str(info.get("tokenizer.chat_template", ""))
    caps = ["completion"]
    if info.arch_value("pooling_type"):  # sentence-embedding models declare a pooling
        caps = ["embedding"]
    if "tools" in template:
        caps.append("tools")
    if "<think>" in template or "enable_thinking" in template or "reasoning_content" in template:
        caps.append("thinking")
    if projector is not None:
        caps.append("vision")
    return caps


def describe(path: Path, projector: Path | None = None) -> dict[str, Any]:
    """The model's architecture, size, context, quantization, template and capabilities."""
    info = read_gguf(path)
    return {
        "architecture": info.architecture,
        "parameters": human_count(info.parameter_count),
        "context length": info.arch_value("context_length", "?"),
        "embedding length": info.arch_value("embedding_length", "?"),
        "quantization": quantization(info),
        "capabilities": capabilities(info, projector),
        "gguf_license": str(info.get("general.license", "")),
        "chat_template": info.get("tokenizer.chat_template"),
    }
