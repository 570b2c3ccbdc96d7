"""A scored, explainable prompt-injection tripwire.

Detectors add signal; they are not the guarantee (isolation and the action policy
are). So this one aims to be legible rather than clever: weighted regular
expressions, each with a reason a person can read, combined as independent evidence
(``score = 1 - prod(1 - w)``), flagged at 0.5. A rule that fires in text the person
could not see (hidden HTML, smuggled Unicode) weighs far more than the same words in
plain sight, because hiding an instruction from the human has no innocent reading.

Reasons quote at most :data:`MAX_QUOTE` characters of the matched text: enough to
find it, too little to carry a payload into whatever displays the reasons.

An ML classifier plugs in as another :class:`Detector`; :func:`combine` merges its
findings with the rules'.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from threezone.sanitize.html import HiddenText

FLAG_THRESHOLD = 0.5
MAX_QUOTE = 60
MAX_FINDINGS = 32
MAX_MATCHES_PER_RULE = 50
CONTEXT_BEFORE = 25
MAX_HIDDEN_SCAN = 200_000  # characters of hidden text examined; bounds the detector's time
HIDDEN_WEIGHT = 0.9
SMUGGLED_WEIGHT = 0.6
HIDDEN_PRESENCE_WEIGHT = 0.05


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


@dataclass(frozen=True)
class Rule:
    """A pattern, how much a match counts, and what to tell a person when it matches.

    ``unless`` is checked against the match plus :data:`CONTEXT_BEFORE` characters
    before it; when it matches, that occurrence does not count. It is how "never share
    your password" (every bank's footer) stays apart from "share your password".
    """

    name: str
    pattern: re.Pattern[str]
    weight: float
    reason: str
    unless: re.Pattern[str] | None = None

    def first_match(self, text: str) -> re.Match[str] | None:
        """The first occurrence that ``unless`` does not excuse (looking at a bounded number)."""
        for count, match in enumerate(self.pattern.finditer(text)):
            if count >= MAX_MATCHES_PER_RULE:
                return None
            window = text[max(0, match.start() - CONTEXT_BEFORE) : match.end()]
            if self.unless is None or self.unless.search(window) is None:
                return match
        return None


def _rule(name: str, weight: float, reason: str, pattern: str, unless: str = "") -> Rule:
    # Line-anchored patterns use [ \t]*, never \s*: with MULTILINE, \s* would rescan a
    # run of newlines from every line start, which is quadratic on hostile input.
    flags = re.IGNORECASE | re.MULTILINE
    excuse = re.compile(unless, flags) if unless else None
    return Rule(name, re.compile(pattern, flags), weight, reason, excuse)


_GAP = r"[^.\n]{0,60}?"
_SECRETS = (
    r"(?:api[\s_-]?keys?|passwords?|passwd|pass\s?phrases?|credentials?|secrets?"
    r"|(?:access|auth|bearer|session|api|refresh)[\s_-]?tokens?|private[\s_-]keys?"
    r"|ssh[\s_-]keys?|recovery\s+codes?|seed\s+phrases?|2fa\s+codes?|one[\s-]time\s+codes?)"
)
_MAIL = r"(?:e-?mails?|messages?|inbox|mailbox|correspondence|conversations?|threads?|chats?)\b"
_OWNER = r"(?:(?:the|your|my|their|his|her|our)\s+)?"
_SEND = r"\b(?:forward|send|e-?mail|copy|bcc|export|dump|upload)\b[^.\n]{0,30}?\b"
_NEGATED = r"\b(?:not|never|no\s+one|nobody)\b|n't\b"

DEFAULT_RULES: tuple[Rule, ...] = (
    _rule(
        "ignore_instructions",
        0.8,
        "tells the reader to ignore earlier instructions",
        r"\b(?:ignore|disregard|forget|override|bypass|skip)\b[^.\n]{0,40}?"
        r"\b(?:previous|prior|above|earlier|preceding|former|original|existing|your|system|all)"
        r"\s+(?:\w+\s+)?(?:instructions?|prompts?|directives?|directions|rules|guidelines"
        r"|guardrails|programming|context)\b",
        # "please disregard my previous instructions about the delivery" is a person
        unless=r"\b(?:my|our)\s+(?:\w+\s+)?(?:previous|prior|earlier|former|original)\b",
    ),
    _rule(
        "role_override",
        0.6,
        "tries to give the reader a new identity",
        r"\byou\s+are\s+(?:now|no\s+longer)\s+(?:an?\s+|in\s+)?(?:unrestricted|unfiltered"
        r"|jailbroken|dan\b|developer\s+mode|evil|rogue|free\s+(?:from|of)|bound|restricted"
        r"|an?\s+(?:ai|assistant|language\s+model))",
    ),
    _rule(
        "system_prompt",
        0.45,
        "mentions the system prompt",
        r"\b(?:system|developer)\s+(?:prompt|message|instructions)\b",
    ),
    _rule(
        "reveal_prompt",
        0.7,
        "asks the reader to reveal its instructions",
        r"\b(?:reveal|print|show|repeat|output|leak|dump)\s+(?:me\s+)?(?:your|the)\s+"
        r"(?:full\s+|original\s+|initial\s+|hidden\s+)?(?:instructions|system\s+prompt|prompt)\b",
    ),
    _rule(
        "exfiltrate_secrets",
        0.75,
        "asks to send secrets or credentials",
        rf"\b(?:send|forward|e-?mail|mail|exfiltrate|upload|post|share|leak|paste|dump"
        rf"|transmit|reveal|give)\b{_GAP}\b{_SECRETS}\b",
        unless=_NEGATED,
    ),
    _rule(
        "forward_recent_mail",
        0.6,
        "asks to send the mailbox's recent messages",
        rf"{_SEND}(?:last|latest|previous|recent|first|past)\s+\d+\s+(?:\w+\s+)?{_MAIL}",
        unless=_NEGATED,
    ),
    _rule(
        "forward_all_mail",
        0.45,
        "asks to send all of the mailbox's messages",
        rf"{_SEND}(?:all(?:\s+of)?|every|entire)\s+{_OWNER}(?:[\w']+\s+)?{_MAIL}",
        unless=_NEGATED,
    ),
    _rule(
        "conceal_from_user",
        0.65,
        "asks to keep the action from the owner",
        r"\b(?:do\s+not|don'?t|never|without)\s+(?:tell|inform|notify|alert|mention|ask"
        r"|let)\w*\s+(?:\w+\s+){0,2}(?:the\s+|your\s+)?(?:user|owner|human|operator"
        r"|principal)\b",
    ),
    _rule(
        "skip_approval",
        0.35,
        "asks to act without approval",
        r"\bwithout\s+(?:asking\s+for\s+|waiting\s+for\s+|requesting\s+|any\s+)?"
        r"(?:the\s+)?(?:user'?s?\s+|owner'?s?\s+)?(?:approval|confirmation|permission|consent)\b",
    ),
    _rule(
        "chat_template_tokens",
        0.75,
        "contains chat-template role tokens",
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id"
        r"|end_header_id)\|>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>|</s>",
    ),
    _rule(
        "role_header",
        0.55,
        "contains a fake role header",
        r"^[ \t]*#{1,6}[ \t]*(?:system|instructions?|assistant)[ \t]*:",
    ),
    _rule(
        "role_label",
        0.3,
        "has a line labelled like a chat role",
        r"^[ \t]*(?:system|assistant)[ \t]*(?:prompt[ \t]*)?:[ \t]*\S",
    ),
    _rule(
        "addressed_to_ai",
        0.45,
        "is addressed to an AI agent rather than a person",
        r"\b(?:note|message|instructions?|attention|hey|hi|hello|dear|to|for|notice|memo)\b"
        r"[^.\n]{0,25}?\b(?:ai|llm|gpt|automated|autonomous|virtual|email|mail)[\s-]+"
        r"(?:assistants?|agents?|models?|bots?)\b"
        r"|\bif\s+you\s+are\s+an?\s+(?:ai|llm|language\s+model|assistant|agent)\b"
        r"|\b(?:as\s+an?\s+)?(?:ai|llm)\s+(?:assistant|agent)s?\s*,\s*(?:you\s+must|please|now)\b",
    ),
    _rule(
        "new_instructions",
        0.35,
        "announces new instructions",
        r"\b(?:new|updated|real|actual|true|additional|hidden|secret|urgent)\s+"
        r"(?:instructions?|directives?|orders|task)\s*(?::|for\s+(?:you|the\s+(?:ai|assistant|agent)))",
    ),
    _rule(
        "run_command",
        0.45,
        "asks to run a command or code",
        r"\b(?:run|execute|eval)\s+(?:the\s+following|this)\s+(?:command|code|script|shell)\b"
        r"|\bcurl\s+-|\bwget\s+https?://|\brm\s+-rf\b",
    ),
)


class RuleDetector:
    """The weighted-regex detector over visible, hidden and smuggled text."""

    def __init__(self, rules: Sequence[Rule] = DEFAULT_RULES) -> None:
        self._rules = tuple(rules)

    def findings(self, sample: DetectorInput) -> list[Finding]:
        found = [Finding(r.weight, f"{r.reason}: {q}") for r, q in self._matches(sample.visible)]
        found += self._hidden_findings(sample.hidden)
        found += self._smuggled_findings(sample.smuggled)
        return found

    def _matches(self, text: str) -> list[tuple[Rule, str]]:
        """Each rule that matches, once, with a short quote of its first match."""
        hits = []
        for rule in self._rules:
            match = rule.first_match(text)
            if match is not None:
                hits.append((rule, quote(match.group())))
        return hits

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


def detect(sample: DetectorInput, detectors: Sequence[Detector] = (RuleDetector(),)) -> Verdict:
    """Run every detector on ``sample`` and combine what they found."""
    return combine(f for detector in detectors for f in detector.findings(sample))


def quote(untrusted_text: str) -> str:
    """A short, single-line, quoted excerpt safe to put in a reason."""
    text = " ".join(untrusted_text.split()).replace("\u201d", '"')
    if len(text) > MAX_QUOTE:
        text = text[: MAX_QUOTE - 1] + "\u2026"
    return f"\u201c{text}\u201d"
