"""Where did an argument's value come from? ``trusted``, ``content`` or ``planner``.

The planner is assumed to be on the attacker's side, so the executor cannot ask it.
It can compare: each argument value against what the executor itself vouches for
(the authenticated sender, the owner's account, the config lists) and against the
untrusted message the episode is about. The policy reads the answer as
``origin(arg)``, e.g. ``email.send to=@contacts origin(to)!=content allow`` or
``email.send origin(to)=content ask``.

- ``trusted``: the whole value is something the executor vouches for;
- ``content``: otherwise, the value (or an address, host or long run of text inside
  it) appears in the untrusted content: an attacker could have put it there;
- ``planner``: neither; the model produced it (from the owner's standing
  instructions, or made up).

Matching is case-insensitive on whitespace-squashed text. It is a heuristic aimed at
the common attack (a recipient or URL that appears only in the message body); an
attacker who spells an address differently in the body than the model will (e.g.
``evil [at] example.com``) makes it ``planner``, so a policy should grant with
positive conditions (``to=@contacts``) and use ``origin`` to narrow them further.

Pure: text in, labels out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from threezone.policy.model import Origin

ArgValue = str | int | bool

# A run this long copied verbatim from the content marks a text argument as carrying
# content (a forwarded message body), while a short quote in a reply does not.
LONG_RUN = 64
MIN_VALUE = 3
MAX_SCAN = 200_000  # characters of content examined: bounds the cost per argument
_ADDRESS = re.compile(r"[\w.%+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
_HOST = re.compile(r"(?:https?|ftp|wss?)://(?:[^/@\s]*@)?([\w.-]{1,253})", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ProvenanceContext:
    """What the executor knows for one episode: the untrusted text and trusted values."""

    untrusted_text: str
    trusted: frozenset[str]

    @classmethod
    def build(cls, untrusted_parts: Iterable[str], trusted: Iterable[str]) -> ProvenanceContext:
        text = _norm(" \n ".join(untrusted_parts))[:MAX_SCAN]
        return cls(text, frozenset(_norm(t) for t in trusted if t))


def origins(args: Mapping[str, ArgValue], context: ProvenanceContext) -> dict[str, Origin]:
    """The origin of every string argument (numbers and booleans are the planner's)."""
    return {name: origin_of(value, context) for name, value in args.items()}


def origin_of(value: ArgValue, context: ProvenanceContext) -> Origin:
    if not isinstance(value, str) or isinstance(value, bool):
        return "planner"
    text = _norm(value)
    if text in context.trusted:
        return "trusted"
    if _from_content(text, context):
        return "content"
    return "planner"


def _from_content(text: str, context: ProvenanceContext) -> bool:
    content = context.untrusted_text
    if not content or len(text) < MIN_VALUE:
        return False
    if len(text) <= LONG_RUN:
        if text in content:
            return True
    elif _shares_long_run(text, content):
        return True
    return any(token not in context.trusted and token in content for token in _identifiers(text))


def _identifiers(text: str) -> set[str]:
    """Addresses and URL hosts inside a value: the parts an exfiltration needs."""
    found = {m.group().lower() for m in _ADDRESS.finditer(text)}
    found.update(m.group(1).lower() for m in _HOST.finditer(text))
    return found


def _shares_long_run(text: str, content: str) -> bool:
    """Whether some ``LONG_RUN``-character window of ``text`` occurs in the content.

    Windows start every ``LONG_RUN // 2`` characters, so any shared run of at least
    ``1.5 * LONG_RUN`` characters is found, at a cost linear in the argument's length.
    """
    step = LONG_RUN // 2
    return any(
        text[start : start + LONG_RUN] in content
        for start in range(0, max(1, len(text) - LONG_RUN + 1), step)
    )


def _norm(text: str) -> str:
    return _SPACES.sub(" ", text).strip().casefold()
