"""Encode + decode rate of the wire protocol for a ~2 KB message.

Usage: python bench/protocol_codec.py [--rounds N] [--json]
Prints the median over 5 runs of N round trips (encode_frame -> FrameDecoder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from threezone.protocol.framing import FrameDecoder, encode_frame
from threezone.protocol.messages import (
    Injection,
    Link,
    SanitizedMessage,
    SanitizeResult,
)


def sample_message() -> SanitizeResult:
    body = ("Hi team, the quarterly review moves to Tuesday at 10:00. " * 34)[:1900]
    message = SanitizedMessage(
        channel="email",
        id="email:1700000000.M1P2.host",
        sender="alice@partner.example",
        subject="Quarterly review moved",
        body=body,
        links=[Link(text="agenda", url="https://partner.example/agenda", host="partner.example")],
        attachments=[],
        injection=Injection(flagged=False, score=0.0, reasons=[]),
        sanitized=True,
    )
    return SanitizeResult(id=7, reply_to=6, message=message)


def one_run(rounds: int) -> float:
    message = sample_message()
    decoder = FrameDecoder()
    start = time.perf_counter()
    for _ in range(rounds):
        decoder.feed(encode_frame(message))
        decoder.next_message()
    return rounds / (time.perf_counter() - start)


def measure(rounds: int = 20_000) -> dict[str, float]:
    frame_bytes = len(encode_frame(sample_message()))
    rates = [one_run(rounds) for _ in range(5)]
    return {"frame_bytes": frame_bytes, "round_trips_per_s_median": statistics.median(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.rounds)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"frame {result['frame_bytes']:.0f} bytes: "
            f"{result['round_trips_per_s_median']:,.0f} encode+decode/s (median of 5)"
        )


if __name__ == "__main__":
    main()
