"""The local planner model: per-episode wall time and tokens, planner zone memory.

Usage: python bench/planner_local.py [--rounds N] [--threads T] [--json]

The demo's three emails (a meeting request, a newsletter hiding an injection, a
request to forward an invoice outside) go N times (default 3) through the real
pipeline with the local model (SmolLM2-135M-Instruct, Q4_1) in the sandboxed planner
zone, one executor and one planner zone for the whole run. Reported per episode:
wall time (median, p95, max), model calls, input and output tokens; and the planner
zone's memory (RSS of its whole process tree, and the interpreter's PSS) with the
model loaded, plus the first episode's time, which includes loading the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgspec
from procmem import children, tree_rss_mib

from threezone.backends import get_backend
from threezone.config.load import LoadedConfig, load_config
from threezone.demo import MESSAGES, build_workspace
from threezone.executor.core import Executor


def _deepest(pid: int) -> int:
    """The zone's interpreter: the last process down bwrap's chain."""
    while below := children(pid):
        pid = below[0]
    return pid


def _pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _episodes(loaded: LoadedConfig) -> list[dict[str, int]]:
    lines = (loaded.base / "state" / "audit.jsonl").read_bytes().splitlines()
    return [r["data"] for r in map(json.loads, lines) if r["kind"] == "episode"]


async def _run(workspace: Path, rounds: int, threads: int) -> dict[str, float]:
    loaded = load_config(build_workspace(workspace, "local"))
    planner = msgspec.structs.replace(loaded.config.planner, threads=threads)
    loaded = LoadedConfig(
        msgspec.structs.replace(loaded.config, planner=planner), loaded.base, loaded.path
    )
    for old in (loaded.base / "mail" / "new").iterdir():
        old.unlink()  # each round writes its own copies
    executor = Executor(loaded, get_backend("sandbox"))
    walls: list[float] = []
    await executor.start()
    try:
        for round_ in range(rounds):
            for name, build in MESSAGES.items():
                (loaded.base / "mail" / "new" / f"{name}-{round_}").write_bytes(build())
            for message_id in executor.ingest():
                started = time.perf_counter()
                await executor.process(message_id)
                walls.append(time.perf_counter() - started)
        pid = executor.planner.pid
        assert pid is not None
        rss, pss = tree_rss_mib(pid), _pss_mib(_deepest(pid))
    finally:
        await executor.stop()
    episodes = _episodes(loaded)
    later = sorted(walls[1:]) or walls
    return {
        "threads": threads,
        "episodes": len(walls),
        "first_episode_s_with_model_load": walls[0],
        "episode_s_median": statistics.median(later),
        "episode_s_p95": later[min(len(later) - 1, int(0.95 * len(later)))],
        "episode_s_max": max(later),
        "model_calls_median": statistics.median(e["model_calls"] for e in episodes),
        "input_tokens_median": statistics.median(e["input_tokens"] for e in episodes),
        "output_tokens_median": statistics.median(e["output_tokens"] for e in episodes),
        "output_tokens_per_s": sum(e["output_tokens"] for e in episodes) / sum(walls),
        "planner_zone_rss_mib": rss,
        "planner_interpreter_pss_mib": pss,
    }


def measure(rounds: int = 3, threads: int = 1) -> dict[str, float]:
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="threezone-bench-") as tmp:
        return asyncio.run(_run(Path(tmp), rounds, threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.rounds, args.threads)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:36} {value:10.2f}")


if __name__ == "__main__":
    main()
