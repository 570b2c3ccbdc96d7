"""Sending checkpoints off the machine, without ever holding up the log.

An *anchor* is a copy of a checkpoint somewhere an attacker on this machine cannot
reach (the owner's phone, a mailbox, a remote log). The log hands each checkpoint to an
:class:`Anchor`, which runs the configured sender on a background thread, one checkpoint
at a time and always the newest, so a slow or hung sender costs appends nothing. A
failure (non-zero exit, a timeout, no answer by the time the log closes) is never fatal:
it comes back from :meth:`Anchor.failures` and the log records it as an
``anchor_failed`` record.

The sender is any :data:`AnchorRunner`: a function from the checkpoint's JSON line to
``None`` (sent) or a reason it was not. :func:`command_runner` runs ``anchor_command``
with the JSON on stdin; tests pass fakes.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from threezone.audit.checkpoint import Checkpoint

log = logging.getLogger(__name__)

AnchorRunner = Callable[[bytes], str | None]
"""Send one checkpoint line; return ``None`` when sent, else why it was not."""

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds an anchor command may take before it is killed (and at most this long is
spent waiting for anchors when the log closes)."""

_MAX_REASON: Final = 300


@dataclass(frozen=True, slots=True)
class AnchorFailure:
    """A checkpoint that did not reach its anchor, and why."""

    seq: int
    reason: str


def command_runner(argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> AnchorRunner:
    """A runner that starts ``argv`` with the checkpoint on stdin and waits up to ``timeout``.

    The command runs in a session of its own, so on timeout its whole process group is
    killed, not just the shell that started it.
    """
    command = list(argv)

    def run(payload: bytes) -> str | None:
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            return f"cannot run {command[0]!r}: {exc}"
        return _wait(proc, payload, timeout)

    return run


def _wait(proc: subprocess.Popen[bytes], payload: bytes, timeout: float) -> str | None:
    try:
        _, stderr = proc.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pipe in (proc.stdin, proc.stderr):  # a survivor may hold them: do not read
            if pipe is not None:
                pipe.close()
        proc.wait()
        return f"timed out after {timeout:g}s (killed)"
    if proc.returncode != 0:
        said = stderr.decode("utf-8", "replace").strip()[-_MAX_REASON:]
        return f"exited with status {proc.returncode}" + (f": {said}" if said else "")
    return None


class Anchor:
    """Sends the newest submitted checkpoint, one at a time, on one background thread.

    While a checkpoint is being sent, a newer one replaces any that is still waiting:
    a later checkpoint pins the whole history before it, so the anchor loses nothing by
    skipping one, and a slow sender never builds a backlog (``superseded`` counts them).
    """

    def __init__(self, runner: AnchorRunner) -> None:
        self._runner = runner
        self._cond = threading.Condition()
        self._pending: Checkpoint | None = None
        self._in_flight: Checkpoint | None = None
        self._deadline: float | None = None  # set by close
        self._failures: collections.deque[AnchorFailure] = collections.deque()
        self._thread: threading.Thread | None = None
        self.superseded = 0

    def submit(self, checkpoint: Checkpoint) -> None:
        """Hand ``checkpoint`` to the sender; never blocks. Ignored once closed."""
        with self._cond:
            if self._deadline is not None:
                return  # closing: the last checkpoint is in the chain and the file
            if self._pending is not None:
                self.superseded += 1
            self._pending = checkpoint
            self._cond.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="audit-anchor", daemon=True)
            self._thread.start()

    def has_failures(self) -> bool:
        """Whether :meth:`failures` would return anything (cheap, for every append)."""
        return bool(self._failures)

    def failures(self) -> list[AnchorFailure]:
        """Failures since the last call, oldest first."""
        drained: list[AnchorFailure] = []
        while self._failures:
            drained.append(self._failures.popleft())
        return drained

    def close(self, wait: float = DEFAULT_TIMEOUT) -> None:
        """Stop taking checkpoints; give the last one up to ``wait`` seconds to be sent.

        Whatever is not answered by then becomes a failure now (the log is closing and
        must record it while it still can); a sender still running is abandoned.
        """
        with self._cond:
            if self._deadline is not None:
                return
            self._deadline = time.monotonic() + wait
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(wait)
        with self._cond:
            for checkpoint in (self._in_flight, self._pending):
                if checkpoint is not None:
                    self._fail(checkpoint.seq, "no answer before the log closed")
            self._in_flight = self._pending = None

    def _work(self) -> None:
        while (checkpoint := self._next()) is not None:
            reason = self._send(checkpoint)
            with self._cond:
                if self._in_flight is not checkpoint:
                    return  # close() gave up on it and reported it
                self._in_flight = None
                if reason is not None:
                    self._fail(checkpoint.seq, reason)

    def _next(self) -> Checkpoint | None:
        """Wait for a checkpoint to send; ``None`` once closed and past the deadline."""
        with self._cond:
            while self._pending is None and self._deadline is None:
                self._cond.wait()
            if self._pending is None:
                return None
            if self._deadline is not None and time.monotonic() > self._deadline:
                return None  # close() reports it
            self._in_flight, self._pending = self._pending, None
            return self._in_flight

    def _send(self, checkpoint: Checkpoint) -> str | None:
        try:
            return self._runner(checkpoint.to_line())
        except Exception as exc:  # a broken sender must not kill the thread
            return f"anchor runner raised {type(exc).__name__}: {exc}"

    def _fail(self, seq: int, reason: str) -> None:
        """Record a failure; the caller holds the lock."""
        log.warning("audit checkpoint of seq %d was not anchored: %s", seq, reason)
        self._failures.append(AnchorFailure(seq, reason[:_MAX_REASON]))
