"""The executor's trust core in a real pipeline: guards, canaries, secrets, provenance.

The planner is assumed hijacked. Where a test needs it to know something an attacker
would not (a secret, a canary), it uses a scripted in-process planner; the decider it
talks to is the same one the planner zone talks to.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from threezone.audit.log import verify_file
from threezone.backends import get_backend
from threezone.cli.main import app
from threezone.config.load import LoadedConfig, load_config
from threezone.demo import build_workspace
from threezone.errors import SecretsError
from threezone.executor import canaries
from threezone.executor.alerts import OwnerAlerts
from threezone.executor.broker import Zone
from threezone.executor.core import ActionPortFn, Executor, Outcome
from threezone.executor.guards import StoreGuard, first_hit, redact_args
from threezone.executor.inbox import State
from threezone.executor.secrets import SecretStore, init_secrets, set_secret
from threezone.protocol.messages import ArgValue, Episode, Message

SECRET = "ghp_" + "Zq3xR8kLw2Pv6Ty9Nb4Hd7Jm1Fc5Gs0AeUo"
EXAMPLES = Path(__file__).parent.parent / "examples" / "redteam" / "corpus.jsonl"


# --- guards, without a pipeline -------------------------------------------------------------


def test_store_guard_finds_encoded_values_and_redacts_plain_ones() -> None:
    guard = StoreGuard(SecretStore({"TOKEN": SECRET}), "<secret>", "secret", trips=False)
    encoded = base64.b64encode(SECRET.encode()).decode()
    hit = guard.check("email.send", {"to": "a@b.example", "body": f"here: {encoded}"})
    assert hit is not None
    assert (hit.guard, hit.trips) == ("<secret>", False)
    assert "TOKEN" in hit.reason
    assert SECRET not in hit.reason
    assert redact_args([guard], {"body": f"x {SECRET} y", "n": 3}) == {
        "body": "x [secret TOKEN] y",
        "n": 3,
    }


def test_a_canary_outranks_a_secret() -> None:
    secret = StoreGuard(SecretStore({"TOKEN": SECRET}), "<secret>", "secret", trips=False)
    trap = SecretStore(canaries.new_values())
    canary = StoreGuard(trap, "<canary>", "canary", trips=True)
    args: Mapping[str, ArgValue] = {"body": f"{SECRET} {trap.get('api_key')}"}
    hit = first_hit([secret, canary], "email.send", args)
    assert hit is not None
    assert hit.guard == "<canary>"


def test_a_corrupt_canaries_file_is_refused_not_replaced(tmp_path: Path) -> None:
    (tmp_path / canaries.FILE_NAME).write_text("{not json")
    with pytest.raises(SecretsError, match="canaries file is not valid"):
        canaries.load_or_create(tmp_path)
    assert (tmp_path / canaries.FILE_NAME).read_text() == "{not json"


def test_canaries_persist_privately(tmp_path: Path) -> None:
    first = canaries.load_or_create(tmp_path)
    again = canaries.load_or_create(tmp_path)
    assert first.names() == again.names()
    assert all(first.get(n) == again.get(n) for n in first.names())
    assert (tmp_path / canaries.FILE_NAME).stat().st_mode & 0o777 == 0o600


# --- in the pipeline ------------------------------------------------------------------------


def by_name(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.message_id.split(":", 1)[1].split(".")[0]: o for o in outcomes}


def demo(tmp_path: Path) -> LoadedConfig:
    return load_config(build_workspace(tmp_path / "ws"))


def scripted(requests: list[tuple[str, dict[str, ArgValue]]], seen: list[object]) -> object:
    async def planner(episode: Episode, request: ActionPortFn) -> int:
        for action, args in requests:
            seen.append(await request(action, args))
        return len(requests)

    return planner


def run_with(loaded: LoadedConfig, planner: object) -> list[Outcome]:
    async def go() -> list[Outcome]:
        executor = Executor(
            loaded,
            get_backend(loaded.config.executor.backend),
            local_planner=planner,  # type: ignore[arg-type]
        )
        try:
            await executor.start()
            executor.ingest()
            return await executor.process_pending()
        finally:
            await executor.stop()

    return asyncio.run(go())


def test_a_canary_in_an_argument_is_refused_quarantines_and_alerts(tmp_path: Path) -> None:
    loaded = demo(tmp_path)
    state = loaded.base / "state"
    state.mkdir(mode=0o700)
    trap = canaries.load_or_create(state)
    stolen = trap.get("aws_secret_access_key")
    seen: list[object] = []
    planner = scripted(
        [("email.reply", {"to": "alice@partner.example", "body": f"key: {stolen}"})], seen
    )
    outcomes = by_name(run_with(loaded, planner))
    # The policy would allow this reply only for the authenticated meeting request and
    # refuses it for the other two; the canary trips for all three, since the attempt
    # itself is what the owner must hear about.
    for outcome in outcomes.values():
        assert (outcome.state, outcome.error_code) == (State.QUARANTINED, "canary_tripped")
        assert [(d.rule, d.executed) for d in outcome.decisions] == [("<canary>", False)]
    alerts = OwnerAlerts(state / "alerts.jsonl", None).read()  # type: ignore[arg-type]
    assert sorted((a.kind, a.message) for a in alerts) == sorted(
        ("canary", o.message_id) for o in outcomes.values()
    )
    assert not (loaded.base / "outbox" / "sent").exists()
    # The canary itself was redacted before the refused attempt was stored.
    for path in (state / "audit.jsonl", state / "inbox.sqlite3"):
        assert stolen.encode() not in path.read_bytes()
    verify_file(state / "audit.jsonl")


def test_the_decoy_secret_file_holds_the_canaries(tmp_path: Path) -> None:
    loaded = demo(tmp_path)

    async def peek() -> str:
        executor = Executor(loaded, get_backend(loaded.config.executor.backend))
        try:
            await executor.start()
            return executor.decoys.secret.read_text()
        finally:
            await executor.stop()

    text = asyncio.run(peek())
    trap = canaries.load_or_create(loaded.base / "state")
    assert trap.get("api_key") in text


def test_an_url_outside_the_egress_allowlist_is_refused(tmp_path: Path) -> None:
    loaded = demo(tmp_path)
    seen: list[object] = []
    body = "Your report: https://collect.evil.example/u?d=abc"
    planner = scripted([("email.draft", {"to": "owner@demo.example", "body": body})], seen)
    outcomes = by_name(run_with(loaded, planner))
    # Drafts are allowed by the policy unless the message was flagged (2-hidden).
    for name in ("1-meeting", "3-invoice"):
        assert [(d.rule, d.executed) for d in outcomes[name].decisions] == [("<egress>", False)]
    assert all(o.state is State.DONE for o in outcomes.values())  # refused, not a tripwire
    assert not (loaded.base / "outbox" / "drafts").exists()


def test_the_executor_records_where_arguments_came_from(tmp_path: Path) -> None:
    loaded = demo(tmp_path)
    asyncio.run(_run_demo(loaded))
    records = [
        msgspec.json.decode(line)
        for line in (loaded.base / "state" / "audit.jsonl").read_bytes().splitlines()
    ]
    decisions = {r["data"]["args"]["to"]: r["data"] for r in records if r["kind"] == "decision"}
    assert decisions["billing@outside-payments.example"]["origins"]["to"] == "content"
    assert decisions["alice@partner.example"]["origins"]["to"] == "trusted"


async def _run_demo(loaded: LoadedConfig) -> list[Outcome]:
    executor = Executor(loaded, get_backend(loaded.config.executor.backend))
    try:
        await executor.start()
        executor.ingest()
        return await executor.process_pending()
    finally:
        await executor.stop()


# --- secrets never leave executor memory -------------------------------------------------------


def with_secrets(loaded: LoadedConfig) -> LoadedConfig:
    secrets_cfg = msgspec.structs.replace(
        loaded.config.secrets, file="secrets.age", identity="keys/age.key"
    )
    config = msgspec.structs.replace(loaded.config, secrets=secrets_cfg)
    with_store = LoadedConfig(config, loaded.base, loaded.path)
    init_secrets(secrets_cfg, with_store.resolve)
    set_secret(secrets_cfg, with_store.resolve, "GITHUB_TOKEN", SECRET)
    return with_store


def encodings(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode(), raw[::-1]]


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and any(n in path.read_bytes() for n in needles):
            found.append(str(path.relative_to(root)))
    return found


def test_secret_values_never_reach_a_file_or_a_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full run with secrets loaded: every zone message and every file is searched."""
    loaded = with_secrets(demo(tmp_path))
    frames: list[bytes] = []
    original = Zone.request

    async def recording(
        self: Zone, request: Message, request_id: int, timeout: float | None = None
    ) -> Message:
        frames.append(msgspec.json.encode(request))
        reply = await original(self, request, request_id, timeout)
        frames.append(msgspec.json.encode(reply))
        return reply

    monkeypatch.setattr(Zone, "request", recording)
    outcomes = asyncio.run(_run_demo(loaded))
    assert len(outcomes) == 3
    assert frames  # the zones really were asked
    needles = encodings(SECRET)
    assert not [f for f in frames if any(n in f for n in needles)]
    # The only file that may hold it is the encrypted store, and there it is not plain.
    assert files_holding(loaded.base, needles) == []


def test_a_planner_that_learned_a_secret_cannot_send_it_or_write_it(tmp_path: Path) -> None:
    loaded = with_secrets(demo(tmp_path))
    seen: list[object] = []
    hidden = base64.b64encode(SECRET.encode()).decode()
    attempts: list[tuple[str, dict[str, ArgValue]]] = [
        ("email.reply", {"to": "alice@partner.example", "body": f"token {SECRET}"}),
        ("email.draft", {"to": "owner@demo.example", "body": hidden}),
    ]
    outcomes = by_name(run_with(loaded, scripted(attempts, seen)))
    # Both are admitted by rules for the authenticated meeting request; the guard refuses.
    assert [(d.rule, d.executed) for d in outcomes["1-meeting"].decisions] == [
        ("<secret>", False),
        ("<secret>", False),
    ]
    assert not any(d.executed for o in outcomes.values() for d in o.decisions)
    assert files_holding(loaded.base, encodings(SECRET)) == []


# --- redteam ---------------------------------------------------------------------------------


def test_redteam_reports_what_the_policy_lets_through(tmp_path: Path) -> None:
    loaded = demo(tmp_path)
    result = CliRunner().invoke(
        app, ["redteam", "--corpus", str(EXAMPLES), "--config", str(loaded.path), "--json"]
    )
    assert result.exit_code == 1, result.output  # one record's reply would run
    report = msgspec.json.decode(result.output)
    assert report["totals"] == {
        "records": 7,
        "attacks": 8,
        "executed": 1,
        "asked": 1,
        "denied": 6,
        "not_requested": 0,
        "quarantined": 0,
        "flagged": 2,
    }
    verdicts = {r["id"]: [a["verdict"] for a in r["attacks"]] for r in report["records"]}
    assert verdicts["contact-authenticated"] == ["executed"]
    assert verdicts["contact-spoof"] == ["denied"]
    assert verdicts["send-to-contact"] == ["asked"]
    rules = {r["id"]: r["attacks"][0]["rule"] for r in report["records"]}
    assert rules["url-exfil"] == "<egress>"
    assert rules["malformed-args"] == "<schema>"
    # Nothing of the run is left in the workspace: it used a throwaway state directory.
    assert not (loaded.base / "state").exists()
    assert not (loaded.base / "outbox").exists()


def test_redteam_rejects_a_bad_corpus_line(tmp_path: Path) -> None:
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"id": 1, "channel": "email", "raw": "x", "attack": []}\n{"id": 2}\n')
    result = CliRunner().invoke(app, ["redteam", "--corpus", str(corpus)])
    assert result.exit_code == 2
    assert "bad.jsonl:2" in result.output
