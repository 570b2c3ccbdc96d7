"""Tools for the model, derived from the capabilities the executor offered.

The executor offers only actions that some policy rule could allow, with the same
parameter bounds its schema check enforces (:class:`~threezone.protocol.messages.ParamSpec`).
Each becomes one tool whose JSON Schema says exactly that, so a well-behaved model
produces arguments the executor accepts; a badly behaved one is refused twice, here
(arguments that are not a JSON object of strings cannot even be sent) and by the
executor's schema check (unknown, missing or oversized arguments).

Tool names may not contain dots in either provider's API, so ``email.reply`` is
offered as ``email_reply``; :class:`Toolbox` maps names both ways and never guesses:
a name it did not offer is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from threezone.protocol.messages import (
    MAX_ARGS,
    ActionName,
    ArgName,
    ArgValue,
    Capability,
    ParamSpec,
    ToolCall,
    ToolSpec,
)

JsonSchema = dict[str, Any]
_NAME_OK = re.compile(r"[^A-Za-z0-9_-]")
# Bounds each string argument the model is shown; the executor still checks its own.
MAX_SCHEMA_STRING = 100_000


class _Call(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What an ``ActionRequest`` may carry, checked here so a bad call never reaches the
    socket (where the executor would take it for a protocol violation)."""

    action: ActionName
    args: Annotated[dict[ArgName, ArgValue], Meta(max_length=MAX_ARGS)]


@dataclass(frozen=True, slots=True)
class ParsedCall:
    """A tool call turned into an action request, or the reason it cannot be one."""

    call: ToolCall
    action: str = ""
    args: dict[str, ArgValue] | None = None
    problem: str = ""


def tool_name(action: str) -> str:
    return _NAME_OK.sub("_", action.replace(".", "_"))[:64]


def parameters_schema(params: list[ParamSpec]) -> JsonSchema:
    """The JSON Schema of one action's arguments: an object of bounded strings."""
    return {
        "type": "object",
        "properties": {p.name: _string_schema(p) for p in params},
        "required": [p.name for p in params if p.required],
        "additionalProperties": False,
    }


def _string_schema(param: ParamSpec) -> JsonSchema:
    schema: JsonSchema = {"type": "string", "maxLength": min(param.max_length, MAX_SCHEMA_STRING)}
    if param.pattern:
        schema["pattern"] = f"^(?:{param.pattern})$"
    return schema


def _params(capability: Capability) -> list[ParamSpec]:
    if capability.param_specs:
        return list(capability.param_specs)
    return [ParamSpec(name=name) for name in capability.params]  # an older executor


class Toolbox:
    """The tools of one episode, and the way back from a tool call to an action."""

    def __init__(self, capabilities: list[Capability]) -> None:
        self._actions: dict[str, str] = {}
        self._schemas: dict[str, JsonSchema] = {}
        self.specs: list[ToolSpec] = []
        for capability in capabilities:
            name = tool_name(capability.action)
            while name in self._actions:  # two actions that map to one name: keep both
                name = f"{name[:60]}_{len(self._actions)}"
            schema = parameters_schema(_params(capability))
            self._actions[name] = capability.action
            self._schemas[name] = schema
            self.specs.append(
                ToolSpec(
                    name=name,
                    description=capability.description,
                    parameters_json=json.dumps(schema),
                )
            )

    def action_of(self, name: str) -> str | None:
        return self._actions.get(name)

    def schema_of(self, name: str) -> JsonSchema:
        return self._schemas[name]

    def parse(self, call: ToolCall) -> ParsedCall:
        """The action request a tool call stands for; ``problem`` says why there is none."""
        action = self.action_of(call.name)
        if action is None:
            return ParsedCall(call, problem=f"there is no tool named {call.name!r}")
        try:
            raw = json.loads(call.arguments_json or "{}")
        except ValueError:
            return ParsedCall(call, action, problem="the arguments are not valid JSON")
        if not isinstance(raw, dict):
            return ParsedCall(call, action, problem="the arguments are not a JSON object")
        if any(isinstance(v, str) and not _valid_text(v) for v in (*raw, *raw.values())):
            # JSON lets "\udceb" stand alone; UTF-8 (and so the zone socket) does not.
            return ParsedCall(call, action, problem="the arguments hold a lone surrogate")
        try:
            checked = msgspec.convert({"action": action, "args": raw}, _Call)
        except msgspec.ValidationError as exc:
            return ParsedCall(call, action, problem=f"the arguments do not fit: {exc}")
        return ParsedCall(call, action, dict(checked.args))


def _valid_text(text: str) -> bool:
    """Whether ``text`` is encodable as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def valid_text(text: str) -> str:
    """``text`` with any lone surrogate replaced by U+FFFD, so it can cross the socket."""
    if _valid_text(text):
        return text
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
