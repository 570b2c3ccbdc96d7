"""How many audit records per second survive an fsync each (median of several runs).

Every append is one write plus one fsync, so this measures the disk more than the code:
run it on the filesystem the executor will use (``--dir``), not on a tmpfs.

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

from threezone.audit import AuditLog, verify_file

SAMPLE = {
    "action": "send_email",
    "rule": "demo.policy:12",
    "verdict": "allow",
    "message_id": "m-000000000042",
    "recipients": ["alice@example.org"],
}


def one_run(directory: Path, appends: int) -> float:
    """Append ``appends`` records to a fresh log; return appends per second."""
    path = directory / "audit.jsonl"
    path.unlink(missing_ok=True)
    with AuditLog.open(path) as log:
        started = time.perf_counter()
        for _ in range(appends):
            log.append("decision", SAMPLE)
        elapsed = time.perf_counter() - started
    if verify_file(path).records != appends:
        raise SystemExit("benchmark log did not verify")
    return appends / elapsed


def measure(appends: int = 2000, runs: int = 3, directory: Path | None = None) -> dict[str, float]:
    """Median appends per second over ``runs`` fresh logs, plus the record size."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        rates = [one_run(Path(tmp), appends) for _ in range(runs)]
        record_bytes = (Path(tmp) / "audit.jsonl").stat().st_size / appends
    return {
        "appends": appends,
        "record_bytes": record_bytes,
        "appends_per_s_median": statistics.median(rates),
        "appends_per_s_min": min(rates),
        "appends_per_s_max": max(rates),
    }


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


if __name__ == "__main__":
    main()
