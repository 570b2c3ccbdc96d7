"""Policy v0 text -> rules, or one :class:`PolicyError` holding every problem in the file.

One rule per line, in the spirit of Qubes qrexec policy files::

    # action        conditions                              decision  limits
    email.reply     to=@contacts trigger.sender=@contacts   allow     rate=20/h
    email.*         trigger.flagged=true                    deny
    *               *                                       deny

Tokens are separated by whitespace; a token starting with ``#`` starts a comment that
runs to the end of the line (so ``#`` inside a value such as ``subject=a#b`` is data).
Columns are 1-based and count characters, with a tab counting as one.

We keep going after a problem and report all of them, because a policy author fixing a
file one error per run is slow, and a half-checked policy must never load: any problem
anywhere makes the whole file fail. Each problem points at the part of the token at
fault (the value of a condition, the field after ``trigger.``), not just the line.

Pure: text in, rules out, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import get_args

from threezone.errors import PolicyError, PolicyProblem
from threezone.policy.model import Condition, ConditionKind, Decision, Rate, Rule
from threezone.protocol.messages import Channel

DECISIONS: tuple[Decision, ...] = ("allow", "deny", "ask")
TRIGGER_FIELDS = ("account", "channel", "flagged", "sender", "sender_authenticated")
TRIGGER_PREFIX = "trigger."

_ACTION_NAME = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_ACTION_GLOB = re.compile(r"[a-z0-9_*]+(?:\.[a-z0-9_*]+)*")
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_TOKEN = re.compile(r"\S+")
# Nine digits keep int() far from Python's digit limit and any rate anyone means.
_RATE = re.compile(r"([1-9][0-9]{0,8})/([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
_BOOL_FIELDS = frozenset({"flagged", "sender_authenticated"})
_CHANNELS: tuple[str, ...] = get_args(Channel)

_DECISION_WORDS = "a decision (allow, deny, ask)"
_CONDITION_WORDS = "a condition (subject=value or subject!=value)"
_VALUE_WORDS = "a literal, a glob with '*', or @list"


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    start: int  # 0-based offset in the line

    @property
    def col(self) -> int:
        return self.start + 1

    @property
    def end_col(self) -> int:
        """The column just past the token: where a missing next token should have been."""
        return self.start + len(self.text) + 1


@dataclass(slots=True)
class _Line:
    """Where we are, so every check can report a problem without threading file/line."""

    file: str
    number: int
    known_lists: frozenset[str] | None
    problems: list[PolicyProblem] = field(default_factory=list)

    def report(self, col: int, message: str) -> None:
        self.problems.append(PolicyProblem(self.file, self.number, col, message))


def parse_policy(
    text: str, file: str, known_lists: frozenset[str] | None = None
) -> tuple[Rule, ...]:
    """Parse a whole policy file; raise :class:`PolicyError` with every problem found.

    ``file`` is only used to name rules and problems. With ``known_lists`` given, a
    reference to any other ``@list`` is a problem here rather than a condition that
    silently never holds at run time.
    """
    rules: list[Rule] = []
    problems: list[PolicyProblem] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        tokens = _tokenize(raw)
        if not tokens:
            continue
        line = _Line(file, number, known_lists)
        rule = _parse_rule(tokens, raw, line)
        problems.extend(line.problems)
        if rule is not None:
            rules.append(rule)
    if problems:
        raise PolicyError(problems)
    return tuple(rules)


def _tokenize(raw: str) -> list[_Token]:
    """The line's tokens up to a comment; empty for blank and comment-only lines."""
    tokens: list[_Token] = []
    for match in _TOKEN.finditer(raw):
        if match.group().startswith("#"):
            break
        tokens.append(_Token(match.group(), match.start()))
    return tokens


def _parse_rule(tokens: list[_Token], raw: str, line: _Line) -> Rule | None:
    """One rule from a non-empty line, or None once any problem was reported for it."""
    _check_action(tokens[0], line)
    parsed = _parse_conditions(tokens, line)
    if parsed is None:
        return None
    conditions, at = parsed
    decision = _as_decision(tokens[at].text)
    rate = _parse_limits(tokens[at + 1 :], decision, line)
    if line.problems or decision is None:
        return None
    text = raw[tokens[0].start : tokens[-1].end_col - 1]
    return Rule(tokens[0].text, conditions, decision, rate, line.file, line.number, text)


def _check_action(token: _Token, line: _Line) -> None:
    if _ACTION_NAME.fullmatch(token.text):
        return
    if "*" in token.text and _ACTION_GLOB.fullmatch(token.text):
        return
    line.report(
        token.col,
        f"invalid action pattern {_show(token.text)}; expected an action name like "
        "email.send, or a glob like email.* or *",
    )


def _parse_conditions(
    tokens: list[_Token], line: _Line
) -> tuple[tuple[Condition, ...], int] | None:
    """The conditions and the index of the decision token, or None if there is none."""
    if len(tokens) == 1:
        line.report(
            tokens[0].end_col, "expected conditions ('*' or subject=value) after the action"
        )
        return None
    if tokens[1].text == "*":
        return _after_star(tokens, line)
    conditions: list[Condition] = []
    for at in range(1, len(tokens)):
        token = tokens[at]
        if _as_decision(token.text) is not None:
            if at == 1:  # nothing between the action and the decision
                line.report(
                    token.col,
                    f"expected conditions ('*' or subject=value) before {_show(token.text)}",
                )
            return tuple(conditions), at
        if "=" not in token.text:
            line.report(
                token.col, f"expected {_CONDITION_WORDS} or {_DECISION_WORDS}, {_got(token)}"
            )
            return None
        condition = _parse_condition(token, line)
        if condition is not None:
            conditions.append(condition)
    line.report(tokens[-1].end_col, f"expected {_DECISION_WORDS} after the conditions")
    return None


def _after_star(tokens: list[_Token], line: _Line) -> tuple[tuple[Condition, ...], int] | None:
    """``*`` means "no conditions", so the decision must follow it directly."""
    if len(tokens) == 2:
        line.report(tokens[1].end_col, f"expected {_DECISION_WORDS} after the conditions")
        return None
    token = tokens[2]
    if _as_decision(token.text) is not None:
        return (), 2
    if "=" in token.text:
        line.report(
            token.col,
            f"expected {_DECISION_WORDS} after '*'; '*' means no conditions and cannot be "
            "combined with other conditions",
        )
    else:
        line.report(token.col, f"expected {_DECISION_WORDS} after the conditions, {_got(token)}")
    return None


def _parse_condition(token: _Token, line: _Line) -> Condition | None:
    """``subject=value`` or ``subject!=value``; the first ``=`` splits the token."""
    eq = token.text.index("=")
    negate = eq > 0 and token.text[eq - 1] == "!"
    subject = token.text[: eq - 1] if negate else token.text[:eq]
    value = token.text[eq + 1 :]
    subject_ok = _check_subject(subject, token.col, line)
    kind = _check_value(subject if subject_ok else "", value, token.col + eq + 1, line)
    if not subject_ok or kind is None:
        return None
    stored = value[1:] if kind == "list" else value
    return Condition(subject, negate, stored, kind, token.col)


def _check_subject(subject: str, col: int, line: _Line) -> bool:
    if subject.startswith(TRIGGER_PREFIX):
        name = subject[len(TRIGGER_PREFIX) :]
        if name in TRIGGER_FIELDS:
            return True
        line.report(
            col + len(TRIGGER_PREFIX),
            f"unknown trigger field {_show(name)}; expected one of {', '.join(TRIGGER_FIELDS)}",
        )
        return False
    if _NAME.fullmatch(subject):
        return True
    if subject:
        line.report(
            col,
            f"invalid subject {_show(subject)}; expected an argument name like 'to' "
            "or trigger.<field>",
        )
    else:
        line.report(col, "expected a subject (an argument name or trigger.<field>) before '='")
    return False


def _check_value(subject: str, value: str, col: int, line: _Line) -> ConditionKind | None:
    """Classify the value and check it fits the subject; None after reporting a problem."""
    if not value:
        line.report(col, f"expected a value after '=' ({_VALUE_WORDS})")
        return None
    kind = _value_kind(value)
    if kind == "list" and not _check_list(value[1:], col, line):
        return None
    field_name = subject[len(TRIGGER_PREFIX) :] if subject.startswith(TRIGGER_PREFIX) else ""
    if field_name in _BOOL_FIELDS and (kind != "literal" or value.lower() not in ("true", "false")):
        line.report(col, f"expected true or false for {subject}, got {_show(value)}")
        return None
    if field_name == "channel" and kind == "literal" and value.lower() not in _CHANNELS:
        line.report(
            col, f"unknown channel {_show(value)}; expected one of {', '.join(sorted(_CHANNELS))}"
        )
        return None
    return kind


def _value_kind(value: str) -> ConditionKind:
    if value.startswith("@"):
        return "list"
    return "glob" if "*" in value else "literal"


def _check_list(name: str, col: int, line: _Line) -> bool:
    if not _NAME.fullmatch(name):
        line.report(
            col, f"invalid list name {_show('@' + name)}; expected @ and a name like @contacts"
        )
        return False
    known = line.known_lists
    if known is None or name in known:
        return True
    choices = ", ".join(f"@{k}" for k in sorted(known)) if known else "none are configured"
    line.report(col, f"unknown list {_show('@' + name)}; known lists: {choices}")
    return False


def _parse_limits(tokens: list[_Token], decision: Decision | None, line: _Line) -> Rate | None:
    """Everything after the decision: ``key=value`` limits, each at most once."""
    rate: Rate | None = None
    for token in tokens:
        key, sep, value = token.text.partition("=")
        if not sep:
            line.report(
                token.col, f"expected a limit like rate=20/h after the decision, {_got(token)}"
            )
        elif key != "rate":
            line.report(token.col, f"unknown limit {_show(key)}; expected rate=N/s|m|h|d")
        elif decision == "deny":
            line.report(token.col, "limits are only allowed on allow and ask rules")
        elif rate is not None:
            line.report(token.col, "duplicate limit 'rate'; give it once")
        else:
            rate = _parse_rate(value, token.col + len("rate="), line)
    return rate


def _parse_rate(value: str, col: int, line: _Line) -> Rate | None:
    match = _RATE.fullmatch(value)
    if match is None:
        line.report(
            col,
            f"expected a rate like 20/h (N/s, N/m, N/h or N/d with N from 1 to 999999999), "
            f"got {_show(value)}",
        )
        return None
    return Rate(int(match[1]), _UNIT_SECONDS[match[2]], value)


def _as_decision(text: str) -> Decision | None:
    for decision in DECISIONS:
        if text == decision:
            return decision
    return None


def _got(token: _Token) -> str:
    """``got 'x'``, with a hint when only the case is wrong (keywords are lowercase)."""
    hint = " (decisions are lowercase)" if token.text.lower() in DECISIONS else ""
    return f"got {_show(token.text)}{hint}"


def _show(text: str) -> str:
    """Quote a piece of the file for a message, cut short so one line can't flood it."""
    return repr(text if len(text) <= 40 else text[:37] + "...")
