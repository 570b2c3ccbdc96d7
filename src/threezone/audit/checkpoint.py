"""Signed checkpoints of the audit chain, and the checks that use them (pure, no I/O).

A checkpoint says "record ``seq`` of this log has hash ``hash``; the log then held
``records`` records", stamped with a time and the id of the key that signed it (the
SHA-256 of its raw Ed25519 public key). The record carrying it must have the same ``ts``
and follow record ``seq`` directly, so every field of that record is pinned by the
signature: even the log's very last record (always a checkpoint after a clean close)
cannot be resealed unnoticed. The chain alone cannot show that its last
records were cut off; a checkpoint kept somewhere the cut did not reach can.

The log keeps each checkpoint in three places, each catching what the others cannot:

1. **in the chain**, as the record right after the one it covers (kind ``"checkpoint"``),
   so deleting or editing it breaks the chain like any other record;
2. **in a file of its own** next to the log (``audit.jsonl.checkpoints``), so cutting off
   the log's tail leaves a checkpoint that points past the log's end;
3. **at an anchor** outside the machine (``anchor_command``), so an attacker who cuts both
   files is caught by the copy the owner holds.

The signature covers a fixed context string plus the canonical JSON of every field but
``sig``, so a checkpoint cannot be replayed as any other signed object. Key objects come
in from the caller; reading key files is :mod:`threezone.audit.keys`'s job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Final, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from threezone.audit.chain import ChainCheckpoint, ChainHead, canonical
from threezone.audit.findings import Finding, FindingKind

SIGNING_CONTEXT: Final = b"threezone audit checkpoint v1\n"
"""Prefix of every signed message: a checkpoint signature verifies nothing else."""

_HEX64 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
_HEX128 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{128}$")]
_TS = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\.[0-9]{6}Z$")]
_SEQ = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class Checkpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One signed checkpoint: record ``seq`` has ``hash``; ``records`` = ``seq`` + 1."""

    v: Literal[1]
    seq: _SEQ
    hash: _HEX64
    records: _SEQ
    ts: _TS
    key_id: _HEX64
    sig: _HEX128

    def body(self) -> dict[str, object]:
        """Every field but ``sig``: what the signature covers."""
        fields = msgspec.structs.asdict(self)
        del fields["sig"]
        return fields

    def to_data(self) -> dict[str, object]:
        """The plain mapping stored as the ``data`` of a checkpoint record."""
        return msgspec.structs.asdict(self)

    def to_line(self) -> bytes:
        """Canonical JSON and a newline: one line of the checkpoint file, the anchor input."""
        return canonical(self.to_data()) + b"\n"


def key_id(public_key: Ed25519PublicKey) -> str:
    """The id a checkpoint names its key by: SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign_checkpoint(key: Ed25519PrivateKey, head: ChainHead, ts: str) -> Checkpoint:
    """Sign a checkpoint of ``head`` (the last record it covers) at time ``ts``."""
    if head.seq < 0:
        raise ValueError("an empty log has nothing to checkpoint")
    body = {
        "v": 1,
        "seq": head.seq,
        "hash": head.hash,
        "records": head.seq + 1,
        "ts": ts,
        "key_id": key_id(key.public_key()),
    }
    sig = key.sign(SIGNING_CONTEXT + canonical(body)).hex()
    return msgspec.convert({**body, "sig": sig}, Checkpoint)


def parse_checkpoint(untrusted: bytes | Mapping[str, object]) -> Checkpoint:
    """A checkpoint from a file line, an anchor's JSON or a record's ``data``.

    Raises ``ValueError`` saying what is wrong; checks the shape, not the signature.
    """
    try:
        if isinstance(untrusted, bytes):
            checkpoint = msgspec.json.decode(untrusted, type=Checkpoint)
        else:
            checkpoint = msgspec.convert(untrusted, Checkpoint)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(f"not a checkpoint: {exc}") from None
    if checkpoint.records != checkpoint.seq + 1:
        raise ValueError(f"records {checkpoint.records} is not seq {checkpoint.seq} + 1")
    return checkpoint


def signature_problem(
    checkpoint: Checkpoint, trusted: Mapping[str, Ed25519PublicKey]
) -> FindingKind | None:
    """``None`` if a trusted key signed ``checkpoint``; else why not."""
    public_key = trusted.get(checkpoint.key_id)
    if public_key is None:
        return FindingKind.UNKNOWN_KEY
    try:
        public_key.verify(
            bytes.fromhex(checkpoint.sig), SIGNING_CONTEXT + canonical(checkpoint.body())
        )
    except InvalidSignature:
        return FindingKind.BAD_SIGNATURE
    return None


def trusted_keys(keys: Sequence[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    """Index public keys by their key id."""
    return {key_id(key): key for key in keys}


# --- checking a log's checkpoints -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointLines:
    """Checkpoints read from somewhere other than the chain: the file, or anchors.

    ``lines`` are (1-based line, raw bytes without the newline); ``torn`` is a last line
    without a newline, if any.
    """

    source: str
    lines: tuple[tuple[int, bytes], ...]
    torn: bytes = b""


def check_checkpoints(
    log_source: str,
    last_seq: int,
    in_chain: Sequence[ChainCheckpoint],
    *,
    file: CheckpointLines | None,
    anchors: Sequence[CheckpointLines],
    trusted: Mapping[str, Ed25519PublicKey],
) -> list[Finding]:
    """Every finding about checkpoints: signatures, and the chain, file and anchors agreeing.

    ``last_seq`` is where the log ends; ``file`` is ``None`` when the checkpoint file does
    not exist. Checkpoints are matched by the record that carries them (``seq`` + 1).
    """
    checker = _Checker(log_source, last_seq, trusted)
    chain = checker.chain(in_chain)
    if file is None:
        if in_chain:
            detail = f"checkpoint file is missing, but the log holds {len(in_chain)} checkpoints"
            checker.add(FindingKind.CHECKPOINT_FILE, detail, file_source(log_source))
    else:
        checker.file(file, chain, in_chain)
    for anchor in anchors:
        checker.anchor(anchor, chain)
    if not trusted and (in_chain or (file is not None and file.lines)):
        detail = "checkpoints are signed but no public key was given to check them"
        checker.add(FindingKind.NO_PUBLIC_KEY, detail, log_source)
    return checker.findings


def file_source(log_source: str) -> str:
    """Where a log's checkpoint file lives: next to it, ``.checkpoints`` appended."""
    return f"{log_source}.checkpoints"


@dataclass(slots=True)
class _Checker:
    """Collects findings while the chain's, the file's and the anchors' checkpoints are
    compared; ``chain`` maps the ``seq`` a checkpoint covers to the checkpoint."""

    log_source: str
    last_seq: int
    trusted: Mapping[str, Ed25519PublicKey]
    findings: list[Finding] = field(default_factory=list)

    def add(
        self,
        kind: FindingKind,
        detail: str,
        source: str,
        line: int | None = None,
        seq: int | None = None,
    ) -> None:
        self.findings.append(Finding(kind, detail, source, line, seq))

    def chain(self, in_chain: Sequence[ChainCheckpoint]) -> dict[int, Checkpoint]:
        """Check each checkpoint record: well formed, signed, and covering the record before."""
        found: dict[int, Checkpoint] = {}
        for record in in_chain:
            checkpoint = self._parse(record.data, self.log_source, record.line)
            if checkpoint is None:
                continue
            if (checkpoint.seq, checkpoint.hash, checkpoint.ts) != (
                record.seq - 1,
                record.prev,
                record.ts,
            ):
                detail = (
                    f"checkpoint record seq {record.seq} (ts {record.ts}, prev "
                    f"{record.prev[:16]}) does not match what it signs: seq {checkpoint.seq}, "
                    f"ts {checkpoint.ts}, hash {checkpoint.hash[:16]}"
                )
                self.add(FindingKind.EDITED, detail, self.log_source, record.line, record.seq)
            found[checkpoint.seq] = checkpoint
        return found

    def file(
        self,
        file: CheckpointLines,
        chain: Mapping[int, Checkpoint],
        in_chain: Sequence[ChainCheckpoint],
    ) -> None:
        """Check the checkpoint file line by line against the chain, then what it lacks."""
        seen: set[int] = set()
        beyond: list[tuple[int, Checkpoint]] = []
        previous = -1
        for line, raw in file.lines:
            checkpoint = self._parse(raw, file.source, line, chain)
            if checkpoint is None:
                continue
            if checkpoint.seq <= previous:
                detail = f"checkpoint of seq {checkpoint.seq} after one of seq {previous}"
                self.add(FindingKind.CHECKPOINT_FILE, detail, file.source, line, checkpoint.seq)
            previous = max(previous, checkpoint.seq)
            seen.add(checkpoint.seq)
            if checkpoint.seq + 1 > self.last_seq:
                beyond.append((line, checkpoint))
            elif chain.get(checkpoint.seq) != checkpoint:
                detail = (
                    f"checkpoint of seq {checkpoint.seq} is not the log's checkpoint record "
                    f"seq {checkpoint.seq + 1}"
                )
                self.add(FindingKind.CHECKPOINT_FILE, detail, file.source, line, checkpoint.seq)
        self._truncated(beyond, file.source)
        if file.torn:
            self.add(
                FindingKind.CHECKPOINT_FILE, "last line is torn", file.source, len(file.lines) + 1
            )
        self._lacking(file.source, [r for r in in_chain if r.seq - 1 not in seen])

    def anchor(self, anchor: CheckpointLines, chain: Mapping[int, Checkpoint]) -> None:
        """An anchored checkpoint must be one the log still holds, byte for byte."""
        for line, raw in anchor.lines:
            checkpoint = self._parse(raw, anchor.source, line, chain)
            if checkpoint is None:
                continue
            if checkpoint.seq + 1 > self.last_seq:
                self._truncated([(line, checkpoint)], anchor.source)
            elif chain.get(checkpoint.seq) != checkpoint:
                detail = (
                    f"anchored checkpoint of seq {checkpoint.seq} (hash {checkpoint.hash[:16]}) "
                    f"is not in the log: its history up to seq {checkpoint.seq} was rewritten"
                )
                self.add(FindingKind.ANCHOR_MISMATCH, detail, anchor.source, line, checkpoint.seq)

    def _parse(
        self,
        untrusted: bytes | Mapping[str, object],
        source: str,
        line: int,
        chain: Mapping[int, Checkpoint] | None = None,
    ) -> Checkpoint | None:
        """Parse and check the signature, unless ``chain`` already holds (and so checked)
        this very checkpoint: one forged checkpoint is one finding, not one per copy."""
        try:
            checkpoint = parse_checkpoint(untrusted)
        except ValueError as exc:
            self.add(FindingKind.BAD_CHECKPOINT, str(exc), source, line)
            return None
        if chain is not None and chain.get(checkpoint.seq) == checkpoint:
            return checkpoint
        problem = signature_problem(checkpoint, self.trusted) if self.trusted else None
        if problem is FindingKind.UNKNOWN_KEY:
            detail = (
                f"checkpoint of seq {checkpoint.seq}: signed by unknown key {checkpoint.key_id}"
            )
            self.add(problem, detail, source, line, checkpoint.seq)
        elif problem is FindingKind.BAD_SIGNATURE:
            detail = f"checkpoint of seq {checkpoint.seq}: signature does not verify (forged?)"
            self.add(problem, detail, source, line, checkpoint.seq)
        return checkpoint

    def _truncated(self, beyond: Sequence[tuple[int, Checkpoint]], source: str) -> None:
        """One finding for all checkpoints that point past the log's end."""
        if not beyond:
            return
        line, last = max(beyond, key=lambda item: item[1].seq)
        detail = (
            f"log ends at seq {self.last_seq}, but a checkpoint covers seq {last.seq} and its "
            f"checkpoint record seq {last.seq + 1} (signed {last.ts}): records were cut off"
        )
        self.add(FindingKind.TRUNCATED, detail, source, line, self.last_seq + 1)

    def _lacking(self, source: str, missing: Sequence[ChainCheckpoint]) -> None:
        if not missing:
            return
        first = missing[0]
        detail = (
            f"lacks {len(missing)} of the log's checkpoints, first the one in seq {first.seq} "
            f"(log line {first.line}): the file was cut or edited, or a crash fell between "
            "the two writes"
        )
        self.add(FindingKind.CHECKPOINT_FILE, detail, source, None, first.seq)


# --- reconciling the file with the chain when the log opens -----------------------------------


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What opening a log decides about its checkpoint file.

    ``problem`` set: refuse to open (appending would bury it). Otherwise ``append`` holds
    the bytes that complete the file: the last checkpoint when a crash fell between
    writing it to the log and to the file (possibly finishing a torn line), else nothing.
    """

    problem: Finding | None = None
    append: bytes = b""
    restored_seq: int | None = None


def reconcile(
    in_chain: Sequence[ChainCheckpoint], file: CheckpointLines, last_seq: int
) -> Reconciliation:
    """Compare the file with the chain's checkpoint records, byte for byte.

    The file must be a copy of the chain's checkpoints, all of them or all but the last
    (the log writes the chain first); anything else means one of them was tampered with.
    """
    expected = [canonical(record.data) + b"\n" for record in in_chain]
    for index, (line, raw) in enumerate(file.lines):
        if index >= len(expected):
            return Reconciliation(_beyond(raw, file.source, line, last_seq))
        if raw + b"\n" != expected[index]:
            detail = f"differs from the log's checkpoint record on line {in_chain[index].line}"
            return Reconciliation(Finding(FindingKind.CHECKPOINT_FILE, detail, file.source, line))
    missing = len(expected) - len(file.lines)
    where = len(file.lines) + 1
    if missing > 1 or (file.torn and not (missing and expected[-1].startswith(file.torn))):
        what = f"lacks {missing} of the log's checkpoints" if missing > 1 else "last line is torn"
        return Reconciliation(Finding(FindingKind.CHECKPOINT_FILE, what, file.source, where))
    if missing == 1:
        restored = in_chain[-1].seq - 1
        return Reconciliation(None, expected[-1][len(file.torn) :], restored)
    return Reconciliation()


def _beyond(raw: bytes, source: str, line: int, last_seq: int) -> Finding:
    try:
        checkpoint: Checkpoint | None = parse_checkpoint(raw)
    except ValueError:
        checkpoint = None
    if checkpoint is None or checkpoint.seq + 1 <= last_seq:
        detail = "has no counterpart among the log's checkpoint records"
        return Finding(FindingKind.CHECKPOINT_FILE, detail, source, line)
    detail = (
        f"log ends at seq {last_seq}, but this checkpoint covers seq {checkpoint.seq}: "
        "records were cut off the log"
    )
    return Finding(FindingKind.TRUNCATED, detail, source, line, last_seq + 1)
