"""The actions the executor can perform, their parameters, and how they run.

The planner only *names* an action and its arguments. Here the executor checks the
arguments against the action's parameters (before the policy sees them), and only
after the policy admitted the action does it run it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from threezone.connectors.outbox import Outbox
from threezone.protocol.messages import ArgValue, Capability, ParamSpec

Runner = Callable[[Mapping[str, ArgValue], str], Awaitable[dict[str, str]]]


# One plain address, nothing around it: no display name, no list. Shown to the model
# as its tool schema's pattern (a regex subset llguidance accepts), and checked here.
ADDRESS_PATTERN = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+"


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    required: bool = True
    max_length: int = 10_000
    pattern: str = ""  # the whole value must match (Python re syntax, ours only)


@dataclass(frozen=True, slots=True)
class ActionSpec:
    name: str
    description: str
    params: tuple[Param, ...]
    run: Runner

    def problems(self, args: Mapping[str, ArgValue]) -> list[str]:
        """What is wrong with ``args`` for this action; empty when they fit."""
        known = {p.name: p for p in self.params}
        found = [f"unknown argument {name!r}" for name in args if name not in known]
        for param in self.params:
            value = args.get(param.name)
            if value is None:
                if param.required:
                    found.append(f"missing argument {param.name!r}")
            elif not isinstance(value, str):
                found.append(f"argument {param.name!r} must be a string")
            elif len(value) > param.max_length:
                found.append(f"argument {param.name!r} is over {param.max_length} characters")
            elif param.pattern and re.fullmatch(param.pattern, value) is None:
                found.append(f"argument {param.name!r} is not of the expected form")
        return found

    def capability(self) -> Capability:
        return Capability(
            action=self.name,
            description=self.description,
            params=[p.name for p in self.params],
            param_specs=[
                ParamSpec(
                    name=p.name, required=p.required, max_length=p.max_length, pattern=p.pattern
                )
                for p in self.params
            ],
        )


_ADDRESS = Param("to", max_length=254, pattern=ADDRESS_PATTERN)
_SUBJECT = Param("subject", required=False, max_length=998)
_BODY = Param("body", max_length=100_000)

# Every action the executor knows: name -> (description, parameters). Connectors
# supply how each runs; ``threezone redteam`` runs them all as dry runs.
CATALOG: dict[str, tuple[str, tuple[Param, ...]]] = {
    "email.send": ("Send a new email.", (_ADDRESS, _SUBJECT, _BODY)),
    "email.reply": (
        "Reply to the message that started this episode.",
        (_ADDRESS, _SUBJECT, _BODY, Param("in_reply_to", required=False, max_length=256)),
    ),
    "email.draft": ("Save a draft for the owner.", (_ADDRESS, _SUBJECT, _BODY)),
    "telegram.send_message": (
        "Send a Telegram message to a chat.",
        (
            Param("chat", max_length=64),
            Param("text", max_length=4_096),
            Param("reply_to", required=False, max_length=32),
        ),
    ),
    "slack.post_message": (
        "Post a Slack message to a channel, or into a thread.",
        (
            Param("channel", max_length=64),
            Param("text", max_length=40_000),
            Param("thread_ts", required=False, max_length=32),
        ),
    ),
}


def dry_run_actions() -> list[ActionSpec]:
    """Every catalogued action, each only saying that it would have run."""

    async def run(args: Mapping[str, ArgValue], key: str) -> dict[str, str]:
        return {"dry_run": "not performed", "key": key}

    return [
        ActionSpec(name, description, params, run)
        for name, (description, params) in CATALOG.items()
    ]


def email_actions(outbox: Outbox) -> list[ActionSpec]:
    """``email.send``, ``email.reply`` and ``email.draft``, delivered to a local outbox."""

    def runner(folder: str) -> Runner:
        async def run(args: Mapping[str, ArgValue], key: str) -> dict[str, str]:
            headers = {"To": str(args["to"]), "Subject": str(args.get("subject", ""))}
            if "in_reply_to" in args:
                headers["X-Threezone-In-Reply-To"] = str(args["in_reply_to"])
            path = outbox.deliver(folder, key, headers, str(args.get("body", "")))
            return {"delivered": str(path)}

        return run

    folders = {"email.send": "sent", "email.reply": "sent", "email.draft": "drafts"}
    return [
        ActionSpec(name, CATALOG[name][0], CATALOG[name][1], runner(folder))
        for name, folder in folders.items()
    ]
