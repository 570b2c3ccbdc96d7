"""Alerts for the owner: things a person must look at, not just a line in a log.

Each alert is an audit record (durable), an error log line, and a line in
``alerts.jsonl`` in the state directory (0600), which channel connectors deliver to
the owner (the Telegram connector sends them to the owner's chat).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import msgspec

from threezone.audit.log import AuditLog

log = logging.getLogger(__name__)


class Alert(msgspec.Struct, frozen=True):
    time: float
    kind: str
    detail: str
    message: str | None


class OwnerAlerts:
    def __init__(self, path: Path, audit: AuditLog) -> None:
        self.path = path
        self._audit = audit

    def raise_alert(self, kind: str, detail: str, message_id: str | None = None) -> Alert:
        alert = Alert(time.time(), kind, detail[:2000], message_id)
        log.error("ALERT %s: %s", kind, alert.detail)
        self._audit.append("alert", {"kind": kind, "detail": alert.detail, "message": message_id})
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as out:
            out.write(msgspec.json.encode(alert) + b"\n")
            out.flush()
            os.fsync(out.fileno())
        return alert

    def read(self) -> list[Alert]:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        return [msgspec.json.decode(line, type=Alert) for line in lines if line.strip()]
