"""Mail from an IMAP server, as a :class:`~threezone.connectors.base.Source`.

**Nothing skipped, nothing twice.** The connector never changes the mailbox (it
selects it read-only and fetches with ``BODY.PEEK``); its bookkeeping is a *cursor*
in :class:`~threezone.connectors.base.ConnectorState`: ``UIDVALIDITY:UID``, meaning
every message up to that UID is stored in the executor's inbox. :meth:`fetch` returns
the messages above the cursor that are not yet acknowledged; :meth:`acknowledge`
advances the cursor over the longest run of acknowledged UIDs (UIDs only grow, so a
run has no holes), and only then. A crash between fetch and acknowledge fetches the
message again. When UIDVALIDITY changes, the old UIDs mean nothing: the cursor goes
back to zero and the whole mailbox is fetched again.

**Source refs are content-derived** (``imap-`` and a SHA-256 of the size and the bytes
fetched), not ``UIDVALIDITY-UID``: stable across restarts *and* across a UIDVALIDITY
change or a move to another server, so the inbox's ``(channel, source_ref)`` key
recognises every re-fetched message and the agent does not answer old mail twice.
Two byte-identical messages are the same message (a real delivery carries its own
``Received`` line, so only a true duplicate collides).

**Trusted metadata** comes from :mod:`threezone.connectors.mailauth` (the provider's
topmost ``Authentication-Results``) and the server's INTERNALDATE.

**Network.** Every connection goes through :class:`~threezone.executor.egress.Egress`
(connector ``imap``): the name is resolved and checked once, the socket is opened to
the pinned address, and TLS verifies the certificate against the *name*. IMAPClient
connects by host name itself, so :class:`_PinnedIMAPClient` replaces its one socket
hook (``_create_IMAP4``) with an ``imaplib.IMAP4`` whose ``_create_socket`` connects
to the pinned address. ``tls = "insecure-plaintext"`` is refused unless every pinned
address is loopback (tests only).

**Threads.** IMAPClient is synchronous: each call runs in a worker thread
(``asyncio.to_thread``) under a lock, so the event loop stays free; IDLE waits in
short slices so :meth:`close` is never stuck behind a long wait.

**Errors.** Wrong credentials, a certificate that does not verify, or a server
lacking STARTTLS raise ``ConnectorError(retryable=False)``; timeouts and dropped
connections raise ``ConnectorError(retryable=True)`` and the next call reconnects.
The password never appears in an error. ``EgressDenied`` passes through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import imaplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

# imapclient ships no type information; its API is wrapped in this module only.
from imapclient import IMAPClient  # type: ignore[import-untyped]
from imapclient import exceptions as imap_errors

from threezone.config.schema import EmailChannelConfig, ImapConfig
from threezone.connectors.base import ConnectorState, RawItem
from threezone.connectors.mailauth import email_trigger
from threezone.errors import ConnectorError
from threezone.executor.egress import Egress, Pinned
from threezone.executor.secrets import SecretStore
from threezone.protocol.messages import Channel

CONNECTOR = "imap"
IDLE_SLICE = 1.0  # seconds one worker-thread wait may take before the loop checks back
IDLE_RENEW = 25 * 60.0  # re-issue IDLE this often (servers may end one after 30 minutes)
_T = TypeVar("_T")


# --- TLS and pinning (shared with the SMTP connector) -------------------------------------


def tls_context(ca_file: str) -> ssl.SSLContext:
    """The system trust store, plus ``ca_file`` (a test server's own CA) when given."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def refuse_plaintext_off_loopback(connector: str, pinned: Pinned) -> None:
    """``insecure-plaintext`` sends the password in clear: loopback test servers only."""
    outside = [str(a) for a in pinned.addresses if not a.is_loopback]
    if outside:
        raise ConnectorError(
            connector,
            f"tls = 'insecure-plaintext' is only allowed for loopback test servers, and"
            f" {pinned.host} resolves to {', '.join(outside)}; use 'tls' or 'starttls'",
            retryable=False,
        )


def connect_pinned(pinned: Pinned, timeout: float) -> socket.socket:
    """A blocking TCP socket to the first pinned address that answers (never the name)."""
    last: OSError | None = None
    for address in pinned.addresses:
        try:
            return socket.create_connection((str(address), pinned.port), timeout=timeout)
        except OSError as exc:
            last = exc
    raise last if last is not None else OSError("no address to connect to")


def scrub(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` masked (servers rarely echo, never trust)."""
    return text.replace(secret, "***") if secret else text


# --- IMAPClient on a pinned socket --------------------------------------------------------


class _PinnedIMAP4(imaplib.IMAP4):
    """imaplib's IMAP4 whose socket goes to a pinned address; TLS verifies ``pinned.host``.

    ``self.host`` stays the *name*, so imaplib's own STARTTLS also verifies the name.
    """

    def __init__(self, pinned: Pinned, context: ssl.SSLContext | None, timeout: float) -> None:
        self._pinned = pinned
        self._implicit_tls = context
        super().__init__(pinned.host, pinned.port, timeout=timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        sock = connect_pinned(self._pinned, timeout if timeout is not None else 30.0)
        if self._implicit_tls is None:
            return sock
        try:
            return self._implicit_tls.wrap_socket(sock, server_hostname=self._pinned.host)
        except BaseException:
            sock.close()
            raise


class _PinnedIMAPClient(IMAPClient):  # type: ignore[misc]  # IMAPClient is untyped (Any)
    """IMAPClient with its connection hook replaced by :class:`_PinnedIMAP4`."""

    def __init__(
        self, pinned: Pinned, context: ssl.SSLContext, *, implicit_tls: bool, timeout: float
    ) -> None:
        self._pinned = pinned
        self._context = context
        super().__init__(
            pinned.host, port=pinned.port, ssl=implicit_tls, ssl_context=context, timeout=timeout
        )

    def _create_IMAP4(self) -> imaplib.IMAP4:
        context = self._context if self.ssl else None
        return _PinnedIMAP4(self._pinned, context, self._timeout.connect)


@dataclass(frozen=True, slots=True)
class _Meta:
    uid: int
    size: int
    internal_date: datetime | None


class _Session:
    """One logged-in IMAP connection; every method runs in a worker thread.

    The lock serialises the thread-side calls: a cancelled ``fetch`` leaves its worker
    thread running to the end of its slice, and the next call must wait for it.
    """

    def __init__(self, client: Any, mailbox: str, uidvalidity: int) -> None:
        self.client = client
        self.mailbox = mailbox
        self.uidvalidity = uidvalidity
        self.lock = threading.Lock()
        self.idling = False
        self.idle_since = 0.0

    def _ready(self) -> None:
        if self.idling:
            self.idling = False
            self.client.idle_done()

    def uids_after(self, cursor: int) -> list[int]:
        with self.lock:
            self._ready()
            self.client.noop()  # a server shows new mail to a session only when it syncs
            found = self.client.search(["UID", f"{cursor + 1}:*"])
        return sorted(uid for uid in found if uid > cursor)

    def meta(self, uids: Sequence[int]) -> list[_Meta]:
        with self.lock:
            self._ready()
            answer = self.client.fetch(list(uids), ["RFC822.SIZE", "INTERNALDATE"])
        return [
            _Meta(uid, int(data[b"RFC822.SIZE"]), data.get(b"INTERNALDATE"))
            for uid, data in sorted(answer.items())
            if b"RFC822.SIZE" in data
        ]

    def body(self, uid: int, limit: int, size: int) -> bytes | None:
        """The message, or its first ``limit`` bytes; None if it was expunged meanwhile."""
        item = "BODY.PEEK[]" if size <= limit else f"BODY.PEEK[]<0.{limit}>"
        with self.lock:
            self._ready()
            answer = self.client.fetch([uid], [item])
        data = answer.get(uid, {})
        body = next((v for k, v in data.items() if k.startswith(b"BODY[")), None)
        return bytes(body[:limit]) if isinstance(body, bytes) else None

    def can_idle(self) -> bool:
        with self.lock:
            return bool(self.client.has_capability("IDLE"))

    def idle_slice(self, seconds: float) -> bool:
        """Wait in IDLE up to ``seconds``; True if anything happened worth a look.

        That is any response (new mail, but also BYE), or an early return with none:
        IMAPClient's ``idle_check`` swallows end-of-file and returns nothing at once,
        so a connection that died would otherwise be polled in a busy loop.
        """
        started = time.monotonic()
        with self.lock:
            if self.idling and started - self.idle_since > IDLE_RENEW:
                self._ready()  # RFC 2177: servers may drop an IDLE older than 30 minutes
            if not self.idling:
                self.client.idle()
                self.idling, self.idle_since = True, started
            responses = self.client.idle_check(timeout=seconds)
        return bool(responses) or time.monotonic() - started < seconds / 2

    def append(self, mailbox: str, message: bytes, flags: Iterable[bytes]) -> None:
        with self.lock:
            self._ready()
            self.client.append(mailbox, message, flags=tuple(flags))

    def has_message_id(self, mailbox: str, message_id: str) -> bool:
        with self.lock:
            self._ready()
            self.client.select_folder(mailbox, readonly=True)
            return bool(self.client.search(["HEADER", "Message-ID", message_id]))

    def close(self) -> None:
        with self.lock:
            try:
                self._ready()
                self.client.logout()
            except Exception:  # already broken: closing the socket is all that is left
                _shutdown_quietly(self)


# --- connecting ---------------------------------------------------------------------------


def _open_session(
    settings: ImapConfig, pinned: Pinned, password: str, mailbox: str | None, timeout: float
) -> _Session:
    """Connect, secure, log in and (optionally) select ``mailbox`` read-only. Thread side."""
    context = tls_context(settings.ca_file)
    client = _PinnedIMAPClient(pinned, context, implicit_tls=settings.tls == "tls", timeout=timeout)
    try:
        if settings.tls == "starttls":
            client.starttls(context)
        client.login(settings.username, password)
        client.normalise_times = False  # keep INTERNALDATE's zone
        uidvalidity = 0
        if mailbox is not None:
            info = client.select_folder(mailbox, readonly=True)
            uidvalidity = int(info[b"UIDVALIDITY"])
        return _Session(client, mailbox or "", uidvalidity)
    except BaseException:
        client.shutdown()
        raise


async def open_session(
    settings: ImapConfig,
    secrets: SecretStore,
    egress: Egress,
    *,
    mailbox: str | None,
    timeout: float,
) -> _Session:
    """A logged-in session over a pinned, verified connection (errors mapped)."""
    pinned = await egress.connect_target(CONNECTOR, settings.host, settings.port)
    if settings.tls == "insecure-plaintext":
        refuse_plaintext_off_loopback(CONNECTOR, pinned)
    password = secrets.get(settings.password_secret)
    return await in_thread(
        _open_session, settings, pinned, password, mailbox, timeout, password=password
    )


async def in_thread(function: Callable[..., _T], *args: Any, password: str = "") -> _T:
    """Run a blocking IMAP call in a worker thread; map its failures to ConnectorError."""
    try:
        return await asyncio.to_thread(function, *args)
    except ConnectorError:
        raise
    except Exception as exc:
        raise imap_error(exc, password) from None


def imap_error(exc: BaseException, password: str) -> ConnectorError:
    """What went wrong, in words that carry no secret, and whether retrying may help."""
    detail = scrub(_text(exc), password)[:300]
    if isinstance(exc, imap_errors.LoginError):
        return ConnectorError(CONNECTOR, f"login refused: {detail}", retryable=False)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectorError(
            CONNECTOR, f"TLS certificate not accepted: {exc.verify_message}", retryable=False
        )
    if isinstance(exc, imap_errors.CapabilityError):
        return ConnectorError(CONNECTOR, f"server lacks {detail}", retryable=False)
    if isinstance(exc, TimeoutError | socket.timeout):
        return ConnectorError(CONNECTOR, "timed out", retryable=True)
    if isinstance(exc, imap_errors.IMAPClientError) and not isinstance(exc, imaplib.IMAP4.abort):
        # A tagged NO or BAD: the server understood and refused (a missing mailbox, say).
        return ConnectorError(CONNECTOR, f"server refused: {detail}", retryable=False)
    kind = type(exc).__name__
    return ConnectorError(CONNECTOR, f"connection failed ({kind}): {detail}", retryable=True)


def _text(exc: BaseException) -> str:
    """The exception's words; imaplib passes the server's reply as bytes."""
    first = exc.args[0] if exc.args else None
    if isinstance(first, bytes):
        return first.decode("utf-8", "replace")
    return str(exc) or type(exc).__name__


# --- the source ---------------------------------------------------------------------------


class ImapSource:
    """New mail in one IMAP mailbox (``config.imap.mailbox``), fetched once and in order."""

    channel: Channel = "email"

    def __init__(
        self,
        config: EmailChannelConfig,
        secrets: SecretStore,
        egress: Egress,
        state: ConnectorState,
        max_raw_bytes: int,
        *,
        io_timeout: float = 60.0,
        max_batch: int = 100,
    ) -> None:
        self._config = config
        self._settings = config.imap
        self._secrets = secrets
        self._egress = egress
        self._state = state
        self._max_raw = max_raw_bytes
        self._io_timeout = io_timeout
        self._max_batch = max_batch
        self._key = f"cursor:{config.imap.username}@{config.imap.host}/{config.imap.mailbox}"
        self._since_key = f"since:{config.imap.username}@{config.imap.host}/{config.imap.mailbox}"
        self._session: _Session | None = None
        self._uidvalidity, self._cursor = self._load_cursor()
        self._known: list[int] = []  # UIDs above the cursor on the server, last we looked
        self._acked: set[int] = set()  # of those, the ones stored in the inbox
        self._refs: dict[str, set[int]] = {}  # handed out, not yet acknowledged

    # Source ----------------------------------------------------------------------------

    async def fetch(self, timeout: float) -> list[RawItem]:
        """Messages above the cursor not yet acknowledged; waits up to ``timeout`` for one."""
        session = await self._connected()
        waiting = await self._waiting(session)
        if not waiting and timeout > 0:
            await self._wait(session, timeout)
            waiting = await self._waiting(session)
        return await self._items(session, waiting)

    async def acknowledge(self, source_ref: str) -> None:
        """The item is in the inbox: advance the cursor past it (and every earlier one)."""
        self._acked.update(self._refs.pop(source_ref, set()))
        cursor = self._cursor
        for uid in self._known:
            if uid not in self._acked:
                break
            cursor = uid
        if cursor != self._cursor:
            self._store_cursor(self._uidvalidity, cursor)
            self._known = [uid for uid in self._known if uid > cursor]
            self._acked = {uid for uid in self._acked if uid > cursor}

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await asyncio.to_thread(session.close)

    # Connection ------------------------------------------------------------------------

    async def _connected(self) -> _Session:
        if self._session is not None:
            return self._session
        session = await open_session(
            self._settings,
            self._secrets,
            self._egress,
            mailbox=self._settings.mailbox,
            timeout=self._io_timeout,
        )
        if self._uidvalidity == -1 and self._settings.start == "new":
            # First start: what is already there is history, not work. Remember when we
            # started, so a later renumbering (below) does not bring the history back.
            existing = await in_thread(session.uids_after, 0)
            # INTERNALDATE has whole seconds: mail from the very second we started counts
            # as new (better answered than missed).
            started = datetime.now(UTC).replace(microsecond=0)
            self._state.set(CONNECTOR, self._since_key, started.isoformat())
            self._store_cursor(session.uidvalidity, existing[-1] if existing else 0)
        elif session.uidvalidity != self._uidvalidity:
            # The server renumbered the mailbox: every old UID is void. Fetch it all again;
            # content-derived source refs let the inbox recognise what it already has.
            self._store_cursor(session.uidvalidity, 0)
            self._known, self._acked, self._refs = [], set(), {}
        self._session = session
        return session

    async def _call(self, function: Callable[..., _T], *args: Any) -> _T:
        """A session call; a failure drops the connection so the next call reconnects."""
        try:
            return await in_thread(function, *args)
        except ConnectorError:
            await self._drop()
            raise

    async def _drop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await asyncio.to_thread(_shutdown_quietly, session)

    # Fetching --------------------------------------------------------------------------

    async def _waiting(self, session: _Session) -> list[int]:
        self._known = await self._call(session.uids_after, self._cursor)
        return [uid for uid in self._known if uid not in self._acked]

    async def _wait(self, session: _Session, timeout: float) -> None:
        """Until the server announces new mail (IDLE) or a poll finds some, or timeout."""
        deadline = time.monotonic() + timeout
        idle = self._settings.idle and await self._call(session.can_idle)
        while (remaining := deadline - time.monotonic()) > 0:
            if idle:
                woke = await self._call(session.idle_slice, min(IDLE_SLICE, remaining))
            else:
                await asyncio.sleep(min(self._settings.poll_seconds, remaining))
                woke = True
            if woke and await self._waiting(session):
                return

    async def _items(self, session: _Session, uids: list[int]) -> list[RawItem]:
        """Fetch bodies in UID order, at most ``max_batch`` and about ``max_raw_bytes``."""
        if not uids:
            return []
        metas = {m.uid: m for m in await self._call(session.meta, uids[: self._max_batch])}
        items: list[RawItem] = []
        budget = self._max_raw
        for uid in uids[: self._max_batch]:
            meta = metas.get(uid)
            if meta is not None and items and min(meta.size, self._max_raw) > budget:
                break  # the rest waits for the next fetch: memory stays bounded
            data = None
            if meta is not None:
                data = await self._call(session.body, uid, self._max_raw, meta.size)
            if meta is None or data is None or self._before_start(meta):
                # Expunged before we read it, or history from before the first start.
                self._acked.add(uid)
                continue
            budget -= len(data)
            items.append(self._item(uid, meta, data))
        return items

    def _before_start(self, meta: _Meta) -> bool:
        """With ``start = "new"``: did the server receive this before our first start?"""
        since = self._state.get(CONNECTOR, self._since_key, "")
        if self._settings.start != "new" or not since or meta.internal_date is None:
            return False
        # IMAPClient gives naive local times; astimezone reads a naive time as local.
        return meta.internal_date.astimezone(UTC) < datetime.fromisoformat(since)

    def _item(self, uid: int, meta: _Meta, data: bytes) -> RawItem:
        digest = hashlib.sha256(meta.size.to_bytes(8, "big") + data).hexdigest()
        source_ref = f"imap-{digest[:48]}"
        self._refs.setdefault(source_ref, set()).add(uid)
        trigger = email_trigger(
            data,
            account=self._config.account,
            authserv_id=self._config.authserv_id,
            received_at=meta.internal_date,
        )
        return RawItem(source_ref, data, trigger, oversized=meta.size > self._max_raw)

    # Cursor ----------------------------------------------------------------------------

    def _load_cursor(self) -> tuple[int, int]:
        raw = self._state.get(CONNECTOR, self._key, "")
        validity, _sep, uid = raw.partition(":")
        if not (validity.isdigit() and uid.isdigit()):
            return -1, 0
        return int(validity), int(uid)

    def _store_cursor(self, uidvalidity: int, uid: int) -> None:
        """One key, one write: validity and UID can never be stored half-updated."""
        self._state.set(CONNECTOR, self._key, f"{uidvalidity}:{uid}")
        self._uidvalidity, self._cursor = uidvalidity, uid


def _shutdown_quietly(session: _Session) -> None:
    with contextlib.suppress(Exception):  # the connection is gone; nothing else to release
        session.client.shutdown()


__all__ = [
    "CONNECTOR",
    "ImapSource",
    "connect_pinned",
    "imap_error",
    "in_thread",
    "open_session",
    "refuse_plaintext_off_loopback",
    "scrub",
    "tls_context",
]
