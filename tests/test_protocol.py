"""The wire protocol: strict decoding, bounded frames, only our error type escapes."""

from __future__ import annotations

import struct

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threezone.errors import FrameTooLargeError, LocalProtocolError, RemoteProtocolError
from threezone.protocol.framing import FrameDecoder, decode_body, encode_body, encode_frame
from threezone.protocol.messages import (
    ActionRequest,
    ActionResult,
    Attachment,
    Dropped,
    Error,
    Hello,
    Injection,
    Link,
    Message,
    SanitizedMessage,
    SanitizeRequest,
    SanitizeResult,
)


def sanitized(body: str = "hello") -> SanitizedMessage:
    return SanitizedMessage(
        channel="email",
        id="email:1",
        sender="a@example.com",
        subject="hi",
        body=body,
        links=[Link(text="x", url="https://example.com/", host="example.com")],
        attachments=[Attachment(name="a.pdf", content_type="application/pdf", size=3)],
        injection=Injection(flagged=False, score=0.0, reasons=[]),
        sanitized=True,
        dropped=Dropped(hidden_chars=2),
    )


SAMPLES: list[Message] = [
    Hello(zone="planner", role="planner", pid=42, version="0.1.0"),
    SanitizeRequest(id=1, channel="email", message_id="email:1", raw=b"\x00\xffraw"),
    SanitizeResult(id=2, reply_to=1, message=sanitized()),
    ActionRequest(id=3, episode_id="ep", action="email.send", args={"to": "a@b.c", "n": 3}),
    ActionResult(id=4, reply_to=3, decision="deny", rule="p:3", reason="no", executed=False),
    Error(id=5, reply_to=None, code="x", detail="y"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(message))
    assert decoder.messages() == [message]


def test_sanitized_message_uses_from_on_the_wire() -> None:
    body = msgspec.json.decode(encode_body(SAMPLES[2]))
    assert body["message"]["from"] == "a@example.com"
    assert body["message"]["sanitized"] is True


def test_unknown_type_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="invalid message"):
        decode_body(b'{"type":"launch_missiles","id":1}')


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown field `extra`"):
        decode_body(b'{"type":"shutdown","id":1,"extra":true}')


def test_sanitized_must_be_true() -> None:
    wire = msgspec.json.decode(encode_body(SAMPLES[2]))
    wire["message"]["sanitized"] = False
    with pytest.raises(RemoteProtocolError):
        decode_body(msgspec.json.encode(wire))


def test_string_bounds_are_enforced() -> None:
    too_long = "x" * 300
    with pytest.raises(RemoteProtocolError):
        decode_body(msgspec.json.encode({"type": "ready", "zone": too_long}))


def test_action_names_are_checked() -> None:
    bad = {"type": "action", "id": 1, "episode_id": "e", "action": "../etc", "args": {}}
    with pytest.raises(RemoteProtocolError):
        decode_body(msgspec.json.encode(bad))


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    decoder = FrameDecoder(max_frame=1024)
    decoder.feed(struct.pack(">I", 1025))  # no body at all: refused before buffering it
    with pytest.raises(FrameTooLargeError) as caught:
        decoder.next_message()
    assert (caught.value.size, caught.value.limit) == (1025, 1024)
    with pytest.raises(RemoteProtocolError):  # the stream stays broken
        decoder.feed(b"more")


def test_empty_frame_is_refused() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError, match="empty"):
        decoder.next_message()


def test_encoder_refuses_frames_the_peer_would_reject() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(SAMPLES[1], max_frame=10)


def test_byte_by_byte_feeding_yields_the_same_messages() -> None:
    stream = b"".join(encode_frame(m) for m in SAMPLES)
    decoder = FrameDecoder()
    out: list[Message] = []
    for byte in stream:
        decoder.feed(bytes([byte]))
        out.extend(decoder.messages())
    assert out == SAMPLES


def _decode_all(chunks: list[bytes], max_frame: int = 4096) -> None:
    decoder = FrameDecoder(max_frame)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            decoder.messages()
    except RemoteProtocolError:
        pass  # the only exception a hostile peer may cause


@settings(max_examples=400)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    _decode_all([data])
    _decode_all([data[i : i + 1] for i in range(len(data))])


@settings(max_examples=300)
@given(st.sampled_from(SAMPLES), st.data())
def test_truncated_and_mutated_frames_raise_only_protocol_errors(
    message: Message, data: st.DataObject
) -> None:
    frame = bytearray(encode_frame(message))
    cut = data.draw(st.integers(0, len(frame)))
    _decode_all([bytes(frame[:cut])])
    position = data.draw(st.integers(0, len(frame) - 1))
    frame[position] = data.draw(st.integers(0, 255))
    _decode_all([bytes(frame)], max_frame=1 << 20)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.sampled_from(["hello", "sanitize", "sanitized", "action", "plan", "error"]), json_values)
def test_wrongly_shaped_json_raises_only_protocol_errors(kind: str, value: object) -> None:
    document = {"type": kind, "id": 1, "payload": value}
    body = msgspec.json.encode(document)
    with pytest.raises(RemoteProtocolError):
        decode_body(body)
