"""The LLM gateway: the planner's completions, with the executor's key and budgets.

The planner zone has no network and no key. It sends an ``LLMRequest``; the executor
checks the episode's budget, adds the API key, sends the request to the configured
provider through the egress layer (the provider's host is an allowlist entry like any
other) and answers with an ``LLMResponse`` or a typed protocol ``Error``.

Two wire formats, spoken with plain httpx2 in the official SDKs' request shapes
(the translation is :mod:`threezone.executor.llm_wire`):

* ``anthropic``: the Messages API, ``POST {base}/v1/messages`` with ``x-api-key`` and
  ``anthropic-version: 2023-06-01``. System turns become the top-level ``system``
  field; tool results become ``tool_result`` blocks in a user turn.
* ``openai``: Chat Completions, ``POST {base}/chat/completions`` when the base already
  ends in ``/v1`` (Ollama, vLLM, llama.cpp, LM Studio document it so), else
  ``{base}/v1/chat/completions``; ``Authorization: Bearer``.

No streaming: the planner needs whole answers, and a non-streamed request is simpler
to bound (one deadline, one size cap) and to audit.

**Errors** the planner sees (``Error.code``): ``llm_unavailable`` (no provider, or the
provider kept failing: timeouts, 5xx, 529, after bounded retries), ``llm_rate_limited``
(429 after retries, or a ``retry-after`` too long to wait), ``llm_budget_exhausted``
(the episode's calls, tokens or time are used up; the provider is not called),
``llm_bad_response`` (unparseable JSON, a tool the request did not offer, arguments
that are not a JSON object, anything over the protocol's bounds), ``llm_bad_request``
(the planner's request cannot be translated, or the provider answered 4xx) and
``llm_refused`` (wrong key, quota or spend limit, egress denied: retrying will not
help, the owner must act). Details never include the key, the prompt or the
provider's own error message (OpenAI's 401 quotes part of the key); the provider's
message goes to the log only, with the key cut out.

**Budgets** per episode (``[llm]`` in the config): calls, input tokens, output tokens,
and wall time since the episode's first call. A call is charged when it is sent
(retries of it are not extra calls); ``max_tokens`` is clamped to the output tokens
left, and that amount is reserved while the call runs, so concurrent calls cannot
overshoot it. Input tokens are only known afterwards, so the call that crosses the
input budget is the last one. A provider that reports no usage is charged an estimate
(a token per 4 bytes of request, and the whole ``max_tokens``). Budgets live in
memory: call :meth:`LlmGateway.end_episode` when an episode ends.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

import httpx2
import msgspec
import re2

from threezone.config.schema import LlmConfig
from threezone.errors import EgressDenied, EgressError, LlmError, SecretsError
from threezone.executor.egress import Egress
from threezone.executor.llm_wire import (
    LLM_BAD_REQUEST,
    LLM_BAD_RESPONSE,
    Parsed,
    Wire,
    bad_response,
    reject_constant,
    wire_for,
)
from threezone.executor.secrets import SecretStore
from threezone.protocol.messages import (
    Error,
    LLMRequest,
    LLMResponse,
    ToolCall,
)

__all__ = [
    "LLM_BAD_REQUEST",
    "LLM_BAD_RESPONSE",
    "LLM_BUDGET_EXHAUSTED",
    "LLM_RATE_LIMITED",
    "LLM_REFUSED",
    "LLM_UNAVAILABLE",
    "Budget",
    "CallRecord",
    "EpisodeUsage",
    "LlmGateway",
    "RetryPolicy",
]

log = logging.getLogger(__name__)

LLM_UNAVAILABLE: Final = "llm_unavailable"
LLM_RATE_LIMITED: Final = "llm_rate_limited"
LLM_BUDGET_EXHAUSTED: Final = "llm_budget_exhausted"
LLM_REFUSED: Final = "llm_refused"

CONNECTOR: Final = "llm"
DEFAULT_BASE_URLS: Final = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com/v1",
}
MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

MAX_KEY_LENGTH: Final = 4096
_TOKEN = re2.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_QUOTA_MARKERS = frozenset(
    {"insufficient_quota", "billing_hard_limit_reached", "enforced_spend_limit_reached"}
)


# --- retries and budgets ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries for 429, 5xx, 529 and transport failures.

    Exponential backoff without jitter (one executor, no herd to spread), or the
    provider's ``retry-after`` when it gives one, up to ``max_retry_after``; a longer
    wait is not made, the planner gets ``llm_rate_limited`` at once.
    """

    attempts: int = 3
    base_delay: float = 1.0
    max_delay: float = 20.0
    max_retry_after: float = 60.0

    def backoff(self, failed_attempt: int) -> float:
        return float(min(self.max_delay, self.base_delay * 2 ** (failed_attempt - 1)))


@dataclass(slots=True)
class EpisodeUsage:
    """What one episode has spent. ``started`` is the clock at its first call."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    reserved_output: int = 0
    started: float | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    """What an episode has left."""

    calls: int
    input_tokens: int
    output_tokens: int
    seconds: float

    def as_dict(self) -> dict[str, int]:
        # Whole milliseconds: the audit log records integers, never floats (canonical JSON).
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "milliseconds": round(self.seconds * 1000),
        }


@dataclass(slots=True)
class CallRecord:
    """One call, for the audit log: sizes, counts and outcome; never text, never the key."""

    provider: str
    model: str
    episode: str
    request_id: int
    messages: int
    tools: int
    max_tokens_requested: int
    max_tokens_sent: int = 0
    prompt_chars: int = 0
    attempts: int = 0
    http_status: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    usage_estimated: bool = False
    stop_reason: str = ""
    tool_calls: list[str] = field(default_factory=list)
    outcome: str = "ok"
    detail: str = ""

    def summary(self, budget: Budget) -> dict[str, Any]:
        record = {
            "provider": self.provider,
            "model": self.model,
            "episode": self.episode,
            "request": self.request_id,
            "outcome": self.outcome,
            "messages": self.messages,
            "tools": self.tools,
            "prompt_chars": self.prompt_chars,
            "max_tokens": {"requested": self.max_tokens_requested, "sent": self.max_tokens_sent},
            "attempts": self.attempts,
            "http_status": self.http_status,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "usage_estimated": self.usage_estimated,
            "stop_reason": self.stop_reason,
            "tool_calls": list(self.tool_calls),
            "budget_left": budget.as_dict(),
        }
        if self.detail:
            record["detail"] = self.detail
        return record


# --- the gateway ----------------------------------------------------------------------------


class LlmGateway:
    """Answers the planner's ``LLMRequest``s through the configured provider."""

    def __init__(
        self,
        config: LlmConfig,
        secrets: SecretStore,
        egress: Egress,
        clock: Clock = time.monotonic,
        *,
        sleep: Sleep = asyncio.sleep,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.config = config
        self._secrets = secrets
        self._egress = egress
        self._clock = clock
        self._sleep = sleep
        self._retry = retry or RetryPolicy()
        self._episodes: dict[str, EpisodeUsage] = {}
        self._client: httpx2.AsyncClient | None = None
        base = (config.base_url or DEFAULT_BASE_URLS.get(config.provider, "")).rstrip("/")
        self._wire: Wire | None = wire_for(config.provider, base)
        self.url = "" if self._wire is None else self._wire.endpoint(base)

    @property
    def enabled(self) -> bool:
        return self._wire is not None

    # Budgets -----------------------------------------------------------------------

    def usage(self, episode_id: str) -> EpisodeUsage:
        """A copy of what ``episode_id`` has spent so far."""
        return replace(self._episodes.get(episode_id, EpisodeUsage()))

    def remaining(self, episode_id: str) -> Budget:
        cfg, spent = self.config, self._episodes.get(episode_id, EpisodeUsage())
        elapsed = 0.0 if spent.started is None else self._clock() - spent.started
        return Budget(
            calls=max(0, cfg.max_calls_per_episode - spent.calls),
            input_tokens=max(0, cfg.max_input_tokens_per_episode - spent.input_tokens),
            output_tokens=max(
                0, cfg.max_output_tokens_per_episode - spent.output_tokens - spent.reserved_output
            ),
            seconds=max(0.0, cfg.max_seconds_per_episode - elapsed),
        )

    def end_episode(self, episode_id: str) -> EpisodeUsage | None:
        """Forget an episode's counters (its budget is gone with it); returns what it spent."""
        return self._episodes.pop(episode_id, None)

    def _reserve(self, episode_id: str, requested: int) -> int:
        """Charge one call and reserve output tokens; the clamped ``max_tokens``."""
        spent = self._episodes.setdefault(episode_id, EpisodeUsage())
        if spent.started is None:
            spent.started = self._clock()
        left = self.remaining(episode_id)
        for name, value in (
            ("calls", left.calls),
            ("input tokens", left.input_tokens),
            ("output tokens", left.output_tokens),
            ("seconds", left.seconds),
        ):
            if value <= 0:
                raise LlmError(LLM_BUDGET_EXHAUSTED, f"the episode's LLM budget of {name} is spent")
        granted = min(requested, left.output_tokens)
        spent.calls += 1
        spent.reserved_output += granted
        return granted

    def _settle(self, episode_id: str, reserved: int, input_tokens: int, output: int) -> None:
        spent = self._episodes.setdefault(episode_id, EpisodeUsage())
        spent.reserved_output = max(0, spent.reserved_output - reserved)
        spent.input_tokens += input_tokens
        spent.output_tokens += output

    # Calls -------------------------------------------------------------------------

    async def answer(
        self, request: LLMRequest, *, response_id: int, episode_id: str | None = None
    ) -> tuple[LLMResponse | Error, dict[str, Any]]:
        """The wire answer for the planner, and the audit record of the call.

        Never raises for anything the planner or the provider did: every failure is an
        ``Error`` with one of the ``llm_*`` codes.
        """
        episode = request.episode_id if episode_id is None else episode_id
        record = self._record(request, episode)
        try:
            reply: LLMResponse | Error = await self._complete(request, episode, response_id, record)
        except LlmError as exc:
            record.outcome, record.detail = exc.code, exc.detail
            reply = Error(id=response_id, reply_to=request.id, code=exc.code, detail=exc.detail)
        return reply, record.summary(self.remaining(episode))

    def handler(
        self, audit: Callable[[str, Mapping[str, object]], object]
    ) -> Callable[[LLMRequest, int], Awaitable[LLMResponse | Error]]:
        """The executor's ``LlmHandler``: answer, and audit each call as ``llm_call``.

        ``audit`` is ``AuditLog.append``. The executor checks that the episode is open
        before it calls the handler.
        """

        async def handle(request: LLMRequest, response_id: int) -> LLMResponse | Error:
            reply, summary = await self.answer(request, response_id=response_id)
            audit("llm_call", summary)
            return reply

        return handle

    async def complete(
        self, request: LLMRequest, episode_id: str | None = None, *, response_id: int = 0
    ) -> LLMResponse:
        """The provider's completion for ``request``; raises :class:`LlmError`."""
        episode = request.episode_id if episode_id is None else episode_id
        return await self._complete(request, episode, response_id, self._record(request, episode))

    def _record(self, request: LLMRequest, episode: str) -> CallRecord:
        return CallRecord(
            provider=self.config.provider,
            model=self.config.model,
            episode=episode,
            request_id=request.id,
            messages=len(request.messages),
            tools=len(request.tools),
            max_tokens_requested=request.max_tokens,
            prompt_chars=sum(len(m.content) for m in request.messages),
        )

    async def _complete(
        self, request: LLMRequest, episode: str, response_id: int, record: CallRecord
    ) -> LLMResponse:
        wire = self._wire
        if wire is None:
            raise LlmError(LLM_UNAVAILABLE, "no language-model provider is configured")
        self._check_egress()
        headers = wire.headers(self._api_key())
        body = wire.body(request, self.config.model)  # the planner's mistakes cost no budget
        granted = self._reserve(episode, request.max_tokens)
        record.max_tokens_sent = body[wire.limit_field] = granted
        content = json.dumps(body, ensure_ascii=False).encode()
        used_in = used_out = 0
        try:
            data = await self._exchange(content, headers, episode, record)
            parsed = _decode(data, wire, request)
            used_in, used_out, record.usage_estimated = _charged(parsed, len(content), granted)
            response = _response(parsed, request, response_id, (used_in, used_out))
        finally:
            self._settle(episode, granted, used_in, used_out)
        record.input_tokens, record.output_tokens = used_in, used_out
        record.stop_reason = response.stop_reason
        record.tool_calls = [call.name for call in response.tool_calls]
        return response

    def _check_egress(self) -> None:
        """Refuse before any byte leaves, so a denied provider costs no budget either."""
        try:
            self._egress.check_request(CONNECTOR, "POST", httpx2.URL(self.url))
        except EgressDenied as exc:
            raise LlmError(LLM_REFUSED, f"egress denied: {exc}") from None
        except (httpx2.InvalidURL, ValueError):
            raise LlmError(LLM_REFUSED, "the configured llm.base_url is not a valid URL") from None

    def _api_key(self) -> str:
        name = self.config.api_key_secret
        try:
            key = self._secrets.get(name)
        except SecretsError:
            raise LlmError(LLM_REFUSED, f"no secret named {name!r} is loaded") from None
        if not _header_safe(key):
            raise LlmError(LLM_REFUSED, f"secret {name!r} is not usable as an HTTP header value")
        return key

    # HTTP --------------------------------------------------------------------------

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:
            self._client = self._egress.http_client(
                CONNECTOR, timeout=httpx2.Timeout(self.config.request_timeout)
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _exchange(
        self, content: bytes, headers: Mapping[str, str], episode: str, record: CallRecord
    ) -> bytes:
        """The body of a 2xx answer, retrying what may pass; else the last LlmError."""
        while True:
            record.attempts += 1
            outcome = await self._attempt(content, headers, self.remaining(episode).seconds)
            record.http_status = outcome.status
            if outcome.error is None:
                return outcome.data
            delay = self._retry_delay(outcome, record.attempts, episode)
            if delay is None:
                raise outcome.error
            log.warning(
                "llm: %s (attempt %d), retrying in %.1fs",
                outcome.error.detail,
                record.attempts,
                delay,
            )
            await self._sleep(delay)

    def _retry_delay(self, outcome: _Attempt, attempt: int, episode: str) -> float | None:
        error = outcome.error
        if error is None or not error.retryable or attempt >= self._retry.attempts:
            return None
        delay = outcome.retry_after
        if delay is None:
            delay = self._retry.backoff(attempt)
        if delay > self._retry.max_retry_after or delay >= self.remaining(episode).seconds:
            return None
        return delay

    async def _attempt(
        self, content: bytes, headers: Mapping[str, str], seconds: float
    ) -> _Attempt:
        timeout = min(self.config.request_timeout, seconds)
        try:
            async with asyncio.timeout(timeout):
                return await self._post(content, headers)
        except LlmError as exc:
            return _Attempt(error=exc)
        except (TimeoutError, httpx2.TimeoutException):
            detail = f"the provider did not answer within {timeout:.1f}s"
            return _Attempt(error=LlmError(LLM_UNAVAILABLE, detail, retryable=True))
        except EgressDenied as exc:
            return _Attempt(error=LlmError(LLM_REFUSED, f"egress denied: {exc}"))
        except EgressError as exc:
            return _Attempt(error=LlmError(LLM_UNAVAILABLE, str(exc), retryable=True))
        except httpx2.HTTPError as exc:
            # The exception's text may hold the URL or header values: name its type only.
            detail = f"transport error talking to the provider ({type(exc).__name__})"
            return _Attempt(error=LlmError(LLM_UNAVAILABLE, detail, retryable=True))

    async def _post(self, content: bytes, headers: Mapping[str, str]) -> _Attempt:
        client = self._http()
        async with client.stream("POST", self.url, content=content, headers=headers) as answer:
            data = await _read_capped(answer)
            status = answer.status_code
            if 200 <= status < 300:
                return _Attempt(data=data, status=status)
            error = self._status_error(status, data)
            return _Attempt(error=error, status=status, retry_after=_retry_after(answer.headers))

    def _status_error(self, status: int, data: bytes) -> LlmError:
        kind, markers, message = _error_fields(data)
        self._log_provider_message(status, kind, message)
        what = f"the provider answered HTTP {status}" + (f" ({kind})" if kind else "")
        if status in (401, 403):
            return LlmError(LLM_REFUSED, f"{what}: check the API key and its permissions")
        if status == 402 or markers & _QUOTA_MARKERS:
            return LlmError(LLM_REFUSED, f"{what}: the account's quota or spend limit is reached")
        if status == 429:
            return LlmError(LLM_RATE_LIMITED, what, retryable=True)
        if status in (408, 409) or status >= 500:
            return LlmError(LLM_UNAVAILABLE, what, retryable=True)
        return LlmError(LLM_BAD_REQUEST, what)

    def _log_provider_message(self, status: int, kind: str, message: str) -> None:
        """The provider's words help the owner; they go to the log only, never a secret.

        Credential errors are not quoted at all: OpenAI's 401 echoes part of the key.
        """
        if status in (401, 403) or self._secrets.leaks(message):
            message = "[withheld]"
        log.warning("llm: provider HTTP %d %s: %s", status, kind or "-", message[:300])


def _header_safe(key: str) -> bool:
    """Printable ASCII without spaces: anything else would make the HTTP library raise
    an error that quotes the header value, key and all."""
    return 0 < len(key) <= MAX_KEY_LENGTH and all("\x21" <= c <= "\x7e" for c in key)


@dataclass(frozen=True, slots=True)
class _Attempt:
    data: bytes = b""
    error: LlmError | None = None
    status: int | None = None
    retry_after: float | None = None


async def _read_capped(answer: httpx2.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.aiter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise LlmError(LLM_BAD_RESPONSE, f"the answer is over {MAX_RESPONSE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _retry_after(headers: httpx2.Headers) -> float | None:
    """``retry-after-ms``, or ``retry-after`` in seconds or as an HTTP date."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError, IndexError):
                continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def _error_fields(data: bytes) -> tuple[str, set[str], str]:
    """(error type, machine-readable markers, message) of either provider's error body."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return "", set(), ""
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return "", set(), ""
    details = error.get("details")
    candidates = [error.get("type"), error.get("code")]
    if isinstance(details, dict):
        candidates.append(details.get("error_code"))
    markers = {c for c in candidates if isinstance(c, str) and _TOKEN.match(c)}
    kind = error.get("type")
    message = error.get("message")
    return (
        kind if isinstance(kind, str) and _TOKEN.match(kind) else "",
        markers,
        message if isinstance(message, str) else "",
    )


# --- decoding the provider's answer -----------------------------------------------------------


def _decode(data: bytes, wire: Wire, request: LLMRequest) -> Parsed:
    try:
        document = json.loads(data, parse_constant=reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_response("the provider's answer is not valid JSON") from None
    if not isinstance(document, dict):
        raise bad_response("the provider's answer is not a JSON object")
    try:
        parsed = wire.parse(document)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        raise bad_response("the provider's answer does not have the expected shape") from None
    offered = {tool.name for tool in request.tools} if request.tool_choice != "none" else set()
    for _, name, _ in parsed.tool_calls:
        if name not in offered:
            raise bad_response(f"the model called a tool the request did not offer: {name[:64]!r}")
    return parsed


def _charged(parsed: Parsed, request_bytes: int, granted: int) -> tuple[int, int, bool]:
    """(input, output, estimated): the provider's usage, or a conservative estimate."""
    if parsed.input_tokens is not None and parsed.output_tokens is not None:
        return parsed.input_tokens, parsed.output_tokens, False
    estimate_in = parsed.input_tokens if parsed.input_tokens is not None else request_bytes // 4
    estimate_out = parsed.output_tokens if parsed.output_tokens is not None else granted
    return estimate_in, estimate_out, True


def _response(
    parsed: Parsed, request: LLMRequest, response_id: int, charged: tuple[int, int]
) -> LLMResponse:
    """The wire message, validated against the protocol's own bounds.

    Its token counts are what the episode was charged (an estimate when the provider
    reported none), so the planner's own bookkeeping agrees with the executor's.
    """
    response = LLMResponse(
        id=response_id,
        reply_to=request.id,
        content=parsed.content,
        stop_reason=parsed.stop_reason,
        input_tokens=charged[0],
        output_tokens=charged[1],
        tool_calls=[ToolCall(id=i, name=n, arguments_json=a) for i, n, a in parsed.tool_calls],
    )
    try:
        return msgspec.json.decode(msgspec.json.encode(response), type=LLMResponse)
    except msgspec.ValidationError as exc:
        raise bad_response(f"the provider's answer breaks the protocol's bounds: {exc}") from None
    except UnicodeEncodeError:  # JSON allows a lone "\udceb"; UTF-8 does not
        raise bad_response("the provider's answer holds a lone surrogate") from None
