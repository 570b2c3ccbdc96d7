"""Small file primitives the audit log and its checkpoint file share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

from threezone.audit.chain import MAX_RECORD_BYTES
from threezone.errors import AuditError

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


def write_all(fd: int, data: bytes, path: Path) -> None:
    """One write of a short line, then fsync; raises ``AuditError`` on any failure."""
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write: {written} of {len(data)} bytes")
        os.fsync(fd)
    except OSError as exc:
        raise AuditError(str(path), f"cannot append: {exc}") from exc


def bounded_lines(file: BinaryIO) -> Iterator[bytes]:
    """Yield lines, never reading more than one record's maximum at a time.

    A longer line comes out in pieces; the first piece is over the limit, so verification
    stops there as "malformed" instead of reading a hostile gigabyte into memory.
    """
    while line := file.readline(MAX_RECORD_BYTES + 1):
        yield line
