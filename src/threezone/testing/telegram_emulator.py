"""A Telegram Bot API server on loopback, faithful to the parts threezone uses.

Implements ``/bot<token>/<method>`` for ``getMe``, ``getUpdates``, ``sendMessage``,
``answerCallbackQuery`` and ``editMessageText`` with the real shapes: every answer is
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N, "description":
"..."}`` (with ``parameters.retry_after`` on 429) and the HTTP status equals the error
code; parameters come from the query string, a form body or a JSON body (objects and
arrays JSON-serialized inside form fields, as the Bot API accepts them); method names
are case-insensitive; a wrong token is ``401 Unauthorized`` and an unknown method
``404 Not Found``.

``getUpdates`` keeps the real offset rules: updates are kept until a call passes an
``offset`` above their ``update_id`` (a negative offset keeps only the last ``-offset``),
``timeout`` long-polls and returns as soon as an update arrives, ``allowed_updates``
filters the updates created *after* the call that set it (and persists), and a new
``getUpdates`` ends a waiting one with ``409 Conflict``.

Test controls: ``inject_*`` (messages, edits, channel posts, button presses, any
Update), ``add_chat``, the records ``sent``, ``edits``, ``answers`` and ``calls``, and
:meth:`TelegramEmulator.fail_next` to make the next calls fail with flood control
(429), a 500, an HTML 502 from a proxy, malformed or wrongly typed JSON, a dropped
connection (before or after the request took effect) or a hang.

A :class:`~http.server.ThreadingHTTPServer` in a daemon thread: each connection gets
a thread, so long polls do not block other calls, and tests drive it from any event
loop (or none). Shared state sits behind one condition variable.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

FaultKind = Literal[
    "flood", "server_error", "bad_gateway", "malformed", "wrong_shape", "drop", "hang"
]
DEFAULT_TOKEN = "123456789:AAE-emulator_token_0123456789abcdefXYZ"  # noqa: S105 - a test token
DEFAULT_ALLOWED = frozenset(
    {
        "message",
        "edited_message",
        "channel_post",
        "edited_channel_post",
        "business_message",
        "edited_business_message",
        "callback_query",
        "inline_query",
        "my_chat_member",
        "poll",
    }
)  # the default excludes chat_member, message_reaction and message_reaction_count
CONFLICT = (
    "Conflict: terminated by other getUpdates request;"
    " make sure that only one bot instance is running"
)
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup"
    " are exactly the same as a current content and reply markup of the message"
)
QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"

Json = dict[str, Any]


class _ApiError(Exception):
    """An ``ok: false`` answer: raised by a method handler, rendered by the server."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(code, description)
        self.code = code
        self.description = description
        self.retry_after = retry_after


@dataclass(slots=True)
class Fault:
    kind: FaultKind
    method: str | None  # lower case; None: any method
    retry_after: int
    after_effect: bool  # "drop": take effect first, then drop (the answer is lost)


@dataclass(frozen=True, slots=True)
class Call:
    """One request that reached a method (faults included), with its parameters."""

    method: str
    params: Json


@dataclass(slots=True)
class _Update:
    update_id: int
    kind: str
    raw: bytes


@dataclass(slots=True)
class _State:
    next_update_id: int
    updates: list[_Update] = field(default_factory=list)
    allowed: frozenset[str] = DEFAULT_ALLOWED
    poll_generation: int = 0
    chats: dict[int, Json] = field(default_factory=dict)
    messages: dict[tuple[int, int], Json] = field(default_factory=dict)
    next_message_id: dict[int, int] = field(default_factory=dict)
    open_queries: set[str] = field(default_factory=set)
    faults: list[Fault] = field(default_factory=list)
    sent: list[Json] = field(default_factory=list)
    edits: list[Json] = field(default_factory=list)
    answers: list[Json] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    closed: bool = False


class TelegramEmulator:
    """A Bot API server for one bot; ``with TelegramEmulator() as bot: bot.base_url``."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_username: str = "threezone_test_bot",
        first_update_id: int = 700_000_000,
    ) -> None:
        self.token = token
        self.bot: Json = {
            "id": int(token.split(":", 1)[0]),
            "is_bot": True,
            "first_name": "threezone test",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self._lock = threading.Condition()
        self._state = _State(next_update_id=first_update_id)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle ------------------------------------------------------------------------

    def start(self) -> TelegramEmulator:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        with self._lock:
            self._state.closed = True
            self._lock.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> TelegramEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the emulator first"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # Test controls: chats and updates -------------------------------------------------

    def add_chat(
        self, chat_id: int, kind: str = "private", *, title: str = "", username: str = ""
    ) -> Json:
        """Make a chat known (the bot can only write to chats it knows)."""
        chat: Json = {"id": chat_id, "type": kind}
        if kind == "private":
            chat["first_name"] = title or f"User {chat_id}"
        else:
            chat["title"] = title or f"Chat {chat_id}"
        if username:
            chat["username"] = username
        with self._lock:
            return dict(self._state.chats.setdefault(chat_id, chat))

    def inject_update(self, body: Mapping[str, Any], *, indent: int | None = None) -> Json:
        """Queue an Update (``update_id`` is assigned); ``indent`` varies its bytes."""
        with self._lock:
            update = {"update_id": self._state.next_update_id, **body}
            self._state.next_update_id += 1
            kind = next((k for k in body if k != "update_id"), "unknown")
            if kind in self._state.allowed:
                raw = json.dumps(update, ensure_ascii=False, indent=indent).encode()
                self._state.updates.append(_Update(update["update_id"], kind, raw))
                self._lock.notify_all()
            return update

    def inject_message(
        self,
        chat_id: int,
        from_id: int | None,
        text: str,
        *,
        chat_type: str = "private",
        kind: str = "message",
        sender_chat: Json | None = None,
        reply_to: int | None = None,
    ) -> Json:
        """A text message from user ``from_id`` in ``chat_id`` (created if unknown)."""
        chat = self.add_chat(chat_id, chat_type)
        message: Json = {
            "message_id": self._new_message_id(chat_id),
            "date": int(time.time()),
            "chat": chat,
            "text": text,
        }
        if from_id is not None:
            message["from"] = {"id": from_id, "is_bot": False, "first_name": f"U{from_id}"}
        if sender_chat is not None:
            message["sender_chat"] = sender_chat
        if reply_to is not None:
            with self._lock:
                replied = self._state.messages.get((chat_id, reply_to))
            if replied is not None:
                message["reply_to_message"] = replied
        if kind.startswith("edited_"):
            message["edit_date"] = int(time.time())
        with self._lock:
            self._state.messages[(chat_id, message["message_id"])] = message
        return self.inject_update({kind: message})

    def inject_edited_message(self, chat_id: int, from_id: int, text: str) -> Json:
        return self.inject_message(chat_id, from_id, text, kind="edited_message")

    def inject_channel_post(self, chat_id: int, text: str, *, title: str = "News") -> Json:
        """A post in a channel: no ``from``, the channel itself as ``sender_chat``."""
        channel = self.add_chat(chat_id, "channel", title=title)
        return self.inject_message(
            chat_id, None, text, chat_type="channel", kind="channel_post", sender_chat=channel
        )

    def inject_callback(self, from_id: int, chat_id: int, message_id: int, data: str) -> Json:
        """A press on a button of the bot's message ``message_id`` in ``chat_id``.

        ``data`` is whatever the client sends, which need not be on any button.
        """
        with self._lock:
            message = self._state.messages.get((chat_id, message_id))
            query_id = str(secrets.randbits(63))
            self._state.open_queries.add(query_id)
        if message is None:
            message = {
                "message_id": message_id,
                "date": 0,
                "chat": {"id": chat_id, "type": "private"},
            }
        query: Json = {
            "id": query_id,
            "from": {"id": from_id, "is_bot": False, "first_name": f"U{from_id}"},
            "message": message,
            "chat_instance": str(chat_id * 7919),
            "data": data,
        }
        return self.inject_update({"callback_query": query})

    # Test controls: faults and records ------------------------------------------------

    def fail_next(
        self,
        kind: FaultKind,
        count: int = 1,
        *,
        method: str | None = None,
        retry_after: int = 1,
        after_effect: bool = False,
    ) -> None:
        """The next ``count`` calls (of ``method``, or any) fail this way."""
        fault = Fault(kind, method.lower() if method else None, retry_after, after_effect)
        with self._lock:
            self._state.faults.extend(fault for _ in range(count))

    @property
    def sent(self) -> list[Json]:
        """Messages the bot sent, as the Message objects sendMessage returned."""
        with self._lock:
            return [dict(m) for m in self._state.sent]

    @property
    def edits(self) -> list[Json]:
        with self._lock:
            return [dict(m) for m in self._state.edits]

    @property
    def answers(self) -> list[Json]:
        """answerCallbackQuery parameters, in order."""
        with self._lock:
            return [dict(m) for m in self._state.answers]

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._state.calls)

    def pending_update_ids(self) -> list[int]:
        """Updates not yet confirmed by an offset."""
        with self._lock:
            return [u.update_id for u in self._state.updates]

    def message(self, chat_id: int, message_id: int) -> Json | None:
        with self._lock:
            found = self._state.messages.get((chat_id, message_id))
            return None if found is None else dict(found)

    # The server side ------------------------------------------------------------------

    def take_fault(self, method: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._state.faults):
                if fault.method in (None, method):
                    return self._state.faults.pop(index)
        return None

    def record(self, method: str, params: Json) -> None:
        with self._lock:
            self._state.calls.append(Call(method, params))

    def check_token(self, token: str) -> None:
        if not secrets.compare_digest(token.encode(), self.token.encode()):
            raise _ApiError(401, "Unauthorized")

    def dispatch(self, method: str, params: Json) -> Any:
        handlers: dict[str, Callable[[Json], Any]] = {
            "getme": lambda _params: dict(self.bot),
            "getupdates": self._get_updates,
            "sendmessage": self._send_message,
            "answercallbackquery": self._answer_callback,
            "editmessagetext": self._edit_message_text,
        }
        handler = handlers.get(method)
        if handler is None:
            raise _ApiError(404, "Not Found")
        return handler(params)

    def hang(self) -> None:
        """Hold a request until the emulator closes."""
        with self._lock:
            while not self._state.closed:
                self._lock.wait(1.0)

    def _new_message_id(self, chat_id: int) -> int:
        with self._lock:
            number = self._state.next_message_id.get(chat_id, 1)
            self._state.next_message_id[chat_id] = number + 1
            return number

    def _get_updates(self, params: Json) -> _RawList:
        offset = _int(params, "offset", 0)
        limit = min(100, max(1, _int(params, "limit", 100)))
        timeout = max(0, _int(params, "timeout", 0))
        allowed = _json_field(params, "allowed_updates")
        with self._lock:
            state = self._state
            if allowed is not None:
                if not isinstance(allowed, list):
                    raise _ApiError(400, "Bad Request: can't parse allowed updates")
                state.allowed = frozenset(allowed) if allowed else DEFAULT_ALLOWED
            self._confirm(offset)
            state.poll_generation += 1
            generation = state.poll_generation
            self._lock.notify_all()
            deadline = time.monotonic() + timeout
            while not state.updates and not state.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
                if state.poll_generation != generation:
                    raise _ApiError(409, CONFLICT)
            return _RawList([u.raw for u in state.updates[:limit]])

    def _confirm(self, offset: int) -> None:
        updates = self._state.updates
        if offset < 0:
            self._state.updates = updates[offset:] if -offset < len(updates) else updates
        elif offset > 0:
            self._state.updates = [u for u in updates if u.update_id >= offset]

    def _send_message(self, params: Json) -> Json:
        chat = self._chat(params)
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:
            raise _ApiError(400, "Bad Request: message is too long")
        markup = _markup(params)
        message: Json = {
            "message_id": self._new_message_id(chat["id"]),
            "from": {k: self.bot[k] for k in ("id", "is_bot", "first_name", "username")},
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        replied = self._replied(params, chat["id"])
        if replied is not None:
            message["reply_to_message"] = replied
        if markup is not None:
            message["reply_markup"] = markup
        with self._lock:
            self._state.messages[(chat["id"], message["message_id"])] = message
            self._state.sent.append(message)
        return message

    def _chat(self, params: Json) -> Json:
        raw = params.get("chat_id")
        if raw is None or raw == "":
            raise _ApiError(400, "Bad Request: chat_id is empty")
        with self._lock:
            if isinstance(raw, str) and raw.startswith("@"):
                found = next(
                    (c for c in self._state.chats.values() if "@" + c.get("username", "") == raw),
                    None,
                )
            else:
                try:
                    found = self._state.chats.get(int(raw))
                except (TypeError, ValueError):
                    found = None
        if found is None:
            raise _ApiError(400, "Bad Request: chat not found")
        return dict(found)

    def _replied(self, params: Json, chat_id: int) -> Json | None:
        reply = _json_field(params, "reply_parameters")
        if reply is None and "reply_to_message_id" in params:
            reply = {"message_id": _int(params, "reply_to_message_id", 0)}
        if reply is None:
            return None
        if not isinstance(reply, dict) or not isinstance(reply.get("message_id"), int):
            raise _ApiError(400, "Bad Request: can't parse reply parameters JSON object")
        with self._lock:
            found = self._state.messages.get((chat_id, reply["message_id"]))
        if found is None and not reply.get("allow_sending_without_reply", False):
            raise _ApiError(400, "Bad Request: message to be replied not found")
        return None if found is None else dict(found)

    def _answer_callback(self, params: Json) -> bool:
        query_id = str(params.get("callback_query_id", ""))
        text = params.get("text", "")
        if not isinstance(text, str) or len(text) > 200:
            raise _ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        with self._lock:
            if query_id not in self._state.open_queries:
                raise _ApiError(400, QUERY_TOO_OLD)
            self._state.open_queries.discard(query_id)
            self._state.answers.append(dict(params))
        return True

    def _edit_message_text(self, params: Json) -> Json:
        chat = self._chat(params)
        message_id = _int(params, "message_id", 0)
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        markup = _markup(params)
        with self._lock:
            message = self._state.messages.get((chat["id"], message_id))
            if message is None or message["from"].get("id") != self.bot["id"]:
                raise _ApiError(400, "Bad Request: message to edit not found")
            if message["text"] == text and message.get("reply_markup") == markup:
                raise _ApiError(400, NOT_MODIFIED)
            edited = {k: v for k, v in message.items() if k != "reply_markup"}
            edited.update(text=text, edit_date=int(time.time()))
            if markup is not None:
                edited["reply_markup"] = markup
            self._state.messages[(chat["id"], message_id)] = edited
            self._state.edits.append(dict(params))
        return dict(edited)


class _RawList:
    """A getUpdates result: the stored bytes of each Update, joined, never re-encoded."""

    def __init__(self, raws: list[bytes]) -> None:
        self.raws = raws

    def encode(self) -> bytes:
        return b"[" + b",".join(self.raws) + b"]"


def _int(params: Json, name: str, default: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool):
        raise _ApiError(400, f"Bad Request: invalid {name} specified")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _ApiError(400, f"Bad Request: invalid {name} specified") from None


def _json_field(params: Json, name: str) -> Any:
    """An object or array parameter: as JSON, or JSON-serialized inside a form field."""
    value = params.get(name)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise _ApiError(400, f"Bad Request: can't parse {name} JSON object") from None
    return value


def _markup(params: Json) -> Json | None:
    markup = _json_field(params, "reply_markup")
    if markup is None:
        return None
    rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _ApiError(400, "Bad Request: can't parse inline keyboard button")
    for button in (b for row in rows for b in row):
        data = button.get("callback_data") if isinstance(button, dict) else None
        if not isinstance(button, dict) or not isinstance(button.get("text"), str):
            raise _ApiError(400, "Bad Request: can't parse inline keyboard button")
        if data is not None and not 1 <= len(str(data).encode()) <= 64:
            raise _ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
    return {"inline_keyboard": rows}


# --- HTTP -------------------------------------------------------------------------------------


def _handler_class(emulator: TelegramEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        bot_api = emulator

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like api.telegram.org
    # Headers and body go out in two writes; with Nagle on, the body waits for the
    # client's delayed ACK (about 40 ms), which would dominate every latency measured.
    disable_nagle_algorithm = True
    bot_api: TelegramEmulator

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request line carries the token."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        target = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = target.path.split("/")
        if len(parts) != 3 or parts[0] or not parts[1].startswith("bot"):
            self._answer(404, _error(404, "Not Found"))
            return
        method = parts[2].lower()
        try:
            self.bot_api.check_token(parts[1][3:])
            params = _params(target.query, self.headers.get("Content-Type", ""), body)
        except _ApiError as exc:
            self._answer(exc.code, _error(exc.code, exc.description, exc.retry_after))
            return
        self.bot_api.record(method, params)
        fault = self.bot_api.take_fault(method)
        if fault is not None and not fault.after_effect:
            self._fault(fault)
            return
        try:
            result = self.bot_api.dispatch(method, params)
        except _ApiError as exc:
            self._answer(exc.code, _error(exc.code, exc.description, exc.retry_after))
            return
        if fault is not None:
            self._fault(fault)
            return
        self._answer(200, _ok(result))

    def _fault(self, fault: Fault) -> None:
        if fault.kind == "flood":
            description = f"Too Many Requests: retry after {fault.retry_after}"
            self._answer(429, _error(429, description, fault.retry_after))
        elif fault.kind == "server_error":
            self._answer(500, _error(500, "Internal Server Error"))
        elif fault.kind == "bad_gateway":
            page = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
            self._answer(502, page, "text/html")
        elif fault.kind == "malformed":
            self._answer(200, b'{"ok":true,"result":[{"update_id":')
        elif fault.kind == "wrong_shape":
            self._answer(200, b'{"ok":true,"result":{"update_id":"seven","message":[]}}')
        else:
            if fault.kind == "hang":
                self.bot_api.hang()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up on a long poll (it is stopping): nothing to answer.
            self.close_connection = True


def _params(query: str, content_type: str, body: bytes) -> Json:
    params: Json = dict(urllib.parse.parse_qsl(query))
    kind = content_type.split(";", 1)[0].strip().lower()
    if not body:
        return params
    if kind == "application/json":
        try:
            decoded = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _ApiError(400, "Bad Request: can't parse JSON") from None
        if not isinstance(decoded, dict):
            raise _ApiError(400, "Bad Request: can't parse JSON")
        params.update(decoded)
    elif kind == "application/x-www-form-urlencoded":
        params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
    else:
        raise _ApiError(400, "Bad Request: unsupported content type")
    return params


def _ok(result: Any) -> bytes:
    if isinstance(result, _RawList):
        return b'{"ok":true,"result":' + result.encode() + b"}"
    return json.dumps({"ok": True, "result": result}, ensure_ascii=False).encode()


def _error(code: int, description: str, retry_after: int | None = None) -> bytes:
    body: Json = {"ok": False, "error_code": code, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return json.dumps(body).encode()
