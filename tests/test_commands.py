"""Slash commands through the real registry and REPL state, with a scripted client."""

import base64
import io
import json

import pytest
from prompt_toolkit.document import Document
from scripted import ScriptedClient

from chatcli.client.session import Session
from chatcli.core.errors import InvalidOptionError, RequestError
from chatcli.core.paths import history_file
from chatcli.repl.commands import osc52, path_candidates, strip_triple_quotes
from chatcli.repl.loop import (
    RegistryCompleter,
    ReplState,
    Settings,
    _make_history,
    multiline_open,
    one_iteration,
)
from chatcli.repl.registry import CommandError, CommandNotFound
from chatcli.repl.state import compose_message


class Recorder:
    """A renderer that records what it was asked to show."""

    def __init__(self):
        self.lines, self.text, self.notes, self.errors, self.stats_shown = [], [], [], [], []

    def begin(self): pass
    def end(self): pass
    def thinking(self, t): pass
    def tool_call(self, n, a): pass
    def content(self, t): self.text.append(t)
    def note(self, t): self.notes.append(t)
    def stats(self, m): self.stats_shown.append(m)
    def info(self, t): self.lines.append(t)
    def error(self, t): self.errors.append(t)


@pytest.fixture
def state():
    client = ScriptedClient(["first answer", "second answer", "third"])
    st = ReplState(Session(client, "scripted"), Settings(), stdout=io.StringIO())
    st._out = Recorder()
    st.settings_changed = lambda: None
    return st


def run(state, line):
    one_iteration(state, line)
    return state._out


def test_message_round_trip_and_verbose(state):
    run(state, "/set verbose")
    out = run(state, "hello")
    assert "".join(out.text) == "first answer"
    assert len(out.stats_shown) == 1
    assert [m["role"] for m in state.session.messages] == ["user", "assistant"]


def test_set_system_and_multiline_system(state):
    run(state, '/set system """You are\nterse."""')
    assert state.session.system == "You are\nterse."
    run(state, "/set system Be kind.")
    assert state.session.system == "Be kind."
    run(state, "/show system")
    assert state._out.lines[-1] == "Be kind."


def test_set_parameter_is_validated(state):
    run(state, "/set parameter temperature 0.3")
    assert state.session.options["temperature"] == 0.3
    with pytest.raises(InvalidOptionError):
        run(state, "/set parameter temperature hot")
    with pytest.raises(InvalidOptionError, match="unknown option"):
        run(state, "/set parameter warmth 1")
    with pytest.raises(CommandError, match="usage"):
        run(state, "/set parameter temperature")
    with pytest.raises(CommandError, match="unknown setting"):
        run(state, "/set colour blue")


def test_display_settings(state):
    for sub, attr, value in [("plain", "markdown", False), ("markdown", "markdown", True),
                             ("nowordwrap", "wordwrap", False), ("nohistory", "history", False),
                             ("hidethinking", "hide_thinking", True), ("quiet", "verbose", False)]:
        run(state, f"/set {sub}")
        assert getattr(state.settings, attr) is value


def test_nohistory_stops_writing_the_history_file():
    # The real settings_changed and the real history file: what /set nohistory promises is
    # that nothing typed afterwards reaches the disk.
    state = ReplState(Session(ScriptedClient(), "scripted"), Settings(), stdout=io.StringIO())
    state.history = history = _make_history(state.settings.history)
    history.append_string("before")
    one_iteration(state, "/set nohistory")
    history.append_string("secret")
    one_iteration(state, "/set history")
    history.append_string("after")
    written = history_file().read_text()
    assert "before" in written and "after" in written
    assert "secret" not in written


def test_format_and_think(state, tmp_path):
    run(state, "/set format json")
    assert state.session.format == "json"
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "object"}')
    run(state, f"/set format {schema}")
    assert state.session.format == {"type": "object"}
    run(state, "/set noformat")
    assert state.session.format is None
    with pytest.raises(RequestError, match="no such file"):
        run(state, f"/set format {tmp_path / 'missing.json'}")
    assert state.session.format is None  # a bad file leaves the format as it was
    run(state, "/set nothink")
    assert state.session.think is False


def test_show_commands(state):
    run(state, "/show info")  # printed verbatim, never wrapped
    assert "architecture        llama" in state.stdout.getvalue()
    run(state, "/show parameters")
    assert "temperature" in state._out.lines[-1]
    run(state, "/show modelfile")
    assert "\nFROM /models/x.gguf\n" in state.stdout.getvalue()
    run(state, "/show license")
    assert state._out.lines[-1] == "MIT"
    with pytest.raises(CommandError):
        run(state, "/show everything")


def test_clear_retry_undo(state):
    run(state, "/set system sys")
    run(state, "q1")
    run(state, "/retry")
    assert state.session.messages[-1]["content"] == "second answer"
    run(state, "/undo")
    assert [m["role"] for m in state.session.messages] == ["system"]
    run(state, "q2")
    run(state, "/clear")
    assert [m["role"] for m in state.session.messages] == ["system"]


def test_save_and_load(state, tmp_path):
    run(state, "q1")
    path = tmp_path / "c.json"
    run(state, f"/save {path}")
    assert json.loads(path.read_text())["messages"][1]["content"] == "first answer"
    run(state, "/clear")
    run(state, f"/load {path}")
    assert len(state.session.messages) == 2
    with pytest.raises(CommandError, match="usage"):
        run(state, "/save")


def test_read_adds_file_to_next_message(state, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("remember the milk")
    run(state, f"/read {f}")
    run(state, "summarize")
    sent = state.session.client.calls[-1]["messages"][-1]["content"]
    assert "remember the milk" in sent and sent.endswith("summarize")
    assert state.pending_files == []
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"\0\1\2")
    with pytest.raises(CommandError, match="binary"):
        run(state, f"/read {binary}")


def test_copy_uses_osc52(state):
    with pytest.raises(CommandError, match="no answer"):
        run(state, "/copy")
    run(state, "q")
    run(state, "/copy")
    written = state.stdout.getvalue()
    assert written == osc52("first answer")
    payload = written[len("\x1b]52;c;"):-1]
    assert base64.b64decode(payload).decode() == "first answer"


def test_model_switch(state):
    run(state, "/model other")
    assert state.session.model == "other"
    from chatcli.core.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        run(state, "/model nope")


def test_bye_and_exit_raise_eof(state):
    with pytest.raises(EOFError):
        run(state, "/bye")
    with pytest.raises(EOFError):
        run(state, "/exit")


def test_unknown_command(state):
    with pytest.raises(CommandNotFound):
        run(state, "/frobnicate")


def test_help(state):
    run(state, "/?")
    assert "/set" in state._out.lines[-1]
    run(state, "/help show")
    assert "/show modelfile" in state._out.lines[-1]


def complete(state, text):
    doc = Document(text, len(text))
    return [c.text for c in RegistryCompleter(state).get_completions(doc, None)]


def test_completion_from_registry(state, tmp_path, monkeypatch):
    assert "/set" in complete(state, "/se") and "/show" in complete(state, "/s")
    assert complete(state, "/set para") == ["parameter"]
    assert "temperature" in complete(state, "/set parameter tem")
    assert complete(state, "/show mod") == ["modelfile"]
    assert "show" in complete(state, "/help sh")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "saved-chat.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    assert complete(state, "/load sav") == ["saved-chat.json"]
    assert "sub/" in path_candidates("")
    assert complete(state, "hello /se") == []  # only at the start of the input


def test_multiline_helpers():
    assert multiline_open('"""start')
    assert not multiline_open('"""start\nend"""')
    assert multiline_open('/set system """You are')
    assert strip_triple_quotes('"""line one\nline two"""') == "line one\nline two"
    assert strip_triple_quotes("plain") == "plain"
    assert compose_message("q", [("a.txt", "A")]) == "Content of a.txt:\n```\nA\n```\n\nq"


def test_trimmed_context_is_noted(state):
    from chatcli.core.events import ContentDelta, Done, Trimmed

    def chat(model, messages, options=None, **kw):
        yield Trimmed(dropped=4, kept=3)
        yield ContentDelta("fine")
        yield Done("stop")

    state.session.client.chat = chat
    run(state, "q")
    assert any("Dropped 4 old messages" in n for n in state._out.notes)


def test_default_model_from_config_and_env(chatcli_home, monkeypatch):
    from chatcli.core.config import default_model

    assert default_model() == "smollm2:135m"
    (chatcli_home / "config").mkdir()
    (chatcli_home / "config" / "config.json").write_text('{"default_model": "llama3.2"}')
    assert default_model() == "llama3.2"
    monkeypatch.setenv("CHATCLI_MODEL", "qwen3:0.6b")
    assert default_model() == "qwen3:0.6b"
