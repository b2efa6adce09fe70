import pytest

from chatcli import options
from chatcli.errors import InvalidOptionError


def test_validate_normalises_types():
    out = options.validate({"temperature": 0, "top_k": 40.0, "stop": "END", "num_ctx": 2048})
    assert out == {"temperature": 0.0, "top_k": 40, "stop": ["END"], "num_ctx": 2048}
    assert isinstance(out["temperature"], float)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"temprature": 1}, "unknown option 'temprature'"),
        ({"temperature": -1}, "must be >= 0"),
        ({"top_p": 1.5}, "must be 0..1"),
        ({"top_k": 1.5}, "must be an integer"),
        ({"seed": "x"}, "must be an integer"),
        ({"temperature": True}, "must be a number"),
        ({"stop": [1, 2]}, "list of strings"),
        ({"num_ctx": 0}, "16..4194304"),
    ],
)
def test_validate_rejects(bad, fragment):
    with pytest.raises(InvalidOptionError, match=fragment):
        options.validate(bad)


def test_unknown_option_lists_valid_names():
    with pytest.raises(InvalidOptionError) as e:
        options.validate({"mirostat_x": 1})
    assert "temperature" in str(e.value) and "num_ctx" in str(e.value)


def test_parse_assignment_from_text():
    assert options.parse_assignment("temperature=0.2") == ("temperature", 0.2)
    assert options.parse_assignment("num_ctx=1024") == ("num_ctx", 1024)
    assert options.parse_assignment('stop="<END>"') == ("stop", ["<END>"])
    assert options.parse_assignment('stop=["a", "b"]') == ("stop", ["a", "b"])
    with pytest.raises(InvalidOptionError, match="NAME=VALUE"):
        options.parse_assignment("temperature")
    with pytest.raises(InvalidOptionError, match="must be an integer"):
        options.parse_assignment("num_ctx=big")


def test_merge_later_wins():
    assert options.merge({"a": 1, "stop": ["x"]}, None, {"stop": ["y"]}) == {"a": 1, "stop": ["y"]}
