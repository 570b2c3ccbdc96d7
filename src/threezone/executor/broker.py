"""The executor's side of the zone sockets: accept, validate, route, supervise.

One listening Unix socket per zone, in a private runtime directory (mode 0700). The
socket a connection arrives on is the zone's identity; ``SO_PEERCRED`` must match the
process the backend started, and the zone's hello must name that zone and role.

:class:`ZoneConnection` reads frames, checks the size before reading a body, matches
replies to our requests by id, and hands the zone's own requests (only the planner
may send those) to the executor. :class:`Zone` starts the zone through its backend,
enforces per-request deadlines (killing the zone's process tree when one passes) and
restarts a dead zone with backoff before its next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from threezone.backends.base import Backend, ZoneHandle, ZoneSpec
from threezone.errors import (
    RemoteProtocolError,
    ThreezoneError,
    ZoneCrashedError,
    ZoneError,
    ZoneReplyError,
    ZoneStartError,
    ZoneTimeoutError,
)
from threezone.protocol.framing import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    body_length,
    decode_body,
    encode_frame,
)
from threezone.protocol.messages import (
    ActionRequest,
    Error,
    Hello,
    IsolationReport,
    LLMRequest,
    Message,
    Ready,
    Response,
    Shutdown,
)

log = logging.getLogger(__name__)

ZoneRequest = ActionRequest | LLMRequest


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


RequestHandler = Callable[["Zone", ZoneRequest], Awaitable[Message]]
_PEERCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class ZoneSettings:
    hello_timeout: float = 20.0
    request_timeout: float = 30.0
    max_frame: int = DEFAULT_MAX_FRAME  # what a zone may send us
    max_frame_out: int = DEFAULT_MAX_FRAME  # what we may send a zone (raw mail is larger)
    restart_backoff: tuple[float, ...] = (0.1, 0.5, 2.0, 5.0)
    # A start that fails (the process died before its hello, or never said it) is tried
    # again this many times in all, with the backoff, before ZoneStartError reaches the
    # caller: one zone killed while starting must not stop the agent.
    start_attempts: int = 3
    # Keep one fresh zone started ahead of need, so a restart adopts it at once.
    spare: bool = False
    # One zone per request: each request gets a zone that has seen nothing before, and
    # the zone is killed once it answered (or failed), so whatever one message did to
    # its reader cannot reach the next. Requests then take turns.
    disposable: bool = False


@dataclass(slots=True)
class _Launch:
    """One started zone process on its way to (or past) its hello."""

    handle: ZoneHandle
    arrived: asyncio.Future[ZoneConnection]
    isolation: IsolationReport | None = None
    peer_pid: int | None = None


def _consume(future: asyncio.Future[ZoneConnection]) -> None:
    if not future.cancelled():
        future.exception()


class ZoneConnection:
    """One accepted zone connection: frames both ways, replies matched by id."""

    def __init__(
        self, zone: Zone, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._zone = zone
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed: asyncio.Future[ZoneError] = asyncio.get_running_loop().create_future()

    async def read_message(self) -> Message:
        header = await self._reader.readexactly(HEADER_SIZE)
        size = body_length(header, self._zone.settings.max_frame)
        return decode_body(await self._reader.readexactly(size))

    async def send(self, message: Message) -> None:
        self._writer.write(encode_frame(message, self._zone.settings.max_frame_out))
        await self._writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def expect(self, request_id: int) -> asyncio.Future[Response]:
        """Register interest in the reply to ``request_id`` before sending the request."""
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        return future

    def forget(self, request_id: int) -> None:
        self._pending.pop(request_id, None)

    async def run(self) -> None:
        """Read until EOF or a protocol violation; then fail every pending request."""
        failure: ZoneError
        try:
            while True:
                self._route(await self.read_message())
        except (asyncio.IncompleteReadError, ConnectionError):
            failure = ZoneCrashedError(self._zone.name, "the zone closed its connection")
        except RemoteProtocolError as exc:
            failure = ZoneReplyError(self._zone.name, f"protocol violation: {exc}")
        except ZoneError as exc:
            failure = exc
        self._fail(failure)

    def _route(self, message: Message) -> None:
        reply_to = getattr(message, "reply_to", None)
        if reply_to is not None and reply_to in self._pending:
            future = self._pending[reply_to]
            if future.done():  # answered twice, or after its deadline passed
                raise ZoneReplyError(self._zone.name, f"a second reply to request {reply_to}")
            future.set_result(message)  # type: ignore[arg-type]
            return
        if isinstance(message, ActionRequest | LLMRequest) and self._zone.accepts_requests:
            task = asyncio.create_task(self._serve(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        raise ZoneReplyError(self._zone.name, f"unexpected {type(message).__name__} from this zone")

    async def _serve(self, request: ZoneRequest) -> None:
        try:
            reply = await self._zone.handle_request(request)
        except Exception:  # our bug: say so to the zone at once, never hang it until its deadline
            log.exception(
                "handling %s from zone %s failed", type(request).__name__, self._zone.name
            )
            reply = Error(
                id=self._zone.next_id(),
                reply_to=request.id,
                code="executor_error",
                detail="the executor failed to handle this request",
            )
        with contextlib.suppress(ConnectionError):
            await self.send(reply)

    def _fail(self, failure: ZoneError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(failure)
        if not self.closed.done():
            self.closed.set_result(failure)
        self.close()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._writer.close()


class Zone:
    """A supervised zone: started on demand, restarted with backoff after it dies."""

    def __init__(
        self,
        spec: ZoneSpec,
        backend: Backend,
        settings: ZoneSettings,
        on_request: RequestHandler | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.settings = settings
        self._on_request = on_request
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self._handle: ZoneHandle | None = None
        self._conn: ZoneConnection | None = None
        self._conn_task: asyncio.Task[None] | None = None
        self._waiting: list[_Launch] = []  # started, hello not yet accepted
        self._starting = 0  # backend.start calls in progress
        self._spare: asyncio.Task[tuple[_Launch, ZoneConnection]] | None = None
        self.isolation: IsolationReport | None = None
        self.peer_pid: int | None = None
        self.on_started: Callable[[Zone], None] | None = None
        self._failures = 0
        self._healthy = False  # False from the moment we kill it until a new hello
        self.starts = 0
        self._lock = asyncio.Lock()
        self._turn = asyncio.Lock()  # disposable zones: one request per zone

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def accepts_requests(self) -> bool:
        return self._on_request is not None

    @property
    def pid(self) -> int | None:
        return self._handle.pid if self._handle else None

    def next_id(self) -> int:
        return next(self._ids)

    async def listen(self) -> None:
        self.backend.validate(self.spec)
        path = self.spec.socket_path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await asyncio.start_unix_server(self._accept, path=str(path))
        path.chmod(0o600)
        self.backend.prepare(self.spec)

    async def handle_request(self, request: ZoneRequest) -> Message:
        assert self._on_request is not None  # _route checks accepts_requests first
        return await self._on_request(self, request)

    # --- lifecycle ----------------------------------------------------------------------------

    async def ensure_running(self) -> None:
        async with self._lock:
            alive = self._handle is not None and self._handle.returncode is None
            if self._healthy and alive and self._conn is not None and not self._conn.closed.done():
                return
            for attempt in range(1, self.settings.start_attempts + 1):
                await self._reap()
                if self._failures:
                    delays = self.settings.restart_backoff
                    await asyncio.sleep(delays[min(self._failures, len(delays)) - 1])
                try:
                    await self._start()
                    return
                except ZoneStartError as exc:
                    if attempt == self.settings.start_attempts:
                        raise
                    log.warning("zone %s: %s; starting it again", self.name, exc.detail)

    async def _start(self) -> None:
        launch, conn = await self._adopt_spare() or await self._spawn()
        self._handle, self._conn = launch.handle, conn
        self.isolation, self.peer_pid = launch.isolation, launch.peer_pid
        self._conn_task = asyncio.create_task(conn.run())
        self._healthy = True
        if self.settings.spare:
            self._spare = asyncio.create_task(self._spawn())
        if self.on_started is not None:
            self.on_started(self)

    async def _adopt_spare(self) -> tuple[_Launch, ZoneConnection] | None:
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        try:
            launch, conn = await spare
        except ZoneError:
            return None  # the spare failed; start one now, and report that one's failure
        if launch.handle.returncode is not None or conn.closed.done():
            conn.close()
            return None  # it died after its hello: start a fresh one
        return launch, conn

    async def _spawn(self) -> tuple[_Launch, ZoneConnection]:
        """Start a zone process and wait for its accepted hello, within the deadline."""
        self.starts += 1
        self._starting += 1
        try:
            handle = await self.backend.start(self.spec)
        finally:
            self._starting -= 1
        launch = _Launch(handle, asyncio.get_running_loop().create_future())
        # A spare dropped while starting leaves nobody to read a late refusal: read here.
        launch.arrived.add_done_callback(_consume)
        self._waiting.append(launch)
        try:
            conn = await self._hello(launch)
        except TimeoutError:
            self._failures += 1
            handle.kill()
            if handle.returncode is not None:
                detail = f"exited with code {handle.returncode} before its hello"
                raise ZoneStartError(self.name, detail) from None
            raise ZoneStartError(self.name, "no hello before the deadline") from None
        except ZoneError as exc:
            self._failures += 1
            handle.kill()
            raise ZoneStartError(self.name, f"refused at start: {exc.detail}") from exc
        except asyncio.CancelledError:  # a spare dropped before its hello
            handle.kill()
            await handle.wait()  # reaped, and its cgroup removed
            raise
        finally:
            self._waiting.remove(launch)
            self.isolation = launch.isolation  # kept even when refused: doctor shows it
        return launch, conn

    async def _hello(self, launch: _Launch) -> ZoneConnection:
        """The launch's accepted connection; TimeoutError at the deadline, or as soon as
        its process is seen to have exited without one (no point waiting out the rest)."""
        deadline = asyncio.get_running_loop().time() + self.settings.hello_timeout
        while not launch.arrived.done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or launch.handle.returncode is not None:
                raise TimeoutError
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(launch.arrived), min(left, 0.1))
        return launch.arrived.result()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ZoneConnection(self, reader, writer)
        launch = await self._launch_of(writer)
        if launch is None:
            conn.close()  # nobody we started is expected on this socket now
            return
        try:
            await self._greet(conn, launch)
        except (ThreezoneError, asyncio.IncompleteReadError, ConnectionError) as exc:
            conn.close()
            if not launch.arrived.done():
                launch.arrived.set_exception(self._refusal(exc))
            return
        if not launch.arrived.done():
            launch.arrived.set_result(conn)

    def _refusal(self, exc: Exception) -> ZoneError:
        """Why a connection that should have said hello did not, as a zone error."""
        if isinstance(exc, ZoneError):
            return exc
        if isinstance(exc, asyncio.IncompleteReadError | ConnectionError):
            return ZoneStartError(self.name, f"closed its connection before its hello ({exc})")
        return ZoneStartError(self.name, str(exc))

    async def _launch_of(self, writer: asyncio.StreamWriter) -> _Launch | None:
        """The waiting launch whose process this peer is (SO_PEERCRED), if any.

        A backend may connect while it is still starting the zone (the qemu backend's
        launcher connects before QEMU runs), so a peer from a start in progress is
        given until that start returns."""
        pid, uid, _gid = peer_credentials(writer.get_extra_info("socket"))
        deadline = asyncio.get_running_loop().time() + self.settings.hello_timeout
        while True:
            for launch in self._waiting:
                if not launch.arrived.done() and self.backend.peer_allowed(launch.handle, pid, uid):
                    launch.peer_pid = pid  # the zone's own process, as the host sees it
                    return launch
            if not self._starting or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.005)
        log.warning("zone %s: refused a connection from pid=%d uid=%d", self.name, pid, uid)
        return None

    async def _greet(self, conn: ZoneConnection, launch: _Launch) -> None:
        opening = self.backend.greeting(launch.handle)
        if opening:
            await conn.send_raw(opening)
        hello = await conn.read_message()
        if not isinstance(hello, Hello):
            raise ZoneReplyError(self.name, f"expected hello, got {type(hello).__name__}")
        if hello.zone != self.name or hello.role != self.spec.role:
            raise ZoneReplyError(self.name, f"hello names {hello.zone}/{hello.role}")
        launch.isolation = hello.isolation
        self._check_isolation(hello.isolation)
        await conn.send(Ready(zone=self.name))

    def _check_isolation(self, report: IsolationReport | None) -> None:
        """A backend that promises isolation gets a zone only if every probe held."""
        if not self.backend.promises_isolation:
            return
        if report is None or not report.probes:
            raise ZoneStartError(self.name, "the zone sent no isolation report")
        failed = [f"{p.name} ({p.detail})" for p in report.probes if not p.blocked]
        if failed:
            raise ZoneStartError(self.name, "isolation check failed: " + "; ".join(failed))

    # --- requests -----------------------------------------------------------------------------

    async def request(
        self, message: Message, request_id: int, timeout: float | None = None
    ) -> Response:
        """Send one request and await its reply, within the deadline.

        A missed deadline kills the zone (it restarts on the next request); a dead
        connection raises :class:`ZoneCrashedError`. Either way the caller quarantines.
        A disposable zone is killed after every request, whatever its outcome.
        """
        if not self.settings.disposable:
            return await self._request(message, request_id, timeout)
        async with self._turn:
            try:
                return await self._request(message, request_id, timeout)
            finally:
                await self._dispose()

    async def _dispose(self) -> None:
        """End the zone that served one request (no failure: it did its one job)."""
        async with self._lock:
            self._kill()
            await self._reap()

    async def _request(self, message: Message, request_id: int, timeout: float | None) -> Response:
        conn, reply = await self._send(message, request_id)
        try:
            result = await asyncio.wait_for(reply, timeout or self.settings.request_timeout)
        except TimeoutError:
            self._failures += 1
            self._kill()
            raise ZoneTimeoutError(self.name, "no reply before the deadline; zone killed") from None
        except ZoneError:
            self._failures += 1
            self._kill()
            raise
        finally:
            conn.forget(request_id)
        self._failures = 0
        return result

    async def _send(
        self, message: Message, request_id: int
    ) -> tuple[ZoneConnection, asyncio.Future[Response]]:
        """Deliver a request, restarting a zone found dead *before* it saw the request.

        A zone that died on the previous message may not have been noticed yet; that is
        no fault of this message, so it gets one fresh zone instead of a quarantine.
        """
        for attempt in range(2):
            await self.ensure_running()
            assert self._conn is not None
            conn = self._conn
            reply = conn.expect(request_id)
            try:
                await conn.send(message)
            except ConnectionError as exc:
                conn.forget(request_id)
                self._kill()
                if attempt:
                    raise ZoneCrashedError(self.name, f"cannot deliver the request: {exc}") from exc
                continue
            return conn, reply
        raise AssertionError("unreachable")

    async def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is None:
            return
        spare.cancel()
        with contextlib.suppress(asyncio.CancelledError, ZoneError):
            launch, conn = await spare
            conn.close()
            await launch.handle.stop()

    def _kill(self) -> None:
        self._healthy = False
        if self._handle is not None:
            self._handle.kill()
        if self._conn is not None:
            self._conn.close()

    async def _reap(self) -> None:
        if self._conn_task is not None:
            self._conn_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._conn_task
        if self._handle is not None:
            self._handle.kill()
            await self._handle.wait()
        self._conn, self._conn_task, self._handle = None, None, None

    async def stop(self) -> None:
        await self._drop_spare()
        if self._conn is not None and not self._conn.closed.done():
            with contextlib.suppress(ConnectionError):
                await self._conn.send(Shutdown(id=self.next_id()))
        if self._handle is not None:
            await self._handle.stop()
        await self._reap()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            Path(self.spec.socket_path).unlink()
