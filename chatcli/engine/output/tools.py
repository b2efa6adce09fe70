"""Tool descriptions for ``chat(tools=...)``: JSON function schemas, or plain Python functions.

A tool reaches the chat template as ``{"type": "function", "function": {"name", "description",
"parameters"}}``, the shape Ollama and the model publishers' templates use. A Python function is
described from its signature (annotations become JSON schema types) and its Google-style
docstring (the text before the sections is the description, ``Args:`` describes parameters),
as the official ``ollama`` client does.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chatcli.core.errors import RequestError

_SIMPLE_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    tuple: "array",
    set: "array",
    frozenset: "array",
    dict: "object",
    type(None): "null",
}
# Annotations that stayed strings (get_type_hints could not resolve them).
_SIMPLE_NAMES = {t.__name__: name for t, name in _SIMPLE_TYPES.items() if t is not type(None)}
_SIMPLE_NAMES["None"] = "null"

_SECTION = re.compile(r"^([A-Z][A-Za-z ]*):\s*$")
_ARG_SECTIONS = {"Args", "Arguments", "Parameters", "Params"}
_ARG_LINE = re.compile(r"^\*{0,2}(\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")


def normalize_tools(tools: Sequence[Any] | None) -> list[dict[str, Any]]:
    """Check ``tools`` and return them as ``{"type": "function", "function": {...}}`` dicts.

    Each item is a JSON function description (with or without the ``{"type": "function",
    "function": ...}`` wrapper) or a Python callable. Raises ``RequestError`` on anything else,
    on a missing name, on parameters that are not an object schema and on duplicate names.
    Already-normalized tools come back unchanged.
    """
    if tools is None:
        return []
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise RequestError("tools must be a list of functions or function descriptions")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if isinstance(tool, Mapping):
            function = _from_description(tool, i)
        elif callable(tool):
            function = _from_callable(tool, i)
        else:
            raise RequestError(
                f"tool {i} is a {type(tool).__name__}; give a function or a "
                "{'type': 'function', 'function': {...}} description"
            )
        if function["name"] in seen:
            raise RequestError(f"two tools are named {function['name']!r}; names must be unique")
        seen.add(function["name"])
        out.append({"type": "function", "function": function})
    return out


def tool_names(tools: Sequence[Any] | None) -> set[str]:
    """The names of ``tools`` (any form ``normalize_tools`` accepts)."""
    return {tool["function"]["name"] for tool in normalize_tools(tools)}


# -- JSON descriptions -------------------------------------------------------------------------


def _from_description(tool: Mapping[str, Any], i: int) -> dict[str, Any]:
    if "function" in tool:
        kind = tool.get("type", "function")
        if kind != "function":
            raise RequestError(f"tool {i} has type {kind!r}; only 'function' tools exist")
        function = tool["function"]
        if not isinstance(function, Mapping):
            raise RequestError(f"tool {i}: 'function' must be an object")
    else:
        function = tool
    name = function.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RequestError(f"tool {i} has no name: give function.name as a non-empty string")
    description = function.get("description")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise RequestError(f"tool {name!r}: description must be a string")
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    _check_parameters(parameters, name)
    clean = {key: value for key, value in function.items() if key != "type"}
    clean.update(name=name, description=description, parameters=parameters)
    return clean


def _check_parameters(parameters: Any, name: str) -> None:
    if not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object":
        raise RequestError(
            f"tool {name!r}: parameters must be a JSON schema object "
            "({'type': 'object', 'properties': {...}})"
        )
    properties = parameters.get("properties", {})
    if not isinstance(properties, Mapping):
        raise RequestError(f"tool {name!r}: parameters.properties must be an object")
    required = parameters.get("required", [])
    if not isinstance(required, Sequence) or isinstance(required, str) or not all(
        isinstance(r, str) for r in required
    ):
        raise RequestError(f"tool {name!r}: parameters.required must be a list of names")


# -- Python functions --------------------------------------------------------------------------


def _from_callable(fn: Callable[..., Any], i: int) -> dict[str, Any]:
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise RequestError(
            f"tool {i} ({fn!r}) has no usable name; pass a function defined with def"
        )
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        raise RequestError(f"tool {name!r}: its signature cannot be read") from None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # one unresolvable name: resolve the annotations one by one below
        hints = {}
    description, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name) or _resolve(param.annotation, fn)
        optional = _is_optional(annotation)
        schema = _schema_for(annotation)
        if param.name in arg_docs:
            schema["description"] = arg_docs[param.name]
        properties[param.name] = schema
        if param.default is param.empty and not optional:
            required.append(param.name)
    return {
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required},
    }


def _resolve(annotation: Any, fn: Callable[..., Any]) -> Any:
    """A string annotation (``from __future__ import annotations``) evaluated where ``fn`` lives,
    as ``typing.get_type_hints`` does; left a string when a name in it is unknown."""
    if not isinstance(annotation, str):
        return annotation
    namespace = getattr(inspect.unwrap(fn), "__globals__", {})
    try:
        return eval(annotation, dict(namespace))  # noqa: S307 - the caller's own annotation
    except Exception:
        return annotation


def _is_optional(annotation: Any) -> bool:
    return _is_union(annotation) and type(None) in typing.get_args(annotation)


def _is_union(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return origin is typing.Union or origin is types.UnionType


def _schema_for(annotation: Any) -> dict[str, Any]:
    """The JSON schema of one parameter annotation (no annotation means a string)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {"type": "string"}
    if isinstance(annotation, str):
        return {"type": _SIMPLE_NAMES.get(annotation.strip(" '\""), "string")}
    if annotation in _SIMPLE_TYPES:
        return {"type": _SIMPLE_TYPES[annotation]}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _enum_schema([member.value for member in annotation])
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _schema_for(args[0])
    if origin is typing.Literal:
        return _enum_schema(list(args))
    if _is_union(annotation):
        choices = [_schema_for(a) for a in args if a is not type(None)]
        return choices[0] if len(choices) == 1 else {"anyOf": choices}
    if origin in (list, set, frozenset, Sequence, typing.Sequence) or origin is tuple:
        schema: dict[str, Any] = {"type": "array"}
        items = [a for a in args if a is not Ellipsis]
        if len(items) == 1 or (items and all(a == items[0] for a in items)):
            schema["items"] = _schema_for(items[0])
        return schema
    if origin in (dict, Mapping, typing.Mapping):
        return {"type": "object"}
    return {"type": "string"}


def _enum_schema(values: list[Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"enum": values}
    kinds = {_SIMPLE_TYPES.get(type(v)) for v in values}
    if len(kinds) == 1 and None not in kinds:
        schema = {"type": kinds.pop(), **schema}
    return schema


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description, {parameter: description})."""
    intro: list[str] = []
    args: dict[str, list[str]] = {}
    section: str | None = None
    current: str | None = None
    entry_indent = 0
    for line in doc.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        header = _SECTION.match(stripped) if indent == 0 else None
        if header:
            section, current = header.group(1).strip(), None
            continue
        if section is None:
            intro.append(stripped)
        elif section in _ARG_SECTIONS and stripped:
            match = _ARG_LINE.match(stripped)
            if match and (current is None or indent <= entry_indent):
                current, entry_indent = match.group(1), indent
                args[current] = [match.group(3).strip()]
            elif current is not None:
                args[current].append(stripped)
    paragraphs = " ".join(line or "\n\n" for line in intro).split("\n\n")
    description = "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
    return description, {name: " ".join(" ".join(parts).split()) for name, parts in args.items()}
