"""Memory of processes and process trees, from /proc (Linux), for the benchmarks."""

from __future__ import annotations

import contextlib
from pathlib import Path


def rss_mib(pid: int | None) -> float:
    """A process's resident set, MiB; 0 when it is gone."""
    if pid is None:
        return 0.0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return found


def tree_rss_mib(pid: int | None) -> float:
    """RSS of a process and all its descendants (a zone is bwrap plus the interpreter)."""
    if pid is None:
        return 0.0
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += rss_mib(current)
        todo += children(current)
    return total
