"""The durable inbox: every raw message is stored before anything else happens.

States move forward only::

    received -> sanitized -> planned -> done
        \\            \\          \\
         +------------+----------+--> quarantined   (with a typed error)

``actions`` records every decided action under an idempotency key *before* it runs
and marks it executed after, so a restart that replays an episode returns the stored
result instead of acting twice.

SQLite in WAL mode. Two writes must survive a power cut, and commit with
``synchronous=FULL``: a receipt (the source is acknowledged right after it) and an
action's decision (the action runs right after it). Every other step commits with
``NORMAL``, which in WAL mode survives a crash of the process but may be lost with the
machine's power; such a step is then simply redone, since each step is idempotent.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import msgspec

from threezone.errors import InboxError
from threezone.executor.sqlite_tx import write_tx
from threezone.protocol.messages import SanitizedMessage, Trigger

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id           TEXT PRIMARY KEY,
    channel      TEXT NOT NULL,
    source_ref   TEXT NOT NULL,
    raw          BLOB NOT NULL,
    trigger      BLOB NOT NULL,
    state        TEXT NOT NULL,
    sanitized    BLOB,
    summary      TEXT,
    error_code   TEXT,
    error_detail TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    UNIQUE (channel, source_ref)
);
CREATE INDEX IF NOT EXISTS messages_state ON messages (state);
CREATE TABLE IF NOT EXISTS actions (
    key          TEXT PRIMARY KEY,
    message_id   TEXT NOT NULL REFERENCES messages (id),
    action       TEXT NOT NULL,
    args         BLOB NOT NULL,
    decision     TEXT NOT NULL,
    rule         TEXT NOT NULL,
    status       TEXT NOT NULL,
    result       BLOB,
    created_at   REAL NOT NULL,
    executed_at  REAL
);
CREATE INDEX IF NOT EXISTS actions_rule ON actions (rule, executed_at);
CREATE TABLE IF NOT EXISTS conversations (
    message_id   TEXT PRIMARY KEY REFERENCES messages (id),
    key          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_key ON conversations (key);
"""


class State(StrEnum):
    RECEIVED = "received"
    SANITIZED = "sanitized"
    PLANNED = "planned"
    DONE = "done"
    QUARANTINED = "quarantined"


TERMINAL = frozenset({State.DONE, State.QUARANTINED})
_NEXT = {
    State.SANITIZED: State.RECEIVED,
    State.PLANNED: State.SANITIZED,
    State.DONE: State.PLANNED,
}


class ActionStatus(StrEnum):
    DECIDED = "decided"  # recorded, not run (deny, ask) or about to run (allow)
    EXECUTED = "executed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class InboxItem:
    id: str
    channel: str
    source_ref: str
    state: State
    trigger: Trigger
    sanitized: SanitizedMessage | None
    summary: str | None
    error_code: str | None
    error_detail: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class ActionRecord:
    key: str
    message_id: str
    action: str
    decision: str
    rule: str
    status: ActionStatus
    result: dict[str, str]


class Inbox:
    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Inbox:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
            problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            raise InboxError(f"{path}: cannot open the inbox database: {exc}") from exc
        if problems != ["ok"]:
            db.close()
            raise InboxError(
                f"{path}: the inbox database is damaged ({'; '.join(problems)[:500]}); "
                "nothing was changed: restore it from a backup, or move it aside to start "
                "with an empty inbox"
            )
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        with write_tx(self._db, self.path, durable):
            yield self._db

    # --- messages -----------------------------------------------------------------------------

    def receive(
        self, channel: str, source_ref: str, untrusted_raw: bytes, trigger: Trigger
    ) -> tuple[str, bool]:
        """Store a raw message; ``(id, True)`` if new, ``(id, False)`` if seen before."""
        message_id = f"{channel}:{source_ref}"
        now = time.time()
        with self._tx(durable=True) as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO messages (id, channel, source_ref, raw, trigger, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    channel,
                    source_ref,
                    untrusted_raw,
                    msgspec.json.encode(trigger),
                    State.RECEIVED,
                    now,
                    now,
                ),
            )
        return message_id, cursor.rowcount == 1

    def pending(self) -> list[str]:
        """Ids of messages not yet done or quarantined, oldest first."""
        rows = self._db.execute(
            "SELECT id FROM messages WHERE state NOT IN (?, ?) ORDER BY rowid",
            (State.DONE, State.QUARANTINED),
        )
        return [row[0] for row in rows]

    def get(self, message_id: str) -> InboxItem:
        row = self._db.execute(
            "SELECT id, channel, source_ref, state, trigger, sanitized, summary, error_code,"
            " error_detail, attempts FROM messages WHERE id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            raise InboxError(f"no message {message_id!r} in the inbox")
        sanitized = msgspec.json.decode(row[5], type=SanitizedMessage) if row[5] else None
        return InboxItem(
            id=row[0],
            channel=row[1],
            source_ref=row[2],
            state=State(row[3]),
            trigger=msgspec.json.decode(row[4], type=Trigger),
            sanitized=sanitized,
            summary=row[6],
            error_code=row[7],
            error_detail=row[8],
            attempts=row[9],
        )

    def raw(self, message_id: str) -> bytes:
        row = self._db.execute("SELECT raw FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise InboxError(f"no message {message_id!r} in the inbox")
        return bytes(row[0])

    def mark_sanitized(self, message_id: str, message: SanitizedMessage) -> None:
        self._advance(message_id, State.SANITIZED, "sanitized", msgspec.json.encode(message))

    def mark_planned(self, message_id: str, summary: str) -> None:
        self._advance(message_id, State.PLANNED, "summary", summary)

    def mark_done(self, message_id: str) -> None:
        self._advance(message_id, State.DONE, None, None)

    def _advance(self, message_id: str, to: State, column: str | None, value: object) -> None:
        # A step that succeeded starts the next one's attempts from zero.
        sets = "state = ?, updated_at = ?, attempts = 0" + (f", {column} = ?" if column else "")
        params: list[object] = [to, time.time()] + ([value] if column else [])
        with self._tx() as db:
            cursor = db.execute(
                f"UPDATE messages SET {sets} WHERE id = ? AND state = ?",  # noqa: S608 - column names are ours
                (*params, message_id, _NEXT[to]),
            )
        if cursor.rowcount != 1:
            state = self.get(message_id).state
            raise InboxError(f"message {message_id!r} is {state}, cannot move to {to}")

    def begin_attempt(self, message_id: str) -> int:
        """Count one more try of the message's current step; returns the count.

        Counted before the zone sees the message, so a message that kills its zone, or
        the executor itself, every time is recognised after a restart as well.
        """
        with self._tx() as db:
            db.execute("UPDATE messages SET attempts = attempts + 1 WHERE id = ?", (message_id,))
            row = db.execute("SELECT attempts FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise InboxError(f"no message {message_id!r} in the inbox")
        return int(row[0])

    def end_attempt(self, message_id: str) -> None:
        """Take back the count of a try that failed through no fault of the message."""
        with self._tx() as db:
            db.execute(
                "UPDATE messages SET attempts = attempts - 1 WHERE id = ? AND attempts > 0",
                (message_id,),
            )

    def quarantine(self, message_id: str, code: str, detail: str) -> None:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE messages SET state = ?, error_code = ?, error_detail = ?, updated_at = ?"
                " WHERE id = ? AND state NOT IN (?, ?)",
                (
                    State.QUARANTINED,
                    code,
                    detail,
                    time.time(),
                    message_id,
                    State.DONE,
                    State.QUARANTINED,
                ),
            )
        if cursor.rowcount != 1:
            raise InboxError(f"message {message_id!r} cannot be quarantined (missing or finished)")

    # --- conversations ------------------------------------------------------------------------

    def join_conversation(self, message_id: str, key: str) -> None:
        """File a message under a conversation key (see ``executor.planning``)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO conversations (message_id, key) VALUES (?, ?)",
                (message_id, key),
            )

    def conversation(self, key: str, before: str, limit: int) -> list[InboxItem]:
        """The last ``limit`` done messages of a conversation received before ``before``,
        oldest first."""
        rows = self._db.execute(
            "SELECT m.id FROM conversations c JOIN messages m ON m.id = c.message_id"
            " WHERE c.key = ? AND m.state = ? AND m.id != ?"
            " AND m.rowid < (SELECT rowid FROM messages WHERE id = ?)"
            " ORDER BY m.rowid DESC LIMIT ?",
            (key, State.DONE, before, before, limit),
        ).fetchall()
        return [self.get(row[0]) for row in reversed(rows)]

    def actions_of(self, message_id: str) -> list[ActionRecord]:
        rows = self._db.execute(
            f"SELECT {_ACTION_COLUMNS} FROM actions WHERE message_id = ? ORDER BY rowid",  # noqa: S608 - our column list
            (message_id,),
        )
        return [_action_record(row) for row in rows]

    def counts(self) -> dict[State, int]:
        rows = self._db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state")
        found = {State(state): count for state, count in rows}
        return {state: found.get(state, 0) for state in State}

    # --- actions ------------------------------------------------------------------------------

    def action(self, key: str) -> ActionRecord | None:
        row = self._db.execute(
            f"SELECT {_ACTION_COLUMNS} FROM actions WHERE key = ?",  # noqa: S608 - our column list
            (key,),
        ).fetchone()
        return None if row is None else _action_record(row)

    def record_decision(
        self, key: str, message_id: str, *, action: str, args: bytes, decision: str, rule: str
    ) -> None:
        with self._tx(durable=True) as db:
            db.execute(
                "INSERT OR IGNORE INTO actions (key, message_id, action, args, decision, rule,"
                " status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, message_id, action, args, decision, rule, ActionStatus.DECIDED, time.time()),
            )

    def record_outcome(self, key: str, status: ActionStatus, result: dict[str, str]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE actions SET status = ?, result = ?, executed_at = ? WHERE key = ?",
                (status, msgspec.json.encode(result), time.time(), key),
            )

    def executed_since(self, rule: str, since: float) -> int:
        """How many actions admitted by ``rule`` ran since ``since`` (for rate budgets)."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM actions WHERE rule = ? AND status = ? AND executed_at >= ?",
            (rule, ActionStatus.EXECUTED, since),
        ).fetchone()
        return int(row[0])


_ACTION_COLUMNS = "key, message_id, action, decision, rule, status, result"


def _action_record(row: tuple[str, str, str, str, str, str, bytes | None]) -> ActionRecord:
    result = msgspec.json.decode(row[6], type=dict[str, str]) if row[6] else {}
    return ActionRecord(row[0], row[1], row[2], row[3], row[4], ActionStatus(row[5]), result)
