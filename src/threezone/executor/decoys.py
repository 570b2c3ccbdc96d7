"""Decoys for the zones' isolation self-check, and tripwires if a zone reaches one.

The executor opens a TCP listener on host loopback and an abstract Unix socket,
writes a decoy secret beside its real state and a marker in the host's ``/tmp``, and
hands their addresses to every zone. A zone must fail to reach each of them. Any
connection that does arrive is an escape: it is logged and audited as an alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from threezone.backends.base import ZoneSpec
from threezone.zones.probes import ProbeTargets, probe_args

log = logging.getLogger(__name__)

Alarm = Callable[[str], None]


class Decoys:
    def __init__(self, state_dir: Path, alarm: Alarm) -> None:
        self._state_dir = state_dir
        self._alarm = alarm
        self._servers: list[asyncio.AbstractServer] = []
        self._files: list[Path] = []
        self.tcp_port: int | None = None
        self.abstract = f"threezone-decoy-{secrets.token_hex(8)}"

    async def start(self, decoy_secret: str | None = None) -> None:
        """Open the listeners and write the decoy files.

        ``decoy_secret`` is what the decoy secret file holds: the executor passes its
        canaries, so a zone that escaped and read it trips the canary guard if it ever
        tries to send what it found.
        """
        tcp = await asyncio.start_server(self._touched("tcp"), "127.0.0.1", 0)
        self.tcp_port = tcp.sockets[0].getsockname()[1]
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind("\0" + self.abstract)
        abstract = await asyncio.start_unix_server(self._touched("abstract unix"), sock=unix)
        self._servers = [tcp, abstract]
        content = decoy_secret if decoy_secret is not None else secrets.token_hex(16)
        self.secret = self._write(self._state_dir / "decoy-secret", content)
        fd, marker = tempfile.mkstemp(prefix="threezone-decoy-", dir="/tmp")
        os.close(fd)
        self.host_tmp = Path(marker)
        self._files.append(self.host_tmp)

    def _write(self, path: Path, content: str) -> Path:
        path.write_text(content)
        path.chmod(0o600)
        self._files.append(path)
        return path

    def _touched(self, what: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]:
        def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()
            self._alarm(f"a connection reached the {what} decoy: a zone escaped its isolation")

        return handle

    def targets(self, spec: ZoneSpec, socket_dir_inside: str) -> ProbeTargets:
        return ProbeTargets(
            decoy_tcp_port=self.tcp_port,
            decoy_abstract=self.abstract,
            decoy_secret=str(self.secret),
            executor_pid=os.getpid(),
            forbidden_writes=("/usr", sys.prefix, socket_dir_inside),
            host_tmp_marker=str(self.host_tmp),
        )

    def args(self, spec: ZoneSpec, socket_dir_inside: str) -> tuple[str, ...]:
        return tuple(probe_args(self.targets(spec, socket_dir_inside)))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
        for path in self._files:
            path.unlink(missing_ok=True)
