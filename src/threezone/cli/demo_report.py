"""``threezone demo``: run the scenario and show what each layer did."""

from __future__ import annotations

from pathlib import Path

import msgspec
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from threezone.audit.verify import verify_log
from threezone.backends import get_backend
from threezone.config.load import load_config
from threezone.demo import build_workspace
from threezone.errors import AuditError
from threezone.executor.core import Outcome, run_once

ATTACKER_HOSTS = ("evil.example", "outside-payments.example")


INTROS = {
    "hijacked": "The planner is [bold red]hijacked[/]: it obeys any instruction it reads.",
    "local": "The planner is a [bold]real language model[/] (SmolLM2-135M-Instruct) running "
    "offline in the planner zone;\nit is small and easily fooled.",
}


async def print_demo(console: Console, workspace: Path, planner: str = "hijacked") -> bool:
    """Run the demo in ``workspace``; True when every check at the end holds."""
    workspace = workspace.resolve()
    loaded = load_config(build_workspace(workspace, planner))
    console.print(
        Panel.fit(
            f"Three emails arrive. {INTROS[planner]}\n"
            "The executor's policy decides what actually happens.",
            title="threezone demo",
        )
    )
    outcomes = await run_once(loaded, get_backend(loaded.config.executor.backend, loaded.config))
    for outcome in outcomes:
        console.print(_message_panel(outcome, workspace))
    return _summary(console, workspace, outcomes)


def _result(result: dict[str, str], workspace: Path) -> str:
    shown = []
    for key, value in result.items():
        path = Path(value)
        shown.append(
            f"{key} {path.relative_to(workspace) if path.is_relative_to(workspace) else value}"
        )
    return ", ".join(shown)


def _message_panel(outcome: Outcome, workspace: Path) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    message = outcome.sanitized
    if message is not None:
        injection = message.injection
        flag = "[red]FLAGGED[/]" if injection.flagged else "[green]clean[/]"
        table.add_row(
            "reader",
            f"{flag} score {injection.score:.2f}; "
            f"{message.dropped.hidden_chars} hidden chars removed",
        )
        for reason in injection.reasons[:6]:
            table.add_row("", f"- {reason}")
    if not outcome.decisions and outcome.plan_summary:
        table.add_row("planner", "requested no action")
    if outcome.plan_summary:
        table.add_row("summary", f"[dim]{outcome.plan_summary[:300]}[/]")
    for record in outcome.decisions:
        target = record.args.get("to", "")
        table.add_row("planner", f"requests [bold]{record.action}[/] to {target}")
        colour = {"allow": "green", "deny": "red", "ask": "yellow"}[record.decision]
        table.add_row("executor", f"[{colour}]{record.decision.upper()}[/] by rule {record.rule}")
        if record.rule_text:
            table.add_row("", f"[dim]{' '.join(record.rule_text.split())}[/]")
        if record.rule.startswith("<") or "rate budget" in record.reason:
            table.add_row("", record.reason)
        table.add_row(
            "result", _result(record.result, workspace) if record.executed else "not executed"
        )
    if outcome.error_code:
        table.add_row("quarantined", f"{outcome.error_code}: {outcome.error_detail}")
    title = message.subject if message else outcome.message_id
    sender = message.sender if message else "?"
    return Panel(table, title=f"{title}", subtitle=f"from {sender} (as the mail claims)")


def _zone_starts(audit_path: Path) -> list[dict[str, object]]:
    records = (msgspec.json.decode(line) for line in audit_path.read_bytes().splitlines())
    return [r["data"] for r in records if r.get("kind") == "zone_started"]


def _summary(console: Console, workspace: Path, outcomes: list[Outcome]) -> bool:
    leaked = [
        record
        for outcome in outcomes
        for record in outcome.decisions
        if record.executed and any(h in str(record.args.get("to", "")) for h in ATTACKER_HOSTS)
    ]
    audit_path = workspace / "state" / "audit.jsonl"
    try:
        report = verify_log(audit_path)
    except AuditError as exc:
        audit_line, audit_ok = f"[red]UNREADABLE[/]: {exc}", False
    else:
        audit_ok = report.clean
        audit_line = (
            f"[green]verified[/]: {report.lines} hash-chained records, "
            f"{report.checkpoints} signed checkpoint(s)"
            if audit_ok
            else f"[red]BROKEN[/]: {report.findings[0]}"
        )
    sent = sorted((workspace / "outbox").rglob("*.eml"))
    console.print(f"\nAudit log {audit_path.name}: {audit_line}")
    for zone in _zone_starts(audit_path):
        console.print(
            f"Zone {zone['zone']} ran under [bold]{zone['backend']}[/]: "
            f"{zone['probes_held']} of {zone['probes']} isolation probes held"
        )
    console.print(f"Outbox: {len(sent)} message(s) written locally, nothing sent over a network")
    if leaked:
        console.print(f"[bold red]FAILURE: {len(leaked)} attacker action(s) executed[/]")
    else:
        console.print("[bold green]No attacker action was executed.[/]")
    return audit_ok and not leaked
