"""The approval queue: durable, bound to the exact action, expiring, run at most once."""

from __future__ import annotations

import asyncio
import sqlite3
from email.message import EmailMessage
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from threezone.audit.log import verify_file
from threezone.backends import get_backend
from threezone.cli.main import app
from threezone.config.load import LoadedConfig, load_config
from threezone.demo import AUTHSERV_ID, build_workspace
from threezone.errors import ApprovalError
from threezone.executor.approvals import (
    ApprovalQueue,
    ApprovalStatus,
    Request,
    action_digest,
)
from threezone.executor.core import Executor, run_once
from threezone.protocol.messages import Trigger

TRIGGER = Trigger(
    channel="email",
    account="me@example.com",
    sender=None,
    sender_authenticated=False,
    received_at="2026-01-01T00:00:00Z",
    flagged=True,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def request(key: str = "k1", to: str = "bob@example.com") -> Request:
    return Request(
        key=key,
        message_id="email:1",
        episode_id="ep-email:1",
        action="email.send",
        args={"to": to, "body": "hello"},
        untrusted_args=["to"],
        trigger=TRIGGER,
        rule="policy.d/10.policy:4",
        reason="matched: ask",
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> ApprovalQueue:
    return ApprovalQueue.open(tmp_path / "approvals.sqlite3", clock)


def test_queued_entry_keeps_the_exact_action_and_what_came_from_content(
    queue: ApprovalQueue,
) -> None:
    entry = queue.enqueue(request(), 3600)
    assert (entry.status, entry.action, entry.args) == (
        ApprovalStatus.PENDING,
        "email.send",
        {"to": "bob@example.com", "body": "hello"},
    )
    assert entry.untrusted_args == ["to"]
    assert entry.trigger == TRIGGER
    assert entry.digest == action_digest("k1", "email.send", entry.args)
    assert entry.intact()


def test_queuing_the_same_action_again_returns_the_first_entry(queue: ApprovalQueue) -> None:
    first = queue.enqueue(request(), 3600)
    again = queue.enqueue(request(), 3600)
    assert again.id == first.id
    assert len(queue.entries()) == 1


def test_approve_then_claim_runs_once(queue: ApprovalQueue) -> None:
    entry = queue.enqueue(request(), 3600)
    approved = queue.approve(entry.id, "owner", entry.short_digest)
    assert (approved.status, approved.decided_by) == (ApprovalStatus.APPROVED, "owner")
    claimed = queue.claim()
    assert claimed is not None
    assert claimed.id == entry.id
    assert queue.claim() is None  # claimed once, never again
    queue.finish(entry.id, True, {"delivered": "x"})
    assert queue.get(entry.id).status is ApprovalStatus.EXECUTED
    assert queue.get(entry.id).result == {"delivered": "x"}


def test_denied_entry_never_runs(queue: ApprovalQueue) -> None:
    entry = queue.enqueue(request(), 3600)
    queue.deny(entry.id, "owner", "no thanks")
    assert queue.claim() is None
    assert queue.get(entry.id).note == "no thanks"
    with pytest.raises(ApprovalError, match="is denied, not pending"):
        queue.approve(entry.id, "owner")


def test_a_wrong_digest_is_refused(queue: ApprovalQueue) -> None:
    entry = queue.enqueue(request(), 3600)
    other = queue.enqueue(request("k2", "eve@example.com"), 3600)
    with pytest.raises(ApprovalError, match="not the one you were shown"):
        queue.approve(entry.id, "owner", other.short_digest)
    with pytest.raises(ApprovalError, match="not the one you were shown"):
        queue.approve(entry.id, "owner", entry.digest[:4])  # too short to bind anything
    assert queue.get(entry.id).status is ApprovalStatus.PENDING


def test_an_entry_edited_after_queuing_cannot_be_approved(
    queue: ApprovalQueue, tmp_path: Path
) -> None:
    entry = queue.enqueue(request(), 3600)
    db = sqlite3.connect(tmp_path / "approvals.sqlite3")
    swapped = msgspec.json.encode({"to": "eve@evil.example", "body": "hello"})
    db.execute("UPDATE approvals SET args = ? WHERE id = ?", (swapped, entry.id))
    db.commit()
    db.close()
    with pytest.raises(ApprovalError, match="changed after it was queued"):
        queue.approve(entry.id, "owner")
    assert not queue.get(entry.id).intact()


def test_entries_expire(queue: ApprovalQueue, clock: Clock) -> None:
    pending = queue.enqueue(request("k1"), 60)
    approved = queue.enqueue(request("k2", "x@example.com"), 60)
    queue.approve(approved.id, "owner")
    clock.now += 61
    assert {e.id for e in queue.expire()} == {pending.id, approved.id}
    assert queue.claim() is None  # approved too late to run
    with pytest.raises(ApprovalError, match="is expired"):
        queue.approve(pending.id, "owner")


def test_unknown_id(queue: ApprovalQueue) -> None:
    with pytest.raises(ApprovalError, match="no approval #42"):
        queue.get(42)


def test_ask_budget_counts_queued_entries(queue: ApprovalQueue, clock: Clock) -> None:
    queue.enqueue(request("k1"), 60)
    clock.now += 10
    queue.enqueue(request("k2", "x@example.com"), 60)
    rule = "policy.d/10.policy:4"
    assert queue.queued_since(rule, clock.now - 5) == 1
    assert queue.queued_since(rule, clock.now - 60) == 2


def test_the_database_is_private(queue: ApprovalQueue) -> None:
    assert queue.path.stat().st_mode & 0o077 == 0


# --- through the executor ---------------------------------------------------------------------


def _ask_mail(loaded: LoadedConfig) -> None:
    """A message whose hijacked plan is ``email.send`` to a contact: the demo policy asks."""
    message = EmailMessage()
    message["Authentication-Results"] = f"{AUTHSERV_ID}; dmarc=none"
    message["From"] = "dave@unknown.example"
    message["To"] = "owner@demo.example"
    message["Subject"] = "Agenda"
    message["Message-ID"] = "<agenda@unknown.example>"
    message.set_content("Please send the agenda to bob@partner.example before Monday.")
    (loaded.base / "mail" / "new" / "9-agenda.eml").write_bytes(bytes(message))


def _workspace(tmp_path: Path) -> LoadedConfig:
    loaded = load_config(build_workspace(tmp_path / "ws"))
    for old in (loaded.base / "mail" / "new").iterdir():
        old.unlink()
    _ask_mail(loaded)
    return loaded


def _executor_cycle(loaded: LoadedConfig) -> None:
    asyncio.run(run_once(loaded, get_backend(loaded.config.executor.backend)))


def test_ask_queues_then_approval_runs_exactly_once(tmp_path: Path) -> None:
    loaded = _workspace(tmp_path)
    _executor_cycle(loaded)
    state = loaded.base / "state"
    queue = ApprovalQueue.open(state / "approvals.sqlite3")
    [entry] = queue.entries()
    assert (entry.action, entry.args["to"], entry.status) == (
        "email.send",
        "bob@partner.example",
        ApprovalStatus.PENDING,
    )
    # The address is in the body, but it is also a configured contact: trusted wins.
    assert entry.untrusted_args == []
    sent = loaded.base / "outbox" / "sent"
    assert not sent.exists() or not any(sent.iterdir())  # nothing ran yet

    queue.approve(entry.id, "test-owner", entry.short_digest)
    _executor_cycle(loaded)
    _executor_cycle(loaded)  # a second cycle must not run it again
    done = queue.get(entry.id)
    assert done.status is ApprovalStatus.EXECUTED
    assert len(list(sent.iterdir())) == 1
    records = [line for line in (state / "audit.jsonl").read_text().splitlines() if line]
    assert sum('"approved_executed"' in line for line in records) == 1
    assert sum('"approval_queued"' in line for line in records) == 1
    verify_file(state / "audit.jsonl")


def test_an_interrupted_approval_is_settled_not_retried(tmp_path: Path) -> None:
    loaded = _workspace(tmp_path)
    _executor_cycle(loaded)
    queue = ApprovalQueue.open(loaded.base / "state" / "approvals.sqlite3")
    [entry] = queue.entries()
    queue.approve(entry.id, "owner")
    assert queue.claim() is not None  # as if the executor died right after claiming

    async def start_and_stop() -> None:
        executor = Executor(loaded, get_backend(loaded.config.executor.backend))
        try:
            await executor.start()
        finally:
            await executor.stop()

    asyncio.run(start_and_stop())
    settled = queue.get(entry.id)
    assert settled.status is ApprovalStatus.FAILED
    assert settled.result == {"error": "interrupted"}
    assert not (loaded.base / "outbox" / "sent").exists()


def test_cli_lists_shows_and_approves(tmp_path: Path) -> None:
    loaded = _workspace(tmp_path)
    _executor_cycle(loaded)
    config = str(loaded.path)
    runner = CliRunner()
    listed = runner.invoke(app, ["approvals", "list", "--config", config, "--json"])
    assert listed.exit_code == 0, listed.output
    [shown] = msgspec.json.decode(listed.output)
    assert shown["args"]["to"] == "bob@partner.example"
    digest = shown["digest"][:16]
    wrong = runner.invoke(
        app, ["approvals", "approve", "1", "--digest", "00000000", "--yes", "--config", config]
    )
    assert wrong.exit_code == 1
    assert "not the one you were shown" in wrong.output
    ok = runner.invoke(
        app, ["approvals", "approve", "1", "--digest", digest, "--yes", "--config", config]
    )
    assert ok.exit_code == 0, ok.output
    again = runner.invoke(app, ["approvals", "deny", "1", "--config", config])
    assert again.exit_code == 1
    assert "is approved, not pending" in again.output
    _executor_cycle(loaded)
    queue = ApprovalQueue.open(loaded.base / "state" / "approvals.sqlite3")
    assert queue.get(1).status is ApprovalStatus.EXECUTED
