"""The Telegram channel: Bot API long polling in, messages and owner approvals out.

**Inbound.** :meth:`TelegramSource.fetch` long-polls ``getUpdates``. Each Update is
routed by the few fields the executor can vouch for (who sent it, in which chat); the
bytes handed on as ``untrusted_raw`` are that one Update object exactly as Telegram
sent it (sliced out of the response with :class:`msgspec.Raw`, never re-encoded),
because the reader zone parses it. ``source_ref`` is the ``update_id``.

The offset sent to Telegram confirms every update below it, so it may only pass an
update once that update is safe: stored in the inbox (the executor calls
:meth:`~TelegramSource.acknowledge`), dropped (not from an allowed chat or user), or a
button press whose decision is durable in the approval queue. The offset kept in
:class:`~threezone.connectors.base.ConnectorState` is the lowest update not yet safe,
so acknowledging out of order never skips one, and a restart (or a crash between
fetch and acknowledge) fetches exactly what was not yet safe. The offset is stored
per bot id, so a token for another bot never inherits an offset it would misread.

**Who counts.** ``sender`` is ``tg:<from.id>``: the Bot API vouches for ``from.id``.
A message posted *on behalf of a chat* (``sender_chat`` set: channel posts, anonymous
group admins, automatic forwards) has no personal sender, and its ``from`` is a
placeholder shared by everyone who posts that way, so it counts as unauthenticated.
An update is accepted when its chat is in ``allowed_chats`` or its sender in
``allowed_users``; with both empty nothing is accepted (fail closed). Everything else
is acknowledged at once, so it never comes back, and kept in :meth:`take_dropped` for
the executor to audit (a crash before the executor drains it loses that audit line,
never a message someone allowed).

**Outbound.** ``telegram.send_message`` runs through :meth:`send_message`. The Bot API
has no idempotency field, so a send is *at most once* per idempotency key: the key is
marked ``pending`` in the connector state before the request and replaced by the
result after it; a key whose previous attempt may have reached Telegram (a crash,
a timeout or a dropped connection after the request left, a 5xx) is refused instead
of being sent again. Failures that certainly did not deliver (connection refused,
429 flood control, any ``ok: false`` answer) clear the mark. What remains: such an
"outcome unknown" send is reported as failed even when Telegram did deliver it, and
a crash between marking and sending loses that one send rather than doubling it.

**Approvals.** :meth:`send_approval` posts an entry's exact action to ``owner_chat``
with Approve/Deny buttons whose ``callback_data`` is ``tz1:<a|d>:<id>:<digest16>``.
A press arrives as a ``callback_query`` update; :meth:`settle_callbacks` turns each
into a decision on the :class:`~threezone.executor.approvals.ApprovalQueue` only when
the presser is an allowed user, the button sits in ``owner_chat``, and the digest
matches the entry (clients can send any ``callback_data``: Telegram does not check it
against the buttons), then answers the press and edits the message to the outcome.

**Secrets.** The token is part of every request URL, as the Bot API requires. It is
never logged (a filter redacts it from httpx2's request log line), never put in an
error (transport errors are rewritten, and raised ``from None`` so no chained
exception carries the URL), and checked to be a plain ``<digits>:<token>`` before it
is placed in a path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import unicodedata
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar

import httpx2
import msgspec

from threezone.config.schema import TelegramChannelConfig
from threezone.connectors.base import ConnectorState, RawItem
from threezone.errors import (
    ApprovalError,
    ConnectorError,
    EgressDenied,
    EgressError,
    UnknownSecretError,
)
from threezone.executor.actions import CATALOG, ActionSpec
from threezone.executor.approvals import DIGEST_SHOWN, Approval, ApprovalQueue, ApprovalStatus
from threezone.executor.egress import Egress
from threezone.executor.secrets import SecretStore
from threezone.protocol.messages import ArgValue, Channel, Trigger

CONNECTOR: Final = "telegram"
SEND_MESSAGE: Final = "telegram.send_message"
# What the source asks for; anything else Telegram sends anyway is dropped.
UPDATE_TYPES: Final = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "callback_query",
)
MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024
MAX_TEXT: Final = 4096  # sendMessage / editMessageText limit
MAX_ANSWER: Final = 200  # answerCallbackQuery text limit
MAX_DROPPED_KEPT: Final = 1000
_TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{1,200}")
_CHAT = re.compile(r"-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{3,31}")
_CALLBACK = re.compile(rf"tz1:([ad]):([0-9]{{1,18}}):([0-9a-f]{{{DIGEST_SHOWN}}})")

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


# --- what the executor gets ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DroppedUpdate:
    """An update that was acknowledged without being returned, and why (for the audit log)."""

    update_id: int
    kind: str
    chat_id: int | None
    user_id: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class CallbackPress:
    """A button press. ``user_id`` is vouched for by Telegram; ``untrusted_data`` is not."""

    update_id: int
    query_id: str
    user_id: int
    chat_id: int | None
    message_id: int | None
    untrusted_data: str


Decision = Literal["approved", "denied", "refused"]


@dataclass(frozen=True, slots=True)
class CallbackOutcome:
    """What a press did. ``problems`` are failures to answer or edit (the decision stands)."""

    press: CallbackPress
    decision: Decision
    approval_id: int | None
    reason: str
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries: ``attempts`` tries per call, exponential backoff with jitter
    between them, and Telegram's ``retry_after`` obeyed when it is at most
    ``max_retry_after`` (a longer flood wait is returned to the caller as retryable)."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 60.0

    def backoff(self, attempt: int) -> float:
        delay = min(self.max_delay, self.base_delay * 2.0**attempt)
        jitter: float = random.random()  # noqa: S311 - jitter, not a secret
        return delay * (0.5 + jitter / 2)


# --- Bot API shapes (only the fields the executor routes by) ------------------------------


class _Params(msgspec.Struct, frozen=True):
    retry_after: float | None = None
    migrate_to_chat_id: int | None = None


class _Envelope(msgspec.Struct, frozen=True):
    ok: bool
    result: msgspec.Raw = msgspec.Raw()
    error_code: int = 0
    description: str = ""
    parameters: _Params | None = None


class _User(msgspec.Struct, frozen=True):
    id: int
    is_bot: bool = False
    username: str = ""


class _Chat(msgspec.Struct, frozen=True):
    id: int
    type: str = ""


class _Message(msgspec.Struct, frozen=True):
    message_id: int
    chat: _Chat
    sender: _User | None = msgspec.field(default=None, name="from")
    sender_chat: _Chat | None = None


class _Callback(msgspec.Struct, frozen=True):
    id: str
    sender: _User = msgspec.field(name="from")
    message: _Message | None = None
    data: str = ""


class _UpdateId(msgspec.Struct, frozen=True):
    update_id: int


class _Update(msgspec.Struct, frozen=True):
    update_id: int
    message: _Message | None = None
    edited_message: _Message | None = None
    channel_post: _Message | None = None
    edited_channel_post: _Message | None = None
    callback_query: _Callback | None = None

    def kind_and_message(self) -> tuple[str, _Message | None]:
        for kind in ("message", "edited_message", "channel_post", "edited_channel_post"):
            found: _Message | None = getattr(self, kind)
            if found is not None:
                return kind, found
        return "other", None


def _decode(raw: msgspec.Raw | bytes, kind: type[T], method: str) -> T:
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConnectorError(CONNECTOR, f"{method}: malformed response ({exc})") from None


# --- keeping the token out of logs and errors ------------------------------------------------


class _Redactor(logging.Filter):
    """Removes registered tokens from records of the logger it is attached to.

    httpx2 logs every request line with its URL at INFO level, and a Bot API URL
    carries the token.
    """

    def __init__(self) -> None:
        super().__init__("threezone-telegram-redactor")
        self.tokens: set[str] = set()

    def clean(self, text: str) -> str:
        for token in tuple(self.tokens):  # other threads may log while one is added
            text = text.replace(token, "<token>").replace(urllib.parse.quote(token), "<token>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self.clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._arg(arg) for arg in record.args)
        return True

    def _arg(self, arg: object) -> object:
        if isinstance(arg, int | float):
            return arg
        text = str(arg)
        cleaned = self.clean(text)
        return arg if cleaned == text else cleaned


_REDACTOR = _Redactor()


def _install_redactor() -> None:
    logger = logging.getLogger("httpx2")
    if _REDACTOR not in logger.filters:
        logger.addFilter(_REDACTOR)


# --- the HTTP client --------------------------------------------------------------------------


@dataclass(slots=True)
class _Failure:
    """One failed attempt: the error to raise, and what the retry loop needs to know."""

    error: ConnectorError
    transient: bool
    maybe_delivered: bool
    retry_after: float | None = None


@dataclass(slots=True)
class _Attempt:
    """Filled in by :meth:`_BotApi.call`: whether a failed call may have reached Telegram."""

    maybe_delivered: bool = False


class _BotApi:
    """``POST {api_base}/bot<token>/<method>`` with a JSON body, retried within bounds."""

    def __init__(
        self,
        config: TelegramChannelConfig,
        secrets: SecretStore,
        egress: Egress,
        *,
        request_timeout: float,
        retry: RetryPolicy,
        sleep: Sleep,
        client_options: Mapping[str, Any],
    ) -> None:
        self._config = config
        self._secrets = secrets
        self._request_timeout = request_timeout
        self._retry = retry
        self._sleep = sleep
        self._client = egress.http_client(CONNECTOR, **client_options)
        _install_redactor()

    async def close(self) -> None:
        await self._client.aclose()

    async def call(
        self,
        method: str,
        params: Mapping[str, object],
        *,
        poll: float = 0.0,
        resend_safe: bool = True,
        attempt: _Attempt | None = None,
    ) -> msgspec.Raw:
        """The ``result`` of a successful call, or ConnectorError after bounded retries.

        ``resend_safe=False`` (sendMessage) retries only failures that certainly did not
        deliver the request; ``attempt`` learns whether the final failure may have.
        """
        record = attempt if attempt is not None else _Attempt()
        for number in range(self._retry.attempts):
            outcome = await self._once(method, params, poll)
            if isinstance(outcome, msgspec.Raw):
                return outcome
            record.maybe_delivered = record.maybe_delivered or outcome.maybe_delivered
            delay = self._retry_delay(outcome, number, resend_safe)
            if delay is None:
                raise outcome.error
            await self._sleep(delay)
        raise AssertionError("unreachable: the last attempt raises")  # pragma: no cover

    def _retry_delay(self, failure: _Failure, number: int, resend_safe: bool) -> float | None:
        last = number + 1 >= self._retry.attempts
        if last or not failure.transient or (failure.maybe_delivered and not resend_safe):
            return None
        if failure.retry_after is None:
            return self._retry.backoff(number)
        if failure.retry_after > self._retry.max_retry_after:
            return None
        return max(0.0, failure.retry_after)

    async def _once(
        self, method: str, params: Mapping[str, object], poll: float
    ) -> msgspec.Raw | _Failure:
        url = self._url(method)
        timeout = httpx2.Timeout(self._request_timeout + poll, connect=self._request_timeout)
        # Failures are described inside the except blocks and raised or returned after
        # them, so no exception that names the URL stays attached as __context__.
        outcome: msgspec.Raw | _Failure | ConnectorError
        try:
            async with asyncio.timeout(poll + 2 * self._request_timeout):
                status, body = await self._post(url, params, timeout)
            outcome = _interpret(method, status, body)
        except EgressDenied as exc:
            detail = f"{method}: egress refused: {_REDACTOR.clean(str(exc))}"
            outcome = ConnectorError(CONNECTOR, detail, retryable=False)
        except EgressError as exc:
            outcome = _transport_failure(method, f"cannot connect: {_REDACTOR.clean(str(exc))}")
        except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout) as exc:
            outcome = _transport_failure(method, f"cannot connect ({type(exc).__name__})")
        except (httpx2.HTTPError, OSError, TimeoutError) as exc:
            what = "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
            outcome = _transport_failure(method, f"request failed ({what})", maybe_delivered=True)
        if isinstance(outcome, ConnectorError):
            raise outcome
        return outcome

    async def _post(
        self, url: str, params: Mapping[str, object], timeout: httpx2.Timeout
    ) -> tuple[int, bytes]:
        async with self._client.stream("POST", url, json=dict(params), timeout=timeout) as reply:
            body = bytearray()
            async for chunk in reply.aiter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    return reply.status_code, b"<over the size limit>"
            return reply.status_code, bytes(body)

    def _url(self, method: str) -> str:
        try:
            token = self._secrets.get(self._config.token_secret)
        except UnknownSecretError:
            detail = f"the secret {self._config.token_secret} is not loaded"
            raise ConnectorError(CONNECTOR, detail, retryable=False) from None
        if _TOKEN.fullmatch(token) is None:
            detail = f"the secret {self._config.token_secret} is not a bot token (<id>:<key>)"
            raise ConnectorError(CONNECTOR, detail, retryable=False)
        _REDACTOR.tokens.add(token)
        return f"{self._config.api_base.rstrip('/')}/bot{token}/{method}"


def _transport_failure(method: str, detail: str, *, maybe_delivered: bool = False) -> _Failure:
    error = ConnectorError(CONNECTOR, f"{method}: {detail}")
    return _Failure(error, transient=True, maybe_delivered=maybe_delivered)


def _interpret(method: str, status: int, body: bytes) -> msgspec.Raw | _Failure:
    """A Bot API answer as its result, or as a failure with Telegram's own code and text."""
    try:
        envelope = msgspec.json.decode(body, type=_Envelope)
    except (msgspec.ValidationError, msgspec.DecodeError):
        detail = f"{method}: HTTP {status} with a body that is not a Bot API response"
        error = ConnectorError(CONNECTOR, detail)
        return _Failure(error, transient=status >= 500, maybe_delivered=True)
    if envelope.ok and len(envelope.result) > 0:
        return envelope.result
    if envelope.ok:
        error = ConnectorError(CONNECTOR, f"{method}: malformed response (ok without result)")
        return _Failure(error, transient=False, maybe_delivered=True)
    return _api_failure(method, status, envelope)


def _api_failure(method: str, status: int, envelope: _Envelope) -> _Failure:
    code = envelope.error_code or status
    description = _REDACTOR.clean(envelope.description)[:200] or "no description"
    retry_after = envelope.parameters.retry_after if envelope.parameters else None
    detail = f"{method}: error {code}: {description}"
    if code == 429:
        if retry_after is not None:
            detail += f" (retry after {retry_after:g}s)"
        return _Failure(ConnectorError(CONNECTOR, detail), True, False, retry_after)
    if code in (401, 404):
        detail += " (the bot token was refused: check the secret)"
    transient = code >= 500
    error = ConnectorError(CONNECTOR, detail, retryable=transient)
    return _Failure(error, transient=transient, maybe_delivered=transient)


# --- the source -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Offsets:
    """Which fetched updates are safe; the offset is the lowest one that is not."""

    committed: int
    seen: set[int] = field(default_factory=set)
    safe: set[int] = field(default_factory=set)

    def next_offset(self) -> int:
        unsafe = self.seen - self.safe
        if unsafe:
            return max(self.committed, min(unsafe))
        return max(self.committed, max(self.seen, default=-1) + 1)

    def advance(self) -> bool:
        """Move ``committed`` forward as far as it may go; True if it moved."""
        target = self.next_offset()
        if target <= self.committed:
            return False
        self.committed = target
        self.seen = {u for u in self.seen if u >= target}
        self.safe = {u for u in self.safe if u >= target}
        return True


class TelegramSource:
    """The Telegram channel: a :class:`~threezone.connectors.base.Source` plus actions.

    The executor, after each :meth:`fetch`: stores every item and calls
    :meth:`acknowledge` for it; audits :meth:`take_dropped`; and calls
    :meth:`settle_callbacks` with its approval queue and audits the outcomes (the
    offset cannot pass a press that was not settled).
    """

    channel: Channel = "telegram"

    def __init__(
        self,
        config: TelegramChannelConfig,
        secrets: SecretStore,
        egress: Egress,
        state: ConnectorState,
        *,
        request_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        max_raw_bytes: int = 1024 * 1024,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self._state = state
        self._max_raw_bytes = max_raw_bytes
        self._api = _BotApi(
            config,
            secrets,
            egress,
            request_timeout=request_timeout,
            retry=retry or RetryPolicy(),
            sleep=sleep,
            client_options=client_options or {},
        )
        self._me: _User | None = None
        self._offsets: _Offsets | None = None
        self._dropped: list[DroppedUpdate] = []
        self.dropped_overflow = 0
        self._presses: dict[int, CallbackPress] = {}
        self._taken: set[int] = set()

    # Source -------------------------------------------------------------------------

    async def fetch(self, timeout: float) -> list[RawItem]:
        """Long-poll up to ``timeout`` seconds (at most ``poll_timeout``) for updates."""
        me = await self._identity()
        offsets = self._load_offsets(me)
        poll = int(max(0.0, min(timeout, float(self.config.poll_timeout))))
        params: dict[str, object] = {"timeout": poll, "allowed_updates": list(UPDATE_TYPES)}
        if offsets.committed > 0:
            params["offset"] = offsets.committed
        result = await self._api.call("getUpdates", params, poll=poll)
        items: list[RawItem] = []
        for entry in _decode(result, list[msgspec.Raw], "getUpdates"):
            item = self._route(entry, me, offsets)
            if item is not None:
                items.append(item)
        self._persist(me, offsets)
        return items

    async def acknowledge(self, source_ref: str) -> None:
        """The item is stored: let the offset pass it (and persist the offset)."""
        if self._me is None or self._offsets is None:
            return  # nothing was fetched in this process: the next fetch returns it again
        try:
            update_id = int(source_ref)
        except ValueError:
            detail = f"{source_ref[:40]!r} is not a Telegram update id"
            raise ConnectorError(CONNECTOR, detail, retryable=False) from None
        self._offsets.safe.add(update_id)
        self._persist(self._me, self._offsets)

    async def close(self) -> None:
        await self._api.close()

    async def account(self) -> str:
        """The bot's username (``getMe``, asked once)."""
        me = await self._identity()
        return me.username or f"bot{me.id}"

    # Dropped updates and button presses ------------------------------------------------

    def take_dropped(self) -> list[DroppedUpdate]:
        """Updates acknowledged without being returned since the last call, oldest first."""
        taken, self._dropped = self._dropped, []
        return taken

    def take_callbacks(self) -> list[CallbackPress]:
        """Presses not handed out yet. Whoever takes one must decide it and then
        :meth:`acknowledge` ``str(press.update_id)``; :meth:`settle_callbacks` does both."""
        taken = [p for uid, p in sorted(self._presses.items()) if uid not in self._taken]
        self._taken.update(p.update_id for p in taken)
        return taken

    async def settle_callbacks(self, queue: ApprovalQueue) -> list[CallbackOutcome]:
        """Decide every waiting press on ``queue``, answer it, edit the approval message.

        The decision is durable in ``queue`` before the press is acknowledged, so a
        crash in between re-fetches the press, which then finds the entry decided.
        """
        outcomes: list[CallbackOutcome] = []
        for press in self.take_callbacks():
            outcome = self._decide(press, queue)
            outcome = await self._report(outcome, queue)
            self._presses.pop(press.update_id, None)
            self._taken.discard(press.update_id)
            await self.acknowledge(str(press.update_id))
            outcomes.append(outcome)
        return outcomes

    # Outbound -----------------------------------------------------------------------

    def actions(self) -> list[ActionSpec]:
        """``telegram.send_message``, run with the action's idempotency key."""

        async def run(args: Mapping[str, ArgValue], key: str) -> dict[str, str]:
            reply_to = args.get("reply_to")
            return await self.send_message(
                str(args["chat"]),
                str(args["text"]),
                reply_to=None if reply_to is None else str(reply_to),
                key=key,
            )

        description, params = CATALOG[SEND_MESSAGE]
        return [ActionSpec(SEND_MESSAGE, description, params, run)]

    async def send_message(
        self, chat: str, text: str, *, reply_to: str | None = None, key: str
    ) -> dict[str, str]:
        """Send ``text`` to ``chat`` at most once per ``key`` (see the module notes)."""
        payload: dict[str, object] = {"chat_id": _chat_id(chat), "text": text}
        if reply_to is not None:
            payload["reply_parameters"] = {
                "message_id": _reply_id(reply_to),
                "allow_sending_without_reply": True,
            }
        marker_key = f"sent.{key}"
        marker = self._state.get(CONNECTOR, marker_key)
        if marker.startswith("{"):
            return dict(json.loads(marker))
        if marker:
            detail = f"action {key}: an earlier attempt may have sent it; not sending twice"
            raise ConnectorError(CONNECTOR, detail, retryable=False)
        self._state.set(CONNECTOR, marker_key, "pending")
        result = await self._send_marked(payload, marker_key)
        self._state.set(CONNECTOR, marker_key, json.dumps(result, sort_keys=True))
        return result

    async def _send_marked(self, payload: dict[str, object], marker_key: str) -> dict[str, str]:
        attempt = _Attempt()
        try:
            raw = await self._api.call("sendMessage", payload, resend_safe=False, attempt=attempt)
            sent = _decode(raw, _Message, "sendMessage")
        except ConnectorError as exc:
            if not attempt.maybe_delivered:
                self._state.set(CONNECTOR, marker_key, "")
                raise
            self._state.set(CONNECTOR, marker_key, "unknown")
            detail = f"{exc.detail}; it may have been delivered, so it will not be sent again"
            raise ConnectorError(CONNECTOR, detail, retryable=False) from None
        return {"chat": str(sent.chat.id), "message_id": str(sent.message_id)}

    async def send_alert(self, text: str) -> int:
        """Post ``text`` to the owner chat (canary alerts, audit anchors); its message id.

        Retried even when the outcome of an attempt is unknown: an alert sent twice is
        better than one lost.
        """
        payload = {"chat_id": self._owner_chat(), "text": _clip(text, MAX_TEXT)}
        raw = await self._api.call("sendMessage", payload)
        return _decode(raw, _Message, "sendMessage").message_id

    async def send_approval(self, approval: Approval) -> int:
        """Post ``approval`` to the owner chat with Approve/Deny buttons; its message id.

        Posting the same entry again returns the first message instead. An attempt whose
        outcome is unknown is retried: a second copy of the message is harmless (same
        buttons, same digest; the first press decides), a lost one leaves the owner
        nothing to press.
        """
        posted_key = f"approval.{approval.id}"
        posted = self._state.get(CONNECTOR, posted_key)
        if posted:
            return int(posted.rsplit(":", 1)[1])
        buttons = [
            {"text": "Approve", "callback_data": callback_data("a", approval)},
            {"text": "Deny", "callback_data": callback_data("d", approval)},
        ]
        payload = {
            "chat_id": self._owner_chat(),
            "text": approval_text(approval),
            "reply_markup": {"inline_keyboard": [buttons]},
        }
        raw = await self._api.call("sendMessage", payload)
        sent = _decode(raw, _Message, "sendMessage")
        self._state.set(CONNECTOR, posted_key, f"{sent.chat.id}:{sent.message_id}")
        return sent.message_id

    # Internals: identity and offsets ---------------------------------------------------

    async def _identity(self) -> _User:
        if self._me is None:
            me = _decode(await self._api.call("getMe", {}), _User, "getMe")
            if not me.is_bot:
                raise ConnectorError(CONNECTOR, "getMe: the token is not a bot's", retryable=False)
            self._me = me
        return self._me

    def _load_offsets(self, me: _User) -> _Offsets:
        if self._offsets is None:
            stored = self._state.get(CONNECTOR, f"offset.{me.id}", "0")
            self._offsets = _Offsets(committed=int(stored) if stored.isdigit() else 0)
        return self._offsets

    def _persist(self, me: _User, offsets: _Offsets) -> None:
        if offsets.advance():
            self._state.set(CONNECTOR, f"offset.{me.id}", str(offsets.committed))

    # Internals: routing ---------------------------------------------------------------

    def _route(self, entry: msgspec.Raw, me: _User, offsets: _Offsets) -> RawItem | None:
        update_id = _decode(entry, _UpdateId, "getUpdates").update_id
        if update_id < offsets.committed or update_id in offsets.safe:
            return None  # already safe: Telegram repeats it until the next offset
        offsets.seen.add(update_id)
        try:
            update = msgspec.json.decode(entry, type=_Update)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self._drop(offsets, DroppedUpdate(update_id, "malformed", None, None, str(exc)[:200]))
            return None
        if update.callback_query is not None:
            self._hold_press(update_id, update.callback_query)
            return None
        kind, message = update.kind_and_message()
        if message is None:
            self._drop(offsets, DroppedUpdate(update_id, kind, None, None, "unsupported update"))
            return None
        refusal = self._admission(message)
        if refusal is not None:
            user = message.sender.id if message.sender else None
            self._drop(offsets, DroppedUpdate(update_id, kind, message.chat.id, user, refusal))
            return None
        return self._item(update_id, bytes(entry), message, me)

    def _admission(self, message: _Message) -> str | None:
        """None if the update is accepted; otherwise why not."""
        if message.chat.id in self.config.allowed_chats:
            return None
        person = _person(message)
        if person is not None and person in self.config.allowed_users:
            return None
        who = "no personal sender" if person is None else f"user {person}"
        return f"chat {message.chat.id} and {who} are not allowed"

    def _item(self, update_id: int, raw: bytes, message: _Message, me: _User) -> RawItem:
        person = _person(message)
        trigger = Trigger(
            channel="telegram",
            account=me.username or f"bot{me.id}",
            sender=None if person is None else f"tg:{person}",
            sender_authenticated=person is not None,
            received_at=datetime.now(UTC).isoformat(timespec="seconds"),
            flagged=False,
        )
        oversized = len(raw) > self._max_raw_bytes
        return RawItem(str(update_id), raw[: self._max_raw_bytes], trigger, oversized)

    def _drop(self, offsets: _Offsets, dropped: DroppedUpdate) -> None:
        offsets.safe.add(dropped.update_id)
        if len(self._dropped) >= MAX_DROPPED_KEPT:
            self.dropped_overflow += 1
            return
        self._dropped.append(dropped)

    def _hold_press(self, update_id: int, query: _Callback) -> None:
        message = query.message
        self._presses.setdefault(
            update_id,
            CallbackPress(
                update_id=update_id,
                query_id=query.id,
                user_id=query.sender.id,
                chat_id=None if message is None else message.chat.id,
                message_id=None if message is None else message.message_id,
                untrusted_data=query.data[:256],
            ),
        )

    # Internals: approvals ---------------------------------------------------------------

    def _owner_chat(self) -> int:
        if self.config.owner_chat is None:
            detail = "owner_chat is not configured: approvals and alerts have nowhere to go"
            raise ConnectorError(CONNECTOR, detail, retryable=False)
        return self.config.owner_chat

    def _decide(self, press: CallbackPress, queue: ApprovalQueue) -> CallbackOutcome:
        refusal = self._presser_refusal(press)
        if refusal is not None:
            return CallbackOutcome(press, "refused", None, refusal)
        parsed = _CALLBACK.fullmatch(press.untrusted_data)
        if parsed is None:
            return CallbackOutcome(press, "refused", None, "not an approval button")
        verb, approval_id, digest = parsed.group(1), int(parsed.group(2)), parsed.group(3)
        by = f"tg:{press.user_id}"
        try:
            if not queue.get(approval_id).digest.startswith(digest):
                reason = "the button's digest does not match the queued action"
                return CallbackOutcome(press, "refused", approval_id, reason)
            if verb == "a":
                queue.approve(approval_id, by, digest_prefix=digest)
                return CallbackOutcome(press, "approved", approval_id, f"approved by {by}")
            queue.deny(approval_id, by, note="denied in Telegram")
            return CallbackOutcome(press, "denied", approval_id, f"denied by {by}")
        except ApprovalError as exc:
            return CallbackOutcome(press, "refused", approval_id, exc.detail)

    def _presser_refusal(self, press: CallbackPress) -> str | None:
        if press.user_id not in self.config.allowed_users:
            return f"user {press.user_id} may not decide approvals"
        if self.config.owner_chat is None or press.chat_id != self.config.owner_chat:
            return f"the button is not in the owner chat (chat {press.chat_id})"
        return None

    async def _report(self, outcome: CallbackOutcome, queue: ApprovalQueue) -> CallbackOutcome:
        """Answer the press; for the owner, also show the entry's state on the message."""
        problems: list[str] = []
        answer = {"callback_query_id": outcome.press.query_id, "text": _answer_text(outcome)}
        await self._quietly("answerCallbackQuery", answer, problems)
        edit = self._edit_for(outcome, queue)
        if edit is not None:
            await self._quietly("editMessageText", edit, problems)
        if not problems:
            return outcome
        return CallbackOutcome(
            outcome.press, outcome.decision, outcome.approval_id, outcome.reason, tuple(problems)
        )

    def _edit_for(self, outcome: CallbackOutcome, queue: ApprovalQueue) -> dict[str, object] | None:
        press = outcome.press
        if outcome.approval_id is None or press.message_id is None:
            return None
        if self._presser_refusal(press) is not None:
            return None  # a stranger's press changes nothing the owner sees
        try:
            entry = queue.get(outcome.approval_id)
        except ApprovalError:
            return None
        if entry.status is ApprovalStatus.PENDING:
            return None  # e.g. a forged digest: the real buttons stay
        return {
            "chat_id": press.chat_id,
            "message_id": press.message_id,
            "text": _clip(approval_text(entry) + "\n\n" + _status_line(entry), MAX_TEXT),
        }

    async def _quietly(
        self, method: str, params: Mapping[str, object], problems: list[str]
    ) -> None:
        try:
            await self._api.call(method, params)
        except ConnectorError as exc:
            if "message is not modified" not in exc.detail:
                problems.append(str(exc))


# --- pure helpers -----------------------------------------------------------------------------


def _person(message: _Message) -> int | None:
    """The sender Telegram vouches for, or None when the message speaks for a chat."""
    if message.sender is None or message.sender_chat is not None:
        return None
    return message.sender.id


def _chat_id(chat: str) -> int | str:
    if _CHAT.fullmatch(chat) is None:
        detail = f"chat {chat[:64]!r} is neither a chat id nor an @username"
        raise ConnectorError(CONNECTOR, detail, retryable=False)
    return chat if chat.startswith("@") else int(chat)


def _reply_id(reply_to: str) -> int:
    if not reply_to.isascii() or not reply_to.isdigit() or len(reply_to) > 18:
        detail = f"reply_to {reply_to[:32]!r} is not a message id"
        raise ConnectorError(CONNECTOR, detail, retryable=False)
    return int(reply_to)


def callback_data(verb: Literal["a", "d"], approval: Approval) -> str:
    """``tz1:<a|d>:<id>:<first 16 hex of the digest>``: at most 42 bytes (limit 64)."""
    return f"tz1:{verb}:{approval.id}:{approval.short_digest}"


def _visible(untrusted_text: str, limit: int = 600) -> str:
    """Text as the owner should read it: control and format characters (bidi overrides,
    zero-width joiners) shown as escapes, so they cannot disguise what will be sent."""
    shown = "".join(
        ch if ch == "\n" or unicodedata.category(ch) not in ("Cc", "Cf") else f"\\u{ord(ch):04x}"
        for ch in untrusted_text
    )
    return _clip(shown, limit)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def approval_text(approval: Approval) -> str:
    """The message the owner decides on: the exact action, arguments and provenance."""
    lines = [f"Approval #{approval.id}: {approval.action}"]
    for name, value in sorted(approval.args.items()):
        mark = "  [from untrusted content]" if name in approval.untrusted_args else ""
        lines.append(f"{name}{mark}:\n{_visible(str(value))}")
    trigger = approval.trigger
    sender = trigger.sender or "unknown sender"
    verified = "verified" if trigger.sender_authenticated else "NOT verified"
    lines.append(f"Trigger: {trigger.channel} from {sender} ({verified})")
    if trigger.flagged:
        lines.append("Warning: the triggering message was flagged as a possible injection")
    lines.append(f"Rule: {_visible(approval.rule, 200)} ({_visible(approval.reason, 200)})")
    expires = datetime.fromtimestamp(approval.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"Digest: {approval.short_digest}  Expires: {expires}")
    return _clip("\n".join(lines), MAX_TEXT - 200)


def _status_line(entry: Approval) -> str:
    who = f" by {entry.decided_by}" if entry.decided_by else ""
    return f"Outcome: {entry.status.value}{who}"


def _answer_text(outcome: CallbackOutcome) -> str:
    if outcome.decision == "refused":
        return _clip(f"Refused: {outcome.reason}", MAX_ANSWER)
    return _clip(f"#{outcome.approval_id} {outcome.decision}", MAX_ANSWER)
