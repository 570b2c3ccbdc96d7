"""The executor's private runtime directory (zone sockets), and the ones crashes left.

Each executor makes a fresh ``threezone-run-*`` directory (mode 0700) in the temporary
directory and removes it when it stops. One that was killed cannot; over months of
unattended running those would pile up. So the directory records who made it (pid and
the process's start time, which tells a reused pid apart), and each new executor
removes those of this user whose maker is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "threezone-run-"
OWNER_FILE = "owner"


def process_identity(pid: int) -> str | None:
    """``"PID STARTTIME"`` of a running process, or None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return f"{pid} {fields[19]}"  # field 22 of stat(5), counted after the command name


def create() -> Path:
    """Sweep what dead executors left, then make this one's directory."""
    sweep(Path(tempfile.gettempdir()))
    runtime = Path(tempfile.mkdtemp(prefix=PREFIX))
    (runtime / OWNER_FILE).write_text(process_identity(os.getpid()) or str(os.getpid()))
    return runtime


def sweep(root: Path) -> list[Path]:
    """Remove the runtime directories under ``root`` whose executor is gone."""
    removed = []
    for candidate in root.glob(f"{PREFIX}*"):
        if _abandoned(candidate):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def _abandoned(directory: Path) -> bool:
    with contextlib.suppress(OSError, ValueError):
        if directory.is_symlink() or directory.stat().st_uid != os.geteuid():
            return False
        recorded = (directory / OWNER_FILE).read_text().strip()
        pid = int(recorded.split()[0])
        return process_identity(pid) != recorded
    return False  # no owner file (or unreadable): not ours to judge
