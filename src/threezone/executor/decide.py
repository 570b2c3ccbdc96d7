"""Deciding one action request: schema, policy, rate budget, idempotency, execution.

Order matters and is the point of this module:

1. the action must exist and its arguments must fit its parameters;
2. the policy decides (first matching rule, default deny), in the context of the
   episode's trigger (channel, authenticated sender, reader flags) and of where each
   argument's value came from (``origin()``: trusted, the untrusted content, or the
   planner);
3. an admitted action (allow or ask) must pass the argument guards: no secret value,
   no URL or host outside the egress allowlist; and no action at all may carry a
   canary (a tripwire: it quarantines the trigger and alerts the owner even when a
   rule denied the action anyway);
4. it must fit its rule's rate budget (executions for allow, queued approvals for ask,
   both counted in durable storage, so restarts do not reset them);
5. the decision is stored and audited *before* the action runs, under an idempotency
   key, so a replayed episode returns the stored result instead of acting twice; an
   ``ask`` goes to the owner's approval queue and runs later, once, if approved.

Arguments are redacted by the guards before anything is stored or audited, so a
refused attempt to send a secret does not write that secret to disk.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import msgspec

from threezone.audit.log import AuditLog
from threezone.executor.actions import ActionSpec
from threezone.executor.alerts import OwnerAlerts
from threezone.executor.approvals import ApprovalQueue
from threezone.executor.approvals import Request as ApprovalRequest
from threezone.executor.guards import ArgumentGuard, GuardHit, first_hit, screen
from threezone.executor.inbox import ActionRecord, ActionStatus, Inbox
from threezone.policy.evaluate import evaluate
from threezone.policy.model import Origin, Policy, PolicyDecision
from threezone.policy.provenance import ProvenanceContext, origins
from threezone.protocol.messages import ActionRequest, ActionResult, ArgValue, Decision, Trigger

NO_CONTENT = ProvenanceContext.build([], [])

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
    provenance: ProvenanceContext = NO_CONTENT
    decisions: list[DecisionRecord] = field(default_factory=list)
    tripped: GuardHit | None = None  # a canary fired: quarantine the trigger
    max_actions: int | None = None  # requests past it are refused by rule <budget>


@dataclass(frozen=True, slots=True)
class _Verdict:
    decision: PolicyDecision
    origins: dict[str, Origin]
    hit: GuardHit | None = None


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
        *,
        guards: Sequence[ArgumentGuard] = (),
        approvals: ApprovalQueue | None = None,
        approval_ttl: float = 3_600.0,
        alerts: OwnerAlerts | None = None,
    ) -> None:
        self.policy = policy
        self.lists = lists
        self.actions = actions
        self.inbox = inbox
        self.audit = audit
        self.guards = tuple(guards)
        self.approvals = approvals
        self.approval_ttl = approval_ttl
        self.alerts = alerts

    async def decide(self, ctx: EpisodeContext, request: ActionRequest) -> DecisionRecord:
        args = dict(request.args)
        hit, shown = screen(self.guards, request.action, args)
        verdict = self._judge(ctx, request.action, args, hit)
        key = idempotency_key(ctx.message_id, request.action, args)
        previous = self.inbox.action(key)
        if previous is not None and previous.status is ActionStatus.EXECUTED:
            return self._replayed(ctx, shown, previous, key)
        policy = verdict.decision
        self.inbox.record_decision(
            key,
            ctx.message_id,
            action=request.action,
            args=msgspec.json.encode(shown),
            decision=policy.decision,
            rule=policy.rule,
        )
        record = DecisionRecord(
            action=request.action,
            args=shown,
            decision=policy.decision,
            rule=policy.rule,
            rule_text=policy.rule_text,
            reason=policy.reason,
            executed=False,
            result={},
        )
        self._audit("decision", ctx, record, key, verdict.origins)
        if verdict.hit is not None and verdict.hit.trips:
            self._trip(ctx, verdict.hit)
        if policy.decision == "allow":
            record = await self._execute(ctx, record, args, key)
        elif policy.decision == "ask":
            record = self._queue(ctx, record, args, key, verdict.origins)
        ctx.decisions.append(record)
        return record

    def _replayed(
        self, ctx: EpisodeContext, shown: dict[str, ArgValue], previous: ActionRecord, key: str
    ) -> DecisionRecord:
        # Only admitted actions (allowed, or asked and approved) ever reach EXECUTED.
        record = DecisionRecord(
            previous.action,
            shown,
            "allow",
            previous.rule,
            "",
            "already executed (episode replayed)",
            True,
            previous.result,
        )
        self._audit("replayed", ctx, record, key, {})
        ctx.decisions.append(record)
        return record

    def _judge(
        self, ctx: EpisodeContext, action: str, args: dict[str, ArgValue], hit: GuardHit | None
    ) -> _Verdict:
        verdict = self._judge_request(ctx, action, args, hit)
        if verdict.hit is not None and verdict.hit.trips:
            return verdict  # a tripwire fires whatever the budget says
        if ctx.max_actions is not None and len(ctx.decisions) >= ctx.max_actions:
            reason = f"the episode's budget of {ctx.max_actions} action request(s) is spent"
            return _Verdict(_refusal("<budget>", reason), verdict.origins)
        return verdict

    def _judge_request(
        self, ctx: EpisodeContext, action: str, args: dict[str, ArgValue], hit: GuardHit | None
    ) -> _Verdict:
        spec = self.actions.get(action)
        if spec is None:
            return _Verdict(
                _refusal("<unknown-action>", f"the executor has no action {action!r}"), {}
            )
        problems = spec.problems(args)
        if problems:
            return _Verdict(_refusal("<schema>", "; ".join(problems)), {})
        found = origins(args, ctx.provenance)
        verdict = evaluate(self.policy, action, args, ctx.trigger, self.lists, origins=found)
        # A tripwire (canary) fires even when a rule denies anyway: the attempt itself is
        # what the owner must hear about. Other guards only matter for admitted actions.
        if hit is not None and (hit.trips or verdict.decision != "deny"):
            refused = PolicyDecision("deny", hit.guard, verdict.rule_text, hit.reason, None)
            return _Verdict(refused, found, hit)
        if verdict.decision == "deny":
            return _Verdict(verdict, found)
        return _Verdict(self._within_budget(verdict), found)

    def _within_budget(self, verdict: PolicyDecision) -> PolicyDecision:
        rate = verdict.rate
        if rate is None:
            return verdict
        since = time.time() - rate.per_seconds
        if verdict.decision == "allow":
            used = self.inbox.executed_since(verdict.rule, since)
        elif self.approvals is not None:
            used = self.approvals.queued_since(verdict.rule, since)
        else:
            return verdict
        if used < rate.count:
            return verdict
        what = "rate budget" if verdict.decision == "allow" else "approval request budget"
        reason = f"{what} {rate.text} of {verdict.rule} is used up"
        return PolicyDecision("deny", verdict.rule, verdict.rule_text, reason, rate)

    def _trip(self, ctx: EpisodeContext, hit: GuardHit) -> None:
        ctx.tripped = hit
        if self.alerts is not None:
            detail = f"episode {ctx.episode_id}: {hit.reason}; its message is quarantined"
            self.alerts.raise_alert("canary", detail, ctx.message_id)

    def _queue(
        self,
        ctx: EpisodeContext,
        record: DecisionRecord,
        args: dict[str, ArgValue],
        key: str,
        found: Mapping[str, Origin],
    ) -> DecisionRecord:
        if self.approvals is None:
            return replace(record, reason=record.reason + "; no approval queue, so not run")
        entry = self.approvals.enqueue(
            ApprovalRequest(
                key=key,
                message_id=ctx.message_id,
                episode_id=ctx.episode_id,
                action=record.action,
                args=args,
                untrusted_args=sorted(n for n, o in found.items() if o == "content"),
                trigger=ctx.trigger,
                rule=record.rule,
                reason=record.reason,
            ),
            self.approval_ttl,
        )
        queued = replace(
            record,
            reason=f"{record.reason}; queued for the owner's approval as #{entry.id} "
            f"(digest {entry.short_digest})",
            result={"approval": str(entry.id), "digest": entry.short_digest},
        )
        self.audit.append(
            "approval_queued",
            {"message": ctx.message_id, "key": key, "approval": entry.id, "digest": entry.digest},
        )
        return queued

    async def run_approved(
        self, spec_args: dict[str, ArgValue], action: str, key: str
    ) -> tuple[bool, dict[str, str]]:
        """Run an owner-approved action once; the guards still apply (approval is no bypass)."""
        spec = self.actions.get(action)
        if spec is None:
            return False, {"error": f"the executor has no action {action!r}"}
        hit = first_hit(self.guards, action, spec_args)
        if hit is not None:
            return False, {"error": f"{hit.guard}: {hit.reason}"}
        previous = self.inbox.action(key)
        if previous is not None and previous.status is ActionStatus.EXECUTED:
            return True, previous.result
        try:
            result = await spec.run(spec_args, key)
        except Exception as exc:
            self.inbox.record_outcome(key, ActionStatus.FAILED, {"error": type(exc).__name__})
            return False, {"error": f"{type(exc).__name__}: {exc}"}
        self.inbox.record_outcome(key, ActionStatus.EXECUTED, result)
        return True, result

    async def _execute(
        self, ctx: EpisodeContext, record: DecisionRecord, args: dict[str, ArgValue], key: str
    ) -> DecisionRecord:
        spec = self.actions[record.action]
        try:
            result = await spec.run(args, key)
        except Exception as exc:
            failed = replace(
                record, executed=False, reason=f"action failed: {type(exc).__name__}: {exc}"
            )
            self.inbox.record_outcome(key, ActionStatus.FAILED, {"error": type(exc).__name__})
            self._audit("action_failed", ctx, failed, key, {})
            return failed
        self.inbox.record_outcome(key, ActionStatus.EXECUTED, result)
        done = replace(record, executed=True, result=result)
        self._audit("executed", ctx, done, key, {})
        return done

    def _audit(
        self,
        kind: str,
        ctx: EpisodeContext,
        record: DecisionRecord,
        key: str,
        found: Mapping[str, Origin],
    ) -> None:
        # A decision is on disk before its action runs; what follows it may be group-committed.
        data: dict[str, object] = {
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
        }
        if found:
            data["origins"] = dict(found)
        self.audit.append(kind, data, durable=kind == "decision")


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
