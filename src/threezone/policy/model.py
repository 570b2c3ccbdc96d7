"""What a parsed policy is made of: rules, their conditions and limits, and decisions.

Everything here is a frozen value. A :class:`Policy` that failed to load still exists,
as :meth:`Policy.deny_all`, so that callers never have to special-case "no policy":
the evaluator turns the stored error into a deny that names where parsing failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from threezone.errors import PolicyError

Decision = Literal["allow", "deny", "ask"]
ConditionKind = Literal["list", "glob", "literal"]

DEFAULT_DENY_REF = "<default-deny>"
POLICY_ERROR_REF = "<policy-error>"


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` uses per ``per_seconds``; ``text`` is how the file spelt it."""

    count: int
    per_seconds: int
    text: str


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``subject=value`` (or ``subject!=value``) test; all of a rule's must hold.

    ``subject`` is an argument name or ``trigger.<field>``. For ``kind == "list"``
    ``value`` is the bare list name (no ``@``), so it can be looked up directly.
    ``col`` is the 1-based column of the condition in its line, for messages.
    """

    subject: str
    negate: bool
    value: str
    kind: ConditionKind
    col: int

    @property
    def text(self) -> str:
        """The condition as it would be written in a policy file."""
        op = "!=" if self.negate else "="
        shown = f"@{self.value}" if self.kind == "list" else self.value
        return f"{self.subject}{op}{shown}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy line. ``conditions == ()`` means the line said ``*`` (always holds)."""

    action: str
    conditions: tuple[Condition, ...]
    decision: Decision
    rate: Rate | None
    file: str
    line: int
    text: str

    @property
    def ref(self) -> str:
        """``file:line``, the name every decision and audit record uses for this rule."""
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Policy:
    """Rules in evaluation order; with ``error`` set, the policy denies everything."""

    rules: tuple[Rule, ...]
    error: PolicyError | None = None

    @classmethod
    def deny_all(cls, error: PolicyError) -> Policy:
        """A policy that failed to load: no rules, and the reason kept for every deny."""
        return cls(rules=(), error=error)


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The verdict on one action request, with the rule that decided it and why.

    ``rule`` is ``file:line``, or ``<default-deny>`` when no rule matched, or
    ``<policy-error>`` when the policy failed to load (``rule_text`` is then empty).
    """

    decision: Decision
    rule: str
    rule_text: str
    reason: str
    rate: Rate | None
