"""Recall and false-positive rate of the injection detector on tests/corpus/*.jsonl.

Usage: python bench/detector_corpus.py [--json PATH] [--misses] [--show-heldout]

Every case goes through ``clean_text`` and the detector exactly as a reader's text
does (:func:`threezone.sanitize.detect.detect_text`). Prints recall (attacks flagged)
and FP rate (benign flagged) per split and per split x source, and writes the numbers
as JSON (default ``bench/results/detector_corpus.json``). ``--misses`` lists the dev
cases it gets wrong; held-out misses stay hidden unless ``--show-heldout`` is given,
so that tuning happens on dev only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from threezone.sanitize.detect import detect_text

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"
RESULTS = Path(__file__).resolve().parent / "results" / "detector_corpus.json"


@dataclass
class Tally:
    """Counts for one slice of the corpus."""

    attacks: int = 0
    caught: int = 0
    benign: int = 0
    false_positives: int = 0
    misses: list[str] = field(default_factory=list)

    def add(self, label: str, flagged: bool, case_id: str) -> None:
        if label == "attack":
            self.attacks += 1
            self.caught += flagged
            if not flagged:
                self.misses.append(case_id)
        else:
            self.benign += 1
            self.false_positives += flagged
            if flagged:
                self.misses.append(case_id)

    @property
    def recall(self) -> float:
        return self.caught / self.attacks if self.attacks else 1.0

    @property
    def fp_rate(self) -> float:
        return self.false_positives / self.benign if self.benign else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "attacks": self.attacks,
            "caught": self.caught,
            "recall": round(self.recall, 4),
            "benign": self.benign,
            "false_positives": self.false_positives,
            "fp_rate": round(self.fp_rate, 4),
        }


def load(corpus: Path = CORPUS) -> list[dict[str, str]]:
    """Every case of every JSONL file in ``corpus``."""
    rows = []
    for path in sorted(corpus.glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def evaluate(rows: list[dict[str, str]]) -> dict[str, Tally]:
    """Tallies keyed ``split`` and ``split/source``."""
    tallies: dict[str, Tally] = defaultdict(Tally)
    for row in rows:
        flagged = detect_text(row["text"]).flagged
        for key in (row["split"], f"{row['split']}/{row['source']}"):
            tallies[key].add(row["label"], flagged, row["id"])
    return dict(sorted(tallies.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the numbers")
    parser.add_argument("--misses", action="store_true", help="list the dev cases it gets wrong")
    parser.add_argument("--show-heldout", action="store_true", help="list held-out misses too")
    args = parser.parse_args()
    rows = load()
    tallies = evaluate(rows)
    print(f"{'slice':28} {'attacks':>8} {'recall':>7} {'benign':>7} {'FP':>4} {'FP rate':>8}")
    for key, t in tallies.items():
        print(
            f"{key:28} {t.attacks:8} {t.recall:7.1%} {t.benign:7} {t.false_positives:4}"
            f" {t.fp_rate:8.1%}"
        )
    if args.misses:
        texts = {row["id"]: row["text"] for row in rows}
        for key, t in tallies.items():
            if "/" in key or (key == "heldout" and not args.show_heldout):
                continue
            for case_id in t.misses:
                print(f"\n--- {key} {case_id}\n{texts[case_id][:600]}", file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    numbers = {key: t.as_dict() for key, t in tallies.items()}
    args.json.write_text(json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    main()
