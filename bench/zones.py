"""Zone start, memory and round trip, per backend, next to a bare interpreter start.

Usage: python bench/zones.py [--starts N] [--round-trips N] [--json]

* start: from asking the backend for a zone to its hello (isolation self-check
  included), median of N, with ``python3 -S -c pass`` timed in the same run;
* memory: RSS and PSS of an idle reader zone's process (smaps_rollup);
* round trip: a minimal sanitize request and its reply, median of N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from threezone.backends import get_backend
from threezone.backends.base import Backend, ZoneSpec
from threezone.executor.broker import Zone, ZoneSettings
from threezone.executor.decoys import Decoys
from threezone.protocol.messages import SanitizeRequest

SETTINGS = ZoneSettings(hello_timeout=30.0, restart_backoff=(0.1,))
TINY = b"From: a@b.example\r\nSubject: hi\r\n\r\nhello\r\n"


def bare_start(runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-S", "-c", "pass"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def memory(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields["Rss"] / 1024, fields["Pss"] / 1024


async def zone_for(backend: Backend, workdir: Path, decoys: Decoys, module: str) -> Zone:
    spec = ZoneSpec(
        name="bench",
        role="reader",
        module=module,
        socket_path=workdir / "run" / "reader" / "zone.sock",
    )
    inside = str(Path(backend.socket_arg(spec)).parent)
    from dataclasses import replace

    zone = Zone(replace(spec, args=decoys.args(spec, inside)), backend, SETTINGS)
    await zone.listen()
    return zone


async def warm_restarts(backend: Backend, workdir: Path, decoys: Decoys, runs: int) -> list[float]:
    """A killed zone replaced by its spare: from the need to the zone being ready."""
    from dataclasses import replace

    zone = await zone_for(backend, workdir, decoys, "threezone.zones.reader_main")
    zone.settings = replace(zone.settings, spare=True)
    times = []
    await zone.ensure_running()
    for _ in range(runs):
        assert zone._spare is not None
        await zone._spare
        zone._kill()
        begin = time.perf_counter()
        await zone.ensure_running()
        times.append(time.perf_counter() - begin)
    await zone.stop()
    return times


async def measure_backend(name: str, starts: int, trips: int) -> dict[str, float]:
    backend = get_backend(name)
    backend.check()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "run").mkdir(mode=0o700)
        decoys = Decoys(workdir, lambda _w: None)
        await decoys.start()
        zone = await zone_for(backend, workdir, decoys, "threezone.zones.reader_main")
        start_times = []
        for _ in range(starts):
            begin = time.perf_counter()
            await zone.ensure_running()
            start_times.append(time.perf_counter() - begin)
            await zone.stop()
            await zone.listen()
        await zone.ensure_running()
        assert zone.peer_pid is not None
        await zone.request(SanitizeRequest(id=1, channel="email", message_id="m", raw=TINY), 1)
        rss, pss = memory(zone.peer_pid)
        trip_times = []
        for request_id in range(2, trips + 2):
            request = SanitizeRequest(id=request_id, channel="email", message_id="m", raw=TINY)
            begin = time.perf_counter()
            await zone.request(request, request_id)
            trip_times.append(time.perf_counter() - begin)
        await zone.stop()
        warm = await warm_restarts(backend, workdir, decoys, max(5, starts // 3))
        await decoys.close()
    return {
        "restart_with_spare_ms_median": statistics.median(warm) * 1000,
        "start_ms_median": statistics.median(start_times) * 1000,
        "rss_mb": rss,
        "pss_mb": pss,
        "round_trip_us_median": statistics.median(trip_times) * 1e6,
    }


def measure(starts: int = 30, trips: int = 1000) -> dict[str, float]:
    import logging

    logging.disable(logging.WARNING)  # unsafe-process warns at every start
    bare = bare_start(starts)
    result: dict[str, float] = {"bare_python_start_ms": bare * 1000}
    for name in ("sandbox", "unsafe-process"):
        for key, value in asyncio.run(measure_backend(name, starts, trips)).items():
            result[f"{name}.{key}"] = value
    result["sandbox_start_vs_bare"] = (
        result["sandbox.start_ms_median"] / result["bare_python_start_ms"]
    )
    result["sandbox_round_trip_vs_unsafe"] = (
        result["sandbox.round_trip_us_median"] / result["unsafe-process.round_trip_us_median"]
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=30)
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.starts, args.round_trips)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:42} {value:10.2f}")


if __name__ == "__main__":
    main()
