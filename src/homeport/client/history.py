"""Conversation history: SQLite in the data folder, one transaction per finished turn.

A turn (the user's message and the answer) is committed the moment the answer ends, in WAL mode
with full sync, so a client killed mid-answer loses only the unfinished turn. A conversation row
is created with its first turn, so sessions that never chatted leave nothing behind. The file is
private to its user (mode 0600). Secrets never reach it: only messages and their metadata do.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from homeport import config
from homeport.client.adapters.base import Usage
from homeport.errors import HomeportError

# Each entry upgrades the schema by one version (PRAGMA user_version counts them).
MIGRATIONS = [
    """
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- ids are never reused
        title TEXT NOT NULL,
        adapter TEXT NOT NULL,
        model TEXT NOT NULL,
        system TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        user TEXT NOT NULL,
        answer TEXT NOT NULL,
        adapter TEXT NOT NULL,
        model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        stopped INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    );
    CREATE INDEX turns_by_conversation ON turns(conversation_id, id);
    """,
]


class HistoryError(HomeportError):
    pass


@dataclass(frozen=True)
class Turn:
    user: str
    answer: str
    adapter: str
    model: str
    usage: Usage = field(default_factory=Usage)
    stopped: bool = False  # the user stopped the answer (Ctrl-C); the text is what arrived
    created_at: str = ""


@dataclass
class Conversation:
    id: int
    title: str
    adapter: str
    model: str
    system: str | None
    created_at: str
    updated_at: str
    turns: list[Turn] = field(default_factory=list)
    turn_count: int = 0


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    title: str
    created_at: str
    snippet: str


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def default_path() -> Path:
    return config.data_dir() / "history.db"


class History:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    # --- writing ---------------------------------------------------------------------------------

    def add_turn(self, conversation_id: int | None, turn: Turn, system: str | None = None) -> int:
        """Commit one finished turn; a new conversation when ``conversation_id`` is None (or
        was deleted meanwhile, so the turn is never lost). Returns the conversation's id."""
        stamp = turn.created_at or now()
        with self._transaction() as db:
            kept = conversation_id
            if kept is not None and not db.execute(
                    "UPDATE conversations SET adapter = ?, model = ?, system = ?, updated_at = ? "
                    "WHERE id = ?", (turn.adapter, turn.model, system, stamp, kept)).rowcount:
                kept = None
            if kept is None:
                title = " ".join(turn.user.split())[:60] or "(empty)"
                cursor = db.execute(
                    "INSERT INTO conversations (title, adapter, model, system, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (title, turn.adapter, turn.model, system, stamp, stamp))
                kept = int(cursor.lastrowid or 0)
            db.execute(
                "INSERT INTO turns (conversation_id, user, answer, adapter, model, input_tokens, "
                "output_tokens, stopped, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kept, turn.user, turn.answer, turn.adapter, turn.model,
                 turn.usage.input_tokens, turn.usage.output_tokens, int(turn.stopped), stamp))
        return kept

    def delete(self, conversation_id: int) -> None:
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM conversations WHERE id = ?",
                                 (conversation_id,)).rowcount
        if not deleted:
            raise _no_conversation(conversation_id)

    # --- reading ---------------------------------------------------------------------------------

    def latest_id(self) -> int | None:
        row = self._db.execute(
            "SELECT id FROM conversations ORDER BY updated_at DESC, id DESC LIMIT 1").fetchone()
        return int(row["id"]) if row else None

    def load(self, conversation_id: int) -> Conversation:
        row = self._db.execute("SELECT * FROM conversations WHERE id = ?",
                               (conversation_id,)).fetchone()
        if row is None:
            raise _no_conversation(conversation_id)
        conversation = _conversation(row)
        conversation.turns = [
            Turn(turn["user"], turn["answer"], turn["adapter"], turn["model"],
                 Usage(turn["input_tokens"], turn["output_tokens"]), bool(turn["stopped"]),
                 turn["created_at"])
            for turn in self._db.execute(
                "SELECT * FROM turns WHERE conversation_id = ? ORDER BY id", (conversation_id,))
        ]
        conversation.turn_count = len(conversation.turns)
        return conversation

    def recent(self, limit: int = 20) -> list[Conversation]:
        rows = self._db.execute(
            "SELECT c.*, (SELECT COUNT(*) FROM turns t WHERE t.conversation_id = c.id) AS n "
            "FROM conversations c ORDER BY c.updated_at DESC, c.id DESC LIMIT ?", (limit,))
        return [_conversation(row, row["n"]) for row in rows]

    def search(self, text: str, limit: int = 20) -> list[SearchHit]:
        """Turns whose question or answer contains ``text`` (case-insensitive), newest first."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._db.execute(
            "SELECT t.conversation_id, c.title, t.created_at, t.user, t.answer FROM turns t "
            "JOIN conversations c ON c.id = t.conversation_id "
            "WHERE t.user LIKE ?1 ESCAPE '\\' OR t.answer LIKE ?1 ESCAPE '\\' "
            "ORDER BY t.id DESC LIMIT ?2", (pattern, limit))
        return [SearchHit(row["conversation_id"], row["title"], row["created_at"],
                          _snippet(row["user"] + "\n" + row["answer"], text)) for row in rows]


def _no_conversation(conversation_id: int) -> HistoryError:
    return HistoryError(f"there is no conversation {conversation_id}; "
                        "`homeport history list` shows them")


def _conversation(row: sqlite3.Row, turn_count: int = 0) -> Conversation:
    return Conversation(row["id"], row["title"], row["adapter"], row["model"], row["system"],
                        row["created_at"], row["updated_at"], turn_count=turn_count)


def _snippet(text: str, needle: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    at = flat.lower().find(needle.lower())
    start = max(0, at - width // 2) if at >= 0 else 0
    piece = flat[start:start + width]
    return ("…" if start else "") + piece + ("…" if start + width < len(flat) else "")
