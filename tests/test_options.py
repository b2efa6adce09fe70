import pytest

from chatcli.core import options
from chatcli.core.errors import InvalidOptionError


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


# -- strict (validate) and lenient (accept) ------------------------------------------------------


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"temperature": None}, "must be a number"),
        ({"tfs_z": 0.9}, "option 'tfs_z' is not supported by chatcli: llama.cpp no longer"),
        ({"use_mmap": True}, "option 'use_mmap' is not supported"),
        ({"mirostat": 3}, "must be 0, 1 or 2"),
        ({"typical_p": 1.5}, "must be 0..1"),
        ({"mirostat_tau": -1}, "must be >= 0"),
    ],
)
def test_validate_is_strict(bad, fragment):
    with pytest.raises(InvalidOptionError, match=fragment):
        options.validate(bad)


def test_validate_takes_the_options_llama_cpp_can_do():
    out = options.validate({"mirostat": 2, "mirostat_tau": 3, "mirostat_eta": 0.2,
                            "typical_p": 0.7})
    assert out == {"mirostat": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.2, "typical_p": 0.7}


def test_accept_treats_null_as_the_default_and_logs_what_it_ignores(caplog):
    caplog.set_level("WARNING", logger="chatcli")
    got = options.accept({"temperature": None, "mirostat": None, "stop": None,
                          "top_k": 5, "mirostatt": 1, "num_keep": 5, "tfs_z": 0.5})
    assert got.options == {"top_k": 5}
    assert set(got.ignored) == {"mirostatt", "num_keep", "tfs_z"}
    assert got.ignored["mirostatt"] == "unknown option"
    logged = [r.getMessage() for r in caplog.records if r.name == "chatcli"]
    assert "option 'mirostatt' ignored: unknown option" in logged
    assert any(m.startswith("option 'tfs_z' ignored: llama.cpp") for m in logged)
    assert len(logged) == 3


def test_accept_is_quiet_about_values_that_ask_for_what_chatcli_does(caplog):
    caplog.set_level("WARNING", logger="chatcli")
    got = options.accept({"use_mmap": True, "tfs_z": 1, "penalize_newline": True,
                          "numa": False, "main_gpu": 0, "f16_kv": True, "low_vram": False})
    assert got.options == {} and got.ignored == {}
    assert not [r for r in caplog.records if r.name == "chatcli"]


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"temperature": "hot"}, "must be a number"),
        ({"temperature": -1}, "must be >= 0"),
        ({"mirostat": 3}, "must be 0, 1 or 2"),
        ({"mirostat": 1.5}, "must be an integer"),
        ({"typical_p": 2}, "must be 0..1"),
        ({"use_mmap": "yes"}, "'use_mmap' must be true or false"),
        ({"num_keep": "all"}, "'num_keep' must be an integer"),
        ({"stop": [1]}, "list of strings"),
        ({"num_thread": 100000}, "at most"),
    ],
)
def test_accept_still_refuses_a_bad_value_of_a_known_option(bad, fragment):
    with pytest.raises(InvalidOptionError, match=fragment):
        options.accept(bad)


def test_accept_refuses_options_that_are_not_a_mapping():
    with pytest.raises(InvalidOptionError, match="mapping"):
        options.accept(["temperature"])


def test_accept_logs_a_bounded_number_of_lines(caplog):
    caplog.set_level("WARNING", logger="chatcli")
    got = options.accept({f"junk{i}" + "x" * 1000: 1 for i in range(5000)})
    assert len(got.ignored) == 5000 and got.options == {}
    lines = [r.getMessage() for r in caplog.records if r.name == "chatcli"]
    assert len(lines) == 11 and lines[-1] == "4990 more options ignored"
    assert max(len(line) for line in lines) < 200


def test_ollama_docs_generate_with_options_example():
    # The "Generate request (With options)" example of Ollama's API docs: every option set.
    sent = {"num_keep": 5, "seed": 42, "num_predict": 100, "top_k": 20, "top_p": 0.9,
            "min_p": 0.0, "typical_p": 0.7, "repeat_last_n": 33, "temperature": 0.8,
            "repeat_penalty": 1.2, "presence_penalty": 1.5, "frequency_penalty": 1.0,
            "penalize_newline": True, "stop": ["\n", "user:"], "numa": False, "num_ctx": 1024,
            "num_batch": 2, "num_gpu": 1, "main_gpu": 0, "use_mmap": True, "num_thread": 1}
    got = options.accept(sent)
    assert got.ignored == {"num_keep": options.UNSUPPORTED["num_keep"].reason}
    assert got.options["typical_p"] == 0.7 and got.options["stop"] == ["\n", "user:"]
    assert set(got.options) == set(sent) - set(options.UNSUPPORTED)


def test_every_ollama_option_is_known():
    # api/types.go Options and Runner (and older Ollama versions' options).
    ollama = {"num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p",
              "repeat_last_n", "temperature", "repeat_penalty", "presence_penalty",
              "frequency_penalty", "penalize_newline", "mirostat", "mirostat_tau",
              "mirostat_eta", "stop", "tfs_z", "numa", "num_ctx", "num_batch", "num_gpu",
              "main_gpu", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap",
              "use_mlock", "num_thread", "num_gqa", "rope_frequency_base",
              "rope_frequency_scale", "embedding_only"}
    assert ollama == set(options.SPECS) | set(options.UNSUPPORTED)
    assert not set(options.SPECS) & set(options.UNSUPPORTED)


def test_typed_options_stay_strict():
    assert options.parse_assignment("mirostat=2") == ("mirostat", 2)
    assert options.parse_assignment("typical_p=0.5") == ("typical_p", 0.5)
    with pytest.raises(InvalidOptionError, match="unknown option 'mirostatt'"):
        options.parse_assignment("mirostatt=1")
    with pytest.raises(InvalidOptionError, match="'num_keep' is not supported"):
        options.parse_assignment("num_keep=4")
