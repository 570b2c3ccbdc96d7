"""Checks on an admitted action's arguments, after the policy and before anything runs.

The policy says whether an action of this shape may run; guards look inside the
argument values for things that must never leave, whatever a rule says:

- ``<secret>``: the value of any loaded secret, plainly or encoded (base64, hex, ...);
- ``<canary>``: a planted decoy value. Nothing legitimate ever holds one, so a hit
  means the content steered the planner to exfiltrate: the trigger is quarantined and
  the owner alerted (``trips``);
- ``<egress>``: a URL or host outside the egress allowlist.

Guards also *redact*: decisions are stored and audited, and a refused argument that
holds a secret must not put that secret on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from threezone.protocol.messages import ArgValue


@dataclass(frozen=True, slots=True)
class GuardHit:
    guard: str  # the pseudo-rule recorded for the refusal: <secret>, <canary>, <egress>
    reason: str
    trips: bool = False  # quarantine the trigger and alert the owner


class ArgumentGuard(Protocol):
    def check(self, action: str, args: Mapping[str, ArgValue]) -> GuardHit | None: ...

    def redact(self, text: str) -> str: ...


class ValueStore(Protocol):
    """What :class:`SecretStore` offers a guard: names found in a text, values by name."""

    def leaks(self, text: str) -> list[str]: ...

    def get(self, name: str) -> str: ...


def text_args(args: Mapping[str, ArgValue]) -> Iterable[tuple[str, str]]:
    return ((name, value) for name, value in args.items() if isinstance(value, str))


class StoreGuard:
    """Refuses arguments holding any value of a store (secrets, or canaries)."""

    def __init__(self, store: ValueStore, guard: str, what: str, *, trips: bool) -> None:
        self._store = store
        self._guard = guard
        self._what = what
        self._trips = trips

    def check(self, action: str, args: Mapping[str, ArgValue]) -> GuardHit | None:
        for name, value in text_args(args):
            found = self._store.leaks(value)
            if found:
                shown = ", ".join(found[:5])
                return GuardHit(
                    self._guard, f"argument {name!r} holds the {self._what} {shown}", self._trips
                )
        return None

    def redact(self, text: str) -> str:
        """Plain occurrences become ``[secret NAME]``; an encoded one takes the whole value.

        An encoding (base64, hex, ...) can straddle the text around it, so when replacing
        the plain value does not clear the text, none of it is kept.
        """
        found = self._store.leaks(text)
        for name in found:
            text = text.replace(self._store.get(name), f"[{self._what} {name}]")
        if found and self._store.leaks(text):
            return f"[redacted: holds the {self._what} {', '.join(found[:5])}]"
        return text


class EgressGuard:
    """Refuses arguments naming a URL or host that no egress rule allows."""

    def __init__(self, problems: Callable[[Iterable[str]], list[str]]) -> None:
        self._problems = problems

    def check(self, action: str, args: Mapping[str, ArgValue]) -> GuardHit | None:
        for name, value in text_args(args):
            found = self._problems([value])
            if found:
                return GuardHit("<egress>", f"argument {name!r}: {found[0]}")
        return None

    def redact(self, text: str) -> str:
        return text


def first_hit(
    guards: Sequence[ArgumentGuard], action: str, args: Mapping[str, ArgValue]
) -> GuardHit | None:
    """Tripwires first: a canary must raise its alarm even if a secret is also present."""
    return screen(guards, action, args)[0]


def screen(
    guards: Sequence[ArgumentGuard], action: str, args: Mapping[str, ArgValue]
) -> tuple[GuardHit | None, dict[str, ArgValue]]:
    """The first hit (tripwires first) and the arguments as they may be stored.

    Each guard scans the arguments once; only guards that found something redact, since
    a guard that found nothing in any argument has nothing to replace.
    """
    checked = [(guard, guard.check(action, args)) for guard in guards]
    hits = sorted((hit for _, hit in checked if hit is not None), key=lambda hit: not hit.trips)
    found = [guard for guard, hit in checked if hit is not None]
    return (hits[0] if hits else None), redact_args(found, args)


def redact_args(
    guards: Sequence[ArgumentGuard], args: Mapping[str, ArgValue]
) -> dict[str, ArgValue]:
    return {
        name: _redact_text(guards, value) if isinstance(value, str) else value
        for name, value in args.items()
    }


def _redact_text(guards: Sequence[ArgumentGuard], text: str) -> str:
    for guard in guards:
        text = guard.redact(text)
    return text
