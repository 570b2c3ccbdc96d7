"""The owner's full check of an audit log: every finding, from every source of evidence.

:func:`verify_log` reads the log (:func:`~threezone.audit.scan.scan_lines`: every break
in the chain), the checkpoint file next to it and any anchored checkpoints the owner
supplies, checks every checkpoint signature against the trusted public keys, and
returns an :class:`AuditReport`. It never stops at the first problem, and it never
raises for what it finds: only for what it cannot read at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from threezone.audit.chain import ChainCheckpoint, ChainHead
from threezone.audit.checkpoint import CheckpointLines, check_checkpoints, key_id, trusted_keys
from threezone.audit.findings import Finding
from threezone.audit.keys import DEFAULT_KEY_NAME, load_public_key, public_key_path
from threezone.audit.log import bounded_lines, checkpoints_path, read_checkpoint_lines
from threezone.audit.scan import scan_lines
from threezone.errors import AuditError


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Everything :func:`verify_log` found; ``clean`` only when ``findings`` is empty.

    ``notes`` say what the check could not cover (no checkpoints, which key was used).
    """

    path: Path
    lines: int
    head: ChainHead
    checkpoints: int
    keys: tuple[tuple[str, Path], ...]  # (key id, the file it was read from), trusted
    findings: tuple[Finding, ...]
    notes: tuple[str, ...]

    @property
    def clean(self) -> bool:
        return not self.findings


def verify_log(
    path: Path,
    *,
    public_keys: Sequence[Path] | None = None,
    anchors: Sequence[CheckpointLines] = (),
) -> AuditReport:
    """Check the log at ``path`` in full and report every finding, never stopping early.

    Checks the chain (:func:`~threezone.audit.scan.scan_lines`), every checkpoint record's
    signature, the checkpoint file against the chain, and each anchored checkpoint (as
    the anchor recorded it) against the log. ``public_keys`` are the trusted keys; by
    default the ``.pub`` of the default signing key next to the log, if it exists.
    Raises ``AuditError`` only if the log or a key cannot be read at all.
    """
    key_paths = _default_public_keys(path) if public_keys is None else list(public_keys)
    public = [load_public_key(p) for p in key_paths]
    trusted = trusted_keys(public)
    try:
        with path.open("rb") as file:
            scan = scan_lines(bounded_lines(file), str(path))
    except OSError as exc:
        raise AuditError(str(path), f"cannot read: {exc}") from exc
    cp_path = checkpoints_path(path)
    cp_file = read_checkpoint_lines(cp_path) if cp_path.exists() else None
    findings = check_checkpoints(
        str(path), scan.last_seq, scan.checkpoints, file=cp_file, anchors=anchors, trusted=trusted
    )
    notes = _notes(scan.checkpoints, cp_file, anchors)
    # The log's own findings first, in line order, then the checkpoint file's, the anchors'.
    all_findings = sorted(
        [*scan.findings, *findings], key=lambda f: (f.source != str(path), f.line or 0)
    )
    return AuditReport(
        path=path,
        lines=scan.lines,
        head=scan.head,
        checkpoints=len(scan.checkpoints),
        keys=tuple((key_id(k), p) for k, p in zip(public, key_paths, strict=True)),
        findings=tuple(all_findings),
        notes=notes,
    )


def _default_public_keys(path: Path) -> list[Path]:
    candidate = public_key_path(path.parent / DEFAULT_KEY_NAME)
    return [candidate] if candidate.exists() else []


def _notes(
    in_chain: Sequence[ChainCheckpoint],
    cp_file: CheckpointLines | None,
    anchors: Sequence[CheckpointLines],
) -> tuple[str, ...]:
    notes: list[str] = []
    if not in_chain and (cp_file is None or not cp_file.lines):
        notes.append("no signed checkpoints: records cut from the end cannot be detected")
    elif not anchors:
        notes.append(
            "no anchor given (--anchor): cutting both the log and its checkpoint file at a "
            "checkpoint cannot be detected without one"
        )
    return tuple(notes)
