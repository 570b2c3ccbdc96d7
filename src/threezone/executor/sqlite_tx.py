"""Write transactions on the executor's SQLite files, with one meaning for a full disk.

``BEGIN IMMEDIATE`` takes the write lock up front (one writer, no surprise
``SQLITE_BUSY`` half-way); any exception rolls back. A write the state directory cannot
take now (disk full, read-only file system, an I/O error on write) becomes
:class:`~threezone.errors.StorageError`: SQLite has rolled the transaction back, so
nothing of it is stored, and the caller may try again once there is room.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from threezone.errors import StorageError

# Primary result codes (the low byte of an extended one): SQLITE_READONLY, SQLITE_IOERR,
# SQLITE_FULL.
_NO_ROOM = frozenset({8, 10, 13})


@contextmanager
def write_tx(db: sqlite3.Connection, path: Path, durable: bool = False) -> Iterator[None]:
    """One write transaction on ``db``; ``durable`` commits with ``synchronous=FULL``."""
    try:
        with _transaction(db, durable):
            yield
    except sqlite3.OperationalError as exc:
        if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) not in _NO_ROOM:
            raise
        with contextlib.suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")
        raise StorageError(str(path), f"cannot write: {exc}") from exc


@contextmanager
def _transaction(db: sqlite3.Connection, durable: bool) -> Iterator[None]:
    if durable:
        db.execute("PRAGMA synchronous=FULL")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        if durable:
            db.execute("PRAGMA synchronous=NORMAL")
