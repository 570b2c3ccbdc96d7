"""One zone outside a full executor run: for ``doctor`` and ``sanitize``.

It is set up exactly as the executor sets up its zones (private runtime directory,
decoys for the self-check, the backend's socket handling), so what a standalone zone
verifies and does is what a zone in a run would.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from threezone.backends.base import Backend, Role, ZoneSpec
from threezone.executor.broker import Zone, ZoneSettings
from threezone.executor.decoys import Decoys


@asynccontextmanager
async def standalone_zone(
    backend: Backend,
    role: Role,
    module: str,
    settings: ZoneSettings,
    alarm: Callable[[str], None],
) -> AsyncIterator[Zone]:
    """A listening (not yet started) zone; stopped and cleaned up on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="threezone-zone-"))
    decoys = Decoys(workdir, alarm)
    try:
        await decoys.start()
        (workdir / "run").mkdir(mode=0o700)
        spec = ZoneSpec(
            name=f"{role}-standalone",
            role=role,
            module=module,
            socket_path=workdir / "run" / role / "zone.sock",
            log_path=workdir / f"{role}.log",
        )
        inside = str(Path(backend.socket_arg(spec)).parent)
        zone = Zone(replace(spec, args=decoys.args(spec, inside)), backend, settings)
        await zone.listen()
        try:
            yield zone
        finally:
            await zone.stop()
    finally:
        await decoys.close()
        shutil.rmtree(workdir, ignore_errors=True)
