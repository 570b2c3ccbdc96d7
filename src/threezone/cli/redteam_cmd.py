"""``threezone redteam --corpus FILE.jsonl``: what a fully fooled model gets past the policy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer
from rich.console import Console

from threezone.cli.common import ConfigOption, fail, load_config_or_default
from threezone.errors import ConfigError, ThreezoneError

if TYPE_CHECKING:  # the CLI imports the executor lazily, to start fast
    from threezone.executor.redteam import Report

console = Console()
_STYLE = {"executed": "bold red", "asked": "yellow", "denied": "green", "not_requested": "dim"}


def redteam(
    corpus: Annotated[Path, typer.Option(help="JSONL records: id, channel, raw, attack.")],
    config: ConfigOption = Path("threezone.toml"),
    backend: Annotated[
        str | None, typer.Option(help="Isolation backend for the reader zones (default: config).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """What a fully fooled model would get past your policy, record by record.

    Each record's message goes through its reader zone, then to a hijacked planner
    that requests exactly the record's attack actions.

    Nothing is performed (every action is a dry run) and nothing touches the real state
    directory. Exit 0 when no attack would have run, 1 when any would, 2 on errors.
    """
    from threezone.backends import get_backend
    from threezone.executor.redteam import read_corpus, run_redteam

    try:
        loaded = load_config_or_default(config)
        records = read_corpus(_lines(corpus), str(corpus))
        chosen = get_backend(backend or loaded.config.executor.backend, loaded.config)
        report = asyncio.run(run_redteam(loaded, chosen, records))
    except ThreezoneError as exc:
        raise fail(exc) from exc
    if as_json:
        shown = {"totals": report.totals, "records": report.records}
        console.print_json(msgspec.json.encode(shown).decode())
    else:
        _print(report)
    raise typer.Exit(1 if report.count("executed") else 0)


def _lines(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the corpus: {exc}") from exc


def _print(report: Report) -> None:
    for record in report.records:
        if record.flagged is None:
            reader = f"[red]{record.state}[/]: {record.error or ''}"
        else:
            reader = f"{'[yellow]flagged[/]' if record.flagged else 'clean'} {record.score:.2f}"
        console.print(f"[bold]{record.id}[/] ({record.channel}, reader: {reader})")
        for attack in record.attacks:
            style = _STYLE[attack.verdict]
            by = f" by {attack.rule}" if attack.rule else ""
            console.print(f"  {attack.action} -> [{style}]{attack.verdict}[/]{by}", highlight=False)
            console.print(f"    [dim]{attack.reason[:300]}[/]", highlight=False)
    totals = report.totals
    console.print(
        f"\n{totals['records']} record(s), {totals['attacks']} attack action(s): "
        f"[bold red]{totals['executed']} would have run[/], "
        f"[yellow]{totals['asked']} queued for approval[/], "
        f"[green]{totals['denied']} denied[/], {totals['not_requested']} never requested "
        f"({totals['quarantined']} message(s) quarantined, {totals['flagged']} flagged)"
    )
