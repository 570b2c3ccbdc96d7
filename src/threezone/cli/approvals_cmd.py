"""``threezone approvals list|show|approve|deny``: the owner's side of the queue."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from threezone.cli.common import ConfigOption, fail, load_config_or_default
from threezone.errors import ThreezoneError
from threezone.executor.approvals import DB_NAME, Approval, ApprovalQueue, ApprovalStatus

approvals_app = typer.Typer(
    no_args_is_help=True, help="Approve or deny actions the policy said to ask about."
)
console = Console()


def _queue(config: Path) -> ApprovalQueue:
    loaded = load_config_or_default(config)
    state = loaded.resolve(loaded.config.executor.state_dir)
    path = state / DB_NAME
    if not path.exists():
        raise ThreezoneError(f"{path}: no approval queue yet (the executor creates it)")
    return ApprovalQueue.open(path)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _as_json(entry: Approval) -> dict[str, object]:
    return {
        "id": entry.id,
        "status": str(entry.status),
        "action": entry.action,
        "args": entry.args,
        "untrusted_args": entry.untrusted_args,
        "trigger": msgspec.to_builtins(entry.trigger),
        "rule": entry.rule,
        "reason": entry.reason,
        "digest": entry.digest,
        "message": entry.message_id,
        "created_at": _when(entry.created_at),
        "expires_at": _when(entry.expires_at),
        "decided_at": _when(entry.decided_at),
        "decided_by": entry.decided_by,
        "note": entry.note,
        "result": entry.result,
    }


def _show(entry: Approval) -> None:
    console.print(f"[bold]#{entry.id}[/] {entry.action}  [dim]({entry.status})[/]")
    console.print(f"  digest   {entry.short_digest}")
    for name, value in entry.args.items():
        mark = "  [red]<- from the untrusted message[/]" if name in entry.untrusted_args else ""
        console.print(f"  {name:<8} {value!r}{mark}", highlight=False)
    trigger = entry.trigger
    who = trigger.sender if trigger.sender_authenticated else "unauthenticated sender"
    flag = " [red]flagged by the reader[/]" if trigger.flagged else ""
    console.print(f"  trigger  {trigger.channel} message {entry.message_id} from {who}{flag}")
    console.print(f"  rule     {entry.rule}: {entry.reason}", highlight=False)
    console.print(f"  expires  {_when(entry.expires_at)}")


@approvals_app.command("list")
def list_approvals(
    show_all: Annotated[bool, typer.Option("--all", help="Include decided entries.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOption = Path("threezone.toml"),
) -> None:
    """Pending approvals (or all of them), oldest first."""
    try:
        queue = _queue(config)
        queue.expire()
        entries = queue.entries(() if show_all else (ApprovalStatus.PENDING,))
    except ThreezoneError as exc:
        raise fail(exc) from exc
    if as_json:
        console.print_json(msgspec.json.encode([_as_json(e) for e in entries]).decode())
        return
    if not entries:
        console.print("no pending approvals" if not show_all else "no approvals")
        return
    table = Table("id", "status", "action", "args", "from content", "expires")
    for entry in entries:
        args = ", ".join(f"{k}={str(v)[:40]!r}" for k, v in entry.args.items())
        untrusted = ", ".join(entry.untrusted_args) or "-"
        row = (str(entry.id), str(entry.status), entry.action, args, untrusted)
        table.add_row(*row, _when(entry.expires_at))
    console.print(table)


@approvals_app.command("show")
def show(
    approval_id: Annotated[int, typer.Argument(help="The approval's number.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOption = Path("threezone.toml"),
) -> None:
    """Everything about one entry: the exact action, which arguments came from content."""
    try:
        entry = _queue(config).get(approval_id)
    except ThreezoneError as exc:
        raise fail(exc) from exc
    if as_json:
        console.print_json(msgspec.json.encode(_as_json(entry)).decode())
    else:
        _show(entry)


@approvals_app.command("approve")
def approve(
    approval_id: Annotated[int, typer.Argument(help="The approval's number.")],
    digest: Annotated[
        str | None, typer.Option(help="The digest you were shown (at least 8 hex digits).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask to confirm.")] = False,
    config: ConfigOption = Path("threezone.toml"),
) -> None:
    """Approve one entry; the executor runs it once, on its next cycle, before it expires."""
    try:
        queue = _queue(config)
        entry = queue.get(approval_id)
        if not yes:
            _show(entry)
            typer.confirm("Run this action?", abort=True)
        decided = queue.approve(approval_id, f"cli:{getpass.getuser()}", digest)
    except ThreezoneError as exc:
        raise fail(exc, 1) from exc
    console.print(f"#{decided.id} approved; it runs on the executor's next cycle")


@approvals_app.command("deny")
def deny(
    approval_id: Annotated[int, typer.Argument(help="The approval's number.")],
    note: Annotated[str | None, typer.Option(help="Why, for the audit trail.")] = None,
    config: ConfigOption = Path("threezone.toml"),
) -> None:
    """Deny one entry; it never runs."""
    try:
        decided = _queue(config).deny(approval_id, f"cli:{getpass.getuser()}", note)
    except ThreezoneError as exc:
        raise fail(exc, 1) from exc
    console.print(f"#{decided.id} denied")
