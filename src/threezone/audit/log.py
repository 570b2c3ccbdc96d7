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

Checkpoints (:class:`Checkpointing`): every ``every`` records and on close the log signs
its head and writes the checkpoint into the chain (a ``"checkpoint"`` record), then into
``<log>.checkpoints`` (fsynced), then hands it to the anchor (a background thread; see
:mod:`threezone.audit.anchor`). Opening compares the two: a checkpoint file that runs
past the log means the log was cut, and the log refuses to open, exactly as for a broken
chain. The one gap a crash can leave (the last checkpoint in the chain but not yet in
the file) is filled in and recorded as a ``checkpoint_restored`` record.

:func:`threezone.audit.verify.verify_log` is the owner's full report;
:func:`verify_file` stays the quick all-or-nothing chain check.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Self

from threezone.audit._files import (
    DIR_MODE,
    FILE_MODE,
    bounded_lines,
    make_private_and_durable,
    write_all,
)
from threezone.audit.anchor import Anchor
from threezone.audit.chain import (
    CHECKPOINT_KIND,
    EMPTY_HEAD,
    MAX_RECORD_BYTES,
    ChainHead,
    VerifyReport,
    canonical,
    parse_loosely,
    seal,
    verify_lines,
)
from threezone.audit.checkpoint import Checkpoint, sign_checkpoint
from threezone.audit.checkpoint_file import (
    CheckpointFile,
    Checkpointing,
    checkpointing_from_config,
    checkpoints_path,
    open_checkpoint_file,
    read_checkpoint_lines,
)
from threezone.errors import AuditError, StorageError

__all__ = [
    "RESERVED_KINDS",
    "AuditLog",
    "Checkpointing",
    "bounded_lines",
    "checkpointing_from_config",
    "checkpoints_path",
    "format_ts",
    "read_checkpoint_lines",
    "tail",
    "verify_file",
]

logger = logging.getLogger(__name__)

_TAIL_BLOCK: Final = 64 * 1024

RESERVED_KINDS: Final = frozenset({CHECKPOINT_KIND})
"""Kinds only the log itself writes: a caller cannot forge a checkpoint record."""


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

    def __init__(
        self,
        path: Path,
        fd: int,
        head: ChainHead,
        now: Callable[[], datetime],
        checkpointer: CheckpointFile | None = None,
    ) -> None:
        self._path = path
        self._fd: int | None = fd
        self._head = head
        self._now = now
        self._failed = False
        self._dirty = False  # appended without fsync since the last fsync
        self._cp = checkpointer

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        now: Callable[[], datetime] = _utc_now,
        checkpointing: Checkpointing | None = None,
    ) -> AuditLog:
        """Open ``path`` for appending, creating it (mode 0600) if missing.

        An existing log is verified in full first and the chain resumes from its head;
        a broken one raises ``AuditChainBroken``, because appending to it would bury the
        damage under fresh, valid records. So does a checkpoint file that disagrees with
        the log (a cut-off tail, an edited or missing file) or a checkpoint record that
        the current key signed but does not verify. ``now`` is the clock (injectable for
        tests); ``checkpointing`` turns signed checkpoints on.
        """
        fd = _open_locked(path)
        try:
            report = _verify_fd(fd, path)
            checkpointer, restored = open_checkpoint_file(path, report, checkpointing)
        except BaseException:
            os.close(fd)
            raise
        log = cls(path, fd, report.head, now, checkpointer)
        if restored is not None:
            logger.warning("%s: restored the checkpoint of seq %d to its file", path, restored)
            log._record("checkpoint_restored", {"seq": restored}, durable=False)
        return log

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
        :mod:`threezone.audit.chain` for what ``data`` may hold), if ``kind`` is one the
        log reserves for itself, or if it cannot be written. After a failed write the log
        refuses further appends: its file may end in a torn line, and the next record
        must not be chained onto an unknown state. Every ``every``-th record is followed
        by a checkpoint record when checkpointing is on.
        """
        if kind in RESERVED_KINDS:
            raise AuditError(str(self._path), f"cannot record: kind {kind!r} is reserved")
        record = self._record(kind, data, durable)
        cp = self._cp
        if cp is not None:
            if cp.anchor is not None and cp.anchor.has_failures():
                self._record_anchor_failures(cp.anchor)
            if cp.since >= cp.every:
                self.checkpoint()
        return record

    def checkpoint(self) -> Checkpoint | None:
        """Sign the head now: write the checkpoint to the chain, the file and the anchor.

        Returns ``None`` (and writes nothing) without checkpointing or when no record
        came since the last checkpoint. Durable: it fsyncs the records it covers.
        """
        cp = self._cp
        if cp is None:
            return None
        if cp.since == 0:
            self._catch_up(cp)
            return None
        self._writable_fd()
        try:
            ts = format_ts(self._now())
            checkpoint = sign_checkpoint(cp.key, self._head, ts)
        except ValueError as exc:
            raise AuditError(str(self._path), f"cannot checkpoint: {exc}") from None
        self._record(CHECKPOINT_KIND, checkpoint.to_data(), durable=True, ts=ts)
        cp.since = 0
        cp.unwritten.append(checkpoint)
        self._catch_up(cp)
        if cp.anchor is not None:
            cp.anchor.submit(checkpoint)
        return checkpoint

    def _catch_up(self, cp: CheckpointFile) -> None:
        """Write the checkpoints the file lacks, oldest first.

        A full disk leaves them for later (the chain holds them; the next checkpoint or
        close writes them, and the one gap a crash can leave is restored at open). Any
        other failure poisons the log: reopening restores the file from the chain.
        """
        try:
            while cp.unwritten:
                cp.write(cp.unwritten[0])
                cp.unwritten.pop(0)
        except StorageError as exc:
            logger.warning("%s; the checkpoint file will catch up", exc)
        except AuditError:
            self._failed = True
            raise

    def sync(self) -> None:
        """fsync records appended with ``durable=False``; a no-op when there are none."""
        if self._dirty:
            self._write(self._writable_fd(), b"", durable=True)

    def close(self) -> None:
        """Write the last checkpoint, wait (bounded) for the anchor, release the lock and
        the descriptors; closing twice is harmless."""
        if self._fd is None:
            return
        try:
            if self._cp is not None and not self._failed:
                self._final_checkpoint(self._cp)
            if self._dirty and not self._failed:
                self.sync()
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)
            if self._cp is not None:
                self._cp.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _record(
        self, kind: str, data: Mapping[str, object], durable: bool = True, ts: str | None = None
    ) -> dict[str, object]:
        """Seal and write one record of any kind (reserved ones included)."""
        fd = self._writable_fd()
        try:
            when = ts if ts is not None else format_ts(self._now())
            record, head = seal(self._head, kind, data, when)
        except ValueError as exc:
            raise AuditError(str(self._path), f"cannot record: {exc}") from None
        self._write(fd, canonical(record) + b"\n", durable)
        self._head = head
        if self._cp is not None:
            self._cp.since += 1
        return record

    def _record_anchor_failures(self, anchor: Anchor) -> bool:
        """Record each checkpoint the anchor failed to send; whether there were any."""
        failures = anchor.failures()
        for failure in failures:
            data = {"checkpoint_seq": failure.seq, "reason": failure.reason}
            self._record("anchor_failed", data, durable=False)
        return bool(failures)

    def _final_checkpoint(self, cp: CheckpointFile) -> None:
        """Checkpoint what is left; then, once the anchor has answered (or timed out),
        record its failures under one more checkpoint, which is not anchored."""
        self.checkpoint()
        if cp.anchor is not None:
            cp.anchor.close(cp.anchor_wait)
            if self._record_anchor_failures(cp.anchor):
                self.checkpoint()

    def _writable_fd(self) -> int:
        if self._fd is None:
            raise AuditError(str(self._path), "the log is closed")
        if self._failed:
            raise AuditError(str(self._path), "an earlier write failed; verify the log")
        return self._fd

    def _write(self, fd: int, line: bytes, durable: bool) -> None:
        """:func:`write_all` one record. A full disk leaves the log whole and usable
        (:class:`StorageError`, the head unchanged); any other failure poisons it."""
        try:
            write_all(fd, line, self._path, durable=durable)
        except StorageError:
            raise
        except AuditError:
            self._failed = True
            raise
        self._dirty = not durable


def verify_file(path: Path) -> VerifyReport:
    """Verify the whole log at ``path``.

    Raises ``AuditError`` if it is missing or unreadable, ``AuditChainBroken`` at the
    first broken line. A log whose last records were cut off still verifies; see
    :mod:`threezone.audit.chain`.
    """
    try:
        with path.open("rb") as file:
            return verify_lines(bounded_lines(file), str(path))
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
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        raise AuditError(str(path), f"cannot open: {exc}") from exc
    try:
        _lock(fd, path)
        if os.fstat(fd).st_size == 0:
            make_private_and_durable(fd, path)
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


def _verify_fd(fd: int, path: Path) -> VerifyReport:
    """Verify the log through the locked descriptor, so it is the file we will append to."""
    if os.fstat(fd).st_size == 0:
        return VerifyReport(records=0, head=EMPTY_HEAD)
    try:
        # A dup shares the offset, which O_APPEND writes ignore; closing it keeps ``fd``.
        with open(os.dup(fd), "rb") as file:
            file.seek(0)
            return verify_lines(bounded_lines(file), str(path))
    except OSError as exc:
        raise AuditError(str(path), f"cannot read: {exc}") from exc


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
