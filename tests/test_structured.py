"""format: JSON mode and JSON schemas, enforced by a grammar on the real default model."""

import json
import re

import jsonschema
import pytest
from conftest import DET

from chatcli import chat
from chatcli.core.errors import RequestError
from chatcli.engine.output.structured import StructuredOutputError, check_schema, grammar_for

MODEL = "smollm2:135m"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer"},
        "languages": {"type": "array", "items": {"type": "string", "maxLength": 20},
                      "minItems": 1, "maxItems": 3},
        "employed": {"type": "boolean"},
    },
    "required": ["name", "age", "languages", "employed"],
    "additionalProperties": False,
}


def test_schema_answer_parses_and_validates():
    r = chat(MODEL, [{"role": "user", "content": "Describe a fictional programmer as JSON."}],
             format=PERSON, options={**DET, "num_predict": 200})
    data = json.loads(r.message.content)
    jsonschema.validate(data, PERSON)
    assert r.done_reason == "stop"


def test_json_mode_streams_an_object():
    chunks = list(chat(MODEL, [{"role": "user", "content": "List two colours as JSON."}],
                       format="json", stream=True, options={**DET, "num_predict": 200}))
    text = "".join(c.message.content for c in chunks if not c.done)
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("schema, fragment", [
    ({"type": "integer", "minimum": 0}, "'minimum' at $"),
    ({"type": "object", "properties": {"n": {"type": "number", "maximum": 3}}},
     "'maximum' at $.properties.n"),
    ({"type": "string", "pattern": "[a-z]+"}, "must be anchored"),
    ({"type": "string", "format": "email"}, "string format 'email'"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"$ref": "https://example.com/schema.json"}, "only local references"),
])
def test_what_the_grammar_cannot_enforce_is_reported(schema, fragment):
    with pytest.raises(StructuredOutputError, match=re.escape(fragment)):
        grammar_for(schema)
    with pytest.raises(StructuredOutputError, match=re.escape(fragment)):
        chat(MODEL, [{"role": "user", "content": "hi"}], format=schema)


def test_anchored_patterns_and_dates_are_fine():
    check_schema({"type": "string", "pattern": "^[a-z]+$"})
    assert "root" in grammar_for({"type": "string", "format": "date"})


def test_too_deep_or_too_large_schemas_are_clear_errors():
    deep: dict = {"type": "string"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"x": deep}}
    with pytest.raises(StructuredOutputError, match="deeper"):
        grammar_for(deep)
    wide = {"type": "object", "properties": {
        f"field_{i}": {"type": "string", "enum": [f"value-{i}-{j}" * 4 for j in range(60)]}
        for i in range(300)}}
    with pytest.raises(StructuredOutputError, match="too large"):
        grammar_for(wide)


def test_bad_format_values():
    with pytest.raises(RequestError, match="format must be"):
        grammar_for("yaml")
    with pytest.raises(RequestError, match="format must be"):
        grammar_for(42)
