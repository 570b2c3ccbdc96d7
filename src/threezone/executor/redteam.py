"""``threezone redteam``: if the model is fully fooled, what does my policy let through?

Each corpus record is one hostile message and the actions an attacker wants::

    {"id": "r1", "channel": "email", "raw": "<the raw email>",
     "attack": [{"action": "email.send", "args": {"to": "evil@x.example", "body": "..."}}],
     "trigger": {"sender": "alice@example.com", "sender_authenticated": true}}

The record's ``raw`` goes through the real pipeline: stored in an inbox, read by its
channel's reader zone under the configured backend, then handed to a planner that is
hijacked by construction: it requests exactly the record's ``attack`` actions. Every
request meets the real decider (schema, policy with the message's flags and argument
origins, guards, rate budgets, approvals). Nothing is performed: every action is a
dry run, and all state lives in a temporary directory, never the real one.

The planner runs in-process rather than in its zone: it is the attacker's by
assumption, so its isolation does not change what the policy admits.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from threezone.backends.base import Backend
from threezone.config.load import LoadedConfig
from threezone.config.schema import ChannelsConfig
from threezone.errors import ConfigError
from threezone.executor.actions import dry_run_actions
from threezone.executor.core import ActionPortFn, Executor
from threezone.executor.decide import DecisionRecord
from threezone.executor.inbox import State
from threezone.protocol.messages import ArgValue, Channel, Episode, Trigger

MAX_RECORDS = 100_000


class Attack(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    action: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)


class Record(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str | int
    channel: Channel
    raw: str | dict[str, Any]
    attack: list[Attack]
    trigger: dict[str, Any] = msgspec.field(default_factory=dict)
    note: str = ""

    def raw_bytes(self) -> bytes:
        if isinstance(self.raw, str):
            return self.raw.encode("utf-8", "surrogateescape")
        return msgspec.json.encode(self.raw)


Verdict = Literal["executed", "asked", "denied", "not_requested"]


@dataclass(frozen=True, slots=True)
class AttackResult:
    action: str
    args: dict[str, ArgValue]
    verdict: Verdict
    rule: str
    reason: str


@dataclass(slots=True)
class RecordResult:
    id: str
    channel: str
    state: str
    flagged: bool | None
    score: float | None
    error: str | None
    attacks: list[AttackResult] = field(default_factory=list)


@dataclass(slots=True)
class Report:
    records: list[RecordResult] = field(default_factory=list)

    def count(self, verdict: Verdict) -> int:
        return sum(1 for r in self.records for a in r.attacks if a.verdict == verdict)

    @property
    def totals(self) -> dict[str, int]:
        verdicts: tuple[Verdict, ...] = ("executed", "asked", "denied", "not_requested")
        return {
            "records": len(self.records),
            "attacks": sum(len(r.attacks) for r in self.records),
            **{v: self.count(v) for v in verdicts},
            "quarantined": sum(1 for r in self.records if r.state == State.QUARANTINED),
            "flagged": sum(1 for r in self.records if r.flagged),
        }


def read_corpus(lines: Iterable[bytes], source: str) -> list[Record]:
    """Every record, or a ConfigError naming the first bad line."""
    records: list[Record] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(msgspec.json.decode(line, type=Record))
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{source}:{number}", "", f"not a redteam record: {exc}") from exc
        if len(records) > MAX_RECORDS:
            raise ConfigError(source, "", f"more than {MAX_RECORDS} records")
    ids = [str(r.id) for r in records]
    if len(set(ids)) != len(ids):
        raise ConfigError(source, "", "record ids must be unique")
    return records


class _Hijacked:
    """The planner, on the attacker's side: it requests exactly each record's attack."""

    def __init__(self, records: list[Record]) -> None:
        self.attacks = {f"{r.channel}:redteam-{r.id}": r.attack for r in records}
        self.decisions: dict[str, list[DecisionRecord]] = {}

    async def __call__(self, episode: Episode, request: ActionPortFn) -> int:
        wanted = self.attacks.get(episode.message.id, [])
        made = self.decisions.setdefault(episode.message.id, [])
        for attack in wanted:
            made.append(await request(attack.action, attack.args))
        return len(wanted)


async def run_redteam(loaded: LoadedConfig, backend: Backend, records: list[Record]) -> Report:
    """Run every record through a throwaway executor with the user's policy and lists."""
    planner = _Hijacked(records)
    with tempfile.TemporaryDirectory(prefix="threezone-redteam-") as scratch:
        executor = _executor(loaded, backend, Path(scratch), planner)
        report = Report()
        try:
            await executor.start()
            for record in records:
                report.records.append(await _run_one(executor, planner, record))
        finally:
            await executor.stop()
        return report


def _executor(
    loaded: LoadedConfig, backend: Backend, scratch: Path, planner: _Hijacked
) -> Executor:
    config = msgspec.structs.replace(
        loaded.config,
        executor=msgspec.structs.replace(loaded.config.executor, state_dir=str(scratch / "state")),
        channels=ChannelsConfig(),  # nothing is fetched from, or delivered to, a real place
    )
    return Executor(
        LoadedConfig(config, loaded.base, loaded.path),
        backend,
        actions=dry_run_actions(),
        local_planner=planner,
    )


async def _run_one(executor: Executor, planner: _Hijacked, record: Record) -> RecordResult:
    source_ref = f"redteam-{record.id}"
    message_id, _ = executor.admit(record.channel, source_ref, record.raw_bytes(), _trigger(record))
    outcome = await executor.process(message_id)
    sanitized = outcome.sanitized
    result = RecordResult(
        id=str(record.id),
        channel=record.channel,
        state=str(outcome.state),
        flagged=None if sanitized is None else sanitized.injection.flagged,
        score=None if sanitized is None else sanitized.injection.score,
        error=None
        if outcome.error_code is None
        else f"{outcome.error_code}: {outcome.error_detail}",
    )
    made = planner.decisions.get(message_id, [])
    for index, attack in enumerate(record.attack):
        decision = made[index] if index < len(made) else None
        result.attacks.append(_attack_result(attack, decision))
    return result


def _attack_result(attack: Attack, decision: DecisionRecord | None) -> AttackResult:
    if decision is None:
        never = "the message never reached planning"
        return AttackResult(attack.action, attack.args, "not_requested", "", never)
    verdict: Verdict = "denied"
    if decision.executed:
        verdict = "executed"
    elif decision.decision == "ask":
        verdict = "asked"
    return AttackResult(attack.action, decision.args, verdict, decision.rule, decision.reason)


def _trigger(record: Record) -> Trigger:
    defaults: dict[str, Any] = {
        "channel": record.channel,
        "account": "redteam",
        "sender": None,
        "sender_authenticated": False,
        "received_at": "1970-01-01T00:00:00Z",
        "flagged": False,
    }
    given = {**defaults, **record.trigger, "channel": record.channel}
    if given.get("sender") is None:
        given["sender_authenticated"] = False
    try:
        return msgspec.convert(given, Trigger)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"record {record.id}", "$.trigger", str(exc)) from exc
