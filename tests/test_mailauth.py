"""What the executor reads from an email's headers itself: who vouched, and whether a
machine sent it (the mail-loop guard)."""

from __future__ import annotations

import pytest

from threezone.connectors.mailauth import automated, email_trigger

BASE = b"From: a@b.example\r\nTo: me@x.example\r\nSubject: hi\r\n"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (b"", False),
        (b"Auto-Submitted: no\r\n", False),
        (b"Auto-Submitted: auto-replied\r\n", True),
        (b"Auto-Submitted: auto-generated; owner-email=x@y\r\n", True),
        (b"AUTO-SUBMITTED: Auto-Notified\r\n", True),
        (b"Precedence: bulk\r\n", True),
        (b"Precedence: list\r\n", True),
        (b"Precedence: first-class\r\n", False),
        (b"List-Id: <team.lists.example>\r\n", True),
    ],
)
def test_automated(headers: bytes, expected: bool) -> None:
    raw = BASE + headers + b"\r\nbody\r\n"
    assert automated(raw) is expected
    assert email_trigger(raw, account="me@x.example", authserv_id="").automated is expected


def test_the_body_cannot_make_a_message_automated() -> None:
    raw = BASE + b"\r\nAuto-Submitted: auto-replied\r\n"
    assert automated(raw) is False
