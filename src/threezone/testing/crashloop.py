"""Executor processes for crash tests.

``python -m threezone.testing.crashloop CONFIG`` starts the real executor (real zones
under the configured backend), then repeatedly fetches from the Maildir and processes
everything pending, one message at a time, until ``new/`` is empty and nothing is
pending; then it stops cleanly and exits 0. It prints one line per finished message
(``done <id>`` / ``quarantined <id>``) so a test can time its ``kill -9`` by progress.

``python -m threezone.testing.crashloop --agent CONFIG.json BASE`` runs the long-lived
agent (``threezone run``'s code: every configured channel, approvals) on a config a
test built in memory and saved with ``msgspec.json``, until SIGTERM.

A test kills it (or its zones) with SIGKILL at random moments and starts it again;
each start must resume where the last one died, losing nothing and acting once.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import msgspec

from threezone.backends import get_backend
from threezone.config.load import LoadedConfig, load_config
from threezone.config.schema import Config
from threezone.executor.core import Executor
from threezone.executor.wiring import build_agent


async def drain(config: Path) -> int:
    loaded = load_config(config)
    executor = Executor(loaded, get_backend(loaded.config.executor.backend, loaded.config))
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


async def agent(config_json: Path, base: Path) -> int:
    config = msgspec.json.decode(config_json.read_bytes(), type=Config)
    loaded = LoadedConfig(config, base, None)
    running = build_agent(loaded, get_backend(config.executor.backend, config))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await running.run(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "--agent":
        return asyncio.run(agent(Path(args[1]), Path(args[2])))
    if len(args) != 1:
        print(
            "usage: python -m threezone.testing.crashloop CONFIG | --agent CONFIG.json BASE",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(drain(Path(args[0])))


if __name__ == "__main__":
    sys.exit(main())
