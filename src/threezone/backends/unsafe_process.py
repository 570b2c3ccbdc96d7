"""``unsafe-process``: a zone as a plain subprocess, with NO isolation. Debugging only.

The zone keeps this user's network, files and credentials: an injection that takes
over a reader or the planner can do anything this user can. It exists to debug the
protocol and the pipeline; its name says so, and it warns every time it starts a zone.
"""

from __future__ import annotations

import logging
import os
from typing import ClassVar

from threezone.backends.base import Backend, ProcessHandle, ZoneHandle, ZoneSpec

log = logging.getLogger(__name__)

WARNING = (
    "backend 'unsafe-process' starts zone %s with NO isolation (network, files and "
    "credentials of this user are reachable from it); use it for debugging only"
)


class UnsafeProcessBackend(Backend):
    name: ClassVar[str] = "unsafe-process"

    async def _start(self, spec: ZoneSpec) -> ZoneHandle:
        log.warning(WARNING, spec.name)
        return ProcessHandle(await spec.spawn(spec.argv(), _zone_environment()))

    def peer_allowed(self, handle: ZoneHandle, pid: int, uid: int) -> bool:
        return pid == handle.pid and uid == os.getuid()


def _zone_environment() -> dict[str, str]:
    """Even without isolation, a zone gets no inherited secrets through its environment."""
    keep = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "PYTHONHASHSEED", "COVERAGE_PROCESS_START")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env
