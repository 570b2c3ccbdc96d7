"""``threezone run``: the long-running agent around one :class:`Executor`.

Tasks, all in one event loop::

    pump (one per source)   fetch -> inbox (durable) -> acknowledge -> work queue
    processor               work queue -> executor.process (one message at a time)
    approvals               expire, run approved actions, tell the owner what waits
    control                 a Unix socket only the owner's uid may use: `threezone status`

Stopping (SIGINT/SIGTERM sets the stop event): the pumps stop fetching (an item fetched
but not yet stored is simply fetched again next time), the processor finishes the
message it holds and leaves the rest pending in the inbox, where the next start picks
them up, then the executor stops its zones and closes the audit log with a signed
checkpoint. Nothing is lost and, since every action is recorded under its idempotency
key before it runs, nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgspec

from threezone.connectors.base import ConnectorState, RawItem, Source
from threezone.errors import ConnectorError, StorageError, ThreezoneError, ZoneStartError
from threezone.executor.approvals import Approval, ApprovalQueue, ApprovalStatus
from threezone.executor.broker import peer_credentials
from threezone.executor.core import Executor, Outcome
from threezone.executor.inbox import State

log = logging.getLogger(__name__)

CONTROL_SOCKET = "control.sock"
MAX_RECENT = 20
MAX_CONTROL_REQUEST = 4_096


Hook = Callable[[], Awaitable[None]]


class OwnerChannel(Protocol):
    """Where the owner hears about approvals and alerts (the Telegram connector)."""

    async def send_approval(self, entry: Approval) -> None: ...

    async def send_alert(self, text: str) -> None: ...

    async def handle_decisions(self, queue: ApprovalQueue) -> int: ...


# --- status ---------------------------------------------------------------------------------


class ZoneStatus(msgspec.Struct, frozen=True):
    name: str
    pid: int | None
    starts: int
    probes_held: int
    probes: int


class SourceStatus(msgspec.Struct):
    name: str
    channel: str
    fetched: int = 0
    errors: int = 0
    last_fetch_at: float | None = None
    last_error: str | None = None


class RecentDecision(msgspec.Struct, frozen=True):
    time: float
    message: str
    action: str
    decision: str
    rule: str
    executed: bool


class Status(msgspec.Struct):
    pid: int
    backend: str
    started_at: float
    now: float = 0.0
    zones: list[ZoneStatus] = msgspec.field(default_factory=list)
    inbox: dict[str, int] = msgspec.field(default_factory=dict)
    queued: int = 0
    approvals_pending: int = 0
    sources: list[SourceStatus] = msgspec.field(default_factory=list)
    recent: list[RecentDecision] = msgspec.field(default_factory=list)
    processed: int = 0
    stopping: bool = False
    # Set while the state directory refuses writes (full, read-only): fetching and
    # processing are paused and retried every ``storage_retry`` seconds.
    storage_error: str | None = None


# --- the agent ------------------------------------------------------------------------------


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with a ceiling; ``reset`` after a success."""

    first: float = 1.0
    ceiling: float = 300.0
    current: float = field(default=0.0)

    def next(self) -> float:
        self.current = self.first if self.current == 0 else min(self.current * 2, self.ceiling)
        return self.current

    def reset(self) -> None:
        self.current = 0.0


class Agent:
    def __init__(
        self,
        executor: Executor,
        sources: Sequence[Source],
        *,
        owner: OwnerChannel | None = None,
        state: ConnectorState | None = None,
        fetch_timeout: float = 30.0,
        approvals_interval: float = 5.0,
        storage_retry: float = 5.0,
        after_fetch: Mapping[int, Hook] | None = None,
        closers: Sequence[Hook] = (),
    ) -> None:
        self.executor = executor
        self.sources = list(sources)
        self.owner = owner
        self.state = state
        self.fetch_timeout = fetch_timeout
        self.approvals_interval = approvals_interval
        self.storage_retry = storage_retry
        # Per source (keyed by id()): work to do after each fetch, e.g. settling button
        # presses and auditing what the connector dropped.
        self.after_fetch = dict(after_fetch or {})
        self.closers = list(closers)
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.status = Status(pid=os.getpid(), backend=executor.backend.name, started_at=time.time())
        self.source_status = {
            id(src): SourceStatus(name=type(src).__name__, channel=src.channel)
            for src in self.sources
        }
        self.status.sources = list(self.source_status.values())
        self._recent: deque[RecentDecision] = deque(maxlen=MAX_RECENT)
        self._stopping = asyncio.Event()
        self.control_path = executor.state_dir / CONTROL_SOCKET

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down cleanly (see the module docstring)."""
        try:
            await self.executor.start()
        except BaseException:
            await self.executor.stop()  # undoes a start that failed half-way
            raise
        control = await self._serve_control()
        for message_id in self.executor.inbox.pending():  # left over from the last run
            self.queue.put_nowait(message_id)
        pumps = [asyncio.create_task(self._pump(src)) for src in self.sources]
        processor = asyncio.create_task(self._process(), name="processor")
        approvals = asyncio.create_task(self._approvals(), name="approvals")
        stopped = asyncio.create_task(stop.wait(), name="stop")
        try:
            # Until asked to stop, or until the processor fails (a zone cannot start).
            await asyncio.wait({stopped, processor}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            self.status.stopping = True
            self._stopping.set()
            for task in (*pumps, approvals):
                task.cancel()
            await asyncio.gather(*pumps, approvals, return_exceptions=True)
            self.queue.put_nowait(None)  # the processor finishes what it holds, then exits
            failed = (await asyncio.gather(processor, return_exceptions=True))[0]
            if control is not None:
                control.close()
            for src in self.sources:
                with contextlib.suppress(Exception):
                    await src.close()
            for closer in self.closers:
                with contextlib.suppress(Exception):
                    await closer()
            await self.executor.stop()
            self.control_path.unlink(missing_ok=True)
        if isinstance(failed, BaseException) and not isinstance(failed, asyncio.CancelledError):
            raise failed

    # --- fetching -----------------------------------------------------------------------------

    async def _pump(self, source: Source) -> None:
        status = self.source_status[id(source)]
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                items = await source.fetch(self.fetch_timeout)
            except ConnectorError as exc:
                status.errors += 1
                status.last_error = str(exc)
                delay = backoff.next() if exc.retryable else backoff.ceiling
                log.warning("%s; retrying in %.0f s", exc, delay)
                self.executor.audit.append(
                    "connector_error",
                    {"source": status.name, "detail": str(exc)[:500], "retryable": exc.retryable},
                    durable=False,
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            status.last_fetch_at = time.time()
            status.last_error = None
            try:
                for item in items:
                    await self._store(source, item)
                    status.fetched += 1
                if items:
                    self.executor.audit.sync()  # the batch's "received" records
            except StorageError as exc:
                # Nothing acknowledged that is not stored: the source keeps the rest.
                await self._storage_paused(exc)
                continue
            self._storage_resumed()
            hook = self.after_fetch.get(id(source))
            if hook is not None:
                try:
                    await hook()
                except ConnectorError as exc:
                    status.last_error = str(exc)
                    log.warning("%s", exc)

    async def _store(self, source: Source, item: RawItem) -> None:
        """Inbox first (durable), then acknowledge at the source, then queue."""
        message_id, fresh = self.executor.admit(
            source.channel, item.source_ref, item.untrusted_raw, item.trigger
        )
        if fresh and item.oversized:
            self.executor.quarantine(message_id, "input_too_large", "over executor.max_raw_bytes")
        await source.acknowledge(item.source_ref)
        if fresh:
            self.queue.put_nowait(message_id)

    # --- processing ---------------------------------------------------------------------------

    async def _process(self) -> None:
        while (message_id := await self.queue.get()) is not None:
            try:
                outcome = await self.executor.process(message_id)
            except StorageError as exc:
                # The step that failed was rolled back; the message is tried again.
                await self._storage_paused(exc)
                self.queue.put_nowait(message_id)
                continue
            except ZoneStartError as exc:
                # Our environment's fault, not the message's: it stays pending for the
                # next start, and the agent stops rather than spin.
                log.error("a zone cannot start: %s; stopping", exc)
                raise
            self._remember(outcome)

    async def _storage_paused(self, exc: StorageError) -> None:
        """Say once why work stopped, then wait before the next try."""
        if self.status.storage_error is None:
            log.error(
                "the state directory refuses writes (%s); fetching and processing are "
                "paused and retried every %.0f s until it takes writes again",
                exc,
                self.storage_retry,
            )
        self.status.storage_error = str(exc)
        await asyncio.sleep(self.storage_retry)

    def _storage_resumed(self) -> None:
        if self.status.storage_error is None:
            return
        log.warning("the state directory takes writes again; resuming")
        self.status.storage_error = None
        with contextlib.suppress(StorageError):
            self.executor.audit.append("storage_resumed", {}, durable=False)

    def _remember(self, outcome: Outcome) -> None:
        self._storage_resumed()
        self.status.processed += 1
        now = time.time()
        for record in outcome.decisions:
            recent = RecentDecision(
                time=now,
                message=outcome.message_id,
                action=record.action,
                decision=record.decision,
                rule=record.rule,
                executed=record.executed,
            )
            self._recent.append(recent)
        if outcome.state is State.QUARANTINED:
            log.warning(
                "quarantined %s: %s %s",
                outcome.message_id,
                outcome.error_code,
                outcome.error_detail,
            )

    # --- approvals and the owner --------------------------------------------------------------

    async def _approvals(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._approvals_once()
            except ConnectorError as exc:
                log.warning("owner channel: %s", exc)
            await asyncio.sleep(self.approvals_interval)

    async def _approvals_once(self) -> None:
        queue = self.executor.approvals
        if self.owner is not None:
            await self.owner.handle_decisions(queue)
        await self.executor.run_approvals()
        if self.owner is None or self.state is None:
            return
        for entry in queue.entries((ApprovalStatus.PENDING,)):
            if self.state.get("owner", f"approval-{entry.id}") != "sent":
                await self.owner.send_approval(entry)
                self.state.set("owner", f"approval-{entry.id}", "sent")
        alerts = self.executor.alerts.read()
        sent = int(self.state.get("owner", "alerts_sent", "0") or 0)
        for alert in alerts[sent:]:
            await self.owner.send_alert(f"threezone alert ({alert.kind}): {alert.detail}")
            sent += 1
            self.state.set("owner", "alerts_sent", str(sent))

    # --- status -------------------------------------------------------------------------------

    def snapshot(self) -> Status:
        status = self.status
        status.now = time.time()
        status.zones = [
            ZoneStatus(
                name=zone.name,
                pid=zone.pid,
                starts=zone.starts,
                probes_held=sum(1 for p in zone.isolation.probes if p.blocked)
                if zone.isolation
                else 0,
                probes=len(zone.isolation.probes) if zone.isolation else 0,
            )
            for zone in self.executor.zones
        ]
        status.inbox = {str(k): v for k, v in self.executor.inbox.counts().items()}
        status.queued = self.queue.qsize()
        status.approvals_pending = len(self.executor.approvals.entries((ApprovalStatus.PENDING,)))
        status.recent = list(self._recent)
        return status

    async def _serve_control(self) -> asyncio.AbstractServer | None:
        """The control socket: 0600 in the 0700 state directory, and SO_PEERCRED checked.

        Without it the agent still runs (only ``threezone status`` cannot reach it): a
        state directory whose path is too long for a Unix socket is not worth stopping for.
        """
        self.control_path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            return await asyncio.start_unix_server(self._on_control, path=self.control_path)
        except OSError as exc:
            where = self.control_path
            log.error("no control socket at %s (%s): threezone status will not work", where, exc)
            return None
        finally:
            os.umask(old)

    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not _same_user(writer):
                writer.write(b'{"error": "not the owner"}\n')
                return
            line = await asyncio.wait_for(reader.readline(), 5.0)
            request = line[:MAX_CONTROL_REQUEST].strip()
            if request not in (b"status", b'{"cmd": "status"}'):
                writer.write(b'{"error": "unknown request"}\n')
                return
            writer.write(msgspec.json.encode(self.snapshot()) + b"\n")
        except (TimeoutError, ConnectionError):
            return
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
                writer.close()


def _same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    _pid, uid, _gid = peer_credentials(sock)
    return uid in (os.getuid(), 0)


def read_status(control_path: Path, timeout: float = 5.0) -> Status:
    """``threezone status``: ask a running agent over its control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(control_path))
        sock.sendall(b"status\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65_536)
            if not chunk:
                break
            data += chunk
    answer = msgspec.json.decode(data or b"{}")
    if not isinstance(answer, dict) or "error" in answer or "pid" not in answer:
        shown = answer.get("error", "no answer") if isinstance(answer, dict) else "bad answer"
        raise ThreezoneError(f"{control_path}: the agent refused: {shown}")
    return msgspec.convert(answer, Status)
