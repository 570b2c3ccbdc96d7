"""The qemu backend: boots, clones, memory, the channel, disposable readers.

Usage: python bench/qemu.py [--starts N] [--round-trips N] [--json]

Every key names the accelerator it was measured with (``tcg.`` or ``kvm.``):

* template: the template VM's cold boot to "ready" (kernel, init, imports, warm-up),
  and the whole build (boot plus saving its device state);
* cold boot: a zone that boots its own kernel (``template = false``), from asking for it
  to its first sanitize reply, median of a few;
* clone: from asking for a zone to its first sanitize reply, median of N; split into
  the restore (QEMU started, template state loaded, running) and the rest (the guest
  wakes, becomes the zone, runs its isolation self-check, says hello, answers); and a
  killed zone replaced by its spare clone (``spare_zones``, the default);
* memory: five zones at once (four readers, one planner), each after one request:
  RSS, PSS, private and unique memory per QEMU process (``smaps_rollup``; unique is
  ``Anonymous``: guest pages the clone wrote, TCG's translated code, QEMU's heap;
  private also counts template pages only that clone maps), and the template's RAM
  memfd, which the clones share; "together" adds the clones' PSS to the whole memfd
  (an upper bound: memfd pages a clone maps are counted twice);
* channel: a tiny sanitize round trip, and 1 MiB to the zone with a short answer (the
  faulty reader's ``sink``, so no sanitizer work), next to the sandbox backend;
* disposable: messages back to back through a disposable reader (a fresh clone per
  message, the next one started as a spare), per message, next to a long-lived reader;
  the same with the sandbox backend (a fresh sandbox per message).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import zones

from threezone.backends import get_backend
from threezone.backends.base import Backend, Role, ZoneHandle, ZoneSpec
from threezone.backends.qemu import QemuBackend, QemuSettings, memory_of
from threezone.errors import BackendError
from threezone.executor.broker import Zone, ZoneSettings
from threezone.executor.decoys import Decoys
from threezone.protocol.messages import Error, SanitizeRequest, SanitizeResult
from threezone.testing import faulty_zone

READER = "threezone.zones.reader_main"
PLANNER = "threezone.zones.planner_main"
SETTINGS = ZoneSettings(hello_timeout=120.0, request_timeout=120.0, restart_backoff=(0.1,))
TINY = b"From: a@b.example\r\nSubject: hi\r\n\r\nhello\r\n"
MIB = 1024 * 1024
ZoneDef = tuple[str, str, tuple[str, ...]]  # name, module, args
SINK = b"X-Poison: sink\r\nSubject: big\r\n\r\n" + b"x" * MIB


class Timed(QemuBackend):
    """The qemu backend, recording how long each ``start`` (spawn + restore) took."""

    def __init__(self, settings: QemuSettings | None = None) -> None:
        super().__init__(settings)
        self.starts: list[float] = []

    async def _start(self, spec: ZoneSpec) -> ZoneHandle:
        begin = time.perf_counter()
        handle = await super()._start(spec)
        self.starts.append(time.perf_counter() - begin)
        return handle


def sanitize(raw: bytes, request_id: int) -> SanitizeRequest:
    return SanitizeRequest(id=request_id, channel="email", message_id="email:b", raw=raw)


@asynccontextmanager
async def running_zones(
    backend: Backend, workdir: Path, specs: Sequence[ZoneDef]
) -> AsyncIterator[list[Zone]]:
    """Zones ``(name, module, args)`` listening under ``workdir``, stopped afterwards;
    each runs its isolation self-check against real decoys, as under the executor."""
    decoys = Decoys(workdir, lambda _what: None)
    await decoys.start()
    made = []
    for name, module, args in specs:
        role: Role = "planner" if module == PLANNER else "reader"
        spec = ZoneSpec(
            name=name,
            role=role,
            module=module,
            args=args,
            socket_path=workdir / "run" / name / "zone.sock",
            log_path=workdir / f"{name}.log",
        )
        inside = str(Path(backend.socket_arg(spec)).parent)
        zone = Zone(replace(spec, args=(*args, *decoys.args(spec, inside))), backend, SETTINGS)
        await zone.listen()
        made.append(zone)
    try:
        yield made
    finally:
        for zone in made:
            await zone.stop()
        await decoys.close()


def memory(pid: int) -> dict[str, float]:
    """MiB: resident, proportional, private, unique (``QemuHandle.stats``'s fields)."""
    return {key.removesuffix("_kb"): kb / 1024 for key, kb in memory_of(pid).items()}


async def first_replies(backend: Timed, workdir: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        async with running_zones(backend, workdir, [("bench", READER, ())]) as (zone,):
            begin = time.perf_counter()
            reply = await zone.request(sanitize(TINY, 1), 1)
            times.append(time.perf_counter() - begin)
            assert isinstance(reply, SanitizeResult)
    return times


async def five_zones(backend: QemuBackend, workdir: Path) -> dict[str, float]:
    specs: list[ZoneDef] = [
        (f"reader-{n}", READER, ()) for n in ("email", "telegram", "slack", "spare")
    ]
    specs.append(("planner", PLANNER, ("--planner", "hijacked")))
    async with running_zones(backend, workdir, specs) as made:
        for zone in made:
            if zone.spec.role == "reader":
                await zone.request(sanitize(TINY, 1), 1)
            else:
                await zone.ensure_running()
        per = [memory(zone.pid) for zone in made if zone.pid is not None]
    template = await backend.template()
    memfd = os.fstat(template.ram).st_blocks * 512 / MIB
    pss = sum(m["pss"] for m in per)
    return {
        "clone_rss_mb_median": statistics.median(m["rss"] for m in per),
        "clone_pss_mb_median": statistics.median(m["pss"] for m in per),
        "clone_private_mb_median": statistics.median(m["private"] for m in per),
        "clone_unique_mb_median": statistics.median(m["unique"] for m in per),
        "clone_unique_mb_max": max(m["unique"] for m in per),
        "template_memfd_mb": memfd,
        "five_zones_pss_mb": pss,
        "five_zones_together_mb": pss + memfd,
    }


async def channel(backend: Backend, workdir: Path, trips: int) -> dict[str, float]:
    specs: list[ZoneDef] = [("tiny", READER, ()), ("sink", faulty_zone.MODULE, ())]
    async with running_zones(backend, workdir, specs) as (tiny, sink):
        await tiny.request(sanitize(TINY, 1), 1)
        small = []
        for request_id in range(2, trips + 2):
            begin = time.perf_counter()
            await tiny.request(sanitize(TINY, request_id), request_id)
            small.append(time.perf_counter() - begin)
        await sink.request(sanitize(SINK, 1), 1)
        big = []
        for request_id in range(2, max(5, trips // 10) + 2):
            begin = time.perf_counter()
            reply = await sink.request(sanitize(SINK, request_id), request_id)
            big.append(time.perf_counter() - begin)
            assert isinstance(reply, Error), reply
            assert reply.code == "sink", reply
    one_mib = statistics.median(big)
    return {
        "round_trip_ms_median": statistics.median(small) * 1000,
        "one_mib_ms_median": one_mib * 1000,
        "one_mib_throughput_mib_s": (len(SINK) / MIB) / one_mib,
    }


async def disposable(backend: Backend, workdir: Path, messages: int) -> dict[str, float]:
    pair: list[ZoneDef] = [("long", READER, ()), ("fresh", READER, ())]
    async with running_zones(backend, workdir, pair) as (long_lived, fresh):
        fresh.settings = replace(SETTINGS, disposable=True, spare=True)
        await long_lived.request(sanitize(TINY, 1), 1)
        await fresh.ensure_running()
        results: dict[str, list[float]] = {"long": [], "fresh": []}
        for zone, key in ((long_lived, "long"), (fresh, "fresh")):
            for request_id in range(2, messages + 2):
                begin = time.perf_counter()
                reply = await zone.request(sanitize(TINY, request_id), request_id)
                results[key].append(time.perf_counter() - begin)
                assert isinstance(reply, SanitizeResult)
        starts = fresh.starts
    per_long = statistics.median(results["long"])
    per_fresh = statistics.median(results["fresh"])
    return {
        "long_lived_per_message_ms_median": per_long * 1000,
        "disposable_per_message_ms_median": per_fresh * 1000,
        "disposable_overhead_ms": (per_fresh - per_long) * 1000,
        "disposable_zone_starts": float(starts),
    }


async def measure_async(starts: int, trips: int) -> dict[str, float]:
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "run").mkdir(mode=0o700)
        backend = Timed()
        backend.check()
        accel = backend.accel.name
        print(f"accelerator: {accel} ({backend.accel.reason})", file=sys.stderr)
        begin = time.perf_counter()
        await backend.template()
        result["template_build_s"] = time.perf_counter() - begin
        result["template_boot_to_ready_s"] = backend.boot_seconds or 0.0

        clone = await first_replies(backend, workdir, starts)
        result["clone_to_first_reply_ms_median"] = statistics.median(clone) * 1000
        result["clone_restore_ms_median"] = statistics.median(backend.starts) * 1000
        decoys = Decoys(workdir, lambda _what: None)
        await decoys.start()
        spare = await zones.warm_restarts(backend, workdir, decoys, max(5, starts // 2))
        await decoys.close()
        result["restart_with_spare_ms_median"] = statistics.median(spare) * 1000

        cold_backend = Timed(QemuSettings(template=False))
        cold_backend.check()
        cold = await first_replies(cold_backend, workdir, max(2, starts // 10))
        result["cold_boot_to_first_reply_s_median"] = statistics.median(cold)

        result.update(await five_zones(backend, workdir))
        for key, value in (await channel(backend, workdir, trips)).items():
            result[key] = value
        sandbox = get_backend("sandbox")
        sandbox.check()
        for key, value in (await channel(sandbox, workdir, trips)).items():
            result[f"sandbox_{key}"] = value
        result.update(await disposable(backend, workdir, max(5, starts)))
        for key, value in (await disposable(sandbox, workdir, max(5, starts))).items():
            result[f"sandbox_{key}"] = value
    result["round_trip_vs_sandbox"] = (
        result["round_trip_ms_median"] / result["sandbox_round_trip_ms_median"]
    )
    return {f"{accel}.{key}": value for key, value in result.items()}


def measure(starts: int = 10, trips: int = 200) -> dict[str, float]:
    """The numbers, or none (and why, on stderr) where the qemu backend cannot run."""
    logging.disable(logging.WARNING)
    try:
        QemuBackend().check()
    except BackendError as exc:
        print(f"qemu: not measured: {exc}", file=sys.stderr)
        return {}
    return asyncio.run(measure_async(starts, trips))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--round-trips", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.starts, args.round_trips)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:48} {value:10.2f}")


if __name__ == "__main__":
    main()
