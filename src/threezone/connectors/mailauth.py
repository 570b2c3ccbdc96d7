"""What the executor may vouch for about an inbound email: the provider's verdict only.

Every email source (a local Maildir, IMAP) builds its :class:`Trigger` here, so the
rule is one rule. The sender counts as authenticated when the *topmost*
``Authentication-Results`` header (RFC 8601) comes from the configured ``authserv_id``
and its ``dmarc`` result is ``pass`` for the domain of the From address. The topmost
header is the one the provider's own receiving server added last; headers further
down, or naming other servers, were written by whoever sent the message and are
ignored. A provider that does not add the header at all authenticates nobody.

This is the one place the executor reads bytes of an untrusted message: the header
block only, capped at :data:`MAX_HEADER_BYTES`, and any failure to parse means "not
authenticated", never an exception.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
from datetime import UTC, datetime

from threezone.protocol.messages import Trigger

MAX_HEADER_BYTES = 64 * 1024
# RFC 8601 comments (CFWS): a provider may copy sender-written text into them.
_COMMENT = re.compile(r"\([^()]*\)")
_DMARC_PASS = re.compile(r"^dmarc=pass\b.*?\bheader\.from=(?P<domain>[A-Za-z0-9.-]+)", re.I | re.S)


def email_trigger(
    untrusted_raw: bytes, *, account: str, authserv_id: str, received_at: datetime | None = None
) -> Trigger:
    """The trusted metadata of one email: the account, and the sender only if vouched for."""
    sender = authenticated_sender(untrusted_raw, authserv_id)
    when = received_at if received_at is not None else datetime.now(UTC)
    return Trigger(
        channel="email",
        account=account,
        sender=sender,
        sender_authenticated=sender is not None,
        received_at=when.astimezone(UTC).isoformat(timespec="seconds"),
        flagged=False,
        automated=automated(untrusted_raw),
    )


_BULK = frozenset({"bulk", "junk", "list", "auto_reply"})


def automated(untrusted_raw: bytes) -> bool:
    """Whether the message says a machine sent it: ``Auto-Submitted`` other than ``no``
    (RFC 3834), ``Precedence: bulk|junk|list``, or a mailing list's ``List-Id``.

    Replying automatically to such mail is how mail loops start (two agents, or an
    agent and a vacation responder). A sender can lie in either direction; claiming to
    be automated only makes the agent more careful, so the header is safe to believe
    for that purpose, and a parse failure counts as automated (careful again).
    """
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
            untrusted_raw[:MAX_HEADER_BYTES]
        )
        submitted = str(headers.get("Auto-Submitted", "no")).split(";")[0].strip().lower()
        precedence = str(headers.get("Precedence", "")).strip().lower()
        listed = headers.get("List-Id") is not None
    except Exception:
        return True
    return submitted != "no" or precedence in _BULK or listed


def authenticated_sender(untrusted_raw: bytes, authserv_id: str) -> str | None:
    """The From address, lower-cased, if ``authserv_id`` says DMARC passed for its domain."""
    if not authserv_id:
        return None
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
            untrusted_raw[:MAX_HEADER_BYTES]
        )
        results = headers.get_all("Authentication-Results") or []
        _name, address = email.utils.parseaddr(str(headers.get("From", "")))
    except Exception:  # hostile bytes: any parse failure means "not vouched for"
        return None
    return verdict(str(results[0]) if results else "", address, authserv_id)


def verdict(top_result: str, address: str, authserv_id: str) -> str | None:
    """``address`` if ``top_result`` is ``authserv_id``'s and its dmarc result passed for
    the address's domain; None otherwise. Only the ``dmarc`` result itself counts: a
    ``header.from`` of another method, or text inside a comment, proves nothing."""
    head, _sep, rest = _COMMENT.sub(" ", top_result).partition(";")
    words = head.split()  # "authserv-id [version]"
    if not words or words[0].lower() != authserv_id.lower() or "@" not in address:
        return None
    domain = address.rsplit("@", 1)[1].lower()
    for result in rest.split(";"):
        match = _DMARC_PASS.search(result.strip())
        if match is not None and match["domain"].lower() == domain:
            return address.lower()
    return None
