"""Signed checkpoints: each test does something to a log and checks verify names it.

Logs here are written with ``every=5``, so with ``n`` appends the chain holds a
checkpoint record after every 5 records (the checkpoint record counts too) and one more
on close. Lines are 1-based and ``seq`` 0-based: record ``k`` lives on line ``k + 1``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from threezone.audit.anchor import AnchorRunner, command_runner
from threezone.audit.chain import ChainHead, canonical
from threezone.audit.checkpoint import (
    CheckpointLines,
    key_id,
    parse_checkpoint,
    sign_checkpoint,
)
from threezone.audit.findings import FindingKind
from threezone.audit.keys import (
    load_or_create_signing_key,
    load_public_key,
    load_signing_key,
    public_key_path,
    public_key_pem,
)
from threezone.audit.log import (
    AuditLog,
    Checkpointing,
    checkpointing_from_config,
    checkpoints_path,
    read_checkpoint_lines,
)
from threezone.audit.verify import AuditReport, verify_log
from threezone.config.schema import AuditConfig
from threezone.errors import AuditChainBroken, AuditError

START = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
EVERY = 5


def fixed_clock() -> Callable[[], datetime]:
    ticks = iter(range(1_000_000))
    return lambda: START + timedelta(seconds=next(ticks))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def key(state: Path) -> Ed25519PrivateKey:
    """The signing key at its default place, so verify finds ``audit-signing.key.pub``."""
    return load_or_create_signing_key(state / "audit-signing.key")


@pytest.fixture
def log_path(state: Path) -> Path:
    return state / "audit.jsonl"


def open_log(
    path: Path,
    key: Ed25519PrivateKey,
    anchor: AnchorRunner | None = None,
    anchor_wait: float = 10.0,
) -> AuditLog:
    settings_ = Checkpointing(key=key, every=EVERY, anchor=anchor, anchor_wait=anchor_wait)
    return AuditLog.open(path, now=fixed_clock(), checkpointing=settings_)


def make_log(path: Path, key: Ed25519PrivateKey, count: int) -> None:
    with open_log(path, key) as log:
        for i in range(count):
            log.append("decision", {"n": i, "rule": f"demo.policy:{i}"})


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def records_of(path: Path) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in lines_of(path)]


def kinds(report: AuditReport) -> list[FindingKind]:
    return [finding.kind for finding in report.findings]


def reseal_chain(records: list[dict[str, Any]]) -> list[bytes]:
    """Renumber and re-hash ``records`` into a valid chain, as an attacker without the
    signing key can (checkpoint records keep their now-stale signed data)."""
    out, prev = [], "0" * 64
    for seq, record in enumerate(records):
        body = {**record, "seq": seq, "prev": prev}
        body.pop("hash", None)
        prev = hashlib.sha256(canonical(body)).hexdigest()
        out.append(canonical({**body, "hash": prev}) + b"\n")
    return out


# --- a clean log ------------------------------------------------------------------------------


def test_checkpoints_land_in_the_chain_and_the_file_and_verify_clean(
    log_path: Path, key: Ed25519PrivateKey
) -> None:
    make_log(log_path, key, 12)
    records = records_of(log_path)
    checkpoint_seqs = [r["seq"] for r in records if r["kind"] == "checkpoint"]
    assert checkpoint_seqs == [5, 11, 14]  # after 5 records, after 5 more, on close
    file_lines = lines_of(checkpoints_path(log_path))
    assert file_lines == [canonical(records[s]["data"]) + b"\n" for s in checkpoint_seqs]
    report = verify_log(log_path)
    assert report.clean, report.findings
    assert report.checkpoints == 3
    assert report.keys == (
        (key_id(key.public_key()), public_key_path(log_path.parent / "audit-signing.key")),
    )


def test_reopening_resumes_the_count_and_stays_clean(
    log_path: Path, key: Ed25519PrivateKey
) -> None:
    make_log(log_path, key, 3)
    with open_log(log_path, key) as log:
        for i in range(4):
            log.append("decision", {"again": i})
    records = records_of(log_path)
    assert [r["seq"] for r in records if r["kind"] == "checkpoint"] == [3, 8]
    assert verify_log(log_path).clean


def test_close_without_new_records_writes_no_checkpoint(
    log_path: Path, key: Ed25519PrivateKey
) -> None:
    make_log(log_path, key, 2)
    size = log_path.stat().st_size
    with open_log(log_path, key):
        pass
    assert log_path.stat().st_size == size


def test_the_checkpoint_kind_is_reserved(log_path: Path, key: Ed25519PrivateKey) -> None:
    with open_log(log_path, key) as log, pytest.raises(AuditError, match="reserved"):
        log.append("checkpoint", {"seq": 0})


def test_checkpoint_signs_what_it_says(key: Ed25519PrivateKey) -> None:
    head = ChainHead(seq=41, hash="ab" * 32)
    checkpoint = sign_checkpoint(key, head, "2025-01-02T03:04:05.000000Z")
    assert (checkpoint.seq, checkpoint.hash, checkpoint.records) == (41, "ab" * 32, 42)
    assert checkpoint.key_id == key_id(key.public_key())
    assert parse_checkpoint(checkpoint.to_line()) == checkpoint


# --- what was done to the log -----------------------------------------------------------------


def test_edited_field_of_a_middle_record(log_path: Path, key: Ed25519PrivateKey) -> None:
    make_log(log_path, key, 12)
    lines = lines_of(log_path)
    lines[6] = lines[6].replace(b'"demo.policy:5"', b'"demo.policy:9"')
    write(log_path, lines)
    report = verify_log(log_path)
    assert [(f.kind, f.line, f.seq) for f in report.findings] == [(FindingKind.EDITED, 7, 6)]


def test_edited_and_resealed_record_is_caught_by_the_next_link(
    log_path: Path, key: Ed25519PrivateKey
) -> None:
    make_log(log_path, key, 12)
    records = records_of(log_path)
    records[2]["data"] = {"n": 1, "rule": "forged"}
    lines = lines_of(log_path)
    lines[2] = reseal_chain(records)[2]  # only this record re-hashed
    write(log_path, lines)
    assert [(f.kind, f.line) for f in verify_log(log_path).findings] == [(FindingKind.EDITED, 4)]


def test_deleted_record(log_path: Path, key: Ed25519PrivateKey) -> None:
    make_log(log_path, key, 12)
    lines = lines_of(log_path)
    del lines[3]
    write(log_path, lines)
    report = verify_log(log_path)
    assert [(f.kind, f.seq, f.line) for f in report.findings] == [(FindingKind.DELETED, 3, 4)]
    assert "seq 3 missing" in report.findings[0].detail


def test_deleted_range_is_one_finding(log_path: Path, key: Ed25519PrivateKey) -> None:
    make_log(log_path, key, 12)
    lines = lines_of(log_path)
    del lines[1:4]
    write(log_path, lines)
    (finding,) = verify_log(log_path).findings
    assert (finding.kind, finding.seq) == (FindingKind.DELETED, 1)
    assert "seq 1..3 missing (3 records)" in finding.detail


def test_deleted_checkpoint_record(log_path: Path, key: Ed25519PrivateKey) -> None:
    make_log(log_path, key, 12)
    lines = lines_of(log_path)
    assert b'"kind":"checkpoint"' in lines[5]
    del lines[5]
    write(log_path, lines)
    report = verify_log(log_path)
    assert (FindingKind.DELETED, 5) in [(f.kind, f.seq) for f in report.findings]
    assert FindingKind.CHECKPOINT_FILE in kinds(report)  # the file still has it


def test_deleted_checkpoint_record_and_resealed_chain(
    log_path: Path, key: Ed25519PrivateKey
) -> None:
    """Without the key an attacker can renumber and re-hash everything: the stale
    checkpoint records and the checkpoint file then disagree with the chain."""
    make_log(log_path, key, 12)
    records = [r for r in records_of(log_path) if r["seq"] != 5]
    write(log_path, reseal_chain(records))
    report = verify_log(log_path)
    assert not report.clean
    assert {FindingKind.EDITED, FindingKind.CHECKPOINT_FILE} <= set(kinds(report))


def test_swapped_records_are_one_reordering(log_path: Path, key: Ed25519PrivateKey) -> None:
    make_log(log_path, key, 12)
    lines = lines_of(log_path)
    lines[2], lines[3] = lines[3], lines[2]
    write(log_path, lines)
    (finding,) = verify_log(log_path).findings
    assert (finding.kind, finding.line, finding.seq) == (FindingKind.REORDERED, 4, 2)


def test_a_block_moved_earlier_is_one_reordering(log_path: Path, key: Ed25519PrivateKey) -> None:
    make_log(log_path, key, 12)
    lines = lines_of(log_path)
    moved = [*lines[:2], lines[8], *lines[2:8], *lines[9:]]
    write(log_path, moved)
    (finding,) = verify_log(log_path).findings
    assert finding.kind is FindingKind.REORDERED
    assert "seq 2..7 (line 4..9) after seq 8" in finding.detail


def test_several_problems_are_all_reported(log_path: Path, key: Ed25519PrivateKey) -> None:
    make_log(log_path, key, 20)
    lines = lines_of(log_path)
    lines[1] = lines[1].replace(b'"n":1', b'"n":7')
    lines[9], lines[10] = lines[10], lines[9]
    del lines[15]
    write(log_path, lines)
    found = [(f.kind, f.line) for f in verify_log(log_path).findings]
    assert found == [
        (FindingKind.EDITED, 2),
        (FindingKind.REORDERED, 11),
        (FindingKind.DELETED, 16),
    ]


def test_truncated_tail_is_caught_by_the_checkpoint_file(
    log_path: Path, key: Ed25519PrivateKey
) -> None:
    make_log(log_path, key, 12)
    lines = lines_of(log_path)
    write(log_path, lines[:-4])  # the chain alone is still valid
    report = verify_log(log_path)
    assert kinds(report) == [FindingKind.TRUNCATED]
    assert report.findings[0].source == str(checkpoints_path(log_path))
    assert "log ends at seq 10" in report.findings[0].detail
    with pytest.raises(AuditChainBroken) as caught:
        open_log(log_path, key)
    assert caught.value.kind == "truncated"


def test_truncating_both_at_a_checkpoint_needs_the_anchor(
    log_path: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    sink = tmp_path / "owner-phone.jsonl"
    anchor = command_runner(["sh", "-c", f"cat >> '{sink}'"])
    with open_log(log_path, key, anchor=anchor) as log:
        for i in range(12):
            log.append("decision", {"n": i})
    # The newest checkpoint always reaches the owner (an older one may be superseded).
    assert parse_checkpoint(lines_of(sink)[-1]).seq == 13
    write(log_path, lines_of(log_path)[:12])  # through the checkpoint record of seq 11
    write(checkpoints_path(log_path), lines_of(checkpoints_path(log_path))[:2])
    assert verify_log(log_path).clean  # consistent: only the outside copy can tell
    report = verify_log(log_path, anchors=[read_checkpoint_lines(sink)])
    assert kinds(report) == [FindingKind.TRUNCATED]
    assert report.findings[0].source == str(sink)


def test_a_rewritten_history_contradicts_the_anchor(log_path: Path, key: Ed25519PrivateKey) -> None:
    """An attacker holding the key can re-sign a rewritten log; the anchor still differs."""
    make_log(log_path, key, 12)
    anchored = lines_of(checkpoints_path(log_path))[1]
    records = records_of(log_path)[:5]
    records[1]["data"] = {"n": 1, "rule": "rewritten"}
    write(log_path, reseal_chain(records))
    checkpoints_path(log_path).unlink()
    with open_log(log_path, key) as log:  # the stolen key signs the new history
        for i in range(7):
            log.append("decision", {"n": i})
    assert verify_log(log_path).clean
    anchor = CheckpointLines("anchor", ((1, anchored.rstrip(b"\n")),))
    report = verify_log(log_path, anchors=[anchor])
    assert kinds(report) == [FindingKind.ANCHOR_MISMATCH]


def test_checkpoint_signed_by_another_key(log_path: Path, key: Ed25519PrivateKey) -> None:
    make_log(log_path, key, 12)
    records = records_of(log_path)[:11]  # cut the tail, then forge new checkpoints
    other = Ed25519PrivateKey.generate()
    write(log_path, reseal_chain(records))
    checkpoints_path(log_path).write_bytes(lines_of(checkpoints_path(log_path))[0])
    with AuditLog.open(log_path, checkpointing=Checkpointing(key=other, every=EVERY)) as log:
        log.append("decision", {"n": "forged"})
    report = verify_log(log_path)
    assert set(kinds(report)) == {FindingKind.UNKNOWN_KEY}
    assert report.findings[0].seq == 11


def test_altered_checkpoint_with_the_right_key_id_is_a_bad_signature(
    log_path: Path, key: Ed25519PrivateKey
) -> None:
    """The last record (the closing checkpoint) is the one a forger can reseal freely."""
    make_log(log_path, key, 12)
    records = records_of(log_path)
    data = dict(records[14]["data"])
    data["hash"] = "0" * 64
    records[14]["data"] = data
    write(log_path, reseal_chain(records))
    lines = lines_of(checkpoints_path(log_path))
    lines[-1] = canonical(data) + b"\n"
    write(checkpoints_path(log_path), lines)
    report = verify_log(log_path)
    assert {(f.kind, f.line) for f in report.findings} == {
        (FindingKind.BAD_SIGNATURE, 15),
        (FindingKind.EDITED, 15),  # it no longer signs the hash of the record before it
    }
    with pytest.raises(AuditChainBroken) as caught:
        open_log(log_path, key)
    assert caught.value.kind == "edited"


def test_resealed_last_checkpoint_record_is_caught(log_path: Path, key: Ed25519PrivateKey) -> None:
    """Its signed data unchanged, only the record's own ts: the signature pins that too."""
    make_log(log_path, key, 12)
    records = records_of(log_path)
    records[14]["ts"] = "2031-01-01T00:00:00.000000Z"
    write(log_path, reseal_chain(records))
    assert kinds(verify_log(log_path)) == [FindingKind.EDITED]
    with pytest.raises(AuditChainBroken, match="does not match what it signs"):
        open_log(log_path, key)


def test_forged_signature_is_refused_on_open(log_path: Path, key: Ed25519PrivateKey) -> None:
    make_log(log_path, key, 12)
    records = records_of(log_path)
    data = dict(records[14]["data"])
    data["sig"] = "ab" * 64
    records[14]["data"] = data
    write(log_path, reseal_chain(records))
    lines = lines_of(checkpoints_path(log_path))
    lines[-1] = canonical(data) + b"\n"
    write(checkpoints_path(log_path), lines)
    assert [(f.kind, f.line) for f in verify_log(log_path).findings] == [
        (FindingKind.BAD_SIGNATURE, 15)
    ]
    with pytest.raises(AuditChainBroken) as caught:
        open_log(log_path, key)
    assert (caught.value.kind, caught.value.line) == ("bad-signature", 15)


def test_verify_with_a_key_kept_elsewhere(
    log_path: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    make_log(log_path, key, 6)
    elsewhere = tmp_path / "owner.pub"
    elsewhere.write_bytes(public_key_pem(key.public_key()))
    public_key_path(log_path.parent / "audit-signing.key").unlink()
    assert kinds(verify_log(log_path)) == [FindingKind.NO_PUBLIC_KEY]
    assert verify_log(log_path, public_keys=[elsewhere]).clean
    stranger = tmp_path / "stranger.pub"
    stranger.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    assert set(kinds(verify_log(log_path, public_keys=[stranger]))) == {FindingKind.UNKNOWN_KEY}


# --- the checkpoint file ----------------------------------------------------------------------


def test_missing_checkpoint_file_is_reported_and_refused(
    log_path: Path, key: Ed25519PrivateKey
) -> None:
    make_log(log_path, key, 6)
    checkpoints_path(log_path).unlink()
    assert kinds(verify_log(log_path)) == [FindingKind.CHECKPOINT_FILE]
    with pytest.raises(AuditChainBroken, match="missing"):
        open_log(log_path, key)


def test_edited_checkpoint_file_is_refused(log_path: Path, key: Ed25519PrivateKey) -> None:
    make_log(log_path, key, 12)
    lines = lines_of(checkpoints_path(log_path))
    lines[0], lines[1] = lines[1], lines[0]
    write(checkpoints_path(log_path), lines)
    assert FindingKind.CHECKPOINT_FILE in kinds(verify_log(log_path))
    with pytest.raises(AuditChainBroken) as caught:
        open_log(log_path, key)
    assert (caught.value.kind, caught.value.line) == ("checkpoint-file", 1)


def test_crash_between_the_two_writes_is_restored_and_recorded(
    log_path: Path, key: Ed25519PrivateKey
) -> None:
    make_log(log_path, key, 6)
    full = lines_of(checkpoints_path(log_path))
    cut = full[-1][:40]  # the last line torn mid-write, as a power cut may leave it
    write(checkpoints_path(log_path), [*full[:-1], cut])
    assert FindingKind.CHECKPOINT_FILE in kinds(verify_log(log_path))
    with open_log(log_path, key):
        pass
    assert lines_of(checkpoints_path(log_path))[: len(full)] == full
    restored = [r for r in records_of(log_path) if r["kind"] == "checkpoint_restored"]
    assert [r["data"] for r in restored] == [{"seq": 6}]
    assert verify_log(log_path).clean


def test_a_file_lacking_more_than_the_last_checkpoint_is_refused(
    log_path: Path, key: Ed25519PrivateKey
) -> None:
    make_log(log_path, key, 12)
    write(checkpoints_path(log_path), lines_of(checkpoints_path(log_path))[:1])
    with pytest.raises(AuditChainBroken, match="lacks 2"):
        open_log(log_path, key)


def test_opening_without_checkpointing_still_checks_the_file(
    log_path: Path, key: Ed25519PrivateKey
) -> None:
    make_log(log_path, key, 12)
    write(log_path, lines_of(log_path)[:-4])
    with pytest.raises(AuditChainBroken, match="truncated"):
        AuditLog.open(log_path)


# --- the signing key --------------------------------------------------------------------------


def test_a_new_key_is_private_in_a_private_folder(tmp_path: Path) -> None:
    path = tmp_path / "new" / "audit-signing.key"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_public_key(public_key_path(path)).public_bytes_raw() == (
        key.public_key().public_bytes_raw()
    )
    again = load_or_create_signing_key(path)  # the same key, not a new one
    assert key_id(again.public_key()) == key_id(key.public_key())


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "audit-signing.key"
    load_or_create_signing_key(path)
    path.chmod(mode)
    with pytest.raises(AuditError, match=f"chmod 600 {path}"):
        load_signing_key(path)
    with pytest.raises(AuditError, match="chmod 600"):
        load_or_create_signing_key(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the key to another user")
def test_a_key_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit-signing.key"
    load_or_create_signing_key(path)
    os.chown(path, 12345, 12345)
    with pytest.raises(AuditError, match="belongs to uid 12345"):
        load_signing_key(path)


def test_a_symlinked_or_bogus_key_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    load_or_create_signing_key(real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(AuditError, match="cannot open"):
        load_signing_key(link)
    bogus = tmp_path / "bogus.key"
    bogus.write_text("not a key")
    bogus.chmod(0o600)
    with pytest.raises(AuditError, match="PEM"):
        load_signing_key(bogus)


def test_checkpointing_from_config(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = AuditConfig(checkpoint_every=7, anchor_command=["true"])
    settings_ = checkpointing_from_config(config, state_dir=state, resolve=lambda p: tmp_path / p)
    assert (state / "audit-signing.key").exists()
    assert settings_.every == 7
    assert settings_.anchor is not None
    assert settings_.anchor(b"{}\n") is None  # `true` succeeds
    named = AuditConfig(signing_key="keys/k.pem")
    checkpointing_from_config(named, state_dir=state, resolve=lambda p: tmp_path / p)
    assert (tmp_path / "keys" / "k.pem").exists()


# --- the anchor never holds up the log --------------------------------------------------------


def anchor_failures(path: Path) -> list[dict[str, Any]]:
    return [r["data"] for r in records_of(path) if r["kind"] == "anchor_failed"]


def test_a_failing_anchor_command_is_recorded_not_fatal(
    log_path: Path, key: Ed25519PrivateKey
) -> None:
    anchor = command_runner(["sh", "-c", "echo refused >&2; exit 3"])
    with open_log(log_path, key, anchor=anchor) as log:
        for i in range(12):
            log.append("decision", {"n": i})
    failures = anchor_failures(log_path)
    covered = [r["data"]["seq"] for r in records_of(log_path) if r["kind"] == "checkpoint"]
    assert {f["reason"] for f in failures} == {"exited with status 3: refused"}
    # The newest anchored checkpoint was sent at close; one more records its failure.
    assert failures[-1]["checkpoint_seq"] == covered[-2]
    assert {f["checkpoint_seq"] for f in failures} <= set(covered[:-1])
    assert verify_log(log_path).clean  # the failures are covered by a final checkpoint


def test_a_hanging_anchor_command_is_killed(log_path: Path, key: Ed25519PrivateKey) -> None:
    anchor = command_runner(["sleep", "60"], timeout=0.2)
    with open_log(log_path, key, anchor=anchor, anchor_wait=30.0) as log:
        log.append("decision", {"n": 0})
    (failure,) = anchor_failures(log_path)
    assert failure["reason"] == "timed out after 0.2s (killed)"


def test_appends_go_on_while_the_anchor_hangs(log_path: Path, key: Ed25519PrivateKey) -> None:
    """The sender blocks until released; 300 appends (60 checkpoints) finish anyway,
    and no backlog builds up behind it: only the newest checkpoint waits."""
    release = threading.Event()
    started = threading.Event()

    def blocked(payload: bytes) -> str | None:
        started.set()
        release.wait(60)  # bounded, so a regression fails instead of hanging forever
        return None

    log = open_log(log_path, key, anchor=blocked, anchor_wait=0.5)
    try:
        for i in range(300):
            log.append("decision", {"n": i})
        assert started.wait(30)
        assert not release.is_set()  # all of the above ran while the sender was stuck
    finally:
        log.close()
        release.set()
    failures = anchor_failures(log_path)
    covered = [r["data"]["seq"] for r in records_of(log_path) if r["kind"] == "checkpoint"]
    # One stuck in the sender (an early one), the newest waiting; those between superseded.
    stuck, newest = (f["checkpoint_seq"] for f in failures)
    assert stuck in covered[:-2]
    assert newest == covered[-2]
    assert {f["reason"] for f in failures} == {"no answer before the log closed"}
    assert verify_log(log_path).clean


def test_a_runner_that_raises_is_a_failure(log_path: Path, key: Ed25519PrivateKey) -> None:
    def broken(payload: bytes) -> str | None:
        raise RuntimeError("bug")

    with open_log(log_path, key, anchor=broken) as log:
        log.append("decision", {})
    (failure,) = anchor_failures(log_path)
    assert failure["reason"] == "anchor runner raised RuntimeError: bug"


def test_a_missing_anchor_program_is_a_failure(log_path: Path, key: Ed25519PrivateKey) -> None:
    anchor = command_runner(["/nonexistent/anchor"])
    with open_log(log_path, key, anchor=anchor) as log:
        log.append("decision", {})
    (failure,) = anchor_failures(log_path)
    assert str(failure["reason"]).startswith("cannot run '/nonexistent/anchor'")


# --- property: whatever is done to a signed log is reported -----------------------------------


@contextlib.contextmanager
def temp_state() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


SIGNING_KEY = Ed25519PrivateKey.generate()


def mutate(lines: list[bytes], draw: st.DataObject) -> list[bytes]:
    """Apply one random edit, deletion, swap, duplication or truncation."""
    lines = list(lines)
    index = draw.draw(st.integers(0, len(lines) - 1), label="index")
    operation = draw.draw(
        st.sampled_from(["edit", "reseal", "delete", "swap", "duplicate", "truncate"]), label="op"
    )
    if operation == "edit":
        record = msgspec.json.decode(lines[index])
        record["ts"] = "2031-01-01T00:00:00.000000Z"
        lines[index] = canonical(record) + b"\n"
    elif operation == "reseal":
        records = [msgspec.json.decode(line) for line in lines]
        records[index]["ts"] = "2031-01-01T00:00:00.000000Z"
        lines[index] = reseal_chain(records)[index]
    elif operation in {"delete", "swap"}:  # a swap needs two lines
        del lines[index]
    elif operation == "swap" and len(lines) > 1:
        other = (index + draw.draw(st.integers(1, len(lines) - 1), label="distance")) % len(lines)
        lines[index], lines[other] = lines[other], lines[index]
    elif operation == "duplicate":
        lines.insert(draw.draw(st.integers(0, len(lines)), label="at"), lines[index])
    else:
        lines = lines[:index]
    return lines


@settings(max_examples=150, deadline=None)
@given(count=st.integers(2, 25), mutations=st.integers(1, 3), draw=st.data())
def test_any_tampering_with_a_signed_log_is_reported(
    count: int, mutations: int, draw: st.DataObject
) -> None:
    with temp_state() as state:
        path = state / "audit.jsonl"
        settings_ = Checkpointing(key=SIGNING_KEY, every=EVERY)
        with AuditLog.open(path, now=fixed_clock(), checkpointing=settings_) as log:
            for i in range(count):
                log.append("decision", {"n": i})
        original = lines_of(path)
        lines = original
        for _ in range(mutations):
            if lines:
                lines = mutate(lines, draw)
        if lines == original:
            return  # the mutations cancelled out (a swap undone): nothing to find
        write(path, lines)
        pub = state / "key.pub"
        pub.write_bytes(public_key_pem(SIGNING_KEY.public_key()))
        report = verify_log(path, public_keys=[pub])
        assert not report.clean, lines


# --- the command ------------------------------------------------------------------------------


def threezone(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "threezone", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


def test_cli_verify_clean_then_names_each_finding(log_path: Path, key: Ed25519PrivateKey) -> None:
    make_log(log_path, key, 12)
    clean = threezone("audit", "verify", str(log_path))
    assert clean.returncode == 0, clean.stderr
    assert "OK, 15 records" in clean.stdout
    assert f"trusted key: {key_id(key.public_key())}" in clean.stdout
    lines = lines_of(log_path)
    del lines[3]
    write(log_path, lines[:-3])
    broken = threezone("audit", "verify", str(log_path))
    assert broken.returncode == 1
    assert f"{log_path}:4: deleted: seq 3 missing" in broken.stderr
    assert f"{checkpoints_path(log_path)}:3: truncated: log ends at seq 11" in broken.stderr
    as_json = threezone("audit", "verify", str(log_path), "--json")
    assert as_json.returncode == 1
    report = msgspec.json.decode(as_json.stdout)
    assert [f["kind"] for f in report["findings"]] == ["deleted", "truncated"]


def test_cli_verify_with_public_key_and_anchor(
    log_path: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    make_log(log_path, key, 12)
    last = lines_of(checkpoints_path(log_path))[-1].decode()
    write(log_path, lines_of(log_path)[:12])
    write(checkpoints_path(log_path), lines_of(checkpoints_path(log_path))[:2])
    stranger = tmp_path / "stranger.pub"
    stranger.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    result = threezone("audit", "verify", str(log_path), "--public-key", str(stranger))
    assert result.returncode == 1
    assert "unknown-key" in result.stderr
    result = threezone("audit", "verify", str(log_path), "--anchor", last)
    assert result.returncode == 1
    assert "anchor#1:1: truncated: log ends at seq 11" in result.stderr
    bad = threezone("audit", "verify", str(log_path), "--anchor", str(tmp_path / "nope"))
    assert bad.returncode == 2


def test_cli_tail_shows_checkpoints(log_path: Path, key: Ed25519PrivateKey) -> None:
    make_log(log_path, key, 4)
    result = threezone("audit", "tail", str(log_path), "-n", "1")
    assert result.returncode == 0
    assert "checkpoint covers seq 3" in result.stdout


def test_a_full_disk_delays_the_checkpoint_file_and_loses_nothing(
    log_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    from threezone.audit import _files
    from threezone.errors import StorageError

    real = _files.write_all
    refusals = iter([True])  # the disk is full for the first checkpoint only

    def full_once(fd: int, data: bytes, path: Path) -> None:
        if next(refusals, False):
            raise StorageError(str(path), "cannot append (No space left on device)")
        real(fd, data, path)

    monkeypatch.setattr("threezone.audit.checkpoint_file.write_all", full_once)
    with open_log(log_path, key) as log:
        for i in range(EVERY):  # the first checkpoint: in the chain, not in the file
            log.append("decision", {"n": i})
        assert lines_of(checkpoints_path(log_path)) == []
        log.append("decision", {"n": "after"})  # the log goes on
    records = records_of(log_path)
    seqs = [r["seq"] for r in records if r["kind"] == "checkpoint"]
    assert len(seqs) == 2  # the delayed one, then the one written at close
    assert lines_of(checkpoints_path(log_path)) == [
        canonical(records[s]["data"]) + b"\n" for s in seqs
    ]
    report = verify_log(log_path)
    assert report.clean, report.findings
