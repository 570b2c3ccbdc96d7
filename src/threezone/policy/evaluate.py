"""Decide one action request against a policy: first matching rule wins, else deny.

Pure: no I/O and no clock (rate limits are counted by the caller, which gets the
matching rule's :class:`Rate` back in the decision).

Matching rules, chosen to fail closed:

- An action pattern is an exact name or a glob where only ``*`` is special and matches
  any run of characters, dots included (``email.*`` matches ``email.send``).
- Condition values are compared case-insensitively, all of them: e-mail addresses and
  chat handles are case-insensitive in practice, and a case difference must not slip
  past a ``deny``. Lists from config must hold lowercase strings.
- Booleans compare as ``true``/``false`` and integers as their decimal text.
- A condition whose data is missing is false, for ``=`` and ``!=`` alike: an absent
  argument, an unknown ``@list``, and ``trigger.sender`` when the sender is not
  authenticated. So conditions can only make an ``allow`` *narrower*. The flip side:
  conditions in a ``deny`` rule over missing data do not fire, which is why a policy
  should grant with positive conditions and end with ``* * deny`` rather than rely on
  ``!=`` in deny rules.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from threezone.errors import PolicyError
from threezone.policy.model import (
    DEFAULT_DENY_REF,
    POLICY_ERROR_REF,
    Condition,
    Origin,
    Policy,
    PolicyDecision,
    Rule,
)
from threezone.protocol.messages import Trigger

ArgValue = str | int | bool

# Decisions end up in bounded protocol fields and audit records; a reason is for
# people, so we keep it to a readable size rather than let a long value swell it.
MAX_REASON = 1_000
_MAX_NEAR_MISSES = 5
_MEMO_LIMIT = 1_024
_TRIGGER_PREFIX = "trigger."
_CALL = re.compile(r"(len|origin|domain)\(([a-z][a-z0-9_]*)\)")
_INTEGER = re.compile(r"-?[0-9]{1,15}")
_ADDRESS = re.compile(r"[^\s<>@,;\"]+@([a-z0-9.-]+)")
_HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}\.)+[a-z0-9-]{1,63}\.?")


@dataclass(slots=True)
class _Facts:
    """Everything a condition can look at for one request, each subject worked out once.

    ``seen`` caches subject -> lowercased text (or None when absent): a 100-rule policy
    asks about the same few subjects over and over.
    """

    args: Mapping[str, ArgValue]
    trigger: Trigger
    lists: Mapping[str, frozenset[str]]
    origins: Mapping[str, Origin] | None
    seen: dict[str, str | None] = field(default_factory=dict)

    def subject(self, subject: str) -> str | None:
        seen = self.seen
        if subject in seen:
            return seen[subject]
        value = _subject_value(subject, self)
        lowered = None if value is None else value.lower()
        seen[subject] = lowered
        return lowered


def evaluate(
    policy: Policy,
    action: str,
    args: Mapping[str, ArgValue],
    trigger: Trigger,
    lists: Mapping[str, frozenset[str]],
    *,
    origins: Mapping[str, Origin] | None = None,
) -> PolicyDecision:
    """The first rule whose action pattern and every condition match decides.

    ``origins`` maps argument names to where their values came from (see
    :mod:`threezone.policy.provenance`); without it, ``origin()`` conditions never hold.
    """
    if policy.error is not None:
        return _broken_policy(policy.error)
    facts = _Facts(args, trigger, lists, origins)
    near_misses: list[Rule] = []
    for rule in _candidates(policy, action.lower()):
        for condition in rule.conditions:
            if not _holds(condition, facts):
                near_misses.append(rule)
                break
        else:
            return _decided_by(rule, action)
    return _default_deny(action, [rule.ref for rule in near_misses[: _MAX_NEAR_MISSES + 1]])


def _candidates(policy: Policy, action: str) -> tuple[Rule, ...]:
    """The rules whose action pattern matches, in order; memoised per policy and action.

    The memo is bounded: action names come from the planner, and a hostile one could
    otherwise grow it without limit.
    """
    memo = policy.memo
    found = memo.get(action)
    if found is None:
        found = tuple(rule for rule in policy.rules if glob_match(rule.action, action))
        if len(memo) < _MEMO_LIMIT:
            memo[action] = found
    return found


def could_allow(policy: Policy, action: str) -> bool:
    """Whether some request for ``action`` might be allowed or asked about.

    Used to decide which capabilities to offer the planner, so it over-approximates:
    conditions are assumed to hold, except that an unconditional ``deny`` earlier in
    the file shadows everything after it (first match wins).
    """
    if policy.error is not None:
        return False
    wanted = action.lower()
    for rule in policy.rules:
        if not glob_match(rule.action, wanted):
            continue
        if rule.decision != "deny":
            return True
        if not rule.conditions:
            return False
    return False


def glob_match(pattern: str, text: str) -> bool:
    """``fnmatch`` with only ``*`` special; linear-ish, with no regex backtracking.

    Values come from the planner and can be long, so we avoid a regex whose
    backtracking on ``*a*a*a`` patterns could take polynomial time per star.
    Greedy leftmost matching of the pieces between stars is exact for such globs.
    """
    head, *middle = pattern.split("*")
    if not middle:
        return text == pattern
    tail = middle.pop()
    if len(text) < len(head) + len(tail) or not text.startswith(head) or not text.endswith(tail):
        return False
    pos, end = len(head), len(text) - len(tail)
    for piece in middle:
        found = text.find(piece, pos, end)
        if found < 0:
            return False
        pos = found + len(piece)
    return True


def _holds(condition: Condition, facts: _Facts) -> bool:
    """True only if the data is there and the test says so (see the module docstring)."""
    actual = facts.subject(condition.subject)
    if actual is None:
        return False
    kind = condition.kind
    if kind == "literal":
        matched = actual == condition.folded
    elif kind == "list":
        members = facts.lists.get(condition.value)
        if members is None:
            return False
        matched = actual in members
    elif kind == "glob":
        matched = glob_match(condition.folded, actual)
    elif kind == "set":
        matched = any(_text_matches(item, actual) for item in condition.folded_items)
    elif kind == "regex":
        matched = condition.matcher.fullmatch(actual) is not None
    else:
        return _compare_number(condition, actual)
    return matched != condition.negate


def _text_matches(expected: str, actual: str) -> bool:
    """Both sides already lowercased."""
    return glob_match(expected, actual) if "*" in expected else actual == expected


def _compare_number(condition: Condition, actual: str) -> bool:
    """Integer comparison; a value that is not a whole number fails every test."""
    if _INTEGER.fullmatch(actual) is None:
        return False
    left, right = int(actual), int(condition.value)
    return _NUMBER_TESTS[condition.op](left, right)


_NUMBER_TESTS: Mapping[str, Callable[[int, int], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _subject_value(subject: str, facts: _Facts) -> str | None:
    if subject.startswith(_TRIGGER_PREFIX):
        return _trigger_value(subject[len(_TRIGGER_PREFIX) :], facts.trigger)
    function, name = _split_call(subject)
    if not function:
        return _render(facts.args[name]) if name in facts.args else None
    if function == "origin":
        return facts.origins.get(name) if facts.origins is not None else None
    text = _render(facts.args[name]) if name in facts.args else None
    if text is None:
        return None
    return str(len(text)) if function == "len" else domain_of(text)


@functools.lru_cache(maxsize=1024)
def _split_call(subject: str) -> tuple[str, str]:
    """``len(body)`` -> ``("len", "body")``; a plain argument name -> ``("", name)``."""
    call = _CALL.fullmatch(subject)
    return ("", subject) if call is None else (call[1], call[2])


def domain_of(value: str) -> str | None:
    """The domain of an address (``a@b.example`` -> ``b.example``) or the host of a URL.

    Display names and angle brackets are tolerated (``Bob <bob@b.example>``); a value
    holding several addresses has no single domain and yields None (fails closed).
    """
    text = value.strip().lower()
    if "://" in text:
        try:
            host = urlsplit(text).hostname
        except ValueError:  # e.g. an unclosed IPv6 bracket: no host we can vouch for
            return None
        return host.rstrip(".") if host else None
    addresses: list[str] = _ADDRESS.findall(text)
    if len(addresses) == 1:
        return addresses[0].rstrip(".")
    if not addresses and _HOSTNAME.fullmatch(text):
        return text.rstrip(".")
    return None


def _trigger_value(name: str, trigger: Trigger) -> str | None:
    getter = _TRIGGER_GETTERS.get(name)
    return None if getter is None else _render(getter(trigger))


def _authenticated_sender(trigger: Trigger) -> str | None:
    """The sender only when vouched for.

    The executor already sets ``sender`` to None when unauthenticated; checking again
    means an address nobody verified can never satisfy a sender condition.
    """
    return trigger.sender if trigger.sender_authenticated else None


# An explicit map rather than getattr, so a rule can reach these fields and no others.
_TRIGGER_GETTERS: Mapping[str, Callable[[Trigger], object]] = {
    "channel": lambda trigger: trigger.channel,
    "account": lambda trigger: trigger.account,
    "sender": _authenticated_sender,
    "sender_authenticated": lambda trigger: trigger.sender_authenticated,
    "flagged": lambda trigger: trigger.flagged,
    "automated": lambda trigger: trigger.automated,
}


def _render(value: object) -> str | None:
    """A value as the text conditions compare against; None for anything unexpected."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than Python will print: treat as absent
            return None
    if isinstance(value, str):
        return value
    return None


def _decided_by(rule: Rule, action: str) -> PolicyDecision:
    how = ", ".join(c.text for c in rule.conditions) if rule.conditions else "no conditions"
    reason = f"{action!r} matched {rule.action!r} at {rule.ref} ({how}): {rule.decision}"
    return PolicyDecision(rule.decision, rule.ref, rule.text, _cap(reason), rule.rate)


def _default_deny(action: str, near_misses: list[str]) -> PolicyDecision:
    reason = f"no rule matched {action!r}; denied by default"
    if near_misses:
        shown = ", ".join(near_misses[:_MAX_NEAR_MISSES])
        more = "" if len(near_misses) <= _MAX_NEAR_MISSES else ", ..."
        reason += f" (conditions did not hold at {shown}{more})"
    return PolicyDecision("deny", DEFAULT_DENY_REF, "", _cap(reason), None)


def _broken_policy(error: PolicyError) -> PolicyDecision:
    first = str(error.problems[0]) if error.problems else "no details"
    rest = len(error.problems) - 1
    more = f" (and {rest} more problem{'s' if rest != 1 else ''})" if rest > 0 else ""
    reason = f"policy failed to parse: {first}{more}"
    return PolicyDecision("deny", POLICY_ERROR_REF, "", _cap(reason), None)


def _cap(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."
