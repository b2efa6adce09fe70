"""The smaller REPL faults of issue 12: each test fails without its fix."""

import io
import json
import math
import os
import subprocess
import sys
import time

import pytest
from scripted import ScriptedClient

from chatcli.client.conversation import ConversationFileError, from_data
from chatcli.client.conversation import load as load_conversation
from chatcli.client.session import Session
from chatcli.core import options as opts_mod
from chatcli.core.errors import InvalidOptionError
from chatcli.core.fileio import atomic_write_text
from chatcli.repl.loop import ReplState, Settings, one_iteration
from chatcli.repl.registry import CommandError
from chatcli.repl.render import PlainRenderer

LONG_PATH = "/models/" + "a-rather-long-directory-name/" * 4 + "model-Q4_K_M.gguf"


class LongPathClient(ScriptedClient):
    def show(self, model, options=None):
        info = super().show(model, options)
        info["path"] = LONG_PATH
        return info


@pytest.fixture
def state():
    """REPL state whose output is the real renderer on a 40-column terminal."""
    stdout = io.StringIO()
    st = ReplState(Session(LongPathClient(["first answer", "second", "third"]), "scripted"),
                   Settings(), stdout=stdout)
    st._out = PlainRenderer(stdout, terminal=True, wordwrap=True, width=40)
    st.settings_changed = lambda: None
    return st


def run(state, line):
    start = state.stdout.tell()
    one_iteration(state, line)
    return state.stdout.getvalue()[start:]


def write_conversation(path, messages, **fields):
    path.write_text(json.dumps({"version": 1, "model": "scripted", "messages": messages,
                                **fields}))
    return path


# -- 1. /save never creates directories ----------------------------------------------------


def test_save_into_a_missing_directory_is_an_error_and_creates_nothing(state, tmp_path):
    run(state, "hello")
    target = tmp_path / "no" / "such" / "x.json"
    with pytest.raises(CommandError, match="no such directory") as e:
        run(state, f"/save {target}")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "no").exists()


def test_own_data_files_still_get_their_directories(tmp_path):
    target = tmp_path / "data" / "deep" / "file.json"
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"


# -- 2. non-finite numbers -----------------------------------------------------------------


def test_an_integer_past_floats_range_is_refused_for_float_options():
    with pytest.raises(InvalidOptionError, match="finite"):
        opts_mod.validate({"temperature": 10**400})


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers_are_invalid_for_every_numeric_option(bad):
    numeric = [n for n, s in opts_mod.SPECS.items() if s.kind in (int, float)]
    unsupported = [n for n, u in opts_mod.UNSUPPORTED.items() if u.kind in (int, float)]
    for name in numeric:
        with pytest.raises(InvalidOptionError):
            opts_mod.validate({name: bad})
        with pytest.raises(InvalidOptionError):
            opts_mod.accept({name: bad})  # the server and chatcli.chat()
    for name in unsupported:
        with pytest.raises(InvalidOptionError):
            opts_mod.accept({name: bad})


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "Infinity", "1e999"])
def test_set_parameter_and_dash_o_refuse_non_finite(state, text):
    with pytest.raises(InvalidOptionError, match="finite"):
        run(state, f"/set parameter temperature {text}")
    with pytest.raises(InvalidOptionError, match="finite"):
        opts_mod.parse_assignment(f"mirostat_tau={text}")
    assert "temperature" not in state.session.options


def test_a_conversation_file_with_infinity_is_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"messages": [], "options": {"temperature": Infinity}}')
    with pytest.raises(ConversationFileError, match="finite"):
        load_conversation(path)


# -- 3. /show blocks are never wrapped -----------------------------------------------------


def test_show_modelfile_keeps_from_and_its_path_on_one_line(state):
    run(state, "hello")  # after an answer the renderer wraps at the terminal's width
    out = run(state, "/show modelfile")
    assert f"FROM {LONG_PATH}" in out.splitlines()
    run(state, '/set system """a system prompt that is long enough to be wrapped at forty"""')
    out = run(state, "/show modelfile")
    assert ('SYSTEM """a system prompt that is long enough to be wrapped at forty"""'
            in out.splitlines())


def test_show_info_keeps_the_path_whole(state):
    run(state, "hello")  # after an answer the renderer wraps at the terminal's width
    out = run(state, "/show info")
    assert f"    {LONG_PATH}" in out.splitlines()
    assert "    architecture        llama" in out.splitlines()


# -- 4. what /load brings ------------------------------------------------------------------


def test_load_merges_the_files_options_over_the_sessions(state, tmp_path):
    run(state, "/set parameter temperature 0.3")
    run(state, "/set parameter seed 7")
    run(state, "/set format json")
    run(state, "/set system mine")
    path = write_conversation(
        tmp_path / "c.json",
        [{"role": "system", "content": "theirs"}, {"role": "user", "content": "q"},
         {"role": "assistant", "content": "a"}],
        model="other", options={"temperature": 0.7}, format=None, think=None,
    )
    run(state, f"/load {path}")
    s = state.session
    assert s.options == {"temperature": 0.7, "seed": 7}
    assert s.model == "other" and s.system == "theirs" and s.format == "json"
    path = write_conversation(tmp_path / "d.json", [{"role": "user", "content": "q"}],
                              options={})
    run(state, f"/load {path}")
    assert s.options == {"temperature": 0.7, "seed": 7}
    assert s.system is None  # the file had none: its messages are the conversation


# -- 5. validation of loaded files ---------------------------------------------------------


@pytest.mark.parametrize("message, words", [
    ({"role": "assistant"}, ["message 1", "content"]),
    ({"role": "assistant", "content": "a", "thinking": 3}, ["message 1", "thinking"]),
    ({"role": "assistant", "content": "a", "tool_calls": {"x": 1}}, ["message 1", "tool_calls"]),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]},
     ["message 1", "tool_calls[0]", "arguments"]),
    ({"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]},
     ["message 1", "tool_calls[0]"]),
    ({"role": "user", "content": "b", "tool_calls": [{"function": {"name": "f",
                                                                    "arguments": {}}}]},
     ["message 1", "tool_calls"]),
    ({"role": "user", "content": "b", "images": "x.png"}, ["message 1", "images"]),
])
def test_malformed_messages_are_one_line_errors_naming_index_and_field(tmp_path, message, words):
    path = write_conversation(tmp_path / "c.json", [{"role": "user", "content": "q"}, message])
    with pytest.raises(ConversationFileError) as e:
        load_conversation(path)
    text = str(e.value)
    assert "\n" not in text and all(w in text for w in words), text


@pytest.mark.parametrize("version, words", [
    ("1", "positive integer"), (True, "positive integer"), (0, "positive integer"),
    (2, "version 2"),
])
def test_version_is_checked(version, words):
    with pytest.raises(ConversationFileError, match=words):
        from_data({"version": version, "messages": []})
    assert from_data({"messages": []}).messages == []  # files from before 'version' existed


def test_valid_tool_calls_and_thinking_load():
    conv = from_data({"version": 1, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "thinking": "hm",
         "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "weather"},
    ]})
    assert conv.messages[1]["tool_calls"][0]["function"]["name"] == "weather"


def test_two_user_messages_in_a_row_are_accepted_as_ollama_accepts_them(state, tmp_path):
    path = write_conversation(tmp_path / "c.json", [{"role": "user", "content": "one"},
                                                    {"role": "user", "content": "two"}])
    run(state, f"/load {path}")
    run(state, "three")
    sent = state.session.client.calls[-1]["messages"]
    assert [m["content"] for m in sent] == ["one", "two", "three"]


def test_chat_run_load_gives_the_same_one_line_error(cli_env, tmp_path):
    path = write_conversation(tmp_path / "c.json", [{"role": "user"}])
    p = subprocess.run([sys.executable, "-m", "chatcli", "run", "--load", str(path), "hi"],
                       env=cli_env, input="", capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert "message 0" in p.stderr and "content" in p.stderr
    assert p.stderr.strip().count("\n") == 0


# -- 6. /copy says what it did -------------------------------------------------------------


def test_copy_says_sent_not_copied_and_mentions_tmux(state):
    run(state, "hello")
    out = run(state, "/copy")
    assert "\x1b]52;c;" in out
    assert "Sent 12 characters" in out and "set-clipboard" in out
    assert "Copied" not in out


# -- 7. stale temporary files --------------------------------------------------------------


def test_save_removes_stale_temp_files_of_its_target_only(state, tmp_path):
    old = time.time() - 3600
    stale = tmp_path / ".x.json.abcd_123.tmp"
    fresh = tmp_path / ".x.json.fresh123.tmp"  # a save running right now
    other = tmp_path / ".y.json.abcd_123.tmp"  # another file's
    unlike = tmp_path / ".x.json.abcd_123.tmp.keep"  # not our pattern
    for p in (stale, fresh, other, unlike):
        p.write_bytes(b"x" * 1000)
    for p in (stale, other, unlike):
        os.utime(p, (old, old))
    run(state, "hello")
    run(state, f"/save {tmp_path / 'x.json'}")
    assert not stale.exists()
    assert fresh.exists() and other.exists() and unlike.exists()
    assert json.loads((tmp_path / "x.json").read_text())["messages"]


# -- 8. plurals ----------------------------------------------------------------------------


def test_counts_have_the_right_plural(state, tmp_path):
    path = write_conversation(tmp_path / "one.json", [{"role": "user", "content": "q"}])
    assert "Loaded 1 message from" in run(state, f"/load {path}")
    assert "Saved 1 message to" in run(state, f"/save {tmp_path / 'out.json'}")
    run(state, "answer me")
    assert "Saved 3 messages to" in run(state, f"/save {tmp_path / 'out.json'}")
    one = tmp_path / "one.txt"
    one.write_text("x")
    assert "(1 character)" in " ".join(run(state, f"/read {one}").split())  # it wraps at 40


def test_ctrl_c_typed_behind_the_enter_of_a_paste_stops_the_message():
    # Under load a long paste and its Enter take seconds to be taken in; a Ctrl+C typed
    # meanwhile is read as a key behind the Enter. It must stop the message, not be lost.
    from prompt_toolkit import PromptSession
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from chatcli.repl.loop import stopped_before_sent

    with create_pipe_input() as pipe:
        session = PromptSession(input=pipe, output=DummyOutput())
        pipe.send_text("a long paste\r\x03next")
        assert session.prompt() == "a long paste"
        assert stopped_before_sent(session) is True
        pipe.send_text("\r")
        assert session.prompt() == "next"  # what followed the Ctrl+C is kept
        pipe.send_text("more\r")
        assert stopped_before_sent(session) is False
        assert session.prompt() == "more"


@pytest.mark.parametrize("text, said", [
    ("What is 2+2?", "Stopped before it was answered; the message is not in the conversation"),
    ("/show info", "Interrupted."),
])
def test_ctrl_c_between_the_prompt_and_the_answer_says_what_happened(state, monkeypatch,
                                                                      text, said):
    """A Ctrl+C that lands after the prompt returned but before the answer began (no handler
    of ours yet: a plain KeyboardInterrupt) says what it did to a message, and the message is
    not in the conversation."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from chatcli.repl import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.ReplState, "ask", interrupted)
    monkeypatch.setattr(loop.REGISTRY, "dispatch", interrupted)
    before = list(state.session.messages)
    with create_pipe_input() as pipe:
        pipe.send_text(text + "\r")
        pipe.close()
        loop._loop(state, PromptSession(input=pipe, output=DummyOutput()))
    assert said in state.stdout.getvalue()
    assert state.session.messages == before


def _loop_on(state, *lines):
    """Run the REPL's loop on typed lines (a pipe, not a terminal), to their end."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from chatcli.repl import loop

    with create_pipe_input() as pipe:
        pipe.send_text("".join(line + "\r" for line in lines))
        pipe.close()
        loop._loop(state, PromptSession(input=pipe, output=DummyOutput()))


def test_ctrl_c_after_the_message_was_taken_in_but_before_the_answer_takes_it_back(
        state, monkeypatch):
    """The session takes the message in before the answer streams; a KeyboardInterrupt in
    between left it in the conversation, unanswered, though the REPL said it was not."""
    from chatcli.repl import state as state_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    run(state, "kept question")
    before = list(state.session.messages)
    monkeypatch.setattr(state_mod, "stream_answer", interrupted)
    _loop_on(state, "doomed question")
    assert "Stopped before it was answered; the message is not in the conversation" in \
        " ".join(state.stdout.getvalue().split())
    assert state.session.messages == before
    monkeypatch.undo()
    assert "Nothing to undo" in run(state, "/undo")  # not the kept exchange


def test_ctrl_c_just_after_the_answer_does_not_say_it_stopped_anything(state, monkeypatch):
    from chatcli.repl import state as state_mod

    answer = state_mod.stream_answer

    def answered_then_interrupted(*args, **kwargs):
        answer(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(state_mod, "stream_answer", answered_then_interrupted)
    _loop_on(state, "a question")
    assert "first answer" in state.stdout.getvalue()
    assert "Stopped" not in state.stdout.getvalue()
    assert [m["role"] for m in state.session.messages] == ["user", "assistant"]


def test_a_ctrl_c_behind_more_than_a_read_of_typeahead_still_stops_the_message():
    from prompt_toolkit import PromptSession
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from chatcli.repl.loop import stopped_before_sent

    with create_pipe_input() as pipe:
        session = PromptSession(input=pipe, output=DummyOutput())
        pipe.send_text("question\r" + "x" * 5000 + "\x03")
        assert session.prompt() == "question"
        assert stopped_before_sent(session) is True


def test_around_the_prompt_ctrl_c_is_a_byte_and_no_mode_change_drops_typed_keys():
    """The mode the REPL keeps around the prompt: Ctrl+C is no signal (prompt-toolkit lets go
    of raw mode before prompt() returns, and would lose it) but the byte \\x03, and turning
    the signal on and off again keeps what was typed."""
    termios = pytest.importorskip("termios")
    from chatcli.repl.typeahead import held_keys

    master, slave = os.openpty()
    try:
        with open(slave, "rb", buffering=0, closefd=False) as tty:
            with held_keys(tty, signals=False):
                assert not termios.tcgetattr(slave)[3] & termios.ISIG
                os.write(master, b"typed\x03")
                with held_keys(tty):
                    assert termios.tcgetattr(slave)[3] & termios.ISIG
                    os.write(master, b"more")
                assert not termios.tcgetattr(slave)[3] & termios.ISIG
                time.sleep(0.05)
                assert os.read(slave, 100) == b"typed\x03more"
    finally:
        os.close(master)
        os.close(slave)
