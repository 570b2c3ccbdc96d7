"""Small file primitives the audit log and its checkpoint file share."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

from threezone.audit.chain import MAX_RECORD_BYTES
from threezone.errors import AuditError, StorageError

FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700


def make_private_and_durable(fd: int, path: Path) -> None:
    """Force mode 0600 whatever the umask, and fsync the directory so the file survives."""
    try:
        os.fchmod(fd, FILE_MODE)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise AuditError(str(path), f"cannot prepare a new log: {exc}") from exc


NO_ROOM: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def write_all(fd: int, data: bytes, path: Path, *, durable: bool = True) -> None:
    """One write of a short line (none for empty ``data``), then fsync if ``durable``.

    A line the disk has no room for (or a read-only file system refused) is cut back
    off the file, which then ends where it did, and raises :class:`StorageError`: writing
    works again once there is space. Any other failure raises ``AuditError``.
    """
    start = os.lseek(fd, 0, os.SEEK_END) if data else 0  # where O_APPEND will write
    try:
        written = os.write(fd, data) if data else 0
        if written != len(data):
            raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)} bytes")
        if durable:
            os.fsync(fd)
    except OSError as exc:
        if exc.errno in NO_ROOM and data and cut_back(fd, start):
            detail = f"cannot append ({exc.strerror}); the record was not written"
            raise StorageError(str(path), detail) from exc
        raise AuditError(str(path), f"cannot append: {exc}") from exc


def cut_back(fd: int, size: int) -> bool:
    """Remove a partly written line; whether the file ends where it did before."""
    try:
        os.ftruncate(fd, size)
        return os.fstat(fd).st_size == size
    except OSError:
        return False


def bounded_lines(file: BinaryIO) -> Iterator[bytes]:
    """Yield lines, never reading more than one record's maximum at a time.

    A longer line comes out in pieces; the first piece is over the limit, so verification
    stops there as "malformed" instead of reading a hostile gigabyte into memory.
    """
    while line := file.readline(MAX_RECORD_BYTES + 1):
        yield line
