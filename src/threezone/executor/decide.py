"""Deciding one action request: schema, policy, rate budget, idempotency, execution.

Order matters and is the point of this module:

1. the action must exist and its arguments must fit its parameters;
2. the policy decides (first matching rule, default deny), in the context of the
   episode's trigger (channel, authenticated sender, reader flags);
3. an allowed action must still fit its rule's rate budget (counted in the inbox);
4. the decision is stored and audited *before* the action runs, under an idempotency
   key, so a replayed episode returns the stored result instead of acting twice.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import msgspec

from threezone.audit.log import AuditLog
from threezone.executor.actions import ActionSpec
from threezone.executor.inbox import ActionStatus, Inbox
from threezone.policy.evaluate import evaluate
from threezone.policy.model import Policy, PolicyDecision
from threezone.protocol.messages import ActionRequest, ActionResult, ArgValue, Decision, Trigger

AUDIT_VALUE_CHARS = 300


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """What happened to one action request, for the caller's report."""

    action: str
    args: dict[str, ArgValue]
    decision: Decision
    rule: str
    rule_text: str
    reason: str
    executed: bool
    result: dict[str, str]


@dataclass(slots=True)
class EpisodeContext:
    episode_id: str
    message_id: str
    trigger: Trigger
    decisions: list[DecisionRecord] = field(default_factory=list)


def idempotency_key(message_id: str, action: str, args: Mapping[str, ArgValue]) -> str:
    """The same action with the same arguments for the same message runs at most once."""
    canonical = msgspec.json.encode([message_id, action, dict(sorted(args.items()))])
    return hashlib.sha256(canonical).hexdigest()[:32]


class Decider:
    def __init__(
        self,
        policy: Policy,
        lists: Mapping[str, frozenset[str]],
        actions: Mapping[str, ActionSpec],
        inbox: Inbox,
        audit: AuditLog,
    ) -> None:
        self.policy = policy
        self.lists = lists
        self.actions = actions
        self.inbox = inbox
        self.audit = audit

    async def decide(self, ctx: EpisodeContext, request: ActionRequest) -> DecisionRecord:
        args = dict(request.args)
        verdict = self._judge(ctx, request.action, args)
        key = idempotency_key(ctx.message_id, request.action, args)
        previous = self.inbox.action(key)
        if previous is not None and previous.status is ActionStatus.EXECUTED:
            record = DecisionRecord(
                request.action,
                args,
                "allow",  # only allowed actions ever reach EXECUTED
                previous.rule,
                verdict.rule_text,
                "already executed (episode replayed)",
                True,
                previous.result,
            )
            self._audit("replayed", ctx, record, key)
            ctx.decisions.append(record)
            return record
        self.inbox.record_decision(
            key,
            ctx.message_id,
            action=request.action,
            args=msgspec.json.encode(args),
            decision=verdict.decision,
            rule=verdict.rule,
        )
        record = DecisionRecord(
            request.action,
            args,
            verdict.decision,
            verdict.rule,
            verdict.rule_text,
            verdict.reason,
            False,
            {},
        )
        self._audit("decision", ctx, record, key)
        if verdict.decision == "allow":
            record = await self._execute(ctx, record, key)
        ctx.decisions.append(record)
        return record

    def _judge(self, ctx: EpisodeContext, action: str, args: dict[str, ArgValue]) -> PolicyDecision:
        spec = self.actions.get(action)
        if spec is None:
            return _refusal("<unknown-action>", f"the executor has no action {action!r}")
        problems = spec.problems(args)
        if problems:
            return _refusal("<schema>", "; ".join(problems))
        verdict = evaluate(self.policy, action, args, ctx.trigger, self.lists)
        if verdict.decision == "allow" and verdict.rate is not None:
            since = time.time() - verdict.rate.per_seconds
            if self.inbox.executed_since(verdict.rule, since) >= verdict.rate.count:
                reason = f"rate budget {verdict.rate.text} of {verdict.rule} is used up"
                return PolicyDecision("deny", verdict.rule, verdict.rule_text, reason, verdict.rate)
        return verdict

    async def _execute(
        self, ctx: EpisodeContext, record: DecisionRecord, key: str
    ) -> DecisionRecord:
        spec = self.actions[record.action]
        try:
            result = await spec.run(record.args, key)
        except Exception as exc:
            failed = replace(
                record, executed=False, reason=f"action failed: {type(exc).__name__}: {exc}"
            )
            self.inbox.record_outcome(key, ActionStatus.FAILED, {"error": type(exc).__name__})
            self._audit("action_failed", ctx, failed, key)
            return failed
        self.inbox.record_outcome(key, ActionStatus.EXECUTED, result)
        done = replace(record, executed=True, result=result)
        self._audit("executed", ctx, done, key)
        return done

    def _audit(self, kind: str, ctx: EpisodeContext, record: DecisionRecord, key: str) -> None:
        # A decision is on disk before its action runs; what follows it may be group-committed.
        self.audit.append(
            kind,
            {
                "message": ctx.message_id,
                "episode": ctx.episode_id,
                "key": key,
                "action": record.action,
                "args": {k: _clip(v) for k, v in record.args.items()},
                "decision": record.decision,
                "rule": record.rule,
                "rule_text": record.rule_text,
                "reason": record.reason,
                "executed": record.executed,
                "result": record.result,
            },
            durable=kind == "decision",
        )


def to_wire(record: DecisionRecord, reply_id: int, request_id: int) -> ActionResult:
    return ActionResult(
        id=reply_id,
        reply_to=request_id,
        decision=record.decision,
        rule=record.rule[:2000],
        reason=record.reason[:2000],
        executed=record.executed,
        result={k: v[:2000] for k, v in record.result.items()},
    )


def _refusal(rule: str, reason: str) -> PolicyDecision:
    return PolicyDecision("deny", rule, "", reason, None)


def _clip(value: ArgValue) -> ArgValue:
    if isinstance(value, str) and len(value) > AUDIT_VALUE_CHARS:
        return value[:AUDIT_VALUE_CHARS] + f"...[{len(value)} chars]"
    return value
