"""The conversation log: every finished exchange in a SQLite database, searchable.

``data_dir()/log.db`` (stdlib ``sqlite3``, WAL mode, mode 0600) holds one row per message
(with the model, options and the answer's timings) and one per conversation (its model and
system prompt), with an FTS5 index over the messages' text kept in step by triggers.

Writes happen once per exchange, after the answer, each in its own committed transaction: a
finished exchange survives the process being killed. A logged conversation only grows: when the
chat stops being a continuation of it (``/undo``, ``/retry``, ``/clear``, ``/load``), the next
exchange starts a new logged conversation that holds the whole chat as it then is.

A database that cannot be used (locked by another process, or not a database at all) never
stops a chat: the recorder says so in one line on stderr, once per process, and goes on
without it. The ``chat log`` commands, which exist to read it, raise ``LogError`` instead.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chatcli.client.conversation import Conversation, clean_message
from chatcli.core.errors import ChatCliError
from chatcli.core.events import Done
from chatcli.core.paths import data_dir

# A lock held by another chat is waited for this long, then the exchange is not logged: the
# chat never waits on its log for longer than a blink.
BUSY_TIMEOUT_S = 0.5

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    model TEXT NOT NULL,
    system TEXT,
    options TEXT NOT NULL DEFAULT '{}',
    format TEXT,
    think TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    thinking TEXT,
    tool_calls TEXT,
    tool_name TEXT,
    images TEXT,
    model TEXT,
    options TEXT,
    timings TEXT,
    created TEXT NOT NULL,
    UNIQUE (conversation_id, position)
);
CREATE INDEX IF NOT EXISTS conversations_updated ON conversations(updated);
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
    content, thinking, content='messages', content_rowid='id'
);
CREATE TRIGGER IF NOT EXISTS messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content, thinking)
    VALUES (new.id, new.content, coalesce(new.thinking, ''));
END;
CREATE TRIGGER IF NOT EXISTS messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content, thinking)
    VALUES ('delete', old.id, old.content, coalesce(old.thinking, ''));
END;
"""

# Highlight markers inside snippets: control characters no message text is left holding, so
# that a front end can turn them into bold or drop them.
MARK_START = "\x02"
MARK_END = "\x03"


class LogError(ChatCliError):
    """The conversation log cannot be read, or has no such conversation."""


def log_path() -> Path:
    """Where the log lives: ``log.db`` in the data directory."""
    return data_dir() / "log.db"


def logging_enabled(flag: bool | None = None) -> bool:
    """Whether chats are logged: ``flag`` (False from ``--no-log``) wins, then
    ``CHATCLI_NOLOG`` (any value but empty or 0 turns logging off), then ``log`` in
    config.toml; on by default."""
    from chatcli.core import config

    return config.get_bool("log", flag)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_id() -> str:
    """A short random conversation id (8 hex digits), easy to type after ``/resume``."""
    return secrets.token_hex(4)


@dataclass(frozen=True)
class Summary:
    """One line of ``chat log``: a conversation at a glance."""

    id: str
    updated: str
    model: str
    first_words: str
    turns: int


@dataclass(frozen=True)
class Hit:
    """A search result: the message, where it is, and a snippet with highlight markers."""

    conversation_id: str
    position: int
    role: str
    snippet: str
    created: str
    model: str


@dataclass(frozen=True)
class Logged:
    """A logged conversation, as ``/save`` would have written it, with its id and dates."""

    id: str
    created: str
    updated: str
    conversation: Conversation


class Log:
    """The log database. Every method opens, uses and closes its own connection."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else log_path()

    @contextmanager
    def _connect(self, *, create: bool) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            if not create:
                raise LogError("no conversations logged yet")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Created private: it holds everything the user typed. SQLite gives the -wal and
            # -shm files the database's own permissions.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL keeps every committed transaction through a killed process
            # (only a power loss can take the last ones) and saves an fsync per exchange.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(SCHEMA)
            yield db
        finally:
            db.close()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for the ``chat log`` commands: database errors become ``LogError``."""
        try:
            with self._connect(create=False) as db:
                yield db
        except sqlite3.Error as e:
            raise LogError(f"cannot read the conversation log {self.path}: {e}") from None

    # -- writing -------------------------------------------------------------------------------

    def append(self, conversation_id: str | None, conv: Conversation, start: int,
               done: Done | None) -> str:
        """Add ``conv.messages[start:]`` (system messages aside) to a conversation, creating it
        when ``conversation_id`` is None; one committed transaction. Returns the id.
        ``sqlite3.Error`` propagates: the recorder decides what a failure means."""
        system, messages = _split_system(conv.messages)
        now = _now()
        timings = json.dumps(asdict(done.metrics) | {"done_reason": done.done_reason,
                                                     "trimmed": done.trimmed}) if done else None
        options = json.dumps(conv.options)
        with self._connect(create=True) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if conversation_id is None:
                    conversation_id = new_id()
                    db.execute(
                        "INSERT INTO conversations (id, created, updated, model, system, options,"
                        " format, think) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (conversation_id, now, now, conv.model, system, options,
                         _json_or_none(conv.format), _json_or_none(conv.think)),
                    )
                else:
                    db.execute(
                        "UPDATE conversations SET updated = ?, model = ?, system = ?, options = ?,"
                        " format = ?, think = ? WHERE id = ?",
                        (now, conv.model, system, options, _json_or_none(conv.format),
                         _json_or_none(conv.think), conversation_id),
                    )
                last = len(messages) - 1
                for position in range(start, len(messages)):
                    m = messages[position]
                    db.execute(
                        "INSERT INTO messages (conversation_id, position, role, content, thinking,"
                        " tool_calls, tool_name, images, model, options, timings, created)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (conversation_id, position, m["role"], m.get("content") or "",
                         m.get("thinking") or None, _json_or_none(m.get("tool_calls")),
                         m.get("tool_name"), _images(m.get("images")), conv.model, options,
                         timings if position == last and m["role"] == "assistant" else None,
                         now),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return conversation_id

    def delete(self, conversation_id: str) -> str:
        """Remove a conversation and its messages (from the search index too)."""
        full = self.resolve_id(conversation_id)
        with self._reading() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM messages WHERE conversation_id = ?", (full,))
            db.execute("DELETE FROM conversations WHERE id = ?", (full,))
            db.execute("COMMIT")
        return full

    # -- reading -------------------------------------------------------------------------------

    def resolve_id(self, conversation_id: str) -> str:
        """The full id for an id or an unambiguous prefix of one (at least 4 characters)."""
        text = conversation_id.strip().lower()
        if len(text) < 4 or any(c not in "0123456789abcdef" for c in text):
            raise LogError(f"no conversation '{conversation_id}' in the log (chat log lists "
                           "them)")
        with self._reading() as db:
            rows = db.execute("SELECT id FROM conversations WHERE id LIKE ? || '%' LIMIT 2",
                              (text,)).fetchall()
        if len(rows) != 1:
            what = "more than one conversation starts with" if rows else "no conversation"
            raise LogError(f"{what} '{conversation_id}' in the log (chat log lists them)")
        return str(rows[0][0])

    def latest_id(self) -> str | None:
        """The most recently updated conversation, or None when nothing is logged."""
        if not self.path.exists():
            return None
        with self._reading() as db:
            row = db.execute("SELECT id FROM conversations ORDER BY updated DESC, rowid DESC "
                             "LIMIT 1").fetchone()
        return str(row[0]) if row else None

    def recent(self, limit: int = 20) -> list[Summary]:
        """The most recently updated conversations, newest first."""
        if not self.path.exists():
            return []
        with self._reading() as db:
            rows = db.execute(
                "SELECT c.id, c.updated, c.model,"
                " (SELECT content FROM messages WHERE conversation_id = c.id AND role = 'user'"
                "  ORDER BY position LIMIT 1),"
                " (SELECT count(*) FROM messages WHERE conversation_id = c.id AND role = 'user')"
                " FROM conversations c ORDER BY c.updated DESC, c.rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Summary(i, u, m, first_words(f or ""), n) for i, u, m, f, n in rows]

    def search(self, text: str, limit: int = 20) -> list[Hit]:
        """Messages matching every word of ``text``, best first (bm25), with snippets. The
        text is taken literally: FTS5 syntax characters in it are searched for, not obeyed."""
        query = fts_query(text)
        if not query:
            raise LogError("nothing to search for")
        if not self.path.exists():
            return []
        with self._reading() as db:
            rows = db.execute(
                "SELECT m.conversation_id, m.position, m.role,"
                " snippet(messages_fts, -1, ?, ?, '...', 16), m.created, m.model"
                " FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
                " WHERE messages_fts MATCH ? ORDER BY bm25(messages_fts) LIMIT ?",
                (MARK_START, MARK_END, query, limit),
            ).fetchall()
        return [Hit(*row) for row in rows]

    def get(self, conversation_id: str) -> Logged:
        """One conversation, its messages in order (its system prompt first)."""
        full = self.resolve_id(conversation_id)
        with self._reading() as db:
            c = db.execute("SELECT created, updated, model, system, options, format, think FROM"
                           " conversations WHERE id = ?", (full,)).fetchone()
            rows = db.execute("SELECT role, content, thinking, tool_calls, tool_name, images"
                              " FROM messages WHERE conversation_id = ? ORDER BY position",
                              (full,)).fetchall()
        created, updated, model, system, options, fmt, think = c
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        for role, content, thinking, tool_calls, tool_name, images in rows:
            m: dict[str, Any] = {"role": role, "content": content}
            if thinking:
                m["thinking"] = thinking
            if tool_calls:
                m["tool_calls"] = json.loads(tool_calls)
            if tool_name:
                m["tool_name"] = tool_name
            if images:
                kept = [i for i in json.loads(images) if isinstance(i, str)]
                if kept:
                    m["images"] = kept
            messages.append(m)
        conv = Conversation(model=model, messages=messages, options=json.loads(options or "{}"),
                            format=_loads_or_none(fmt), think=_loads_or_none(think))
        return Logged(full, created, updated, conv)


def _split_system(messages: Sequence[dict[str, Any]]) -> tuple[str | None,
                                                                list[dict[str, Any]]]:
    """The system prompt (the leading system message) and the other messages."""
    if messages and messages[0]["role"] == "system":
        return messages[0].get("content") or None, list(messages[1:])
    return None, list(messages)


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _loads_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _images(images: Any) -> str | None:
    """Images as the log keeps them: a path where the message had one; image bytes never
    (an image given as data is counted, as null)."""
    if not images:
        return None
    return json.dumps([i if isinstance(i, str) and len(i) < 4096 and "\n" not in i
                       and Path(i).suffix else None for i in images])


def first_words(text: str, width: int = 60) -> str:
    """The start of a message on one line, cut at a word boundary."""
    line = " ".join(text.split())
    if len(line) <= width:
        return line
    cut = line[:width].rsplit(" ", 1)[0]
    return cut + "..."


def fts_query(text: str) -> str:
    """The user's words as FTS5 terms, each quoted: ``C++ "x" OR AND*`` searches for those
    characters rather than being FTS5 syntax (which would raise, or mean something else)."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in text.split())


def to_markdown(logged: Logged) -> str:
    """A logged conversation as a Markdown document."""
    conv = logged.conversation
    lines = [f"# Conversation {logged.id}", "",
             f"Model: {conv.model}  ", f"Started: {logged.created}  ",
             f"Updated: {logged.updated}", ""]
    titles = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
    for m in conv.messages:
        lines.append(f"## {titles.get(m['role'], m['role'].title())}")
        lines.append("")
        if m.get("thinking"):
            lines += ["> " + line for line in m["thinking"].strip().splitlines()] + [""]
        if m.get("tool_calls"):
            lines += ["```json", json.dumps(m["tool_calls"], ensure_ascii=False, indent=2),
                      "```", ""]
        if m.get("images"):
            lines += [f"![image]({p})" for p in m["images"]] + [""]
        lines += [m.get("content") or "", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# -- the recorder a Session is given --------------------------------------------------------


_warned: list[bool] = []


def warn_once(error: BaseException, path: Path) -> None:
    """One line on stderr, the first time the log fails in this process."""
    if _warned:
        return
    _warned.append(True)
    reason = str(error) or type(error).__name__
    print(f"chatcli: not logging this chat: {path}: {reason}", file=sys.stderr, flush=True)


class Recorder:
    """Logs a session's finished exchanges (``Session(recorder=...)``). Never raises."""

    def __init__(self, log: Log | None = None) -> None:
        self.log = log or Log()
        self.conversation_id: str | None = None
        # The non-system messages already in the logged conversation, as they were written.
        self._logged: list[dict[str, Any]] = []

    def attach(self, conversation_id: str, messages: Sequence[dict[str, Any]]) -> None:
        """Continue a logged conversation: later exchanges are appended to it."""
        self.conversation_id = conversation_id
        self._logged = [clean_message(m) for m in _split_system(messages)[1]]

    def record(self, conversation: Conversation, done: Done | None) -> None:
        """Write what the conversation gained since the last write, after an answer."""
        messages = [clean_message(m) for m in _split_system(conversation.messages)[1]]
        if messages[: len(self._logged)] != self._logged:
            # The chat no longer extends the logged conversation: start a new one.
            self.conversation_id, self._logged = None, []
        start = len(self._logged)
        if start >= len(messages):
            return
        try:
            self.conversation_id = self.log.append(self.conversation_id, conversation, start,
                                                   done)
        except (sqlite3.Error, OSError) as e:
            warn_once(e, self.log.path)
            return
        self._logged = messages
