"""``threezone sandbox run``: any command under exactly the isolation a zone gets."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from threezone.backends.base import Backend, Limits, Role, ZoneHandle, ZoneSpec

EXEC_MODULE = "threezone.zones.sandbox_exec"
SOCKET_PLACEHOLDER = "{zone_socket}"  # replaced in the command by the socket's inside path


async def run_in_zone(
    backend: Backend, role: Role, command: list[str], limits: Limits | None = None
) -> int:
    """Run ``command`` as a zone of ``role`` would run; returns the command's exit code."""
    backend.check()
    runtime = Path(tempfile.mkdtemp(prefix="threezone-sandbox-run-"))
    handles: list[ZoneHandle] = []
    started = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def greet(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # no zone protocol here; a VM guest still waits to be woken
        await started.wait()
        if opening := backend.greeting(handles[0]):
            writer.write(opening)
            await writer.drain()

    server: asyncio.AbstractServer | None = None
    try:
        zone_dir = runtime / role
        zone_dir.mkdir(mode=0o700)
        server = await asyncio.start_unix_server(greet, path=str(zone_dir / "zone.sock"))
        spec = ZoneSpec(
            name=f"sandbox-run-{role}",
            role=role,
            module=EXEC_MODULE,
            socket_path=zone_dir / "zone.sock",
            limits=limits or Limits(),
            inherit_stdio=True,
        )
        inside = backend.socket_arg(spec)
        command = [arg.replace(SOCKET_PLACEHOLDER, inside) for arg in command]
        spec = replace(spec, args=("--", *command))
        backend.prepare(spec)
        handle = await backend.start(spec)
        handles.append(handle)
        started.set()
        return await handle.wait()
    finally:
        for writer in writers:
            writer.close()
        if server is not None:
            server.close()
        shutil.rmtree(runtime, ignore_errors=True)
