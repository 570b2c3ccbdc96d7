"""Scan a whole log and name *every* break in its chain, not just the first (pure, no I/O).

:func:`threezone.audit.chain.verify_lines` stops at the first bad line, which is right for
deciding whether to append. An owner investigating a log wants the whole picture: which
records were edited, which ranges deleted, which moved. :func:`scan_lines` reads the
lines once, in order, keeping only small state (the last in-order record, the ``seq``
ranges still missing), and reports:

* ``edited``: a record's hash does not match its content, or the next record's ``prev``
  does not match its hash (rewritten and resealed);
* ``reordered``: a ``seq`` lower than one already seen (runs of such lines are merged,
  so moving a block or swapping two records is one finding);
* ``deleted``: a ``seq`` range skipped and never seen later;
* ``malformed`` / ``truncated-line``: a line that is not a sealed record, or a torn one.

Unreadable lines still count: a gap no longer than the unreadable lines just before it
is blamed on them (already reported as malformed), not called a deletion.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, TypeGuard

from threezone.audit.chain import (
    CHECKPOINT_KIND,
    EMPTY_HEAD,
    ChainCheckpoint,
    ChainHead,
    Link,
    check_line,
    parse_loosely,
)
from threezone.audit.findings import Finding, FindingKind
from threezone.errors import AuditChainBroken

_HEX: Final = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What one pass over a log found: every chain finding, the head, checkpoint records."""

    findings: tuple[Finding, ...]
    lines: int
    head: ChainHead
    checkpoints: tuple[ChainCheckpoint, ...]

    @property
    def last_seq(self) -> int:
        """The highest ``seq`` in the log in its proper place (-1 if none)."""
        return self.head.seq


@dataclass(slots=True)
class _Run:
    """Consecutive out-of-order lines, reported as one finding."""

    first_line: int
    last_line: int
    first_seq: int
    last_seq: int
    after: ChainHead

    def finding(self, path: str) -> Finding:
        seqs = _span(self.first_seq, self.last_seq)
        lines = _span(self.first_line, self.last_line)
        detail = f"seq {seqs} (line {lines}) after seq {self.after.seq}: out of order or repeated"
        return Finding(FindingKind.REORDERED, detail, path, self.first_line, self.first_seq)


@dataclass(slots=True)
class _Scanner:
    path: str
    head: ChainHead = EMPTY_HEAD
    head_line: int = 0
    unreadable: int = 0  # lines since the last placed record with no readable seq
    gaps: list[tuple[int, int, int]] = field(default_factory=list)  # sorted (lo, hi, line)
    run: _Run | None = None
    findings: list[Finding] = field(default_factory=list)
    checkpoints: list[ChainCheckpoint] = field(default_factory=list)

    def feed(self, line: bytes, lineno: int) -> None:
        link = self._read(line, lineno)
        if link is None:
            self.unreadable += 1
            return
        if link.seq <= self.head.seq:
            self._out_of_order(link, lineno)
            return
        self._flush_run()
        if link.seq > self.head.seq + 1:
            self._gap(self.head.seq + 1, link.seq - 1, lineno)
        elif link.prev != self.head.hash:
            self._relinked(link, lineno)
        self.head = ChainHead(link.seq, link.hash)
        self.head_line = lineno
        self.unreadable = 0

    def finish(self, lines: int) -> ScanResult:
        self._flush_run()
        for lo, hi, lineno in self.gaps:
            count = hi - lo + 1
            detail = f"seq {_span(lo, hi)} missing ({count} record{'s' * (count != 1)})"
            self.findings.append(Finding(FindingKind.DELETED, detail, self.path, lineno, lo))
        self.findings.sort(key=lambda f: f.line or 0)
        return ScanResult(tuple(self.findings), lines, self.head, tuple(self.checkpoints))

    # --- one line -----------------------------------------------------------------------------

    def _read(self, line: bytes, lineno: int) -> Link | None:
        """The line's chain fields, recording a finding if it is not a valid record."""
        try:
            link = check_line(line, self.path, lineno)
        except AuditChainBroken as exc:
            kind = FindingKind(exc.kind)  # check_line raises malformed, edited or torn
            loose = _loose_link(line) if kind is not FindingKind.TORN else None
            seq = loose.seq if loose is not None else None
            self.findings.append(Finding(kind, exc.detail, self.path, lineno, seq))
            return loose
        if link.kind == CHECKPOINT_KIND:
            self.checkpoints.append(
                ChainCheckpoint(lineno, link.seq, link.prev, link.ts, link.data)
            )
        return link

    def _out_of_order(self, link: Link, lineno: int) -> None:
        self._fill(link.seq)
        run = self.run
        if run is not None and lineno == run.last_line + 1 and link.seq == run.last_seq + 1:
            run.last_line, run.last_seq = lineno, link.seq
            return
        self._flush_run()
        self.run = _Run(lineno, lineno, link.seq, link.seq, self.head)

    def _flush_run(self) -> None:
        if self.run is not None:
            self.findings.append(self.run.finding(self.path))
            self.run = None

    def _gap(self, lo: int, hi: int, lineno: int) -> None:
        if hi - lo + 1 <= self.unreadable:
            return  # the missing records are the unreadable lines just before
        bisect.insort(self.gaps, (lo, hi, lineno))

    def _fill(self, seq: int) -> None:
        """A missing ``seq`` turned up late: it was moved, not deleted."""
        index = bisect.bisect_right(self.gaps, seq, key=lambda gap: gap[0]) - 1
        if index < 0 or not self.gaps[index][0] <= seq <= self.gaps[index][1]:
            return
        lo, hi, lineno = self.gaps.pop(index)
        for part in ((lo, seq - 1, lineno), (seq + 1, hi, lineno)):
            if part[0] <= part[1]:
                bisect.insort(self.gaps, part)

    def _relinked(self, link: Link, lineno: int) -> None:
        before = "GENESIS" if self.head.seq < 0 else f"seq {self.head.seq}"
        detail = (
            f"prev of seq {link.seq} does not match the hash of {before} (line "
            f"{self.head_line}): one of them was rewritten and resealed, or records were "
            "removed and the rest renumbered"
        )
        self.findings.append(Finding(FindingKind.EDITED, detail, self.path, lineno, link.seq))


def scan_lines(lines: Iterable[bytes], path: str) -> ScanResult:
    """Scan a whole log given as its lines (each ending in ``b"\\n"``); never raises on
    bad content. An empty ``findings`` means the chain is intact (its tail may still have
    been cut off: only checkpoints tell that)."""
    scanner = _Scanner(path)
    count = 0
    for count, line in enumerate(lines, start=1):
        scanner.feed(line, count)
    return scanner.finish(count)


def _loose_link(line: bytes) -> Link | None:
    """Chain fields of a line that failed verification, if they are readable at all."""
    record = parse_loosely(line)
    if record is None:
        return None
    seq, prev, digest = record.get("seq"), record.get("prev"), record.get("hash")
    if type(seq) is not int or seq < 0 or not _is_hex64(prev) or not _is_hex64(digest):
        return None
    return Link(seq=seq, prev=prev, hash=digest, kind="", ts="", data={})


def _is_hex64(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _span(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"
