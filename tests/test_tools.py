"""Tools for chat(): Python functions become JSON function schemas; descriptions are checked."""

from __future__ import annotations

import enum
from typing import Literal, Optional, Union

import pytest

from chatcli.core.errors import RequestError
from chatcli.engine.output.tools import normalize_tools, tool_names


def get_weather(
    city: str,
    days: int = 1,
    units: Literal["celsius", "fahrenheit"] = "celsius",
    hourly: bool = False,
    country: Optional[str] = None,  # noqa: UP045 - the spelling users write
    hours: list[int] | None = None,
) -> str:
    """Get the weather forecast for a city.

    Uses the national weather service
    when there is one.

    Args:
        city: The city to look up,
            e.g. "Paris".
        days (int): How many days ahead.
        units: Temperature units.
        hourly: Hour by hour instead of daily.
        country: ISO country code, to tell apart cities with the same name.
        hours: Which hours of the day to report.

    Returns:
        The forecast as text.
    """
    return ""


def test_python_function_becomes_a_function_schema():
    [tool] = normalize_tools([get_weather])
    assert tool["type"] == "function"
    function = tool["function"]
    assert function["name"] == "get_weather"
    assert function["description"] == (
        "Get the weather forecast for a city.\n\n"
        "Uses the national weather service when there is one."
    )
    params = function["parameters"]
    assert params["type"] == "object"
    props = params["properties"]
    assert list(props) == ["city", "days", "units", "hourly", "country", "hours"]
    assert props["city"] == {"type": "string", "description": 'The city to look up, e.g. "Paris".'}
    assert props["days"] == {"type": "integer", "description": "How many days ahead."}
    assert props["units"] == {
        "type": "string",
        "enum": ["celsius", "fahrenheit"],
        "description": "Temperature units.",
    }
    assert props["hourly"]["type"] == "boolean"
    assert props["country"] == {
        "type": "string",
        "description": "ISO country code, to tell apart cities with the same name.",
    }
    assert props["hours"]["type"] == "array"
    assert props["hours"]["items"] == {"type": "integer"}
    # Only parameters without a default (and not Optional) are required; Returns: is ignored.
    assert params["required"] == ["city"]
    assert "forecast as text" not in str(tool)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def test_annotation_types():
    def f(a, b: float, c: dict, d: list, e: dict[str, int], g: Color, h: Union[int, str],  # noqa: UP007
          i: Optional[Literal[1, 2]], j: tuple[str, ...], *args, **kwargs):  # noqa: UP045
        """No Args section at all."""

    props = normalize_tools([f])[0]["function"]["parameters"]["properties"]
    assert props["a"] == {"type": "string"}  # no annotation
    assert props["b"] == {"type": "number"}
    assert props["c"] == {"type": "object"}
    assert props["d"] == {"type": "array"}
    assert props["e"] == {"type": "object"}
    assert props["g"] == {"type": "string", "enum": ["red", "blue"]}
    assert props["h"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert props["i"] == {"type": "integer", "enum": [1, 2]}
    assert props["j"] == {"type": "array", "items": {"type": "string"}}
    assert "args" not in props and "kwargs" not in props
    required = normalize_tools([f])[0]["function"]["parameters"]["required"]
    assert required == ["a", "b", "c", "d", "e", "g", "h", "j"]


def test_string_annotations_and_missing_docstring():
    # One unknown name does not spoil the other annotations (all are strings in this module).
    def g(n: int, thing: Unknown, when: Optional[float] = None):  # noqa: F821, UP045
        pass

    function = normalize_tools([g])[0]["function"]
    assert function["description"] == ""
    assert function["parameters"]["properties"] == {
        "n": {"type": "integer"},
        "thing": {"type": "string"},
        "when": {"type": "number"},
    }


def test_json_descriptions_pass_through_normalized():
    described = {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        },
    }
    bare = {"name": "ping", "parameters": {"type": "object", "properties": {}}}
    no_params = {"type": "function", "function": {"name": "now", "description": "Time"}}
    tools = normalize_tools([described, bare, no_params, get_weather])
    assert tools[0] == described
    assert tools[1] == {
        "type": "function",
        "function": {"name": "ping", "description": "",
                     "parameters": {"type": "object", "properties": {}}},
    }
    assert tools[2]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert normalize_tools(tools) == tools  # idempotent
    assert tool_names(tools) == {"add", "ping", "now", "get_weather"}
    assert normalize_tools(None) == []


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ("get_weather", "must be a list"),
        ({"name": "x"}, "must be a list"),
        ([42], "tool 0 is a int"),
        ([{"type": "function", "function": {"description": "nameless"}}], "has no name"),
        ([{"name": ""}], "has no name"),
        ([{"type": "retrieval", "function": {"name": "x"}}], "only 'function' tools"),
        ([{"type": "function", "function": "x"}], "'function' must be an object"),
        ([{"name": "x", "parameters": {"type": "string"}}], "JSON schema object"),
        ([{"name": "x", "parameters": ["a"]}], "JSON schema object"),
        ([{"name": "x", "parameters": {"type": "object", "properties": []}}], "properties"),
        ([{"name": "x", "parameters": {"type": "object", "required": "a"}}], "required"),
        ([{"name": "x", "description": 3}], "description must be a string"),
        ([{"name": "x"}, {"name": "x"}], "two tools are named 'x'"),
        ([lambda city: city], "no usable name"),
    ],
)
def test_bad_tools_raise_request_error(tools, message):
    with pytest.raises(RequestError, match=message) as info:
        normalize_tools(tools)
    assert "\n" not in str(info.value)
