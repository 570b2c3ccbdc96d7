"""The durable inbox: idempotent receipt, forward-only states, action bookkeeping."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from threezone.errors import InboxError
from threezone.executor.inbox import ActionStatus, Inbox, State
from threezone.protocol.messages import Injection, SanitizedMessage, Trigger

TRIGGER = Trigger(
    channel="email",
    account="me@x",
    sender=None,
    sender_authenticated=False,
    received_at="2026-11-28T00:00:00+00:00",
    flagged=False,
)


def sanitized(message_id: str) -> SanitizedMessage:
    return SanitizedMessage(
        channel="email",
        id=message_id,
        sender="a@b",
        subject="s",
        body="b",
        links=[],
        attachments=[],
        sanitized=True,
        injection=Injection(flagged=False, score=0.0, reasons=[]),
    )


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    return Inbox.open(tmp_path / "inbox.sqlite3")


def test_receive_is_idempotent(inbox: Inbox) -> None:
    first = inbox.receive("email", "k1", b"raw", TRIGGER)
    again = inbox.receive("email", "k1", b"other", TRIGGER)
    assert first == ("email:k1", True)
    assert again == ("email:k1", False)
    assert inbox.raw("email:k1") == b"raw"


def test_states_move_forward_only(inbox: Inbox) -> None:
    message_id, _ = inbox.receive("email", "k1", b"raw", TRIGGER)
    with pytest.raises(InboxError, match="is received, cannot move to planned"):
        inbox.mark_planned(message_id, "x")
    inbox.mark_sanitized(message_id, sanitized(message_id))
    inbox.mark_planned(message_id, "summary")
    inbox.mark_done(message_id)
    item = inbox.get(message_id)
    assert (item.state, item.summary, item.sanitized) == (
        State.DONE,
        "summary",
        sanitized(message_id),
    )
    with pytest.raises(InboxError):
        inbox.quarantine(message_id, "x", "y")


def test_quarantine_keeps_the_raw_message_and_the_reason(inbox: Inbox) -> None:
    message_id, _ = inbox.receive("email", "k1", b"raw bytes", TRIGGER)
    inbox.quarantine(message_id, "zone_crashed", "reader died")
    item = inbox.get(message_id)
    assert (item.state, item.error_code, item.error_detail) == (
        State.QUARANTINED,
        "zone_crashed",
        "reader died",
    )
    assert inbox.raw(message_id) == b"raw bytes"
    assert inbox.pending() == []


def test_pending_lists_unfinished_in_arrival_order(inbox: Inbox) -> None:
    ids = [inbox.receive("email", f"k{i}", b"r", TRIGGER)[0] for i in range(3)]
    inbox.quarantine(ids[1], "x", "y")
    assert inbox.pending() == [ids[0], ids[2]]


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "inbox.sqlite3"
    first = Inbox.open(path)
    message_id, _ = first.receive("email", "k1", b"raw", TRIGGER)
    first.mark_sanitized(message_id, sanitized(message_id))
    first.close()
    second = Inbox.open(path)
    assert second.get(message_id).state is State.SANITIZED
    assert second.counts()[State.SANITIZED] == 1


def test_actions_and_rate_counting(inbox: Inbox) -> None:
    message_id, _ = inbox.receive("email", "k1", b"raw", TRIGGER)
    inbox.record_decision(
        "key1", message_id, action="email.send", args=b"{}", decision="allow", rule="p:3"
    )
    assert inbox.action("key1") is not None
    assert inbox.executed_since("p:3", 0) == 0  # decided is not executed
    inbox.record_outcome("key1", ActionStatus.EXECUTED, {"delivered": "x"})
    record = inbox.action("key1")
    assert record is not None
    assert record.status is ActionStatus.EXECUTED
    assert record.result == {"delivered": "x"}
    assert inbox.executed_since("p:3", time.time() - 60) == 1
    assert inbox.executed_since("p:3", time.time() + 60) == 0
    assert inbox.executed_since("p:4", 0) == 0


def test_a_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "inbox.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(InboxError, match="cannot open the inbox database"):
        Inbox.open(path)


def test_receipts_and_decisions_commit_with_full_sync(inbox: Inbox) -> None:
    seen: list[str] = []
    inbox._db.set_trace_callback(seen.append)
    message_id, _ = inbox.receive("email", "k1", b"raw", TRIGGER)
    inbox.record_decision("k", message_id, action="a.b", args=b"{}", decision="deny", rule="r")
    inbox.mark_sanitized(message_id, sanitized(message_id))
    full = [i for i, sql in enumerate(seen) if sql == "PRAGMA synchronous=FULL"]
    commits = [i for i, sql in enumerate(seen) if sql == "COMMIT"]
    assert len(full) == 2  # receive and record_decision, not mark_sanitized
    assert all(any(f < c for f in full) for c in commits[:2])
    assert seen[-1] != "PRAGMA synchronous=FULL"
    assert inbox._db.execute("PRAGMA synchronous").fetchone() == (1,)  # back to NORMAL
