"""The backend conformance suite: one set of tests every isolation backend must pass.

Subclass :class:`BackendConformance` in a test module and name the backend::

    class TestSandbox(BackendConformance):
        backend_name = "sandbox"
        isolated = True

The lifecycle tests (start, hello, request/response, crash detection, deadline kill)
must pass on every backend. The escape probes run hostile code inside a zone; on an
isolated backend every one must fail to escape, and on ``unsafe-process``
(``isolated = False``) every one must *succeed*: a suite that passes on no isolation
would prove nothing, so the unsafe backend is how the suite tests itself.

Each escape probe is a small Python program run with ``sandbox run``'s machinery (the
exact isolation of a zone). It exits 0 when the escape was blocked and 3 when it
worked; anything else is a broken probe.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from threezone.backends import get_backend
from threezone.backends.base import Backend, Limits, ZoneSpec
from threezone.backends.commands import SOCKET_PLACEHOLDER, run_in_zone
from threezone.errors import ZoneCrashedError, ZoneTimeoutError
from threezone.executor.broker import Zone, ZoneSettings
from threezone.executor.decoys import Decoys
from threezone.protocol.messages import SanitizeRequest, SanitizeResult
from threezone.testing import faulty_zone

BLOCKED, ESCAPED = 0, 3
LIMITS = Limits(memory_mb=512, pids=64, cpu_seconds=60, open_files=256)

_PRELUDE = "import os, sys\ndef verdict(escaped): sys.exit(3 if escaped else 0)\n"

PROBES: dict[str, str] = {
    # More processes than the pids limit allows; children sleep so they all count.
    "fork_bomb": """
import time
children = []
try:
    for _ in range(200):
        pid = os.fork()
        if pid == 0:
            time.sleep(2); os._exit(0)
        children.append(pid)
except OSError:
    pass
verdict(len(children) >= 200)
""",
    # More memory than the zone's limit: 1.5 GiB, touched so it is really used.
    "memory_bomb": """
try:
    block = bytearray(1536 * 1024 * 1024)
    for i in range(0, len(block), 4096): block[i] = 1
    escaped = True
except MemoryError:
    escaped = False
verdict(escaped)
""",
    # Creating a file beside the zone's own socket.
    "write_socket_dir": """
target = os.path.join(os.path.dirname(sys.argv[1]), "planted")
try:
    open(target, "w").close(); os.unlink(target); escaped = True
except OSError:
    escaped = False
verdict(escaped)
""",
    # Attaching to the executor (this test process) with ptrace.
    "ptrace_executor": """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
pid = int(sys.argv[2])
# PTRACE_SEIZE attaches without stopping the target; this probe exits at once, which
# detaches it again (a long-lived tracer must detach itself: see zones/probes.py).
verdict(libc.ptrace(0x4206, pid, None, None) == 0)
""",
    # Reading another host process's environment (where secrets often live).
    "host_process_environ": """
try:
    data = open(f"/proc/{sys.argv[3]}/environ", "rb").read()
except OSError:
    data = b""
verdict(b"THREEZONE_CONFORMANCE_SECRET=" in data)
""",
    # Seeing a file the test created in the host's /tmp.
    "host_tmp": """
verdict(os.path.exists(sys.argv[4]))
""",
    # An IP socket of any kind.
    "ip_socket": """
import socket
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(); escaped = True
except OSError:
    escaped = False
verdict(escaped)
""",
}


class BackendConformance:
    backend_name: ClassVar[str]
    isolated: ClassVar[bool]

    # One backend per class: the qemu backend's template (a VM booted once, ~7 s under
    # TCG) is then shared by every test of the class, as an executor shares it.
    @pytest.fixture(scope="class")
    @staticmethod
    def backend(request: pytest.FixtureRequest) -> Backend:
        backend = get_backend(request.cls.backend_name)
        backend.check()
        return backend

    @pytest.fixture
    def workdir(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="threezone-conformance-") as name:
            path = Path(name)
            (path / "run").mkdir(mode=0o700)
            yield path

    def zone(self, backend: Backend, workdir: Path, module: str, timeout: float = 10.0) -> Zone:
        spec = ZoneSpec(
            name="conformance",
            role="reader",
            module=module,
            socket_path=workdir / "run" / "reader" / "zone.sock",
            log_path=workdir / "zone.log",
            limits=LIMITS,
        )
        settings = ZoneSettings(request_timeout=timeout, restart_backoff=(0.05,))
        return Zone(spec, backend, settings)

    # --- lifecycle ----------------------------------------------------------------------------

    def test_start_hello_request_stop(self, backend: Backend, workdir: Path) -> None:
        async def scenario() -> tuple[SanitizeResult, int | None]:
            zone = self.zone(backend, workdir, "threezone.zones.reader_main")
            await zone.listen()
            try:
                reply = await zone.request(_sanitize(b"Subject: hi\r\n\r\nhello\r\n"), 1)
                assert isinstance(reply, SanitizeResult)
                handle = zone._handle
            finally:
                await zone.stop()
            return reply, handle.returncode if handle else None

        reply, code = asyncio.run(scenario())
        assert reply.message.body.strip() == "hello"
        assert code is not None  # the process is gone after stop

    def test_crash_is_detected(self, backend: Backend, workdir: Path) -> None:
        async def scenario() -> None:
            zone = self.zone(backend, workdir, faulty_zone.MODULE)
            await zone.listen()
            try:
                with pytest.raises(ZoneCrashedError):
                    await zone.request(_sanitize(b"X-Poison: crash\r\n\r\nx"), 1)
                reply = await zone.request(_sanitize(b"Subject: after\r\n\r\nok", 2), 2)
                assert isinstance(reply, SanitizeResult)  # restarted, serving again
                assert zone.starts == 2
            finally:
                await zone.stop()

        asyncio.run(scenario())

    def test_deadline_kills_the_whole_zone(self, backend: Backend, workdir: Path) -> None:
        async def scenario() -> int:
            zone = self.zone(backend, workdir, faulty_zone.MODULE, timeout=2.0)
            await zone.listen()
            try:
                await zone.ensure_running()
                handle = zone._handle
                assert handle is not None
                with pytest.raises(ZoneTimeoutError):
                    await zone.request(_sanitize(b"X-Poison: hang\r\n\r\nx"), 1)
                return await asyncio.wait_for(handle.wait(), 10)
            finally:
                await zone.stop()

        assert asyncio.run(scenario()) != 0

    def test_hello_reports_isolation(self, backend: Backend, workdir: Path) -> None:
        async def scenario() -> list[tuple[str, bool]]:
            decoys = Decoys(workdir, lambda _what: None)
            await decoys.start()
            zone = self.zone(backend, workdir, "threezone.zones.reader_main")
            inside = str(Path(backend.socket_arg(zone.spec)).parent)
            zone.spec = _with_args(zone.spec, decoys.args(zone.spec, inside))
            await zone.listen()
            try:
                await zone.ensure_running()
                assert zone.isolation is not None
                return [(p.name, p.blocked) for p in zone.isolation.probes]
            finally:
                await zone.stop()
                await decoys.close()

        probes = dict(asyncio.run(scenario()))
        network = ("ipv4_socket", "host_loopback_tcp", "abstract_unix", "decoy_secret")
        if self.isolated:
            assert all(probes.values()), {k: v for k, v in probes.items() if not v}
        else:
            assert not any(probes[name] for name in network), probes

    # --- escape probes ------------------------------------------------------------------------

    @pytest.mark.parametrize("probe", sorted(PROBES))
    def test_escape_probe(self, backend: Backend, probe: str) -> None:
        code = run_probe(backend, probe)
        expected = BLOCKED if self.isolated else ESCAPED
        assert code == expected, f"{probe}: exit {code}, expected {expected}"


def run_probe(backend: Backend, probe: str) -> int:
    """Run one escape probe in a zone; its targets are real host objects made here."""
    fd, marker = tempfile.mkstemp(prefix="threezone-host-tmp-", dir="/tmp")
    os.close(fd)
    holder = subprocess.Popen(  # a host process whose environment holds a "secret"
        ["/bin/sleep", "60"],
        env={"THREEZONE_CONFORMANCE_SECRET": "s3cr3t", "PATH": "/usr/bin:/bin"},
    )
    try:
        program = _PRELUDE + PROBES[probe]
        command = [
            sys.executable,
            "-c",
            program,
            SOCKET_PLACEHOLDER,
            str(os.getpid()),
            str(holder.pid),
            marker,
        ]
        return asyncio.run(run_in_zone(backend, "reader", command, LIMITS))
    finally:
        holder.kill()
        holder.wait()
        os.unlink(marker)


def _sanitize(raw: bytes, request_id: int = 1) -> SanitizeRequest:
    return SanitizeRequest(id=request_id, channel="email", message_id="email:c", raw=raw)


def _with_args(spec: ZoneSpec, args: tuple[str, ...]) -> ZoneSpec:
    from dataclasses import replace

    return replace(spec, args=(*spec.args, *args))
