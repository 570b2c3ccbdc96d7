"""The detector on its evaluation corpus (tests/corpus/): the held-out numbers are a gate.

Counts, not timings: a rule change that loses recall or gains false positives on the
held-out split fails CI. The held-out split is pinned by a digest so that it cannot be
edited quietly to make a regression pass; changing it is a deliberate act that updates
HELDOUT_DIGEST and says why in tests/corpus/README.md.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from threezone.sanitize.detect import DetectorInput, RuleDetector, detect_text
from threezone.sanitize.text import clean_text

CORPUS = Path(__file__).resolve().parent / "corpus"
HELDOUT_DIGEST = "129428ed1a33551d865bca641773ea5649bbc4013d15276b57fe17dabecb6f56"
MIN_RECALL = 0.90
MAX_FP_RATE = 0.03


def load() -> list[dict[str, str]]:
    rows = []
    for path in sorted(CORPUS.glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


ROWS = load()


def test_corpus_is_well_formed() -> None:
    assert len(ROWS) > 800
    assert all(set(row) == {"id", "text", "label", "source", "split"} for row in ROWS)
    assert {row["label"] for row in ROWS} == {"attack", "benign"}
    assert {row["split"] for row in ROWS} == {"dev", "heldout"}
    assert len({row["id"] for row in ROWS}) == len(ROWS)
    sources = Counter((row["split"], row["label"]) for row in ROWS)
    assert min(sources.values()) >= 100


def test_heldout_split_is_frozen() -> None:
    heldout = sorted((r["id"], r["text"], r["label"]) for r in ROWS if r["split"] == "heldout")
    digest = hashlib.sha256(json.dumps(heldout).encode()).hexdigest()
    assert digest == HELDOUT_DIGEST


def rates(split: str) -> tuple[float, float, list[str]]:
    attacks = [r for r in ROWS if r["split"] == split and r["label"] == "attack"]
    benign = [r for r in ROWS if r["split"] == split and r["label"] == "benign"]
    missed = [r["id"] for r in attacks if not detect_text(r["text"]).flagged]
    false_positives = [r["id"] for r in benign if detect_text(r["text"]).flagged]
    recall = 1 - len(missed) / len(attacks)
    return recall, len(false_positives) / len(benign), false_positives


def test_heldout_meets_the_goal() -> None:
    recall, fp_rate, false_positives = rates("heldout")
    assert recall >= MIN_RECALL, f"held-out recall {recall:.3f}"
    assert fp_rate <= MAX_FP_RATE, f"held-out FP rate {fp_rate:.3f}: {false_positives}"


def test_dev_false_positives_stay_low() -> None:
    """Dev recall is lower by design (AgentDojo's bare "TODO: <task>" attacks, see README)."""
    _, fp_rate, false_positives = rates("dev")
    assert fp_rate <= MAX_FP_RATE, false_positives


@pytest.mark.parametrize("label", ["attack", "benign"])
def test_every_flag_has_reasons_and_every_reason_a_quote(label: str) -> None:
    for row in (r for r in ROWS if r["label"] == label):
        verdict = detect_text(row["text"])
        if verdict.flagged:
            assert verdict.reasons
            assert all(
                "\u201c" in reason or "characters of hidden" in reason for reason in verdict.reasons
            )


def test_the_re2_prefilter_never_hides_a_rule_match() -> None:
    """The RE2 set only skips rules; with and without it every finding is the same."""
    fast, slow = RuleDetector(), RuleDetector(prefilter=False)
    for row in ROWS:
        cleaned = clean_text(row["text"])
        sample = DetectorInput(visible=cleaned.text, smuggled=cleaned.smuggled)
        assert fast.findings(sample) == slow.findings(sample), row["id"]
