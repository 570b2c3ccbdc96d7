"""The LLM gateway against a loopback server speaking both providers' wire formats.

Every test drives the real gateway (httpx2 through the egress layer) against
``LlmEmulator``; refusals are proved by what did *not* reach the server. The API key
is a distinctive string, searched for in every answer, audit record, log line and
exception text the tests produce.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal, TypeVar

import msgspec
import pytest

from threezone.config.schema import EgressConfig, EgressRule, LlmConfig
from threezone.errors import LlmError
from threezone.executor.egress import Egress, StaticResolver
from threezone.executor.llm import LlmGateway, RetryPolicy
from threezone.executor.secrets import SecretStore
from threezone.protocol.messages import (
    ChatMessage,
    Error,
    LLMRequest,
    LLMResponse,
    ToolCall,
    ToolSpec,
)
from threezone.testing.llm_emulator import LlmEmulator

T = TypeVar("T")
Provider = Literal["anthropic", "openai"]
PROVIDERS: list[Provider] = ["anthropic", "openai"]
KEY = "sk-test-9f8e7d6c5b4a39281706QWERTY"
EPISODE = "ep-1"

SEND_TOOL = ToolSpec(
    name="email_send",
    description="Send an email",
    parameters_json=json.dumps(
        {
            "type": "object",
            "properties": {"to": {"type": "string"}, "body": {"type": "string"}},
            "required": ["to"],
        }
    ),
)


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def emulator() -> Iterator[LlmEmulator]:
    with LlmEmulator(api_key=KEY, hang_seconds=30) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every logger at DEBUG (httpx2 and httpcore2 included); each test checks the text."""
    caplog.set_level(logging.DEBUG)
    yield
    assert KEY not in caplog.text


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """Records the backoff the gateway asked for, and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def egress_for(port: int, *, host: str = "127.0.0.1") -> Egress:
    rule = EgressRule(connector="llm", host=host, port=port, methods=["POST"], path_prefix="/v1/")
    return Egress(EgressConfig(allow=[rule], allow_private=["127.0.0.0/8"]))


def make_gateway(
    emu: LlmEmulator,
    provider: Provider,
    *,
    key: str = KEY,
    egress: Egress | None = None,
    clock: FakeClock | None = None,
    sleeps: Sleeps | None = None,
    base_url: str | None = None,
    **limits: Any,
) -> LlmGateway:
    if base_url is None:
        base_url = emu.base_url if provider == "anthropic" else emu.openai_base_url
    config = LlmConfig(provider=provider, base_url=base_url, model="test-model", **limits)
    return LlmGateway(
        config,
        SecretStore({"LLM_API_KEY": key}),
        egress or egress_for(emu.port),
        clock or FakeClock(),
        sleep=sleeps or Sleeps(),
        retry=RetryPolicy(attempts=3, base_delay=0.5, max_delay=4.0, max_retry_after=30.0),
    )


def request(
    *messages: ChatMessage,
    tools: list[ToolSpec] | None = None,
    max_tokens: int = 256,
    episode: str = EPISODE,
    tool_choice: Literal["auto", "none", "required"] = "auto",
) -> LLMRequest:
    chat = list(messages) or [
        ChatMessage(role="system", content="You are terse."),
        ChatMessage(role="user", content="hello there"),
    ]
    return LLMRequest(
        id=7,
        episode_id=episode,
        messages=chat,
        max_tokens=max_tokens,
        tools=tools or [],
        tool_choice=tool_choice,
    )


def run(gateway: LlmGateway, body: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await body()
        finally:
            await gateway.aclose()

    return asyncio.run(main())


def answer(gateway: LlmGateway, *requests: LLMRequest) -> list[tuple[Any, dict[str, Any]]]:
    """Send requests one after another; the (wire reply, audit summary) of each."""

    async def body() -> list[tuple[Any, dict[str, Any]]]:
        return [await gateway.answer(r, response_id=100 + i) for i, r in enumerate(requests)]

    replies = run(gateway, body)
    for reply, summary in replies:
        assert_no_key(reply, summary)
    return replies


def assert_no_key(*things: Any) -> None:
    for thing in things:
        text = (
            msgspec.json.encode(thing).decode()
            if isinstance(thing, msgspec.Struct)
            else json.dumps(thing)
        )
        assert KEY not in text
        assert KEY[-8:] not in text


def error_of(reply: Any) -> Error:
    assert isinstance(reply, Error), reply
    return reply


def ok(reply: Any) -> LLMResponse:
    assert isinstance(reply, LLMResponse), reply
    return reply


# --- plain completions ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_plain_text_completion(emulator: LlmEmulator, provider: Provider) -> None:
    [(reply, summary)] = answer(make_gateway(emulator, provider), request())
    response = ok(reply)
    assert response.content == "echo: hello there"
    assert response.reply_to == 7
    assert response.id == 100
    assert response.stop_reason == "end_turn"
    assert response.tool_calls == []
    assert summary["outcome"] == "ok"
    assert summary["provider"] == provider
    assert "hello" not in json.dumps(summary)  # sizes, never the prompt's text


def test_anthropic_wire_shape(emulator: LlmEmulator) -> None:
    answer(make_gateway(emulator, "anthropic"), request())
    [seen] = emulator.requests
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == KEY
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert seen.body["system"] == "You are terse."
    assert seen.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hello there"}]}
    ]
    assert seen.body["max_tokens"] == 256
    assert seen.body["model"] == "test-model"
    assert "stream" not in seen.body


@pytest.mark.parametrize("with_v1", [True, False])
def test_openai_wire_shape_with_and_without_v1_in_base(
    emulator: LlmEmulator, with_v1: bool
) -> None:
    base = emulator.openai_base_url if with_v1 else emulator.base_url + "/"
    ok(answer(make_gateway(emulator, "openai", base_url=base), request())[0][0])
    [seen] = emulator.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert "x-api-key" not in seen.headers
    assert seen.body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello there"},
    ]
    assert seen.body["max_tokens"] == 256  # not the official host: max_completion_tokens there
    assert seen.body["stream"] is False


# --- tools ------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_call_comes_back_as_tool_call(emulator: LlmEmulator, provider: Provider) -> None:
    emulator.reply("Sending.", tool_calls=(("email_send", {"to": "a@example.com"}),))
    [(reply, summary)] = answer(
        make_gateway(emulator, provider), request(tools=[SEND_TOOL], tool_choice="required")
    )
    response = ok(reply)
    [call] = response.tool_calls
    assert call.name == "email_send"
    assert json.loads(call.arguments_json) == {"to": "a@example.com"}
    assert call.id
    assert response.stop_reason == "tool_use"
    assert summary["tool_calls"] == ["email_send"]
    schema = json.loads(SEND_TOOL.parameters_json)
    body = emulator.requests[0].body
    if provider == "anthropic":
        assert body["tools"] == [
            {"name": "email_send", "description": "Send an email", "input_schema": schema}
        ]
        assert body["tool_choice"] == {"type": "any"}
    else:
        assert body["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "email_send",
                    "description": "Send an email",
                    "parameters": schema,
                },
            }
        ]
        assert body["tool_choice"] == "required"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_result_round_trip(emulator: LlmEmulator, provider: Provider) -> None:
    emulator.reply(tool_calls=(("email_send", {"to": "a@example.com"}),))
    gateway = make_gateway(emulator, provider)
    first = ok(answer(gateway, request(tools=[SEND_TOOL]))[0][0])
    [call] = first.tool_calls
    follow_up = request(
        ChatMessage(role="system", content="You are terse."),
        ChatMessage(role="user", content="mail a"),
        ChatMessage(role="assistant", content="", tool_calls=[call]),
        ChatMessage(role="tool", content="sent: id 42", tool_call_id=call.id),
        tools=[SEND_TOOL],
    )
    second = ok(answer(gateway, follow_up)[0][0])  # the emulator refuses an orphan result
    assert second.stop_reason == "end_turn"
    messages = emulator.requests[1].body["messages"]
    if provider == "anthropic":
        assert messages[1] == {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": "email_send",
                    "input": {"to": "a@example.com"},
                }
            ],
        }
        assert messages[2] == {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sent: id 42"}],
        }
    else:
        assert messages[2]["tool_calls"][0]["function"] == {
            "name": "email_send",
            "arguments": call.arguments_json,
        }
        assert messages[2]["content"] is None
        assert messages[3] == {"role": "tool", "tool_call_id": call.id, "content": "sent: id 42"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_orphan_tool_result_is_the_providers_400(emulator: LlmEmulator, provider: Provider) -> None:
    orphan = request(
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="tool", content="result", tool_call_id="call_nobody"),
    )
    [(reply, _)] = answer(make_gateway(emulator, provider), orphan)
    assert error_of(reply).code == "llm_bad_request"
    assert len(emulator.requests) == 1  # a 4xx is not retried


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("name", "arguments"),
    [("evil_tool", {"to": "x"}), ("email_send", "[1, 2]"), ("email_send", '{"to": NaN}')],
)
def test_bad_tool_calls_are_bad_responses(
    emulator: LlmEmulator, provider: Provider, name: str, arguments: Any
) -> None:
    emulator.reply(tool_calls=((name, arguments),))
    [(reply, summary)] = answer(make_gateway(emulator, provider), request(tools=[SEND_TOOL]))
    assert error_of(reply).code == "llm_bad_response"
    assert summary["outcome"] == "llm_bad_response"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_call_when_tools_were_refused_is_a_bad_response(
    emulator: LlmEmulator, provider: Provider
) -> None:
    emulator.reply(tool_calls=(("email_send", {"to": "x"}),))
    req = request(tools=[SEND_TOOL], tool_choice="none")
    assert error_of(answer(make_gateway(emulator, provider), req)[0][0]).code == "llm_bad_response"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_untranslatable_request_costs_nothing(emulator: LlmEmulator, provider: Provider) -> None:
    broken = ToolSpec(name="t", description="", parameters_json="[]")
    bad_call = ToolCall(id="c1", name="t", arguments_json="not json")
    gateway = make_gateway(emulator, provider)
    replies = answer(
        gateway,
        request(tools=[broken]),
        request(
            ChatMessage(role="user", content="x"),
            ChatMessage(role="assistant", content="", tool_calls=[bad_call]),
        ),
        request(ChatMessage(role="tool", content="orphan without id")),
    )
    assert [error_of(r).code for r, _ in replies] == ["llm_bad_request"] * 3
    assert emulator.requests == []
    assert gateway.usage(EPISODE).calls == 0


# --- usage and budgets -------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_usage_is_counted(emulator: LlmEmulator, provider: Provider) -> None:
    emulator.reply("one", input_tokens=120, output_tokens=9)
    emulator.reply("two", input_tokens=130, output_tokens=11)
    gateway = make_gateway(emulator, provider)
    replies = answer(gateway, request(), request())
    assert [(ok(r).input_tokens, ok(r).output_tokens) for r, _ in replies] == [(120, 9), (130, 11)]
    spent = gateway.usage(EPISODE)
    assert (spent.calls, spent.input_tokens, spent.output_tokens) == (2, 250, 20)
    assert replies[1][1]["budget_left"]["calls"] == 10  # 12 by default
    assert gateway.end_episode(EPISODE) is not None
    assert gateway.usage(EPISODE).calls == 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_call_budget(emulator: LlmEmulator, provider: Provider) -> None:
    gateway = make_gateway(emulator, provider, max_calls_per_episode=2)
    replies = answer(gateway, request(), request(), request(), request(episode="ep-2"))
    codes = [r.code if isinstance(r, Error) else "ok" for r, _ in replies]
    assert codes == ["ok", "ok", "llm_budget_exhausted", "ok"]
    assert len(emulator.requests) == 3  # the refused call never left


@pytest.mark.parametrize("provider", PROVIDERS)
def test_output_budget_clamps_then_refuses(emulator: LlmEmulator, provider: Provider) -> None:
    emulator.reply("a b c", output_tokens=30)
    emulator.reply("d e f", output_tokens=10)
    gateway = make_gateway(emulator, provider, max_output_tokens_per_episode=40)
    replies = answer(gateway, request(max_tokens=1000), request(max_tokens=1000), request())
    assert ok(replies[0][0]).output_tokens == 30
    assert [r.body["max_tokens"] for r in emulator.requests] == [40, 10]
    assert ok(replies[1][0])
    assert error_of(replies[2][0]).code == "llm_budget_exhausted"
    assert len(emulator.requests) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_input_budget(emulator: LlmEmulator, provider: Provider) -> None:
    emulator.reply("x", input_tokens=600)
    gateway = make_gateway(emulator, provider, max_input_tokens_per_episode=500)
    replies = answer(gateway, request(), request())
    ok(replies[0][0])
    assert "input tokens" in error_of(replies[1][0]).detail
    assert len(emulator.requests) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_wall_time_budget_with_injected_clock(emulator: LlmEmulator, provider: Provider) -> None:
    clock = FakeClock()
    gateway = make_gateway(emulator, provider, clock=clock, max_seconds_per_episode=60)

    async def body() -> list[Any]:
        first, _ = await gateway.answer(request(), response_id=1)
        clock.now += 59
        second, _ = await gateway.answer(request(), response_id=2)
        clock.now += 2
        third, _ = await gateway.answer(request(), response_id=3)
        other, _ = await gateway.answer(request(episode="ep-2"), response_id=4)
        return [first, second, third, other]

    first, second, third, other = run(gateway, body)
    ok(first), ok(second), ok(other)
    assert error_of(third).code == "llm_budget_exhausted"
    assert "seconds" in error_of(third).detail
    assert len(emulator.requests) == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_usage_is_charged_an_estimate(emulator: LlmEmulator, provider: Provider) -> None:
    emulator.reply("hi", omit_usage=True)
    gateway = make_gateway(emulator, provider)
    [(reply, summary)] = answer(gateway, request(max_tokens=300))
    assert ok(reply).output_tokens == 300  # the whole grant, to be safe
    assert summary["usage_estimated"] is True
    assert gateway.usage(EPISODE).output_tokens == 300
    assert gateway.usage(EPISODE).input_tokens > 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_concurrent_calls_cannot_overshoot_output_budget(
    emulator: LlmEmulator, provider: Provider
) -> None:
    gateway = make_gateway(emulator, provider, max_output_tokens_per_episode=10)

    async def body() -> list[Any]:
        return list(
            await asyncio.gather(
                gateway.answer(request(max_tokens=8), response_id=1),
                gateway.answer(request(max_tokens=8), response_id=2),
            )
        )

    run(gateway, body)
    assert sorted(r.body["max_tokens"] for r in emulator.requests) == [2, 8]


# --- provider faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_429_then_success_honours_retry_after(emulator: LlmEmulator, provider: Provider) -> None:
    emulator.fail(429, retry_after="2")
    sleeps = Sleeps()
    [(reply, summary)] = answer(make_gateway(emulator, provider, sleeps=sleeps), request())
    assert ok(reply).content == "echo: hello there"
    assert sleeps.delays == [2.0]
    assert summary["attempts"] == 2
    assert len(emulator.requests) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_persistent_429_is_rate_limited(emulator: LlmEmulator, provider: Provider) -> None:
    emulator.fail(429, times=5)
    sleeps = Sleeps()
    [(reply, _)] = answer(make_gateway(emulator, provider, sleeps=sleeps), request())
    assert error_of(reply).code == "llm_rate_limited"
    assert sleeps.delays == [0.5, 1.0]  # backoff when no retry-after is given
    assert len(emulator.requests) == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retry_after_too_long_is_not_waited(emulator: LlmEmulator, provider: Provider) -> None:
    emulator.fail(429, retry_after="3600")
    sleeps = Sleeps()
    [(reply, _)] = answer(make_gateway(emulator, provider, sleeps=sleeps), request())
    assert error_of(reply).code == "llm_rate_limited"
    assert sleeps.delays == []
    assert len(emulator.requests) == 1


@pytest.mark.parametrize(
    ("provider", "status"),
    [("anthropic", 500), ("anthropic", 529), ("openai", 500), ("openai", 503)],
)
def test_persistent_5xx_is_unavailable_after_bounded_retries(
    emulator: LlmEmulator, provider: Provider, status: int
) -> None:
    emulator.fail(status, times=10)
    sleeps = Sleeps()
    gateway = make_gateway(emulator, provider, sleeps=sleeps)
    [(reply, summary)] = answer(gateway, request())
    assert error_of(reply).code == "llm_unavailable"
    assert str(status) in error_of(reply).detail
    assert len(emulator.requests) == 3
    assert sleeps.delays == [0.5, 1.0]
    assert summary["attempts"] == 3
    assert gateway.usage(EPISODE).calls == 1  # retries are not extra calls


def test_openai_quota_429_is_refused_without_retry(emulator: LlmEmulator) -> None:
    emulator.fail(429, error_type="insufficient_quota", code="insufficient_quota", times=3)
    [(reply, _)] = answer(make_gateway(emulator, "openai"), request())
    assert error_of(reply).code == "llm_refused"
    assert "quota" in error_of(reply).detail
    assert len(emulator.requests) == 1


def test_anthropic_spend_limit_429_is_refused_without_retry(emulator: LlmEmulator) -> None:
    details = {"error_code": "enforced_spend_limit_reached"}
    emulator.fail(429, error_type="rate_limit_error", details=details, times=3)
    [(reply, _)] = answer(make_gateway(emulator, "anthropic"), request())
    assert error_of(reply).code == "llm_refused"
    assert len(emulator.requests) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_json_is_a_bad_response(emulator: LlmEmulator, provider: Provider) -> None:
    emulator.malformed()
    [(reply, _)] = answer(make_gateway(emulator, provider), request())
    assert error_of(reply).code == "llm_bad_response"
    assert len(emulator.requests) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_answer_over_protocol_bounds_is_a_bad_response(
    emulator: LlmEmulator, provider: Provider
) -> None:
    emulator.reply("x" * 1_000_001)
    [(reply, _)] = answer(make_gateway(emulator, provider), request(max_tokens=100_000))
    assert error_of(reply).code == "llm_bad_response"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_hang_times_out_as_unavailable(emulator: LlmEmulator, provider: Provider) -> None:
    emulator.hang(times=3)
    gateway = make_gateway(emulator, provider, request_timeout=0.3)
    [(reply, summary)] = answer(gateway, request())
    assert error_of(reply).code == "llm_unavailable"
    assert "did not answer" in error_of(reply).detail
    assert summary["attempts"] == 3


# --- credentials and the key -------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_wrong_key_is_refused_once_and_never_quoted(
    emulator: LlmEmulator, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-00000000000000000000ZXCVBN"
    gateway = make_gateway(emulator, provider, key=wrong)
    [(reply, summary)] = answer(gateway, request())
    assert error_of(reply).code == "llm_refused"
    assert len(emulator.requests) == 1  # not retryable
    everything = json.dumps(summary) + error_of(reply).detail + caplog.text
    assert wrong not in everything
    assert wrong[-4:] not in everything  # OpenAI's 401 message quotes the key's tail


@pytest.mark.parametrize("provider", PROVIDERS)
def test_provider_echoing_the_key_does_not_leak_it(
    emulator: LlmEmulator, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.fail(400, message=f"your key {KEY} is not allowed for this model")
    gateway = make_gateway(emulator, provider)

    async def body() -> LlmError:
        with pytest.raises(LlmError) as caught:
            await gateway.complete(request())
        return caught.value

    exc = run(gateway, body)
    assert exc.code == "llm_bad_request"
    for text in (str(exc), repr(exc), "".join(traceback.format_exception(exc)), caplog.text):
        assert KEY not in text
    assert "provider HTTP 400" in caplog.text  # the owner still learns something happened


def test_transport_error_text_holds_no_key(emulator: LlmEmulator) -> None:
    gateway = make_gateway(
        emulator, "anthropic", base_url="http://127.0.0.1:9", egress=egress_for(9)
    )

    async def body() -> LlmError:
        with pytest.raises(LlmError) as caught:
            await gateway.complete(request())
        return caught.value

    exc = run(gateway, body)
    assert exc.code == "llm_unavailable"
    assert "ConnectError" in exc.detail
    assert KEY not in "".join(traceback.format_exception(exc))


@pytest.mark.parametrize("key", ["sk-with\nnewline-0000000", "sk with spaces 000000"])
def test_key_unfit_for_a_header_is_refused_before_sending(emulator: LlmEmulator, key: str) -> None:
    gateway = make_gateway(emulator, "openai", key=key)
    [(reply, _)] = answer(gateway, request())
    assert error_of(reply).code == "llm_refused"
    assert key not in error_of(reply).detail
    assert emulator.requests == []


def test_missing_secret_is_refused(emulator: LlmEmulator) -> None:
    config = LlmConfig(provider="openai", base_url=emulator.openai_base_url, model="m")
    gateway = LlmGateway(config, SecretStore({}), egress_for(emulator.port))
    [(reply, _)] = answer(gateway, request())
    assert error_of(reply).code == "llm_refused"
    assert "LLM_API_KEY" in error_of(reply).detail
    assert emulator.requests == []


# --- egress and configuration -------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_provider_outside_the_allowlist_is_refused_before_any_request(
    emulator: LlmEmulator, provider: Provider
) -> None:
    elsewhere = egress_for(emulator.port, host="api.example.com")
    gateway = make_gateway(emulator, provider, egress=elsewhere)
    [(reply, _)] = answer(gateway, request())
    assert error_of(reply).code == "llm_refused"
    assert "egress" in error_of(reply).detail
    assert emulator.requests == []
    assert gateway.usage(EPISODE).calls == 0


def test_loopback_not_exempted_is_refused(emulator: LlmEmulator) -> None:
    rule = EgressRule(connector="llm", host="127.0.0.1", port=emulator.port)
    gateway = make_gateway(emulator, "openai", egress=Egress(EgressConfig(allow=[rule])))
    [(reply, _)] = answer(gateway, request())
    assert error_of(reply).code == "llm_refused"
    assert emulator.requests == []


def test_no_provider_is_unavailable(emulator: LlmEmulator) -> None:
    gateway = LlmGateway(LlmConfig(), SecretStore({}), egress_for(emulator.port))
    assert not gateway.enabled
    [(reply, _)] = answer(gateway, request())
    assert error_of(reply).code == "llm_unavailable"


def test_default_endpoints() -> None:
    openai = LlmGateway(LlmConfig(provider="openai"), SecretStore({}), egress_for(443))
    assert openai.url == "https://api.openai.com/v1/chat/completions"
    anthropic = LlmGateway(LlmConfig(provider="anthropic"), SecretStore({}), egress_for(443))
    assert anthropic.url == "https://api.anthropic.com/v1/messages"


def test_official_openai_host_gets_max_completion_tokens(emulator: LlmEmulator) -> None:
    """api.openai.com, pinned by a static resolver to the emulator (plain HTTP)."""
    rule = EgressRule(connector="llm", host="api.openai.com", port=emulator.port)
    egress = Egress(
        EgressConfig(allow=[rule], allow_private=["127.0.0.0/8"]),
        StaticResolver({"api.openai.com": ["127.0.0.1"]}),
    )
    base = f"http://api.openai.com:{emulator.port}/v1"
    gateway = make_gateway(emulator, "openai", egress=egress, base_url=base)
    ok(answer(gateway, request(max_tokens=77))[0][0])
    [seen] = emulator.requests
    assert seen.body["max_completion_tokens"] == 77
    assert "max_tokens" not in seen.body
    assert seen.headers["host"] == f"api.openai.com:{emulator.port}"


def test_handler_audits_each_call_without_text_or_key(emulator: LlmEmulator) -> None:
    emulator.fail(401)
    gateway = make_gateway(emulator, "anthropic")
    audited: list[tuple[str, dict[str, object]]] = []
    handle = gateway.handler(lambda kind, data: audited.append((kind, dict(data))))

    async def body() -> list[Any]:
        return [await handle(request(), 11), await handle(request(), 12)]

    replies = run(gateway, body)
    assert [type(r) for r in replies] == [Error, LLMResponse]
    assert [kind for kind, _ in audited] == ["llm_call", "llm_call"]
    first, second = (data for _, data in audited)
    assert first["outcome"] == "llm_refused"
    assert first["http_status"] == 401
    assert second["outcome"] == "ok"
    assert second["model"] == "test-model"
    assert second["input_tokens"] == replies[1].input_tokens
    for _, data in audited:
        assert_no_key(data)
        assert "hello there" not in json.dumps(data)
        assert "terse" not in json.dumps(data)
