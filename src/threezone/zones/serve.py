"""The request loop every zone runs: receive, dispatch by type, reply, repeat.

Errors cross the wire as typed :class:`Error` messages, never as tracebacks; the
traceback of an unexpected exception (a bug in the zone) goes to the zone's stderr,
which the executor keeps in the zone's log file.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

from threezone.errors import ReaderError, ThreezoneError
from threezone.protocol.messages import IsolationReport, Message, Probe, Shutdown
from threezone.zones import landlock
from threezone.zones.client import ShutdownRequested, ZoneArgs, ZoneClient
from threezone.zones.probes import parse_probe_args, run_probes

SCRATCH = "/tmp"  # noqa: S108 - the zone's private tmpfs in the sandbox
Handler = Callable[[ZoneClient, Message], Message | None]


def serve(args: ZoneArgs, handler: Handler) -> int:
    """Serve until the executor says shutdown (exit 0) or the connection breaks (exit 1).

    Before anything else: restrict this process (Landlock) if asked, then check the
    isolation from inside and report it in the hello; the executor decides whether
    that is enough. No untrusted byte has arrived yet at either point.
    """
    client = ZoneClient.connect(args, self_check(args))
    try:
        while True:
            message = client.recv()
            if isinstance(message, Shutdown):
                return 0
            _dispatch(client, handler, message)
    except ShutdownRequested:
        return 0
    except ThreezoneError as exc:
        print(f"zone {args.zone}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


def self_check(args: ZoneArgs) -> IsolationReport | None:
    extra: list[Probe] = []
    if args.landlock:
        status = landlock.restrict(writable=[SCRATCH, "/dev/null"])
        extra.append(Probe(name="landlock", blocked=status.enforced, detail=status.detail[:200]))
    targets, _rest = parse_probe_args(args.extra)
    if targets is None:
        return IsolationReport(probes=extra) if extra else None
    report = run_probes(targets)
    return IsolationReport(probes=[*report.probes, *extra])


def _dispatch(client: ZoneClient, handler: Handler, message: Message) -> None:
    request_id = getattr(message, "id", None)
    try:
        reply = handler(client, message)
    except (ShutdownRequested, ThreezoneError) as exc:
        if isinstance(exc, ReaderError):
            client.error(request_id, exc.code, exc.detail)
            return
        raise
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        client.error(request_id, "zone_internal_error", type(exc).__name__)
        return
    if reply is not None:
        client.send(reply)
