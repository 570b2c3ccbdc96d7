"""Every message that crosses a zone socket, as frozen structs in one tagged union.

Each struct is decoded strictly: unknown fields are errors, every string and list has
an explicit bound, and the ``type`` field selects the struct. Requests carry an ``id``
chosen by the sender; responses carry ``reply_to`` naming it.

Content that came from outside (a sanitized message's fields) stays untrusted even
after the reader cleaned it; the planner must treat it as data, never as orders.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

# Bounds. They guard memory and make hostile peers fail fast; they are not tuned to
# content (a reader cuts bodies well below MAX_BODY).
MAX_SHORT = 256
MAX_LINE = 2_048
MAX_URL = 4_096
MAX_BODY = 1_000_000
MAX_LIST = 512
MAX_REASONS = 64
MAX_ARGS = 32
MAX_RAW = 25 * 1024 * 1024
MAX_INSTRUCTIONS = 8_000
MAX_HISTORY = 32
MAX_HISTORY_TEXT = 4_000

MsgId = Annotated[int, Meta(ge=0, le=2**53)]
Short = Annotated[str, Meta(max_length=MAX_SHORT)]
Line = Annotated[str, Meta(max_length=MAX_LINE)]
Body = Annotated[str, Meta(max_length=MAX_BODY)]
Url = Annotated[str, Meta(max_length=MAX_URL)]
ActionName = Annotated[
    str, Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
]
ArgName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
ArgValue = (
    Annotated[str, Meta(max_length=MAX_BODY)] | Annotated[int, Meta(ge=-(2**53), le=2**53)] | bool
)
Channel = Literal["email", "telegram", "slack"]
Role = Literal["reader", "planner"]
Decision = Literal["allow", "deny", "ask"]
Count = Annotated[int, Meta(ge=0, le=2**53)]
ToolChoice = Literal["auto", "none", "required"]


class _Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of the payload structs: immutable, strict."""


# --- the reader's output ----------------------------------------------------------------------


class Link(_Frozen, frozen=True):
    text: Line
    url: Url
    host: Short


class Attachment(_Frozen, frozen=True):
    """An attachment described, never carried.

    ``content_type`` is what the sender declared; ``sniffed_type`` is what the reader
    found from the content's first bytes, or "" when it never saw the content (chat
    platforms send references, not bytes).
    """

    name: Short
    content_type: Short
    size: Count
    sniffed_type: Short = ""


class Injection(_Frozen, frozen=True):
    flagged: bool
    score: Annotated[float, Meta(ge=0.0, le=1.0)]
    reasons: Annotated[list[Line], Meta(max_length=MAX_REASONS)]


class Dropped(_Frozen, frozen=True):
    """How much the reader removed, so the executor can show it without seeing it."""

    hidden_chars: Count = 0
    invisible_chars: Count = 0
    parts: Count = 0
    links: Count = 0


class SanitizedMessage(_Frozen, frozen=True):
    channel: Channel
    id: Short
    sender: Short = msgspec.field(name="from")
    subject: Line
    body: Body
    links: Annotated[list[Link], Meta(max_length=MAX_LIST)]
    attachments: Annotated[list[Attachment], Meta(max_length=MAX_LIST)]
    injection: Injection
    sanitized: Literal[True]
    dropped: Dropped = Dropped()
    # Conversation keys as the platform states them (email Message-IDs, Telegram
    # chat:message ids, Slack thread_ts): for threading only, never for trust.
    thread_id: Short | None = None
    reply_to_id: Short | None = None


# --- episodes ---------------------------------------------------------------------------------


class Trigger(_Frozen, frozen=True):
    """What the executor itself vouches for about the message that opened an episode."""

    channel: Channel
    account: Short
    sender: Short | None
    sender_authenticated: bool
    received_at: Short
    flagged: bool
    # The message says it was sent by a machine (an auto-reply, a bulk or list mailing):
    # answering it automatically risks a mail loop. Attacker-writable, so it can only
    # make a policy more careful, never less.
    automated: bool = False


class ParamSpec(_Frozen, frozen=True):
    """One parameter of an action, as the executor checks it (every argument is text)."""

    name: ArgName
    required: bool = True
    max_length: Annotated[int, Meta(ge=1, le=MAX_BODY)] = 10_000
    pattern: Annotated[str, Meta(max_length=MAX_SHORT)] = ""  # the whole value matches it


class Capability(_Frozen, frozen=True):
    action: ActionName
    description: Line
    params: Annotated[list[ArgName], Meta(max_length=MAX_ARGS)]
    # The same parameters with what the executor's schema check enforces, so the
    # planner can offer the model a tool whose JSON Schema matches it.
    param_specs: Annotated[list[ParamSpec], Meta(max_length=MAX_ARGS)] = msgspec.field(
        default_factory=list
    )


class HistoryTurn(_Frozen, frozen=True):
    """An earlier message of the same conversation and what the agent did about it.

    Built by the executor from its inbox: ``text`` is that message's sanitized body,
    still untrusted and cut to a bound; ``actions`` says what ran (``email.reply
    executed``), from the executor's own records.
    """

    received_at: Short
    sender: Short
    subject: Line
    text: Annotated[str, Meta(max_length=MAX_HISTORY_TEXT)]
    actions: Annotated[list[Line], Meta(max_length=16)] = msgspec.field(default_factory=list)


class Episode(_Frozen, frozen=True):
    episode_id: Short
    message: SanitizedMessage
    trigger: Trigger
    capabilities: Annotated[list[Capability], Meta(max_length=MAX_LIST)]
    # The owner's standing instructions, from the config: trusted.
    instructions: Annotated[str, Meta(max_length=MAX_INSTRUCTIONS)] = ""
    # Earlier turns of this conversation, oldest first (the planner keeps nothing).
    history: Annotated[list[HistoryTurn], Meta(max_length=MAX_HISTORY)] = msgspec.field(
        default_factory=list
    )


class ToolSpec(_Frozen, frozen=True):
    """A tool the model may call; ``parameters_json`` is its JSON Schema, as JSON text."""

    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: Line
    parameters_json: Annotated[str, Meta(max_length=16_384)]


class ToolCall(_Frozen, frozen=True):
    """One call the model asked for; ``arguments_json`` is a JSON object, as text."""

    id: Short
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    arguments_json: Annotated[str, Meta(max_length=MAX_BODY)]


class ChatMessage(_Frozen, frozen=True):
    """One turn. ``tool_calls`` on assistant turns; ``tool_call_id`` on tool results."""

    role: Literal["system", "user", "assistant", "tool"]
    content: Body
    tool_calls: Annotated[list[ToolCall], Meta(max_length=64)] = msgspec.field(default_factory=list)
    tool_call_id: Short | None = None


class Probe(_Frozen, frozen=True):
    """One isolation check a zone ran on itself: ``blocked`` is True when the escape failed."""

    name: Annotated[str, Meta(max_length=64, pattern=r"^[a-z0-9_]+$")]
    blocked: bool
    detail: Line


class IsolationReport(_Frozen, frozen=True):
    """What a zone verified about its own isolation before it said hello."""

    probes: Annotated[list[Probe], Meta(max_length=64)]


class Wake(_Frozen, frozen=True):
    """The executor's first frame to a ``qemu`` zone's guest, before the zone's hello.

    A guest started from a template shares the template's memory, so it shares its
    random state too: ``seed`` reseeds the guest kernel's generator, and ``time_ns``
    sets its clock. ``argv`` says which zone program to become (one template serves
    every zone), as ``uid`` with these ``limits`` under this seccomp ``filter``.
    """

    seed: Annotated[bytes, Meta(min_length=32, max_length=64)]
    time_ns: Annotated[int, Meta(ge=0, le=2**63 - 1)]
    argv: Annotated[list[Annotated[str, Meta(max_length=4096)]], Meta(max_length=64)]
    uid: Annotated[int, Meta(ge=1, le=2**31 - 1)]
    limits: Annotated[list[Count], Meta(min_length=4, max_length=4)]
    filter: Annotated[bytes, Meta(max_length=65536)]


# --- the wire union ---------------------------------------------------------------------------


class _Message(_Frozen, frozen=True, tag_field="type"):
    pass


class Hello(_Message, frozen=True, tag="hello"):
    """A zone's first frame: who it is (the socket already says; this must agree)."""

    zone: Short
    role: Role
    pid: Count
    version: Short
    isolation: IsolationReport | None = None


class Ready(_Message, frozen=True, tag="ready"):
    zone: Short


class SanitizeRequest(_Message, frozen=True, tag="sanitize"):
    id: MsgId
    channel: Channel
    message_id: Short
    raw: Annotated[bytes, Meta(max_length=MAX_RAW)]


class SanitizeResult(_Message, frozen=True, tag="sanitized"):
    id: MsgId
    reply_to: MsgId
    message: SanitizedMessage


class PlanRequest(_Message, frozen=True, tag="plan"):
    id: MsgId
    episode: Episode


class PlanResult(_Message, frozen=True, tag="plan_done"):
    id: MsgId
    reply_to: MsgId
    summary: Line
    steps: Count
    # What a model in the planner zone spent (the gateway counts its own calls).
    model_calls: Count = 0
    input_tokens: Count = 0
    output_tokens: Count = 0


class ActionRequest(_Message, frozen=True, tag="action"):
    id: MsgId
    episode_id: Short
    action: ActionName
    args: Annotated[dict[ArgName, ArgValue], Meta(max_length=MAX_ARGS)]


class ActionResult(_Message, frozen=True, tag="action_result"):
    id: MsgId
    reply_to: MsgId
    decision: Decision
    rule: Line
    reason: Line
    executed: bool
    result: Annotated[dict[ArgName, Line], Meta(max_length=MAX_ARGS)] = {}


class LLMRequest(_Message, frozen=True, tag="llm"):
    id: MsgId
    episode_id: Short
    messages: Annotated[list[ChatMessage], Meta(min_length=1, max_length=MAX_LIST)]
    max_tokens: Annotated[int, Meta(ge=1, le=100_000)]
    tools: Annotated[list[ToolSpec], Meta(max_length=64)] = msgspec.field(default_factory=list)
    tool_choice: ToolChoice = "auto"


class LLMResponse(_Message, frozen=True, tag="llm_result"):
    id: MsgId
    reply_to: MsgId
    content: Body
    stop_reason: Short
    input_tokens: Count
    output_tokens: Count
    tool_calls: Annotated[list[ToolCall], Meta(max_length=64)] = msgspec.field(default_factory=list)


class Error(_Message, frozen=True, tag="error"):
    """A typed error: ``code`` is stable, ``detail`` is for people. Never a traceback."""

    id: MsgId
    reply_to: MsgId | None
    code: Short
    detail: Line


class Shutdown(_Message, frozen=True, tag="shutdown"):
    id: MsgId


Message = (
    Hello
    | Ready
    | SanitizeRequest
    | SanitizeResult
    | PlanRequest
    | PlanResult
    | ActionRequest
    | ActionResult
    | LLMRequest
    | LLMResponse
    | Error
    | Shutdown
)

Response = SanitizeResult | PlanResult | ActionResult | LLMResponse | Error
