"""Zone supervision details: spare zones, restarts, identity of what connects."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from threezone.backends import get_backend
from threezone.backends.base import ZoneSpec
from threezone.errors import ZoneCrashedError
from threezone.executor.broker import Zone, ZoneSettings
from threezone.protocol.messages import SanitizeRequest, SanitizeResult
from threezone.testing import faulty_zone


def request(raw: bytes, request_id: int) -> SanitizeRequest:
    return SanitizeRequest(id=request_id, channel="email", message_id="email:t", raw=raw)


@pytest.mark.parametrize("backend_name", ["sandbox", "unsafe-process"])
def test_a_spare_replaces_a_crashed_zone_at_once(backend_name: str) -> None:
    backend = get_backend(backend_name)

    async def scenario() -> tuple[list[int | None], int]:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "run").mkdir(mode=0o700)
            socket = Path(tmp) / "run" / "r" / "zone.sock"
            spec = ZoneSpec(
                name="spare", role="reader", module=faulty_zone.MODULE, socket_path=socket
            )
            zone = Zone(spec, backend, ZoneSettings(spare=True, restart_backoff=(0.0,)))
            await zone.listen()
            try:
                await zone.ensure_running()
                pids = [zone.peer_pid]
                await asyncio.sleep(3)  # let the spare come up
                with pytest.raises(ZoneCrashedError):
                    await zone.request(request(b"X-Poison: crash\r\n\r\nx", 1), 1)
                reply = await zone.request(request(b"Subject: next\r\n\r\nok", 2), 2)
                assert isinstance(reply, SanitizeResult)
                pids.append(zone.peer_pid)
                return pids, zone.starts
            finally:
                await zone.stop()

    pids, starts = asyncio.run(scenario())
    assert pids[0] != pids[1]  # a different, fresh process took over
    assert starts == 3  # the first, its spare (adopted), and the spare's own spare
