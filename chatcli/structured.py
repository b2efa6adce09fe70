"""``format``: JSON mode and JSON-schema answers, enforced by a llama.cpp grammar.

``format="json"`` constrains sampling to a JSON object; ``format=<schema>`` to that schema,
through llama-cpp-python's schema-to-GBNF converter. The converter silently drops what a grammar
cannot express (numeric bounds, for one), so schemas are checked first: such a keyword is a clear
error naming where it is, never a constraint quietly ignored.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import NotSupportedError, RequestError

# A JSON object, whitespace bounded so a model cannot pad forever (llama.cpp's json.gbnf).
JSON_OBJECT_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws ::= | " " | "\n" [ \t]{0,20}
"""

UNSUPPORTED = {
    "minimum": "numeric bounds", "maximum": "numeric bounds",
    "exclusiveMinimum": "numeric bounds", "exclusiveMaximum": "numeric bounds",
    "multipleOf": "multipleOf", "uniqueItems": "uniqueItems", "contains": "contains",
    "not": "not", "if": "if/then/else", "then": "if/then/else", "else": "if/then/else",
    "patternProperties": "patternProperties", "propertyNames": "propertyNames",
    "dependentRequired": "dependentRequired", "dependentSchemas": "dependentSchemas",
    "minProperties": "minProperties", "maxProperties": "maxProperties",
    "unevaluatedProperties": "unevaluatedProperties", "unevaluatedItems": "unevaluatedItems",
}
FORMATS = {"date", "time", "date-time"}
MAX_DEPTH = 32
MAX_GRAMMAR = 256 * 1024  # characters of GBNF


class StructuredOutputError(NotSupportedError):
    """A format the grammar engine cannot enforce."""


def grammar_for(format: Any) -> str | None:
    """The GBNF grammar for an Ollama ``format`` value (None: free-form)."""
    if format is None or format == "":
        return None
    if format == "json":
        return JSON_OBJECT_GBNF
    if isinstance(format, str):
        try:
            format = json.loads(format)
        except json.JSONDecodeError:
            raise RequestError(
                f"format must be \"json\" or a JSON schema object, not {format!r}"
            ) from None
    if not isinstance(format, dict):
        raise RequestError("format must be \"json\" or a JSON schema object")
    check_schema(format)
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = json_schema_to_gbnf(json.dumps(format))
    except RecursionError:
        raise StructuredOutputError("the format schema is too deeply nested") from None
    except Exception as e:  # the converter asserts and raises on what it cannot handle
        raise StructuredOutputError(f"the format schema cannot be turned into a grammar: "
                                    f"{type(e).__name__}: {e}") from None
    if len(grammar) > MAX_GRAMMAR:
        raise StructuredOutputError(
            f"the format schema is too large for the grammar engine ({len(grammar)} characters "
            f"of grammar; the limit is {MAX_GRAMMAR})"
        )
    return grammar


def check_schema(schema: Any, path: str = "$", depth: int = 0) -> None:
    """Raise StructuredOutputError for the first keyword the grammar cannot enforce."""
    if depth > MAX_DEPTH:
        raise StructuredOutputError(f"the format schema nests deeper than {MAX_DEPTH} levels")
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            check_schema(item, f"{path}[{i}]", depth + 1)
        return
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key in UNSUPPORTED:
            raise StructuredOutputError(
                f"the format schema uses '{key}' at {path} ({UNSUPPORTED[key]}), which the "
                "grammar cannot enforce; remove it or check the value yourself"
            )
        if key == "pattern" and isinstance(value, str) and not (
            value.startswith("^") and value.endswith("$")
        ):
            raise StructuredOutputError(
                f"the format schema's pattern at {path} must be anchored (^...$) to be enforced"
            )
        if key == "format" and isinstance(value, str) and value not in FORMATS:
            raise StructuredOutputError(
                f"the format schema uses string format '{value}' at {path}; the grammar "
                f"enforces only {', '.join(sorted(FORMATS))}"
            )
        if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
            raise StructuredOutputError(f"the format schema refers to {value} at {path}; "
                                        "only local references (#/...) are supported")
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                check_schema(sub, f"{path}.{key}.{name}", depth + 1)
        elif key in ("items", "prefixItems", "anyOf", "oneOf", "allOf",
                     "additionalProperties", "additionalItems"):
            check_schema(value, f"{path}.{key}", depth + 1)
