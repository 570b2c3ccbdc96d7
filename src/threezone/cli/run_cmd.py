"""``threezone run`` and ``threezone status``: the long-running agent and a look at it."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from threezone.cli.common import ConfigOption, fail
from threezone.config.load import load_config
from threezone.errors import ThreezoneError

if TYPE_CHECKING:  # the CLI imports the executor lazily, to start fast
    from threezone.executor.agent import Agent, Status

console = Console()


def run(
    config: ConfigOption = Path("threezone.toml"),
    live: Annotated[
        bool | None, typer.Option("--live/--no-live", help="Live status (default: on a terminal).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the agent until SIGINT/SIGTERM: fetch, sanitize, plan, decide, act, audit."""
    from threezone.backends import get_backend
    from threezone.executor.wiring import build_agent

    show_live = console.is_terminal if live is None else live
    handler = logging.StreamHandler()
    if not show_live:  # a service: one JSON object per line, for journald and friends
        handler.setFormatter(JsonLines())
    logging.basicConfig(
        level=logging.INFO if verbose or not show_live else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[handler],
    )
    try:
        loaded = load_config(config)
        agent = build_agent(loaded, get_backend(loaded.config.executor.backend, loaded.config))
        asyncio.run(_run(agent, show_live))
    except ThreezoneError as exc:
        raise fail(exc, 1) from exc
    console.print("stopped cleanly")


class JsonLines(logging.Formatter):
    """Structured logs: time, level, logger and message as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


async def _run(agent: Agent, show_live: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = asyncio.create_task(agent.run(stop))
    if show_live:
        with Live(render_status(agent.snapshot()), console=console, refresh_per_second=2) as shown:
            while not runner.done():
                shown.update(render_status(agent.snapshot()))
                await asyncio.wait({runner}, timeout=0.5)
    await runner


def render_status(status: Status) -> Table:
    """One table for `run --live` and `status`: zones, sources, queue, recent decisions."""
    table = Table(title="threezone", show_header=False, expand=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    uptime = time.time() - status.started_at
    table.add_row("up", f"{uptime:,.0f} s, pid {status.pid}, backend {status.backend}")
    for zone in status.zones:
        held = f"{zone.probes_held}/{zone.probes} probes held"
        table.add_row(f"zone {zone.name}", f"pid {zone.pid}, starts {zone.starts}, {held}")
    for source in status.sources:
        error = f", last error: {source.last_error}" if source.last_error else ""
        table.add_row(f"source {source.name}", f"{source.fetched} fetched{error}")
    table.add_row("inbox", ", ".join(f"{k} {v}" for k, v in status.inbox.items()))
    table.add_row("queue", f"{status.queued} waiting, {status.processed} processed")
    table.add_row("approvals", f"{status.approvals_pending} pending")
    for decision in status.recent[-8:]:
        ran = "ran" if decision.executed else "not run"
        shown = f"{decision.action} {decision.decision} by {decision.rule} ({ran})"
        table.add_row("decision", shown)
    if status.storage_error:
        table.add_row(
            "state", f"[red]PAUSED[/]: the state directory refuses writes: {status.storage_error}"
        )
    if status.stopping:
        table.add_row("state", "stopping: finishing the message in hand")
    return table


def status(
    config: ConfigOption = Path("threezone.toml"),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Ask the running agent (over its owner-only control socket) how it is doing."""
    from threezone.executor.agent import CONTROL_SOCKET, read_status

    try:
        loaded = load_config(config)
        path = loaded.resolve(loaded.config.executor.state_dir) / CONTROL_SOCKET
        if not path.exists():
            raise ThreezoneError(f"{path}: no agent is running (no control socket)")
        snapshot = read_status(path)
    except OSError as exc:
        raise fail(ThreezoneError(f"cannot reach the agent: {exc}"), 1) from exc
    except ThreezoneError as exc:
        raise fail(exc, 1) from exc
    if as_json:
        console.print_json(msgspec.json.encode(snapshot).decode())
    else:
        console.print(render_status(snapshot))
