"""Facts about a model read from its GGUF header (no weights loaded), for ``show`` and /show."""

from __future__ import annotations

from typing import Any

from chatcli.models.gguf import GGUFInfo

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


def chat_template(info: GGUFInfo) -> str:
    """The GGUF's chat template, "" without one."""
    return str(info.get("tokenizer.chat_template") or "")


def is_embedding(info: GGUFInfo) -> bool:
    """Sentence-embedding models declare a pooling."""
    return bool(info.arch_value("pooling_type"))


def describe(info: GGUFInfo) -> dict[str, Any]:
    """The model's architecture, size, context, quantization and template. (Its capabilities
    are the request planner's judgement: ``chatcli.engine.output.plan.capabilities``.)"""
    return {
        "architecture": info.architecture,
        "parameters": human_count(info.parameter_count),
        "context length": info.arch_value("context_length", "?"),
        "embedding length": info.arch_value("embedding_length", "?"),
        "quantization": quantization(info),
        "gguf_license": str(info.get("general.license", "")),
        "chat_template": info.get("tokenizer.chat_template"),
    }


def model_lines(info: dict[str, Any]) -> list[str]:
    """The Model and Capabilities sections that ``chat show`` and /show info begin with."""
    lines = ["  Model"]
    for key in ("architecture", "parameters", "context length", "embedding length",
                "quantization"):
        lines.append(f"    {key:<20}{info[key]}")
    return lines + ["", "  Capabilities"] + [f"    {c}" for c in info["capabilities"]]


def file_lines(info: dict[str, Any]) -> list[str]:
    """The File section that ``chat show`` and /show info end with."""
    return ["", f"  File\n    {info['path']}"]


def parameter_lines(options: dict[str, Any]) -> list[str]:
    """A model's options as ``chat show`` prints them: ``name  value``, strings quoted."""
    return [f"{key:<15}{_quote(v)}" for key, value in options.items()
            for v in (value if isinstance(value, list) else [value])]


def show_text(info: dict[str, Any]) -> str:
    """``chat show``'s default block (as ``ollama show``'s): Model, Capabilities, Parameters,
    System, License, File; ``info`` is what a client's ``show`` returns."""
    lines = model_lines(info)
    if info["model_options"]:
        lines += ["", "  Parameters"] + [f"    {p}" for p in parameter_lines(info["model_options"])]
    if info["system"]:
        lines += ["", "  System"] + [f"    {line}" for line in info["system"].splitlines()[:6]]
    if info["license"]:
        lines += ["", "  License"] + [f"    {line}" for line in info["license"].splitlines()[:2]]
    return "\n".join(lines + file_lines(info))


def _quote(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)
