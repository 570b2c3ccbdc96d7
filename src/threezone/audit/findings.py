"""What ``audit verify`` can find wrong with a log, as typed values (pure, no I/O).

A :class:`Finding` names what was done (``kind``), where (``source``, ``line``, ``seq``)
and says it in words (``detail``). Verification collects every finding it can instead of
stopping at the first, so an owner learns the whole extent of the damage in one run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FindingKind(enum.StrEnum):
    """What was done to the log, as far as the evidence can tell."""

    EDITED = "edited"
    """A record's content changed (its hash no longer matches, or a later link or a
    checkpoint disagrees with the hash it now has)."""
    DELETED = "deleted"
    """Records are missing from the middle: ``seq`` jumps and the gap never fills."""
    REORDERED = "reordered"
    """A record is out of place: ``seq`` goes backwards (moved, swapped or duplicated)."""
    TRUNCATED = "truncated"
    """The log ends before a record that a checkpoint (file or anchor) says it had."""
    MALFORMED = "malformed"
    """A line is not a record ``seal`` could have produced (not JSON, wrong shape, not
    canonical)."""
    TORN = "truncated-line"
    """The last line has no newline: a torn write (a crash) or a cut mid-record."""
    BAD_SIGNATURE = "bad-signature"
    """A checkpoint's signature does not verify under the key it names."""
    UNKNOWN_KEY = "unknown-key"
    """A checkpoint is signed by a key that is not one of the trusted public keys."""
    NO_PUBLIC_KEY = "no-public-key"
    """Checkpoints exist but no public key was given to check them."""
    BAD_CHECKPOINT = "bad-checkpoint"
    """A checkpoint (record, file line or anchor) is malformed or contradicts its place."""
    CHECKPOINT_FILE = "checkpoint-file"
    """The checkpoint file and the log's checkpoint records disagree."""
    ANCHOR_MISMATCH = "anchor-mismatch"
    """An anchored checkpoint covers a seq the log holds, but the log's history differs."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: ``line`` is 1-based within ``source`` (the log, the checkpoint file
    or an anchor), ``seq`` the record it concerns, when known."""

    kind: FindingKind
    detail: str
    source: str
    line: int | None = None
    seq: int | None = None

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.kind.value}: {self.detail}"

    def to_json(self) -> dict[str, object]:
        """A plain mapping for ``--json`` output."""
        return {
            "kind": self.kind.value,
            "source": self.source,
            "line": self.line,
            "seq": self.seq,
            "detail": self.detail,
        }
