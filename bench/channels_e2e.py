"""End to end through a real channel: a message arrives, the executor decides.

A loopback Telegram Bot API emulator, the real Telegram connector (long polling through
the egress layer), the durable inbox, a sandboxed reader zone, the hijacked planner zone
and the policy, inside the long-running agent (`threezone run`'s code). Measured:

* latency from injecting an update at the emulator to the executor's decision on it
  (the outcome recorded by the agent), p50/p95, one message at a time;
* throughput with a closed loop of ``--in-flight`` messages for ``--sustain`` seconds,
  per minute, with the executor's and the zones' RSS sampled each minute (memory growth
  after warm-up is the thing to look for).

    python bench/channels_e2e.py [--messages 200] [--sustain 60] [--in-flight 8] [--json]

``measure()`` is what ``bench/run_all.py`` calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procmem import rss_mib, tree_rss_mib

from threezone.backends import get_backend
from threezone.executor.agent import Agent
from threezone.executor.core import Outcome
from threezone.executor.wiring import build_agent
from threezone.testing.telegram_emulator import TelegramEmulator
from threezone.testing.workspaces import OWNER, STRANGER, telegram_workspace

TEXT = "Hi, can we move tomorrow's call to 3pm? Thanks."


class RemoteEmulator:
    """The emulator in its own process, so the executor's memory is measured alone."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve_emulator, args=(child,), daemon=True)
        self._process.start()
        self._url, self._port = self._conn.recv()

    @property
    def base_url(self) -> str:
        return str(self._url)

    @property
    def port(self) -> int:
        return int(self._port)

    def inject_message(self, chat: int, sender: int, text: str) -> dict[str, int]:
        self._conn.send(("inject", chat, sender, text))
        update_id = self._conn.recv()
        return {"update_id": update_id}

    def close(self) -> None:
        self._conn.send(("stop",))
        self._process.join(10)


def _serve_emulator(conn: Connection) -> None:
    with TelegramEmulator() as bot:
        bot.add_chat(OWNER)
        bot.add_chat(STRANGER)
        conn.send((bot.base_url, bot.port))
        while True:
            command = conn.recv()
            if command[0] == "stop":
                return
            _, chat, sender, text = command
            conn.send(bot.inject_message(chat, sender, text)["update_id"])


class Timing:
    """Hooks the agent's bookkeeping to learn when each message was decided."""

    def __init__(self, agent: Agent) -> None:
        self.decided: dict[str, float] = {}
        original = agent._remember

        def remember(outcome: Outcome) -> None:
            self.decided[outcome.message_id] = time.perf_counter()
            original(outcome)

        agent._remember = remember  # type: ignore[method-assign]


async def _wait(condition: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("the agent did not decide in time")
        await asyncio.sleep(0.001)


async def _latency(bot: RemoteEmulator, timing: Timing, messages: int) -> list[float]:
    samples: list[float] = []
    for _ in range(messages):
        update = bot.inject_message(STRANGER, STRANGER, TEXT)
        message_id = f"telegram:{update['update_id']}"
        started = time.perf_counter()
        await _wait(lambda m=message_id: m in timing.decided)
        samples.append((timing.decided[message_id] - started) * 1000)
    return samples


async def _sustain(
    bot: RemoteEmulator, agent: Agent, timing: Timing, seconds: float, in_flight: int
) -> list[dict[str, float]]:
    minutes: list[dict[str, float]] = []
    pending: set[str] = set()
    started = time.monotonic()
    window_start, window_count = started, 0
    while time.monotonic() - started < seconds:
        while len(pending) < in_flight:
            update = bot.inject_message(STRANGER, STRANGER, TEXT)
            pending.add(f"telegram:{update['update_id']}")
        done = {m for m in pending if m in timing.decided}
        pending -= done
        for message_id in done:  # the bench must not be what grows
            del timing.decided[message_id]
        window_count += len(done)
        now = time.monotonic()
        if now - window_start >= min(60.0, seconds):
            zones = {z.name: tree_rss_mib(z.pid) for z in agent.executor.zones if z.pid}
            minutes.append(
                {
                    "messages_per_minute": round(window_count * 60 / (now - window_start), 1),
                    "executor_rss_mib": round(rss_mib(os.getpid()), 1),
                    **{f"{name}_rss_mib": round(v, 1) for name, v in zones.items()},
                }
            )
            window_start, window_count = now, 0
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - window_start
    if window_count and elapsed > 1:  # the last, partial window
        minutes.append({"messages_per_minute": round(window_count * 60 / elapsed, 1)})
    return minutes


async def _run(messages: int, sustain: float, in_flight: int) -> dict[str, object]:
    bot = RemoteEmulator()
    with tempfile.TemporaryDirectory() as scratch:
        loaded = telegram_workspace(Path(scratch), bot)
        agent = build_agent(loaded, get_backend(loaded.config.executor.backend))
        timing = Timing(agent)
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            await _latency(bot, timing, 5)  # warm-up: zones started, caches filled
            samples = await _latency(bot, timing, messages)
            minutes = await _sustain(bot, agent, timing, sustain, in_flight) if sustain else []
        finally:
            stop.set()
            await runner
            bot.close()
    ordered = sorted(samples)
    return {
        "latency_p50_ms": round(statistics.median(ordered), 1),
        "latency_p95_ms": round(ordered[int(len(ordered) * 0.95) - 1], 1),
        "messages": messages,
        "minutes": minutes,
    }


def measure(messages: int = 200, sustain: float = 0.0, in_flight: int = 8) -> dict[str, float]:
    result = asyncio.run(_run(messages, sustain, in_flight))
    flat = {k: float(v) for k, v in result.items() if isinstance(v, int | float)}
    minutes = result["minutes"]
    if isinstance(minutes, list) and minutes:
        rates = [m["messages_per_minute"] for m in minutes]
        flat["sustained_messages_per_minute"] = float(statistics.median(rates))
    return flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--sustain", type=float, default=60.0, help="seconds of closed-loop load")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(_run(args.messages, args.sustain, args.in_flight))
    if args.json:
        print(json.dumps(result))
        return
    p50, p95 = result["latency_p50_ms"], result["latency_p95_ms"]
    print(f"latency p50 {p50} ms, p95 {p95} ms over {result['messages']} messages")
    minutes = result["minutes"]
    assert isinstance(minutes, list)
    for number, minute in enumerate(minutes, 1):
        print(f"minute {number}: {minute}")


if __name__ == "__main__":
    main()
