"""How long one policy decision takes with a 100-rule policy (goal: <= 50 us p50).

The policy mixes every condition kind (literals, globs, lists, sets, RE2 regexes,
numeric bounds, len(), domain(), origin(), trigger fields). The request is the worst
useful case: an action that matches many rules' patterns and is decided near the end,
so most rules' conditions are evaluated; the default-deny and first-rule cases are
reported beside it.

    python bench/policy_decision.py [--decisions 20000] [--runs 5] [--json]

``measure()`` is what ``bench/run_all.py`` calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Mapping

from threezone.policy import Policy, evaluate, parse_policy
from threezone.policy.provenance import ProvenanceContext, origins
from threezone.protocol.messages import Trigger

LISTS = {
    "contacts": frozenset(f"person{i}@example.com" for i in range(200)),
    "owner": frozenset({"owner@example.com"}),
    "trusted_domains": frozenset({"example.com", "partner.example.org"}),
}
TRIGGER = Trigger(
    channel="email",
    account="owner@example.com",
    sender="person7@example.com",
    sender_authenticated=True,
    received_at="2026-01-01T00:00:00Z",
    flagged=False,
)
TEMPLATES = (
    "email.send to=@contacts trigger.sender=@contacts origin(to)!=content allow rate=20/h",
    r"email.reply to~[a-z0-9.]+@blocked{n}\.example deny",
    "email.* domain(to)={{evil{n}.example,*.bad{n}.example}} deny",
    "email.send len(body)>{big} trigger.flagged=true deny",
    "payments.send amount<=100 currency={{eur,usd}} allow",
    "telegram.send_message chat=ops{n}* allow",
    "email.draft to=*@team{n}.example allow",
    "*.send trigger.channel=slack trigger.sender=u{n} ask",
    "email.send subject=*urgent{n}* origin(to)=content ask",
    "email.* to=@owner trigger.account=other{n}@example.com allow",
)


def policy_text(rules: int = 100) -> str:
    lines = [TEMPLATES[i % len(TEMPLATES)].format(n=i, big=10_000 + i) for i in range(rules - 1)]
    lines.append("* * deny")
    return "\n".join(lines) + "\n"


def _time(policy: Policy, action: str, args: Mapping[str, str | int | bool], n: int) -> float:
    context = ProvenanceContext.build(["Please write to someone@else.example"], ["owner@x"])
    found = origins(args, context)
    started = time.perf_counter()
    for _ in range(n):
        evaluate(policy, action, args, TRIGGER, LISTS, origins=found)
    return (time.perf_counter() - started) / n * 1e6


def measure(decisions: int = 20_000, runs: int = 5) -> dict[str, float]:
    policy = Policy(parse_policy(policy_text(), "bench.policy", frozenset(LISTS)))
    assert len(policy.rules) == 100
    late = {"to": "stranger@nowhere.example", "subject": "hello", "body": "x" * 500}
    first = {"to": "person3@example.com", "subject": "hi", "body": "short"}
    cases = {
        "late_match_us": ("email.send", late),
        "first_rule_us": ("email.send", first),
        "default_deny_us": ("calendar.create", {"title": "x"}),
    }
    result: dict[str, float] = {"rules": float(len(policy.rules))}
    for name, (action, args) in cases.items():
        samples = [_time(policy, action, args, decisions) for _ in range(runs)]
        result[name] = round(statistics.median(samples), 2)
    started = time.perf_counter()
    for _ in range(200):
        parse_policy(policy_text(), "bench.policy", frozenset(LISTS))
    result["parse_100_rules_ms"] = round((time.perf_counter() - started) / 200 * 1e3, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.decisions, args.runs)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
