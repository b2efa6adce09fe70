"""The conversation log (client/log.py): written after each exchange, searchable, continued
with -c, exported in the /save format, and never in the way of a chat."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess
import sys

import pytest

from chatcli.client import conversation
from chatcli.client.log import Log, Recorder, fts_query, log_path, logging_enabled
from chatcli.core.events import Done, Metrics

MODEL = "smollm2:135m"
DET = ["--temperature", "0", "--seed", "42", "--num-predict", "24"]


def chat(env, *args, stdin=""):
    return subprocess.run([sys.executable, "-m", "chatcli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)


def prompt_tokens(p):
    """The --verbose block's prompt eval count (it goes with the answer's output)."""
    return int(re.search(r"prompt eval count:\s+(\d+)", p.stdout + p.stderr).group(1))


def conv(*texts, model=MODEL, system=None):
    """A conversation of alternating user/assistant messages."""
    messages = [{"role": "system", "content": system}] if system else []
    for i, text in enumerate(texts):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return conversation.Conversation(model=model, messages=messages,
                                     options={"temperature": 0.0})


def done(n=7):
    return Done("stop", Metrics(total_duration=10, eval_count=n, prompt_eval_count=20))


# -- the store, without a model -----------------------------------------------------------


def test_recorder_appends_each_exchange_to_one_conversation():
    rec = Recorder()
    rec.record(conv("tell me about zebras", "Zebras are striped.", system="Be brief."), done())
    first = rec.conversation_id
    rec.record(conv("tell me about zebras", "Zebras are striped.", "and lions?", "Lions roar.",
                    system="Be brief."), done(3))
    assert rec.conversation_id == first
    logged = Log().get(first)
    assert [m["content"] for m in logged.conversation.messages] == [
        "Be brief.", "tell me about zebras", "Zebras are striped.", "and lions?", "Lions roar."]
    with sqlite3.connect(log_path()) as db:
        rows = db.execute("SELECT position, role, model, timings FROM messages"
                          " ORDER BY id").fetchall()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r[:2] for r in rows] == [(0, "user"), (1, "assistant"), (2, "user"), (3, "assistant")]
    assert json.loads(rows[3][3])["eval_count"] == 3 and rows[2][3] is None
    assert stat.S_IMODE(os.stat(log_path()).st_mode) == 0o600
    summary = Log().recent()[0]
    assert (summary.id, summary.turns, summary.first_words) == (first, 2, "tell me about zebras")
    assert Log().latest_id() == first


def test_a_chat_that_stops_extending_the_log_starts_a_new_conversation():
    rec = Recorder()
    rec.record(conv("q1", "a1", "q2", "a2"), done())
    first = rec.conversation_id
    rec.record(conv("q1", "a1", "q2 again", "a2 again"), done())  # /undo then a new question
    assert rec.conversation_id != first
    assert len(Log().get(first).conversation.messages) == 4  # nothing logged is lost
    assert [m["content"] for m in Log().get(rec.conversation_id).conversation.messages] == [
        "q1", "a1", "q2 again", "a2 again"]


def test_search_ranks_highlights_and_takes_syntax_literally():
    rec = Recorder()
    rec.record(conv("What is a platypus?", "A platypus is a mammal that lays eggs. Platypus!"),
               done())
    Recorder().record(conv("Name a bird", "A platypus is not a bird; an emu is."), done())
    hits = Log().search("platypus")
    assert len(hits) == 3
    assert hits[0].conversation_id == rec.conversation_id and hits[0].role == "assistant"
    assert "\x02platypus\x03" in hits[0].snippet.lower()
    for text in ['"', 'C++ AND (', "NEAR(a b", "a*", "col:x", "-x", "'"]:
        Log().search(text)  # never an FTS5 syntax error
    assert fts_query('say "hi"') == '"say" """hi"""'
    assert Log().search("emu")[0].role == "assistant"


def test_export_json_is_the_save_format(tmp_path):
    rec = Recorder()
    rec.record(conv("hello there", "hi!", system="Be kind."), done())
    logged = Log().get(rec.conversation_id[:5])  # a prefix is enough
    path = tmp_path / "c.json"
    path.write_text(logged.conversation.to_json())
    back = conversation.load(path)
    assert back.messages == [{"role": "system", "content": "Be kind."},
                             {"role": "user", "content": "hello there"},
                             {"role": "assistant", "content": "hi!"}]
    assert back.model == MODEL and back.options == {"temperature": 0.0}


def test_images_are_kept_as_paths_never_bytes():
    c = conv("look", "a cat")
    c.messages[0]["images"] = ["/tmp/cat.png", "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAf"]
    Recorder().record(c, done())
    with sqlite3.connect(log_path()) as db:
        (images,) = db.execute("SELECT images FROM messages WHERE role='user'").fetchone()
    assert json.loads(images) == ["/tmp/cat.png", None]


def test_a_broken_log_is_one_line_once_and_never_raises(capsys, monkeypatch):
    import chatcli.client.log as log_mod

    monkeypatch.setattr(log_mod, "_warned", [])
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(4096))
    rec = Recorder()
    rec.record(conv("q", "a"), done())
    rec.record(conv("q", "a", "q2", "a2"), done())
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not logging this chat" in err
    assert "file is not a database" in err


def test_a_locked_log_does_not_hold_up_the_chat(capsys, monkeypatch):
    import time

    import chatcli.client.log as log_mod

    monkeypatch.setattr(log_mod, "_warned", [])
    Recorder().record(conv("q", "a"), done())
    holder = sqlite3.connect(log_path(), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        Recorder().record(conv("other", "answer"), done())
        assert time.monotonic() - t0 < 3
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "database is locked" in capsys.readouterr().err


def test_logging_switches(monkeypatch):
    monkeypatch.delenv("CHATCLI_NOLOG", raising=False)
    assert logging_enabled(None) and not logging_enabled(False)
    monkeypatch.setenv("CHATCLI_NOLOG", "1")
    assert not logging_enabled(None)
    monkeypatch.setenv("CHATCLI_NOLOG", "0")
    assert logging_enabled(None)


# -- the command line, with the real model -----------------------------------------------


def test_one_shot_is_logged_continued_searched_exported_and_removed(cli_env, tmp_path):
    p = chat(cli_env, "run", MODEL, *DET, "--verbose", "What is the capital of France?")
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    first_prompt = prompt_tokens(p)
    cid = Log().latest_id()
    assert cid is not None

    # -c without a model: the conversation's model answers, with turn 1 in its prompt.
    p2 = chat(cli_env, "run", "-c", "--verbose", "And of Italy?")
    assert p2.returncode == 0 and p2.stdout.strip(), p2.stderr
    second_prompt = prompt_tokens(p2)
    assert second_prompt > first_prompt + 5
    logged = Log().get(cid)
    roles = [m["role"] for m in logged.conversation.messages]
    assert roles == ["user", "assistant", "user", "assistant"] and Log().latest_id() == cid
    assert logged.conversation.messages[0]["content"] == "What is the capital of France?"
    assert logged.conversation.options["seed"] == 42  # the options came along

    out = chat(cli_env, "log").stdout
    assert cid in out and "What is the capital of France?" in out and MODEL in out
    s = chat(cli_env, "log", "search", "France")
    assert s.returncode == 0 and s.stdout.startswith(cid) and "\x1b" not in s.stdout
    assert "\x1b" not in chat(cli_env, "log", "show", cid).stdout

    exported = tmp_path / "export.json"
    e = chat(cli_env, "log", "export", cid, "--format", "json", "-o", str(exported))
    assert e.returncode == 0, e.stderr
    assert json.loads(exported.read_text()) == json.loads(logged.conversation.to_json())
    md = chat(cli_env, "log", "export", cid, "--format", "markdown").stdout
    assert md.startswith(f"# Conversation {cid}") and "## Assistant" in md
    # The export loads like a /save file: a third turn sees the first two.
    p3 = chat(cli_env, "run", MODEL, "--load", str(exported), "--verbose", "--no-log",
              "--num-predict", "8", "And of Spain?")
    assert p3.returncode == 0, p3.stderr
    assert prompt_tokens(p3) > second_prompt

    r = chat(cli_env, "log", "rm", cid)
    assert r.returncode == 0 and cid in r.stdout
    assert cid not in chat(cli_env, "log").stdout
    assert chat(cli_env, "log", "search", "France").stdout == ""
    missing = chat(cli_env, "log", "show", cid)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1


def test_no_log_and_nolog_env_write_nothing(cli_env):
    p = chat(cli_env, "run", MODEL, *DET, "--no-log", "Say hi.")
    assert p.returncode == 0 and p.stdout.strip()
    p = chat({**cli_env, "CHATCLI_NOLOG": "1"}, "run", MODEL, *DET, "Say hi.")
    assert p.returncode == 0 and p.stdout.strip()
    assert not log_path().exists()
    c = chat(cli_env, "run", "-c", "again?")
    assert c.returncode == 1 and "no logged conversation" in c.stderr


def test_a_corrupt_log_gives_one_line_and_the_answer_still_comes(cli_env):
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a database" * 300)
    p = chat(cli_env, "run", MODEL, *DET, "What is the capital of France?")
    assert p.returncode == 0 and p.stdout.strip()
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not logging this chat" in lines[0], p.stderr
    bad = chat(cli_env, "log")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1


def test_api_logs_only_when_asked():
    import chatcli

    messages = [{"role": "user", "content": "Name a colour of the sky."}]
    opts = {"temperature": 0, "seed": 42, "num_predict": 8}
    chatcli.chat(MODEL, messages, options=opts)
    assert not log_path().exists()
    r = chatcli.chat(MODEL, messages, options=opts, log=True)
    logged = Log().get(Log().latest_id())
    assert logged.conversation.messages[-1]["content"] == r.message.content
    assert Log().search("colour")


def test_repl_is_logged_and_resumable_in_a_pty(cli_env):
    pexpect = pytest.importorskip("pexpect")
    from test_repl_pty import PROMPT_READY, ask, send_line, spawn

    child = spawn(cli_env, "--num-predict", "24")
    ask(child, "Tell me about the pyramids of Giza.")
    ask(child, "Who built them?")
    send_line(child, "/bye")
    child.expect(pexpect.EOF)
    child.close()
    cid = Log().latest_id()
    assert cid and [m["role"] for m in Log().get(cid).conversation.messages] == [
        "user", "assistant", "user", "assistant"]
    assert Log().search("pyramids")[0].conversation_id == cid

    child = spawn(cli_env, "--num-predict", "24")
    send_line(child, "/history")
    child.expect(cid)
    send_line(child, f"/resume {cid}")
    child.expect("Resumed conversation")
    child.expect("4 messages")
    child.expect(PROMPT_READY)
    ask(child, "When?")
    send_line(child, "/bye")
    child.expect(pexpect.EOF)
    child.close()
    messages = Log().get(cid).conversation.messages
    assert len(messages) == 6 and messages[4]["content"] == "When?"


def test_a_finished_exchange_survives_the_process_being_killed(cli_env):
    """Each exchange is committed when it finishes: a REPL killed with SIGKILL right after an
    answer (no /bye, no clean-up) leaves that exchange in the log, readable."""
    pexpect = pytest.importorskip("pexpect")
    import signal

    from test_repl_pty import ask, spawn

    child = spawn(cli_env, "--num-predict", "24")
    ask(child, "Name one colour of the rainbow.")  # returns when the next prompt is up
    os.kill(child.pid, signal.SIGKILL)
    child.expect(pexpect.EOF)
    child.close()
    cid = Log().latest_id()
    assert cid is not None
    messages = Log().get(cid).conversation.messages
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "Name one colour of the rainbow." and messages[1]["content"]
