"""``sandbox``: a zone under bubblewrap + seccomp + Landlock + resource limits (Linux).

What one zone gets:

* every namespace unshared (user, net, mount, pid, ipc, uts, cgroup); nested user
  namespaces disabled; no capabilities; a new session; it dies with the executor;
* its own unprivileged uid/gid *outside* the sandbox too (``uid_base`` + n, never
  root), so zones cannot signal or trace each other and ``RLIMIT_NPROC`` is per zone;
* a read-only view of only the Python runtime, the installed package and ``/usr``;
  a private tmpfs ``/tmp`` (its scratch space); its socket directory read-only at
  ``/run/threezone`` (connecting works, creating files does not); a clean environment;
* a seccomp filter (sockets: ``AF_UNIX`` only; io_uring, ptrace, keyctl, bpf, mount,
  namespaces and friends denied) that bubblewrap loads before the zone starts;
* Landlock, applied by the zone itself before it reads any input (``--landlock``):
  writes only to its scratch, TCP bind/connect denied, abstract sockets and signals
  scoped where the ABI allows;
* rlimits always (memory, processes, CPU, files, no core dumps), plus cgroup memory and
  pids limits where the cgroup hierarchy is writable.

Runtimes under a private home (pyenv in ``/root``): the unprivileged uid cannot walk
``/root``. Before it drops privileges, the launcher (a child of the executor, still
root) enters a private mount namespace and bind-mounts each needed path onto a
world-traversable staging tmpfs; bubblewrap binds from there. Nothing is mounted in
the host's namespace and nothing on the host changes mode.

No fallback: if bubblewrap is missing or user namespaces are refused, :meth:`check`
raises :class:`~threezone.errors.BackendError` naming the fix.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import threezone
from threezone.backends import cgroups
from threezone.backends.base import Backend, Limits, ZoneHandle, ZoneSpec
from threezone.backends.seccomp import build_filter, filter_fd
from threezone.errors import BackendError

SOCKET_DIR = "/run/threezone"
SCRATCH = "/tmp"  # noqa: S108 - a private tmpfs inside the sandbox, not the host's /tmp
DEFAULT_UID_BASE = 61000

_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 4096, 0x4000, 1 << 18


@dataclass(frozen=True, slots=True)
class Bind:
    """A host path the zone may read, shown at ``dest`` inside the sandbox."""

    source: Path
    dest: str


def runtime_binds() -> list[Bind]:
    """The Python runtime, the environment, and the package: all a zone needs to run."""
    paths = {Path(sys.base_prefix), Path(sys.prefix)}
    package_root = Path(threezone.__file__).resolve().parent.parent
    if not any(package_root.is_relative_to(p) for p in paths):
        paths.add(package_root)  # an editable install: the source tree's src/
    ordered = sorted(p.resolve() for p in paths)
    kept = [p for p in ordered if not any(p != q and p.is_relative_to(q) for q in ordered)]
    return [Bind(p, str(p)) for p in kept]


class SandboxBackend(Backend):
    name: ClassVar[str] = "sandbox"
    promises_isolation: ClassVar[bool] = True

    def __init__(self, uid_base: int = DEFAULT_UID_BASE) -> None:
        self.uid_base = uid_base
        self._uids: dict[str, int] = {}
        self._program: bytes | None = None
        self._checked = False
        self.bwrap = "bwrap"
        self._launches = itertools.count(1)

    # --- identity -----------------------------------------------------------------------------

    def zone_uid(self, zone: str) -> int:
        """A stable unprivileged uid per zone name, for this executor's lifetime."""
        if zone not in self._uids:
            self._uids[zone] = self.uid_base + 1 + len(self._uids)
        return self._uids[zone]

    def prepare(self, spec: ZoneSpec) -> None:
        """Let the zone's uid reach its socket and nothing else in the runtime directory."""
        uid = self.zone_uid(spec.name)
        directory = spec.socket_path.parent
        directory.parent.chmod(0o711)  # traversable, not listable
        if os.geteuid() == 0:
            os.chown(directory, 0, uid)
            directory.chmod(0o750)
            os.chown(spec.socket_path, uid, uid)
            spec.socket_path.chmod(0o600)

    def peer_allowed(self, handle: ZoneHandle, pid: int, uid: int) -> bool:
        expected_uid = self._uids.get(_zone_of(handle), -1) if os.geteuid() == 0 else os.getuid()
        return uid == expected_uid and _descends_from(pid, handle.pid)

    def socket_arg(self, spec: ZoneSpec) -> str:
        return f"{SOCKET_DIR}/{spec.socket_path.name}"

    # --- availability -------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`BackendError` (with the fix) unless zones can start here."""
        if self._checked:
            return
        if sys.platform != "linux":
            raise BackendError(self.name, "needs Linux", "use the qemu or orbstack backend")
        self.bwrap = shutil.which("bwrap") or ""
        if not self.bwrap:
            raise BackendError(
                self.name,
                "bubblewrap (bwrap) is not installed",
                "apt-get install bubblewrap (make setup does it as root)",
            )
        self._probe_userns()
        cgroups.prune()
        self._checked = True

    def _probe_userns(self) -> None:
        argv = [
            self.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--ro-bind",
            "/usr",
            "/usr",
            *_usr_merged_links(),
            "true",
        ]
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            preexec_fn=self._drop_to(self.uid_base, Limits()),
        )
        if result.returncode != 0:
            raise BackendError(
                self.name,
                f"bubblewrap cannot create user namespaces: {result.stderr.strip()}",
                "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; "
                "on Ubuntu: kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor "
                "profile for bwrap)",
            )

    # --- starting -----------------------------------------------------------------------------

    async def _start(self, spec: ZoneSpec) -> ZoneHandle:
        self.check()
        if self._program is None:
            self._program = build_filter()
        uid = self.zone_uid(spec.name)
        binds = [
            *runtime_binds(),
            *(Bind(path.resolve(), str(path)) for path in spec.read_only),
            Bind(spec.socket_path.parent, SOCKET_DIR),
        ]
        seccomp_fd = filter_fd(self._program)
        # One group per launch: a spare must not share limits with, or die with, the zone.
        group = cgroups.create(f"{spec.name}-{os.getpid()}-{next(self._launches)}", spec.limits)
        argv = bwrap_argv(
            self.bwrap, spec, binds, uid=uid, seccomp_fd=seccomp_fd, socket=self.socket_arg(spec)
        )
        try:
            process = await spec.spawn(
                argv,
                {"PATH": "/usr/bin:/bin"},
                pass_fds=(seccomp_fd,),
                preexec_fn=self._launcher(binds, uid, spec.limits, group),
            )
        finally:
            os.close(seccomp_fd)
        return SandboxHandle(process, spec.name, group)

    def _launcher(
        self, binds: list[Bind], uid: int, limits: Limits, group: cgroups.Group | None
    ) -> Callable[[], None]:
        drop = self._drop_to(uid, limits)

        def launch() -> None:  # runs in the forked child, before exec
            if group is not None:
                group.enter()
            if os.geteuid() == 0:
                _stage(binds)
            drop()

        return launch

    @staticmethod
    def _drop_to(uid: int, limits: Limits) -> Callable[[], None]:
        def drop() -> None:
            _set_rlimits(limits)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)

        return drop


class SandboxHandle(cgroups.GroupedHandle):
    def __init__(
        self, process: asyncio.subprocess.Process, zone: str, group: cgroups.Group | None
    ) -> None:
        super().__init__(process, group)
        self.zone = zone


def bwrap_argv(
    bwrap: str, spec: ZoneSpec, binds: list[Bind], *, uid: int, seccomp_fd: int, socket: str
) -> list[str]:
    argv = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--uid",
        str(uid),
        "--gid",
        str(uid),
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        SCRATCH,
        "--setenv",
        "PYTHONDONTWRITEBYTECODE",
        "1",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--ro-bind",
        "/usr",
        "/usr",
        *_usr_merged_links(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        SCRATCH,
    ]
    if Path("/etc/ld.so.cache").exists():
        argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for index, bind in enumerate(binds):
        source = _staged(index) if os.geteuid() == 0 else str(bind.source)
        argv += ["--ro-bind", source, bind.dest]
    argv += ["--seccomp", str(seccomp_fd), "--chdir", SCRATCH, "--"]
    return argv + spec.argv(socket=socket, extra=("--landlock",))


# --- helpers that run in the launcher child ---------------------------------------------------

_STAGE_ROOT = Path("/run/threezone-stage")


def _staged(index: int) -> str:
    return str(_STAGE_ROOT / str(index))


def _stage(binds: list[Bind]) -> None:
    """Private mount namespace; each bind source mounted where the zone's uid can reach it."""
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    _STAGE_ROOT.mkdir(mode=0o755, exist_ok=True)
    _check(
        libc.mount(
            b"tmpfs", bytes(_STAGE_ROOT), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=0755,size=64k"
        ),
        "stage tmpfs",
    )
    for index, bind in enumerate(binds):
        target = Path(_staged(index))
        if bind.source.is_dir():
            target.mkdir()
        else:  # a single file (a model) binds onto a file
            target.touch()
        _check(
            libc.mount(bytes(bind.source), bytes(target), None, _MS_BIND | _MS_REC, None),
            f"bind {bind.source}",
        )


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _set_rlimits(limits: Limits) -> None:
    memory = limits.memory_mb * 1024 * 1024
    for kind, value in (
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_NPROC, limits.pids),
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, 64 * 1024 * 1024),
    ):
        resource.setrlimit(kind, (value, value))


def _usr_merged_links() -> list[str]:
    """Debian's /bin, /lib, /lib64, /sbin are links into /usr: recreate them inside."""
    args: list[str] = []
    for name in ("bin", "lib", "lib64", "sbin"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{name}"]
    return args


def _zone_of(handle: ZoneHandle) -> str:
    return handle.zone if isinstance(handle, SandboxHandle) else ""


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether ``pid`` is ``ancestor`` or below it in the host's process tree."""
    for _ in range(64):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False
