"""``format``: JSON mode and JSON-schema answers, enforced by a llama.cpp grammar.

``format="json"`` constrains sampling to a JSON object; ``format=<schema>`` to that schema,
through llama-cpp-python's schema-to-GBNF converter. The converter silently drops what a grammar
cannot express (numeric bounds, for one), so schemas are checked first: such a keyword is a clear
error naming where it is, never a constraint quietly ignored.
"""

from __future__ import annotations

import json
import re
from typing import Any

from chatcli.core import textclean
from chatcli.core.errors import NotSupportedError, RequestError

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
# The converter writes each repetition out (minItems 3 becomes "item , item , item", maxLength
# 5 five nested optionals), so a count is text, memory and time: the 70-byte schema with
# minItems 100000000 took 5.4 GB and 10 s before failing. So, before converting: one count at
# most MAX_REPEAT, which is also what llama.cpp's grammar parser accepts (it refuses more than
# 1000 nested optionals, i.e. maxLength 1001, after the work); and all the work a schema causes
# (counts, properties, optional-property combinations, $ref and allOf expansions, added up
# through every level of nesting) at most MAX_WORK units, about 10 characters of grammar each:
# the converter then stays under about 0.2 s and a few MB.
MAX_REPEAT = 1000
MAX_WORK = 50_000
COUNTS = (("minItems", "maxItems"), ("minLength", "maxLength"))
_RULE_NAME_CHARS = re.compile(r"[^a-zA-Z0-9-]+")  # what the converter turns into "-"
_QUANTIFIER = re.compile(r"\\.|\[(?:\\.|[^\]])*\]|\{([^}]*)\}", re.S)


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
            format = textclean.loads(format, what="the format schema")
        except json.JSONDecodeError:
            shown = format if len(format) <= 40 else format[:37] + "..."
            raise RequestError(
                f"format must be \"json\" or a JSON schema object, not {shown!r}"
            ) from None
    if not isinstance(format, dict):
        raise RequestError("format must be \"json\" or a JSON schema object")
    format = textclean.clean_value(format, "the format schema")
    check_schema(format)
    check_size(format)
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


def check_size(schema: dict[str, Any]) -> None:
    """Raise StructuredOutputError, before any grammar is built, when the schema asks for more
    repetitions (or more work in all) than ``MAX_REPEAT`` / ``MAX_WORK``."""
    _Estimate(schema).visit(schema, "$", 0)


class _Estimate:
    """The work llama-cpp-python's converter would do for a schema, added up as it goes (so an
    exponential schema stops at the budget). It follows the converter: each named rule is
    written once (a repeated item is a reference, so nesting adds rather than multiplies),
    a plain $ref is expanded once, allOf copies its components' properties every time."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.used = 0
        self.expanded: set[str] = set()
        self.active: set[str] = set()

    def spend(self, units: int, what: str, path: str) -> None:
        self.used += units
        if self.used > MAX_WORK:
            raise StructuredOutputError(
                f"the format schema would make a grammar too large to build: its repetitions "
                f"add up past the limit of {MAX_WORK} at {what} at {path} (minItems, maxItems, "
                "minLength, maxLength and pattern counts, optional properties and $ref/allOf "
                "expansions all count, through every level of nesting)"
            )

    def visit(self, schema: Any, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise StructuredOutputError(
                f"the format schema nests deeper than {MAX_DEPTH} levels at {path} (counting "
                "$ref expansions)"
            )
        self.spend(1, "a schema", path)
        if isinstance(schema, list):
            for i, item in enumerate(schema):
                self.visit(item, f"{path}[{i}]", depth + 1)
            return
        if not isinstance(schema, dict):
            return
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref not in self.expanded and ref not in self.active:
            self.expanded.add(ref)
            self.active.add(ref)
            self.visit(self.target(ref), f"{path}.$ref", depth + 1)
            self.active.discard(ref)
        for key in ("anyOf", "oneOf", "prefixItems", "items", "additionalProperties"):
            if isinstance(schema.get(key), (dict, list)):
                self.visit(schema[key], f"{path}.{key}", depth + 1)
        for values in (schema.get("enum"), schema.get("type")):
            if isinstance(values, list):
                self.spend(len(values), "an enum or type list", path)
        for low, high in COUNTS:
            self.count(schema, low, high, path)
        if isinstance(schema.get("pattern"), str):
            self.pattern(schema["pattern"], path)
        if isinstance(schema.get("properties"), dict):
            self.properties(schema, schema["properties"], path, depth)
        if isinstance(schema.get("allOf"), list):
            self.all_of(schema["allOf"], f"{path}.allOf", depth + 1)

    def target(self, ref: str) -> Any:
        """What a local ``#/a/b`` reference points at (None when nothing: the converter then
        reports it)."""
        node: Any = self.root
        for part in ref.partition("#")[2].split("/")[1:]:
            if isinstance(node, dict):
                node = node.get(part)
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node

    def count(self, schema: dict[str, Any], low: str, high: str, path: str) -> None:
        """One repetition: each count a non-negative integer up to MAX_REPEAT."""
        values = {}
        for key in (low, high):
            value = schema.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise StructuredOutputError(
                    f"the format schema's '{key}' at {path} must be a non-negative integer"
                )
            self.repeat(value, f"'{key}'", path)
            values[key] = value
        if low in values and high in values and values[low] > values[high]:
            raise StructuredOutputError(
                f"the format schema's '{low}' at {path} is greater than its '{high}'"
            )
        if values:
            self.spend(max(values.values()), f"'{high if high in values else low}'", path)

    def repeat(self, value: int, what: str, path: str) -> None:
        if value > MAX_REPEAT:
            raise StructuredOutputError(
                f"the format schema's {what} at {path} is {value}; the limit is {MAX_REPEAT} "
                "(each repetition is written out in the grammar; leave it out for no bound)"
            )

    def pattern(self, pattern: str, path: str) -> None:
        """A pattern's {n}, {n,} and {n,m} quantifiers (escapes and [...] classes skipped)."""
        self.spend(len(pattern), "the pattern", path)
        for m in _QUANTIFIER.finditer(pattern):
            if m.group(1) is None:
                continue
            biggest = 0
            for part in m.group(1).split(","):
                part = part.strip()
                if part.isdigit():
                    what = f"pattern quantifier {{{m.group(1)}}}"
                    if len(part) > 9:  # too long to be a number worth converting
                        raise StructuredOutputError(
                            f"the format schema's {what[:40]} at {path} is too large; the "
                            f"limit is {MAX_REPEAT} (each repetition is written out in the "
                            "grammar)"
                        )
                    self.repeat(int(part), what, path)
                    biggest = max(biggest, int(part))
            self.spend(biggest, f"pattern quantifier {{{m.group(1)}}}", path)

    def properties(self, schema: dict[str, Any], properties: dict[str, Any], path: str,
                   depth: int) -> None:
        """Each property's schema; the converter also writes a rule for each tail of the
        optional properties (quadratic in their number) and numbers rules whose names
        collide after escaping (quadratic in the collisions)."""
        required = schema.get("required")
        required = set(x for x in required if isinstance(x, str)) \
            if isinstance(required, list) else set()
        optional = sum(1 for name in properties if name not in required)
        self.spend(optional * (optional + 1) // 2, "its optional properties", path)
        collisions: dict[str, int] = {}
        for name in properties:
            escaped = _RULE_NAME_CHARS.sub("-", str(name))
            collisions[escaped] = collisions.get(escaped, 0) + 1
            self.spend(collisions[escaped], "property names that collide as rule names", path)
        for name, sub in properties.items():
            self.visit(sub, f"{path}.properties.{name}", depth + 1)

    def all_of(self, parts: list[Any], path: str, depth: int) -> None:
        """allOf merges its components' properties, each time it appears."""
        for i, part in enumerate(parts):
            alternatives = part.get("anyOf") if isinstance(part, dict) else None
            for comp in alternatives if isinstance(alternatives, list) else [part]:
                if isinstance(comp, dict) and isinstance(comp.get("$ref"), str):
                    comp = self.target(comp["$ref"])
                if isinstance(comp, dict) and isinstance(comp.get("properties"), dict):
                    self.properties(comp, comp["properties"], f"{path}[{i}]", depth)
