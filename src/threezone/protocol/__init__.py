"""The zone wire protocol, sans-IO: message structs and length-prefixed framing."""

from threezone.protocol.framing import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    decode_body,
    encode_body,
    encode_frame,
)
from threezone.protocol.messages import Message, Response

__all__ = [
    "DEFAULT_MAX_FRAME",
    "FrameDecoder",
    "Message",
    "Response",
    "decode_body",
    "encode_body",
    "encode_frame",
]
