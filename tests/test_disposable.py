"""Disposable readers: every message gets a zone that has seen nothing before.

The attack they stop is real: the faulty reader's ``implant`` mode plants state in its
own process that rewrites every later message it reads. A long-lived reader carries it
to the next message (the control case); a disposable one does not.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from threezone.backends import get_backend
from threezone.backends.base import Backend, ZoneSpec
from threezone.config.load import load_config
from threezone.demo import build_workspace, mail_to_owner
from threezone.errors import ZoneCrashedError
from threezone.executor.broker import Zone, ZoneSettings
from threezone.executor.core import run_once
from threezone.executor.inbox import State
from threezone.protocol.messages import SanitizeRequest, SanitizeResult
from threezone.testing import faulty_zone
from threezone.testing.workspaces import replace_mails

IMPLANT = b"X-Poison: implant\r\nSubject: first\r\n\r\nfirst message\r\n"
T = TypeVar("T")
NEXT = b"Subject: second\r\n\r\nsecond message\r\n"


def request(raw: bytes, request_id: int) -> SanitizeRequest:
    return SanitizeRequest(id=request_id, channel="email", message_id="email:d", raw=raw)


def with_zone(backend: Backend, settings: ZoneSettings, body: Callable[[Zone], Awaitable[T]]) -> T:
    async def scenario() -> T:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "run").mkdir(mode=0o700)
            spec = ZoneSpec(
                name="disposable",
                role="reader",
                module=faulty_zone.MODULE,
                socket_path=Path(tmp) / "run" / "r" / "zone.sock",
            )
            zone = Zone(spec, backend, settings)
            await zone.listen()
            try:
                return await body(zone)
            finally:
                await zone.stop()

    return asyncio.run(scenario())


async def two_messages(zone: Zone) -> tuple[list[str], list[int | None]]:
    bodies, pids = [], []
    for number, raw in enumerate((IMPLANT, NEXT), start=1):
        reply = await zone.request(request(raw, number), number)
        assert isinstance(reply, SanitizeResult)
        bodies.append(reply.message.body)
        pids.append(zone.peer_pid)
    return bodies, pids


@pytest.mark.parametrize("spare", [False, True])
def test_a_disposable_reader_gives_the_next_message_a_clean_zone(spare: bool) -> None:
    settings = ZoneSettings(disposable=True, spare=spare, restart_backoff=(0.0,))
    bodies, pids = with_zone(get_backend("sandbox"), settings, two_messages)
    assert not bodies[1].startswith(faulty_zone.IMPLANTED), bodies
    assert "second message" in bodies[1]
    assert pids[0] != pids[1]


def test_a_long_lived_reader_carries_the_implant_to_the_next_message() -> None:
    """The control: without ``disposable`` the implant works, so the test above can fail."""
    settings = ZoneSettings(spare=False, restart_backoff=(0.0,))
    bodies, pids = with_zone(get_backend("sandbox"), settings, two_messages)
    assert bodies[1].startswith(faulty_zone.IMPLANTED), bodies
    assert pids[0] == pids[1]


def test_disposable_zones_take_turns_and_survive_a_crash() -> None:
    async def body(zone: Zone) -> tuple[list[str], int]:
        crash = zone.request(request(b"X-Poison: crash\r\n\r\nx", 1), 1)
        implant = zone.request(request(IMPLANT, 2), 2)
        after = zone.request(request(NEXT, 3), 3)
        results = await asyncio.gather(crash, implant, after, return_exceptions=True)
        assert isinstance(results[0], ZoneCrashedError), results[0]
        replies = [r for r in results[1:] if isinstance(r, SanitizeResult)]
        return [r.message.body for r in replies], zone.starts

    settings = ZoneSettings(disposable=True, restart_backoff=(0.0,))
    bodies, starts = with_zone(get_backend("sandbox"), settings, body)
    assert len(bodies) == 2  # the crash cost its own message only
    assert not any(b.startswith(faulty_zone.IMPLANTED) for b in bodies), bodies
    assert starts == 3  # one zone per message, the crashed one included


@pytest.mark.parametrize("disposable", [True, False])
def test_readers_disposable_in_the_config_reaches_the_email_reader(
    tmp_path: Path, disposable: bool
) -> None:
    config = build_workspace(tmp_path / "ws")
    with config.open("a", encoding="utf-8") as out:
        out.write(f"\n[readers.email]\ndisposable = {str(disposable).lower()}\n")
    loaded = load_config(config)
    sender = "alice@partner.example"
    replace_mails(
        loaded,
        {
            "1-implant": mail_to_owner(sender, "first", "hi", headers={"X-Poison": "implant"}),
            "2-next": mail_to_owner(sender, "second", "can we meet on Tuesday?"),
        },
    )
    modules = {"reader-email": faulty_zone.MODULE}
    outcomes = asyncio.run(run_once(loaded, get_backend("sandbox"), modules))
    second = {o.message_id.split(":", 1)[1]: o for o in outcomes}["2-next"]
    assert second.state is State.DONE
    assert second.sanitized is not None
    assert second.sanitized.body.startswith(faulty_zone.IMPLANTED) is not disposable
