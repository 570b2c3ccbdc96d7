"""Run every benchmark, print a table, write bench/results/latest.json.

Usage: python bench/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import audit_append
import channels_e2e
import pipeline_overhead
import planner_local
import policy_decision
import protocol_codec
import qemu_backend
import readers
import soak
import zones

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        "system": f"{platform.system()} {platform.release()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    runs: dict[str, Callable[[], dict[str, float]]] = {
        "protocol_codec": lambda: protocol_codec.measure(2_000 if args.quick else 20_000),
        "audit_append": lambda: audit_append.measure(200 if args.quick else 2_000),
        "policy_decision": lambda: policy_decision.measure(2_000 if args.quick else 20_000),
        "pipeline_sandbox": lambda: pipeline_overhead.measure(100 if args.quick else 1_000),
        "pipeline_unsafe": lambda: pipeline_overhead.measure(
            100 if args.quick else 1_000, "unsafe-process"
        ),
        "readers": lambda: readers.measure(100 if args.quick else 600),
        "channels_e2e": lambda: channels_e2e.measure(30 if args.quick else 300),
        "zones": lambda: zones.measure(5 if args.quick else 30, 100 if args.quick else 1_000),
        "planner_local": lambda: planner_local.measure(1 if args.quick else 3),
        "qemu": lambda: qemu_backend.measure(3 if args.quick else 10, 20 if args.quick else 200),
        "soak": lambda: soak.measure(1_000 if args.quick else 10_000),
    }
    results: dict[str, object] = {"machine": machine()}
    for name, run in runs.items():
        outcome = run()
        results[name] = outcome
        for key, value in outcome.items():
            print(f"{name:20} {key:28} {value:12,.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
