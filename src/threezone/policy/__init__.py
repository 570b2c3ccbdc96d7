"""threezone.policy."""

# The pure half only: the disk loader lives in threezone.policy.loader, imported by
# whoever does I/O, so importing this package never pulls in file access.
from threezone.policy.evaluate import could_allow, evaluate
from threezone.policy.model import (
    DEFAULT_DENY_REF,
    POLICY_ERROR_REF,
    Condition,
    Policy,
    PolicyDecision,
    Rate,
    Rule,
)
from threezone.policy.parser import parse_policy

__all__ = [
    "DEFAULT_DENY_REF",
    "POLICY_ERROR_REF",
    "Condition",
    "Policy",
    "PolicyDecision",
    "Rate",
    "Rule",
    "could_allow",
    "evaluate",
    "parse_policy",
]
