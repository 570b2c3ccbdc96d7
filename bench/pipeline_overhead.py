"""Per-message time through the whole pipeline with persistent zones.

Usage: python bench/pipeline_overhead.py [--messages N] [--json]

N benign emails (default 1,000) go through fetch -> inbox -> reader zone -> planner
zone (hijacked planner, one allowed reply each) -> policy -> outbox -> audit, with
the zones started once. Reported: p50/p95 of the per-message wall time, and the
same for the reader's own work done in-process, so that the difference estimates
what the executor and the zone hops add.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

from threezone.backends import get_backend
from threezone.config.load import load_config
from threezone.demo import build_workspace
from threezone.executor.core import Executor
from threezone.executor.inbox import State
from threezone.readers.email import read_email


def benign(index: int) -> bytes:
    message = EmailMessage()
    message["Authentication-Results"] = "mx.demo.example; dmarc=pass header.from=partner.example"
    message["From"] = "alice@partner.example"
    message["To"] = "owner@demo.example"
    message["Subject"] = f"Status update {index}"
    message.set_content(f"Hi,\n\nHere is status update number {index}. All is on track.\n\nAlice\n")
    return message.as_bytes()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def pipeline(workspace: Path, count: int, backend: str) -> list[float]:
    config = build_workspace(workspace)
    (workspace / "policy.d" / "10-demo.policy").write_text(
        "email.reply  to=@contacts trigger.sender=@contacts  allow\n*  *  deny\n"
    )
    new = workspace / "mail" / "new"
    for path in new.iterdir():
        path.unlink()
    for index in range(count):
        (new / f"{index:06}").write_bytes(benign(index))
    loaded = load_config(config)
    executor = Executor(loaded, get_backend(backend))
    await executor.start()
    try:
        executor.ingest()
        pending = executor.inbox.pending()
        await executor.process(pending[0])  # warm-up: zones start here
        timings = []
        for message_id in pending[1:]:
            start = time.perf_counter()
            outcome = await executor.process(message_id)
            timings.append(time.perf_counter() - start)
            if outcome.state is not State.DONE or not outcome.decisions[0].executed:
                raise SystemExit(f"{message_id} did not go through: {outcome}")
        return timings
    finally:
        await executor.stop()


def reader_only(count: int) -> list[float]:
    timings = []
    for index in range(count):
        raw = benign(index)
        start = time.perf_counter()
        read_email(raw, f"email:{index}")
        timings.append(time.perf_counter() - start)
    return timings


def measure(count: int = 1000, backend: str = "sandbox") -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        total = asyncio.run(pipeline(Path(tmp) / "ws", count + 1, backend))
    reader = reader_only(count)
    return {
        "messages": len(total),
        "p50_ms": statistics.median(total) * 1000,
        "p95_ms": percentile(total, 0.95) * 1000,
        "reader_p50_ms": statistics.median(reader) * 1000,
        "overhead_p50_ms": (statistics.median(total) - statistics.median(reader)) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--backend", choices=["sandbox", "unsafe-process"], default="sandbox")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.messages, args.backend)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['messages']:.0f} messages, persistent zones, hijacked planner, {args.backend}")
    print(f"per message: p50 {result['p50_ms']:.2f} ms, p95 {result['p95_ms']:.2f} ms")
    print(f"reader work in-process: p50 {result['reader_p50_ms']:.2f} ms")
    print(f"executor + zone hops (p50 difference): {result['overhead_p50_ms']:.2f} ms")


if __name__ == "__main__":
    main()
