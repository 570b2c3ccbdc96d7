"""Sans-IO framing: a 4-byte big-endian length, then one JSON message.

Bytes in, messages out; no sockets here. :class:`FrameDecoder` checks a frame's
announced length against the maximum as soon as the 4 header bytes arrive, so an
oversized frame is refused before its body is buffered. Any exception other than
:class:`~threezone.errors.RemoteProtocolError` escaping the decoder is a bug.
"""

from __future__ import annotations

import struct

import msgspec

from threezone.errors import FrameTooLargeError, LocalProtocolError, RemoteProtocolError
from threezone.protocol.messages import Message, Wake

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME = 4 * 1024 * 1024

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)


def encode_body(message: Message) -> bytes:
    """The JSON body of one message (no header)."""
    try:
        return _encoder.encode(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from exc


def encode_frame(message: Message, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """One whole frame, header included. Refuses to build a frame the peer would reject."""
    body = encode_body(message)
    if len(body) > max_frame:
        raise LocalProtocolError(
            f"{type(message).__name__} encodes to {len(body)} bytes, over the {max_frame} limit"
        )
    return HEADER.pack(len(body)) + body


def encode_wake(wake: Wake) -> bytes:
    """A :class:`Wake` as one frame (it is not part of the :data:`Message` union)."""
    body = _encoder.encode(wake)
    return HEADER.pack(len(body)) + body


def decode_wake(untrusted_body: bytes) -> Wake:
    try:
        return msgspec.json.decode(untrusted_body, type=Wake)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"invalid wake frame: {exc}") from exc


def decode_body(untrusted_body: bytes) -> Message:
    """Decode one frame body strictly (unknown types and fields are errors)."""
    try:
        return _decoder.decode(untrusted_body)
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(f"invalid message: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise RemoteProtocolError(f"malformed JSON: {exc}") from exc
    except UnicodeDecodeError as exc:  # msgspec raises this for invalid UTF-8 in a tag value
        raise RemoteProtocolError(f"invalid UTF-8 at byte {exc.start}") from exc


def body_length(untrusted_header: bytes, max_frame: int) -> int:
    """The body length a header announces, refused if over ``max_frame`` or empty."""
    if len(untrusted_header) != HEADER_SIZE:
        raise RemoteProtocolError(f"frame header must be {HEADER_SIZE} bytes")
    (size,) = HEADER.unpack(untrusted_header)
    if size > max_frame:
        raise FrameTooLargeError(size, max_frame)
    if size == 0:
        raise RemoteProtocolError("empty frame")
    return int(size)


class FrameDecoder:
    """Accumulates bytes and yields whole messages.

    After a :class:`RemoteProtocolError` the stream is out of sync and the decoder
    refuses further input: the connection must be closed.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._pending: int | None = None
        self._broken: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        if self._broken is not None:
            raise self._broken
        self._buffer += data

    def next_message(self) -> Message | None:
        """The next whole message, or ``None`` if more bytes are needed."""
        if self._broken is not None:
            raise self._broken
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._broken = exc
            raise

    def _next(self) -> Message | None:
        if self._pending is None:
            if len(self._buffer) < HEADER_SIZE:
                return None
            self._pending = body_length(bytes(self._buffer[:HEADER_SIZE]), self._max_frame)
            del self._buffer[:HEADER_SIZE]
        if len(self._buffer) < self._pending:
            return None
        body = bytes(self._buffer[: self._pending])
        del self._buffer[: self._pending]
        self._pending = None
        return decode_body(body)

    def messages(self) -> list[Message]:
        """Every whole message buffered so far."""
        out: list[Message] = []
        while (message := self.next_message()) is not None:
            out.append(message)
        return out
