"""threezone.readers: one pure function per channel, untrusted raw bytes -> SanitizedMessage.

:func:`read` picks the reader for a channel. Every reader raises only
:class:`~threezone.errors.ReaderError` subclasses for bad input (and ``ValueError`` for
a caller's over-long ``message_id``); the fuzz tests hold them to that.
"""

from __future__ import annotations

from collections.abc import Callable

from threezone.protocol.messages import Channel, SanitizedMessage
from threezone.readers.common import ChatLimits
from threezone.readers.email import EmailLimits, read_email
from threezone.readers.slack import read_slack
from threezone.readers.telegram import read_telegram

READERS: dict[str, Callable[[bytes, str], SanitizedMessage]] = {
    "email": read_email,
    "telegram": read_telegram,
    "slack": read_slack,
}


def read(channel: Channel, untrusted_raw: bytes, message_id: str) -> SanitizedMessage:
    """Run the reader for ``channel`` with its default limits.

    ``ValueError`` for a channel with no reader: the channel comes from the caller
    (the executor's request), never from the untrusted bytes.
    """
    reader = READERS.get(channel)
    if reader is None:
        raise ValueError(f"no reader for channel {channel!r}")
    return reader(untrusted_raw, message_id)


__all__ = [
    "READERS",
    "ChatLimits",
    "EmailLimits",
    "read",
    "read_email",
    "read_slack",
    "read_telegram",
]
