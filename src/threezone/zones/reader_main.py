"""Entry point of a reader zone: untrusted raw bytes in, a SanitizedMessage out.

Runs inside the zone (no network, no credentials). Imports readers and the protocol,
nothing from the executor. One zone serves every channel; the request names which
reader to run.
"""

from __future__ import annotations

import sys

from threezone.protocol.messages import Message, SanitizeRequest, SanitizeResult
from threezone.readers import read
from threezone.zones.client import ZoneClient, parse_args
from threezone.zones.serve import serve


def handle(client: ZoneClient, message: Message) -> Message | None:
    if not isinstance(message, SanitizeRequest):
        client.error(getattr(message, "id", None), "unexpected_message", type(message).__name__)
        return None
    # the channel is the executor's word (it fetched the item), not the raw bytes
    sanitized = read(message.channel, message.raw, message.message_id)
    return SanitizeResult(id=client.next_id(), reply_to=message.id, message=sanitized)


def main(argv: list[str] | None = None) -> int:
    return serve(parse_args("reader", argv), handle)


if __name__ == "__main__":
    sys.exit(main())
