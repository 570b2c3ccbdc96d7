"""What a parsed policy is made of: rules, their conditions and limits, and decisions.

Everything here is a frozen value. A :class:`Policy` that failed to load still exists,
as :meth:`Policy.deny_all`, so that callers never have to special-case "no policy":
the evaluator turns the stored error into a deny that names where parsing failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from threezone.errors import PolicyError

Decision = Literal["allow", "deny", "ask"]
ValueKind = Literal["list", "glob", "literal", "set", "regex", "number"]
Operator = Literal["=", "!=", "~", "!~", "<", "<=", ">", ">="]
Origin = Literal["trusted", "content", "planner"]

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
    """One ``subject OP value`` test; all of a rule's conditions must hold.

    ``subject`` is an argument name, ``trigger.<field>``, or a function of an argument:
    ``len(arg)``, ``origin(arg)`` (where its value came from) or ``domain(arg)`` (the
    domain of an address or the host of a URL). ``kind`` says how ``value`` is read:

    - ``literal`` / ``glob``: compared to the text (case-insensitive; ``*`` is any run);
    - ``list``: membership in the config list named by ``value`` (stored without ``@``);
    - ``set``: membership in ``items``, each a literal or glob (``{a,b*}``);
    - ``regex``: an RE2 pattern that must match the whole text (``~`` / ``!~``);
    - ``number``: an integer bound (``<``, ``<=``, ``>``, ``>=``, and ``=``/``!=``).

    ``matcher`` is the compiled RE2 pattern for ``regex`` (excluded from equality).
    ``col`` is the 1-based column of the condition in its line, for messages.
    """

    subject: str
    op: Operator
    value: str
    kind: ValueKind
    col: int
    items: tuple[str, ...] = ()
    matcher: Any = field(default=None, compare=False, hash=False, repr=False)
    # Derived once here, because the evaluator asks for them on every request.
    negate: bool = field(init=False, compare=False, repr=False)
    folded: str = field(init=False, compare=False, repr=False)
    folded_items: tuple[str, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "negate", self.op in ("!=", "!~"))
        object.__setattr__(self, "folded", self.value.lower())
        object.__setattr__(self, "folded_items", tuple(item.lower() for item in self.items))

    @property
    def text(self) -> str:
        """The condition as it would be written in a policy file."""
        shown = f"@{self.value}" if self.kind == "list" else self.value
        return f"{self.subject}{self.op}{shown}"


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
    # The evaluator's per-action memo of candidate rules (never part of equality).
    memo: dict[str, tuple[Rule, ...]] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

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
