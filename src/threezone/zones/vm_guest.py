"""PID 1 of a ``qemu`` zone's guest: set the guest up, wait for the executor, be the zone.

The guest is a Debian kernel and an initramfs bundle (``backends/qemu_image.py``); this
module is its init. It mounts the pseudo-filesystems, loads the virtio modules, finds
the ``threezone`` virtio-serial port and imports every zone program, so that a guest
snapshotted here (a *template*) is one frame away from serving. Then:

1. it waits for the executor's :class:`~threezone.protocol.messages.Wake` frame (the
   host speaks first: QEMU drops what a guest writes while no host end is connected);
2. reseeds the kernel's random generator and Python's ``random`` from the wake's seed,
   and sets the clock: every clone of a template starts with the template's state;
3. forks the zone: an unprivileged uid, rlimits, ``no_new_privs``, the same seccomp
   filter as the sandbox backend, and the zone's own Landlock (``--landlock``); the
   zone program runs with the port as ``--socket /dev/fd/N``;
4. reports the zone's exit code to the host through QEMU's ``isa-debug-exit`` port,
   which ends the VM.

The guest has no network device, no disk, no shared folder and no host ``/proc``: the
zone's only way out is the port, and the executor validates everything on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib
import mmap
import os
import random
import resource
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

from threezone.protocol.framing import HEADER, HEADER_SIZE, decode_wake
from threezone.protocol.messages import Channel, Wake

PORT_NAME = "threezone"
SCRATCH = "/tmp"  # noqa: S108 - the guest's own tmpfs
TEMPLATE_READY = b"threezone-template-ready\n"
TEMPLATE_FLAG = "threezone.template=1"
ZONE_PROGRAMS = (
    "threezone.zones.reader_main",
    "threezone.zones.planner_main",
    "threezone.zones.sandbox_exec",
    "threezone.testing.faulty_zone",
)
DEBUG_EXIT_PORT = 0xF4
GUEST_DIED = 127  # what the host sees when the guest cannot report a zone's code

_SYS_FINIT_MODULE = 313  # x86_64
_RNDADDENTROPY = 0x40085203
_RNDRESEEDCRNG = 0x5207
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_RB_POWER_OFF = 0x4321FEDC
_MAX_WAKE = 256 * 1024


def main() -> NoReturn:
    """Run the guest; whatever happens, end the VM with a code the host can read."""
    try:
        code = run()
    except BaseException:  # PID 1 must report, never exit by exception
        traceback.print_exc()
        code = GUEST_DIED
    power_off(code)


def run() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    mount_basics(libc)
    load_modules(libc, Path("/threezone/modules"), Path("/threezone/modules.order"))
    port = find_port(PORT_NAME)
    for program in ZONE_PROGRAMS:
        importlib.import_module(program)
    fd = os.open(port, os.O_RDWR)
    template = TEMPLATE_FLAG in Path("/proc/cmdline").read_text().split()
    if template:
        warm_up()
    # The zone's process exists before the template is saved, waiting for its wake:
    # a clone goes straight from the wake to becoming its zone, without a fork.
    pid = os.fork()
    if pid == 0:
        code = GUEST_DIED
        try:
            wake = read_wake(fd)
            reseed(wake.seed)
            time.clock_settime_ns(time.CLOCK_REALTIME, wake.time_ns)
            code = become_zone(libc, wake, fd)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # a bad wake, or the zone's own crash: reported as a code
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code if 0 <= code < GUEST_DIED else GUEST_DIED)
    if template:
        os.write(fd, TEMPLATE_READY)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if 0 <= code < GUEST_DIED else GUEST_DIED


# --- set-up ---------------------------------------------------------------------------------------


def mount_basics(libc: ctypes.CDLL) -> None:
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    for source, target, kind, options, extra in (
        ("proc", "/proc", "proc", "hidepid=invisible", flags),
        ("sysfs", "/sys", "sysfs", "", flags),
        ("devtmpfs", "/dev", "devtmpfs", "mode=0755", _MS_NOSUID | _MS_NOEXEC),
    ):
        _check(
            libc.mount(source.encode(), target.encode(), kind.encode(), extra, options.encode()),
            f"mount {target}",
        )
    # The scratch tmpfs, unless the bundle itself lives under /tmp (a checkout there):
    # a mount would hide it, and the guest's root is a private tmpfs anyway.
    if any(os.scandir(SCRATCH)):
        os.chmod(SCRATCH, 0o1777)  # noqa: S103 - the guest's own scratch, as a tmpfs would be
    else:
        _check(
            libc.mount(
                b"tmpfs", SCRATCH.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=1777,size=32m"
            ),
            f"mount {SCRATCH}",
        )
    if not os.path.lexists("/dev/fd"):
        os.symlink("/proc/self/fd", "/dev/fd")


def load_modules(libc: ctypes.CDLL, directory: Path, order: Path) -> None:
    for name in order.read_text().split():
        fd = os.open(directory / name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.syscall(_SYS_FINIT_MODULE, fd, b"", 0) != 0:
                errno = ctypes.get_errno()
                if errno != 17:  # EEXIST: built in, or loaded already
                    raise OSError(errno, f"finit_module({name}): {os.strerror(errno)}")
        finally:
            os.close(fd)


def find_port(name: str, timeout: float = 30.0) -> str:
    """The ``/dev/vportNpM`` whose port QEMU named ``name``, once the driver made it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/sys/class/virtio-ports").glob("vport*"):
            try:
                if (entry / "name").read_text().strip() == name:
                    device = f"/dev/{entry.name}"
                    if os.path.exists(device):
                        return device
            except OSError:
                pass
        time.sleep(0.01)
    raise RuntimeError(f"no virtio-serial port named {name!r} appeared")


def warm_up() -> None:
    """Run each code path once in the template, so its lazy imports are in the snapshot."""
    from threezone.readers import read

    channels: tuple[tuple[Channel, bytes], ...] = (
        ("email", b"Subject: warm\r\nContent-Type: text/html\r\n\r\n<p>warm <b>up</b></p>\r\n"),
        ("telegram", b'{"update_id": 1, "message": {"message_id": 1, "text": "warm"}}'),
        ("slack", b'{"type": "message", "text": "warm", "ts": "1.0"}'),
    )
    for channel, raw in channels:
        with contextlib.suppress(Exception):  # a warm-up that fails costs only speed
            read(channel, raw, f"{channel}:warm")
    with contextlib.suppress(Exception):  # a zone's start: its argument parsing, once
        from threezone.zones.client import parse_args
        from threezone.zones.planner_main import planner_factory
        from threezone.zones.probes import ProbeTargets, parse_probe_args, probe_args

        targets = ProbeTargets(None, None, None, None, ("/",), None)
        argv = ["--zone", "warm", "--socket", "/dev/fd/3", "--landlock", *probe_args(targets)]
        parse_probe_args(parse_args("reader", argv).extra)
        planner_factory(("--planner", "hijacked"))


def read_wake(fd: int) -> Wake:
    header = _read_exactly(fd, HEADER_SIZE)
    (size,) = HEADER.unpack(header)
    if not 0 < size <= _MAX_WAKE:
        raise RuntimeError(f"wake frame of {size} bytes")
    return decode_wake(_read_exactly(fd, size))


def _read_exactly(fd: int, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            time.sleep(0.005)  # no host end yet: the port reads empty until it connects
            continue
        data += chunk
    return bytes(data)


def reseed(seed: bytes) -> None:
    """Mix the host's seed into the kernel's pool, credit it, reseed the CRNG now."""
    with open("/dev/urandom", "wb") as urandom:
        info = struct.pack("ii", len(seed) * 8, len(seed)) + seed
        fcntl.ioctl(urandom, _RNDADDENTROPY, info)
        fcntl.ioctl(urandom, _RNDRESEEDCRNG)
    random.seed()  # from the reseeded kernel


# --- the zone -------------------------------------------------------------------------------------


def become_zone(libc: ctypes.CDLL, wake: Wake, fd: int) -> int:
    memory_mb, pids, cpu_seconds, open_files = wake.limits
    for kind, value in (
        (resource.RLIMIT_AS, memory_mb * 1024 * 1024),
        (resource.RLIMIT_NPROC, pids),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_NOFILE, open_files),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, 64 * 1024 * 1024),
    ):
        resource.setrlimit(kind, (value, value))
    os.chdir(SCRATCH)
    os.setgroups([])
    os.setgid(wake.uid)
    os.setuid(wake.uid)
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if wake.filter:
        load_filter(libc, wake.filter)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": SCRATCH, "LANG": "C.UTF-8"})
    module, *argv = (arg.replace("{fd}", str(fd)) for arg in wake.argv)
    if module not in ZONE_PROGRAMS:
        raise RuntimeError(f"{module} is not a zone program")
    sys.argv = [module, *argv]
    code: int = importlib.import_module(module).main(argv)
    return code


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def load_filter(libc: ctypes.CDLL, program: bytes) -> None:
    """Install a compiled BPF program (8-byte ``sock_filter`` instructions) on this process."""
    if len(program) % 8:
        raise RuntimeError("seccomp program is not whole instructions")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


# --- the end --------------------------------------------------------------------------------------


def power_off(code: int) -> NoReturn:
    """QEMU's isa-debug-exit ends the VM with exit status ``code * 2 + 1``.

    The kernel has no ``/dev/port``, so PID 1 asks for the one I/O port with
    ``ioperm`` and runs the four instructions of an ``outb`` itself.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        _check(libc.ioperm(DEBUG_EXIT_PORT, 1, 1), "ioperm")
        _outb(DEBUG_EXIT_PORT, code & 0x7F)
    except OSError:
        traceback.print_exc()
    libc.sync()
    libc.reboot(_RB_POWER_OFF)
    os._exit(code)


# mov eax, esi; mov edx, edi; out dx, al; ret   (System V: port in edi, value in esi)
_OUTB = bytes([0x89, 0xF0, 0x89, 0xFA, 0xEE, 0xC3])


def _outb(port: int, value: int) -> None:
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_OUTB)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int)(address)(port, value)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
