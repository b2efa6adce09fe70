"""Session bookkeeping with a scripted client: history stays well-formed whatever happens."""

import json
import threading

import pytest
from scripted import ScriptedClient

from chatcli.client.conversation import ConversationFileError
from chatcli.client.session import Session
from chatcli.core.errors import InvalidOptionError, ModelNotFoundError, RequestError


def drain(events):
    return list(events)


def roles(session):
    return [m["role"] for m in session.messages]


def test_ask_appends_user_and_assistant():
    s = Session(ScriptedClient(["Paris is the capital."]), "scripted", system="Be brief.")
    drain(s.ask("Capital of France?"))
    assert roles(s) == ["system", "user", "assistant"]
    assert s.messages[-1]["content"] == "Paris is the capital."
    assert s.last_done.done_reason == "stop"


def test_cancel_keeps_partial_answer():
    client = ScriptedClient(["one two three four five"])
    client.cancel_after = 2
    s = Session(client, "scripted")
    cancel = threading.Event()
    events = drain(s.ask("count", cancel))
    assert events[-1].done_reason == "cancelled"
    assert roles(s) == ["user", "assistant"]
    assert s.messages[-1]["content"] == "one two"


def test_failure_before_any_text_takes_the_question_back():
    s = Session(ScriptedClient(["first", RuntimeError("boom")]), "scripted")
    drain(s.ask("q1"))
    with pytest.raises(RuntimeError):
        drain(s.ask("q2"))
    assert roles(s) == ["user", "assistant"]  # never two user messages in a row


def test_retry_replaces_last_answer():
    client = ScriptedClient(["first answer", "second answer"])
    s = Session(client, "scripted")
    drain(s.ask("q"))
    drain(s.retry())
    assert roles(s) == ["user", "assistant"]
    assert s.messages[-1]["content"] == "second answer"
    assert [m["role"] for m in client.calls[1]["messages"]] == ["user"]


def test_retry_without_question_is_an_error():
    with pytest.raises(RequestError, match="nothing to retry"):
        drain(Session(ScriptedClient(), "scripted").retry())


def test_undo_and_clear_keep_system():
    s = Session(ScriptedClient(["a", "b"]), "scripted", system="sys")
    drain(s.ask("q1"))
    drain(s.ask("q2"))
    assert s.undo() and roles(s) == ["system", "user", "assistant"]
    s.clear()
    assert roles(s) == ["system"] and s.system == "sys"
    assert not s.undo()


def test_set_option_validates():
    s = Session(ScriptedClient(), "scripted")
    s.set_option("temperature", 0.2)
    assert s.options == {"temperature": 0.2}
    with pytest.raises(InvalidOptionError):
        s.set_option("temperature", -3)


def test_save_load_round_trip(tmp_path):
    s = Session(ScriptedClient(["hi there"]), "scripted", system="sys",
                options={"temperature": 0, "seed": 1})
    drain(s.ask("hello"))
    path = tmp_path / "conv.json"
    s.save(path)
    data = json.loads(path.read_text())
    assert data["model"] == "scripted" and data["options"] == {"temperature": 0.0, "seed": 1}
    assert data["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
    ]
    other = Session(ScriptedClient(), "other")
    other.load(path)
    assert other.messages == s.messages and other.options == s.options
    assert other.model == "scripted"
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    ('{"messages": {}}', "must be an array"),
    ('{"messages": [{"role": "wizard", "content": "x"}]}', "invalid role"),
    ('{"messages": [{"role": "user", "content": 5}]}', "must be a string"),
    ('{"messages": [], "options": {"temperature": "hot"}}', "temperature"),
    ("[]", "JSON object"),
])
def test_malformed_file_leaves_conversation_untouched(tmp_path, content, fragment):
    s = Session(ScriptedClient(["a"]), "scripted", system="sys")
    drain(s.ask("q"))
    before = [dict(m) for m in s.messages]
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(ConversationFileError, match=fragment):
        s.load(bad)
    assert s.messages == before


def test_save_over_existing_file_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "conv.json"
    path.write_text('{"messages": []}')
    s = Session(ScriptedClient(["a"]), "scripted")
    drain(s.ask("q"))
    import chatcli.core.fileio as fileio

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "fsync", boom)
    with pytest.raises(OSError):
        s.save(path)
    assert path.read_text() == '{"messages": []}'  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["conv.json"]


def test_switch_model_keeps_conversation():
    s = Session(ScriptedClient(["a"]), "scripted")
    drain(s.ask("q"))
    assert s.switch_model("other") == "other"
    assert roles(s) == ["user", "assistant"]
    with pytest.raises(ModelNotFoundError):
        s.switch_model("nope")
    assert s.model == "other"
