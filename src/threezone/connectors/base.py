"""What every executor-side connector offers, and the durable state they keep.

A *source* brings raw items in; the executor stores each one durably in its inbox and
only then acknowledges it at the source (Maildir: move to ``cur/``; IMAP: remember the
UID; Telegram: advance the ``getUpdates`` offset; Slack: ack the envelope). A crash in
between fetches the item again, and the inbox recognises it by ``(channel,
source_ref)``, so nothing is lost and nothing is stored twice.

Sinks are :class:`~threezone.executor.actions.ActionSpec` runners: they receive the
arguments the policy admitted and the action's idempotency key, and pass the key on
where the service can use it (a Message-ID, a ``client_msg_id``), so a retry after a
crash does not send twice.

Connectors run in the executor only. They get credentials from the secret store only
when they run, and reach the network only through :class:`~threezone.executor.egress.Egress`.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from threezone.errors import InboxError
from threezone.protocol.messages import Channel, Trigger


@dataclass(frozen=True, slots=True)
class RawItem:
    """One fetched item: the untrusted bytes and what the executor vouches for."""

    source_ref: str
    untrusted_raw: bytes
    trigger: Trigger
    oversized: bool = False


class Source(Protocol):
    """An inbound channel. ``fetch`` may wait up to ``timeout`` seconds for new items
    (IMAP IDLE, Telegram long polling, a Socket Mode event) and returns what it has,
    possibly nothing. It raises :class:`~threezone.errors.ConnectorError` on failures
    the caller should report and retry with backoff."""

    channel: Channel

    async def fetch(self, timeout: float) -> list[RawItem]: ...

    async def acknowledge(self, source_ref: str) -> None: ...

    async def close(self) -> None: ...


class ConnectorState:
    """A small durable key-value store for connector bookkeeping (UIDs, offsets).

    SQLite in WAL mode with ``synchronous=FULL``: an acknowledgement that is lost would
    re-fetch (harmless, the inbox deduplicates), but one that is recorded and then lost
    with the machine's power could skip an item, which is not.
    """

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, path: Path) -> ConnectorState:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS state (connector TEXT NOT NULL, key TEXT NOT NULL,"
                " value TEXT NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (connector, key))"
            )
        except sqlite3.DatabaseError as exc:
            raise InboxError(f"{path}: cannot open the connector state: {exc}") from exc
        path.chmod(0o600)
        return cls(db, path)

    def get(self, connector: str, key: str, default: str = "") -> str:
        row = self._db.execute(
            "SELECT value FROM state WHERE connector = ? AND key = ?", (connector, key)
        ).fetchone()
        return default if row is None else str(row[0])

    def set(self, connector: str, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO state (connector, key, value, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (connector, key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at",
            (connector, key, value, time.time()),
        )

    def close(self) -> None:
        self._db.close()
