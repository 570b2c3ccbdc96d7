"""Landlock as a zone applies it, checked from a child process that restricts itself.

Landlock is irreversible for the calling thread, so restrict() never runs in the pytest
process: this file, run as a script, is the child. It tries each operation once before
restricting itself and once after, and prints both outcomes as JSON, so every test
shows the operation worked until Landlock took it away.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from threezone.errors import BackendError
from threezone.zones import landlock

HERE = Path(__file__).resolve()
ABI = landlock.abi_version()
needs_landlock = pytest.mark.skipif(ABI < 1, reason="this kernel has no Landlock")
needs_net = pytest.mark.skipif(ABI < 4, reason=f"TCP rules need Landlock ABI 4 (have {ABI})")
needs_scopes = pytest.mark.skipif(ABI < 6, reason=f"scoping needs Landlock ABI 6 (have {ABI})")


# --- the child --------------------------------------------------------------------------------


def attempt(operation: Callable[[], object]) -> str:
    """ "ok" or the errno name of the OSError the operation raised."""
    try:
        operation()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok"


def connect(family: socket.AddressFamily, address: str | tuple[str, int]) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(address)


def fresh(directory: Path) -> Path:
    """A new name in ``directory``: the same operation runs before and after restricting."""
    return directory / uuid.uuid4().hex


def bind_tcp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))


def operations(config: dict[str, Any]) -> dict[str, Callable[[], object]]:
    """Each operation by name; ``config`` holds the parent's paths, listeners and pid."""
    a, b, c = Path(config["a"]), Path(config["b"]), Path(config["c"])
    return {
        "write_a": lambda: fresh(a).write_text("x"),
        "write_b": lambda: fresh(b).write_text("x"),
        "mkdir_b": lambda: fresh(b).mkdir(),
        "read_b": (b / "file").read_text,
        "read_c": (c / "file").read_text,
        "tcp_connect": lambda: connect(socket.AF_INET, ("127.0.0.1", config["port"])),
        "tcp_bind": bind_tcp,
        "abstract_connect": lambda: connect(socket.AF_UNIX, "\0" + config["abstract"]),
        "path_connect": lambda: connect(socket.AF_UNIX, config["unix_path"]),
        "signal_parent": lambda: os.kill(config["parent"], 0),
        "signal_self": lambda: os.kill(os.getpid(), 0),
    }


def child_main(config: dict[str, Any]) -> dict[str, Any]:
    ops = operations(config)
    before = {name: attempt(op) for name, op in ops.items()}
    if config.get("start_thread"):
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    try:
        status = landlock.restrict(config["writable"], config["readable"])
    except BackendError as exc:
        return {"error": str(exc), "before": before}
    after = {name: attempt(op) for name, op in ops.items()}
    return {"status": asdict(status), "before": before, "after": after}


# --- the parent -------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Three directories and three listeners the child will try to reach."""
    dirs = {name: tmp_path / name for name in "abc"}
    for path in dirs.values():
        path.mkdir()
        (path / "file").write_text(path.name)
    abstract = f"threezone-test-{uuid.uuid4().hex}"
    listeners = [
        listen(socket.AF_INET, ("127.0.0.1", 0)),
        listen(socket.AF_UNIX, "\0" + abstract),
        listen(socket.AF_UNIX, str(dirs["a"] / "zone.sock")),
    ]
    yield {
        **{name: str(path) for name, path in dirs.items()},
        "port": listeners[0].getsockname()[1],
        "abstract": abstract,
        "unix_path": str(dirs["a"] / "zone.sock"),
        "parent": os.getpid(),
        "writable": [str(dirs["a"])],
        "readable": None,
    }
    for listener in listeners:
        listener.close()


def listen(family: socket.AddressFamily, address: str | tuple[str, int]) -> socket.socket:
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(16)  # the child's connects complete in the backlog; nobody accepts
    return server


def run_child(config: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(HERE), "child"],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@needs_landlock
def test_writes_only_beneath_the_writable_paths(world: dict[str, Any]) -> None:
    result = run_child(world)
    assert result["before"]["write_b"] == result["before"]["mkdir_b"] == "ok"
    assert result["after"]["write_a"] == "ok"
    assert result["after"]["write_b"] == "EACCES"
    assert result["after"]["mkdir_b"] == "EACCES"
    assert result["after"]["read_b"] == result["after"]["read_c"] == "ok"  # default: read /


@needs_landlock
def test_readable_limits_reads_when_given(world: dict[str, Any]) -> None:
    result = run_child({**world, "readable": [world["b"], sys.prefix, sys.base_prefix]})
    assert result["before"]["read_c"] == "ok"
    assert result["after"]["read_b"] == "ok"
    assert result["after"]["read_c"] == "EACCES"


@needs_landlock
def test_status_reports_what_this_abi_enforces(world: dict[str, Any]) -> None:
    status = run_child(world)["status"]
    assert status["abi"] == ABI
    assert status["enforced"] is True
    assert status["fs"] is True
    assert status["net"] is (ABI >= 4)
    assert status["scoped"] is (ABI >= 6)
    assert world["a"] in status["detail"]


@needs_net
def test_tcp_connect_and_bind_are_denied(world: dict[str, Any]) -> None:
    result = run_child(world)
    assert result["before"]["tcp_connect"] == result["before"]["tcp_bind"] == "ok"
    assert result["after"]["tcp_connect"] == "EACCES"
    assert result["after"]["tcp_bind"] == "EACCES"


@needs_scopes
def test_abstract_unix_sockets_are_scoped_but_the_zone_socket_works(
    world: dict[str, Any],
) -> None:
    result = run_child(world)
    assert result["before"]["abstract_connect"] == "ok"
    assert result["after"]["abstract_connect"] == "EPERM"
    assert result["before"]["path_connect"] == result["after"]["path_connect"] == "ok"


@needs_scopes
def test_signals_cannot_leave_the_domain(world: dict[str, Any]) -> None:
    result = run_child(world)
    assert result["before"]["signal_parent"] == "ok"
    assert result["after"]["signal_parent"] == "EPERM"
    assert result["after"]["signal_self"] == "ok"


@needs_landlock
def test_a_second_thread_is_refused_not_left_free(world: dict[str, Any]) -> None:
    result = run_child({**world, "start_thread": True})
    assert "threads running" in result["error"]


@needs_landlock
def test_a_missing_path_is_an_error(world: dict[str, Any]) -> None:
    result = run_child({**world, "writable": [world["a"] + "/missing"]})
    assert "cannot open" in result["error"]
    assert "missing" in result["error"]


def test_without_landlock_nothing_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Safe in-process: with no ABI, restrict() returns before touching the process."""
    monkeypatch.setattr(landlock, "_probe_abi", lambda: (0, "test kernel"))
    status = landlock.restrict(writable=["/tmp"])
    assert status == landlock.LandlockStatus(
        0, False, False, False, False, "Landlock unavailable: test kernel"
    )


def test_handled_rights_grow_with_the_abi() -> None:
    assert landlock.Handled.for_abi(1) == landlock.Handled(fs=(1 << 13) - 1, net=0, scoped=0)
    assert landlock.Handled.for_abi(2).fs & landlock.FS_REFER
    assert landlock.Handled.for_abi(3).fs & landlock.FS_TRUNCATE
    assert landlock.Handled.for_abi(4).net == landlock.NET_BIND_TCP | landlock.NET_CONNECT_TCP
    assert not landlock.Handled.for_abi(4).fs & landlock.FS_IOCTL_DEV
    assert landlock.Handled.for_abi(5).fs & landlock.FS_IOCTL_DEV
    assert landlock.Handled.for_abi(6).scoped == (
        landlock.SCOPE_ABSTRACT_UNIX_SOCKET | landlock.SCOPE_SIGNAL
    )
    assert landlock.Handled.for_abi(7) == landlock.Handled.for_abi(6)


def test_abi_version_is_a_number() -> None:
    assert ABI >= 0
    assert landlock.abi_version() == ABI


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    print(json.dumps(child_main(json.loads(sys.stdin.read()))))
