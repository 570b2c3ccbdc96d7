"""The planner interface: one episode in, action requests through a port, a summary out.

A planner runs inside the planner zone. It never acts itself: every effect is an
:class:`ActionRequest` that the executor decides with its policy. The language-model
planner and the hijacked planner both implement :class:`Planner`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

from threezone.protocol.messages import ActionResult, ArgValue, Episode, Error


@dataclass(frozen=True, slots=True)
class PlanOutcome:
    summary: str
    steps: int


class ActionPort(abc.ABC):
    """How a planner asks for an action. The answer is the executor's, not the planner's."""

    @abc.abstractmethod
    def request_action(self, action: str, args: dict[str, ArgValue]) -> ActionResult | Error: ...


class Planner(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def plan(self, episode: Episode, port: ActionPort) -> PlanOutcome: ...


def offered(episode: Episode, action: str) -> bool:
    """Whether the executor offered ``action`` for this episode."""
    return any(capability.action == action for capability in episode.capabilities)
