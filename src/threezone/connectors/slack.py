"""Slack: events over Socket Mode, posts over the Web API. Executor only.

The wire protocol is implemented here with httpx2 (through
:meth:`~threezone.executor.egress.Egress.http_client`) and ``websockets`` (over a
socket the egress layer pinned), following Slack's documented shapes:

1. ``POST apps.connections.open`` with the *app-level* token returns
   ``{"ok": true, "url": "wss://..."}``, a single-use WebSocket URL.
2. Slack sends ``{"type": "hello", ...}``, then envelopes
   ``{"envelope_id", "type": "events_api", "payload": {<event_callback>},
   "accepts_response_payload", "retry_attempt", "retry_reason"}``. The client
   acknowledges one by sending ``{"envelope_id": ...}``; Slack redelivers an envelope
   that is not acknowledged in time (or whose connection went away), with
   ``retry_attempt`` counting up.
3. ``{"type": "disconnect", "reason": "warning" | "refresh_requested" | ...}`` says
   this connection is about to end: a new one is opened at once; a dropped connection
   is reopened too (bounded; then :class:`ConnectorError` for the caller's backoff).

**Inbox first, then acknowledge.** :meth:`SlackSource.fetch` returns a
:class:`RawItem` per accepted envelope and does *not* acknowledge it; only
:meth:`SlackSource.acknowledge` does, after the executor stored the item. The
``source_ref`` is the payload's ``event_id``, which stays the same across Slack's
retries, so a redelivered envelope is recognised by the inbox. Slack retries an
envelope that is not acknowledged within about three seconds: storing is a local
SQLite write, and a late acknowledgement only costs a harmless redelivery.

**What is accepted** (everything else is acknowledged at once, so Slack stops
redelivering it, and recorded in :attr:`SlackSource.dropped` for the audit log):

* ``events_api`` envelopes carrying an ``event_callback`` with a ``message`` event
  (``app_mention`` is dropped: the same message also arrives as a ``message`` event,
  and two episodes for one message would be one too many);
* whose subtype is user content: none, ``file_share``, ``thread_broadcast`` or
  ``me_message``. Dropped subtypes include ``message_changed`` (Slack also sends it
  when it adds link previews, so edits would re-run episodes for unchanged text),
  ``message_deleted``, ``message_replied``, ``bot_message``, ``channel_join`` /
  ``_leave`` / ``_topic`` / ``_purpose`` / ``_name`` / ``_archive`` and every other;
* not written by this app (``app_id``, ``bot_id`` or bot user id equal to ours):
  the agent's own posts come back as events and must not loop;
* from a channel in ``allowed_channels`` **or** a user in ``allowed_users`` (both
  empty: nothing is accepted).

**Trusted metadata.** ``sender`` is the event's ``user`` id: Slack sets it, the
author cannot. ``account`` is ``<team id>:<bot user id>`` from ``auth.test``.

**Posting** (``slack.post_message``) uses ``chat.postMessage`` with the bot token.
Slack has no idempotency key for it (``client_msg_id`` is set by Slack's own clients
and not honoured for deduplication), so the action's key goes into the message's
``metadata`` (``event_type="threezone_action"``). What protects against a duplicate
after a crash is the executor's action journal; a crash after Slack accepted the post
but before the journal recorded it re-posts on replay, and the key in the metadata
makes such a duplicate findable (``conversations.history`` with
``include_all_metadata``). ``ratelimited`` (HTTP 429) is retried after
``Retry-After``, boundedly: the post was refused, so a retry cannot duplicate it.
Nothing else is retried here.

Tokens are read from the secret store for each call and appear in no log line,
error message or exception chain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import ssl
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx2
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from threezone.config.schema import SlackChannelConfig
from threezone.connectors.base import ConnectorState, RawItem
from threezone.errors import ConnectorError, EgressDenied, EgressError
from threezone.executor.actions import CATALOG, ActionSpec
from threezone.executor.egress import DEFAULT_PORTS, Egress, Pinned
from threezone.executor.secrets import SecretStore
from threezone.protocol.messages import ArgValue, Channel, Trigger

log = logging.getLogger(__name__)

CONNECTOR = "slack"
USER_SUBTYPES = frozenset({"", "file_share", "thread_broadcast", "me_message"})
METADATA_EVENT_TYPE = "threezone_action"
# Slack error codes worth trying again later; any other ``ok: false`` is final
# (credentials, scopes, arguments, channels).
RETRYABLE_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",
    }
)
MAX_DROPPED_KEPT = 1_000
_ERROR_CODE = re.compile(r"[a-z0-9_.]{1,64}")

Sleep = Callable[[float], Awaitable[None]]


# --- the shapes we read (Slack adds fields freely; we name only what we use) ----------


class _Struct(msgspec.Struct, frozen=True):
    pass


class _Message(_Struct, frozen=True):
    user: str = ""


class _Event(_Struct, frozen=True):
    type: str = ""
    subtype: str = ""
    channel: str = ""
    user: str = ""
    bot_id: str = ""
    app_id: str = ""


class _Payload(_Struct, frozen=True):
    type: str = ""
    event_id: str = ""
    team_id: str = ""
    api_app_id: str = ""
    event: _Event | None = None


class _Frame(_Struct, frozen=True):
    type: str = ""
    envelope_id: str = ""
    reason: str = ""
    retry_attempt: int = 0
    payload: _Payload | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this app is in Slack, from ``auth.test`` with the bot token."""

    team_id: str
    user_id: str
    bot_id: str

    @property
    def account(self) -> str:
        return f"{self.team_id}:{self.user_id}"


@dataclass(frozen=True, slots=True)
class Dropped:
    """An envelope acknowledged without being stored, and why (for the audit log)."""

    source_ref: str
    channel: str
    user: str
    reason: str


# --- the Web API ----------------------------------------------------------------------


class SlackWebApi:
    """Slack Web API calls through the egress layer, with bounded 429 handling.

    ``sleep`` is injectable so tests can count back-offs without waiting for them.
    """

    def __init__(
        self,
        config: SlackChannelConfig,
        secrets: SecretStore,
        egress: Egress,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_attempts: int = 4,
        max_retry_after: float = 120.0,
        timeout: float = 30.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._config = config
        self._secrets = secrets
        self._base = config.api_base.rstrip("/")
        self._client = egress.http_client(CONNECTOR, ssl_context=ssl_context, timeout=timeout)
        self._max_attempts = max(1, max_attempts)
        self._max_retry_after = max_retry_after
        self._sleep = sleep

    @property
    def secure(self) -> bool:
        return self._base.startswith("https://")

    async def call(
        self, method: str, token_secret: str, body: Mapping[str, object] | None = None
    ) -> dict[str, Any]:
        """The decoded reply of a successful call; ConnectorError otherwise."""
        url = f"{self._base}/{method}"
        for attempt in range(1, self._max_attempts + 1):
            # Read at each call: the value lives in the secret store, not here.
            headers = {"Authorization": f"Bearer {self._secrets.get(token_secret)}"}
            response = await self._post(method, url, headers, body or {})
            if response.status_code != 429:
                return _reply(method, response)
            delay = _retry_after(response.headers.get("retry-after"))
            if attempt == self._max_attempts or delay > self._max_retry_after:
                raise ConnectorError(
                    CONNECTOR,
                    f"{method}: rate limited (Retry-After {delay:g} s) after {attempt} attempts",
                )
            log.info("slack %s rate limited; retrying in %g s", method, delay)
            await self._sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    async def _post(
        self, method: str, url: str, headers: dict[str, str], body: Mapping[str, object]
    ) -> httpx2.Response:
        try:
            return await self._client.post(url, headers=headers, json=dict(body))
        except httpx2.TransportError as exc:
            # The exception's request holds the Authorization header: keep it out of the chain.
            raise ConnectorError(CONNECTOR, f"{method}: {type(exc).__name__}") from None
        except EgressError as exc:
            raise _egress_failure(exc) from None

    async def identity(self) -> Identity:
        """``auth.test`` with the bot token: our team, bot user and bot id."""
        reply = await self.call("auth.test", self._config.bot_token_secret)
        team, user, bot = (reply.get(k) for k in ("team_id", "user_id", "bot_id"))
        if not isinstance(team, str) or not isinstance(user, str) or not team or not user:
            raise ConnectorError(CONNECTOR, "auth.test: malformed response (no team or user)")
        return Identity(team, user, bot if isinstance(bot, str) else "")

    async def socket_url(self) -> str:
        """A fresh single-use Socket Mode URL (``apps.connections.open``, app token)."""
        reply = await self.call("apps.connections.open", self._config.app_token_secret)
        url = reply.get("url")
        if not isinstance(url, str) or not url:
            raise ConnectorError(CONNECTOR, "apps.connections.open: malformed response (no url)")
        return url

    async def post_message(
        self, channel: str, text: str, thread_ts: str | None, key: str
    ) -> dict[str, str]:
        """``chat.postMessage`` as the bot; the idempotency key rides in the metadata.

        Link and media unfurling are off: Slack's servers would otherwise fetch every
        URL in text the planner wrote.
        """
        body: dict[str, object] = {
            "channel": channel,
            "text": text,
            "unfurl_links": False,
            "unfurl_media": False,
            "metadata": {
                "event_type": METADATA_EVENT_TYPE,
                "event_payload": {"idempotency_key": key},
            },
        }
        if thread_ts:
            body["thread_ts"] = thread_ts
        reply = await self.call("chat.postMessage", self._config.bot_token_secret, body)
        posted_channel, ts = reply.get("channel"), reply.get("ts")
        if not isinstance(posted_channel, str) or not isinstance(ts, str) or not ts:
            raise ConnectorError(CONNECTOR, "chat.postMessage: malformed response (no channel/ts)")
        return {"channel": posted_channel, "ts": ts}

    async def aclose(self) -> None:
        await self._client.aclose()


def _retry_after(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header; Slack sends whole seconds. Default 1 s."""
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0


def _reply(method: str, response: httpx2.Response) -> dict[str, Any]:
    """The JSON object of a reply with ``ok: true``, or the matching ConnectorError."""
    try:
        decoded = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        decoded = None
    if not isinstance(decoded, dict) or not isinstance(decoded.get("ok"), bool):
        retryable = response.status_code >= 500 or response.status_code == 200
        raise ConnectorError(
            CONNECTOR,
            f"{method}: malformed response (HTTP {response.status_code}, not a Slack reply)",
            retryable=retryable,
        )
    if decoded["ok"]:
        return decoded
    code = decoded.get("error")
    code = code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else "unrecognised_error"
    retryable = code in RETRYABLE_ERRORS or response.status_code >= 500
    raise ConnectorError(CONNECTOR, f"{method}: {code}", retryable=retryable)


def _egress_failure(exc: EgressError) -> ConnectorError:
    """Refusals are final (fix the allowlist); an unresolvable name may come back."""
    return ConnectorError(CONNECTOR, str(exc), retryable=not isinstance(exc, EgressDenied))


# --- Socket Mode ------------------------------------------------------------------------


@dataclass(slots=True)
class _Link:
    """One Socket Mode WebSocket; ``retiring`` once Slack said it will end."""

    ws: ClientConnection
    number: int
    retiring: bool = False
    hello: bool = False


class SlackSource:
    """Socket Mode events as :class:`RawItem`; see the module docstring for the rules.

    ``fetch`` drives the connection itself (no background task): it opens the
    WebSocket when needed and reads until an accepted item arrives or ``timeout``
    passes. websockets answers pings on its own, so a slow caller does not drop it.
    """

    channel: Channel = "slack"

    def __init__(
        self,
        config: SlackChannelConfig,
        secrets: SecretStore,
        egress: Egress,
        state: ConnectorState,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_raw_bytes: int = 25 * 1024 * 1024,
        open_timeout: float = 30.0,
        max_reconnects: int = 3,
        sleep: Sleep = asyncio.sleep,
        api: SlackWebApi | None = None,
    ) -> None:
        self._config = config
        self._egress = egress
        self._state = state
        self._ssl_context = ssl_context
        self._max_raw_bytes = max_raw_bytes
        self._open_timeout = open_timeout
        self._max_reconnects = max(1, max_reconnects)
        self._sleep = sleep
        self._owns_api = api is None
        self.api = api or SlackWebApi(config, secrets, egress, ssl_context=ssl_context, sleep=sleep)
        self._allowed_channels = frozenset(config.allowed_channels)
        self._allowed_users = frozenset(config.allowed_users)
        self._identity: Identity | None = None
        self._link: _Link | None = None
        self._retired: list[_Link] = []
        self._pending: dict[str, tuple[_Link, str]] = {}
        self._failures = 0
        self.connections = 0
        self.dropped: deque[Dropped] = deque(maxlen=MAX_DROPPED_KEPT)

    # --- Source ----------------------------------------------------------------------------

    async def fetch(self, timeout: float) -> list[RawItem]:
        """Accepted items (usually one), or none once ``timeout`` seconds passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            link = await self._connected()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            try:
                async with asyncio.timeout(remaining):
                    frame = await link.ws.recv(decode=False)
            except TimeoutError:
                return []
            except ConnectionClosed:
                self._lost(link)
                continue
            if isinstance(frame, str):  # recv(decode=False) gives bytes; be sure
                frame = frame.encode()
            item = await self._on_frame(link, frame)
            if item is not None:
                return [item]

    async def acknowledge(self, source_ref: str) -> None:
        """Send the envelope's acknowledgement; idempotent, unknown refs are ignored.

        If the connection it arrived on is gone the acknowledgement is lost, Slack
        redelivers, and the inbox recognises the ``event_id``: nothing is lost.
        """
        entry = self._pending.pop(source_ref, None)
        if entry is None:
            return
        link, envelope_id = entry
        await self._send_ack(link, envelope_id)
        self._state.set(CONNECTOR, "last_acknowledged", source_ref)
        await self._close_retired()

    async def close(self) -> None:
        links = [*self._retired, *([self._link] if self._link else [])]
        self._retired, self._link = [], None
        for link in links:
            await link.ws.close()
        if self._owns_api:
            await self.api.aclose()

    # --- connections -----------------------------------------------------------------------

    async def _connected(self) -> _Link:
        if self._link is not None:
            return self._link
        if self._failures >= self._max_reconnects:
            self._failures = 0
            raise ConnectorError(
                CONNECTOR,
                f"socket mode: {self._max_reconnects} connections in a row failed before hello",
            )
        if self._failures:
            await self._sleep(min(0.5 * 2 ** (self._failures - 1), 10.0))
        if self._identity is None:
            self._identity = await self.api.identity()
        url = self._checked_url(await self.api.socket_url())
        self._failures += 1  # until Slack says hello on it
        ws = await self._open(url)
        self.connections += 1
        self._link = _Link(ws, self.connections)
        self._state.set(CONNECTOR, "connections", str(self.connections))
        return self._link

    def _checked_url(self, url: str) -> urllib.parse.SplitResult:
        """The socket must be at least as protected as the API: wss:// behind https://."""
        parts = urllib.parse.urlsplit(url)
        allowed = ("wss",) if self.api.secure else ("wss", "ws")
        if parts.scheme not in allowed or not parts.hostname:
            raise ConnectorError(
                CONNECTOR,
                f"apps.connections.open returned a {parts.scheme or 'schemeless'}:// URL",
                retryable=False,
            )
        return parts

    async def _open(self, url: urllib.parse.SplitResult) -> ClientConnection:
        """Connect to an address the egress layer pinned, then speak WebSocket on it."""
        secure = url.scheme == "wss"
        try:
            pinned = await self._egress.connect_target(
                CONNECTOR, url.hostname or "", url.port or DEFAULT_PORTS[url.scheme]
            )
        except EgressError as exc:
            raise _egress_failure(exc) from None
        sock = await self._tcp(pinned)
        context = (self._ssl_context or ssl.create_default_context()) if secure else None
        try:
            return await connect(
                urllib.parse.urlunsplit(url),
                sock=sock,
                ssl=context,
                server_hostname=pinned.host if secure else None,
                proxy=None,
                open_timeout=self._open_timeout,
                max_size=self._max_raw_bytes * 2,
                close_timeout=2.0,  # Slack may leave the TCP connection open after closing
                compression=None,
                user_agent_header="threezone",
            )
        except (InvalidHandshake, InvalidURI, OSError, TimeoutError) as exc:
            sock.close()
            # Never the URL: its query holds the connection ticket.
            raise ConnectorError(
                CONNECTOR, f"socket mode: cannot open the WebSocket ({type(exc).__name__})"
            ) from None

    async def _tcp(self, pinned: Pinned) -> socket.socket:
        loop = asyncio.get_running_loop()
        last = "no address"
        for address in pinned.addresses:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(self._open_timeout):
                    await loop.sock_connect(sock, (str(address), pinned.port))
                return sock
            except (OSError, TimeoutError) as exc:
                sock.close()
                last = type(exc).__name__
        raise ConnectorError(CONNECTOR, f"socket mode: {pinned.host}:{pinned.port}: {last}")

    def _lost(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
        log.info("slack socket mode connection %d closed; reconnecting", link.number)

    async def _close_retired(self) -> None:
        waiting = {id(link) for link, _ in self._pending.values()}
        for link in [r for r in self._retired if id(r) not in waiting]:
            self._retired.remove(link)
            await link.ws.close()

    async def _send_ack(self, link: _Link, envelope_id: str) -> None:
        try:
            await link.ws.send(json.dumps({"envelope_id": envelope_id}))
        except ConnectionClosed:
            log.info("slack acknowledgement lost with its connection; Slack will redeliver")

    # --- frames ----------------------------------------------------------------------------

    async def _on_frame(self, link: _Link, frame: bytes) -> RawItem | None:
        try:
            parsed = msgspec.json.decode(frame, type=_Frame)
        except msgspec.DecodeError:
            log.warning("slack socket mode sent a frame that is not a valid message; ignored")
            return None
        if parsed.type == "hello":
            link.hello = True
            self._failures = 0
            return None
        if parsed.type == "disconnect":
            self._retire(link, parsed.reason)
            return None
        if not parsed.envelope_id:
            return None  # nothing to acknowledge, nothing we know
        verdict = self._judge(parsed)
        if isinstance(verdict, Dropped):
            self.dropped.append(verdict)
            log.info("slack envelope dropped: %s", verdict.reason)
            await self._send_ack(link, parsed.envelope_id)
            return None
        return self._item(link, parsed, verdict, frame)

    def _retire(self, link: _Link, reason: str) -> None:
        """Slack will end this connection: the next read opens a new one."""
        log.info("slack asked connection %d to disconnect (%s)", link.number, reason[:40])
        if reason == "link_disabled":
            log.warning("slack says Socket Mode is turned off for this app")
        link.retiring = True
        if self._link is link:
            self._link = None
            self._retired.append(link)

    def _judge(self, frame: _Frame) -> _Event | Dropped:
        """The message event if this envelope is accepted, else why it is not."""
        found = _message_event(frame)
        if isinstance(found, Dropped):
            return found
        payload, event = found
        ref, where, who = payload.event_id, event.channel, event.user
        if event.subtype not in USER_SUBTYPES:
            return Dropped(ref, where, who, f"message subtype {event.subtype[:40]!r}")
        if self._is_own(event, payload):
            return Dropped(ref, where, who, "written by this app")
        if not ref or not who:
            return Dropped(
                ref or f"envelope:{frame.envelope_id}", where, who, "no event_id or user"
            )
        if where not in self._allowed_channels and who not in self._allowed_users:
            return Dropped(ref, where, who, "channel and user not allowed")
        return event

    def _is_own(self, event: _Event, payload: _Payload) -> bool:
        me = self._identity
        return bool(
            (event.app_id and event.app_id == payload.api_app_id)
            or (me and event.user and event.user == me.user_id)
            or (me and me.bot_id and event.bot_id == me.bot_id)
        )

    def _item(self, link: _Link, frame: _Frame, event: _Event, raw: bytes) -> RawItem:
        assert frame.payload is not None
        assert self._identity is not None
        source_ref = frame.payload.event_id
        self._pending[source_ref] = (link, frame.envelope_id)  # a redelivery's id replaces
        trigger = Trigger(
            channel="slack",
            account=self._identity.account,
            sender=event.user,
            sender_authenticated=True,
            received_at=datetime.now(UTC).isoformat(timespec="seconds"),
            flagged=False,
        )
        oversized = len(raw) > self._max_raw_bytes
        data = raw[: self._max_raw_bytes] if oversized else raw
        return RawItem(source_ref, data, trigger, oversized=oversized)


def _message_event(frame: _Frame) -> tuple[_Payload, _Event] | Dropped:
    """The ``message`` event of an ``events_api`` envelope, else why there is none."""
    payload = frame.payload
    ref = payload.event_id if payload and payload.event_id else f"envelope:{frame.envelope_id}"
    if frame.type != "events_api" or payload is None or payload.type != "event_callback":
        return Dropped(ref, "", "", f"envelope type {frame.type[:40]!r}")
    event = payload.event
    if event is None or event.type != "message":
        kind = event.type[:40] if event else "none"
        return Dropped(ref, "", "", f"event type {kind!r}")
    return payload, event


# --- actions ----------------------------------------------------------------------------


def slack_actions(api: SlackWebApi) -> list[ActionSpec]:
    """``slack.post_message(channel, text, thread_ts?)`` over ``chat.postMessage``."""

    async def post(args: Mapping[str, ArgValue], key: str) -> dict[str, str]:
        thread = args.get("thread_ts")
        return await api.post_message(
            str(args["channel"]), str(args["text"]), str(thread) if thread else None, key
        )

    description, params = CATALOG["slack.post_message"]
    return [ActionSpec("slack.post_message", description, params, post)]
