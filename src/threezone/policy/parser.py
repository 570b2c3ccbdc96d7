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
from typing import Literal, cast, get_args

import re2

from threezone.errors import PolicyError, PolicyProblem
from threezone.policy.model import (
    Condition,
    Decision,
    Operator,
    Origin,
    Rate,
    Rule,
    ValueKind,
)
from threezone.protocol.messages import Channel

DECISIONS: tuple[Decision, ...] = ("allow", "deny", "ask")
TRIGGER_FIELDS = ("account", "automated", "channel", "flagged", "sender", "sender_authenticated")
TRIGGER_PREFIX = "trigger."

_ACTION_NAME = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_ACTION_GLOB = re.compile(r"[a-z0-9_*]+(?:\.[a-z0-9_*]+)*")
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_TOKEN = re.compile(r"\S+")
# Nine digits keep int() far from Python's digit limit and any rate anyone means.
_RATE = re.compile(r"([1-9][0-9]{0,8})/([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
_BOOL_FIELDS = frozenset({"automated", "flagged", "sender_authenticated"})
_CHANNELS: tuple[str, ...] = get_args(Channel)
ORIGINS: tuple[str, ...] = get_args(Origin)

# What a subject yields decides which operators make sense for it.
SubjectShape = Literal["arg", "text", "bool", "channel", "number", "origin"]
FUNCTIONS: dict[str, SubjectShape] = {"len": "number", "origin": "origin", "domain": "text"}
_EQUALITY: tuple[Operator, ...] = ("=", "!=")
_TEXT_OPS: tuple[Operator, ...] = ("=", "!=", "~", "!~")
_NUMERIC_OPS: tuple[Operator, ...] = ("<", "<=", ">", ">=")
_OPS_FOR: dict[SubjectShape, tuple[Operator, ...]] = {
    "arg": _TEXT_OPS + _NUMERIC_OPS,
    "text": _TEXT_OPS,
    "bool": _EQUALITY,
    "channel": _EQUALITY,
    "origin": _EQUALITY,
    "number": _EQUALITY + _NUMERIC_OPS,
}
# The subject is everything before the first operator character, so values may hold
# any of them (a regex like a=b~c is fine); two-character operators are tried first.
_CONDITION = re.compile(r"(?P<subject>[^=!<>~]*)(?P<op>!=|!~|<=|>=|=|~|<|>)(?P<value>.*)")
_HAS_OP = re.compile(r"[=<>~]")
_CALL = re.compile(r"(?P<function>[a-z_]+)\((?P<argument>[^()]*)\)")
_NUMBER = re.compile(r"-?[0-9]{1,15}")
MAX_REGEX = 1_000
_REGEX_MEMORY = 8 * 1024 * 1024

_DECISION_WORDS = "a decision (allow, deny, ask)"
_CONDITION_WORDS = "a condition (subject=value, subject~regex, subject<=N, ...)"
_VALUE_WORDS = "a literal, a glob with '*', a set {a,b}, or @list"


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
        if _HAS_OP.search(token.text) is None:
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
    if _HAS_OP.search(token.text) is not None:
        line.report(
            token.col,
            f"expected {_DECISION_WORDS} after '*'; '*' means no conditions and cannot be "
            "combined with other conditions",
        )
    else:
        line.report(token.col, f"expected {_DECISION_WORDS} after the conditions, {_got(token)}")
    return None


@dataclass(frozen=True, slots=True)
class _Parts:
    """A condition token split at its operator, with where each part starts."""

    subject: str
    op: Operator
    value: str
    col: int  # the token's column
    value_col: int

    def build(
        self, kind: ValueKind, items: tuple[str, ...] = (), matcher: object = None
    ) -> Condition:
        stored = self.value[1:] if kind == "list" else self.value
        return Condition(self.subject, self.op, stored, kind, self.col, items, matcher)


def _parse_condition(token: _Token, line: _Line) -> Condition | None:
    """``subject OP value``: the first operator character ends the subject."""
    match = _CONDITION.fullmatch(token.text)
    if match is None:  # unreachable: callers only pass tokens holding an operator
        line.report(token.col, f"expected {_CONDITION_WORDS}, {_got(token)}")
        return None
    op = cast(Operator, match["op"])
    parts = _Parts(
        match["subject"], op, match["value"], token.col, token.col + match.start("value")
    )
    shape = _check_subject(parts.subject, token.col, line)
    if shape is None:
        return None
    if op not in _OPS_FOR[shape]:
        allowed = " ".join(_OPS_FOR[shape])
        line.report(
            token.col + match.start("op"),
            f"operator {op!r} does not apply to {parts.subject}; expected one of: {allowed}",
        )
        return None
    if not parts.value:
        line.report(parts.value_col, f"expected a value after {op!r} ({_VALUE_WORDS})")
        return None
    return _condition_for(shape, parts, line)


def _check_subject(subject: str, col: int, line: _Line) -> SubjectShape | None:
    """What sort of value the subject yields, or None after reporting a problem."""
    if not subject:
        line.report(
            col, "expected a subject (an argument name or trigger.<field>) before the operator"
        )
        return None
    if subject.startswith(TRIGGER_PREFIX):
        return _check_trigger_field(subject[len(TRIGGER_PREFIX) :], col, line)
    call = _CALL.fullmatch(subject)
    if call is not None:
        return _check_call(call, col, line)
    if _NAME.fullmatch(subject):
        return "arg"
    line.report(
        col,
        f"invalid subject {_show(subject)}; expected an argument name like 'to', "
        "trigger.<field>, or len(arg), origin(arg), domain(arg)",
    )
    return None


def _check_trigger_field(name: str, col: int, line: _Line) -> SubjectShape | None:
    if name in _BOOL_FIELDS:
        return "bool"
    if name in TRIGGER_FIELDS:
        return "channel" if name == "channel" else "text"
    line.report(
        col + len(TRIGGER_PREFIX),
        f"unknown trigger field {_show(name)}; expected one of {', '.join(TRIGGER_FIELDS)}",
    )
    return None


def _check_call(call: re.Match[str], col: int, line: _Line) -> SubjectShape | None:
    function, argument = call["function"], call["argument"]
    if function not in FUNCTIONS:
        line.report(
            col, f"unknown function {_show(function)}; expected one of {', '.join(FUNCTIONS)}"
        )
        return None
    if not _NAME.fullmatch(argument):
        line.report(
            col + len(function) + 1,
            f"expected an argument name inside {function}(), got {_show(argument)}",
        )
        return None
    return FUNCTIONS[function]


def _condition_for(shape: SubjectShape, parts: _Parts, line: _Line) -> Condition | None:
    """Read the value the way the subject and operator need it."""
    if parts.op in ("~", "!~"):
        matcher = _compile_regex(parts.value, parts.value_col, line)
        return None if matcher is None else parts.build("regex", matcher=matcher)
    if parts.op in _NUMERIC_OPS or shape == "number":
        if _NUMBER.fullmatch(parts.value) is None:
            line.report(
                parts.value_col,
                f"expected a whole number for {parts.subject}{parts.op} (like 100 or -5), "
                f"got {_show(parts.value)}",
            )
            return None
        return parts.build("number")
    if shape == "bool" and parts.value.lower() not in ("true", "false"):
        line.report(
            parts.value_col, f"expected true or false for {parts.subject}, got {_show(parts.value)}"
        )
        return None
    kind, items = _value_kind(parts.value, parts.value_col, line)
    if kind is None or not _check_enumerated(shape, parts, kind, items, line):
        return None
    return parts.build(kind, items)


def _compile_regex(value: str, col: int, line: _Line) -> object | None:
    """An RE2 pattern (linear time, no backtracking), matched whole and case-insensitively."""
    if len(value) > MAX_REGEX:
        line.report(col, f"regular expression is over {MAX_REGEX} characters")
        return None
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    options.max_mem = _REGEX_MEMORY
    try:
        compiled: object = re2.compile(value, options)
    except re2.error as exc:
        line.report(col, f"invalid regular expression {_show(value)}: {exc}")
        return None
    return compiled


def _check_enumerated(
    shape: SubjectShape, parts: _Parts, kind: ValueKind, items: tuple[str, ...], line: _Line
) -> bool:
    """Fields with a closed set of values (channels, origins) reject anything else."""
    choices = {"channel": _CHANNELS, "origin": ORIGINS}.get(shape)
    if choices is None or kind == "list":
        return True
    for value in items or (parts.value,):
        if "*" not in value and value.lower() not in choices:
            line.report(
                parts.value_col,
                f"unknown value {_show(value)} for {parts.subject}; expected one of "
                f"{', '.join(sorted(choices))}",
            )
            return False
    return True


def _value_kind(value: str, col: int, line: _Line) -> tuple[ValueKind | None, tuple[str, ...]]:
    if value.startswith("@"):
        return ("list", ()) if _check_list(value[1:], col, line) else (None, ())
    if value.startswith("{"):
        items = _parse_set(value, col, line)
        return ("set", items) if items else (None, ())
    return ("glob" if "*" in value else "literal"), ()


def _parse_set(value: str, col: int, line: _Line) -> tuple[str, ...]:
    """``{a,b,c}``: literals or globs, at least one, none empty."""
    if not value.endswith("}") or len(value) < 3:
        line.report(col, f"expected a set like {{a,b,c}}, got {_show(value)}")
        return ()
    items = tuple(value[1:-1].split(","))
    for offset, item in _item_offsets(items):
        if not item or item.startswith("@") or "{" in item or "}" in item:
            line.report(
                col + 1 + offset,
                f"expected a literal or glob in the set, got {_show(item)} "
                "(sets cannot be empty, nested or hold @lists)",
            )
            return ()
    return items


def _item_offsets(items: tuple[str, ...]) -> list[tuple[int, str]]:
    offsets, at = [], 0
    for item in items:
        offsets.append((at, item))
        at += len(item) + 1
    return offsets


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
