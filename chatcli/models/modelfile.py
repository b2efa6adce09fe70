"""Modelfiles (Ollama's recipe format) and ``chat create``.

    FROM llama3.2                 # a model name, or a path to a .gguf file
    PARAMETER temperature 0.2
    PARAMETER stop "<|im_end|>"
    SYSTEM \"\"\"You are terse.\"\"\"
    TEMPLATE \"\"\"...\"\"\"          # kept for display; chat formatting uses the GGUF's template
    MESSAGE user Is Toronto in Canada?
    MESSAGE assistant Yes.
    LICENSE \"\"\"...\"\"\"

A created model is a manifest in chatcli's store whose layers are the base model's, with the
Modelfile's lines replacing or adding to them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatcli.core import options as opts_mod
from chatcli.core.errors import ChatCliError
from chatcli.core.messages import ROLES
from chatcli.core.names import ModelName, looks_like_path, parse_digest, parse_name
from chatcli.models.store import MEDIA, Layer, Manifest, Store

INSTRUCTIONS = ("FROM", "PARAMETER", "SYSTEM", "TEMPLATE", "MESSAGE", "LICENSE", "ADAPTER")


class ModelfileError(ChatCliError):
    """A Modelfile that cannot be parsed or used."""


@dataclass
class Modelfile:
    base: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    directory: Path = field(default_factory=Path.cwd)


def _value(text: str, lines: list[str], index: int) -> tuple[str, int]:
    """A value: the rest of the line, "quoted", or a triple-quoted block; (value, next line)."""
    text = text.strip()
    if text.startswith('"""'):
        body = text[3:]
        if body.endswith('"""') and len(body) >= 3:
            return body[:-3], index + 1
        parts = [body]
        i = index + 1
        while i < len(lines):
            line = lines[i]
            if line.rstrip().endswith('"""'):
                parts.append(line.rstrip()[:-3])
                return "\n".join(parts), i + 1
            parts.append(line)
            i += 1
        raise ModelfileError(f'line {index + 1}: unterminated """ block')
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1], index + 1
    return text, index + 1


def parse_modelfile(text: str, directory: Path | None = None) -> Modelfile:
    """Parse a Modelfile; errors name the line."""
    mf = Modelfile(directory=directory or Path.cwd())
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            i += 1
            continue
        word, _, rest = line.partition(" ")
        op = word.upper()
        if op not in INSTRUCTIONS:
            raise ModelfileError(f"line {i + 1}: unknown instruction '{word}'")
        start = i
        raw_rest = lines[i].strip()[len(word):]
        if op == "PARAMETER":
            name, _, value = rest.strip().partition(" ")
            if not value.strip():
                raise ModelfileError(f"line {i + 1}: PARAMETER needs a name and a value")
            value, i = _value(value, lines, i)
            try:
                parsed = opts_mod.parse_value(name, json.dumps(value) if name == "stop" else value)
            except ChatCliError as e:
                raise ModelfileError(f"line {start + 1}: {e}") from None
            if name == "stop":
                mf.parameters.setdefault("stop", []).extend(parsed)
            else:
                mf.parameters[name] = parsed
            continue
        if op == "MESSAGE":
            role, _, content = rest.strip().partition(" ")
            if role not in ROLES:
                raise ModelfileError(f"line {i + 1}: MESSAGE role must be one of {ROLES}")
            content, i = _value(content, lines, i)
            mf.messages.append({"role": role, "content": content})
            continue
        value, i = _value(raw_rest, lines, i)
        if op == "FROM":
            mf.base = value.strip()
        elif op == "SYSTEM":
            mf.system = value
        elif op == "TEMPLATE":
            mf.template = value
        elif op == "LICENSE":
            mf.licenses.append(value)
        elif op == "ADAPTER":
            raise ModelfileError(f"line {start + 1}: ADAPTER (LoRA) is not supported yet")
    if not mf.base:
        raise ModelfileError("the Modelfile has no FROM line")
    return mf


def _text_layer(store: Store, kind: str, data: bytes) -> Layer:
    blob = store.add_blob_bytes(data)
    return Layer(media_type=MEDIA + kind, digest=blob.digest, size=blob.size)


def _import_file(store: Store, path: Path, kind: str) -> Layer:
    if path.parent == store.blobs:
        # Already one of this store's blobs (an upload to the server's /api/blobs): no copy.
        try:
            digest = "sha256:" + parse_digest(path.name)
        except ChatCliError:
            digest = ""
        if digest and store.has_blob(digest):
            return Layer(media_type=MEDIA + kind, digest=digest, size=path.stat().st_size)
    blob = store.add_blob_file(path)
    return Layer(media_type=MEDIA + kind, digest=blob.digest, size=blob.size)


def base_layers(store: Store, base: str, directory: Path) -> dict[str, Layer]:
    """The base model's layers in ``store`` by kind (importing files into the store if needed)."""
    from chatcli.models.resolve import resolve

    if looks_like_path(base) or (directory / base).suffix == ".gguf":
        path = Path(base).expanduser()
        path = path if path.is_absolute() else directory / path
        if not path.exists():
            raise ModelfileError(f"FROM {base}: no such file")
        from chatcli.models.gguf import check_model_file

        # A clear error now for what is not a model llama.cpp can load (and for a directory,
        # a FIFO or a device, which are never read).
        try:
            check_model_file(path)
        except ChatCliError as e:
            raise ModelfileError(f"FROM {base}: {e}") from None
        return {"model": _import_file(store, path, "model")}
    try:
        name = parse_name(base)
    except ChatCliError as e:
        raise ModelfileError(f"FROM {base}: {e}") from None
    manifest = store.read_manifest(name)
    if manifest is not None:
        return {layer.kind: layer for layer in manifest.layers}
    # Somewhere else (bundled, Ollama's store): copy what it brings into our store.
    resolved = resolve(base)
    layers = {"model": _import_file(store, resolved.path, "model")}
    if resolved.projector:
        layers["projector"] = _import_file(store, resolved.projector, "projector")
    if resolved.options:
        layers["params"] = _text_layer(store, "params", json.dumps(resolved.options).encode())
    for kind, text in (("system", resolved.system), ("template", resolved.template),
                       ("license", resolved.license)):
        if text:
            layers[kind] = _text_layer(store, kind, text.encode())
    if resolved.messages:
        layers["messages"] = _text_layer(store, "messages", json.dumps(resolved.messages).encode())
    return layers


def create(name: str, modelfile: Modelfile, store: Store | None = None) -> ModelName:
    """Register ``name`` in chatcli's store from a parsed Modelfile."""
    from chatcli.models.store import local_store

    store = store or local_store()
    target = parse_name(name)
    before = _blob_names(store)
    try:
        return _create(store, target, modelfile)
    except BaseException:
        _drop_new_blobs(store, before)
        raise


def _blob_names(store: Store) -> set[str]:
    try:
        return {p.name for p in store.blobs.iterdir()}
    except OSError:
        return set()


def _drop_new_blobs(store: Store, before: set[str]) -> None:
    """After a failed create, remove the blobs it added that no model uses."""
    if store.readonly:
        return
    added = _blob_names(store) - before
    if not added:
        return
    used = {store.blob_path(d).name for m in store.models() for d in m.manifest.all_digests()}
    for name in added - used:
        (store.blobs / name).unlink(missing_ok=True)


def _create(store: Store, target: ModelName, modelfile: Modelfile) -> ModelName:
    layers = base_layers(store, modelfile.base, modelfile.directory)
    if modelfile.parameters:
        params = {}
        if "params" in layers:
            params = json.loads(store.read_blob_text(layers["params"].digest))
        params.update(modelfile.parameters)
        layers["params"] = _text_layer(store, "params", json.dumps(params).encode())
    if modelfile.system is not None:
        layers["system"] = _text_layer(store, "system", modelfile.system.encode())
    if modelfile.template is not None:
        layers["template"] = _text_layer(store, "template", modelfile.template.encode())
    if modelfile.licenses:
        layers["license"] = _text_layer(store, "license", "\n\n".join(modelfile.licenses).encode())
    if modelfile.messages:
        layers["messages"] = _text_layer(store, "messages", json.dumps(modelfile.messages).encode())
    order = ["model", "projector", "params", "template", "system", "messages", "license"]
    ordered = [layers[k] for k in order if k in layers]
    ordered += [layer for k, layer in layers.items() if k not in order]
    store.write_manifest(target, Manifest(layers=ordered))
    return target


def render(modelfile: Modelfile, heading: str) -> str:
    """``modelfile`` as Modelfile text, after ``heading`` (comment lines)."""
    lines = [heading, f"FROM {modelfile.base}"]
    if modelfile.template:
        lines.append(f'TEMPLATE """{modelfile.template}"""')
    if modelfile.system:
        lines.append(f'SYSTEM """{modelfile.system}"""')
    for key, value in modelfile.parameters.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {json.dumps(v) if isinstance(v, str) else v}")
    for m in modelfile.messages:
        lines.append(f"MESSAGE {m.get('role')} {m.get('content')}")
    for text in modelfile.licenses:
        lines.append(f'LICENSE """{text}"""')
    return "\n".join(lines) + "\n"


def render_modelfile(resolved: Any) -> str:
    """A Modelfile that recreates ``resolved`` (for ``chat show --modelfile``)."""
    heading = ('# Modelfile generated by "chat show"\n# To build a new Modelfile based on this '
               f"one, replace the FROM line with:\n# FROM {resolved.name}\n")
    return render(Modelfile(base=str(resolved.path), parameters=dict(resolved.options),
                            system=resolved.system, template=resolved.template,
                            messages=list(resolved.messages),
                            licenses=[resolved.license] if resolved.license else []), heading)


MAX_MODELFILE = 16 << 20


def read_modelfile(path: Path) -> Modelfile:
    """Read and parse a Modelfile: a regular UTF-8 text file of at most 16 MB."""
    from chatcli.models.store import open_regular_file

    try:
        with open_regular_file(Path(path)) as f:
            data = f.read(MAX_MODELFILE + 1)
    except ChatCliError as e:
        raise ModelfileError(str(e)) from None
    except OSError as e:
        raise ModelfileError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_MODELFILE:
        raise ModelfileError(f"{path} is larger than {MAX_MODELFILE >> 20} MB; not a Modelfile")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelfileError(f"{path} is not UTF-8 text (byte {e.start})") from None
    return parse_modelfile(text, Path(path).resolve().parent)

