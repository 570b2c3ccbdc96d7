"""An executor process for crash tests: fetch and process until the Maildir is drained.

``python -m threezone.testing.crashloop CONFIG`` starts the real executor (real zones
under the configured backend), then repeatedly fetches from the Maildir and processes
everything pending, one message at a time, until ``new/`` is empty and nothing is
pending; then it stops cleanly and exits 0. It prints one line per finished message
(``done <id>`` / ``quarantined <id>``) so a test can time its ``kill -9`` by progress.

A test kills it (or its zones) with SIGKILL at random moments and starts it again;
each start must resume where the last one died, losing nothing and acting once.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from threezone.backends import get_backend
from threezone.config.load import load_config
from threezone.executor.core import Executor


async def drain(config: Path) -> int:
    loaded = load_config(config)
    executor = Executor(loaded, get_backend(loaded.config.executor.backend))
    try:
        await executor.start()
        while True:
            executor.ingest()
            pending = executor.inbox.pending()
            if not pending:
                return 0
            for message_id in pending:
                outcome = await executor.process(message_id)
                print(outcome.state, message_id, flush=True)
    finally:
        await executor.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m threezone.testing.crashloop CONFIG", file=sys.stderr)
        return 2
    return asyncio.run(drain(Path(args[0])))


if __name__ == "__main__":
    sys.exit(main())
