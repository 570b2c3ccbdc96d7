"""``threezone doctor``: start a zone of each role under each backend and keep its report.

This is the executor's real start path (socket, peer check, hello, isolation report),
with decoys laid as in a real run, so what doctor shows is what a run would verify.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from threezone.backends import BACKENDS, get_backend
from threezone.backends.base import Backend, Role, ZoneSpec
from threezone.errors import BackendError, ZoneError
from threezone.executor.broker import Zone, ZoneSettings
from threezone.executor.decoys import Decoys
from threezone.protocol.messages import IsolationReport

MODULES: dict[Role, str] = {
    "reader": "threezone.zones.reader_main",
    "planner": "threezone.zones.planner_main",
}
SETTINGS = ZoneSettings(restart_backoff=(0.1,))


@dataclass(slots=True)
class ZoneCheck:
    backend: str
    role: Role
    report: IsolationReport | None = None
    error: str | None = None
    alarms: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        probes = self.report.probes if self.report else []
        return self.error is None and bool(probes) and all(p.blocked for p in probes)


async def check_all(names: list[str] | None = None) -> list[ZoneCheck]:
    results: list[ZoneCheck] = []
    for name in names or sorted(BACKENDS):
        backend = get_backend(name)
        for role in MODULES:
            results.append(await check_zone(backend, role))
    return results


async def check_zone(backend: Backend, role: Role) -> ZoneCheck:
    result = ZoneCheck(backend.name, role)
    try:
        backend.check()
    except BackendError as exc:
        result.error = str(exc)
        return result
    workdir = Path(tempfile.mkdtemp(prefix="threezone-doctor-"))
    decoys = Decoys(workdir, result.alarms.append)
    try:
        await decoys.start()
        await _start_and_stop(backend, role, workdir, decoys, result)
    finally:
        await decoys.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


async def _start_and_stop(
    backend: Backend, role: Role, workdir: Path, decoys: Decoys, result: ZoneCheck
) -> None:
    spec = ZoneSpec(
        name=f"doctor-{role}",
        role=role,
        module=MODULES[role],
        socket_path=workdir / "run" / role / "zone.sock",
        log_path=workdir / f"{role}.log",
    )
    inside = str(Path(backend.socket_arg(spec)).parent)
    spec = replace(spec, args=decoys.args(spec, inside))
    (workdir / "run").mkdir(mode=0o700)
    zone = Zone(spec, backend, SETTINGS)
    await zone.listen()
    try:
        await zone.ensure_running()
    except ZoneError as exc:
        result.error = exc.detail
    finally:
        result.report = zone.isolation
        await zone.stop()
