"""config.toml: precedence (flag > env > file > the model's defaults), aliases, bad files as
one line each, the config.json notice, and `chat config path|show|edit`. What a user sees runs
through the real CLI in a subprocess, on the bundled model."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

import pytest

from chatcli.core import config

CHAT = [sys.executable, "-m", "chatcli"]
STORY = "Tell me a long story about a dragon."


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No setting from the developer's shell leaks into these tests."""
    for name in config.ENV.values():
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def env(cli_env):
    for name in config.ENV.values():
        cli_env.pop(name, None)
    return cli_env


@pytest.fixture
def write(chatcli_home):
    def write(text: str, name: str = "config.toml"):
        path = chatcli_home / "config" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return write


def chat(args, env, timeout=180, **extra):
    return subprocess.run(CHAT + args, env={**env, **extra}, input="", capture_output=True,
                          text=True, timeout=timeout)


def eval_count(p) -> int:
    assert p.returncode == 0, p.stderr
    found = re.search(r"eval count:\s+(\d+) token", p.stdout.split("prompt eval rate")[-1])
    assert found, p.stdout
    return int(found.group(1))


# -- precedence ------------------------------------------------------------------------------


def test_model_precedence_flag_env_file_default(env, write):
    # Names that do not exist: the one-line error says which layer chose the model.
    assert "smollm2:135m" in chat(["config", "show"], env).stdout.splitlines()[1]
    write('model = "from-file:1"\n')
    p = chat(["run", "--num-predict", "1"], env)
    assert p.returncode == 1 and "from-file:1" in p.stderr, p.stderr
    p = chat(["run", "--num-predict", "1"], env, CHATCLI_MODEL="from-env:1")
    assert p.returncode == 1 and "from-env:1" in p.stderr, p.stderr
    p = chat(["run", "from-flag:1", "hi"], env, CHATCLI_MODEL="from-env:1")
    assert p.returncode == 1 and "from-flag:1" in p.stderr, p.stderr


def test_option_precedence_flag_env_file_model_default(env, write, tmp_path, bundled_path):
    # The model's own default (its Modelfile) is the lowest layer.
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {bundled_path}\nPARAMETER num_predict 3\n")
    assert chat(["create", "capped", "-f", str(modelfile)], env).returncode == 0
    args = ["run", "capped", STORY, "--verbose", "-o", "temperature=0", "--seed", "42"]
    assert eval_count(chat(args, env)) == 3
    write("[options]\nnum_predict = 4\n")
    assert eval_count(chat(args, env)) == 4
    assert eval_count(chat(args, env, CHATCLI_OPTIONS="num_predict=5")) == 5
    assert eval_count(chat(args + ["--num-predict", "6"], env,
                           CHATCLI_OPTIONS="num_predict=5")) == 6


def test_render_setting_precedence_flag_env_file_default(env, write):
    args = ["run", "smollm2:135m", "hi", "--num-predict", "1", "-o", "temperature=0"]

    def verbose(p) -> bool:
        assert p.returncode == 0, p.stderr
        return "eval count:" in p.stdout

    assert not verbose(chat(args, env))  # default: off
    write("verbose = true\n")
    assert verbose(chat(args, env))  # file
    assert not verbose(chat(args, env, CHATCLI_VERBOSE="0"))  # env over file
    assert verbose(chat(args + ["--verbose"], env, CHATCLI_VERBOSE="0"))  # flag over env
    assert not verbose(chat(args + ["--noverbose"], env))  # the flag's other half


def test_system_prompt_from_file_below_the_flag(write, monkeypatch):
    from chatcli.cli.app import RunOptions, _run

    sessions = []
    monkeypatch.setattr("chatcli.client.session.Session.switch_model",
                        lambda self, name: sessions.append(self) or name)
    monkeypatch.setattr("chatcli.cli.app._read_stdin", lambda: "")
    monkeypatch.setattr("chatcli.repl.answer.stream_answer",
                        lambda *a, **k: type("O", (), {"cancelled": False})())
    write('system = "From the file."\n[options]\ntemperature = 0.25\n')
    _run(RunOptions(model="smollm2:135m", words=("hi",)))
    assert sessions[-1].system == "From the file."
    assert sessions[-1].options["temperature"] == 0.25
    _run(RunOptions(model="smollm2:135m", words=("hi",), system="From the flag.",
                    options={"temperature": 0.5}))
    assert sessions[-1].system == "From the flag."
    assert sessions[-1].options["temperature"] == 0.5


def test_setting_sources(write, monkeypatch):
    path = write("verbose = true\nlog = false\n[server]\norigins = ['https://a.example']\n")
    assert config.setting("verbose") == config.Value(True, "file", str(path))
    assert config.setting("verbose", flag=False).source == "flag"
    monkeypatch.setenv("CHATCLI_VERBOSE", "no")
    assert config.setting("verbose") == config.Value(False, "env", "$CHATCLI_VERBOSE")
    assert config.setting("wordwrap").source == "default"
    assert config.get_bool("log") is False
    write("log = true\n")
    monkeypatch.setenv("CHATCLI_NOLOG", "1")
    assert config.get_bool("log") is False
    assert config.get("server.origins") == []


# -- aliases ---------------------------------------------------------------------------------


def test_alias_runs_the_model_it_names(env, write):
    write('[aliases]\nfast = "smollm2:135m"\n')
    p = chat(["run", "fast", "hi", "--num-predict", "2", "-o", "temperature=0"], env)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    write('model = "fast"\n[aliases]\nfast = "smollm2:135m"\n')
    assert config.default_model() == "smollm2:135m"


def test_resolve_looks_aliases_up(bundled_path):
    from chatcli.models.resolve import resolve

    assert resolve("fast", {"fast": "smollm2:135m"}).path == bundled_path
    with pytest.raises(Exception, match="fast"):
        resolve("fast")  # the API and the server take names as they are


def test_show_and_cp_follow_aliases_rm_says_it_is_one(env, write):
    write('[aliases]\nfast = "smollm2:135m"\n')
    shown = chat(["show", "fast", "--parameters"], env)
    assert shown.returncode == 0, shown.stderr
    assert chat(["show", "fast"], env).stdout == chat(["show", "smollm2:135m"], env).stdout
    p = chat(["cp", "fast", "mine"], env)
    assert p.returncode == 0 and "copied 'fast' to 'mine'" in p.stdout, p.stderr
    assert "mine" in chat(["list"], env).stdout
    p = chat(["rm", "fast"], env)
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert "'fast' is an alias for 'smollm2:135m' in config.toml" in p.stderr
    assert chat(["rm", "mine"], env).returncode == 0


def test_model_command_follows_aliases(write):
    from scripted import ScriptedClient

    from chatcli.client.session import Session
    from chatcli.repl.commands import REGISTRY
    from chatcli.repl.state import ReplState, Settings

    write('[aliases]\nfast = "other"\n')
    state = ReplState(Session(ScriptedClient(), "scripted"), Settings(), stdout=io.StringIO())
    REGISTRY.dispatch(state, "/model fast")
    assert state.session.model == "other"


# -- bad files -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, key, words", [
    ('model = "a"\ntemperature 0.5\n', "line 2 (temperature 0.5)", "syntax error"),
    ('modle = "qwen3:0.6b"\n', "'modle'", "did you mean 'model'"),
    ("[options]\ntemprature = 0.5\n", "'options.temprature'", "did you mean 'temperature'"),
    ("[options]\nnum_ctx = -1\n", "'options.num_ctx'", "16..4194304"),
    ('verbose = "yes"\n', "'verbose'", "true or false"),
    ("[server]\nhost = 'ftp://x'\n", "'server.host'", "invalid host"),
    ("[aliases]\nfast = 3\n", "'aliases.fast'", "model name"),
    ("[server]\nparallel = 65\n", "'server.parallel'", "from 1 to 64"),
    ("[server]\nparallel = 'four'\n", "'server.parallel'", "whole number"),
    ("[server]\nparalel = 4\n", "'server.paralel'", "did you mean 'parallel'"),
])
def test_each_problem_is_one_line_naming_file_and_key(write, text, key, words):
    path = write(text)
    problems = config.read_file(path).problems
    assert len(problems) == 1
    assert "\n" not in problems[0]
    assert problems[0].startswith(str(path)) and key in problems[0] and words in problems[0]


def test_bad_keys_are_left_out_the_rest_applies_and_the_program_answers(env, write):
    path = write('modle = "x"\nverbose = "yes"\n[options]\nnum_predict = 2\n'
                 "temperature = 0\nnum_ctx = -1\n")
    p = chat(["run", "smollm2:135m", "hi", "--verbose"], env)
    assert eval_count(p) == 2  # the good option still applies
    warnings = [line for line in p.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 3, p.stderr  # each problem once, though the file is read often
    for key in ("'modle'", "'verbose'", "'options.num_ctx'"):
        assert sum(key in w and str(path) in w for w in warnings) == 1


def test_syntax_error_names_the_line_and_the_program_answers(env, write):
    path = write('[options]\nnum_predict = 2\ntemperature = = 0\n')
    p = chat(["run", "smollm2:135m", "hi", "--num-predict", "1", "-o", "temperature=0"], env)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "line 3" in lines[0], p.stderr


def test_bad_environment_values_are_reported(env):
    p = chat(["config", "show"], env, CHATCLI_VERBOSE="maybe", CHATCLI_OPTIONS="nope=1")
    assert p.returncode == 0
    assert "$CHATCLI_VERBOSE='maybe'" in p.stderr and "'nope'" in p.stderr


def test_template_is_valid(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(config.TEMPLATE)
    assert config.read_file(path).problems == []


# -- config.json -----------------------------------------------------------------------------


def test_legacy_config_json_is_read_with_one_notice(env, write):
    legacy = write('{"default_model": "from-json:1"}', "config.json")
    p = chat(["run", "--num-predict", "1"], env)
    assert p.returncode == 1 and "from-json:1" in p.stderr
    notices = [line for line in p.stderr.splitlines() if line.startswith("Notice:")]
    assert len(notices) == 1 and str(legacy) in notices[0] and "config.toml" in notices[0]
    write('model = "from-toml:1"\n')  # config.toml wins where both set a key
    assert "from-toml:1" in chat(["run", "--num-predict", "1"], env).stderr


# -- chat config path | show | edit ----------------------------------------------------------


def test_config_path_and_show(env, chatcli_home, write):
    p = chat(["config", "path"], env)
    assert p.stdout.strip() == str(chatcli_home / "config" / "config.toml")
    path = write('model = "m:1"\n[options]\ntemperature = 0.3\n[aliases]\nfast = "m:1"\n')
    p = chat(["config", "show"], env, CHATCLI_OPTIONS="seed=7")
    assert p.returncode == 0, p.stderr
    rows = {line.split(" = ")[0]: line for line in p.stdout.splitlines()[1:]}
    assert rows["model"].endswith(f"# file {path}") and '"m:1"' in rows["model"]
    assert rows["options.temperature"].endswith(f"# file {path}")
    assert rows["options.seed"].endswith("# env $CHATCLI_OPTIONS")
    assert rows["verbose"].endswith("# default")
    assert "aliases.fast" in rows


def editor(tmp_path, body: str):
    script = tmp_path / "editor.sh"
    script.write_text("#!/bin/sh\ncp \"$1\" \"$1.before\"\n" + body)
    script.chmod(0o755)
    return str(script)


def test_config_edit_creates_the_template_and_checks_the_result(env, chatcli_home, tmp_path):
    path = chatcli_home / "config" / "config.toml"
    good = editor(tmp_path, "printf 'model = \"qwen3:0.6b\"\\n' > \"$1\"\n")
    p = chat(["config", "edit"], env, EDITOR=good, VISUAL="")
    assert p.returncode == 0 and "valid" in p.stderr, p.stderr
    assert path.with_name("config.toml.before").read_text() == config.TEMPLATE
    assert path.read_text() == 'model = "qwen3:0.6b"\n'

    bad = editor(tmp_path, "printf '[options]\\ntemprature = 1\\n' > \"$1\"\n")
    p = chat(["config", "edit"], env, EDITOR=bad, VISUAL="")
    assert p.returncode == 1
    assert "'options.temprature'" in p.stderr and str(path) in p.stderr


def test_config_edit_reports_a_failing_editor(env, tmp_path):
    p = chat(["config", "edit"], env, EDITOR=editor(tmp_path, "exit 3\n"), VISUAL="")
    assert p.returncode == 1 and "status 3" in p.stderr


# -- the server ------------------------------------------------------------------------------


def test_server_origins_from_file_env_wins(write, monkeypatch):
    from chatcli.serve.middleware import origin_regex

    write("[server]\norigins = ['https://*.from-file.org']\n")
    assert re.fullmatch(origin_regex(), "https://a.from-file.org")
    monkeypatch.setenv("CHATCLI_ORIGINS", "https://env.org")
    assert re.fullmatch(origin_regex(), "https://env.org")
    assert not re.fullmatch(origin_regex(), "https://a.from-file.org")


def test_serve_listens_where_the_file_says(env, write):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write(f"[server]\nhost = '127.0.0.1:{port}'\n")
    proc = subprocess.Popen(CHAT + ["serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        assert proc.stderr is not None
        while "serving on" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        assert f"serving on http://127.0.0.1:{port} " in line, line
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_file_that_is_not_utf8_is_one_problem_not_garbled_values(chatcli_home):
    path = chatcli_home / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'system = "ok"\nmodel = "\xff\xfe"\n')
    read = config.read_file(path)
    assert read.values == {}
    assert len(read.problems) == 1 and "not UTF-8" in read.problems[0] \
        and read.problems[0].startswith(str(path))
