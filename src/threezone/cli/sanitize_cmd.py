"""``threezone sanitize``: run a reader on raw input and print its strict JSON.

By default the reader runs in its zone, under the configured isolation, exactly as in
a run; ``--in-process`` calls the reader function directly (for debugging). ``--channel``
picks the reader (email, telegram, slack). With ``--jsonl`` every input line is
``{"id": ..., "raw": ...}``, where ``raw`` is the raw item as a string (an email, or a
Telegram/Slack event as JSON text) or, for telegram and slack, the event as a JSON
object; every output line is ``{"id": ..., "result": {...}}`` or ``{"id": ...,
"error": {"code", "detail"}}``, streamed through one persistent zone.
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
from threezone.protocol.messages import (
    Channel,
    Error,
    SanitizedMessage,
    SanitizeRequest,
    SanitizeResult,
)
from threezone.readers import read

READER = "threezone.zones.reader_main"


CHANNELS: tuple[Channel, ...] = ("email", "telegram", "slack")


class Line(msgspec.Struct, forbid_unknown_fields=True):
    id: str | int
    raw: msgspec.Raw  # a string, or (telegram, slack) the event as a JSON object


Outcome = SanitizedMessage | tuple[str, str]  # a result, or (code, detail)


class InProcess:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def sanitize(self, untrusted_raw: bytes, message_id: str) -> Outcome:
        try:
            return read(self.channel, untrusted_raw, message_id)
        except ReaderError as exc:
            return exc.code, exc.detail


class InZone:
    def __init__(self, zone: Zone, channel: Channel) -> None:
        self.zone = zone
        self.channel = channel

    async def sanitize(self, untrusted_raw: bytes, message_id: str) -> Outcome:
        request_id = self.zone.next_id()
        request = SanitizeRequest(
            id=request_id, channel=self.channel, message_id=message_id, raw=untrusted_raw
        )
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
    lines: Iterable[bytes],
    out: IO[str],
    in_process: bool,
    backend: str,
    channel: Channel = "email",
) -> int:
    """Sanitize each JSONL line; returns how many lines ended in an error."""
    failures = 0
    async with _reader(in_process, backend, channel) as reader:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = _record(number, line, channel)
            if isinstance(record, dict):
                out.write(msgspec.json.encode(record).decode() + "\n")
                failures += 1
                continue
            record_id, untrusted_raw = record
            outcome = await reader.sanitize(untrusted_raw, f"{channel}:{record_id}")
            failures += not isinstance(outcome, SanitizedMessage)
            out.write(msgspec.json.encode(_shape(record_id, outcome)).decode() + "\n")
            out.flush()
    return failures


async def sanitize_one(
    untrusted_raw: bytes, in_process: bool, backend: str, channel: Channel = "email"
) -> Outcome:
    async with _reader(in_process, backend, channel) as reader:
        return await reader.sanitize(untrusted_raw, f"{channel}:input")


def parse_channel(name: str) -> Channel:
    """The channel named on the command line, or ValueError naming the choices."""
    for channel in CHANNELS:
        if name == channel:
            return channel
    raise ValueError(f"no reader for channel {name!r} (choose {', '.join(CHANNELS)})")


@asynccontextmanager
async def _reader(
    in_process: bool, backend: str, channel: Channel
) -> AsyncIterator[InProcess | InZone]:
    if in_process:
        yield InProcess(channel)
        return
    chosen = get_backend(backend)
    chosen.check()
    settings = ZoneSettings(spare=True)  # a poisoned input costs a restart, not a cold start
    async with standalone_zone(chosen, "reader", READER, settings, _ignore) as zone:
        yield InZone(zone, channel)


def _ignore(_what: str) -> None:
    """Decoy alarms: the zone's own self-check already refuses an escaped zone."""


def _record(
    number: int, line: bytes, channel: Channel
) -> tuple[str | int, bytes] | dict[str, object]:
    """(id, raw bytes) from one line, or the error line to print for it.

    ``raw`` as a string is the item's text; as a JSON object it is passed on byte for
    byte, which only the JSON channels (telegram, slack) accept.
    """
    try:
        record = msgspec.json.decode(line, type=Line)
    except msgspec.DecodeError as exc:
        return _bad_line(None, number, str(exc))
    raw = bytes(record.raw)
    if raw.startswith(b'"'):
        return record.id, _text_bytes(msgspec.json.decode(raw, type=str))
    if channel == "email" or not raw.startswith(b"{"):
        wanted = "a string" if channel == "email" else "a string or a JSON object"
        return _bad_line(record.id, number, f"`raw` must be {wanted} for {channel}")
    return record.id, raw


def _text_bytes(text: str) -> bytes:
    """UTF-8, giving back bytes that were undecodable (``surrogateescape``) where it can."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate outside the escape range
        return text.encode("utf-8", "replace")


def _bad_line(record_id: str | int | None, number: int, detail: str) -> dict[str, object]:
    return {"id": record_id, "line": number, "error": {"code": "bad_line", "detail": detail}}


def _shape(record_id: str | int, outcome: Outcome) -> dict[str, object]:
    if isinstance(outcome, SanitizedMessage):
        return {"id": record_id, "result": outcome}
    code, detail = outcome
    return {"id": record_id, "error": {"code": code, "detail": detail}}
