"""What the executor prepares for the planner: its zone's command line, and history.

**The planner zone.** ``planner_zone_args`` turns ``[planner]`` into the zone's
arguments, limits and read-only files. For ``kind = "local"`` it resolves the model
(the bundled SmolLM2 file, or ``model_path``) and checks its SHA-256 here, in the
trusted zone, before any zone starts: a swapped or truncated model file stops the
executor with the path, both digests and what to do.

**Conversation history.** The planner zone keeps nothing between episodes; the
executor hands each episode the last few turns of the same conversation from its own
inbox (each earlier message's sanitized text, cut to a bound, and the actions that
ran for it, from the executor's records). A conversation is keyed by what the
executor vouches for, never by what the sender wrote alone: channel, account, the
sender's *authenticated* identity and the platform's thread id. A message whose sender
is not authenticated gets no history at all, so a forged ``From:`` with a forged
``References:`` header cannot pull another correspondent's thread into an episode
(where a fooled model could copy it into a reply).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from threezone.backends.base import Limits
from threezone.config.schema import PlannerConfig
from threezone.executor.inbox import ActionRecord, ActionStatus, Inbox
from threezone.protocol.messages import HistoryTurn, SanitizedMessage, Trigger

# A local model runs for as long as the agent does: its CPU limit must not end it
# mid-episode after ten minutes of work, as the default zone limit would. Deadlines
# per episode still bound every single request.
LOCAL_CPU_SECONDS = 7 * 86_400
# llama.cpp's threads count against the zone's process limit.
LOCAL_PIDS = 128


@dataclass(frozen=True, slots=True)
class PlannerZoneArgs:
    args: tuple[str, ...]
    limits: Limits
    read_only: tuple[Path, ...] = ()


def planner_zone_args(cfg: PlannerConfig) -> PlannerZoneArgs:
    """The planner zone's arguments for ``cfg``; raises ``ModelError`` for a bad model."""
    args = ["--planner", cfg.kind, "--max-steps", str(cfg.max_steps)]
    args += ["--max-tokens", str(cfg.max_tokens)]
    if not cfg.datamark:
        args.append("--no-datamark")
    if cfg.kind != "local":
        return PlannerZoneArgs(tuple(args), Limits())
    from threezone.planner.local import resolve_model, verify_model

    path, digest = resolve_model(cfg.model_path, cfg.model_sha256)
    path = path.expanduser().absolute()
    verify_model(path, digest)
    args += ["--model-path", str(path), "--threads", str(cfg.threads)]
    args += ["--context", str(cfg.context)]
    limits = Limits(memory_mb=cfg.memory_mb, pids=LOCAL_PIDS, cpu_seconds=LOCAL_CPU_SECONDS)
    return PlannerZoneArgs(tuple(args), limits, (path,))


def conversation_key(message: SanitizedMessage, trigger: Trigger) -> str | None:
    """The conversation a message belongs to, or None when it may see no history."""
    if not trigger.sender_authenticated or not trigger.sender or not message.thread_id:
        return None
    parts = [trigger.channel, trigger.account, trigger.sender.lower(), message.thread_id]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def history_for(
    inbox: Inbox, key: str | None, message_id: str, turns: int, chars: int
) -> list[HistoryTurn]:
    """The last ``turns`` earlier messages of the conversation, oldest first."""
    if key is None or turns == 0:
        return []
    history: list[HistoryTurn] = []
    for item in inbox.conversation(key, before=message_id, limit=turns):
        message = item.sanitized
        if message is None:
            continue
        text = message.body if len(message.body) <= chars else message.body[:chars] + " [...]"
        history.append(
            HistoryTurn(
                received_at=item.trigger.received_at,
                sender=(item.trigger.sender or "")[:256],
                subject=message.subject,
                text=text,
                actions=[_done(record) for record in inbox.actions_of(item.id)][:16],
            )
        )
    return history


def _done(record: ActionRecord) -> str:
    if record.status is ActionStatus.EXECUTED:
        return f"{record.action} executed"
    if record.decision == "ask":
        return f"{record.action} asked the owner"
    if record.status is ActionStatus.FAILED:
        return f"{record.action} failed"
    return f"{record.action} {record.decision} by {record.rule}"[:200]
