"""The two providers' wire formats: translation only, no I/O.

The gateway (:mod:`threezone.executor.llm`) owns the network, the key, the budgets and
the retries; this module turns an ``LLMRequest`` into the body each API expects and
each API's answer into neutral terms (:class:`Parsed`). Mistakes in the planner's
request raise ``LlmError(llm_bad_request)``; answers of the wrong shape raise
``LlmError(llm_bad_response)``.

* Anthropic Messages: system turns become the top-level ``system`` field; tools are
  ``{"name", "description", "input_schema"}``; the model's calls are ``tool_use`` blocks
  (``id``, ``name``, ``input`` object); results are ``tool_result`` blocks in a user turn.
* OpenAI Chat Completions: tools are ``{"type": "function", "function": {"name",
  "description", "parameters"}}``; calls are ``message.tool_calls[].function`` with
  ``arguments`` a JSON *string*; results are ``{"role": "tool", "tool_call_id"}``.
  ``finish_reason`` is mapped onto Anthropic's stop vocabulary (``end_turn``,
  ``max_tokens``, ``tool_use``, ``refusal``) so the planner sees one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx2

from threezone.errors import LlmError
from threezone.protocol.messages import ChatMessage, LLMRequest, ToolCall, ToolSpec

LLM_BAD_RESPONSE: Final = "llm_bad_response"
LLM_BAD_REQUEST: Final = "llm_bad_request"
ANTHROPIC_VERSION: Final = "2023-06-01"

JsonObject = dict[str, Any]


@dataclass(slots=True)
class Parsed:
    """A provider's answer in neutral terms; arguments already checked to be objects."""

    content: str
    stop_reason: str
    tool_calls: list[tuple[str, str, str]]
    input_tokens: int | None
    output_tokens: int | None


def bad_response(detail: str) -> LlmError:
    return LlmError(LLM_BAD_RESPONSE, detail)


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _arguments(value: Any) -> str:
    """Canonical JSON text of a JSON object; anything else is a bad response.

    Re-encoding removes duplicate keys and odd spellings, so the planner and the policy
    read exactly one meaning.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value, parse_constant=reject_constant)
        except (ValueError, RecursionError):
            raise bad_response("tool call arguments are not valid JSON") from None
    if not isinstance(value, dict):
        raise bad_response("tool call arguments are not a JSON object")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _usage_count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# --- the two wire formats -----------------------------------------------------------------------


class Wire(Protocol):
    limit_field: str  # the body field that carries max_tokens

    def endpoint(self, base: str) -> str: ...

    def headers(self, key: str) -> dict[str, str]: ...

    def body(self, request: LLMRequest, model: str) -> JsonObject: ...

    def parse(self, document: JsonObject) -> Parsed: ...


def _request_error(detail: str) -> LlmError:
    return LlmError(LLM_BAD_REQUEST, detail)


def _schema(tool: ToolSpec) -> JsonObject:
    try:
        schema = json.loads(tool.parameters_json, parse_constant=reject_constant)
    except (ValueError, RecursionError):
        raise _request_error(f"tool {tool.name!r}: parameters_json is not valid JSON") from None
    if not isinstance(schema, dict):
        raise _request_error(f"tool {tool.name!r}: parameters_json is not a JSON object")
    return schema


def _call_input(call: ToolCall) -> JsonObject:
    try:
        value = json.loads(call.arguments_json, parse_constant=reject_constant)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise _request_error(f"tool call {call.id[:64]!r}: arguments_json is not a JSON object")
    return value


def _tool_result_id(message: ChatMessage) -> str:
    if not message.tool_call_id:
        raise _request_error("a tool message needs tool_call_id")
    return message.tool_call_id


def _strip_v1(base: str) -> str:
    return base[: -len("/v1")] if base.endswith("/v1") else base


_ANTHROPIC_STOPS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", "pause_turn"}
_OPENAI_STOPS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


class _Anthropic:
    """The Messages API. Stop reasons pass through (they are the common vocabulary)."""

    limit_field = "max_tokens"

    def endpoint(self, base: str) -> str:
        return _strip_v1(base) + "/v1/messages"

    def headers(self, key: str) -> dict[str, str]:
        return {
            "x-api-key": key,
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
            "accept": "application/json",
        }

    def body(self, request: LLMRequest, model: str) -> JsonObject:
        system = [m.content for m in request.messages if m.role == "system"]
        body: JsonObject = {
            "model": model,
            "max_tokens": request.max_tokens,
            "messages": self._turns(request.messages),
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": _schema(t)}
                for t in request.tools
            ]
            choice = {"required": "any"}.get(request.tool_choice, request.tool_choice)
            body["tool_choice"] = {"type": choice}
        return body

    def _turns(self, messages: Sequence[ChatMessage]) -> list[JsonObject]:
        """User and assistant turns of content blocks; consecutive same-role turns merge.

        Tool results are ``tool_result`` blocks in the user turn after the assistant's
        ``tool_use``; empty text blocks are left out (the API refuses them).
        """
        turns: list[JsonObject] = []
        for message in messages:
            if message.role == "system":
                continue
            role = "assistant" if message.role == "assistant" else "user"
            blocks = self._blocks(message)
            if not blocks:
                continue
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"].extend(blocks)
            else:
                turns.append({"role": role, "content": blocks})
        return turns

    def _blocks(self, message: ChatMessage) -> list[JsonObject]:
        if message.role == "tool":
            return [
                {
                    "type": "tool_result",
                    "tool_use_id": _tool_result_id(message),
                    "content": message.content,
                }
            ]
        blocks: list[JsonObject] = []
        if message.content:
            blocks.append({"type": "text", "text": message.content})
        if message.role == "assistant":
            blocks.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": _call_input(c)}
                for c in message.tool_calls
            )
        return blocks

    def parse(self, document: JsonObject) -> Parsed:
        if document.get("type") == "error":
            raise ValueError("an error document with a success status")
        texts: list[str] = []
        calls: list[tuple[str, str, str]] = []
        for block in document["content"]:
            if block["type"] == "text":
                texts.append(_text(block["text"]))
            elif block["type"] == "tool_use":
                calls.append((_text(block["id"]), _text(block["name"]), _arguments(block["input"])))
        usage = document.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        uncached = _usage_count(usage.get("input_tokens"))
        cached = sum(  # prompt-cache reads and writes are input the episode spent too
            _usage_count(usage.get(k)) or 0
            for k in ("cache_creation_input_tokens", "cache_read_input_tokens")
        )
        stop = _text(document.get("stop_reason") or "end_turn")
        return Parsed(
            content="".join(texts),
            stop_reason=stop if stop in _ANTHROPIC_STOPS else stop[:64],
            tool_calls=calls,
            input_tokens=None if uncached is None else uncached + cached,
            output_tokens=_usage_count(usage.get("output_tokens")),
        )


class _OpenAI:
    """Chat Completions. ``finish_reason`` is mapped to Anthropic's stop vocabulary.

    OpenAI itself wants ``max_completion_tokens`` (its reasoning models refuse
    ``max_tokens``); the compatible servers (Ollama, vLLM, llama.cpp) read ``max_tokens``.
    """

    def __init__(self, official: bool) -> None:
        self.limit_field = "max_completion_tokens" if official else "max_tokens"

    def endpoint(self, base: str) -> str:
        return base + "/chat/completions" if base.endswith("/v1") else base + "/v1/chat/completions"

    def headers(self, key: str) -> dict[str, str]:
        return {
            "authorization": f"Bearer {key}",
            "content-type": "application/json",
            "accept": "application/json",
        }

    def body(self, request: LLMRequest, model: str) -> JsonObject:
        body: JsonObject = {
            "model": model,
            "messages": [self._message(m) for m in request.messages],
            self.limit_field: request.max_tokens,
            "stream": False,
        }
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": _schema(t),
                    },
                }
                for t in request.tools
            ]
            body["tool_choice"] = request.tool_choice
        return body

    def _message(self, message: ChatMessage) -> JsonObject:
        if message.role == "tool":
            return {
                "role": "tool",
                "tool_call_id": _tool_result_id(message),
                "content": message.content,
            }
        if message.role != "assistant" or not message.tool_calls:
            return {"role": message.role, "content": message.content}
        for call in message.tool_calls:
            _call_input(call)  # the planner's own arguments must be objects too
        return {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments_json},
                }
                for c in message.tool_calls
            ],
        }

    def parse(self, document: JsonObject) -> Parsed:
        if "error" in document:
            raise ValueError("an error document with a success status")
        choice = document["choices"][0]
        message = choice["message"]
        content = message.get("content")
        refusal = message.get("refusal")
        finish = _text(choice.get("finish_reason") or "stop")
        calls = [
            (
                _text(call.get("id") or f"call_{index}"),
                _text(call["function"]["name"]),
                _arguments(call["function"]["arguments"]),
            )
            for index, call in enumerate(message.get("tool_calls") or [])
        ]
        if isinstance(refusal, str) and refusal:
            content, finish = refusal, "content_filter"
        usage = document.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return Parsed(
            content=_content_text(content),
            stop_reason=_OPENAI_STOPS.get(finish, finish[:64]),
            tool_calls=calls,
            input_tokens=_usage_count(usage.get("prompt_tokens")),
            output_tokens=_usage_count(usage.get("completion_tokens")),
        )


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _content_text(content: Any) -> str:
    """OpenAI content: a string, null, or (some servers) a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(_text(part["text"]) for part in content if part.get("type") == "text")
    return _text(content)


def wire_for(provider: str, base: str) -> Wire | None:
    if provider == "anthropic":
        return _Anthropic()
    if provider == "openai":
        try:
            official = httpx2.URL(base).host == "api.openai.com"
        except httpx2.InvalidURL:
            official = False  # refused with a clear error at the first call
        return _OpenAI(official)
    return None
