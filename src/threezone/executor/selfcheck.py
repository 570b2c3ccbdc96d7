"""``threezone doctor``: start a zone of each role under each backend and keep its report.

This is the executor's real start path (socket, peer check, hello, isolation report),
with decoys laid as in a real run, so what doctor shows is what a run would verify.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from threezone.backends import BACKENDS, get_backend
from threezone.backends.base import Backend, Role
from threezone.errors import BackendError, ZoneError
from threezone.executor.broker import ZoneSettings
from threezone.executor.standalone import standalone_zone
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
    async with standalone_zone(
        backend, role, MODULES[role], SETTINGS, result.alarms.append
    ) as zone:
        try:
            await zone.ensure_running()
        except ZoneError as exc:
            result.error = exc.detail
        finally:
            result.report = zone.isolation
    return result
