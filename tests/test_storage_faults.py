"""A state directory that fills up or turns read-only under the running agent.

The state directory is a real tmpfs, small enough to fill (mounting needs root: CI runs
as root; elsewhere these tests skip). The agent must stop taking mail in, say why in
its status, lose and corrupt nothing, and carry on by itself once it can write again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from threezone.audit.verify import verify_log
from threezone.backends import get_backend
from threezone.config.load import LoadedConfig, load_config
from threezone.demo import build_workspace, mail_to_owner
from threezone.errors import ThreezoneError
from threezone.executor.core import run_once
from threezone.executor.wiring import build_agent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Callable[[str], None]]:
    """Mount a tmpfs at ``path``; yields ``remount(options)``; unmounts at the end."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)

    try:
        yield remount
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def big_mail(index: int) -> bytes:
    body = f"Report {index}, can we meet?\n" + "figures " * 40_000  # ~320 KB
    return mail_to_owner("alice@partner.example", f"Report {index}", body)


def deliver(loaded: LoadedConfig, names: range) -> None:
    new = loaded.base / "mail" / "new"
    for index in names:
        (new / f".{index:03}").write_bytes(big_mail(index))
        (new / f".{index:03}").rename(new / f"{index:03}")


async def wait_for(condition: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


def check_intact(loaded: LoadedConfig, count: int) -> None:
    db = sqlite3.connect(loaded.base / "state" / "inbox.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    states = dict(db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state").fetchall())
    assert states == {"done": count}, states
    report = verify_log(loaded.base / "state" / "audit.jsonl")
    assert report.clean, report.findings[:3]


def test_a_full_disk_pauses_the_agent_and_space_resumes_it(tmp_path: Path) -> None:
    loaded = load_config(build_workspace(tmp_path / "ws"))
    for old in (loaded.base / "mail" / "new").iterdir():
        old.unlink()
    with tmpfs(loaded.base / "state", "3m") as remount:

        async def scenario() -> None:
            agent = build_agent(loaded, get_backend("sandbox"))
            agent.storage_retry = 0.2
            stop = asyncio.Event()
            runner = asyncio.create_task(agent.run(stop))
            await asyncio.sleep(0.5)  # started, nothing to do
            deliver(loaded, range(20))  # ~6.4 MB of mail into a 3 MB state directory
            await wait_for(lambda: agent.status.storage_error is not None)
            why = agent.status.storage_error or ""
            assert "No space left on device" in why or "database or disk is full" in why
            stored = agent.status.processed
            await asyncio.sleep(1.0)
            assert agent.status.processed <= stored + 1  # stopped, not spinning through mail
            assert len(list((loaded.base / "mail" / "new").iterdir())) > 0  # kept at the source
            remount("size=64m")  # space returns
            await wait_for(lambda: agent.status.processed >= 20)
            assert agent.status.storage_error is None
            stop.set()
            await runner

        asyncio.run(scenario())
        check_intact(loaded, 20)
        assert not list((loaded.base / "mail" / "new").iterdir())


def test_a_read_only_state_directory_is_refused_at_start_with_its_path(tmp_path: Path) -> None:
    """Linux refuses to remount a file system read-only while files are open for
    writing on it, so the agent meets this at start (after the kernel remounted it
    read-only on an error, or an operator did)."""
    loaded = load_config(build_workspace(tmp_path / "ws"))
    state = loaded.base / "state"
    with tmpfs(state, "64m") as remount:
        asyncio.run(run_once(loaded, get_backend("sandbox")))  # a first run fills it
        before = {p: p.read_bytes() for p in state.rglob("*") if p.is_file()}
        remount("ro")
        deliver(loaded, range(3))
        with pytest.raises(ThreezoneError) as caught:
            asyncio.run(run_once(loaded, get_backend("sandbox")))
        assert str(state) in str(caught.value)
        assert "read-only" in str(caught.value).lower()
        remount("rw")
        assert {p: p.read_bytes() for p in state.rglob("*") if p.is_file()} == before
        assert len(list((loaded.base / "mail" / "new").iterdir())) == 3  # still at the source
        outcomes = asyncio.run(run_once(loaded, get_backend("sandbox")))
        assert len(outcomes) == 3
        check_intact(loaded, 6)
