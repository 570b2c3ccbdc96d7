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
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

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
    # Host files the zone may read besides the runtime (a planner's model file), shown
    # read-only at the same path. Backends that share the host's files ignore it.
    read_only: tuple[Path, ...] = ()
    inherit_stdio: bool = False  # `sandbox run`: the command talks to this terminal

    async def spawn(
        self, argv: list[str], env: dict[str, str], **options: Any
    ) -> asyncio.subprocess.Process:
        """Start ``argv`` as this zone's process: its own session (so a kill takes the
        tree), stdin/stdout closed, stderr to the zone's log (or this terminal's stdio
        for ``sandbox run``). ``options`` go to the subprocess (fds, preexec_fn)."""
        if self.inherit_stdio:
            return await asyncio.create_subprocess_exec(
                *argv, start_new_session=True, env=env, **options
            )
        with open(self.log_path or os.devnull, "ab") as stderr:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                env=env,
                **options,
            )

    def argv(
        self, python: str = sys.executable, socket: str | None = None, extra: tuple[str, ...] = ()
    ) -> list[str]:
        """The zone's command line; ``socket`` is its socket's path as the zone sees it."""
        zone = ["--zone", self.name, "--role", self.role]
        return [
            python,
            "-m",
            self.module,
            *zone,
            "--socket",
            socket or str(self.socket_path),
            *extra,
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
    # Whether zones started here must pass every isolation probe before they are trusted.
    promises_isolation: ClassVar[bool] = False

    def check(self) -> None:  # noqa: B027 - an optional hook: most backends run anywhere
        """Raise :class:`BackendError`, naming the fix, if zones cannot start here."""

    def validate(self, spec: ZoneSpec) -> None:  # noqa: B027 - an optional hook
        """Raise :class:`BackendError` if this backend cannot run ``spec`` at all (checked
        when the zone's socket opens, so a misfit fails the start, not the first message)."""

    def prepare(self, spec: ZoneSpec) -> None:  # noqa: B027 - an optional hook
        """Adjust the zone's socket (owner, mode) after the executor created it."""

    def socket_arg(self, spec: ZoneSpec) -> str:
        """The zone's socket path as the zone will see it."""
        return str(spec.socket_path)

    def greeting(self, handle: ZoneHandle) -> bytes:
        """Bytes the executor writes first on the zone's accepted connection (a VM
        guest waits for them: it cannot speak before the host end is there)."""
        return b""

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
