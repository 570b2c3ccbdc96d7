"""``threezone sanitize``: run a reader on raw input and print its strict JSON.

By default the reader runs in its zone, under the configured isolation, exactly as in
a run; ``--in-process`` calls the reader function directly (for debugging). With
``--jsonl`` every input line is ``{"id": ..., "raw": "<the email as text>"}`` and
every output line is ``{"id": ..., "result": {...}}`` or ``{"id": ..., "error":
{"code", "detail"}}``, streamed through one persistent zone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import IO

import msgspec

from threezone.backends import get_backend
from threezone.errors import ReaderError, ZoneError
from threezone.executor.broker import Zone, ZoneSettings
from threezone.executor.standalone import standalone_zone
from threezone.protocol.messages import Error, SanitizedMessage, SanitizeRequest, SanitizeResult
from threezone.readers.email import read_email

READER = "threezone.zones.reader_main"


class Line(msgspec.Struct, forbid_unknown_fields=True):
    id: str | int
    raw: str


Outcome = SanitizedMessage | tuple[str, str]  # a result, or (code, detail)


class InProcess:
    async def sanitize(self, untrusted_raw: bytes, message_id: str) -> Outcome:
        try:
            return read_email(untrusted_raw, message_id)
        except ReaderError as exc:
            return exc.code, exc.detail


class InZone:
    def __init__(self, zone: Zone) -> None:
        self.zone = zone

    async def sanitize(self, untrusted_raw: bytes, message_id: str) -> Outcome:
        request_id = self.zone.next_id()
        request = SanitizeRequest(id=request_id, channel="email", message_id=message_id,
                                  raw=untrusted_raw)  # fmt: skip
        try:
            reply = await self.zone.request(request, request_id)
        except ZoneError as exc:
            return exc.code, exc.detail
        if isinstance(reply, SanitizeResult):
            return reply.message
        if isinstance(reply, Error):
            return reply.code, reply.detail
        return "zone_bad_reply", type(reply).__name__


async def sanitize_stream(
    lines: Iterable[bytes], out: IO[str], in_process: bool, backend: str
) -> int:
    """Sanitize each JSONL line; returns how many lines ended in an error."""
    failures = 0
    async with _reader(in_process, backend) as reader:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = _record(number, line)
            if isinstance(record, dict):
                out.write(msgspec.json.encode(record).decode() + "\n")
                failures += 1
                continue
            outcome = await reader.sanitize(record.raw.encode("utf-8", "surrogateescape"),
                                            f"email:{record.id}")  # fmt: skip
            failures += not isinstance(outcome, SanitizedMessage)
            out.write(msgspec.json.encode(_shape(record.id, outcome)).decode() + "\n")
            out.flush()
    return failures


async def sanitize_one(untrusted_raw: bytes, in_process: bool, backend: str) -> Outcome:
    async with _reader(in_process, backend) as reader:
        return await reader.sanitize(untrusted_raw, "email:input")


@asynccontextmanager
async def _reader(in_process: bool, backend: str) -> AsyncIterator[InProcess | InZone]:
    if in_process:
        yield InProcess()
        return
    chosen = get_backend(backend)
    chosen.check()
    settings = ZoneSettings(spare=True)  # a poisoned input costs a restart, not a cold start
    async with standalone_zone(chosen, "reader", READER, settings, _ignore) as zone:
        yield InZone(zone)


def _ignore(_what: str) -> None:
    """Decoy alarms: the zone's own self-check already refuses an escaped zone."""


def _record(number: int, line: bytes) -> Line | dict[str, object]:
    try:
        return msgspec.json.decode(line, type=Line)
    except msgspec.DecodeError as exc:
        return {"id": None, "line": number, "error": {"code": "bad_line", "detail": str(exc)}}


def _shape(record_id: str | int, outcome: Outcome) -> dict[str, object]:
    if isinstance(outcome, SanitizedMessage):
        return {"id": record_id, "result": outcome}
    code, detail = outcome
    return {"id": record_id, "error": {"code": code, "detail": detail}}
