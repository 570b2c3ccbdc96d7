"""End-to-end mail latency: from handing a message to the loopback servers until
``ImapSource.fetch`` returns it.

Usage: python bench/mail_latency.py [--messages N] [--json]

Runs a throwaway Dovecot and Postfix (:mod:`threezone.testing.mailserver`; needs root
and the Debian packages) and measures three paths, N messages each, one at a time:

* ``lmtp -> idle``: delivered over LMTP into Dovecot while the source waits in IDLE;
* ``smtp -> idle``: submitted with the ``email.send`` action (SMTP, implicit TLS, AUTH),
  Postfix queues it and hands it to Dovecot over LMTP, the source waits in IDLE;
* ``lmtp -> poll``: as the first, with IDLE off (polling every second; ``fetch``'s
  first search usually finds it, else the next poll does).

Each sample runs from just before the delivery starts until ``fetch`` has returned
the message (TLS, pinning and the IMAP round trips included; the IMAP connection is
kept open across samples, as the executor keeps it). ``measure()`` returns the
numbers for the whole-pipeline measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from threezone.connectors.base import ConnectorState
from threezone.connectors.imap import ImapSource
from threezone.connectors.smtp import email_actions_smtp
from threezone.testing.mailserver import MailServers, missing

Deliver = Callable[[int], Awaitable[None]]


async def _sample(source: ImapSource, deliver: Deliver, index: int) -> float:
    waiting = asyncio.create_task(source.fetch(timeout=60))
    await asyncio.sleep(0.05)  # let the source reach IDLE (or its first poll) first
    start = time.perf_counter()
    await deliver(index)
    items = await waiting
    while not items:  # a spurious wake-up (e.g. the flag change of an earlier message)
        items = await source.fetch(timeout=60)
    elapsed = time.perf_counter() - start
    for item in items:
        await source.acknowledge(item.source_ref)
    return elapsed


async def _path(
    servers: MailServers, state_dir: Path, idle: bool, via_smtp: bool, n: int
) -> list[float]:
    config = servers.channel_config(idle=idle)
    state = ConnectorState.open(state_dir / f"{idle}-{via_smtp}.db")
    source = ImapSource(config, servers.secrets(), servers.egress(), state, 25 * 1024 * 1024)
    send = email_actions_smtp(config, servers.secrets(), servers.egress())[0]
    for item in await source.fetch(timeout=0):  # what earlier paths left behind
        await source.acknowledge(item.source_ref)

    async def deliver(index: int) -> None:
        if via_smtp:
            args = {"to": servers.user, "subject": f"bench {index}", "body": "latency"}
            await send.run(args, f"{index:032x}")
        else:
            raw = f"From: a@partner.example\r\nSubject: bench {index}\r\n\r\nlatency\r\n"
            await asyncio.to_thread(servers.deliver, raw.encode())

    try:
        return [await _sample(source, deliver, i) for i in range(n)]
    finally:
        await source.close()
        state.close()


def measure(messages: int = 30) -> dict[str, dict[str, float]]:
    """``{path: {"p50_ms", "p95_ms", "max_ms", "n"}}`` for the three paths."""
    paths = {
        "lmtp -> idle": (True, False),
        "smtp -> idle": (True, True),
        "lmtp -> poll": (False, False),
    }
    results: dict[str, dict[str, float]] = {}
    with MailServers.start() as servers, tempfile.TemporaryDirectory() as tmp:
        for name, (idle, via_smtp) in paths.items():
            samples = asyncio.run(_path(servers, Path(tmp), idle, via_smtp, messages))
            results[name] = _summary(samples)
    return results


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(p95 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "n": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    reason = missing()
    if reason is not None:
        sys.exit(f"mail_latency: cannot run the mail servers here: {reason}")
    results = measure(args.messages)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'path':<14} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'n':>4}")
    for name, row in results.items():
        cells = " ".join(f"{row[k]:>8.1f}" for k in ("p50_ms", "p95_ms", "max_ms"))
        print(f"{name:<14} {cells} {row['n']:>4.0f}")


if __name__ == "__main__":
    main()
