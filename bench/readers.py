"""Reader throughput per channel, and a reader's peak memory on a 25 MB email.

Usage: python bench/readers.py [--messages N] [--json]

Throughput: messages per second on one core (one process, one thread) over a benign
generated corpus per channel: emails (plain; HTML with a plain alternative; with a
PDF attachment), Telegram updates (text with entities, captions, forwards, buttons)
and Slack events (rich-text blocks, legacy attachments, files). Median of 5 passes.

Each channel is also timed with the rule detector replaced by one that finds nothing
(``*_no_detector``), which separates the reader's own cost from the detector's.

Memory: a child process reads a ~25 MB email (three base64 attachments plus an HTML
body) from a file and runs the email reader on it; its peak RSS comes from
``resource.getrusage`` (in the child, and RUSAGE_CHILDREN in the parent). The child
reports its RSS before reading, too, so the reader's own share is visible.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

from threezone.readers import READERS
from threezone.sanitize.detect import DetectorInput, Finding, RuleDetector

VOCABULARY = """
    meeting agenda quarterly review budget project update invoice team schedule tuesday
    report numbers launch customer feedback design draft deadline lunch contract notes
    slides roadmap release follow-up thanks please attached
"""
WORDS = VOCABULARY.split()


def sentence(rng: random.Random, words: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng, rng.randint(6, 16)) for _ in range(rng.randint(2, 5)))


def email_corpus(rng: random.Random, count: int) -> list[bytes]:
    corpus = []
    for i in range(count):
        message = EmailMessage()
        message["From"] = f"Person {i} <p{i}@partner.example>"
        message["To"] = "owner@demo.example"
        message["Subject"] = sentence(rng, 5)
        message["Message-ID"] = f"<{i}@partner.example>"
        text = "\n\n".join(paragraph(rng) for _ in range(3)) + "\nhttps://partner.example/doc"
        message.set_content(text)
        if i % 3 >= 1:
            paragraphs = "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
            message.add_alternative(
                f"<html><head><style>p{{margin:0}}</style></head><body>{paragraphs}"
                '<a href="https://partner.example/doc">the doc</a></body></html>',
                subtype="html",
            )
        if i % 3 == 2:
            message.add_attachment(
                b"%PDF-1.7\n" + rng.randbytes(20_000), "application", "pdf", filename="a.pdf"
            )
        corpus.append(message.as_bytes())
    return corpus


def telegram_corpus(rng: random.Random, count: int) -> list[bytes]:
    corpus = []
    for i in range(count):
        text = f"\U0001f44b {paragraph(rng)} see docs.partner.example"
        units = len(text.encode("utf-16-le")) // 2
        message: dict[str, object] = {
            "message_id": i,
            "from": {"id": 1000 + i, "is_bot": False, "first_name": "Ann", "username": "ann"},
            "chat": {"id": -100123, "type": "supergroup", "title": "Team"},
            "date": 1718000000 + i,
            "text": text,
            "entities": [
                {"type": "bold", "offset": 3, "length": 5},
                {"type": "url", "offset": units - 18, "length": 18},
            ],
        }
        if i % 4 == 1:
            message["forward_origin"] = {
                "type": "user",
                "date": 1,
                "sender_user": {"id": 5, "is_bot": False, "first_name": "Bo"},
            }
        if i % 4 == 2:
            message["reply_markup"] = {
                "inline_keyboard": [[{"text": "Open", "url": "https://partner.example/x"}]]
            }
        corpus.append(json.dumps({"update_id": i, "message": message}).encode())
    return corpus


def slack_corpus(rng: random.Random, count: int) -> list[bytes]:
    corpus = []
    for i in range(count):
        text = paragraph(rng)
        event: dict[str, object] = {
            "type": "message",
            "user": "U0123",
            "channel": "C0456",
            "ts": f"1718000000.{i:06d}",
            "channel_type": "channel",
            "text": f"{text} <https://partner.example/doc|the doc>",
            "blocks": [
                {
                    "type": "rich_text",
                    "elements": [
                        {
                            "type": "rich_text_section",
                            "elements": [
                                {"type": "text", "text": f"{text} "},
                                {
                                    "type": "link",
                                    "url": "https://partner.example/doc",
                                    "text": "the doc",
                                },
                            ],
                        }
                    ],
                }
            ],
        }
        if i % 3 == 1:
            event["attachments"] = [
                {"fallback": "Build passed", "title": "Build passed", "text": sentence(rng)}
            ]
        if i % 3 == 2:
            event["files"] = [{"name": "notes.pdf", "mimetype": "application/pdf", "size": 1234}]
        corpus.append(json.dumps({"type": "event_callback", "event": event}).encode())
    return corpus


CORPORA: dict[str, Callable[[random.Random, int], list[bytes]]] = {
    "email": email_corpus,
    "telegram": telegram_corpus,
    "slack": slack_corpus,
}


def rate(channel: str, corpus: list[bytes]) -> float:
    reader = READERS[channel]
    start = time.perf_counter()
    for index, raw in enumerate(corpus):
        result = reader(raw, f"{channel}:{index}")
        assert not result.injection.flagged, (channel, index, result.injection.reasons)
    return len(corpus) / (time.perf_counter() - start)


def throughput(messages: int) -> dict[str, float]:
    """Per channel: with the injection detector, and without it (the reader's own cost)."""
    results: dict[str, float] = {}
    for channel, build in CORPORA.items():
        corpus = build(random.Random(7), messages)
        rate(channel, corpus[:20])  # warm caches and imports
        with_detector = [rate(channel, corpus) for _ in range(5)]
        results[f"{channel}_msgs_per_s"] = statistics.median(with_detector)
        with no_rule_detector():
            alone = [rate(channel, corpus) for _ in range(5)]
        results[f"{channel}_msgs_per_s_no_detector"] = statistics.median(alone)
    return results


@contextmanager
def no_rule_detector() -> Iterator[None]:
    """Swap the rule detector for one that finds nothing, to see what parsing costs alone."""
    original = RuleDetector.findings

    def nothing(self: RuleDetector, sample: DetectorInput) -> list[Finding]:
        return []

    RuleDetector.findings = nothing  # type: ignore[method-assign]  # a measurement, restored below
    try:
        yield
    finally:
        RuleDetector.findings = original  # type: ignore[method-assign]


def big_email(target_bytes: int = 25 * 1024 * 1024 - 200_000) -> bytes:
    """About 25 MB on the wire: three ~6 MB attachments (base64 makes them ~8 MB)."""
    rng = random.Random(3)
    message = EmailMessage()
    message["From"] = "a@partner.example"
    message["Subject"] = "the big one"
    message.set_content("see attached")
    message.add_alternative("<p>" + paragraph(rng) * 200 + "</p>", subtype="html")
    # base64 in 76-column lines turns 57 bytes into 77
    per_part = (target_bytes - len(message.as_bytes())) // 3 * 57 // 77 - 10_000
    kinds = (
        ("application", "pdf", b"%PDF-1.7\n"),
        ("image", "png", b"\x89PNG\r\n\x1a\n"),
        ("application", "zip", b"PK\x03\x04"),
    )
    for maintype, subtype, magic in kinds:
        data = magic + rng.randbytes(per_part)
        message.add_attachment(data, maintype, subtype, filename=f"part.{subtype}")
    return message.as_bytes()


def peak_memory() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.eml"
        path.write_bytes(big_email())
        child = subprocess.run(
            [sys.executable, __file__, "--child-rss", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        report: dict[str, float] = json.loads(child.stdout)
        report["children_maxrss_mib"] = (
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        )
        report["email_mib"] = path.stat().st_size / 2**20
    return report


def child_rss(path: str) -> None:
    """Runs in the child: RSS after loading the bytes, then the peak after reading them."""
    from threezone.readers import read_email

    raw = Path(path).read_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = read_email(raw, "big")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert len(result.attachments) == 3, result.attachments
    print(
        json.dumps(
            {"rss_before_read_mib": before, "peak_rss_mib": peak, "reader_mib": peak - before}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child-rss", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        child_rss(args.child_rss)
        return
    result = measure(args.messages)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:28} {value:12,.1f}")


def measure(messages: int = 600) -> dict[str, float]:
    return {**throughput(messages), **peak_memory()}


if __name__ == "__main__":
    main()
