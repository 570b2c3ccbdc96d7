"""Entry point of the planner zone: an episode in, action requests out, a summary back.

Runs inside the zone (no network, no credentials). The planner reaches the world
only through :class:`ZonePort`, which asks the executor; the executor decides.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from threezone.errors import ThreezoneError
from threezone.planner.agent import LlmPlanner, LoopSettings
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
    ToolChoice,
    ToolSpec,
)
from threezone.zones.client import ZoneClient, parse_args
from threezone.zones.serve import Handler, serve

KINDS = ("hijacked", "llm", "local")
PlannerFactory = Callable[[], Planner]


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
        tool_choice: ToolChoice = "auto",
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


def make_handler(factory: PlannerFactory) -> Handler:
    """Serve plan requests; the planner is built at the first one, so a local model is
    loaded after the zone restricted itself and reported its isolation."""
    planners: list[Planner] = []

    def handle(client: ZoneClient, message: Message) -> Message | None:
        if not isinstance(message, PlanRequest):
            client.error(getattr(message, "id", None), "unexpected_message", type(message).__name__)
            return None
        if not planners:
            try:
                planners.append(factory())
            except ThreezoneError as exc:  # a model that cannot load: say so, stay up
                client.error(message.id, "planner_unavailable", str(exc))
                return None
        planner = planners[0]
        outcome = planner.plan(message.episode, ZonePort(client, message.episode.episode_id))
        return PlanResult(
            id=client.next_id(),
            reply_to=message.id,
            summary=outcome.summary[:2000],
            steps=outcome.steps,
            model_calls=outcome.model_calls,
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
        )

    return handle


def planner_factory(extra: tuple[str, ...]) -> PlannerFactory:
    """The planner the executor asked for on the zone's command line."""
    chooser = argparse.ArgumentParser(prog="planner zone")
    chooser.add_argument("--planner", choices=KINDS, default=HijackedPlanner.name)
    defaults = LoopSettings()
    chooser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    chooser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    chooser.add_argument("--no-datamark", action="store_true")
    chooser.add_argument("--model-path", default="")
    chooser.add_argument("--threads", type=int, default=1)
    chooser.add_argument("--context", type=int, default=4096)
    options = chooser.parse_known_args(list(extra))[0]
    loop = LoopSettings(options.max_steps, options.max_tokens, not options.no_datamark)
    if options.planner == "hijacked":
        return HijackedPlanner
    if options.planner == "llm":
        return lambda: LlmPlanner(None, loop)

    def local() -> Planner:
        from threezone.planner.local import LocalModel, LocalSettings

        model = LocalModel(
            LocalSettings(Path(options.model_path), options.threads, options.context)
        )
        return LlmPlanner(model, loop)

    return local


def main(argv: list[str] | None = None) -> int:
    args = parse_args("planner", argv)
    code = serve(args, make_handler(planner_factory(args.extra)))
    if "xllamacpp" in sys.modules:
        # Leave without running llama.cpp's destructors: xllamacpp.Server's can wait
        # forever for its main loop at exit. Nothing of this zone needs saving.
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
