"""Entry point of the planner zone: an episode in, action requests out, a summary back.

Runs inside the zone (no network, no credentials). The planner reaches the world
only through :class:`ZonePort`, which asks the executor; the executor decides.
"""

from __future__ import annotations

import argparse
import sys
from typing import Literal

from threezone.planner.base import ActionPort, Planner
from threezone.planner.hijacked import HijackedPlanner
from threezone.protocol.messages import (
    ActionRequest,
    ActionResult,
    ArgValue,
    ChatMessage,
    Error,
    LLMRequest,
    LLMResponse,
    Message,
    PlanRequest,
    PlanResult,
    ToolSpec,
)
from threezone.zones.client import ZoneClient, parse_args
from threezone.zones.serve import Handler, serve

PLANNERS: dict[str, type[Planner]] = {HijackedPlanner.name: HijackedPlanner}


class ZonePort(ActionPort):
    """Action requests for one episode, sent over the zone socket."""

    def __init__(self, client: ZoneClient, episode_id: str) -> None:
        self.client = client
        self._episode_id = episode_id

    def request_action(self, action: str, args: dict[str, ArgValue]) -> ActionResult | Error:
        request_id = self.client.next_id()
        request = ActionRequest(
            id=request_id, episode_id=self._episode_id, action=action, args=args
        )
        reply = self.client.call(request, request_id)
        if isinstance(reply, ActionResult | Error):
            return reply
        return Error(
            id=0, reply_to=request_id, code="unexpected_reply", detail=type(reply).__name__
        )

    def complete(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        tools: list[ToolSpec] | None = None,
        tool_choice: Literal["auto", "none", "required"] = "auto",
    ) -> LLMResponse | Error:
        request_id = self.client.next_id()
        request = LLMRequest(
            id=request_id,
            episode_id=self._episode_id,
            messages=messages,
            max_tokens=max_tokens,
            tools=tools or [],
            tool_choice=tool_choice,
        )
        reply = self.client.call(request, request_id)
        if isinstance(reply, LLMResponse | Error):
            return reply
        return Error(
            id=0, reply_to=request_id, code="unexpected_reply", detail=type(reply).__name__
        )


def make_handler(planner: Planner) -> Handler:
    def handle(client: ZoneClient, message: Message) -> Message | None:
        if not isinstance(message, PlanRequest):
            client.error(getattr(message, "id", None), "unexpected_message", type(message).__name__)
            return None
        outcome = planner.plan(message.episode, ZonePort(client, message.episode.episode_id))
        return PlanResult(
            id=client.next_id(),
            reply_to=message.id,
            summary=outcome.summary[:2000],
            steps=outcome.steps,
        )

    return handle


def main(argv: list[str] | None = None) -> int:
    args = parse_args("planner", argv)
    chooser = argparse.ArgumentParser(prog="planner zone")
    chooser.add_argument("--planner", choices=sorted(PLANNERS), default=HijackedPlanner.name)
    kind = chooser.parse_known_args(list(args.extra))[0].planner
    return serve(args, make_handler(PLANNERS[kind]()))


if __name__ == "__main__":
    sys.exit(main())
