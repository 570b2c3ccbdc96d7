"""The demo's outbound mail sink: allowed email actions become .eml files on disk.

Nothing leaves the machine. Each file is named by the action's idempotency key and
written atomically (temporary file, fsync, rename), so replaying an action after a
crash finds the file already there instead of writing a second one.
"""

from __future__ import annotations

import os
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path


class Outbox:
    def __init__(self, directory: Path, sender: str) -> None:
        self.directory = directory
        self.sender = sender

    def deliver(self, folder: str, key: str, headers: dict[str, str], body: str) -> Path:
        target_dir = self.directory / folder
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{key}.eml"
        if target.exists():
            return target
        message = EmailMessage()
        message["From"] = self.sender
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain="threezone.invalid")
        message["X-Threezone-Action-Key"] = key
        for name, value in headers.items():
            message[name] = value
        message.set_content(body)
        _write_atomic(target, message.as_bytes())
        return target


def _write_atomic(target: Path, data: bytes) -> None:
    temporary = target.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
