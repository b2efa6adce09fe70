"""Saved KV-cache states (engine/states.py): a resumed conversation does not re-read its history.

The real bundled model, greedy: a conversation saved by one engine is resumed by a fresh one
(the model unloaded in between, as in a new process), which evaluates only the new turn and
answers as the first engine would have; a state that does not fit (other num_ctx, other
tokens, a corrupt file) is ignored and the history is read as before.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import DET
from scripted import ScriptedClient

from chatcli.client.local import LocalClient
from chatcli.client.remote import RemoteClient
from chatcli.client.session import Session
from chatcli.core.events import ContentDelta, Done
from chatcli.engine import states
from chatcli.engine.loaded import CACHE

MODEL = "smollm2:135m"
OPTIONS = {**DET, "num_ctx": 2048, "num_predict": 12}
FIRST = ("Here is a short note about my garden. I grow tomatoes, beans, basil and three kinds "
         "of lettuce, and every summer the snails eat half of the lettuce. What should I plant "
         "next to the lettuce?")
SECOND = "And what about the basil?"
THIRD = "What is the capital of France?"


@pytest.fixture(autouse=True)
def unloaded():
    CACHE.unload_all()
    yield
    CACHE.unload_all()


def ask(session: Session, text: str) -> tuple[str, Done]:
    events = list(session.ask(text))
    done = events[-1]
    assert isinstance(done, Done)
    return "".join(e.text for e in events if isinstance(e, ContentDelta)), done


def two_turns(tmp_path: Path, **options) -> tuple[Session, Path]:
    """A 2-turn conversation, saved to a file (which saves its state)."""
    session = Session(LocalClient(), MODEL, options={**OPTIONS, **options})
    ask(session, FIRST)
    ask(session, SECOND)
    path = tmp_path / "conv.json"
    session.save(path)
    return session, path


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path, str]:
    """Once per module: the 2-turn conversation's file, its state file, and the third answer
    of the engine that read the history itself."""
    where = tmp_path_factory.mktemp("saved")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHATCLI_HOME", str(where / "home"))
        CACHE.unload_all()
        session, path = two_turns(where)
        (state,) = states.states_dir().glob("*.kv")
        live, _ = ask(session, THIRD)
        CACHE.unload_all()
    return path, state, live


@pytest.fixture
def conv(saved) -> Path:
    """The saved conversation, its state copied into this test's data directory."""
    path, state, _ = saved
    states.states_dir().mkdir(parents=True)
    shutil.copy(state, states.states_dir() / state.name)
    return path


def resume(path: Path, **options) -> tuple[str, Done]:
    """A fresh engine (the model unloaded first) answers the third turn of the saved file."""
    CACHE.unload_all()
    session = Session(LocalClient(), MODEL)
    session.load(path)
    session.options.update(options)
    return ask(session, THIRD)


def re_evaluated(path: Path, monkeypatch, tmp_path: Path, **options) -> tuple[str, Done]:
    """The third turn answered without any stored state (an empty data directory)."""
    monkeypatch.setenv("CHATCLI_HOME", str(tmp_path / "elsewhere"))
    text, done = resume(path, **options)
    assert done.metrics.prompt_cached_count == 0
    return text, done


def test_saving_a_conversation_saves_its_state(saved, tmp_path):
    path, state, _ = saved
    assert state.parent.name == "states" and state.parent.parent.name == "data"
    assert state.stat().st_size > 0


def test_resume_evaluates_only_the_new_turn(conv, saved, tmp_path, monkeypatch):
    path, live = conv, saved[2]  # live: what the engine that read the history answered
    text, done = resume(path)
    m = done.metrics
    history = m.prompt_eval_count - m.prompt_cached_count
    assert m.prompt_cached_count > states.MIN_GAIN
    assert history < 30, f"{history} tokens were evaluated: the history was read again"
    assert text == live

    again, done2 = re_evaluated(path, monkeypatch, tmp_path)
    assert done2.metrics.prompt_eval_count == m.prompt_eval_count
    assert again == text


def test_state_of_another_context_size_is_ignored(conv, tmp_path, monkeypatch):
    path = conv
    text, done = resume(path, num_ctx=1024)
    assert done.metrics.prompt_cached_count == 0
    assert text == re_evaluated(path, monkeypatch, tmp_path, num_ctx=1024)[0]


def test_state_of_other_tokens_is_ignored(conv, tmp_path, monkeypatch):
    path = conv
    conv = Session(ScriptedClient(), MODEL)
    conv.load(path)
    conv.messages[0]["content"] = FIRST.replace("tomatoes", "potatoes and carrots")
    changed = tmp_path / "changed.json"
    conv.save(changed)
    text, done = resume(changed)
    assert done.metrics.prompt_cached_count < states.MIN_GAIN  # at most the template's header
    assert text == re_evaluated(changed, monkeypatch, tmp_path)[0]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_state_is_ignored(conv, tmp_path, monkeypatch, damage):
    path = conv
    (state,) = states.states_dir().glob("*.kv")
    data = bytearray(state.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[-100:]
    state.write_bytes(bytes(data))
    text, done = resume(path)
    assert done.metrics.prompt_cached_count == 0
    assert not state.exists()  # removed: it can never load
    assert text == re_evaluated(path, monkeypatch, tmp_path)[0]


def test_store_too_small_for_the_state_writes_nothing(saved, tmp_path, monkeypatch):
    monkeypatch.setenv(states.MAX_MB_ENV, "0.5")  # a state here is ~2 MB
    session = Session(LocalClient(), MODEL)
    session.load(saved[0])
    ask(session, THIRD)
    session.save(tmp_path / "c.json")
    assert states.StateStore().usage() == (0, 0)


def test_the_save_after_an_answer_does_not_hold_up_the_prompt():
    """After each logged answer the state is saved on a thread holding the model's lock: the
    caller gets control back at once (the model here is busy: the save cannot have run), and
    the state is there once the save is done (the process waits for it at exit)."""
    from chatcli.client.local import wait_for_saves

    session = Session(LocalClient(), MODEL, options=OPTIONS)
    ask(session, FIRST)
    (entry,) = CACHE.loaded()
    with entry.lock:  # an answer in progress, say
        assert session.client.save_state(MODEL, background=True) is True
        assert states.StateStore().usage() == (0, 0)
    wait_for_saves()
    assert states.StateStore().usage()[0] == 1


def test_remote_and_scripted_clients_save_no_state(tmp_path):
    for client in (RemoteClient("http://127.0.0.1:9"), ScriptedClient(["hello there"])):
        session = Session(client, MODEL)
        session.messages = [{"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "hello"}]
        session.save(tmp_path / "c.json")
        assert client.save_state(MODEL) is False
    assert not states.states_dir().exists()


# -- the store alone (no model) ------------------------------------------------------------


def fake_state(n: int, fill: int = 1) -> bytes:
    return bytes([fill]) * n


def test_store_keeps_the_newest_within_its_bound(tmp_path):
    store = states.StateStore(tmp_path)
    bound = states.Limits(count=3, bytes=10**9)
    for i in range(6):
        store.save("L", [i, 1, 2, 3], fake_state(1000), bound)
    assert store.usage()[0] == 3
    assert store.best("L", [5, 1, 2, 3, 9], 0) is not None  # the newest is kept
    assert store.best("L", [0, 1, 2, 3, 9], 0) is None  # the oldest is gone

    small = states.Limits(count=100, bytes=2500)
    store.save("L", [7, 1], fake_state(1000), small)
    count, size = store.usage()
    assert size <= 2500 and count == 2


def test_store_finds_the_longest_prefix_and_drops_covered_states(tmp_path):
    store = states.StateStore(tmp_path)
    bound = states.Limits(count=10, bytes=10**9)
    store.save("L", [1, 2, 3], fake_state(10), bound)
    store.save("L", [1, 2, 9, 9], fake_state(10), bound)
    store.save("other", [1, 2, 3, 4, 5], fake_state(10), bound)
    found = store.best("L", [1, 2, 3, 4], 0)
    assert found is not None and found[1] == 3
    assert store.best("L", [1, 2, 3, 4], 3) is None  # nothing longer than 3
    store.save("L", [1, 2, 3, 4, 5, 6], fake_state(10), bound)  # extends [1, 2, 3]
    assert store.usage()[0] == 3
    found = store.best("L", [1, 2, 3, 4, 5, 6, 7], 0)
    assert found is not None and found[1] == 6
    data = store.read_state(found[0])
    assert data is not None and bytes(data) == fake_state(10)


def test_limits_from_the_environment(monkeypatch):
    monkeypatch.delenv(states.MAX_MB_ENV, raising=False)
    monkeypatch.delenv(states.MAX_COUNT_ENV, raising=False)
    assert states.limits() == states.Limits(20, 512 << 20)
    monkeypatch.setenv(states.MAX_MB_ENV, "64")
    monkeypatch.setenv(states.MAX_COUNT_ENV, "5")
    assert states.limits() == states.Limits(5, 64 << 20)
    monkeypatch.setenv(states.MAX_MB_ENV, "0")
    assert not states.limits().enabled
    monkeypatch.setenv(states.MAX_MB_ENV, "lots")
    assert states.limits().bytes == 512 << 20

