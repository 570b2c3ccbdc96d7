"""The owner's approval queue: ``ask`` decisions wait here for a yes or a no.

Each entry holds the exact action and arguments, which arguments came from the
untrusted content, and the trigger, so the owner decides on what will actually run.
An entry is bound to a SHA-256 digest of that exact action: the digest is computed
when it is queued, shown to the owner (and carried by approval buttons), checked when
the owner approves, and checked again just before the action runs, so an entry whose
stored action changed after the owner saw it never runs. Entries expire (one hour by
default); an approved entry runs once.

States::

    pending -> approved -> running -> executed | failed
        \\-> denied
        \\-> expired            (also an approved entry not run before it expired)

Stored in its own SQLite database (WAL), so ``threezone approvals`` can read and
decide while the executor runs; the executor is the only one that moves an entry
past ``approved``. Decisions by the owner commit with ``synchronous=FULL``.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import msgspec

from threezone.errors import ApprovalError
from threezone.executor.sqlite_tx import write_tx
from threezone.protocol.messages import ArgValue, Trigger

Clock = Callable[[], float]
DB_NAME = "approvals.sqlite3"  # in the executor's state directory
DIGEST_SHOWN = 16  # hex characters the owner sees and may type back

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    key            TEXT NOT NULL UNIQUE,
    digest         TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    episode_id     TEXT NOT NULL,
    action         TEXT NOT NULL,
    args           BLOB NOT NULL,
    untrusted_args BLOB NOT NULL,
    trigger        BLOB NOT NULL,
    rule           TEXT NOT NULL,
    reason         TEXT NOT NULL,
    status         TEXT NOT NULL,
    created_at     REAL NOT NULL,
    expires_at     REAL NOT NULL,
    decided_at     REAL,
    decided_by     TEXT,
    note           TEXT,
    result         BLOB
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, expires_at);
"""
_COLUMNS = (
    "id, key, digest, message_id, episode_id, action, args, untrusted_args, trigger, rule,"
    " reason, status, created_at, expires_at, decided_at, decided_by, note, result"
)


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    RUNNING = "running"
    EXECUTED = "executed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Approval:
    id: int
    key: str
    digest: str
    message_id: str
    episode_id: str
    action: str
    args: dict[str, ArgValue]
    untrusted_args: list[str]
    trigger: Trigger
    rule: str
    reason: str
    status: ApprovalStatus
    created_at: float
    expires_at: float
    decided_at: float | None
    decided_by: str | None
    note: str | None
    result: dict[str, str]

    @property
    def short_digest(self) -> str:
        return self.digest[:DIGEST_SHOWN]

    def intact(self) -> bool:
        """Whether the stored action still hashes to the digest the owner was shown."""
        return action_digest(self.key, self.action, self.args) == self.digest


def action_digest(key: str, action: str, args: Mapping[str, ArgValue]) -> str:
    """The hash an approval is bound to: this exact action, these exact arguments."""
    canonical = msgspec.json.encode([key, action, dict(sorted(args.items()))])
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class Request:
    """What the executor queues: one ``ask`` decision."""

    key: str
    message_id: str
    episode_id: str
    action: str
    args: Mapping[str, ArgValue]
    untrusted_args: list[str]
    trigger: Trigger
    rule: str
    reason: str


class ApprovalQueue:
    def __init__(self, db: sqlite3.Connection, path: Path, clock: Clock) -> None:
        self._db = db
        self.path = path
        self._clock = clock

    @classmethod
    def open(cls, path: Path, clock: Clock = time.time) -> ApprovalQueue:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ApprovalError(str(path), f"cannot open the approvals database: {exc}") from exc
        path.chmod(0o600)
        return cls(db, path, clock)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with write_tx(self._db, self.path):
            yield self._db

    # --- the executor's side ------------------------------------------------------------------

    def enqueue(self, request: Request, ttl_seconds: float) -> Approval:
        """Queue an ``ask``; queuing the same action again returns the first entry."""
        now = self._clock()
        digest = action_digest(request.key, request.action, request.args)
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO approvals (key, digest, message_id, episode_id, action,"
                " args, untrusted_args, trigger, rule, reason, status, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.key,
                    digest,
                    request.message_id,
                    request.episode_id,
                    request.action,
                    msgspec.json.encode(dict(request.args)),
                    msgspec.json.encode(request.untrusted_args),
                    msgspec.json.encode(request.trigger),
                    request.rule,
                    request.reason,
                    ApprovalStatus.PENDING,
                    now,
                    now + ttl_seconds,
                ),
            )
        return self._by_key(request.key)

    def expire(self) -> list[Approval]:
        """Mark pending and approved-but-not-run entries past their time as expired."""
        now = self._clock()
        with self._tx() as db:
            due = self._select(
                "status IN (?, ?) AND expires_at <= ?",
                (ApprovalStatus.PENDING, ApprovalStatus.APPROVED, now),
            )
            db.executemany(
                "UPDATE approvals SET status = ? WHERE id = ?",
                [(ApprovalStatus.EXPIRED, entry.id) for entry in due],
            )
        return [replace(entry, status=ApprovalStatus.EXPIRED) for entry in due]

    def claim(self) -> Approval | None:
        """The oldest approved, unexpired entry, moved to ``running`` (at most once)."""
        now = self._clock()
        with self._tx() as db:
            ready = self._select("status = ? AND expires_at > ?", (ApprovalStatus.APPROVED, now))
            if not ready:
                return None
            db.execute(
                "UPDATE approvals SET status = ? WHERE id = ?",
                (ApprovalStatus.RUNNING, ready[0].id),
            )
        return replace(ready[0], status=ApprovalStatus.RUNNING)

    def finish(self, approval_id: int, executed: bool, result: Mapping[str, str]) -> None:
        status = ApprovalStatus.EXECUTED if executed else ApprovalStatus.FAILED
        with self._tx() as db:
            db.execute(
                "UPDATE approvals SET status = ?, result = ? WHERE id = ? AND status = ?",
                (status, msgspec.json.encode(dict(result)), approval_id, ApprovalStatus.RUNNING),
            )

    def interrupted(self) -> list[Approval]:
        """Entries left ``running`` by a crash; the executor settles them at start."""
        return self._select("status = ?", (ApprovalStatus.RUNNING,))

    # --- the owner's side ---------------------------------------------------------------------

    def approve(self, approval_id: int, by: str, digest_prefix: str | None = None) -> Approval:
        return self._decide(approval_id, ApprovalStatus.APPROVED, by, digest_prefix, None)

    def deny(self, approval_id: int, by: str, note: str | None = None) -> Approval:
        return self._decide(approval_id, ApprovalStatus.DENIED, by, None, note)

    def _decide(
        self,
        approval_id: int,
        status: ApprovalStatus,
        by: str,
        digest_prefix: str | None,
        note: str | None,
    ) -> Approval:
        self.expire()
        entry = self.get(approval_id)
        if entry.status is not ApprovalStatus.PENDING:
            raise ApprovalError(str(self.path), f"#{approval_id} is {entry.status}, not pending")
        if not entry.intact():
            raise ApprovalError(
                str(self.path), f"#{approval_id} changed after it was queued; refusing it"
            )
        if digest_prefix is not None and not _prefix_matches(digest_prefix, entry.digest):
            raise ApprovalError(
                str(self.path),
                f"#{approval_id} has digest {entry.short_digest}, not {digest_prefix!r}: "
                "the action is not the one you were shown",
            )
        with self._tx() as db:
            changed = db.execute(
                "UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?, note = ?"
                " WHERE id = ? AND status = ?",
                (status, self._clock(), by, note, approval_id, ApprovalStatus.PENDING),
            ).rowcount
        if changed != 1:
            raise ApprovalError(str(self.path), f"#{approval_id} was decided by someone else")
        return self.get(approval_id)

    # --- reading ------------------------------------------------------------------------------

    def get(self, approval_id: int) -> Approval:
        found = self._select("id = ?", (approval_id,))
        if not found:
            raise ApprovalError(str(self.path), f"no approval #{approval_id}")
        return found[0]

    def entries(self, statuses: tuple[ApprovalStatus, ...] = ()) -> list[Approval]:
        if not statuses:
            return self._select("1 = 1", ())
        marks = ", ".join("?" for _ in statuses)
        return self._select(f"status IN ({marks})", tuple(statuses))

    def queued_since(self, rule: str, since: float) -> int:
        """How many entries ``rule`` queued since ``since`` (its ``rate=`` budget for asks)."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM approvals WHERE rule = ? AND created_at >= ?", (rule, since)
        ).fetchone()
        return int(row[0])

    def _by_key(self, key: str) -> Approval:
        return self._select("key = ?", (key,))[0]

    def _select(self, where: str, params: tuple[object, ...]) -> list[Approval]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM approvals WHERE {where} ORDER BY id",  # noqa: S608 - fixed fragments
            params,
        ).fetchall()
        return [_row(row) for row in rows]


def _prefix_matches(prefix: str, digest: str) -> bool:
    cleaned = prefix.strip().lower()
    return len(cleaned) >= 8 and digest.startswith(cleaned)


def _row(row: tuple[object, ...]) -> Approval:
    (id_, key, digest, message_id, episode_id, action, args, untrusted, trigger, rule) = row[:10]
    (reason, status, created, expires, decided_at, decided_by, note, result) = row[10:]
    return Approval(
        id=int(str(id_)),
        key=str(key),
        digest=str(digest),
        message_id=str(message_id),
        episode_id=str(episode_id),
        action=str(action),
        args=msgspec.json.decode(_bytes(args), type=dict[str, ArgValue]),
        untrusted_args=msgspec.json.decode(_bytes(untrusted), type=list[str]),
        trigger=msgspec.json.decode(_bytes(trigger), type=Trigger),
        rule=str(rule),
        reason=str(reason),
        status=ApprovalStatus(str(status)),
        created_at=float(str(created)),
        expires_at=float(str(expires)),
        decided_at=None if decided_at is None else float(str(decided_at)),
        decided_by=None if decided_by is None else str(decided_by),
        note=None if note is None else str(note),
        result={} if result is None else msgspec.json.decode(_bytes(result), type=dict[str, str]),
    )


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    raise ApprovalError("<approvals>", f"corrupt row: expected a blob, got {type(value).__name__}")
