"""The planner interface: one episode in, action requests through a port, a summary out.

A planner runs inside the planner zone. It never acts itself: every effect is an
:class:`ActionRequest` that the executor decides with its policy. The language-model
planner and the hijacked planner both implement :class:`Planner`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

from threezone.protocol.messages import (
    ActionResult,
    ArgValue,
    ChatMessage,
    Episode,
    Error,
    LLMResponse,
    ToolChoice,
    ToolSpec,
)


@dataclass(frozen=True, slots=True)
class PlanOutcome:
    summary: str
    steps: int
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class ActionPort(abc.ABC):
    """How a planner asks for an action or a completion; the executor answers both."""

    @abc.abstractmethod
    def request_action(self, action: str, args: dict[str, ArgValue]) -> ActionResult | Error: ...

    def complete(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        tools: list[ToolSpec] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> LLMResponse | Error:
        """Ask the executor's LLM gateway for a completion (the zone holds no key)."""
        return Error(id=0, reply_to=None, code="llm_unavailable", detail="no LLM on this port")


class Planner(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def plan(self, episode: Episode, port: ActionPort) -> PlanOutcome: ...


def offered(episode: Episode, action: str) -> bool:
    """Whether the executor offered ``action`` for this episode."""
    return any(capability.action == action for capability in episode.capabilities)
