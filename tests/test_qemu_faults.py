"""Faults of the qemu backend: guests that panic, flood, never wake; a damaged kernel cache.

Real microVMs (TCG here), one template for the module. Each fault must end in a typed
error, a dead QEMU, and a fresh clone serving the next request.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from threezone.backends import cgroups, get_backend
from threezone.backends.base import ZoneHandle, ZoneSpec
from threezone.backends.qemu import (
    QEMU_OVERHEAD_MB,
    QMP_SOCKET,
    QemuBackend,
    QemuHandle,
    Qmp,
)
from threezone.backends.qemu_image import _load_kernel, cache_root, ensure_kernel
from threezone.config.load import load_config
from threezone.config.schema import Config, QemuConfig
from threezone.demo import build_workspace, mail_to_owner
from threezone.errors import (
    BackendError,
    ZoneCrashedError,
    ZoneReplyError,
    ZoneStartError,
)
from threezone.executor.broker import Zone, ZoneSettings
from threezone.executor.core import run_once
from threezone.executor.inbox import State
from threezone.protocol.messages import Error, SanitizeRequest, SanitizeResult
from threezone.testing import faulty_zone
from threezone.testing.workspaces import replace_mails
from threezone.zones.vm_guest import GUEST_DIED

T = TypeVar("T")


class Recording(QemuBackend):
    """The qemu backend, keeping every handle it started (failed launches included)."""

    def __init__(self) -> None:
        super().__init__()
        self.handles: list[ZoneHandle] = []

    async def _start(self, spec: ZoneSpec) -> ZoneHandle:
        handle = await super()._start(spec)
        self.handles.append(handle)
        return handle


class NoWake(Recording):
    """An executor that never sends the wake: the guest waits in its template pause."""

    def greeting(self, handle: ZoneHandle) -> bytes:
        return b""


class BadWake(Recording):
    """An executor whose wake is not a wake frame."""

    def greeting(self, handle: ZoneHandle) -> bytes:
        return b"\x00\x00\x00\x08notawake"


@pytest.fixture(scope="module")
def backend() -> QemuBackend:
    backend = QemuBackend()
    backend.check()
    return backend


def request(raw: bytes, request_id: int) -> SanitizeRequest:
    return SanitizeRequest(id=request_id, channel="email", message_id="email:q", raw=raw)


def with_zone(
    backend: QemuBackend,
    body: Callable[[Zone], Awaitable[T]],
    settings: ZoneSettings | None = None,
) -> tuple[T, str]:
    """``body``'s result and the zones' console log."""

    async def scenario() -> tuple[T, str]:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "run").mkdir(mode=0o700)
            log = Path(tmp) / "zone.log"
            spec = ZoneSpec(
                name="fault",
                role="reader",
                module=faulty_zone.MODULE,
                socket_path=Path(tmp) / "run" / "r" / "zone.sock",
                log_path=log,
            )
            zone = Zone(spec, backend, settings or ZoneSettings(restart_backoff=(0.0,)))
            await zone.listen()
            try:
                result = await body(zone)
            finally:
                await zone.stop()
            return result, log.read_text(errors="replace") if log.exists() else ""

    return asyncio.run(scenario())


def test_each_message_gets_its_own_clone_when_the_reader_is_disposable(
    backend: QemuBackend,
) -> None:
    async def body(zone: Zone) -> tuple[list[str], list[int | None]]:
        bodies, pids = [], []
        for number, raw in enumerate(
            (b"X-Poison: implant\r\n\r\nfirst\r\n", b"Subject: s\r\n\r\nsecond\r\n"), start=1
        ):
            reply = await zone.request(request(raw, number), number)
            assert isinstance(reply, SanitizeResult)
            bodies.append(reply.message.body)
            pids.append(zone.peer_pid)
        return bodies, pids

    settings = ZoneSettings(disposable=True, spare=True, restart_backoff=(0.0,))
    (bodies, pids), _ = with_zone(backend, body, settings)
    assert "second" in bodies[1]
    assert not bodies[1].startswith(faulty_zone.IMPLANTED), bodies
    assert pids[0] != pids[1]  # two QEMU processes, two kernels


def test_a_guest_kernel_panic_mid_request_is_a_crash_and_a_new_clone_serves(
    backend: QemuBackend,
) -> None:
    async def body(zone: Zone) -> tuple[list[int | None], int]:
        await zone.ensure_running()
        pids = [zone.peer_pid]
        handle = zone._handle
        assert isinstance(handle, QemuHandle)
        pending = asyncio.ensure_future(zone.request(request(b"X-Poison: hang\r\n\r\nx", 1), 1))
        await asyncio.sleep(0.3)  # the zone has the request and sits on it
        async with Qmp(handle.launch / QMP_SOCKET) as qmp:
            await qmp.command("inject-nmi")  # the guest kernel panics: unknown_nmi_panic
        with pytest.raises(ZoneCrashedError):
            await pending
        reply = await zone.request(request(b"Subject: after\r\n\r\nstill here\r\n", 2), 2)
        assert isinstance(reply, SanitizeResult)
        assert "still here" in reply.message.body
        pids.append(zone.peer_pid)
        return pids, zone.starts

    (pids, starts), console = with_zone(backend, body)
    assert "Kernel panic" in console, console[-2000:]
    assert pids[0] != pids[1]  # a new QEMU, cloned from the template, serves
    assert starts == 2


def test_a_guest_that_floods_its_port_is_cut_off_and_replaced(backend: QemuBackend) -> None:
    async def body(zone: Zone) -> int:
        with pytest.raises(ZoneReplyError):
            await zone.request(request(b"X-Poison: flood\r\n\r\nx", 1), 1)
        reply = await zone.request(request(b"Subject: after\r\n\r\nok\r\n", 2), 2)
        assert isinstance(reply, SanitizeResult)
        return zone.starts

    starts, _ = with_zone(backend, body)
    assert starts == 2


R = TypeVar("R", bound=Recording)


def sharing_template(kind: type[R], backend: QemuBackend) -> R:
    """A ``kind`` backend cloning ``backend``'s template: the same saved VM, only the
    executor's side differs."""
    other = kind()
    other.check()
    other._template = asyncio.run(backend.template())
    return other


def zone_pids_gone(backend: Recording) -> bool:
    return not any(alive(h.pid) for h in backend.handles)


def test_a_guest_that_never_wakes_is_killed_at_the_hello_deadline(
    backend: QemuBackend,
) -> None:
    silent = sharing_template(NoWake, backend)

    async def body(zone: Zone) -> list[int]:
        with pytest.raises(ZoneStartError, match="no hello before the deadline"):
            await zone.ensure_running()
        return [await asyncio.wait_for(h.wait(), 10) for h in silent.handles]

    settings = ZoneSettings(hello_timeout=3.0, start_attempts=1)
    codes, _ = with_zone(silent, body, settings)
    assert len(codes) == 1  # one launch, killed at the deadline (wait returned)
    assert zone_pids_gone(silent)


def test_a_malformed_wake_ends_the_guest_before_any_zone_runs(backend: QemuBackend) -> None:
    garbled = sharing_template(BadWake, backend)

    async def body(zone: Zone) -> list[int]:
        with pytest.raises(ZoneStartError, match="before its hello"):
            await zone.ensure_running()
        return [await asyncio.wait_for(h.wait(), 10) for h in garbled.handles]

    settings = ZoneSettings(hello_timeout=60.0, start_attempts=1)
    codes, console = with_zone(garbled, body, settings)
    assert "invalid wake frame" in console, console[-2000:]  # the guest's init said why
    assert codes == [GUEST_DIED]  # the guest powered off with init's failure code
    assert zone_pids_gone(garbled)


def test_the_qemu_section_of_the_config_reaches_the_backend() -> None:
    config = Config(qemu=QemuConfig(memory_mb=256, accel="tcg", template=False, tb_size_mb=16))
    chosen = get_backend("qemu", config)
    assert isinstance(chosen, QemuBackend)
    assert (chosen.settings.memory_mb, chosen.settings.accel) == (256, "tcg")
    assert chosen.settings.tb_size_mb == 16
    assert chosen.settings.template is False


# --- the kernel cache -----------------------------------------------------------------------------


def test_a_damaged_kernel_cache_entry_is_fetched_again(tmp_path: Path) -> None:
    cached = ensure_kernel()
    copy = tmp_path / "kernels" / cached.directory.name
    shutil.copytree(cached.directory, copy)
    vmlinux = copy / "vmlinux"
    data = bytearray(vmlinux.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the kernel
    vmlinux.write_bytes(bytes(data))
    assert _load_kernel(copy) is None  # the manifest's digest no longer matches

    fetched = ensure_kernel(tmp_path)
    assert fetched.directory == copy
    assert fetched.vmlinux.read_bytes() == cached.vmlinux.read_bytes()
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["release"] == cached.release


def test_a_kernel_that_cannot_be_fetched_names_the_command_that_fixes_it(
    tmp_path: Path,
) -> None:
    with pytest.raises(BackendError) as raised:
        ensure_kernel(tmp_path, package="linux-image-threezone-no-such-package")
    assert "apt-get download -q linux-image-threezone-no-such-package" in str(raised.value)
    assert not list((tmp_path / "kernels").glob("*/manifest.json"))  # nothing half-made kept


def test_the_kernel_cache_is_where_the_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THREEZONE_QEMU_CACHE", str(tmp_path))
    assert cache_root() == tmp_path


@pytest.mark.skipif(cgroups.mode() == "none", reason="no writable cgroup hierarchy (not root)")
def test_each_qemu_process_runs_in_its_own_limited_cgroup(backend: QemuBackend) -> None:
    async def body(zone: Zone) -> tuple[cgroups.Group, bool, str]:
        await zone.ensure_running()
        handle = zone._handle
        assert isinstance(handle, QemuHandle)
        assert handle.group is not None
        member = handle.pid in handle.group.pids()
        limit_file = "memory.max" if handle.group.version == 2 else "memory.limit_in_bytes"
        limit = (handle.group.dirs[0] / limit_file).read_text().strip()
        return handle.group, member, limit

    (group, member, limit), _ = with_zone(backend, body)
    assert member  # QEMU itself, so every thread it starts, is counted
    settings = backend.settings
    expected = settings.memory_mb + settings.tb_size_mb + QEMU_OVERHEAD_MB
    assert int(limit) == expected * 1024 * 1024
    assert not any(d.exists() for d in group.dirs)  # removed once the zone stopped


def test_a_local_model_planner_under_qemu_is_refused_at_start_with_the_fix(
    tmp_path: Path,
) -> None:
    loaded = load_config(build_workspace(tmp_path / "ws", planner="local"))
    with pytest.raises(BackendError) as raised:
        asyncio.run(run_once(loaded, get_backend("qemu", loaded.config)))
    assert "local model planner is not bundled" in raised.value.detail
    assert 'kind = "llm"' in raised.value.fix
    assert not list((tmp_path / "ws" / "outbox").glob("*.eml"))  # nothing was acted on


def test_a_clone_reports_its_memory_and_the_sink_answers_unread(backend: QemuBackend) -> None:
    async def body(zone: Zone) -> tuple[dict[str, int], str]:
        reply = await zone.request(request(b"X-Poison: sink\r\n\r\n" + b"x" * 100_000, 1), 1)
        assert isinstance(reply, Error)
        handle = zone._handle
        assert isinstance(handle, QemuHandle)
        return handle.stats(), reply.detail

    (stats, detail), _ = with_zone(backend, body)
    assert 0 < stats["unique_kb"] <= stats["private_kb"] <= stats["rss_kb"]
    assert stats["pss_kb"] <= stats["rss_kb"]
    assert detail == f"{len(b'X-Poison: sink') + 4 + 100_000} bytes received"


def test_the_executor_on_qemu_quarantines_a_poison_message_and_loses_nothing(
    tmp_path: Path, backend: QemuBackend
) -> None:
    """The whole pipeline with every zone a clone: a message that crashes its reader VM
    each time is quarantined after its tries; the messages around it are answered."""
    loaded = load_config(build_workspace(tmp_path / "ws"))
    sender = "alice@partner.example"
    replace_mails(
        loaded,
        {
            "1-before": mail_to_owner(sender, "before", "can we meet on Tuesday?"),
            "2-poison": mail_to_owner(sender, "poison", "x", headers={"X-Poison": "crash"}),
            "3-after": mail_to_owner(sender, "after", "can we meet on Wednesday?"),
        },
    )
    modules = {"reader-email": faulty_zone.MODULE}
    outcomes = asyncio.run(run_once(loaded, backend, modules))
    states = {o.message_id.split(":", 1)[1]: (o.state, o.error_code) for o in outcomes}
    assert states["2-poison"] == (State.QUARANTINED, "zone_crashed")
    assert states["1-before"][0] is State.DONE
    assert states["3-after"][0] is State.DONE
    records = [json.loads(line) for line in (loaded.base / "state" / "audit.jsonl").open()]
    started = [r["data"] for r in records if r["kind"] == "zone_started"]
    assert {d["backend"] for d in started} == {"qemu"}
    assert all(d["probes_held"] == d["probes"] > 0 for d in started), started


_ORPHAN = r"""
import asyncio, sys
from pathlib import Path
from threezone.backends.base import ZoneSpec
from threezone.backends.qemu import QemuBackend
from threezone.executor.broker import Zone, ZoneSettings
from threezone.protocol.messages import SanitizeRequest
from threezone.testing import faulty_zone

async def main() -> None:
    run = Path(sys.argv[1])
    spec = ZoneSpec(name="orphan", role="reader", module=faulty_zone.MODULE,
                    socket_path=run / "r" / "zone.sock")
    zone = Zone(spec, QemuBackend(), ZoneSettings(hello_timeout=120.0, request_timeout=3600))
    await zone.listen()
    await zone.ensure_running()
    # a zone busy with a message: it will not notice its connection closing
    hang = SanitizeRequest(id=1, channel="email", message_id="email:o", raw=b"X-Poison: hang\r\n")
    pending = asyncio.ensure_future(zone.request(hang, 1))
    await asyncio.sleep(0.5)
    print(zone.pid, flush=True)
    await pending

asyncio.run(main())
"""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper (this may be a container's PID 1)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_a_vm_does_not_outlive_an_executor_killed_with_sigkill(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    executor = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert executor.stdout is not None
        line = executor.stdout.readline()  # the zone is up: its QEMU's pid
        qemu = int(line)
        assert alive(qemu)
        os.kill(executor.pid, signal.SIGKILL)
        executor.wait(10)
        for _ in range(200):
            if not alive(qemu):
                break
            time.sleep(0.05)
        assert not alive(qemu), "QEMU outlived its executor"
    finally:
        executor.kill()
        executor.wait()
