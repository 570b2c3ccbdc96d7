"""``threezone sandbox run``: any command under exactly the isolation a zone gets."""

from __future__ import annotations

import shutil
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

from threezone.backends.base import Backend, Limits, Role, ZoneSpec

EXEC_MODULE = "threezone.zones.sandbox_exec"
SOCKET_PLACEHOLDER = "{zone_socket}"  # replaced in the command by the socket's inside path


async def run_in_zone(
    backend: Backend, role: Role, command: list[str], limits: Limits | None = None
) -> int:
    """Run ``command`` as a zone of ``role`` would run; returns the command's exit code."""
    backend.check()
    runtime = Path(tempfile.mkdtemp(prefix="threezone-sandbox-run-"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        zone_dir = runtime / role
        zone_dir.mkdir(mode=0o700)
        listener.bind(str(zone_dir / "zone.sock"))  # present, as for a real zone, never served
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
        return await handle.wait()
    finally:
        listener.close()
        shutil.rmtree(runtime, ignore_errors=True)
