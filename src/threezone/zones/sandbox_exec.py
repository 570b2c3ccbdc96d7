"""Run any command under exactly a zone's isolation: ``threezone sandbox run`` uses this.

Inside the sandbox it applies what a zone applies to itself (Landlock, when asked),
then replaces itself with the command, so the command's exit code is the result.
"""

from __future__ import annotations

import os
import sys

from threezone.zones import landlock
from threezone.zones.serve import SCRATCH


def main(argv: list[str] | None = None) -> int:
    """``[zone options] [--landlock] -- COMMAND [ARGS...]``; zone options are ignored."""
    args = sys.argv[1:] if argv is None else argv
    if "--" not in args or args.index("--") == len(args) - 1:
        print("sandbox_exec: no command given after --", file=sys.stderr)
        return 2
    split = args.index("--")
    options, command = args[:split], args[split + 1 :]
    if "--landlock" in options:
        status = landlock.restrict(writable=[SCRATCH, "/dev/null"])
        if not status.enforced:
            print(f"sandbox_exec: landlock not enforced: {status.detail}", file=sys.stderr)
    try:
        os.execvp(command[0], command)  # noqa: S606 - running the user's command is the point
    except OSError as exc:
        print(f"sandbox_exec: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
