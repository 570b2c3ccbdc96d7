"""The executor: fetch, store, sanitize, plan, decide; audit everything.

One message's path (DESIGN.md section 3)::

    source.fetch -> inbox.receive (durable) -> source.acknowledge
      -> reader zone: SanitizeRequest -> SanitizeResult (validated) -> inbox: sanitized
      -> planner zone: PlanRequest; its ActionRequests -> Decider -> ActionResult
      -> inbox: planned -> done

A zone that crashes, times out or answers wrongly gets the message quarantined with a
typed error, in the inbox and the audit log; the next message proceeds. Every step
checks the stored state first, so running :meth:`Executor.process` again after a
crash resumes where the message was and never repeats an executed action.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast, get_args

import msgspec

from threezone.audit import AuditLog, checkpointing_from_config
from threezone.backends.base import Backend, Limits, Role, ZoneSpec
from threezone.config.load import LoadedConfig
from threezone.connectors.maildir import MaildirSource
from threezone.connectors.outbox import Outbox
from threezone.errors import StorageError, ZoneCrashedError, ZoneError, ZoneStartError
from threezone.executor import canaries, runtime_dir
from threezone.executor.actions import ActionSpec, email_actions
from threezone.executor.alerts import OwnerAlerts
from threezone.executor.approvals import DB_NAME as APPROVALS_DB
from threezone.executor.approvals import Approval, ApprovalQueue
from threezone.executor.broker import RequestHandler, Zone, ZoneRequest, ZoneSettings
from threezone.executor.decide import Decider, DecisionRecord, EpisodeContext, to_wire
from threezone.executor.decoys import Decoys
from threezone.executor.egress import Egress, Resolver
from threezone.executor.guards import ArgumentGuard, EgressGuard, StoreGuard
from threezone.executor.inbox import ActionStatus, Inbox, InboxItem, State
from threezone.executor.llm import LlmGateway
from threezone.executor.planning import (
    conversation_key,
    history_for,
    planner_zone_args,
)
from threezone.executor.secrets import SecretStore, load_secrets
from threezone.policy.evaluate import could_allow
from threezone.policy.loader import load_policy_dir
from threezone.policy.model import Policy
from threezone.policy.provenance import ProvenanceContext
from threezone.protocol.messages import (
    ActionRequest,
    ArgValue,
    Capability,
    Channel,
    Episode,
    Error,
    LLMRequest,
    Message,
    PlanRequest,
    PlanResult,
    SanitizedMessage,
    SanitizeRequest,
    SanitizeResult,
    Trigger,
)

log = logging.getLogger(__name__)

CHANNELS: tuple[Channel, ...] = get_args(Channel)
ActionPortFn = Callable[[str, Mapping[str, ArgValue]], Awaitable[DecisionRecord]]
# An in-process planner: given the episode and a way to request actions, it returns how
# many requests it made. Only ``threezone redteam`` uses one (its planner is scripted).
LocalPlanner = Callable[[Episode, ActionPortFn], Awaitable[int]]
# Answers one LLMRequest from the planner zone: (request, reply id) -> LLMResponse/Error.
LlmHandler = Callable[[LLMRequest, int], Awaitable[Message]]

READER_MODULE = "threezone.zones.reader_main"
PLANNER_MODULE = "threezone.zones.planner_main"


@dataclass(slots=True)
class Outcome:
    """What happened to one message, for reports (the demo prints these)."""

    message_id: str
    state: State
    sanitized: SanitizedMessage | None = None
    plan_summary: str | None = None
    decisions: list[DecisionRecord] = field(default_factory=list)
    error_code: str | None = None
    error_detail: str | None = None


class Executor:
    def __init__(
        self,
        loaded: LoadedConfig,
        backend: Backend,
        zone_modules: Mapping[str, str] | None = None,
        *,
        actions: Sequence[ActionSpec] | None = None,
        local_planner: LocalPlanner | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        cfg = loaded.config
        self.loaded = loaded
        self.backend = backend
        self.state_dir = loaded.resolve(cfg.executor.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_writable(self.state_dir)
        self.inbox = Inbox.open(self.state_dir / "inbox.sqlite3")
        self.audit = AuditLog.open(
            self.state_dir / "audit.jsonl",
            checkpointing=checkpointing_from_config(
                cfg.audit, state_dir=self.state_dir, resolve=loaded.resolve
            ),
        )
        self.policy = self._load_policy()
        email_cfg = cfg.channels.email
        if email_cfg is None or email_cfg.source != "maildir":
            # Other sources and their actions are connectors the agent registers.
            self.source: MaildirSource | None = None
            configured: list[ActionSpec] = []
        else:
            self.source = MaildirSource(
                loaded.resolve(email_cfg.maildir),
                email_cfg.account,
                email_cfg.authserv_id,
                cfg.executor.max_raw_bytes,
            )
            self.outbox = Outbox(loaded.resolve(email_cfg.outbox), email_cfg.account)
            configured = email_actions(self.outbox)
        self.actions = {spec.name: spec for spec in (configured if actions is None else actions)}
        self.local_planner = local_planner
        # Answers the planner's LLMRequests when a provider is configured; without it
        # they are refused with llm_unavailable.
        self.llm: LlmHandler | None = None
        self.approvals = ApprovalQueue.open(self.state_dir / APPROVALS_DB)
        self.alerts = OwnerAlerts(self.state_dir / "alerts.jsonl", self.audit)
        self.secrets = load_secrets(cfg.secrets, loaded.resolve) if cfg.secrets.file else None
        self.canaries = canaries.load_or_create(self.state_dir)
        self.egress = Egress(cfg.egress, resolver)  # resolver: tests pin names to loopback
        self.llm_gateway = LlmGateway(cfg.llm, self.secrets or SecretStore.empty(), self.egress)
        if self.llm_gateway.enabled:
            self.llm = self.llm_gateway.handler(self.audit.append)
        self.decider = Decider(
            self.policy,
            loaded.lists,
            self.actions,
            self.inbox,
            self.audit,
            guards=self._guards(),
            approvals=self.approvals,
            approval_ttl=cfg.approvals.ttl_seconds,
            alerts=self.alerts,
        )
        self._episodes: dict[str, EpisodeContext] = {}
        self._runtime = runtime_dir.create()  # mode 0700; sweeps what crashes left
        self._modules = {
            **{f"reader-{channel}": READER_MODULE for channel in CHANNELS},
            "planner": PLANNER_MODULE,
            **(zone_modules or {}),
        }
        self.readers: dict[str, Zone] = {}
        self.decoys = Decoys(self.state_dir, self._alarm)
        self.zones: list[Zone] = []

    def _guards(self) -> list[ArgumentGuard]:
        guards: list[ArgumentGuard] = [
            StoreGuard(self.canaries, "<canary>", "canary", trips=True),
            EgressGuard(self.egress.check_argument_values),
        ]
        if self.secrets is not None:
            guards.insert(1, StoreGuard(self.secrets, "<secret>", "secret", trips=False))
        return guards

    def _provenance(self, item: InboxItem, message: SanitizedMessage) -> ProvenanceContext:
        """The episode's untrusted text, and the values the executor itself vouches for."""
        trusted = [item.trigger.account, *(v for vs in self.loaded.lists.values() for v in vs)]
        if item.trigger.sender_authenticated and item.trigger.sender:
            trusted.append(item.trigger.sender)
        untrusted = [message.body, message.subject, message.sender]
        untrusted += [f"{link.text} {link.url}" for link in message.links]
        untrusted += [attachment.name for attachment in message.attachments]
        return ProvenanceContext.build(untrusted, trusted)

    def _load_policy(self) -> Policy:
        directory = self.loaded.resolve(self.loaded.config.policy.dir)
        policy = load_policy_dir(
            directory, frozenset(self.loaded.config.lists), relative_to=self.loaded.base
        )
        if policy.error is not None:
            log.error("policy failed to load; every action will be denied:\n%s", policy.error)
            self.audit.append("policy_error", {"problems": [str(p) for p in policy.error.problems]})
        return policy

    def _zone(
        self,
        name: str,
        role: Role,
        args: tuple[str, ...],
        on_request: RequestHandler | None = None,
        *,
        limits: Limits | None = None,
        read_only: tuple[Path, ...] = (),
        disposable: bool = False,
    ) -> Zone:
        cfg = self.loaded.config.executor
        settings = ZoneSettings(
            hello_timeout=cfg.hello_timeout,
            request_timeout=cfg.request_timeout,
            max_frame=cfg.max_frame_bytes,
            max_frame_out=cfg.max_raw_bytes * 4 // 3 + 1024 * 1024,
            restart_backoff=tuple(cfg.restart_backoff),
            spare=cfg.spare_zones,
            disposable=disposable,
        )
        log_dir = self.state_dir / "logs"
        log_dir.mkdir(exist_ok=True)
        spec = ZoneSpec(
            name=name,
            role=role,
            module=self._modules[name],
            socket_path=self._runtime / name / "zone.sock",
            args=(*args, "--max-frame", str(settings.max_frame_out)),
            log_path=log_dir / f"{name}.log",
            limits=limits or Limits(),
            read_only=read_only,
        )
        inside = str(Path(self.backend.socket_arg(spec)).parent)
        spec = replace(spec, args=(*spec.args, *self.decoys.args(spec, inside)))
        zone = Zone(spec, self.backend, settings, on_request)
        zone.on_started = self._zone_started
        return zone

    def _zone_started(self, zone: Zone) -> None:
        probes = zone.isolation.probes if zone.isolation else []
        held = [p.name for p in probes if p.blocked]
        self.audit.append(
            "zone_started",
            {
                "zone": zone.name,
                "backend": self.backend.name,
                "pid": zone.pid or 0,
                "start": zone.starts,
                "probes_held": len(held),
                "probes": len(probes),
                "not_held": [p.name for p in probes if not p.blocked],
            },
            durable=False,
        )

    def _alarm(self, what: str) -> None:
        if self.backend.promises_isolation:
            log.error("ALERT: %s", what)
        else:  # expected: this backend has no isolation, and its warning said so
            log.warning("%s (expected under %s)", what, self.backend.name)
        self.audit.append("alert", {"what": what, "backend": self.backend.name})

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the backend, lay the decoys, open one socket per zone."""
        self.backend.check()
        await self.decoys.start(canaries.decoy_file_text(self.canaries))
        await self._settle_interrupted_approvals()
        self.reader = await self._reader("email")
        if self.local_planner is None:  # an in-process planner needs no zone
            zone_args = planner_zone_args(self.loaded.config.planner)
            self.planner = self._zone(
                "planner",
                "planner",
                zone_args.args,
                self._on_zone_request,
                limits=zone_args.limits,
                read_only=zone_args.read_only,
            )
            self.zones.append(self.planner)
            await self.planner.listen()
        self.audit.append("executor_started", {"backend": self.backend.name})

    async def stop(self) -> None:
        for zone in self.zones:
            await zone.stop()
        await self.llm_gateway.aclose()
        await self.decoys.close()
        self.audit.append(
            "executor_stopped", {"counts": {str(k): v for k, v in self.inbox.counts().items()}}
        )
        self.audit.close()
        self.inbox.close()
        self.approvals.close()
        shutil.rmtree(self._runtime, ignore_errors=True)

    async def _reader(self, channel: str) -> Zone:
        """The channel's reader zone; one per channel, opened on first use."""
        zone = self.readers.get(channel)
        if zone is None:
            disposable = self.loaded.config.readers.of(channel).disposable
            zone = self._zone(f"reader-{channel}", "reader", (), disposable=disposable)
            self.readers[channel] = zone
            self.zones.append(zone)
            await zone.listen()
        return zone

    # --- fetching -----------------------------------------------------------------------------

    def ingest(self) -> list[str]:
        """Store every new message from the source, then acknowledge it there."""
        if self.source is None:
            return []
        new: list[str] = []
        for item in self.source.fetch():
            message_id, fresh = self.admit(
                "email", item.source_ref, item.untrusted_raw, item.trigger
            )
            if fresh:
                new.append(message_id)
                if item.oversized:
                    self._quarantine(message_id, "input_too_large", "over executor.max_raw_bytes")
            self.source.acknowledge(item.source_ref)
        self.audit.sync()
        return new

    # --- processing ---------------------------------------------------------------------------

    async def process_pending(self) -> list[Outcome]:
        return [await self.process(message_id) for message_id in self.inbox.pending()]

    async def process(self, message_id: str) -> Outcome:
        item = self.inbox.get(message_id)
        outcome = Outcome(message_id, item.state, item.sanitized)
        while item.state in (State.RECEIVED, State.SANITIZED):
            item = await self._step(item, outcome)
        if item.state is State.PLANNED:
            self.inbox.mark_done(message_id)
            self.audit.append("done", {"message": message_id})
            item = self.inbox.get(message_id)
        outcome.state, outcome.sanitized = item.state, item.sanitized
        outcome.error_code, outcome.error_detail = item.error_code, item.error_detail
        outcome.plan_summary = item.summary
        return outcome

    async def _step(self, item: InboxItem, outcome: Outcome) -> InboxItem:
        """One try of the message's next zone step (sanitize or plan), counted durably.

        A zone that died under the message gets it again on a fresh zone, up to
        ``executor.max_attempts`` tries of the step; past that, or when the executor
        itself died that often on it (the count survives a restart), the message is
        quarantined as poison. An episode whose earlier run had an action admitted is
        never run again by a model-based planner: a model does not repeat itself word for
        word, so a second run could act twice under new idempotency keys.
        """
        limit = self.loaded.config.executor.max_attempts
        attempts = self.inbox.begin_attempt(item.id)
        if attempts > limit:
            detail = f"{limit} attempt(s) at the {item.state} step ended without a result"
            return self._quarantine(item.id, "too_many_attempts", detail)
        try:
            if item.state is State.RECEIVED:
                return await self._sanitize(item, retry=attempts < limit)
            if self._replays_differ() and self._admitted_before(item.id):
                detail = "an earlier run of this episode admitted actions; a model is not rerun"
                return self._quarantine(item.id, "episode_interrupted", detail)
            return await self._plan(item, outcome, retry=attempts < limit)
        except (StorageError, ZoneStartError):
            # A full disk or a zone that cannot start is not the message's fault: this
            # try does not count against it.
            with contextlib.suppress(StorageError):
                self.inbox.end_attempt(item.id)
            raise

    def _admitted_before(self, message_id: str) -> bool:
        """Whether an earlier run allowed or queued an action (denials change nothing)."""
        return any(r.decision != "deny" for r in self.inbox.actions_of(message_id))

    def _replays_differ(self) -> bool:
        """Whether running an episode again may request different actions."""
        return self.local_planner is None and self.loaded.config.planner.kind != "hijacked"

    def admit(
        self, channel: Channel, source_ref: str, untrusted_raw: bytes, trigger: Trigger
    ) -> tuple[str, bool]:
        """Store one raw item from any source: ``(message id, True)`` if it is new."""
        message_id, fresh = self.inbox.receive(channel, source_ref, untrusted_raw, trigger)
        if fresh:
            self.audit.append(
                "received",
                {"message": message_id, "bytes": len(untrusted_raw), "sender": trigger.sender},
                durable=False,  # group commit: the next durable record syncs it
            )
        return message_id, fresh

    async def _sanitize(self, item: InboxItem, *, retry: bool = False) -> InboxItem:
        channel = cast(Channel, item.channel)
        reader = await self._reader(channel)
        request_id = reader.next_id()
        request = SanitizeRequest(
            id=request_id, channel=channel, message_id=item.id, raw=self.inbox.raw(item.id)
        )
        reply = await self._ask(reader, request, request_id, item.id, retry=lambda: retry)
        if reply is None:
            return self.inbox.get(item.id)
        if not isinstance(reply, SanitizeResult):
            return self._wrong_reply(item.id, reply, "sanitized")
        message = reply.message
        if message.id != item.id or message.channel != item.channel:
            return self._quarantine(item.id, "zone_bad_reply", "the result names another message")
        self.inbox.mark_sanitized(item.id, message)
        self.audit.append(
            "sanitized",
            {
                "message": item.id,
                "flagged": message.injection.flagged,
                "score_pct": round(message.injection.score * 100),
                "reasons": message.injection.reasons[:16],
                "hidden_chars": message.dropped.hidden_chars,
                "links": len(message.links),
            },
            durable=False,  # group commit: the next durable record syncs it
        )
        return self.inbox.get(item.id)

    async def _plan(self, item: InboxItem, outcome: Outcome, *, retry: bool = False) -> InboxItem:
        assert item.sanitized is not None  # state SANITIZED stores it
        cfg = self.loaded.config.planner
        ctx = EpisodeContext(
            episode_id=f"ep-{item.id}",
            message_id=item.id,
            trigger=msgspec.structs.replace(item.trigger, flagged=item.sanitized.injection.flagged),
            provenance=self._provenance(item, item.sanitized),
            max_actions=cfg.max_actions_per_episode,
        )
        key = conversation_key(item.sanitized, item.trigger)
        if key is not None:
            self.inbox.join_conversation(item.id, key)
        episode = Episode(
            episode_id=ctx.episode_id,
            message=item.sanitized,
            trigger=ctx.trigger,
            capabilities=self._capabilities(),
            instructions=cfg.instructions,
            history=history_for(self.inbox, key, item.id, cfg.history_turns, cfg.history_chars),
        )
        self._episodes[ctx.episode_id] = ctx
        try:
            if self.local_planner is not None:
                reply: Message | None = await self._plan_locally(episode, ctx, 0)
            else:
                request_id = self.planner.next_id()
                reply = await self._ask(
                    self.planner,
                    PlanRequest(id=request_id, episode=episode),
                    request_id,
                    item.id,
                    timeout=cfg.episode_timeout,
                    retry=lambda: retry and not ctx.decisions,  # nothing decided: nothing lost
                )
        finally:
            del self._episodes[ctx.episode_id]
            self.llm_gateway.end_episode(ctx.episode_id)
            outcome.decisions = ctx.decisions
        if reply is None:
            return self.inbox.get(item.id)
        if ctx.tripped is not None:
            return self._quarantine(item.id, "canary_tripped", ctx.tripped.reason)
        if not isinstance(reply, PlanResult):
            return self._wrong_reply(item.id, reply, "plan_done")
        self.inbox.mark_planned(item.id, reply.summary)
        self.audit.append(
            "episode",
            {
                "message": item.id,
                "episode": ctx.episode_id,
                "summary": reply.summary,
                "steps": reply.steps,
                "history": len(episode.history),
                "model_calls": reply.model_calls,
                "input_tokens": reply.input_tokens,
                "output_tokens": reply.output_tokens,
            },
            durable=False,  # group commit: the next durable record syncs it
        )
        return self.inbox.get(item.id)

    async def _plan_locally(
        self, episode: Episode, ctx: EpisodeContext, request_id: int
    ) -> PlanResult:
        """Run an in-process planner (``threezone redteam``) against the same decider."""
        assert self.local_planner is not None

        async def request_action(action: str, args: Mapping[str, ArgValue]) -> DecisionRecord:
            wire = {"type": "action", "id": 0, "episode_id": ctx.episode_id, "action": action}
            try:  # the same validation a request from the planner zone gets
                request = msgspec.convert({**wire, "args": dict(args)}, ActionRequest)
            except msgspec.ValidationError as exc:
                refused = f"not a valid action request: {exc}"
                return DecisionRecord(action, {}, "deny", "<schema>", "", refused, False, {})
            return await self.decider.decide(ctx, request)

        steps = await self.local_planner(episode, request_action)
        summary = f"{steps} scripted request(s)"
        return PlanResult(id=0, reply_to=request_id, summary=summary, steps=steps)

    def _capabilities(self) -> list[Capability]:
        """Only actions that some rule could allow are offered to the planner."""
        return [
            spec.capability()
            for name, spec in self.actions.items()
            if could_allow(self.policy, name)
        ]

    async def _ask(
        self,
        zone: Zone,
        request: Message,
        request_id: int,
        message_id: str,
        *,
        timeout: float | None = None,
        retry: Callable[[], bool] = lambda: False,
    ) -> Message | None:
        """One zone request; None when the zone failed. The message is then quarantined,
        unless the zone crashed and ``retry()`` says it may be tried again."""
        try:
            return await zone.request(request, request_id, timeout)
        except ZoneStartError:
            raise  # our environment's fault, not the message's: leave it pending
        except ZoneCrashedError as exc:
            if not retry():
                log.warning("%s; quarantining %s", exc, message_id)
                self._quarantine(message_id, exc.code, str(exc))
                return None
            log.warning("%s; trying %s again on a fresh zone", exc, message_id)
            self.audit.append("retry", {"message": message_id, "zone": zone.name, "code": exc.code})
            return None
        except ZoneError as exc:
            log.warning("%s; quarantining %s", exc, message_id)
            self._quarantine(message_id, exc.code, str(exc))
            return None

    def _wrong_reply(self, message_id: str, reply: Message, expected: str) -> InboxItem:
        if isinstance(reply, Error):
            return self._quarantine(message_id, reply.code, reply.detail)
        return self._quarantine(
            message_id, "zone_bad_reply", f"expected {expected}, got {type(reply).__name__}"
        )

    def quarantine(self, message_id: str, code: str, detail: str) -> InboxItem:
        """Set a message aside with a typed reason (inbox and audit log)."""
        return self._quarantine(message_id, code, detail)

    def _quarantine(self, message_id: str, code: str, detail: str) -> InboxItem:
        self.inbox.quarantine(message_id, code, detail)
        self.audit.append(
            "quarantined", {"message": message_id, "code": code, "detail": detail[:500]}
        )
        return self.inbox.get(message_id)

    # --- approvals -----------------------------------------------------------------------------

    async def run_approvals(self) -> list[Approval]:
        """Expire what is due, then run every approved action once. Returns what ran."""
        for expired in self.approvals.expire():
            self.audit.append("approval_expired", {"approval": expired.id, "key": expired.key})
        done: list[Approval] = []
        while (claimed := self.approvals.claim()) is not None:
            done.append(await self._run_approved(claimed))
        return done

    async def _run_approved(self, entry: Approval) -> Approval:
        if not entry.intact():
            executed, result = False, {"error": "the stored action changed after it was queued"}
        else:
            executed, result = await self.decider.run_approved(entry.args, entry.action, entry.key)
        self.approvals.finish(entry.id, executed, result)
        self.audit.append(
            "approved_executed" if executed else "approved_failed",
            {
                "approval": entry.id,
                "key": entry.key,
                "message": entry.message_id,
                "action": entry.action,
                "decided_by": entry.decided_by,
                "result": result,
            },
        )
        return self.approvals.get(entry.id)

    async def _settle_interrupted_approvals(self) -> None:
        """A crash between claiming and finishing: executed if the inbox says so, else failed.

        At most once: an interrupted action is never retried by itself; the owner can ask
        again.
        """
        for entry in self.approvals.interrupted():
            record = self.inbox.action(entry.key)
            executed = record is not None and record.status is ActionStatus.EXECUTED
            result = record.result if record is not None and executed else {"error": "interrupted"}
            self.approvals.finish(entry.id, executed, result)
            self.audit.append("approval_settled", {"approval": entry.id, "executed": executed})

    # --- requests from the planner ------------------------------------------------------------

    def register_actions(self, specs: Sequence[ActionSpec]) -> None:
        """Add connector actions (SMTP, Telegram, Slack); the decider sees the same map."""
        for spec in specs:
            self.actions[spec.name] = spec

    async def _on_zone_request(self, zone: Zone, request: ZoneRequest) -> Message:
        if not isinstance(request, ActionRequest) and request.episode_id not in self._episodes:
            self.audit.append(
                "refused", {"zone": zone.name, "episode": request.episode_id, "reason": "llm"}
            )
            return Error(
                id=zone.next_id(),
                reply_to=request.id,
                code="unknown_episode",
                detail="no open episode with that id",
            )
        if not isinstance(request, ActionRequest) and self.llm is not None:
            return await self.llm(request, zone.next_id())
        if not isinstance(request, ActionRequest):
            self.audit.append("llm_refused", {"episode": request.episode_id, "zone": zone.name})
            return Error(
                id=zone.next_id(),
                reply_to=request.id,
                code="llm_unavailable",
                detail="no language-model provider is configured",
            )
        ctx = self._episodes.get(request.episode_id)
        if ctx is None:
            self.audit.append(
                "refused",
                {
                    "zone": zone.name,
                    "episode": request.episode_id,
                    "reason": "no such open episode",
                },
            )
            return Error(
                id=zone.next_id(),
                reply_to=request.id,
                code="unknown_episode",
                detail="no open episode with that id",
            )
        record = await self.decider.decide(ctx, request)
        return to_wire(record, zone.next_id(), request.id)


def _check_writable(directory: Path) -> None:
    """Refuse to start on a state directory that cannot take a write, and say why.

    (SQLite would only say "unable to open database file".)
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=directory)
    except OSError as exc:
        raise StorageError(
            str(directory),
            f"the state directory cannot be written ({exc.strerror}); nothing was changed: "
            "remount it read-write or free space, then start again",
        ) from exc
    os.close(fd)
    os.unlink(probe)


async def run_once(
    loaded: LoadedConfig, backend: Backend, zone_modules: Mapping[str, str] | None = None
) -> list[Outcome]:
    """Start, fetch what is waiting, process every pending message, stop."""
    executor = Executor(loaded, backend, zone_modules)
    try:  # stop() also undoes a start() that failed half-way (decoys, sockets, locks)
        await executor.start()
        await executor.run_approvals()
        executor.ingest()
        return await executor.process_pending()
    finally:
        await executor.stop()
