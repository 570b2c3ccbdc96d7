"""``qemu``: every zone in its own QEMU microVM, with its own kernel and no network device.

The threat model says a kernel exploit defeats a namespace sandbox; here the zone's
kernel is not the host's. What one zone gets:

* ``-M microvm`` with ``-nodefaults -no-user-config -nic none``: no network device, no
  disk, no shared folder (the guest's ``/sys/class/net`` holds only ``lo``). Its one
  channel is a virtio-serial port whose host end is the executor's zone socket;
* a Debian kernel and an initramfs bundle (``qemu_image``) holding only the
  interpreter, its libraries and the zone's modules;
* inside, the same walls as the sandbox backend (``vm_guest``): an unprivileged uid,
  rlimits, ``no_new_privs``, the same seccomp filter, Landlock; the zone's isolation
  self-check runs in the guest and is reported in its hello;
* a hardened QEMU: ``-sandbox on`` (no spawning, no privilege changes, no obsolete or
  resource-control calls), ``-no-reboot``, QMP only on a Unix socket in a private
  directory, run as its own unprivileged uid (root executors) with resource limits.

**Fast starts from a template.** The first start boots one template VM to the point
where its init has imported every zone program, then saves its device state. Its RAM
lives in a sealed ``memfd`` (``F_SEAL_WRITE``): each zone is a *clone* that maps that
RAM copy-on-write and loads the device state, so it skips the boot and the imports,
and no clone (nor anything else) can change what the next clone starts from. The
executor's first frame (:class:`~threezone.protocol.messages.Wake`) reseeds each
clone's random generator, sets its clock, and says which zone to become.

**Accelerator.** KVM where it can run a guest, else software emulation (TCG): QEMU does
not fall back by itself, and a nested PVM ``/dev/kvm`` opens fine and then fails on a
normal kernel (``failed to set MSR 0x10a``), so :func:`accelerator` probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import logging
import os
import resource
import secrets
import shutil
import signal
import socket
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from threezone.backends import cgroups
from threezone.backends.base import Backend, Limits, ZoneHandle, ZoneSpec
from threezone.backends.qemu_image import Bundle, Kernel, ensure_bundle, ensure_kernel
from threezone.backends.seccomp import build_filter
from threezone.errors import BackendError
from threezone.protocol.framing import encode_wake
from threezone.protocol.messages import Wake

# What the guest's init and this side must agree on, defined once, on the guest's side.
from threezone.zones.vm_guest import (
    DEBUG_EXIT_PORT,
    GUEST_DIED,
    PORT_NAME,
    TEMPLATE_FLAG,
    TEMPLATE_READY,
)

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
GUEST_UID = 1000
DEFAULT_UID_BASE = 62000
TEMPLATE_TIMEOUT = 120.0
# What one QEMU process may use besides the guest's RAM and TCG's translation cache:
# its own heap, data and I/O buffers (measured: about 15 MiB in a clone), with room to
# spare, and the threads of its event loop, vCPU and workers.
QEMU_OVERHEAD_MB = 160
QEMU_TASKS = 48
# RAM that is a shared file is not in the migration stream: the template's RAM memfd
# holds it, and each clone maps that copy-on-write instead of reading it.
IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": True}]
_PR_SET_PDEATHSIG = 1
_F_ADD_SEALS, _F_SEAL_SEAL, _F_SEAL_SHRINK, _F_SEAL_GROW, _F_SEAL_WRITE = 1033, 1, 2, 4, 8


@dataclass(frozen=True, slots=True)
class QemuSettings:
    memory_mb: int = 160  # the guest's RAM: kernel, bundle and zone (shared by clones)
    accel: str = "auto"  # auto | kvm | tcg
    tb_size_mb: int = 32  # TCG's translation cache, per VM
    template: bool = True  # clone a template VM (else every zone boots cold)


@dataclass(frozen=True, slots=True)
class Accelerator:
    name: str  # "kvm" or "tcg"
    reason: str


def accelerator(requested: str = "auto") -> Accelerator:
    """KVM when this host can run a guest with it, else TCG; and why."""
    if requested == "tcg":
        return Accelerator("tcg", "chosen in the configuration")
    kvm = Path("/dev/kvm")
    problem = ""
    if not kvm.exists():
        problem = "/dev/kvm does not exist"
    elif not os.access(kvm, os.R_OK | os.W_OK):
        problem = "/dev/kvm is not readable and writable by this user"
    elif Path("/sys/module/kvm_pvm").exists():
        problem = (
            "/dev/kvm is nested PVM (kvm_pvm), which cannot run a normal guest kernel "
            "(QEMU fails with 'failed to set MSR 0x10a')"
        )
    if problem:
        if requested == "kvm":
            raise BackendError("qemu", f"accel = kvm, but {problem}", 'use accel = "auto"')
        return Accelerator("tcg", f"software emulation: {problem}")
    return Accelerator("kvm", "/dev/kvm is usable")


def tsc_khz() -> int:
    """The host's TSC rate, which the guest kernel cannot calibrate under TCG."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return 2_000_000


class QemuBackend(Backend):
    name: ClassVar[str] = "qemu"
    promises_isolation: ClassVar[bool] = True

    def __init__(self, settings: QemuSettings | None = None, uid_base: int = DEFAULT_UID_BASE):
        self.settings = settings or QemuSettings()
        self.uid_base = uid_base
        self._uids: dict[str, int] = {}
        self._checked = False
        self.qemu = QEMU
        self.accel = Accelerator("tcg", "not probed yet")
        self._kernel: Kernel | None = None
        self._bundle: Bundle | None = None
        self._filter: bytes | None = None
        self._template: Template | None = None
        # One lock per event loop: a backend outlives an asyncio.run (tests share one
        # template across many), and a lock belongs to the loop it first waited in.
        self._template_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._launches = itertools.count(1)
        self.boot_seconds: float | None = None  # the template's cold boot, once known

    # --- identity: one unprivileged uid per zone name for its QEMU; the socket stays the
    # executor's own (the launcher connects it before dropping to that uid) -----------

    def zone_uid(self, zone: str) -> int:
        if zone not in self._uids:
            self._uids[zone] = self.uid_base + 1 + len(self._uids)
        return self._uids[zone]

    def peer_allowed(self, handle: ZoneHandle, pid: int, uid: int) -> bool:
        """The launcher connects as this executor's user, in the process that becomes
        QEMU (not yet reaped, so its pid cannot have been reused)."""
        return isinstance(handle, QemuHandle) and pid == handle.pid and uid == os.geteuid()

    def socket_arg(self, spec: ZoneSpec) -> str:
        return "/dev/fd/{fd}"  # vm_guest fills in the port's descriptor

    def validate(self, spec: ZoneSpec) -> None:
        """A guest sees no host file: the bundle is all it has. A zone that needs one
        (the local model planner's model file) cannot run here."""
        if spec.read_only:
            shown = ", ".join(str(p) for p in spec.read_only)
            raise BackendError(
                self.name,
                f"zone {spec.name} needs host files ({shown}), and a guest sees none "
                "(the local model planner is not bundled into the VM)",
                'use [planner] kind = "llm" (the model runs behind the executor) or '
                '"hijacked" with the qemu backend, or backend = "sandbox" for a local model',
            )

    # --- availability -------------------------------------------------------------------------

    def check(self) -> None:
        if self._checked:
            return
        self.qemu = shutil.which(QEMU) or ""
        if not self.qemu:
            raise BackendError(
                self.name,
                f"{QEMU} is not installed",
                "apt-get install qemu-system-x86 (make setup does it as root)",
            )
        self.accel = accelerator(self.settings.accel)
        self._kernel = ensure_kernel()
        self._bundle = ensure_bundle(self._kernel)
        self._filter = build_filter()
        self._checked = True

    def describe(self) -> dict[str, str]:
        """What ``doctor`` shows: the accelerator and why, the kernel, the bundle."""
        self.check()
        assert self._kernel is not None
        assert self._bundle is not None
        return {
            "accelerator": f"{self.accel.name} ({self.accel.reason})",
            "kernel": f"{self._kernel.release} ({self._kernel.directory})",
            "bundle": f"{self._bundle.size / 2**20:.1f} MiB ({self._bundle.initramfs})",
            "memory": f"{self.settings.memory_mb} MiB per guest",
            "starts": "template clones" if self.settings.template else "cold boots",
        }

    # --- starting -----------------------------------------------------------------------------

    async def _start(self, spec: ZoneSpec) -> ZoneHandle:
        self.check()
        template = await self.template() if self.settings.template else None
        number = next(self._launches)
        launch = Path(
            tempfile.mkdtemp(prefix=f"qemu-{number}-", dir=spec.socket_path.parent.parent)
        )
        uid = self.zone_uid(spec.name)
        fds: list[int] = []
        group: cgroups.Group | None = None
        try:
            # The channel: QEMU's end of the zone socket, connected by the launcher
            # (still root, so the runtime directory need not be reachable by the uid)
            # into this placeholder's number. SO_PEERCRED then names the QEMU process.
            channel = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            fds.append(channel)
            argv = self._machine_argv(f"fd={channel}", _qmp_listener(launch, fds))
            state = -1
            if template is None:
                argv += self._boot_argv(fds, template=False)
            else:
                clone, state = template.clone_argv(fds)
                argv += clone
            if os.geteuid() == 0:
                os.chown(launch, uid, uid)
            group = self._group(f"qemu-{spec.name}-{os.getpid()}-{number}")
            drop = _drop_to(uid, spec.limits, self.settings, (spec.socket_path, channel), group)
            process = await spec.spawn(
                argv, {"PATH": "/usr/bin:/bin"}, pass_fds=tuple(fds), preexec_fn=drop
            )
        except BaseException:
            shutil.rmtree(launch, ignore_errors=True)
            if group is not None:
                group.remove()
            raise
        finally:
            for fd in fds:
                os.close(fd)
        handle = QemuHandle(process, spec, launch, self._wake(spec), group)
        if template is not None:
            try:
                await self._load_state(handle, state)
            except BaseException:
                handle.kill()
                await handle.wait()
                raise
        return handle

    def _group(self, name: str) -> cgroups.Group | None:
        """One cgroup per QEMU process, where the hierarchy is writable: its memory
        (guest RAM, translation cache, QEMU itself) and its tasks, and a kill that takes
        every thread at once."""
        memory = self.settings.memory_mb + self.settings.tb_size_mb + QEMU_OVERHEAD_MB
        return cgroups.create(name, Limits(memory_mb=memory, pids=QEMU_TASKS))

    async def _load_state(self, handle: QemuHandle, state: int) -> None:
        """Give a clone its template's device state: it runs on from the template's pause."""
        async with Qmp(handle.launch / QMP_SOCKET) as qmp:
            await qmp.command("migrate-set-capabilities", capabilities=IGNORE_SHARED)
            await qmp.command("migrate-incoming", uri=f"fd:{state}")
            deadline = time.monotonic() + 30
            while (await qmp.command("query-status")).get("status") == "inmigrate":
                if time.monotonic() > deadline:
                    raise BackendError(self.name, "the clone never loaded its template state")
                await asyncio.sleep(0.002)
            # the template was paused when it was saved, so its clones start paused
            await qmp.command("cont")

    def greeting(self, handle: ZoneHandle) -> bytes:
        return handle.wake if isinstance(handle, QemuHandle) else b""

    def _wake(self, spec: ZoneSpec) -> bytes:
        assert self._filter is not None
        argv = spec.argv(socket=self.socket_arg(spec), extra=("--landlock",))[2:]  # no python -m
        limits = spec.limits
        wake = Wake(
            seed=secrets.token_bytes(32),
            time_ns=time.time_ns(),
            argv=argv,
            uid=GUEST_UID,
            limits=[limits.memory_mb, limits.pids, limits.cpu_seconds, limits.open_files],
            filter=self._filter,
        )
        return encode_wake(wake)

    def _machine_argv(self, channel: str, qmp: int) -> list[str]:
        """What every VM of this backend has, template and clones alike. ``qmp`` is a
        listening Unix socket (:func:`_qmp_listener`), the only monitor QEMU has."""
        accel = "kvm" if self.accel.name == "kvm" else f"tcg,tb-size={self.settings.tb_size_mb}"
        return [
            self.qemu,
            "-M",
            "microvm,x-option-roms=off,rtc=off,memory-backend=mem",
            "-accel",
            accel,
            "-cpu",
            "host" if self.accel.name == "kvm" else "max",
            "-smp",
            "1",
            "-m",
            f"{self.settings.memory_mb}M",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-nic",
            "none",
            "-no-reboot",
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-chardev",
            "stdio,id=console,signal=off",  # stdout is the zone's log (see _drop_to)
            "-serial",
            "chardev:console",
            "-device",
            "virtio-serial-device",
            "-chardev",
            f"socket,id=channel,{channel}",
            "-device",
            f"virtserialport,chardev=channel,name={PORT_NAME}",
            "-device",
            f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x01",
            "-chardev",
            f"socket,id=qmp,fd={qmp},server=on,wait=off",
            "-mon",
            "chardev=qmp,mode=control",
        ]

    def _boot_argv(self, fds: list[int], *, template: bool) -> list[str]:
        """A cold boot: the kernel and the bundle, RAM in a fresh memfd."""
        assert self._kernel is not None
        assert self._bundle is not None
        kernel = _open_fd(self._kernel.vmlinux, fds)
        initrd = _open_fd(self._bundle.initramfs, fds)
        ram = memfd(f"threezone-{'template' if template else 'boot'}-ram")
        fds.append(ram)
        cmdline = [
            "console=ttyS0",
            "quiet",
            "loglevel=3",
            "panic=-1",  # a panic ends the VM at once (a reboot, which -no-reboot makes an exit)
            "reboot=t",  # by a triple fault: microvm has no ACPI reset or keyboard controller
            # The host can end a guest from outside its kernel: QMP inject-nmi panics it
            # (microvm has no NMI reason port: the kernel reads 0xff, "PCI SERR").
            "sysctl.kernel.panic_on_unrecovered_nmi=1",
            "sysctl.kernel.unknown_nmi_panic=1",
            "pci=off",
            f"tsc_early_khz={tsc_khz()}",
            "rdinit=/init",
        ]
        if template:
            cmdline.append(TEMPLATE_FLAG)
        return [
            "-object",
            f"memory-backend-file,id=mem,size={self.settings.memory_mb}M,"
            f"mem-path=/proc/self/fd/{ram},share=on",
            "-kernel",
            f"/proc/self/fd/{kernel}",
            "-initrd",
            f"/proc/self/fd/{initrd}",
            "-append",
            " ".join(cmdline),
        ]

    # --- the template -------------------------------------------------------------------------

    async def template(self) -> Template:
        loop = asyncio.get_running_loop()
        lock = self._template_locks.setdefault(loop, asyncio.Lock())
        async with lock:
            if self._template is None:
                self._template = await self._build_template()
            return self._template

    async def _build_template(self) -> Template:  # noqa: PLR0915 - one boot, in order
        """Boot once to the point where init waits for its wake, and save that state."""
        work = Path(tempfile.mkdtemp(prefix="threezone-qemu-template-"))
        started = time.monotonic()
        fds: list[int] = []
        ram = -1
        try:
            channel = work / "channel.sock"
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            conns: list[asyncio.StreamWriter] = []

            async def on_channel(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter
            ) -> None:
                conns.append(writer)
                try:
                    await reader.readuntil(TEMPLATE_READY)
                    if not ready.done():
                        ready.set_result(None)
                    await reader.read()  # hold the host end open until QEMU quits
                except (
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    ConnectionError,
                ) as exc:
                    if not ready.done():
                        detail = f"the template closed its port ({type(exc).__name__}: {exc})"
                        ready.set_exception(BackendError(self.name, detail))

            server = await asyncio.start_unix_server(on_channel, path=str(channel))
            uid = self.uid_base  # the template's own unprivileged uid (root executors)
            if os.geteuid() == 0:
                os.chown(work, uid, uid)
                os.chown(channel, uid, uid)
            argv = self._machine_argv(f"path={channel}", _qmp_listener(work, fds))
            argv += self._boot_argv(fds, template=True)
            ram = fds[-1]
            log_path = work / "console.log"
            with open(log_path, "ab") as console:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=console,
                    pass_fds=tuple(fds),
                    start_new_session=True,
                    env={"PATH": "/usr/bin:/bin"},
                    preexec_fn=_drop_to(uid, Limits(), self.settings),
                )
            for fd in fds:
                if fd != ram:
                    os.close(fd)
            try:
                await _until(ready, process, TEMPLATE_TIMEOUT, "the template VM never got ready")
                self.boot_seconds = time.monotonic() - started
                state = await self._save_state(work, process)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                console_tail = log_path.read_text(errors="replace")[-1500:]
                log.error("qemu template console:\n%s", console_tail)
                raise
            finally:
                server.close()
                for writer in conns:
                    writer.close()
            await asyncio.wait_for(process.wait(), 10)
            seal(ram)
            log.info(
                "qemu template ready in %.2f s (%s)", time.monotonic() - started, self.accel.name
            )
            return Template(ram, state, self.settings.memory_mb)
        except BaseException:
            if ram >= 0:
                os.close(ram)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    async def _save_state(self, work: Path, process: asyncio.subprocess.Process) -> int:
        """Migrate the paused template's device state (not its RAM) into a sealed memfd."""
        state_sock = work / "state.sock"
        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_state(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read()
            writer.close()
            if not received.done():
                received.set_result(data)

        server = await asyncio.start_unix_server(on_state, path=str(state_sock))
        if os.geteuid() == 0:
            os.chown(state_sock, self.uid_base, self.uid_base)
        try:
            async with Qmp(work / QMP_SOCKET) as qmp:
                await qmp.command("stop")
                await qmp.command("migrate-set-capabilities", capabilities=IGNORE_SHARED)
                await qmp.command("migrate", uri=f"unix:{state_sock}")
                data = await _until(received, process, 60, "the template state was never saved")
                assert isinstance(data, bytes)
                while True:
                    status = (await qmp.command("query-migrate")).get("status")
                    if status == "completed":
                        break
                    if status in ("failed", "cancelled"):
                        raise BackendError(self.name, f"saving the template failed: {status}")
                    await asyncio.sleep(0.02)
                await qmp.command("quit")
        finally:
            server.close()
        state = memfd("threezone-template-state")
        os.write(state, data)
        seal(state)
        return state


class Template:
    """A saved VM: its RAM and device state, each a sealed memfd held by the executor."""

    def __init__(self, ram: int, state: int, memory_mb: int) -> None:
        self.ram = ram
        self.state = state
        self.memory_mb = memory_mb
        # The RAM memfd is the guest's whole memory: free it with the template, not at exit.
        weakref.finalize(self, _close_all, ram, state)

    def clone_argv(self, fds: list[int]) -> tuple[list[str], int]:
        ram = os.open(f"/proc/self/fd/{self.ram}", os.O_RDONLY | os.O_CLOEXEC)
        fds.append(ram)
        state = os.open(f"/proc/self/fd/{self.state}", os.O_RDONLY | os.O_CLOEXEC)
        fds.append(state)  # its own offset: clones read the state from its start
        return [
            "-object",
            f"memory-backend-file,id=mem,size={self.memory_mb}M,"
            f"mem-path=/proc/self/fd/{ram},share=off",
            "-incoming",
            "defer",  # the state is loaded over QMP once x-ignore-shared is set
        ], state


class QemuHandle(cgroups.GroupedHandle):
    """A zone's QEMU process; its exit code is the zone's, reported by the guest."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        spec: ZoneSpec,
        launch: Path,
        wake: bytes,
        group: cgroups.Group | None = None,
    ) -> None:
        super().__init__(process, group)
        self.zone = spec.name
        self.launch = launch
        self.wake = wake

    @property
    def returncode(self) -> int | None:
        raw = self._process.returncode
        return None if raw is None else guest_code(raw)

    async def wait(self) -> int:
        raw = await super().wait()
        shutil.rmtree(self.launch, ignore_errors=True)
        return guest_code(raw)

    async def stop(self, grace: float = 2.0) -> int:
        """The zone was sent shutdown; then QMP ``quit``; then SIGTERM; then SIGKILL."""
        for step in (self._nothing, self._quit, self._term):
            if self._process.returncode is not None:
                break
            await step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._process.wait()), grace / 2)
        self.kill()
        return await self.wait()

    async def _nothing(self) -> None:
        return None

    async def _quit(self) -> None:
        with contextlib.suppress(OSError, BackendError, TimeoutError):
            async with Qmp(self.launch / QMP_SOCKET, timeout=1.0) as qmp:
                await qmp.command("quit")

    async def _term(self) -> None:
        self._signal(signal.SIGTERM)

    def stats(self) -> dict[str, int]:
        """The QEMU process's memory (kB): resident, proportional, private, unique."""
        return memory_of(self.pid)


def guest_code(raw: int) -> int:
    """QEMU's exit status back to the zone's: isa-debug-exit made it ``code * 2 + 1``."""
    if raw < 0:
        return raw  # QEMU itself was killed by a signal
    if raw % 2 == 1:
        return (raw - 1) // 2
    return GUEST_DIED if raw == 0 else raw  # powered off without a code, or QEMU failed


def memory_of(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            values[key.strip()] = int(rest.split()[0])
    private = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return {
        "rss_kb": values.get("Rss", 0),
        "pss_kb": values.get("Pss", 0),
        # includes template pages that only this clone happens to map
        "private_kb": private,
        # copies only this process has: guest pages it wrote (copy-on-write), TCG's
        # translated code, QEMU's heap
        "unique_kb": values.get("Anonymous", 0),
    }


# --- QMP ------------------------------------------------------------------------------------------


class Qmp:
    """A minimal QMP client on QEMU's Unix socket: greeting, capabilities, commands."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Qmp:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(self.path)), self.timeout
        )
        await self._next(lambda m: "QMP" in m)
        await self.command("qmp_capabilities")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()

    async def command(self, name: str, **arguments: object) -> dict[str, object]:
        assert self._writer is not None
        message: dict[str, object] = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self._writer.write(json.dumps(message).encode() + b"\n")
        await self._writer.drain()
        reply = await self._next(lambda m: "return" in m or "error" in m)
        if "error" in reply:
            raise BackendError("qemu", f"QMP {name}: {reply['error']}")
        result = reply["return"]
        return result if isinstance(result, dict) else {}

    async def _next(self, wanted: Callable[[dict[str, object]], bool]) -> dict[str, object]:
        assert self._reader is not None
        while True:
            line = await asyncio.wait_for(self._reader.readline(), self.timeout)
            if not line:
                raise BackendError("qemu", "QMP connection closed")
            message = json.loads(line)
            if isinstance(message, dict) and wanted(message):
                return message


# --- helpers --------------------------------------------------------------------------------------


def memfd(name: str) -> int:
    return os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)


def seal(fd: int) -> None:
    """No more writes, no resizing, no unsealing: clones map it copy-on-write only."""
    import fcntl

    fcntl.fcntl(fd, _F_ADD_SEALS, _F_SEAL_WRITE | _F_SEAL_SHRINK | _F_SEAL_GROW | _F_SEAL_SEAL)


QMP_SOCKET = "qmp.sock"


def _qmp_listener(directory: Path, fds: list[int]) -> int:
    """QMP's listening socket, made here and handed to QEMU: only this executor's user
    reaches it (the directory is private), and QEMU needs no path of its own."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / QMP_SOCKET))
    listener.listen(1)
    fds.append(listener.detach())
    os.set_inheritable(fds[-1], False)
    return fds[-1]


def _close_all(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _open_fd(path: Path, fds: list[int]) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    fds.append(fd)
    return fd


async def _until(
    future: asyncio.Future[object] | asyncio.Future[bytes] | asyncio.Future[None],
    process: asyncio.subprocess.Process,
    timeout: float,
    what: str,
) -> object:
    """The future's result, unless QEMU exits first or the timeout passes."""
    waiter = asyncio.ensure_future(process.wait())
    try:
        done, _ = await asyncio.wait(
            {future, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiter.cancel()
    if future in done:
        return future.result()
    if waiter in done:
        raise BackendError("qemu", f"{what}: QEMU exited with {process.returncode}")
    raise BackendError("qemu", f"{what} within {timeout:.0f} s")


def _drop_to(
    uid: int,
    limits: Limits,
    settings: QemuSettings,
    channel: tuple[Path, int] | None = None,
    group: cgroups.Group | None = None,
) -> Callable[[], None]:
    """The QEMU process's own limits, cgroup and uid (the guest applies the zone's
    limits); first, with ``channel``, connect the zone socket into that descriptor.
    QEMU dies with the executor (``PR_SET_PDEATHSIG``), as a sandbox zone does: a VM
    left running would hold its memory with nobody to talk to."""
    address_space = (settings.memory_mb + settings.tb_size_mb + 1024) * 1024 * 1024
    executor = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:
        if group is not None:
            group.enter()
        os.dup2(2, 1)  # the guest's console goes where a sandbox zone's stderr goes
        if channel is not None:
            path, number = channel
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            os.dup2(sock.fileno(), number)  # dup2 leaves the copy inheritable
            sock.close()
        for kind, value in (
            (resource.RLIMIT_AS, address_space),
            (resource.RLIMIT_NOFILE, 256),
            (resource.RLIMIT_CORE, 0),
            # the RAM memfd is sized with ftruncate, which this limit also covers
            (resource.RLIMIT_FSIZE, (settings.memory_mb + 64) * 1024 * 1024),
            (resource.RLIMIT_CPU, max(limits.cpu_seconds * 4, 600)),
        ):
            resource.setrlimit(kind, (value, value))
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        # After the uid change, which clears it; then make sure the executor is still
        # there. (It follows the thread that started QEMU: the event loop's, which lives
        # as long as the executor.)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != executor:
            os._exit(1)

    return drop
