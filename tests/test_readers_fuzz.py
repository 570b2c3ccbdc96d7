"""Fuzzing every reader: whatever the bytes, a strict message or a ReaderError, nothing else.

Three kinds of input per reader: random bytes; real fixtures with bytes flipped,
inserted or cut; and (for the JSON channels) real fixtures with one value anywhere in
the tree swapped for random JSON, which is what reaches the typed code paths rather
than the JSON parser. Example counts are bounded so CI stays fast; a failure prints
the shrunk input, and hypothesis keeps it in its database for the next run. Set
``THREEZONE_FUZZ_EXAMPLES`` for a longer campaign.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from threezone.demo import hidden, invoice, meeting
from threezone.errors import ReaderError
from threezone.protocol.messages import SanitizedMessage
from threezone.readers import READERS

FIXTURES = Path(__file__).parent / "fixtures"
# THREEZONE_FUZZ_EXAMPLES=20000 for a long local run; CI keeps the default
FUZZ = settings(
    max_examples=int(os.environ.get("THREEZONE_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SEEDS: dict[str, list[bytes]] = {
    "email": [meeting(), hidden(), invoice()],
    "telegram": [p.read_bytes() for p in sorted((FIXTURES / "telegram").glob("*.json"))],
    "slack": [p.read_bytes() for p in sorted((FIXTURES / "slack").glob("*.json"))],
}
JSON_CHANNELS = ("telegram", "slack")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def survives(channel: str, untrusted_raw: bytes) -> None:
    """The property: a message that fits the strict schema, or the reader's own error."""
    try:
        result = READERS[channel](untrusted_raw, f"{channel}:fuzz")
    except ReaderError:
        return
    decoded = msgspec.json.decode(msgspec.json.encode(result), type=SanitizedMessage)
    assert decoded == result
    assert result.channel == channel


@pytest.mark.parametrize("channel", sorted(READERS))
@FUZZ
@given(data=st.binary(max_size=4_096))
def test_random_bytes(channel: str, data: bytes) -> None:
    survives(channel, data)


@pytest.mark.parametrize("channel", sorted(READERS))
@FUZZ
@given(data=st.data())
def test_mutated_real_inputs(channel: str, data: st.DataObject) -> None:
    seed = bytearray(data.draw(st.sampled_from(SEEDS[channel])))
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(seed)))
        action = data.draw(st.sampled_from(["flip", "insert", "cut"]))
        if action == "flip" and at < len(seed):
            seed[at] = data.draw(st.integers(0, 255))
        elif action == "insert":
            seed[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            del seed[at : at + data.draw(st.integers(1, 64))]
    survives(channel, bytes(seed))


@pytest.mark.parametrize("channel", JSON_CHANNELS)
@FUZZ
@given(data=st.data())
def test_one_value_swapped_anywhere_in_a_real_event(channel: str, data: st.DataObject) -> None:
    tree = json.loads(data.draw(st.sampled_from(SEEDS[channel])))
    paths = list(_paths(tree))
    path = data.draw(st.sampled_from(paths))
    tree = _replace(tree, path, data.draw(json_values))
    survives(channel, json.dumps(tree).encode())


@pytest.mark.parametrize("channel", JSON_CHANNELS)
@FUZZ
@given(value=json_values)
def test_random_json(channel: str, value: Any) -> None:
    survives(channel, json.dumps(value).encode())


@FUZZ
@given(
    text=st.text(max_size=300),
    offsets=st.lists(st.tuples(st.integers(-3, 400), st.integers(-3, 400)), max_size=6),
    kind=st.sampled_from(["text_link", "url", "spoiler", "bold", "custom_emoji"]),
)
def test_telegram_entities_over_any_text(
    text: str, offsets: list[tuple[int, int]], kind: str
) -> None:
    """Surrogates, astral characters and offsets anywhere: slicing must never crash."""
    entities = [
        {"type": kind, "offset": o, "length": n, "url": "https://x.example"} for o, n in offsets
    ]
    message = {
        "message_id": 1,
        "chat": {"id": 1, "type": "private"},
        "text": text,
        "entities": entities,
    }
    survives("telegram", json.dumps({"update_id": 1, "message": message}).encode())


@FUZZ
@given(text=st.text(max_size=300))
def test_slack_mrkdwn_over_any_text(text: str) -> None:
    event = {"type": "message", "user": "U1", "channel": "C1", "ts": "1.0", "text": text}
    survives("slack", json.dumps({"type": "event_callback", "event": event}).encode())


@FUZZ
@given(subject=st.text(max_size=80), body=st.text(max_size=400), html=st.booleans())
def test_email_built_from_any_text(subject: str, body: str, html: bool) -> None:
    head = f"From: a@b.example\r\nSubject: {subject}\r\nMessage-ID: <{subject}@x>\r\n"
    kind = "text/html" if html else "text/plain"
    raw = f"{head}Content-Type: {kind}; charset=utf-8\r\n\r\n{body}"
    survives("email", raw.encode("utf-8", "surrogatepass"))


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> Any:
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _paths(value, (*prefix, index))


def _replace(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node: Any = tree
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return tree
