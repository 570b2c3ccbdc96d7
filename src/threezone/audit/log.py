"""The audit log on disk: an append-only JSONL file holding one hash chain.

Durability: each record is one ``os.write`` on an ``O_APPEND`` descriptor, and by
default :meth:`AuditLog.append` fsyncs before it returns, so a decision the executor
acts on is on disk first. ``durable=False`` defers the fsync (group commit) to the
next durable append, :meth:`AuditLog.sync` or :meth:`AuditLog.close`: for records
whose loss in a power cut costs nothing but the record (the step is redone). A crash
mid-write leaves at most a torn last line, which verification reports as
"truncated-line"; nothing is ever repaired silently.

One writer per file: :meth:`AuditLog.open` takes an exclusive ``flock`` (advisory, POSIX)
so a second executor cannot fork the chain. Within a process an ``AuditLog`` is not
thread-safe; the executor drives it from a single asyncio task.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Self

from threezone.audit.chain import (
    EMPTY_HEAD,
    MAX_RECORD_BYTES,
    ChainHead,
    VerifyReport,
    canonical,
    parse_loosely,
    seal,
    verify_lines,
)
from threezone.errors import AuditError

_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_TAIL_BLOCK: Final = 64 * 1024


def _utc_now() -> datetime:
    return datetime.now(UTC)


def format_ts(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``, the only form the chain accepts.

    A naive datetime is refused: guessing its zone would put a wrong time in the record.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("the audit clock returned a naive datetime; it must be timezone-aware")
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text.removesuffix("+00:00") + "Z"


class AuditLog:
    """An open audit log that appends sealed records. Use :meth:`open`, not the constructor."""

    def __init__(self, path: Path, fd: int, head: ChainHead, now: Callable[[], datetime]) -> None:
        self._path = path
        self._fd: int | None = fd
        self._head = head
        self._now = now
        self._failed = False
        self._dirty = False  # appended without fsync since the last fsync

    @classmethod
    def open(cls, path: Path, *, now: Callable[[], datetime] = _utc_now) -> AuditLog:
        """Open ``path`` for appending, creating it (mode 0600) if missing.

        An existing log is verified in full first and the chain resumes from its head;
        a broken one raises ``AuditChainBroken``, because appending to it would bury the
        damage under fresh, valid records. ``now`` is the clock (injectable for tests).
        """
        fd = _open_locked(path)
        try:
            report = _verify_fd(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, report.head, now)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def head(self) -> ChainHead:
        """The last record written (``seq`` -1 and GENESIS for an empty log)."""
        return self._head

    def append(
        self, kind: str, data: Mapping[str, object], *, durable: bool = True
    ) -> dict[str, object]:
        """Seal and durably write one record, then return it exactly as written.

        Raises ``AuditError`` if the record cannot be recorded faithfully (see
        :mod:`threezone.audit.chain` for what ``data`` may hold) or cannot be written.
        After a failed write the log refuses further appends: its file may end in a
        torn line, and the next record must not be chained onto an unknown state.
        """
        fd = self._writable_fd()
        try:
            record, head = seal(self._head, kind, data, format_ts(self._now()))
        except ValueError as exc:
            raise AuditError(str(self._path), f"cannot record: {exc}") from None
        self._write(fd, canonical(record) + b"\n", durable)
        self._head = head
        return record

    def sync(self) -> None:
        """fsync records appended with ``durable=False``; a no-op when there are none."""
        if self._dirty:
            self._write(self._writable_fd(), b"", durable=True)

    def close(self) -> None:
        """Release the lock and the descriptor; closing twice is harmless."""
        if self._fd is not None:
            if self._dirty and not self._failed:
                self.sync()
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _writable_fd(self) -> int:
        if self._fd is None:
            raise AuditError(str(self._path), "the log is closed")
        if self._failed:
            raise AuditError(str(self._path), "an earlier write failed; verify the log")
        return self._fd

    def _write(self, fd: int, line: bytes, durable: bool) -> None:
        """One ``os.write``, then ``fsync`` if durable; any failure poisons this log object."""
        try:
            written = os.write(fd, line) if line else 0
            if written != len(line):
                raise OSError(f"short write: {written} of {len(line)} bytes")
            if durable:
                os.fsync(fd)
            self._dirty = not durable
        except OSError as exc:
            self._failed = True
            raise AuditError(str(self._path), f"cannot append: {exc}") from exc


def verify_file(path: Path) -> VerifyReport:
    """Verify the whole log at ``path``.

    Raises ``AuditError`` if it is missing or unreadable, ``AuditChainBroken`` at the
    first broken line. A log whose last records were cut off still verifies; see
    :mod:`threezone.audit.chain`.
    """
    try:
        with path.open("rb") as file:
            return verify_lines(_bounded_lines(file), str(path))
    except OSError as exc:
        raise AuditError(str(path), f"cannot read: {exc}") from exc


def tail(path: Path, n: int = 20) -> list[dict[str, object]]:
    """The last ``n`` records, oldest first, parsed but NOT verified.

    Reads backwards from the end, so the cost depends on ``n``, not on the file's size.
    A torn last line is skipped (it is not a record); a complete line that is not a JSON
    object raises ``AuditError`` (run :func:`verify_file` to find out why).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return []
    try:
        with path.open("rb") as file:
            lines = _last_lines(file, n)
    except OSError as exc:
        raise AuditError(str(path), f"cannot read: {exc}") from exc
    return [_parse_loose(line, path) for line in lines]


# --- helpers ----------------------------------------------------------------------------------


def _open_locked(path: Path) -> int:
    """Open (creating if needed) ``path`` for reading and appending, locked exclusively."""
    try:
        path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(path, flags, _FILE_MODE)
    except OSError as exc:
        raise AuditError(str(path), f"cannot open: {exc}") from exc
    try:
        _lock(fd, path)
        if os.fstat(fd).st_size == 0:
            _make_private_and_durable(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock(fd: int, path: Path) -> None:
    """Take the single-writer lock, failing at once rather than waiting for it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AuditError(str(path), "another writer has this log open") from None
    except OSError as exc:
        raise AuditError(str(path), f"cannot lock: {exc}") from exc


def _make_private_and_durable(fd: int, path: Path) -> None:
    """Force mode 0600 whatever the umask, and fsync the directory so the file survives."""
    try:
        os.fchmod(fd, _FILE_MODE)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise AuditError(str(path), f"cannot prepare a new log: {exc}") from exc


def _verify_fd(fd: int, path: Path) -> VerifyReport:
    """Verify the log through the locked descriptor, so it is the file we will append to."""
    if os.fstat(fd).st_size == 0:
        return VerifyReport(records=0, head=EMPTY_HEAD)
    try:
        # A dup shares the offset, which O_APPEND writes ignore; closing it keeps ``fd``.
        with open(os.dup(fd), "rb") as file:
            file.seek(0)
            return verify_lines(_bounded_lines(file), str(path))
    except OSError as exc:
        raise AuditError(str(path), f"cannot read: {exc}") from exc


def _bounded_lines(file: BinaryIO) -> Iterator[bytes]:
    """Yield lines, never reading more than one record's maximum at a time.

    A longer line comes out in pieces; the first piece is over the limit, so verification
    stops there as "malformed" instead of reading a hostile gigabyte into memory.
    """
    while line := file.readline(MAX_RECORD_BYTES + 1):
        yield line


def _last_lines(file: BinaryIO, n: int) -> list[bytes]:
    """The last ``n`` complete lines (without newlines), reading backwards in blocks.

    Reading stops after ``n`` maximum-size records' worth of bytes, so an over-long line
    cannot make ``tail`` read the whole file.
    """
    pos = file.seek(0, os.SEEK_END)
    buf = b""
    budget = n * MAX_RECORD_BYTES + _TAIL_BLOCK
    while pos > 0 and buf.count(b"\n") <= n and len(buf) < budget:
        step = min(_TAIL_BLOCK, pos)
        pos -= step
        file.seek(pos)
        buf = file.read(step) + buf
    pieces = buf.split(b"\n")
    pieces.pop()  # after the last newline: empty, or a torn line that is not a record
    if pos > 0 and pieces:
        pieces.pop(0)  # may begin mid-line
    return pieces[-n:]


def _parse_loose(line: bytes, path: Path) -> dict[str, object]:
    record = parse_loosely(line)
    if record is None:
        raise AuditError(str(path), "a line near the end is not a JSON object; run verify")
    return record
