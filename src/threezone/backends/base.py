"""The isolation backend interface: start a zone from a :class:`ZoneSpec`, get a handle.

A backend turns a spec into a running process that connects back to the executor's
socket for that zone. The public :meth:`Backend.start` wraps the private ``_start``
hook and maps its failures to :class:`~threezone.errors.ZoneStartError`, so the
executor handles one error type whatever the backend.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from threezone.errors import BackendError, ZoneStartError

Role = Literal["reader", "planner"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits a backend applies where it can (the sandbox backend enforces them)."""

    memory_mb: int = 512
    pids: int = 64
    cpu_seconds: int = 600
    open_files: int = 256


@dataclass(frozen=True, slots=True)
class ZoneSpec:
    """What to run as a zone: ``python -m module args...`` connecting to ``socket_path``."""

    name: str
    role: Role
    module: str
    socket_path: Path
    args: tuple[str, ...] = ()
    log_path: Path | None = None
    limits: Limits = field(default_factory=Limits)

    def argv(self, python: str = sys.executable) -> list[str]:
        return [
            python,
            "-m",
            self.module,
            "--zone",
            self.name,
            "--role",
            self.role,
            "--socket",
            str(self.socket_path),
            *self.args,
        ]


class ZoneHandle(abc.ABC):
    """A running zone's process (group)."""

    @property
    @abc.abstractmethod
    def pid(self) -> int: ...

    @property
    @abc.abstractmethod
    def returncode(self) -> int | None: ...

    @abc.abstractmethod
    async def wait(self) -> int: ...

    @abc.abstractmethod
    def kill(self) -> None:
        """Kill the zone's whole process tree now (a deadline passed or it misbehaved)."""

    async def stop(self, grace: float = 2.0) -> int:
        """Ask politely with SIGTERM, then kill after ``grace`` seconds."""
        if self.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self.wait(), grace)
            except TimeoutError:
                self.kill()
        return await self.wait()

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)


class ProcessHandle(ZoneHandle):
    """A zone that is one asyncio subprocess leading its own process group."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        return await self._process.wait()

    def kill(self) -> None:
        if self._process.returncode is None:
            self._signal(signal.SIGKILL)


class Backend(abc.ABC):
    """An isolation backend. Subclasses implement ``_start`` and ``peer_allowed``."""

    name: ClassVar[str]

    async def start(self, spec: ZoneSpec) -> ZoneHandle:
        try:
            return await self._start(spec)
        except (OSError, BackendError, ValueError) as exc:
            raise ZoneStartError(
                spec.name, f"{self.name} backend could not start it: {exc}"
            ) from exc

    @abc.abstractmethod
    async def _start(self, spec: ZoneSpec) -> ZoneHandle: ...

    @abc.abstractmethod
    def peer_allowed(self, handle: ZoneHandle, pid: int, uid: int) -> bool:
        """Whether a connection with these ``SO_PEERCRED`` values can be this zone."""
