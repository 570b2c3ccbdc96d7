"""How many audit records per second survive an fsync each (median of several runs).

Every append is one write plus one fsync, so this measures the disk more than the code:
run it on the filesystem the executor will use (``--dir``), not on a tmpfs. Three modes,
each on fresh logs:

* ``plain``: fsync each, no checkpoints (the number this script always reported);
* ``checkpointed``: fsync each, plus a signed checkpoint every 100 records (a record, a
  line in the checkpoint file, two more fsyncs) sent to an anchor command (``true``);
* ``group``: the same with group commit: only every 10th append is durable, as the
  executor does for bookkeeping records.

    python bench/audit_append.py [--appends 2000] [--runs 3] [--dir PATH] [--json]

``measure()`` is what ``bench/run_all.py`` calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from threezone.audit import AuditLog, verify_file
from threezone.audit.anchor import command_runner
from threezone.audit.log import Checkpointing
from threezone.audit.verify import verify_log

CHECKPOINT_EVERY = 100
GROUP = 10

SAMPLE = {
    "action": "send_email",
    "rule": "demo.policy:12",
    "verdict": "allow",
    "message_id": "m-000000000042",
    "recipients": ["alice@example.org"],
}


def one_run(directory: Path, appends: int, mode: str = "plain") -> float:
    """Append ``appends`` records to a fresh log; return appends per second."""
    path = directory / "audit.jsonl"
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".checkpoints").unlink(missing_ok=True)
    checkpointing = None
    if mode != "plain":
        checkpointing = Checkpointing(
            key=Ed25519PrivateKey.generate(),
            every=CHECKPOINT_EVERY,
            anchor=command_runner(["true"]),
        )
    with AuditLog.open(path, checkpointing=checkpointing) as log:
        started = time.perf_counter()
        for i in range(appends):
            log.append("decision", SAMPLE, durable=mode != "group" or i % GROUP == GROUP - 1)
        log.sync()
        elapsed = time.perf_counter() - started
    _check(path, appends, mode)
    return appends / elapsed


def _check(path: Path, appends: int, mode: str) -> None:
    if mode == "plain":
        if verify_file(path).records != appends:
            raise SystemExit("benchmark log did not verify")
        return
    report = verify_log(path, public_keys=[])
    if [f.kind.value for f in report.findings] != ["no-public-key"]:  # the key was thrown away
        raise SystemExit(f"benchmark log did not verify: {report.findings}")


def measure(appends: int = 2000, runs: int = 3, directory: Path | None = None) -> dict[str, float]:
    """Median appends per second over ``runs`` fresh logs per mode, plus the record size."""
    result: dict[str, float] = {"appends": appends}
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for mode, prefix in (("plain", ""), ("checkpointed", "checkpointed_"), ("group", "group_")):
            rates = [one_run(Path(tmp), appends, mode) for _ in range(runs)]
            if mode == "plain":
                result["record_bytes"] = (Path(tmp) / "audit.jsonl").stat().st_size / appends
            result[f"{prefix}appends_per_s_median"] = statistics.median(rates)
            result[f"{prefix}appends_per_s_min"] = min(rates)
            result[f"{prefix}appends_per_s_max"] = max(rates)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: temp)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = measure(args.appends, args.runs, args.dir)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"audit append+fsync: {result['appends_per_s_median']:,.0f} appends/s "
        f"(median of {args.runs} x {args.appends}; "
        f"min {result['appends_per_s_min']:,.0f}, max {result['appends_per_s_max']:,.0f}; "
        f"{result['record_bytes']:.0f} bytes/record)"
    )
    for prefix, what in (
        ("checkpointed_", f"+ signed checkpoint every {CHECKPOINT_EVERY}, anchored"),
        ("group_", f"+ checkpoints, group commit (fsync every {GROUP})"),
    ):
        print(
            f"audit append {what}: {result[prefix + 'appends_per_s_median']:,.0f} appends/s "
            f"(min {result[prefix + 'appends_per_s_min']:,.0f}, "
            f"max {result[prefix + 'appends_per_s_max']:,.0f})"
        )


if __name__ == "__main__":
    main()
