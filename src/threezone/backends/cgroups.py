"""Memory and process limits per zone through cgroups, where the hierarchy is writable.

cgroup v2 (unified, with ``memory`` and ``pids`` enabled for children) is preferred;
cgroup v1 (separate ``memory`` and ``pids`` hierarchies) is used where that is what
the machine has. Without either, or without root, zones still get rlimits; ``doctor``
says which applies. A zone's launcher joins its group before it execs, so everything
the zone starts is counted and :meth:`Group.kill` takes the whole tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from threezone.backends.base import Limits, ProcessHandle

ROOT = Path("/sys/fs/cgroup")
PARENT = "threezone"


@dataclass(frozen=True, slots=True)
class Group:
    version: int
    dirs: tuple[Path, ...]

    def enter(self) -> None:
        """Move the calling process into the group (run in the launcher, before exec)."""
        for directory in self.dirs:
            (directory / "cgroup.procs").write_text(str(os.getpid()))

    def kill(self) -> None:
        kill_file = self.dirs[0] / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
            return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def pids(self) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(p) for p in (self.dirs[0] / "cgroup.procs").read_text().split()]
        return []

    def remove(self) -> None:
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                directory.rmdir()

    async def drain_and_remove(self, timeout: float = 2.0) -> None:
        """Kill what is left, wait until the group is empty, then remove it.

        A zone's processes outlive its launcher by a moment (the pid namespace's init
        dies first), and a group that still has members cannot be removed."""
        self.kill()
        for _ in range(int(timeout / 0.005)):
            if not self.pids():
                break
            await asyncio.sleep(0.005)
        self.remove()


class GroupedHandle(ProcessHandle):
    """A zone process with its own group (or None): a kill takes the group too, and the
    group is removed once the process is reaped."""

    def __init__(self, process: asyncio.subprocess.Process, group: Group | None) -> None:
        super().__init__(process)
        self.group = group

    def kill(self) -> None:
        super().kill()
        if self.group is not None:
            self.group.kill()

    async def wait(self) -> int:
        code = await super().wait()
        if self.group is not None:
            await self.group.drain_and_remove()
        return code


_OWNER = re.compile(r"-(?P<pid>\d+)(?:-\d+)?$")


def prune() -> None:
    """Remove empty groups left by executors that are gone (a crash, a kill -9)."""
    for root in (ROOT / PARENT, ROOT / "memory" / PARENT, ROOT / "pids" / PARENT):
        if not root.is_dir():
            continue
        for directory in root.iterdir():
            owner = _OWNER.search(directory.name)
            if directory.is_dir() and owner and not Path(f"/proc/{owner['pid']}").exists():
                with contextlib.suppress(OSError):
                    directory.rmdir()


def mode() -> str:
    """``"v2"``, ``"v1"`` or ``"none"``: what :func:`create` would use here."""
    if os.geteuid() != 0:
        return "none"
    if _v2_usable():
        return "v2"
    if all(os.access(ROOT / c, os.W_OK) for c in ("memory", "pids")):
        return "v1"
    return "none"


def create(name: str, limits: Limits) -> Group | None:
    """A new group with the zone's limits, or None where cgroups are not available."""
    kind = mode()
    try:
        if kind == "v2":
            return _create_v2(name, limits)
        if kind == "v1":
            return _create_v1(name, limits)
    except OSError:
        return None
    return None


def _v2_usable() -> bool:
    controllers = ROOT / "cgroup.controllers"
    if not controllers.exists() or not os.access(ROOT, os.W_OK):
        return False
    return {"memory", "pids"} <= set(controllers.read_text().split())


def _create_v2(name: str, limits: Limits) -> Group:
    parent = ROOT / PARENT
    parent.mkdir(exist_ok=True)
    (ROOT / "cgroup.subtree_control").write_text("+memory +pids")
    (parent / "cgroup.subtree_control").write_text("+memory +pids")
    group = parent / name
    group.mkdir(exist_ok=True)
    (group / "memory.max").write_text(str(limits.memory_mb * 1024 * 1024))
    if (group / "memory.swap.max").exists():
        (group / "memory.swap.max").write_text("0")
    (group / "pids.max").write_text(str(limits.pids))
    return Group(2, (group,))


def _create_v1(name: str, limits: Limits) -> Group:
    memory = ROOT / "memory" / PARENT / name
    pids = ROOT / "pids" / PARENT / name
    for directory in (memory, pids):
        directory.mkdir(parents=True, exist_ok=True)
    (memory / "memory.limit_in_bytes").write_text(str(limits.memory_mb * 1024 * 1024))
    (pids / "pids.max").write_text(str(limits.pids))
    return Group(1, (memory, pids))
