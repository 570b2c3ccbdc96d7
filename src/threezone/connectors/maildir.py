"""A Maildir as an inbound source (the demo's stand-in for IMAP).

Inbox first, then acknowledge: :meth:`MaildirSource.fetch` lists ``new/`` without
changing it; only after the executor has stored a message durably does
:meth:`acknowledge` move it to ``cur/`` with the Seen flag. A crash in between
re-fetches the message, and the inbox recognises it by its Maildir key.

Trusted metadata: the executor vouches only for what the provider vouched for, by the
rule shared with IMAP in :mod:`threezone.connectors.mailauth` (the topmost
``Authentication-Results`` header from the configured ``authserv_id`` must report
``dmarc=pass`` for the From domain).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

from threezone.connectors.base import RawItem
from threezone.connectors.mailauth import email_trigger
from threezone.protocol.messages import Channel, Trigger


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
        """The trusted metadata (:func:`~threezone.connectors.mailauth.email_trigger`)."""
        return email_trigger(untrusted_raw, account=self.account, authserv_id=self.authserv_id)


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
