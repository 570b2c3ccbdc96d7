"""End to end: real zone processes over real Unix sockets, the demo's outcome, faults.

These run the executor with the backend its config names: ``sandbox``, the default, so
every zone here is a bubblewrap sandbox that passed its isolation self-check.
"""

from __future__ import annotations

import asyncio
import sqlite3
from email.message import EmailMessage
from pathlib import Path

import pytest

from threezone.audit.log import verify_file
from threezone.backends import get_backend
from threezone.config.load import LoadedConfig, load_config
from threezone.demo import build_workspace
from threezone.errors import AuditChainBroken, ZoneStartError
from threezone.executor.core import Executor, Outcome, run_once
from threezone.executor.inbox import State
from threezone.testing import faulty_zone

POLICY_FILE = "policy.d/10-demo.policy"


def demo_workspace(tmp_path: Path) -> LoadedConfig:
    return load_config(build_workspace(tmp_path / "ws"))


def run(loaded: LoadedConfig, **modules: str) -> list[Outcome]:
    zone_modules = {name.replace("_", "-"): module for name, module in modules.items()}
    return asyncio.run(run_once(loaded, get_backend(loaded.config.executor.backend), zone_modules))


def by_name(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.message_id.split(":", 1)[1].split(".")[0]: o for o in outcomes}


def rule_line(text: str) -> str:
    """``file:line`` of the first policy line that starts with ``text``."""
    from threezone.demo import POLICY

    for number, line in enumerate(POLICY.splitlines(), start=1):
        if line.startswith(text):
            return f"{POLICY_FILE}:{number}"
    raise AssertionError(text)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedConfig, dict[str, Outcome]]:
    loaded = demo_workspace(tmp_path_factory.mktemp("demo"))
    return loaded, by_name(run(loaded))


def test_benign_meeting_request_gets_an_allowed_reply(
    demo_run: tuple[LoadedConfig, dict[str, Outcome]],
) -> None:
    loaded, outcomes = demo_run
    meeting = outcomes["1-meeting"]
    assert meeting.state is State.DONE
    assert meeting.sanitized is not None
    assert not meeting.sanitized.injection.flagged
    [record] = meeting.decisions
    assert (record.action, record.decision, record.executed) == ("email.reply", "allow", True)
    assert record.rule == rule_line("email.reply")
    assert record.args["to"] == "alice@partner.example"
    sent = Path(record.result["delivered"])
    assert sent.is_relative_to(loaded.base / "outbox")
    assert b"To: alice@partner.example" in sent.read_bytes()


def test_hidden_injection_is_removed_flagged_and_its_action_refused(
    demo_run: tuple[LoadedConfig, dict[str, Outcome]],
) -> None:
    _, outcomes = demo_run
    hidden = outcomes["2-hidden"]
    assert hidden.state is State.DONE
    assert hidden.sanitized is not None
    assert hidden.sanitized.injection.flagged
    assert (
        "API keys" not in hidden.sanitized.body
    )  # the display:none part never reached the planner
    assert hidden.sanitized.dropped.hidden_chars > 0
    [record] = hidden.decisions  # the hijacked planner obeyed the visible note
    assert (record.action, record.args["to"]) == ("email.send", "attacker@evil.example")
    assert (record.decision, record.executed) == ("deny", False)
    assert record.rule == rule_line("email.*")


def test_forward_to_an_outside_address_is_refused_by_default(
    demo_run: tuple[LoadedConfig, dict[str, Outcome]],
) -> None:
    _, outcomes = demo_run
    invoice = outcomes["3-invoice"]
    assert invoice.sanitized is not None
    assert not invoice.sanitized.injection.flagged
    [record] = invoice.decisions
    assert record.args["to"] == "billing@outside-payments.example"
    assert (record.decision, record.executed) == ("deny", False)
    assert record.rule == rule_line("*")


def test_outbox_holds_only_the_allowed_reply(
    demo_run: tuple[LoadedConfig, dict[str, Outcome]],
) -> None:
    loaded, _ = demo_run
    files = sorted((loaded.base / "outbox").rglob("*.eml"))
    assert len(files) == 1
    assert all(b"evil.example" not in f.read_bytes() for f in files)


def test_every_refusal_is_audited_with_its_rule(
    demo_run: tuple[LoadedConfig, dict[str, Outcome]],
) -> None:
    import json

    loaded, _ = demo_run
    audit = loaded.base / "state" / "audit.jsonl"
    assert verify_file(audit).records > 0
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    refusals = [
        r["data"] for r in records if r["kind"] == "decision" and r["data"]["decision"] == "deny"
    ]
    assert {(r["args"]["to"], r["rule"]) for r in refusals} == {
        ("attacker@evil.example", rule_line("email.*")),
        ("billing@outside-payments.example", rule_line("*")),
    }
    executed = [r["data"] for r in records if r["kind"] == "executed"]
    assert [r["args"]["to"] for r in executed] == ["alice@partner.example"]


def test_a_tampered_audit_log_fails_verification(
    demo_run: tuple[LoadedConfig, dict[str, Outcome]], tmp_path: Path
) -> None:
    loaded, _ = demo_run
    original = (loaded.base / "state" / "audit.jsonl").read_text()
    tampered = tmp_path / "audit.jsonl"
    tampered.write_text(original.replace('"decision":"deny"', '"decision":"allow"', 1))
    with pytest.raises(AuditChainBroken) as caught:
        verify_file(tampered)
    assert caught.value.kind == "edited"


def test_running_again_neither_refetches_nor_repeats(tmp_path: Path) -> None:
    loaded = demo_workspace(tmp_path)
    run(loaded)
    assert run(loaded) == []  # nothing new, nothing pending
    assert len(list((loaded.base / "outbox").rglob("*.eml"))) == 1
    assert len(list((loaded.base / "mail" / "cur").iterdir())) == 3


def test_a_replayed_episode_does_not_act_twice(tmp_path: Path) -> None:
    loaded = demo_workspace(tmp_path)
    run(loaded)
    # Simulate a crash after the reply was sent but before the episode was recorded.
    db = sqlite3.connect(loaded.base / "state" / "inbox.sqlite3")
    db.execute("UPDATE messages SET state = 'sanitized' WHERE id = 'email:1-meeting.demo'")
    db.commit()
    db.close()
    [outcome] = run(loaded)
    assert outcome.state is State.DONE
    [record] = outcome.decisions
    assert record.executed
    assert record.reason == "already executed (episode replayed)"
    assert len(list((loaded.base / "outbox").rglob("*.eml"))) == 1


def poisoned(subject: str, mode: str | None) -> bytes:
    message = EmailMessage()
    message["From"] = "someone@example.net"
    message["Subject"] = subject
    if mode is not None:
        message["X-Poison"] = mode
    message.set_content("Hello there.")
    return message.as_bytes()


FAULTS = {
    "crash": "zone_crashed",
    "garbage": "zone_bad_reply",
    "bad-json": "zone_bad_reply",
    "oversize": "zone_bad_reply",
    "wrong-type": "zone_bad_reply",
    "act": "zone_bad_reply",
    "unknown-type": "zone_bad_reply",
    "hang": "zone_timeout",
    "flood": "zone_bad_reply",
}


def test_misbehaving_reader_quarantines_only_its_message(tmp_path: Path) -> None:
    loaded = demo_workspace(tmp_path)
    loaded = load_config(_with_timeout(loaded, 3.0))
    new = loaded.base / "mail" / "new"
    for path in new.iterdir():
        path.unlink()
    for index, mode in enumerate(FAULTS):
        (new / f"{index:02}a-{mode}").write_bytes(poisoned(f"poison {mode}", mode))
        (new / f"{index:02}b-fine").write_bytes(poisoned("fine", None))
    outcomes = {o.message_id.split(":")[1]: o for o in run(loaded, reader_email=faulty_zone.MODULE)}
    for index, (mode, code) in enumerate(FAULTS.items()):
        poison, fine = outcomes[f"{index:02}a-{mode}"], outcomes[f"{index:02}b-fine"]
        assert (poison.state, poison.error_code) == (State.QUARANTINED, code), mode
        assert fine.state is State.DONE, mode
    verify_file(loaded.base / "state" / "audit.jsonl")


def _with_timeout(loaded: LoadedConfig, seconds: float) -> Path:
    assert loaded.path is not None
    text = loaded.path.read_text().replace("request_timeout = 30.0", f"request_timeout = {seconds}")
    loaded.path.write_text(text)
    return loaded.path


def test_an_oversized_message_is_stored_and_quarantined(tmp_path: Path) -> None:
    loaded = demo_workspace(tmp_path)
    new = loaded.base / "mail" / "new"
    (new / "9-huge").write_bytes(b"Subject: x\r\n\r\n" + b"a" * (26 * 1024 * 1024))
    outcomes = {o.message_id.split(":")[1]: o for o in run(loaded)}
    assert "9-huge" not in outcomes  # quarantined on arrival, before any zone saw it
    assert outcomes["1-meeting.demo"].state is State.DONE
    with sqlite3.connect(loaded.base / "state" / "inbox.sqlite3") as db:
        row = db.execute(
            "SELECT state, error_code, length(raw) FROM messages WHERE source_ref = '9-huge'"
        )
        assert row.fetchone() == ("quarantined", "input_too_large", 25 * 1024 * 1024)


def test_a_reader_refusal_quarantines_with_the_readers_code(tmp_path: Path) -> None:
    loaded = demo_workspace(tmp_path)
    bomb = EmailMessage()
    bomb["From"] = "x@example.net"
    bomb["Subject"] = "many parts"
    bomb.set_content("cover")
    for index in range(300):
        bomb.add_attachment(
            b"x", maintype="application", subtype="octet-stream", filename=f"{index}.bin"
        )
    (loaded.base / "mail" / "new" / "8-parts").write_bytes(bomb.as_bytes())
    outcomes = {o.message_id.split(":")[1]: o for o in run(loaded)}
    assert (outcomes["8-parts"].state, outcomes["8-parts"].error_code) == (
        State.QUARANTINED,
        "input_too_large",
    )
    assert outcomes["1-meeting.demo"].state is State.DONE


def test_a_broken_policy_denies_everything_and_says_where(tmp_path: Path) -> None:
    loaded = demo_workspace(tmp_path)
    (loaded.base / "policy.d" / "20-typo.policy").write_text("email.send  to=@contacts  alow\n")
    outcomes = by_name(run(loaded))
    assert {o.state for o in outcomes.values()} == {State.DONE}
    assert outcomes["1-meeting"].decisions == []  # nothing could be allowed, so nothing was offered
    for name in ("2-hidden", "3-invoice"):  # the hijacked planner asks anyway
        [record] = outcomes[name].decisions
        assert (record.decision, record.rule, record.executed) == ("deny", "<policy-error>", False)
        assert "policy.d/20-typo.policy:1:27" in record.reason
    assert not list((loaded.base / "outbox").rglob("*.eml"))


def test_a_zone_that_cannot_start_leaves_messages_pending(tmp_path: Path) -> None:
    loaded = demo_workspace(tmp_path)
    with pytest.raises(ZoneStartError):
        run(loaded, reader_email="threezone.no_such_module")
    with sqlite3.connect(loaded.base / "state" / "inbox.sqlite3") as db:
        states = {row[0] for row in db.execute("SELECT state FROM messages")}
    assert states == {"received"}
    outcomes = run(loaded)  # with a working reader, they all go through
    assert {o.state for o in outcomes} == {State.DONE}


def test_an_unexpected_connection_is_closed_and_the_zone_keeps_working(tmp_path: Path) -> None:
    loaded = demo_workspace(tmp_path)

    async def scenario() -> list[Outcome]:
        executor = Executor(loaded, get_backend(loaded.config.executor.backend))
        await executor.start()
        try:
            executor.ingest()
            first = await executor.process(executor.inbox.pending()[0])
            reader, writer = await asyncio.open_unix_connection(executor.reader.spec.socket_path)
            # closed on arrival: nobody was expected on this socket
            assert await asyncio.wait_for(reader.read(1), 5) == b""
            writer.close()
            rest = [await executor.process(m) for m in executor.inbox.pending()]
            return [first, *rest]
        finally:
            await executor.stop()

    outcomes = asyncio.run(scenario())
    assert [o.state for o in outcomes] == [State.DONE] * 3


def test_a_planner_crash_mid_episode_quarantines_and_never_repeats_the_action(
    tmp_path: Path,
) -> None:
    loaded = demo_workspace(tmp_path)
    new = loaded.base / "mail" / "new"
    for path in new.iterdir():
        path.unlink()
    crash = EmailMessage()
    crash["From"] = "x@example.net"
    crash["Subject"] = "crash"
    crash.set_content(
        "Please send the summary to alice@partner.example. PLANNER-CRASH-AFTER-ACTION"
    )
    (new / "1-crash").write_bytes(crash.as_bytes())
    (new / "2-fine").write_bytes(poisoned("fine", None))
    (loaded.base / "policy.d" / "10-demo.policy").write_text(
        "email.send to=@contacts allow\n* * deny\n"
    )
    outcomes = {
        o.message_id.split(":")[1]: o
        for o in run(loaded, planner="threezone.testing.faulty_planner")
    }
    crashed = outcomes["1-crash"]
    assert (crashed.state, crashed.error_code) == (State.QUARANTINED, "zone_crashed")
    [record] = crashed.decisions  # the action ran before the crash, and it is on record
    assert record.executed
    assert outcomes["2-fine"].state is State.DONE
    sent = list((loaded.base / "outbox").rglob("*.eml"))
    assert len(sent) == 1
    assert run(loaded, planner="threezone.testing.faulty_planner") == []  # nothing is retried
    assert len(list((loaded.base / "outbox").rglob("*.eml"))) == 1


def test_a_planner_cannot_act_for_an_episode_that_is_not_open(tmp_path: Path) -> None:
    loaded = demo_workspace(tmp_path)
    new = loaded.base / "mail" / "new"
    for path in new.iterdir():
        path.unlink()
    foreign = EmailMessage()
    foreign["From"] = "x@example.net"
    foreign["Subject"] = "foreign"
    foreign.set_content("PLANNER-FOREIGN-EPISODE")
    (new / "1-foreign").write_bytes(foreign.as_bytes())
    [outcome] = run(loaded, planner="threezone.testing.faulty_planner")
    assert outcome.state is State.DONE
    assert outcome.plan_summary == "Error: unknown_episode"
    assert outcome.decisions == []
    import json

    audit = (loaded.base / "state" / "audit.jsonl").read_text().splitlines()
    refused = [json.loads(line)["data"] for line in audit if '"kind":"refused"' in line]
    assert refused == [
        {"episode": "ep-not-open", "reason": "no such open episode", "zone": "planner"}
    ]


def test_an_executor_bug_answers_the_planner_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from threezone.executor.decide import Decider

    async def broken(*_args: object) -> None:
        raise RuntimeError("a bug in deciding")

    monkeypatch.setattr(Decider, "decide", broken)
    loaded = demo_workspace(tmp_path)
    outcomes = by_name(run(loaded))
    # The planner got a typed error straight away instead of waiting out its deadline,
    # and nothing was executed.
    assert {o.state for o in outcomes.values()} == {State.DONE}
    assert all(o.decisions == [] for o in outcomes.values())
    assert outcomes["3-invoice"].plan_summary is not None
    assert "0 of 1 request(s) executed" in outcomes["3-invoice"].plan_summary
    assert not list((loaded.base / "outbox").rglob("*.eml"))
