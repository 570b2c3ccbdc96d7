"""The checkpoint file next to the log, and the settings that turn checkpoints on.

``<log>.checkpoints`` holds one signed checkpoint per line, a copy of each checkpoint
record in the chain (see :mod:`threezone.audit.checkpoint`), so that cutting the log's
tail leaves a checkpoint pointing past its end. When the log opens,
:func:`open_checkpoint_file` compares the two and refuses a log they disagree about,
except for the one gap a crash can leave (the last checkpoint written to the chain but
not yet to the file), which it fills in.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from threezone.audit._files import FILE_MODE, make_private_and_durable, write_all
from threezone.audit.anchor import DEFAULT_TIMEOUT, Anchor, AnchorRunner, command_runner
from threezone.audit.chain import VerifyReport
from threezone.audit.checkpoint import (
    Checkpoint,
    CheckpointLines,
    key_id,
    parse_checkpoint,
    reconcile,
    signature_problem,
)
from threezone.audit.findings import FindingKind
from threezone.audit.keys import DEFAULT_KEY_NAME, load_or_create_signing_key
from threezone.config.schema import AuditConfig
from threezone.errors import AuditChainBroken, AuditError

CHECKPOINTS_SUFFIX: Final = ".checkpoints"
"""The checkpoint file is the log's path with this appended."""

_MAX_CHECKPOINT_LINE: Final = 4096


def checkpoints_path(log_path: Path) -> Path:
    """Where the checkpoint file of the log at ``log_path`` lives."""
    return log_path.with_name(log_path.name + CHECKPOINTS_SUFFIX)


@dataclass(frozen=True, slots=True)
class Checkpointing:
    """How an :class:`AuditLog` signs checkpoints: with ``key``, every ``every`` records
    and on close; each one also goes to ``anchor`` (if any), whose answers close waits
    for at most ``anchor_wait`` seconds."""

    key: Ed25519PrivateKey
    every: int = 100
    anchor: AnchorRunner | None = None
    anchor_wait: float = DEFAULT_TIMEOUT


def checkpointing_from_config(
    config: AuditConfig, *, state_dir: Path, resolve: Callable[[str], Path]
) -> Checkpointing:
    """Checkpointing as ``[audit]`` configures it; creates the signing key on first use.

    ``resolve`` turns a path from the config into an absolute one (``LoadedConfig.resolve``).
    Raises ``AuditError`` for a key file others can read (it names the ``chmod 600``).
    """
    key_path = resolve(config.signing_key) if config.signing_key else state_dir / DEFAULT_KEY_NAME
    runner = command_runner(config.anchor_command) if config.anchor_command else None
    key = load_or_create_signing_key(key_path)
    return Checkpointing(key=key, every=config.checkpoint_every, anchor=runner)


class CheckpointFile:
    """The checkpoint side of an open log: the key, the file, the anchor, the count."""

    def __init__(self, path: Path, fd: int, settings: Checkpointing, since: int) -> None:
        self.path = path
        self.fd: int | None = fd
        self.key = settings.key
        self.every = settings.every
        self.anchor = Anchor(settings.anchor) if settings.anchor is not None else None
        self.anchor_wait = settings.anchor_wait
        self.since = since  # records appended since the last checkpoint record
        # In the chain, not yet in the file: the disk had no room when they were made.
        self.unwritten: list[Checkpoint] = []

    def write(self, checkpoint: Checkpoint) -> None:
        """Append one line to the checkpoint file and fsync it."""
        if self.fd is None:
            raise AuditError(str(self.path), "the checkpoint file is closed")
        write_all(self.fd, checkpoint.to_line(), self.path)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def read_checkpoint_lines(path: Path, source: str | None = None) -> CheckpointLines:
    """Checkpoints as JSON lines from a file: the checkpoint file or an anchor's record.

    A line longer than any checkpoint comes out in pieces, each reported as malformed;
    a last line without a newline is ``torn``.
    """
    lines: list[tuple[int, bytes]] = []
    torn = b""
    try:
        with path.open("rb") as file:
            while piece := file.readline(_MAX_CHECKPOINT_LINE):
                if piece.endswith(b"\n"):
                    lines.append((len(lines) + 1, piece[:-1]))
                else:
                    torn = piece
    except OSError as exc:
        raise AuditError(str(path), f"cannot read: {exc}") from exc
    if torn and len(torn) == _MAX_CHECKPOINT_LINE:
        lines.append((len(lines) + 1, torn))  # an over-long piece, not a torn end
        torn = b""
    return CheckpointLines(source or str(path), tuple(lines), torn)


def open_checkpoint_file(
    path: Path, report: VerifyReport, settings: Checkpointing | None
) -> tuple[CheckpointFile | None, int | None]:
    """Check the checkpoint file against the verified chain; open it if checkpointing.

    Returns the checkpointer and the seq of a checkpoint restored to the file (a crash
    fell between the two writes), if any. Raises ``AuditChainBroken`` when they disagree.
    """
    cp_path = checkpoints_path(path)
    if not cp_path.exists():
        if report.checkpoints:
            detail = f"missing, but the log holds {len(report.checkpoints)} checkpoint records"
            raise AuditChainBroken(str(cp_path), 1, FindingKind.CHECKPOINT_FILE.value, detail)
        if settings is None:
            return None, None
    fd = _open_append(cp_path)
    try:
        restored = _reconcile_file(fd, cp_path, report)
        if settings is None:
            os.close(fd)
            return None, restored
        _check_own_signatures(report, settings.key, path)
    except BaseException:
        os.close(fd)
        raise
    since = report.head.seq - (report.checkpoints[-1].seq if report.checkpoints else -1)
    return CheckpointFile(cp_path, fd, settings, since), restored


def _reconcile_file(fd: int, cp_path: Path, report: VerifyReport) -> int | None:
    lines = read_checkpoint_lines(cp_path)
    result = reconcile(report.checkpoints, lines, report.head.seq)
    if result.problem is not None:
        problem = result.problem
        line = problem.line or 1
        raise AuditChainBroken(problem.source, line, problem.kind.value, problem.detail)
    if result.append:
        write_all(fd, result.append, cp_path)
    return result.restored_seq


def _check_own_signatures(report: VerifyReport, key: Ed25519PrivateKey, path: Path) -> None:
    """Every checkpoint record must match what it signs, and those this key signed must
    verify; other keys' are left to ``audit verify`` (the key may have been replaced)."""
    public = key.public_key()
    own = {key_id(public): public}
    for record in report.checkpoints:
        try:
            checkpoint = parse_checkpoint(record.data)
        except ValueError as exc:
            raise AuditChainBroken(str(path), record.line, "bad-checkpoint", str(exc)) from None
        if (checkpoint.seq, checkpoint.hash, checkpoint.ts) != (
            record.seq - 1,
            record.prev,
            record.ts,
        ):
            detail = f"checkpoint record seq {record.seq} does not match what it signs"
            raise AuditChainBroken(str(path), record.line, "edited", detail)
        if checkpoint.key_id not in own:
            continue
        if signature_problem(checkpoint, own) is not None:
            detail = f"checkpoint of seq {checkpoint.seq}: signature does not verify (forged?)"
            raise AuditChainBroken(str(path), record.line, "bad-signature", detail)


def _open_append(path: Path) -> int:
    """Open (creating 0600 if needed) the checkpoint file for appending."""
    try:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        raise AuditError(str(path), f"cannot open: {exc}") from exc
    try:
        if os.fstat(fd).st_size == 0:
            make_private_and_durable(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd
