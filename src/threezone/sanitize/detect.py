"""A scored, explainable prompt-injection tripwire.

Detectors add signal; they are not the guarantee (isolation and the action policy
are). So this one aims to be legible rather than clever: weighted regular
expressions, each with a reason a person can read, combined as independent evidence
(``score = 1 - prod(1 - w)``), flagged at 0.5. A rule that fires in text the person
could not see (hidden HTML, smuggled Unicode) weighs far more than the same words in
plain sight, because hiding an instruction from the human has no innocent reading.

Reasons quote at most :data:`MAX_QUOTE` characters of the matched text: enough to
find it, too little to carry a payload into whatever displays the reasons.

Rules run on a *view* of the text made for detection only (:func:`detection_view`):
full NFKC, accents stripped, Latin lookalikes from other scripts folded to Latin, and
the characters :func:`~threezone.sanitize.text.clean_text` used to neutralize chat
tokens mapped back, so "ignore previous instructions" written with Cyrillic letters and
a neutralized ``<|im_start|>`` match the same rules as their ASCII forms. Encoded runs
(base64, hex, percent-encoding, UTF-7, and the text's rot13) are decoded
(:mod:`threezone.sanitize.encoded`) and run through the rules as well; a Latin word
disguised with lookalike letters is evidence of its own
(:mod:`threezone.sanitize.confusables`).

An ML classifier plugs in as another :class:`Detector`; :func:`combine` merges its
findings with the rules' (see docs/detector.md).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from threezone.sanitize.confusables import mixed_script_words, skeleton
from threezone.sanitize.encoded import Decoded, decoded_texts
from threezone.sanitize.html import HiddenText
from threezone.sanitize.rules import (
    CONTEXT_BEFORE,
    DEFAULT_RULES,
    MAX_MATCHES_PER_RULE,
    Prefilter,
    Rule,
)
from threezone.sanitize.text import NEUTRAL_COLON, clean_text

__all__ = [
    "CONTEXT_BEFORE",
    "DEFAULT_RULES",
    "FLAG_THRESHOLD",
    "MAX_MATCHES_PER_RULE",
    "MAX_QUOTE",
    "Detector",
    "DetectorInput",
    "Finding",
    "Rule",
    "RuleDetector",
    "Verdict",
    "combine",
    "detect",
    "detect_text",
    "detection_view",
    "quote",
]

FLAG_THRESHOLD = 0.5
MAX_QUOTE = 60
MAX_FINDINGS = 32
MAX_HIDDEN_SCAN = 200_000  # characters of hidden text examined; bounds the detector's time
HIDDEN_WEIGHT = 0.9
SMUGGLED_WEIGHT = 0.6
HIDDEN_PRESENCE_WEIGHT = 0.05
ENCODED_WEIGHT = 0.8  # an instruction someone encoded has no innocent reading
ENCODED_TEXT_WEIGHT = 0.15  # readable text in base64 or hex, no rule hit: a faint signal
ROT13_MIN_RULE_WEIGHT = 0.45  # rot13 of ordinary text must not trip the weak rules
LOOKALIKE_WEIGHT = 0.5
MAX_VIEW_CHARS = 1_000_000

# clean_text's neutralizing characters, mapped back so the token rules still match
_UNNEUTRAL = str.maketrans(
    {"\u2039": "<", "\u203a": ">", "\u00a6": "|", "\u27e6": "[", "\u27e7": "]", NEUTRAL_COLON: ":"}
    | {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'}  # typographic quotes
)


@dataclass(frozen=True)
class DetectorInput:
    """What a reader hands the detector: visible text, hidden snippets, smuggled text."""

    visible: str
    hidden: Sequence[HiddenText] = ()
    smuggled: str = ""


@dataclass(frozen=True)
class Finding:
    """One piece of evidence: a weight in [0, 1] and a reason a person can read."""

    weight: float
    reason: str


@dataclass(frozen=True)
class Verdict:
    """The combined score, whether it crosses the threshold, and the reasons, strongest first."""

    score: float
    flagged: bool
    reasons: tuple[str, ...]


class Detector(Protocol):
    """Anything that turns a sample into findings: the rules here, or a classifier later."""

    def findings(self, sample: DetectorInput) -> list[Finding]:
        """Return the evidence found in ``sample`` (empty when there is none)."""
        ...


class RuleDetector:
    """The weighted-regex detector over visible, hidden and smuggled text."""

    def __init__(self, rules: Sequence[Rule] = DEFAULT_RULES, *, prefilter: bool = True) -> None:
        self._rules = tuple(rules)
        self._prefilter = Prefilter(self._rules) if prefilter else None

    def findings(self, sample: DetectorInput) -> list[Finding]:
        visible_hits = self._matches(sample.visible)
        found = [Finding(r.weight, f"{r.reason}: {q}") for r, q in visible_hits]
        found += _lookalike_findings(sample.visible)
        found += self._encoded_findings(sample.visible, {r.name for r, _ in visible_hits})
        found += self._hidden_findings(sample.hidden)
        found += self._smuggled_findings(sample.smuggled)
        return found

    def _matches(self, text: str) -> list[tuple[Rule, str]]:
        """Each rule that matches the detection view, once, with a short quote of its match."""
        view = detection_view(text)
        possible = self._prefilter.candidates(view) if self._prefilter else None
        hits = []
        for position, rule in enumerate(self._rules):
            if possible is not None and position not in possible:
                continue
            match = rule.first_match(view)
            if match is not None:
                hits.append((rule, quote(match.group())))
        return hits

    def _encoded_findings(self, text: str, plain_rules: set[str]) -> list[Finding]:
        """Rule hits in what encoded runs decode to, once per (encoding, rule)."""
        found: list[Finding] = []
        seen: set[tuple[str, str]] = set()
        for decoded in decoded_texts(text):
            hits = [
                (r, q) for r, q in self._matches(decoded.text) if _counts(decoded, r, plain_rules)
            ]
            for rule, _ in hits:
                if (decoded.kind, rule.name) not in seen:
                    seen.add((decoded.kind, rule.name))
                    reason = f"{decoded.kind} text decodes to: {quote(decoded.text)}: {rule.reason}"
                    found.append(Finding(max(rule.weight, ENCODED_WEIGHT), reason))
            if not hits and decoded.kind != "rot13" and (decoded.kind, "") not in seen:
                seen.add((decoded.kind, ""))
                reason = f"{decoded.kind} text decodes to: {quote(decoded.text)}"
                found.append(Finding(ENCODED_TEXT_WEIGHT, reason))
        return found

    def _hidden_findings(self, hidden: Sequence[HiddenText]) -> list[Finding]:
        """Rule hits in hidden snippets, once per (technique, rule), within a scan budget."""
        found: list[Finding] = []
        seen: set[tuple[str, str]] = set()
        budget = MAX_HIDDEN_SCAN
        for snippet in hidden:
            if budget <= 0:
                break
            text, budget = snippet.text[:budget], budget - len(snippet.text)
            for rule, quoted in self._matches(text):
                if (snippet.how, rule.name) not in seen:
                    seen.add((snippet.how, rule.name))
                    reason = f"hidden content ({snippet.how}) contains an instruction"
                    reason = f"{reason}: {rule.reason}: {quoted}"
                    found.append(Finding(max(rule.weight, HIDDEN_WEIGHT), reason))
        return found + _hidden_presence(hidden)

    def _smuggled_findings(self, smuggled: str) -> list[Finding]:
        if not smuggled.strip():
            return []
        found = [
            Finding(
                max(rule.weight, HIDDEN_WEIGHT),
                f"smuggled invisible text contains an instruction: {rule.reason}: {quoted}",
            )
            for rule, quoted in self._matches(smuggled)
        ]
        reason = "invisible Unicode (tag characters or variation selectors) spells out text"
        reason = f"{reason}: {quote(smuggled)}"
        return [Finding(SMUGGLED_WEIGHT, reason), *found]


def _counts(decoded: Decoded, rule: Rule, plain_rules: set[str]) -> bool:
    """Whether a rule hit in decoded text is evidence (rot13 hits must be new and strong)."""
    if decoded.kind != "rot13":
        return True
    return rule.name not in plain_rules and rule.weight >= ROT13_MIN_RULE_WEIGHT


def _lookalike_findings(text: str) -> list[Finding]:
    words = mixed_script_words(text[:MAX_VIEW_CHARS])
    if not words:
        return []
    shown = ", ".join(quote(w) for w in words[:3])
    reason = f"Latin words spelled with lookalike letters from another script: {shown}"
    return [Finding(LOOKALIKE_WEIGHT, reason)]


def detection_view(text: str) -> str:
    """The text as the rules read it: for detection only, never shown to anyone.

    Full NFKC (fullwidth, styled and superscript letters fold), then canonical
    decomposition with the combining marks dropped ("ìgnörë" reads "ignore"), then
    lookalike letters folded to Latin, then neutralized chat tokens mapped back.
    Lengths change, so quotes come from the view, not from the original.
    """
    view = unicodedata.normalize("NFKC", text[:MAX_VIEW_CHARS])
    if not view.isascii():
        view = unicodedata.normalize("NFKD", view)
        view = "".join(c for c in view if not unicodedata.combining(c))
        view = skeleton(view)
    return view.translate(_UNNEUTRAL)


def detect_text(untrusted_text: str) -> Verdict:
    """Clean ``untrusted_text`` as a reader would and judge what remains (one-call helper)."""
    cleaned = clean_text(untrusted_text)
    return detect(DetectorInput(visible=cleaned.text, smuggled=cleaned.smuggled))


def _hidden_presence(hidden: Sequence[HiddenText]) -> list[Finding]:
    """A faint signal for hidden text as such: newsletters hide preheaders all the time."""
    techniques = sorted({h.how for h in hidden if h.how != "comment"})
    if not techniques:
        return []
    chars = sum(len(h.text) for h in hidden if h.how != "comment")
    shown = ", ".join(techniques[:5])
    return [Finding(HIDDEN_PRESENCE_WEIGHT, f"{chars} characters of hidden text ({shown})")]


def combine(findings: Iterable[Finding], threshold: float = FLAG_THRESHOLD) -> Verdict:
    """Merge findings as independent evidence into one verdict, strongest reasons first."""
    ordered = sorted(findings, key=lambda f: f.weight, reverse=True)
    remaining = 1.0
    for finding in ordered:
        remaining *= 1.0 - min(max(finding.weight, 0.0), 1.0)
    score = round(min(max(1.0 - remaining, 0.0), 1.0), 4)
    reasons = tuple(f.reason for f in ordered[:MAX_FINDINGS])
    return Verdict(score=score, flagged=score >= threshold, reasons=reasons)


# One shared instance: building the RE2 prefilter set costs about 12 ms, far more than
# checking a message, so readers must not build one per message.
DEFAULT_DETECTOR = RuleDetector()


def detect(sample: DetectorInput, detectors: Sequence[Detector] = (DEFAULT_DETECTOR,)) -> Verdict:
    """Run every detector on ``sample`` and combine what they found."""
    return combine(f for detector in detectors for f in detector.findings(sample))


def quote(untrusted_text: str) -> str:
    """A short, single-line, quoted excerpt safe to put in a reason."""
    text = " ".join(untrusted_text.split()).replace("\u201d", '"')
    if len(text) > MAX_QUOTE:
        text = text[: MAX_QUOTE - 1] + "\u2026"
    return f"\u201c{text}\u201d"
