"""``LlmPlanner``: the language-model agent loop of one episode.

::

    system prompt + trusted facts + framed message (+ framed history)
      -> model: text and/or tool calls
      -> each tool call: checked here (a JSON object of strings for an offered tool),
         then an ActionRequest to the executor, which decides it with the policy
      -> each result (executed, denied with the rule, queued) back to the model
      -> repeat until a final answer, the step limit, or the executor says stop

The model is anything with :meth:`ChatModel.complete`: the executor's LLM gateway
over the zone socket (:class:`GatewayModel`, Anthropic or OpenAI-compatible, the key
never in this zone) or a local model loaded in this zone
(:class:`threezone.planner.local.LocalModel`). The loop is the same for both.

"The executor says stop" means a completion refused with ``llm_budget_exhausted``
(the episode's LLM budget) or an action refused by rule ``<budget>`` (the episode's
action budget). Nothing is kept between episodes: every episode starts from the
executor's ``Episode``, history included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from threezone.planner.base import ActionPort, Planner, PlanOutcome
from threezone.planner.prompt import (
    Framing,
    action_feedback,
    call_problem,
    first_turn,
    system_prompt,
)
from threezone.planner.tools import Toolbox
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

BUDGET_RULE = "<budget>"
LLM_BUDGET_EXHAUSTED = "llm_budget_exhausted"


class ChatModel(Protocol):
    """One completion: the executor's gateway, or a model in this zone."""

    @property
    def name(self) -> str: ...

    def complete(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        tools: list[ToolSpec] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> LLMResponse | Error: ...


class GatewayModel:
    """The executor's LLM gateway, reached through the episode's port."""

    name = "gateway"

    def __init__(self, port: ActionPort) -> None:
        self._port = port

    def complete(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        tools: list[ToolSpec] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> LLMResponse | Error:
        return self._port.complete(messages, max_tokens, tools, tool_choice)


@dataclass(frozen=True, slots=True)
class LoopSettings:
    max_steps: int = 6  # model calls per episode
    max_tokens: int = 512  # per model call
    datamark: bool = True


@dataclass(slots=True)
class EpisodeRun:
    """What one episode did, for its summary and the executor's audit record."""

    model_calls: int = 0
    requests: int = 0
    executed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    stop: str = "step limit"
    final: str = ""
    transcript: list[ChatMessage] = field(default_factory=list)
    # Each distinct request is sent once: a model that repeats itself (small ones do)
    # is shown the executor's first answer again, and the executor is not asked twice.
    answered: dict[str, str] = field(default_factory=dict)

    def summary(self, model: str) -> str:
        head = (
            f"{model}: {self.stop} after {self.model_calls} model call(s); "
            f"{self.executed} of {self.requests} request(s) executed"
        )
        final = " ".join(self.final.split())
        return f"{head}. {final}"[:2000] if final else head


class LlmPlanner(Planner):
    name: ClassVar[str] = "llm"

    def __init__(self, model: ChatModel | None = None, settings: LoopSettings | None = None):
        self._model = model  # None: the executor's gateway, through each episode's port
        self.settings = settings or LoopSettings()
        self.last_run: EpisodeRun | None = None

    def plan(self, episode: Episode, port: ActionPort) -> PlanOutcome:
        model = self._model or GatewayModel(port)
        run = self.run(episode, port, model)
        self.last_run = run
        return PlanOutcome(
            summary=run.summary(model.name),
            steps=run.requests,
            model_calls=run.model_calls,
            input_tokens=run.input_tokens,
            output_tokens=run.output_tokens,
        )

    def run(self, episode: Episode, port: ActionPort, model: ChatModel) -> EpisodeRun:
        framing = Framing.fresh(self.settings.datamark)
        toolbox = Toolbox(list(episode.capabilities))
        run = EpisodeRun()
        run.transcript = [
            ChatMessage(role="system", content=system_prompt(episode, framing)),
            ChatMessage(role="user", content=first_turn(episode, framing)),
        ]
        for _ in range(self.settings.max_steps):
            reply = model.complete(
                run.transcript, self.settings.max_tokens, toolbox.specs or None, "auto"
            )
            if isinstance(reply, Error):
                run.stop = "budget spent" if reply.code == LLM_BUDGET_EXHAUSTED else reply.code
                return run
            run.model_calls += 1
            run.input_tokens += reply.input_tokens
            run.output_tokens += reply.output_tokens
            if not reply.tool_calls:
                cut = reply.stop_reason == "max_tokens"
                run.stop = "answer cut off at max_tokens" if cut else "final answer"
                run.final = reply.content
                return run
            if self._act(reply, toolbox, port, run):
                run.stop = "action budget spent"
                return run
        return run

    def _act(self, reply: LLMResponse, toolbox: Toolbox, port: ActionPort, run: EpisodeRun) -> bool:
        """Send each tool call to the executor; True when the executor said stop."""
        run.transcript.append(
            ChatMessage(role="assistant", content=reply.content, tool_calls=reply.tool_calls)
        )
        stop = False
        for call in reply.tool_calls:
            parsed = toolbox.parse(call)
            if parsed.args is None:
                feedback = call_problem(parsed.problem)
            elif stop:  # the budget is spent: tell the model, ask the executor nothing more
                feedback = call_problem("not sent: the episode's action budget is spent")
            elif (key := _request_key(parsed.action, parsed.args)) in run.answered:
                feedback = call_problem(
                    "not sent again: you already made this exact request; its answer was "
                    + run.answered[key]
                )
            else:
                result = port.request_action(parsed.action, parsed.args)
                run.requests += 1
                run.executed += isinstance(result, ActionResult) and result.executed
                stop = isinstance(result, ActionResult) and result.rule == BUDGET_RULE
                feedback = run.answered[key] = action_feedback(result)
            run.transcript.append(ChatMessage(role="tool", content=feedback, tool_call_id=call.id))
        return stop


def _request_key(action: str, args: dict[str, ArgValue]) -> str:
    return json.dumps([action, args], sort_keys=True)
