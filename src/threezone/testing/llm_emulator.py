"""A loopback LLM server that speaks both wire formats the executor's gateway uses.

* ``POST /v1/messages``: Anthropic's Messages API (``x-api-key``, ``anthropic-version``;
  the system prompt is a top-level field, never a message; tools come back as
  ``tool_use`` content blocks and go back as ``tool_result`` blocks in a user turn).
* ``POST /v1/chat/completions``: OpenAI's Chat Completions (``Authorization: Bearer``;
  tool calls in ``choices[0].message.tool_calls`` with ``arguments`` as a JSON string;
  results as ``{"role": "tool", "tool_call_id": ...}``).

Both answer with the real APIs' error shapes and status codes: 401 for a wrong key
(OpenAI's message quotes the key masked, as the real one does), 400 for requests the
real API refuses (a ``system`` role inside Anthropic ``messages``, a tool result that
answers no tool call of the turn before), 429 with ``retry-after``, 500 and 529.

The server is scripted: :meth:`LlmEmulator.reply` queues a canned answer (text and/or
tool calls, optional usage numbers), :meth:`LlmEmulator.fail`, :meth:`malformed` and
:meth:`hang` queue faults; with nothing queued it echoes the last user text. Every
request is recorded (path, headers, JSON body) for assertions. No streaming: the
gateway does not use it, so ``"stream": true`` is refused with a 400.

A ``ThreadingHTTPServer`` on 127.0.0.1 with a random port: the client under test runs
on the asyncio loop of the test, the server on its own threads.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/chat/completions"
MAX_REQUEST_BYTES = 32 * 1024 * 1024

Api = Literal["anthropic", "openai"]
_ROUTES: Mapping[str, Api] = {ANTHROPIC_PATH: "anthropic", OPENAI_PATH: "openai"}
JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    """A canned answer: text, tool calls ``(name, arguments)``, optional usage numbers.

    ``arguments`` may be a dict (sent as the API sends it) or a ``str``, sent verbatim,
    so a test can make the model emit arguments that are not a JSON object.
    """

    text: str = ""
    tool_calls: tuple[tuple[str, JsonObject | str], ...] = ()
    input_tokens: int | None = None
    output_tokens: int | None = None
    omit_usage: bool = False
    stop_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted failure: an HTTP error, a 200 with broken JSON, or no answer at all."""

    kind: Literal["status", "malformed", "hang"]
    status: int = 500
    retry_after: str | None = None
    error_type: str | None = None
    code: str | None = None
    message: str | None = None
    details: JsonObject | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as it arrived: lower-case header names, the decoded JSON body."""

    api: Api
    path: str
    headers: Mapping[str, str]
    body: JsonObject


@dataclass(slots=True)
class _Script:
    queue: deque[Reply | Fault] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class LlmEmulator:
    """Both APIs on one loopback port. Use as a context manager (starts and stops it)."""

    def __init__(self, api_key: str = "sk-emulator-test-key-0000", *, hang_seconds: float = 60.0):
        self.api_key = api_key
        self.hang_seconds = hang_seconds
        self._script = _Script()
        self._release = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)

    # --- lifecycle ----------------------------------------------------------------------

    def _serve(self) -> None:
        self._httpd.serve_forever(poll_interval=0.05)  # a quick shutdown between tests

    def __enter__(self) -> LlmEmulator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()  # hung handlers return, so shutdown does not wait on them
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def base_url(self) -> str:
        """The host root, as Anthropic's base URL is written (``/v1/...`` is appended)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """Ending in ``/v1``, as Ollama, vLLM and llama.cpp document their base URL."""
        return f"{self.base_url}/v1"

    # --- scripting ----------------------------------------------------------------------

    def reply(
        self,
        text: str = "",
        *,
        tool_calls: tuple[tuple[str, JsonObject | str], ...] = (),
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        omit_usage: bool = False,
        stop_reason: str | None = None,
    ) -> None:
        """Queue one answer; the next request gets it instead of the echo."""
        self._push(Reply(text, tool_calls, input_tokens, output_tokens, omit_usage, stop_reason))

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
        message: str | None = None,
        details: JsonObject | None = None,
    ) -> None:
        """Queue ``times`` HTTP errors in the API's own error shape.

        ``code`` is OpenAI's ``error.code``; ``details`` is Anthropic's
        ``error.details`` (``{"error_code": "enforced_spend_limit_reached"}`` for a
        spend cap, which comes as a 429 ``rate_limit_error``).
        """
        for _ in range(times):
            fault = Fault("status", status, retry_after, error_type, code, message, details)
            self._push(fault)

    def malformed(self, times: int = 1) -> None:
        """Queue 200 answers whose body is cut off mid-JSON."""
        for _ in range(times):
            self._push(Fault("malformed"))

    def hang(self, times: int = 1) -> None:
        """Queue requests that get no answer until ``hang_seconds`` pass or the server stops."""
        for _ in range(times):
            self._push(Fault("hang"))

    def _push(self, item: Reply | Fault) -> None:
        with self._script.lock:
            self._script.queue.append(item)

    @property
    def requests(self) -> list[Recorded]:
        """Every request that reached the server (authenticated or not), in order."""
        with self._script.lock:
            return list(self._script.requests)

    def _record(self, item: Recorded) -> Reply | Fault | None:
        with self._script.lock:
            self._script.requests.append(item)
            return self._script.queue.popleft() if self._script.queue else None

    def _next_id(self) -> int:
        with self._script.lock:
            self._script.served += 1
            return self._script.served


# --- the HTTP side ------------------------------------------------------------------------


def _handler_for(emulator: LlmEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            api = _ROUTES.get(self.path)
            if api is None:
                self._send(
                    404, {"error": {"message": f"no route {self.path}", "type": "not_found"}}
                )
                return
            body = self._read_json()
            if body is None:
                self._send(400, _error(api, 400, message="the body is not a JSON object"))
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            scripted = emulator._record(Recorded(api, self.path, headers, body))
            status, answer, extra = _answer(emulator, api, headers, body, scripted)
            if status == 0:
                self._hang()
                return
            self._send(status, answer, extra)

        def _read_json(self) -> JsonObject | None:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_REQUEST_BYTES:
                return None
            try:
                decoded = json.loads(self.rfile.read(length))
            except (ValueError, UnicodeDecodeError):
                return None
            return decoded if isinstance(decoded, dict) else None

        def _hang(self) -> None:
            emulator._release.wait(emulator.hang_seconds)
            self.close_connection = True

        def _send(
            self, status: int, answer: JsonObject | bytes, extra: Mapping[str, str] = {}
        ) -> None:
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the tests read emulator.requests, not stderr

    return Handler


def _answer(
    emulator: LlmEmulator,
    api: Api,
    headers: Mapping[str, str],
    body: JsonObject,
    scripted: Reply | Fault | None,
) -> tuple[int, JsonObject | bytes, dict[str, str]]:
    """(status, body, extra headers); status 0 means: do not answer at all."""
    refused = _check_auth(emulator.api_key, api, headers) or _check_request(api, body)
    if refused is not None:
        return refused[0], refused[1], {}
    if isinstance(scripted, Fault):
        return _fault(emulator, api, scripted)
    reply = scripted if scripted is not None else Reply(text="echo: " + _last_user_text(api, body))
    number = emulator._next_id()
    if api == "anthropic":
        return 200, _anthropic_message(body, reply, number), {"request-id": f"req_emu_{number}"}
    return 200, _openai_completion(body, reply, number), {"x-request-id": f"req_emu_{number}"}


def _fault(
    emulator: LlmEmulator, api: Api, fault: Fault
) -> tuple[int, JsonObject | bytes, dict[str, str]]:
    if fault.kind == "hang":
        return 0, b"", {}
    if fault.kind == "malformed":
        return 200, b'{"id": "msg_emu", "content": [{"type": "te', {}
    extra = {"retry-after": fault.retry_after} if fault.retry_after is not None else {}
    error = _error(api, fault.status, fault.error_type, fault.code, fault.message)
    if fault.details is not None and api == "anthropic":
        error["error"]["details"] = fault.details
    return fault.status, error, extra


# --- auth and request checks, as the real APIs answer them -------------------------------


def _check_auth(key: str, api: Api, headers: Mapping[str, str]) -> tuple[int, JsonObject] | None:
    if api == "anthropic":
        if headers.get("x-api-key") != key:
            return 401, _error(api, 401, message="invalid x-api-key")
        if not headers.get("anthropic-version"):
            return 400, _error(api, 400, message="anthropic-version: header is required")
        return None
    given = headers.get("authorization", "")
    if not given.startswith("Bearer "):
        message = "You didn't provide an API key. You need to provide your API key in an "
        message += "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        return 401, _error(api, 401, "invalid_request_error", None, message)
    if given.removeprefix("Bearer ") != key:
        shown = given.removeprefix("Bearer ")
        masked = shown[:3] + "*" * max(len(shown) - 7, 0) + shown[-4:]
        message = f"Incorrect API key provided: {masked}. You can find your API key at "
        message += "https://platform.openai.com/account/api-keys."
        return 401, _error(api, 401, "invalid_request_error", "invalid_api_key", message)
    return None


def _check_request(api: Api, body: JsonObject) -> tuple[int, JsonObject] | None:
    problem = _anthropic_problem(body) if api == "anthropic" else _openai_problem(body)
    if problem is None and body.get("stream"):
        problem = "stream: this emulator does not stream"
    return None if problem is None else (400, _error(api, 400, message=problem))


def _anthropic_problem(body: JsonObject) -> str | None:
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    previous_tool_uses: set[str] = set()
    for index, message in enumerate(body["messages"]):
        role = message.get("role")
        if role not in ("user", "assistant"):
            return f'messages.{index}.role: Input should be "user" or "assistant"'
        blocks = message.get("content")
        blocks = [{"type": "text", "text": blocks}] if isinstance(blocks, str) else blocks
        for block in blocks:
            if block.get("type") == "tool_result" and block.get("tool_use_id") not in (
                previous_tool_uses
            ):
                return (
                    f"messages.{index}.content: unexpected `tool_use_id` found in "
                    "`tool_result` blocks: each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message."
                )
        previous_tool_uses = {b["id"] for b in blocks if b.get("type") == "tool_use"}
    return None


def _openai_problem(body: JsonObject) -> str | None:
    for name in ("model", "messages"):
        if name not in body:
            return f"Missing required parameter: '{name}'."
    open_calls: set[str] = set()
    for message in body["messages"]:
        if message.get("role") == "tool":
            if message.get("tool_call_id") not in open_calls:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'."
                )
        elif message.get("role") == "assistant":
            open_calls = {c["id"] for c in message.get("tool_calls") or []}
        else:
            open_calls = set()
    return None


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_OPENAI_TYPES = {429: ("requests", "rate_limit_exceeded"), 500: ("server_error", None)}


def _error(
    api: Api,
    status: int,
    error_type: str | None = None,
    code: str | None = None,
    message: str | None = None,
) -> JsonObject:
    """The provider's own error document for ``status``."""
    text = message or f"emulated error {status}"
    if api == "anthropic":
        kind = error_type or _ANTHROPIC_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": text}, "request_id": "req_emu"}
    default_type, default_code = _OPENAI_TYPES.get(status, ("invalid_request_error", None))
    error = {"message": text, "type": error_type or default_type, "param": None}
    error["code"] = code if code is not None else default_code
    return {"error": error}


# --- successful answers ----------------------------------------------------------------------


def _last_user_text(api: Api, body: JsonObject) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content if b.get("type") == "text"]
        if texts:
            return " ".join(texts)
    return ""


def _usage(body: JsonObject, reply: Reply) -> tuple[int, int]:
    """Deterministic counts: a word is a token; overridden by the reply's own numbers."""
    given = reply.input_tokens
    prompt = given if given is not None else max(1, len(json.dumps(body["messages"])) // 4)
    words = len(reply.text.split()) + 10 * len(reply.tool_calls)
    return prompt, reply.output_tokens if reply.output_tokens is not None else words


def _truncated(text: str, max_tokens: int) -> tuple[str, bool]:
    words = text.split(" ")
    return (text, False) if len(words) <= max_tokens else (" ".join(words[:max_tokens]), True)


def _anthropic_message(body: JsonObject, reply: Reply, number: int) -> JsonObject:
    text, cut = _truncated(reply.text, int(body["max_tokens"]))
    content: list[JsonObject] = [{"type": "text", "text": text}] if text else []
    for index, (name, arguments) in enumerate(reply.tool_calls):
        content.append(
            {
                "type": "tool_use",
                "id": f"toolu_emu_{number}_{index}",
                "name": name,
                "input": arguments,
            }
        )
    stop = reply.stop_reason or (
        "max_tokens" if cut else "tool_use" if reply.tool_calls else "end_turn"
    )
    prompt, completion = _usage(body, reply)
    message: JsonObject = {
        "id": f"msg_emu_{number}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
    }
    if not reply.omit_usage:
        message["usage"] = {"input_tokens": prompt, "output_tokens": completion}
    return message


def _openai_completion(body: JsonObject, reply: Reply, number: int) -> JsonObject:
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    text, cut = _truncated(reply.text, 1 << 30 if limit is None else int(limit))
    message: JsonObject = {"role": "assistant", "content": text or None, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_emu_{number}_{index}",
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
            for index, (name, args) in enumerate(reply.tool_calls)
        ]
    finish = reply.stop_reason or (
        "length" if cut else "tool_calls" if reply.tool_calls else "stop"
    )
    prompt, completion = _usage(body, reply)
    answer: JsonObject = {
        "id": f"chatcmpl-emu-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
    }
    if not reply.omit_usage:
        answer["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    return answer
