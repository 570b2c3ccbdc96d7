"""A Maildir as an inbound source (the demo's stand-in for IMAP).

Inbox first, then acknowledge: :meth:`MaildirSource.fetch` lists ``new/`` without
changing it; only after the executor has stored a message durably does
:meth:`acknowledge` move it to ``cur/`` with the Seen flag. A crash in between
re-fetches the message, and the inbox recognises it by its Maildir key.

Trusted metadata: the executor vouches only for what the provider vouched for. The
sender counts as authenticated when the *topmost* ``Authentication-Results`` header
comes from the configured ``authserv_id`` and reports ``dmarc=pass`` for the From
domain. Headers further down, or from other servers, are attacker-writable and
ignored. This is the one place the executor reads bytes of an untrusted message: the
header block only, capped at 64 KiB, with failures meaning "not authenticated".
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import email.utils
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from threezone.connectors.base import RawItem
from threezone.protocol.messages import Channel, Trigger

MAX_HEADER_BYTES = 64 * 1024
_DMARC_PASS = re.compile(r"\bdmarc=pass\b.*?\bheader\.from=(?P<domain>[A-Za-z0-9.-]+)", re.I | re.S)


class MaildirSource:
    def __init__(self, root: Path, account: str, authserv_id: str, max_raw_bytes: int) -> None:
        self.root = root
        self.account = account
        self.authserv_id = authserv_id
        self.max_raw_bytes = max_raw_bytes

    def ensure(self) -> None:
        for sub in ("new", "cur", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def fetch(self) -> Iterator[RawItem]:
        """Messages waiting in ``new/``, oldest name first. Nothing is moved here."""
        new = self.root / "new"
        if not new.is_dir():
            return
        for path in sorted(p for p in new.iterdir() if p.is_file() and not p.name.startswith(".")):
            yield self._item(path)

    def acknowledge(self, source_ref: str) -> None:
        """Mark a stored message seen (``new/KEY`` -> ``cur/KEY:2,S``); idempotent."""
        for path in (self.root / "new").glob(f"{source_ref}*"):
            path.rename(self.root / "cur" / f"{source_ref}:2,S")

    def _item(self, path: Path) -> RawItem:
        size = path.stat().st_size
        source_ref = path.name.split(":", 1)[0]
        with path.open("rb") as handle:
            # An oversized message is still stored (truncated) so it can be quarantined
            # with its reason rather than silently skipped.
            data = handle.read(min(size, self.max_raw_bytes))
        trigger = self.trigger_for(data, size)
        return RawItem(source_ref, data, trigger, oversized=size > self.max_raw_bytes)

    def trigger_for(self, untrusted_raw: bytes, size: int) -> Trigger:
        sender = self._authenticated_sender(untrusted_raw[:MAX_HEADER_BYTES])
        return Trigger(
            channel="email",
            account=self.account,
            sender=sender,
            sender_authenticated=sender is not None,
            received_at=datetime.now(UTC).isoformat(timespec="seconds"),
            flagged=False,
        )

    def _authenticated_sender(self, untrusted_head: bytes) -> str | None:
        if not self.authserv_id:
            return None
        try:
            headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
                untrusted_head
            )
            results = headers.get_all("Authentication-Results") or []
            _name, address = email.utils.parseaddr(str(headers.get("From", "")))
        except Exception:
            return None
        return _verdict(str(results[0]) if results else "", address, self.authserv_id)


def _verdict(top_result: str, address: str, authserv_id: str) -> str | None:
    """The From address if the provider's own result says DMARC passed for its domain."""
    server = top_result.split(";", 1)[0].strip().lower()
    match = _DMARC_PASS.search(top_result)
    if server != authserv_id.lower() or match is None or "@" not in address:
        return None
    domain = address.rsplit("@", 1)[1].lower()
    return address.lower() if domain == match["domain"].lower() else None


class MaildirPoller:
    """:class:`MaildirSource` as an async :class:`~threezone.connectors.base.Source`.

    A local directory has no push notification we can rely on everywhere, so this
    polls ``new/`` every ``interval`` seconds while nothing is waiting.
    """

    channel: Channel = "email"

    def __init__(self, source: MaildirSource, interval: float = 1.0) -> None:
        self.source = source
        self.interval = interval

    async def fetch(self, timeout: float) -> list[RawItem]:
        deadline = time.monotonic() + timeout
        while True:
            items = list(self.source.fetch())
            remaining = deadline - time.monotonic()
            if items or remaining <= 0:
                return items
            await asyncio.sleep(min(self.interval, remaining))

    async def acknowledge(self, source_ref: str) -> None:
        self.source.acknowledge(source_ref)

    async def close(self) -> None:
        return None
