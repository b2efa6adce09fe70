"""The REPL in a real pseudo-terminal, with the real default model (pexpect)."""

import json
import os
import stat
import sys
import time

import pexpect

PROMPT_READY = "Send a message"  # the placeholder: shown only when a fresh prompt is empty


def spawn(env, *args, rows=30, cols=100):
    env = {**env, "TERM": "xterm-256color"}
    child = pexpect.spawn(
        sys.executable, ["-m", "chatcli", "run", "smollm2:135m", "--temperature", "0",
                         "--seed", "42", *args],
        env=env, encoding="utf-8", timeout=60, dimensions=(rows, cols),
    )
    child.expect(PROMPT_READY)
    return child


def send_line(child, text):
    child.send(text + "\r")  # a terminal's Enter is CR; LF (Ctrl+J) inserts a newline


def ask(child, text):
    send_line(child, text)
    child.expect(PROMPT_READY, timeout=120)


def test_scripted_session(cli_env, tmp_path, chatcli_home):
    saved = tmp_path / "chat.json"
    child = spawn(cli_env, "--num-predict", "120")
    send_line(child, "/set system You are a helpful assistant. Answer briefly.")
    child.expect("Set system message.")
    ask(child, "What is the capital of France?")
    ask(child, "And of Italy?")
    send_line(child, f"/save {saved}")
    child.expect("Saved 4 messages")
    first = json.loads(saved.read_text())
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant", "user",
                                                       "assistant"]
    assert first["options"] == {"temperature": 0.0, "seed": 42, "num_predict": 120}
    assert all(m["content"].strip() for m in first["messages"])

    send_line(child, "/clear")
    child.expect("Cleared session context.")
    send_line(child, f"/load {saved}")
    child.expect("Loaded 4 messages")

    # Ctrl+C during a long answer stops it quickly and returns to the prompt.
    send_line(child, "/set parameter num_predict 2000")
    child.expect("num_predict")
    send_line(child, "Write a very long story about a dragon, at least twenty paragraphs.")
    time.sleep(2.5)
    t0 = time.monotonic()
    child.send("\x03")
    child.expect("Stopped.", timeout=10)
    child.expect(PROMPT_READY, timeout=10)
    assert time.monotonic() - t0 < 1.5
    send_line(child, "/set parameter num_predict 60")
    child.expect("num_predict")

    ask(child, "Thanks. Now say OK.")
    # A multi-line message with triple quotes: Enter inside the block inserts a newline.
    child.send('"""Line one\r')
    child.send('line two"""\r')
    child.expect(PROMPT_READY, timeout=120)
    # Tab completion of a command and a sub-command.
    for keys in ["/sh", "\t", " model", "\t"]:
        child.send(keys)
        time.sleep(0.3)  # completion runs asynchronously; type like a person
    child.send("\r")
    child.expect("FROM ")
    send_line(child, f"/save {saved}")
    child.expect("Saved 10 messages")
    send_line(child, "/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    data = json.loads(saved.read_text())
    msgs = data["messages"]
    assert msgs[0] == {"role": "system",
                       "content": "You are a helpful assistant. Answer briefly."}
    roles = [m["role"] for m in msgs[1:]]
    assert roles == ["user", "assistant"] * 5  # well-formed after the interruption
    story = msgs[6]
    assert story["role"] == "assistant" and len(story["content"]) > 20  # the partial answer
    assert msgs[9]["content"] == "Line one\nline two"
    assert data["options"]["num_predict"] == 60

    history = chatcli_home / "data" / "history"
    assert stat.S_IMODE(os.stat(history).st_mode) == 0o600
    text = history.read_text()
    assert '+"""Line one\n+line two"""\n' in text  # one multi-line entry


def test_ctrl_d_exits_and_ctrl_c_clears_line(cli_env, tmp_path):
    child = spawn(cli_env, "--num-predict", "40")
    child.send("this line is abandoned")
    child.send("\x03")  # Ctrl+C at the prompt clears the line
    child.expect(PROMPT_READY)
    path = tmp_path / "empty.json"
    send_line(child, f"/save {path}")
    child.expect("Saved 0 messages")
    child.send("\x04")  # Ctrl+D on an empty line exits
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_bad_command_and_bad_parameter_keep_the_repl_going(cli_env):
    child = spawn(cli_env, "--num-predict", "40")
    send_line(child, "/frobnicate")
    child.expect("unknown command '/frobnicate'")
    send_line(child, "/set parameter temperature hot")
    child.expect("must be a number")
    send_line(child, "/load /nonexistent/file.json")
    child.expect("no such file")
    ask(child, "Say hi.")
    send_line(child, "/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_input_keys_history_and_paste(cli_env, tmp_path, chatcli_home):
    child = spawn(cli_env, "--num-predict", "3")
    child.send("alt first\x1b\r")  # Alt+Enter inserts a newline
    child.send("alt second\r")
    child.expect(PROMPT_READY)
    child.send("ctrl first\nctrl second\r")  # Ctrl+J (LF) inserts a newline
    child.expect(PROMPT_READY)
    child.send("\x1b[200~pasted one\npasted two\npasted three\x1b[201~")  # bracketed paste
    time.sleep(0.3)
    child.send("\r")
    child.expect(PROMPT_READY)
    path = tmp_path / "keys.json"
    send_line(child, f"/save {path}")
    child.expect("Saved 6 messages")
    # Up arrow recalls the last entry (the /save), Ctrl+R searches older ones.
    child.send("\x1b[A")
    time.sleep(0.3)
    child.send("\r")
    child.expect("Saved 6 messages")
    child.send("\x12ctrl first")  # Ctrl+R, then type the search
    time.sleep(0.5)
    child.send("\r")  # accept the found entry in the search
    time.sleep(0.3)
    child.send("\r")  # and send it
    child.expect(PROMPT_READY)
    send_line(child, "/set nohistory")
    child.expect("nohistory")
    send_line(child, "secret words")
    child.expect(PROMPT_READY)
    send_line(child, f"/save {path}")
    child.expect("Saved 10 messages")
    send_line(child, "/bye")
    child.expect(pexpect.EOF)

    users = [m["content"] for m in json.loads(path.read_text())["messages"]
             if m["role"] == "user"]
    assert users[:3] == ["alt first\nalt second", "ctrl first\nctrl second",
                         "pasted one\npasted two\npasted three"]
    assert users[3] == "ctrl first\nctrl second"  # found by Ctrl+R
    assert users[4] == "secret words"
    history = (chatcli_home / "data" / "history").read_text()
    assert "+pasted one\n+pasted two\n+pasted three\n" in history
    assert "secret words" not in history  # /set nohistory stopped saving
