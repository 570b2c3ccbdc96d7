"""The audit hash chain: sealing records and verifying a log, with no I/O.

One record is one line of canonical JSON::

    {"data":{...},"hash":"<hex>","kind":"decision","prev":"<hex>","seq":0,"ts":"...Z"}

``hash`` is the SHA-256 of the canonical JSON of the record *without* ``hash``, and
``prev`` is the ``hash`` of the record before it (``GENESIS`` for ``seq`` 0), so editing,
deleting or moving any record breaks the chain at that record.

Canonical JSON is msgspec's encoding with sorted keys and no whitespace. Verification
re-encodes every decoded record and compares the result with the line byte for byte,
so *any* change to a line is caught, including ones JSON would call harmless (a space,
an escaped ``\\u0041`` for ``A``, a duplicate key): every line is exactly what
:func:`seal` produced, or the log is broken.

What the chain cannot see: removing the *last* records leaves a shorter, valid chain.
Only a copy of the head kept elsewhere detects that: the signed checkpoints of
:mod:`threezone.audit.checkpoint`, which the chain carries as records of kind
``"checkpoint"`` and the log also copies to a file of its own (and to an anchor).

What ``data`` may hold, so that every value reads back exactly as it was written
(no float rounding, no silent key coercion, nothing a plain JSON reader misreads):
``str``, ``int`` in the signed 64-bit range, ``bool``, ``None``, ``list``/``tuple``
(read back as lists) and mappings with ``str`` keys (read back as dicts), nested at
most ``MAX_DEPTH`` deep. Floats are refused: record a decimal string or an integer
in smaller units instead. Subclasses (enums included) are refused too, because they
would read back as a different type; pass ``.value``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import msgspec

from threezone.errors import AuditChainBroken

GENESIS: Final = "0" * 64
"""The ``prev`` of the first record: there is no record before it."""

MAX_RECORD_BYTES: Final = 1 << 20
"""Longest line, newline included; keeps a single ``os.write`` and every read bounded."""

MAX_DEPTH: Final = 32
"""Deepest nesting of lists and mappings inside ``data``."""

_INT_MIN: Final = -(1 << 63)
_INT_MAX: Final = (1 << 63) - 1
_FIELDS: Final = frozenset({"seq", "ts", "kind", "data", "prev", "hash"})
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_KIND: Final = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
_TS_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"
# ASCII digits only: ``\d`` would also accept other scripts' digits, which strptime reads.
_TS: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
# What decoding hostile bytes may raise: msgspec.DecodeError and UnicodeDecodeError (invalid
# UTF-8 inside a string) are both ValueErrors; absurd nesting raises RecursionError.
_DECODE_ERRORS: Final = (ValueError, RecursionError)


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last record of a chain: its ``seq`` and ``hash`` (``-1`` and GENESIS if empty)."""

    seq: int
    hash: str


EMPTY_HEAD: Final = ChainHead(seq=-1, hash=GENESIS)


CHECKPOINT_KIND: Final = "checkpoint"
"""The kind of the records that carry a signed checkpoint of the records before them."""


@dataclass(frozen=True, slots=True)
class ChainCheckpoint:
    """A ``"checkpoint"`` record as found in the chain (its ``data`` not yet checked)."""

    line: int
    seq: int
    prev: str
    ts: str
    data: dict[str, object]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """A chain that verified: how many records it holds, its head, its checkpoint records."""

    records: int
    head: ChainHead
    checkpoints: tuple[ChainCheckpoint, ...] = ()


def canonical(obj: object) -> bytes:
    """Encode ``obj`` as canonical JSON: sorted keys, no whitespace, UTF-8.

    This is the byte string that gets hashed and written, so it must never change for a
    given value. It does not check ``obj``; :func:`seal` validates data before calling it.
    """
    return msgspec.json.encode(obj, order="sorted")


def seal(
    head: ChainHead, kind: str, data: Mapping[str, object], ts: str
) -> tuple[dict[str, object], ChainHead]:
    """Build the record that follows ``head`` and return it with the new head.

    Raises ``ValueError`` (naming the offending key path) when ``kind``, ``ts`` or
    ``data`` is outside what the log can record faithfully; the disk layer turns that
    into an ``AuditError``. The record's ``data`` is a plain deep copy, so what a caller
    gets back is exactly what a reader of the file will see.
    """
    _check_kind(kind)
    _check_ts(ts)
    body: dict[str, object] = {
        "seq": head.seq + 1,
        "ts": ts,
        "kind": kind,
        "data": _plain_mapping(data, "data", 1),
        "prev": head.hash,
    }
    digest = _digest(body)
    record = {**body, "hash": digest}
    if len(canonical(record)) + 1 > MAX_RECORD_BYTES:
        raise ValueError(f"record is longer than {MAX_RECORD_BYTES} bytes")
    return record, ChainHead(seq=head.seq + 1, hash=digest)


def verify_lines(lines: Iterable[bytes], path: str) -> VerifyReport:
    """Verify a whole log given as its lines (each ending in ``b"\\n"``, as a file yields).

    Raises ``AuditChainBroken`` for the first broken line (1-based). Per line the checks
    run in this order, so the most specific kind wins: size and newline, JSON shape
    ("malformed"), the record's own hash ("edited"), canonical bytes ("malformed"), then
    its place in the chain ("reordered" / "deleted"). A valid chain with its last records
    cut off passes: see the module docstring.
    """
    head = EMPTY_HEAD
    checkpoints: list[ChainCheckpoint] = []
    rest = iter(lines)
    for lineno, line in enumerate(rest, start=1):
        where = _Where(path, lineno)
        link = _check_line(line, where)
        head = _check_link(link, head, where, rest)
        if link.kind == CHECKPOINT_KIND:
            checkpoints.append(ChainCheckpoint(lineno, link.seq, link.prev, link.ts, link.data))
    return VerifyReport(records=head.seq + 1, head=head, checkpoints=tuple(checkpoints))


def check_line(line: bytes, path: str, lineno: int) -> Link:
    """Check one line on its own (shape, own hash, canonical bytes), not its place.

    Raises ``AuditChainBroken`` naming ``lineno``; :mod:`threezone.audit.scan` uses this
    to go on past a bad line instead of stopping at it.
    """
    return _check_line(line, _Where(path, lineno))


# --- sealing ----------------------------------------------------------------------------------


def _check_kind(kind: object) -> None:
    if type(kind) is not str or not _KIND.fullmatch(kind):
        raise ValueError(f"kind {kind!r} is not a short lowercase name like 'decision'")


def _check_ts(ts: object) -> None:
    if not (type(ts) is str and _TS.fullmatch(ts) and _is_real_moment(ts)):
        raise ValueError(f"ts {ts!r} is not RFC 3339 UTC with microseconds")


def _is_real_moment(ts: str) -> bool:
    """Whether a well-shaped ``ts`` names a real moment (the shape allows month 13)."""
    try:
        datetime.strptime(ts, _TS_FORMAT)  # the Z is matched literally: it is UTC
    except ValueError:
        return False
    return True


def _digest(body: Mapping[str, object]) -> str:
    return hashlib.sha256(canonical(body)).hexdigest()


def _plain(value: object, where: str, depth: int) -> object:
    """Return a plain copy of ``value`` or raise ``ValueError`` saying where it went wrong."""
    if value is None or type(value) in (str, bool):
        return value
    if type(value) is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(f"{where}: integer {value} is outside the signed 64-bit range")
        return value
    if depth >= MAX_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if type(value) is list or type(value) is tuple:
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return _plain_mapping(value, where, depth + 1)
    kind = "float" if isinstance(value, float) else type(value).__name__
    raise ValueError(f"{where}: {kind} is not recordable (str, int, bool, None, list, dict)")


def _plain_mapping(value: Mapping[str, object], where: str, depth: int) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, item in value.items():
        if type(key) is not str:  # the annotation is a promise callers can break
            raise ValueError(f"{where}: key {key!r} is not a str")
        out[key] = _plain(item, f"{where}.{key}", depth)
    return out


# --- verifying one line -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Where:
    path: str
    line: int

    def broken(self, kind: str, detail: str) -> AuditChainBroken:
        return AuditChainBroken(self.path, self.line, kind, detail)


@dataclass(frozen=True, slots=True)
class Link:
    """A line that is well formed, hashes right and is canonical: its chain fields."""

    seq: int
    prev: str
    hash: str
    kind: str
    ts: str
    data: dict[str, object]


def _check_line(line: bytes, where: _Where) -> Link:
    """Check one line on its own, without looking at its neighbours."""
    if len(line) > MAX_RECORD_BYTES:
        raise where.broken("malformed", f"line is longer than {MAX_RECORD_BYTES} bytes")
    if not line.endswith(b"\n"):
        raise where.broken("truncated-line", "line has no newline (a torn write?)")
    record = _decode(line, where)
    link = _check_shape(record, where)
    body = {k: v for k, v in record.items() if k != "hash"}
    if link.hash != _digest(body):
        raise where.broken("edited", "hash does not match the record's content")
    if canonical(record) + b"\n" != line:
        raise where.broken("malformed", "line is not in canonical form")
    return link


def _decode(line: bytes, where: _Where) -> dict[str, object]:
    try:
        value = msgspec.json.decode(line)
    except _DECODE_ERRORS as exc:
        raise where.broken("malformed", f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise where.broken("malformed", "not a JSON object")
    return value


def _check_shape(record: dict[str, object], where: _Where) -> Link:
    """Refuse any record :func:`seal` could not have produced, field by field."""
    if record.keys() != _FIELDS:
        got = ", ".join(sorted(record))
        raise where.broken("malformed", f"fields are {{{got}}}, expected {sorted(_FIELDS)}")
    seq, prev, digest, data = record["seq"], record["prev"], record["hash"], record["data"]
    if type(seq) is not int or not 0 <= seq <= _INT_MAX:
        raise where.broken("malformed", f"seq {seq!r} is not a non-negative integer")
    if not (isinstance(prev, str) and _HEX64.fullmatch(prev)):
        raise where.broken("malformed", "prev is not 64 lowercase hex digits")
    if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
        raise where.broken("malformed", "hash is not 64 lowercase hex digits")
    if not isinstance(data, dict):
        raise where.broken("malformed", "data is not a JSON object")
    try:
        _check_kind(record["kind"])
        _check_ts(record["ts"])
        _plain_mapping(data, "data", 1)
    except ValueError as exc:
        raise where.broken("malformed", str(exc)) from None
    kind, ts = str(record["kind"]), str(record["ts"])
    return Link(seq=seq, prev=prev, hash=digest, kind=kind, ts=ts, data=data)


# --- verifying the chain ----------------------------------------------------------------------


def _check_link(link: Link, head: ChainHead, where: _Where, rest: Iterator[bytes]) -> ChainHead:
    """Check that ``link`` follows ``head``; return the new head."""
    expected = head.seq + 1
    if link.seq < expected:
        detail = f"seq {link.seq} after seq {head.seq}; expected {expected}"
        raise where.broken("reordered", detail)
    if link.seq > expected:
        raise _gap(where, expected, link.seq, rest)
    if link.prev != head.hash:
        detail = f"prev does not match the hash of seq {head.seq}: records replaced or spliced"
        raise where.broken("deleted", detail)
    return ChainHead(seq=link.seq, hash=link.hash)


def _gap(where: _Where, expected: int, seq: int, rest: Iterator[bytes]) -> AuditChainBroken:
    """Name a forward jump in ``seq``: "reordered" if a missing record turns up later.

    Looking ahead only names the break; the line reported is still this one, the first
    line that is out of place. It runs only on a log already known to be broken.
    """
    missing = range(expected, seq)
    for line in rest:
        if _loose_seq(line) in missing:
            detail = f"seq {seq} where {expected} belongs; seq {expected}.. appear later"
            return where.broken("reordered", detail)
    count = seq - expected
    return where.broken("deleted", f"seq jumps from {expected - 1} to {seq}: {count} missing")


def _loose_seq(line: bytes) -> int | None:
    """The ``seq`` of a line if it has a readable one; used only to name a break."""
    record = parse_loosely(line)
    seq = record.get("seq") if record is not None else None
    return seq if type(seq) is int else None


def parse_loosely(line: bytes) -> dict[str, object] | None:
    """Decode a line as a JSON object without verifying anything; ``None`` if it is not one.

    For display (``tail``) and for naming breaks, never for trusting a record.
    """
    try:
        value = msgspec.json.decode(line)
    except _DECODE_ERRORS:
        return None
    return value if isinstance(value, dict) else None
