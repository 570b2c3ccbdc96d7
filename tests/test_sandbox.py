"""The sandbox backend's own promises: no silent fallback, the commands, the refusal.

The escape probes themselves are in the conformance suite (tests/test_conformance.py).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import ClassVar

import pytest

from threezone.backends import get_backend
from threezone.backends.sandbox import SandboxBackend, _descends_from, runtime_binds
from threezone.backends.unsafe_process import UnsafeProcessBackend
from threezone.config.load import load_config
from threezone.demo import build_workspace
from threezone.errors import BackendError, ZoneStartError
from threezone.executor.core import run_once

CLI = [sys.executable, "-m", "threezone"]


def threezone(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, check=False)


def test_sandbox_run_returns_the_commands_exit_code() -> None:
    result = threezone("sandbox", "run", "--", sys.executable, "-c", "raise SystemExit(7)")
    assert result.returncode == 7, result.stderr


def test_sandbox_run_shows_the_zones_view_of_the_world() -> None:
    program = (
        "import os, socket\n"
        "print(os.getuid(), sorted(os.listdir('/')))\n"
        "try:\n    socket.socket(socket.AF_INET)\n"
        "except OSError as e:\n    print('inet', e.errno)\n"
    )
    result = threezone("sandbox", "run", "--role", "planner", "--", sys.executable, "-c", program)
    assert result.returncode == 0, result.stderr
    uid_line, inet_line = result.stdout.splitlines()
    uid = int(uid_line.split()[0])
    assert uid != 0
    visible = set(eval(uid_line.split(" ", 1)[1]))
    assert not visible & {"home", "var", "boot", "srv", "mnt"}  # only what a zone needs
    assert inet_line.startswith("inet ")


def test_a_missing_bubblewrap_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BackendError) as caught:
        SandboxBackend().check()
    assert "apt-get install bubblewrap" in str(caught.value)


def test_refused_user_namespaces_are_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    # The launcher runs bwrap as the zone's uid, so the fake must be reachable by it.
    with tempfile.TemporaryDirectory(dir="/tmp") as name:
        fake_dir = Path(name)
        fake_dir.chmod(0o755)
        fake = fake_dir / "bwrap"
        fake.write_text(
            "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n"
        )
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", f"{fake_dir}:/usr/bin:/bin")
        with pytest.raises(BackendError) as caught:
            SandboxBackend().check()
    assert "No permissions to create new namespace" in str(caught.value)
    assert "unprivileged_userns" in caught.value.fix


def test_an_unknown_backend_is_an_error_not_a_fallback() -> None:
    with pytest.raises(BackendError, match="not available"):
        get_backend("docker")


class LyingBackend(UnsafeProcessBackend):
    """Promises isolation it does not provide: the executor must notice from inside."""

    promises_isolation: ClassVar[bool] = True


def test_a_zone_that_fails_its_self_check_is_refused(tmp_path: Path) -> None:
    loaded = load_config(build_workspace(tmp_path / "ws"))
    with pytest.raises(ZoneStartError, match=r"isolation check failed: .*ipv4_socket"):
        asyncio.run(run_once(loaded, LyingBackend()))
    with sqlite3.connect(loaded.base / "state" / "inbox.sqlite3") as db:
        states = {row[0] for row in db.execute("SELECT state FROM messages")}
    assert states == {"received"}  # refused zones process nothing, and nothing is lost
    assert not list((loaded.base / "outbox").rglob("*.eml"))


def test_runtime_binds_are_the_runtime_not_the_host() -> None:
    sources = {bind.source for bind in runtime_binds()}
    assert Path(sys.base_prefix).resolve() in sources or any(
        Path(sys.base_prefix).resolve().is_relative_to(s) for s in sources
    )
    assert Path("/") not in sources
    assert Path.home() not in sources
    assert all(s != Path("/root") and s != Path("/etc") for s in sources)


def test_descent_check_follows_the_process_tree() -> None:
    child = subprocess.Popen(["/bin/sleep", "5"])
    try:
        assert _descends_from(child.pid, os.getpid())
        assert not _descends_from(os.getpid(), child.pid)
    finally:
        child.kill()
        child.wait()


def test_doctor_reports_every_probe_held_for_the_sandbox() -> None:
    result = threezone("doctor", "--backend", "sandbox")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NO" not in result.stdout
    assert "landlock ABI" in result.stdout
    assert "(SHA-256 as pinned; xllamacpp installed)" in " ".join(result.stdout.split())
