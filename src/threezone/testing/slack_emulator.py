"""A Slack emulator on loopback: the Web API over HTTP and Socket Mode over WebSocket.

Protocol-faithful for the parts threezone uses, so the real client code can be
tested against it (``SlackChannelConfig.api_base = emulator.base_url``):

* ``POST /api/apps.connections.open`` (app-level token) -> ``{"ok": true, "url":
  "ws://127.0.0.1:PORT/link/?ticket=...&app_id=..."}``; each ticket opens one
  WebSocket, once.
* Socket Mode: ``hello`` first, then one ``events_api`` envelope per event, each
  waiting for ``{"envelope_id": ...}``. An event not acknowledged is delivered again
  on the next connection (or by :meth:`SlackEmulator.redeliver`, which stands for
  Slack's acknowledgement timeout) under a new ``envelope_id``, with ``retry_attempt``
  counting up and ``retry_reason: "timeout"``. :meth:`request_refresh` sends
  ``{"type": "disconnect", "reason": "refresh_requested"}`` and closes the socket.
* ``POST /api/auth.test`` and ``POST /api/chat.postMessage`` (bot token; JSON or
  form bodies; ``channel_not_found``, ``no_text``, ``msg_too_long``,
  ``thread_not_found``). A post is echoed back as a ``message`` event carrying the
  app's ``bot_id``/``app_id``, as Slack does for subscribed channels.
* Credentials: no token is ``not_authed``, a wrong one ``invalid_auth``, the other
  kind of token ``not_allowed_token_type``, all with HTTP 200 as Slack answers.
* Faults: :meth:`fail` (any ``ok: false`` code), :meth:`rate_limit` (HTTP 429,
  ``Retry-After``, ``{"ok": false, "error": "ratelimited"}``), :meth:`malformed`
  (a truncated JSON body), :meth:`drop_connections` (the WebSocket vanishes without
  a close frame), :attr:`drop_before_hello` (every new WebSocket vanishes at once), and
  envelopes of every kind through :meth:`send_event`.

The HTTP side uses h11 (already present as httpcore2's parser); the WebSocket side is
``websockets.asyncio.server``. Everything the emulator saw is kept for assertions:
:attr:`calls`, :attr:`posts`, :attr:`deliveries`, :attr:`acked`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

APP_TOKEN = "xapp-1-A0EMULATE-1-0123456789abcdef0123456789abcdef"  # noqa: S105 (throwaway)
BOT_TOKEN = "xoxb-0000000001-0000000002-emulatedBotTokenValue0"  # noqa: S105 (throwaway)
MAX_TEXT = 40_000
_CHANNEL_ID = re.compile(r"[CDG][A-Z0-9]{2,20}")


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One Web API request as answered: HTTP status and Slack error code (or "")."""

    method: str
    status: int
    error: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """One envelope sent: which event, as which attempt, on which connection."""

    event_id: str
    envelope_id: str
    retry_attempt: int
    connection: int
    frame: bytes


@dataclass(slots=True)
class _Fault:
    kind: str  # "error" | "ratelimit" | "malformed"
    error: str = ""
    status: int = 200
    retry_after: int = 1


@dataclass(slots=True)
class _Event:
    event_id: str
    payload: dict[str, Any]
    attempts: int = 0
    envelopes: set[str] = field(default_factory=set)


class SlackEmulator:
    """Start with ``async with SlackEmulator() as slack:``; both servers bind 127.0.0.1."""

    def __init__(
        self,
        *,
        app_token: str = APP_TOKEN,
        bot_token: str = BOT_TOKEN,
        team_id: str = "T0EMULATE",
        bot_user_id: str = "U0THREEZONE",
        bot_id: str = "B0THREEZONE",
        app_id: str = "A0EMULATE",
        ssl_context: ssl.SSLContext | None = None,
        host_name: str = "127.0.0.1",
        echo_posts: bool = True,
    ) -> None:
        self.app_token, self.bot_token = app_token, bot_token
        self.team_id, self.bot_user_id, self.bot_id, self.app_id = (
            team_id,
            bot_user_id,
            bot_id,
            app_id,
        )
        self._ssl = ssl_context
        self.host_name = host_name
        self.echo_posts = echo_posts
        self.socket_url_override: str | None = None
        self.drop_before_hello = False  # every WebSocket vanishes as soon as it opens
        self.calls: list[ApiCall] = []
        self.posts: list[dict[str, Any]] = []
        self.deliveries: list[Delivery] = []
        self.acked: dict[str, str] = {}  # event_id -> the envelope_id that acknowledged it
        self.unknown_acks: list[str] = []
        self.connections_opened = 0
        self._faults: dict[str, list[_Fault]] = {}
        self._tickets: set[str] = set()
        self._events: dict[str, _Event] = {}  # outstanding (not acknowledged), in order
        self._by_envelope: dict[str, _Event] = {}
        self._live: list[tuple[int, ServerConnection]] = []
        self._messages: set[tuple[str, str]] = set()  # (channel, ts) that exist
        self._counter = itertools.count(1)
        self._acked_changed = asyncio.Condition()
        self._http: asyncio.Server | None = None
        self._ws: Server | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._http = await asyncio.start_server(self._serve_http, "127.0.0.1", 0, ssl=self._ssl)
        self._ws = await serve(
            self._serve_socket,
            "127.0.0.1",
            0,
            ssl=self._ssl,
            process_request=self._check_ticket,
            compression=None,
        )

    async def stop(self) -> None:
        if self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()
        if self._http is not None:
            self._http.close()
            await self._http.wait_closed()

    async def __aenter__(self) -> SlackEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def http_port(self) -> int:
        assert self._http is not None, "start() first"
        return int(self._http.sockets[0].getsockname()[1])

    @property
    def ws_port(self) -> int:
        assert self._ws is not None, "start() first"
        return int(next(iter(self._ws.sockets)).getsockname()[1])

    @property
    def base_url(self) -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://{self.host_name}:{self.http_port}/api"

    # --- faults --------------------------------------------------------------------------

    def fail(self, method: str, error: str, *, times: int = 1, status: int = 200) -> None:
        """The next ``times`` calls of ``method`` answer ``{"ok": false, "error": error}``."""
        self._faults.setdefault(method, []).extend(
            _Fault("error", error, status) for _ in range(times)
        )

    def rate_limit(self, method: str, *, retry_after: int = 1, times: int = 1) -> None:
        """The next ``times`` calls answer HTTP 429 with ``Retry-After: retry_after``."""
        self._faults.setdefault(method, []).extend(
            _Fault("ratelimit", "ratelimited", 429, retry_after) for _ in range(times)
        )

    def malformed(self, method: str, *, times: int = 1) -> None:
        """The next ``times`` calls answer HTTP 200 with a body that is not JSON."""
        self._faults.setdefault(method, []).extend(_Fault("malformed") for _ in range(times))

    def attempts(self, method: str) -> int:
        return sum(1 for call in self.calls if call.method == method)

    # --- events --------------------------------------------------------------------------

    def new_ts(self) -> str:
        return f"{int(time.time())}.{next(self._counter):06d}"

    async def user_message(
        self,
        channel: str,
        user: str,
        text: str,
        *,
        thread_ts: str | None = None,
        channel_type: str = "channel",
        subtype: str | None = None,
    ) -> str:
        """A person's message, as Slack's ``message`` event; returns its ``event_id``."""
        ts = self.new_ts()
        event: dict[str, Any] = {
            "client_msg_id": str(uuid.uuid4()),
            "type": "message",
            "text": text,
            "user": user,
            "ts": ts,
            "blocks": [_rich_text(text)],
            "team": self.team_id,
            "channel": channel,
            "event_ts": ts,
            "channel_type": channel_type,
        }
        if subtype:
            event["subtype"] = subtype
        if thread_ts:
            event["thread_ts"] = thread_ts
            event["parent_user_id"] = user
        self._messages.add((channel, ts))
        return await self.send_event(event)

    async def bot_message(self, channel: str, text: str, *, own: bool = True) -> str:
        """A message by this app (``own``) or by another integration (``bot_message``)."""
        ts = self.new_ts()
        event: dict[str, Any] = {"type": "message", "text": text, "ts": ts, "channel": channel}
        if own:
            event.update(user=self.bot_user_id, bot_id=self.bot_id, app_id=self.app_id)
        else:
            event.update(subtype="bot_message", bot_id="B0OTHERBOT", username="other bot")
        event.update(team=self.team_id, event_ts=ts, channel_type="channel")
        self._messages.add((channel, ts))
        return await self.send_event(event)

    async def edit_message(self, channel: str, user: str, ts: str, text: str) -> str:
        """``message_changed``: the edited message under ``message``, the old one under
        ``previous_message``; the event itself has no ``user``."""
        now = self.new_ts()
        edited: dict[str, Any] = {
            "type": "message",
            "user": user,
            "text": text,
            "ts": ts,
            "team": self.team_id,
        }
        edited["edited"] = {"user": user, "ts": now}
        return await self.send_event(
            {
                "type": "message",
                "subtype": "message_changed",
                "message": edited,
                "previous_message": {"type": "message", "user": user, "text": "", "ts": ts},
                "channel": channel,
                "hidden": True,
                "ts": now,
                "event_ts": now,
                "channel_type": "channel",
            }
        )

    async def send_event(self, event: Mapping[str, Any], envelope_type: str = "events_api") -> str:
        """Wrap ``event`` in an ``event_callback`` and deliver it; returns the event_id."""
        event_id = f"Ev{next(self._counter):08d}EMU"
        payload = {
            "token": "emulatedVerificationToken",
            "team_id": self.team_id,
            "context_team_id": self.team_id,
            "context_enterprise_id": None,
            "api_app_id": self.app_id,
            "event": dict(event),
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-emulated-{event_id}",
        }
        record = _Event(event_id, {"type": envelope_type, "payload": payload})
        self._events[event_id] = record
        if self._live:
            await self._deliver(record, *self._live[-1])
        return event_id

    async def redeliver(self) -> None:
        """What Slack does when an envelope's acknowledgement is late: send it again."""
        if self._live:
            for record in list(self._events.values()):
                await self._deliver(record, *self._live[-1])

    async def wait_acked(self, event_id: str, timeout: float = 10.0) -> str:
        """The envelope_id that acknowledged ``event_id``, once it has."""
        async with asyncio.timeout(timeout), self._acked_changed:
            await self._acked_changed.wait_for(lambda: event_id in self.acked)
        return self.acked[event_id]

    # --- connection faults ----------------------------------------------------------------

    async def request_refresh(self, reason: str = "refresh_requested", close: bool = True) -> None:
        """Send ``disconnect`` on every live socket (then close it, unless ``close`` is
        false, as with ``reason="warning"``). New events wait for the next connection."""
        live, self._live = self._live, []
        message = {"type": "disconnect", "reason": reason, "debug_info": {"host": "emulated"}}
        for _, ws in live:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps(message))
                if close:
                    await ws.close()

    async def drop_connections(self) -> None:
        """Every live WebSocket vanishes: no disconnect message, no close frame."""
        live, self._live = self._live, []
        for _, ws in live:
            ws.transport.abort()

    # --- Socket Mode ------------------------------------------------------------------------

    def _check_ticket(self, connection: ServerConnection, request: Request) -> Response | None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        ticket = (query.get("ticket") or [""])[0]
        if not request.path.startswith("/link/") or ticket not in self._tickets:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid or used ticket\n")
        self._tickets.discard(ticket)
        return None

    async def _serve_socket(self, ws: ServerConnection) -> None:
        self.connections_opened += 1
        number = self.connections_opened
        if self.drop_before_hello:
            ws.transport.abort()
            return
        hello = {
            "type": "hello",
            "num_connections": len(self._live) + 1,
            "debug_info": {
                "host": "applink-emulated",
                "build_number": 1,
                "approximate_connection_time": 18060,
            },
            "connection_info": {"app_id": self.app_id},
        }
        await ws.send(json.dumps(hello))
        self._live.append((number, ws))
        try:
            for record in list(self._events.values()):
                await self._deliver(record, number, ws)
            async for message in ws:
                await self._on_ack(message)
        except ConnectionClosed:
            pass
        finally:
            self._live = [(n, w) for n, w in self._live if w is not ws]

    async def _deliver(self, record: _Event, number: int, ws: ServerConnection) -> None:
        envelope_id = str(uuid.uuid4())
        attempt = record.attempts
        record.attempts += 1
        record.envelopes.add(envelope_id)
        self._by_envelope[envelope_id] = record
        envelope = {
            "envelope_id": envelope_id,
            "payload": record.payload["payload"],
            "type": record.payload["type"],
            "accepts_response_payload": False,
            "retry_attempt": attempt,
            "retry_reason": "timeout" if attempt else "",
        }
        frame = json.dumps(envelope).encode()
        self.deliveries.append(Delivery(record.event_id, envelope_id, attempt, number, frame))
        with contextlib.suppress(ConnectionClosed):
            await ws.send(frame.decode())

    async def _on_ack(self, message: str | bytes) -> None:
        try:
            envelope_id = json.loads(message)["envelope_id"]
        except (ValueError, KeyError, TypeError):
            self.unknown_acks.append(repr(message)[:200])
            return
        record = self._by_envelope.get(envelope_id) if isinstance(envelope_id, str) else None
        if record is None:
            self.unknown_acks.append(str(envelope_id)[:200])
            return
        self._events.pop(record.event_id, None)
        async with self._acked_changed:
            self.acked.setdefault(record.event_id, envelope_id)
            self._acked_changed.notify_all()

    # --- the Web API ------------------------------------------------------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while (request := await _read_request(conn, reader)) is not None:
                status, headers, body = await self._answer(*request)
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
                writer.write(conn.send(h11.Data(data=body)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    async def _answer(
        self, request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        method = path.removeprefix("/api/") if path.startswith("/api/") else ""
        fields = _fields(request, body)
        fault = self._faults.get(method, []).pop(0) if self._faults.get(method) else None
        if fault is not None:
            return self._fault_reply(method, fault)
        handler = {
            "apps.connections.open": self._connections_open,
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
        }.get(method)
        if handler is None:
            return self._reply(method, {"ok": False, "error": "unknown_method"}, status=404)
        kind = self._token_kind(request, fields)
        needed = "app" if method == "apps.connections.open" else "bot"
        if kind != needed:
            error = {"none": "not_authed", "wrong": "invalid_auth"}.get(kind, "")
            return self._reply(method, {"ok": False, "error": error or "not_allowed_token_type"})
        return self._reply(method, await handler(fields))

    def _token_kind(self, request: h11.Request, fields: Mapping[str, Any]) -> str:
        headers = {k.lower(): v.decode("latin-1") for k, v in request.headers}
        auth = headers.get(b"authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else str(fields.get("token", ""))
        if not token:
            return "none"
        return {self.app_token: "app", self.bot_token: "bot"}.get(token, "wrong")

    def _fault_reply(self, method: str, fault: _Fault) -> tuple[int, list[tuple[str, str]], bytes]:
        if fault.kind == "malformed":
            self.calls.append(ApiCall(method, 200, "malformed"))
            return 200, [("Content-Type", "application/json; charset=utf-8")], b'{"ok": tru'
        reply = {"ok": False, "error": fault.error}
        extra = [("Retry-After", str(fault.retry_after))] if fault.kind == "ratelimit" else []
        return self._reply(method, reply, status=fault.status, headers=extra)

    def _reply(
        self,
        method: str,
        reply: Mapping[str, Any],
        *,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        self.calls.append(ApiCall(method, status, str(reply.get("error", ""))))
        content = [("Content-Type", "application/json; charset=utf-8"), *(headers or [])]
        return status, content, json.dumps(reply).encode()

    async def _connections_open(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        scheme = "wss" if self._ssl else "ws"
        url = (
            f"{scheme}://{self.host_name}:{self.ws_port}/link/?ticket={ticket}&app_id={self.app_id}"
        )
        return {"ok": True, "url": self.socket_url_override or url}

    async def _auth_test(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://emulated.slack.com/",
            "team": "Emulated",
            "user": "threezone",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    async def _post_message(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        channel, text = str(fields.get("channel", "")), fields.get("text")
        thread_ts = str(fields.get("thread_ts") or "")
        if not _CHANNEL_ID.fullmatch(channel):
            return {"ok": False, "error": "channel_not_found"}
        if not isinstance(text, str) or not text:
            return {"ok": False, "error": "no_text"}
        if len(text) > MAX_TEXT:
            return {"ok": False, "error": "msg_too_long"}
        if thread_ts and (channel, thread_ts) not in self._messages:
            return {"ok": False, "error": "thread_not_found"}
        ts = self.new_ts()
        message: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "text": text,
            "ts": ts,
            "team": self.team_id,
        }
        if thread_ts:
            message["thread_ts"] = thread_ts
        self._messages.add((channel, ts))
        self.posts.append({**dict(fields), "ts": ts})
        if self.echo_posts:
            await self.send_event({**message, "channel": channel, "event_ts": ts})
        return {"ok": True, "channel": channel, "ts": ts, "message": message}


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request, bytes] | None:
    """The next request and its body, or None when the client is done."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65_536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


def _fields(request: h11.Request, body: bytes) -> dict[str, Any]:
    """A Web API call's arguments: JSON or form-encoded body, plus the query string."""
    headers = {k.lower(): v for k, v in request.headers}
    kind = headers.get(b"content-type", b"").decode("latin-1")
    fields: dict[str, Any] = {}
    query = request.target.decode("ascii", "replace").partition("?")[2]
    fields.update(urllib.parse.parse_qsl(query))
    if kind.startswith("application/json"):
        with contextlib.suppress(ValueError):
            decoded = json.loads(body or b"{}")
            if isinstance(decoded, dict):
                fields.update(decoded)
    else:
        fields.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
    return fields


def _rich_text(text: str) -> dict[str, Any]:
    """The ``rich_text`` block Slack's clients attach to a plain message."""
    return {
        "type": "rich_text",
        "block_id": uuid.uuid4().hex[:5],
        "elements": [{"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}],
    }
