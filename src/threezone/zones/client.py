"""The zone side of a zone socket: blocking, single-threaded, small.

Runs *inside* a zone. It imports only the protocol: a zone never sees executor code,
secrets or configuration. The zone connects, says hello, waits for ready, then serves
the executor's requests one at a time; while serving one it may send its own requests
(an action, a completion) and wait for their replies.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
from dataclasses import dataclass

import threezone
from threezone.errors import RemoteProtocolError, ZoneReplyError
from threezone.protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from threezone.protocol.messages import (
    Error,
    Hello,
    IsolationReport,
    Message,
    Ready,
    Role,
    Shutdown,
)

_READ_CHUNK = 256 * 1024


class ShutdownRequested(Exception):
    """The executor asked this zone to exit."""


@dataclass(frozen=True, slots=True)
class ZoneArgs:
    zone: str
    role: Role
    socket: str
    max_frame: int
    extra: tuple[str, ...] = ()
    landlock: bool = False


def parse_args(role: Role, argv: list[str] | None = None) -> ZoneArgs:
    parser = argparse.ArgumentParser(description=f"threezone {role} zone")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--role", choices=[role], default=role)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--max-frame", type=int, default=32 * DEFAULT_MAX_FRAME)
    parser.add_argument("--landlock", action="store_true", help="restrict this zone first")
    parsed, extra = parser.parse_known_args(argv)
    return ZoneArgs(
        parsed.zone, role, parsed.socket, parsed.max_frame, tuple(extra), parsed.landlock
    )


class FdChannel:
    """An inherited descriptor (``--socket /dev/fd/N``) used like a connected socket.

    A ``qemu`` zone's channel is a virtio-serial port its guest's init opened: the
    port allows one opener, so the zone gets the open descriptor, not the path.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def recv(self, size: int) -> bytes:
        return os.read(self._fd, size)

    def close(self) -> None:
        os.close(self._fd)


FD_PREFIX = "/dev/fd/"


def open_channel(path: str) -> socket.socket | FdChannel:
    """The zone's connection: a Unix socket's path, or ``/dev/fd/N`` for one inherited."""
    if path.startswith(FD_PREFIX) and path[len(FD_PREFIX) :].isdigit():
        return FdChannel(int(path[len(FD_PREFIX) :]))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


class ZoneClient:
    def __init__(self, sock: socket.socket | FdChannel, args: ZoneArgs) -> None:
        self._sock = sock
        self._args = args
        self._decoder = FrameDecoder(args.max_frame)
        self._ids = itertools.count(1)

    @classmethod
    def connect(cls, args: ZoneArgs, isolation: IsolationReport | None = None) -> ZoneClient:
        client = cls(open_channel(args.socket), args)
        hello = Hello(
            zone=args.zone,
            role=args.role,
            pid=os.getpid(),
            version=threezone.__version__,
            isolation=isolation,
        )
        client.send(hello)
        ready = client.recv()
        if not isinstance(ready, Ready) or ready.zone != args.zone:
            raise ZoneReplyError(args.zone, f"expected ready, got {type(ready).__name__}")
        return client

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, message: Message) -> None:
        self._sock.sendall(encode_frame(message, self._args.max_frame))

    def recv(self) -> Message:
        """The next message from the executor; raises on EOF or bad bytes."""
        while (message := self._decoder.next_message()) is None:
            chunk = self._sock.recv(_READ_CHUNK)
            if not chunk:
                raise RemoteProtocolError("the executor closed the connection")
            self._decoder.feed(chunk)
        return message

    def call(self, request: Message, request_id: int) -> Message:
        """Send a request of our own and wait for the reply that names it."""
        self.send(request)
        reply = self.recv()
        if isinstance(reply, Shutdown):
            raise ShutdownRequested
        if getattr(reply, "reply_to", None) != request_id:
            raise ZoneReplyError(
                self._args.zone, f"unexpected {type(reply).__name__} to our request"
            )
        return reply

    def error(self, reply_to: int | None, code: str, detail: str) -> None:
        self.send(Error(id=self.next_id(), reply_to=reply_to, code=code, detail=detail[:2000]))

    def close(self) -> None:
        self._sock.close()
