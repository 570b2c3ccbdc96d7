"""The ``threezone`` command. The only code that prints to the terminal or picks exit codes."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console

from threezone.cli.approvals_cmd import approvals_app
from threezone.cli.common import ConfigOption
from threezone.cli.init_cmd import init
from threezone.cli.redteam_cmd import redteam
from threezone.cli.run_cmd import run, status
from threezone.cli.secrets_cmd import secrets_app
from threezone.errors import ThreezoneError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
audit_app = typer.Typer(no_args_is_help=True, help="Inspect and verify the audit log.")
app.add_typer(audit_app, name="audit")
sandbox_app = typer.Typer(no_args_is_help=True, help="Use a zone's isolation directly.")
app.add_typer(sandbox_app, name="sandbox")
policy_app = typer.Typer(no_args_is_help=True, help="Check a policy, or ask it a question.")
app.add_typer(policy_app, name="policy")
app.add_typer(approvals_app, name="approvals")
app.add_typer(secrets_app, name="secrets")
app.command()(redteam)
app.command()(run)
app.command()(init)
app.command()(status)

console = Console()
errors = Console(stderr=True, soft_wrap=True)

DEFAULT_AUDIT = Path("state/audit.jsonl")


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _fail(exc: ThreezoneError, code: int = 2) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    return typer.Exit(code)


@app.command()
def demo(
    keep: Annotated[
        Path | None, typer.Option(help="Keep the workspace in this folder for inspection.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    planner: Annotated[
        str | None,
        typer.Option(
            help="local: a real small model in the planner zone (the default when installed); "
            "hijacked: a scripted planner that obeys every injection."
        ),
    ] = None,
) -> None:
    """Play the motivating scenario: three emails, a fooled planner, one policy."""
    from threezone.cli.demo_report import print_demo

    _logging(verbose)
    planner = planner or _default_demo_planner()
    if planner not in ("local", "hijacked"):
        raise _fail(ThreezoneError(f"--planner must be local or hijacked, not {planner!r}"))
    workspace = keep or Path(tempfile.mkdtemp(prefix="threezone-demo-"))
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise _fail(ThreezoneError(f"{keep} is not empty; choose a new folder for --keep"))
    try:
        ok = asyncio.run(print_demo(console, workspace, planner))
    except ThreezoneError as exc:
        raise _fail(exc) from exc
    finally:
        if keep is None:
            shutil.rmtree(workspace, ignore_errors=True)
        else:
            console.print(f"\nWorkspace kept in [bold]{keep}[/]")
    raise typer.Exit(0 if ok else 1)


def _default_demo_planner() -> str:
    import importlib.util

    from threezone.planner.local import bundled_model

    if bundled_model() is not None and importlib.util.find_spec("xllamacpp") is not None:
        return "local"
    errors.print(
        "note: the local model is not installed (make demo installs it); using the hijacked planner"
    )
    return "hijacked"


@audit_app.command("verify")
def audit_verify(
    path: Annotated[Path, typer.Argument(help="The audit log.")] = DEFAULT_AUDIT,
    public_key: Annotated[
        list[Path] | None,
        typer.Option(help="Trusted public key (PEM; repeatable). Default: the .pub by the log."),
    ] = None,
    anchor: Annotated[
        list[str] | None,
        typer.Option(help="An anchored checkpoint: its JSON, or a file of them (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Report every edited, deleted, reordered or truncated record; exit 0 only if clean."""
    from threezone.cli.audit_cmd import verify

    try:
        code = verify(
            console,
            errors,
            path,
            public_keys=public_key or [],
            anchors=anchor or [],
            as_json=as_json,
        )
    except ThreezoneError as exc:
        raise _fail(exc) from exc
    raise typer.Exit(code)


@audit_app.command("tail")
def audit_tail(
    path: Annotated[Path, typer.Argument(help="The audit log.")] = DEFAULT_AUDIT,
    lines: Annotated[int, typer.Option("-n", "--lines", min=1)] = 20,
) -> None:
    """Show the last records (not verified: run `audit verify` for that)."""
    from threezone.audit.log import tail
    from threezone.cli.audit_cmd import tail as print_tail

    try:
        records = tail(path, lines)
    except ThreezoneError as exc:
        raise _fail(exc) from exc
    print_tail(console, records)


@app.command()
def doctor(
    backend: Annotated[
        list[str] | None, typer.Option(help="Only this backend (repeatable).")
    ] = None,
) -> None:
    """Start a zone of each role under each backend; show what isolation held inside it."""
    from threezone.cli.doctor_report import print_doctor

    ok = asyncio.run(print_doctor(console, backend))
    raise typer.Exit(0 if ok else 1)


@sandbox_app.command(
    "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def sandbox_run(
    ctx: typer.Context,
    backend: Annotated[str, typer.Option(help="Isolation backend.")] = "sandbox",
    role: Annotated[str, typer.Option(help="Zone role: reader or planner.")] = "reader",
) -> None:
    """Run `-- CMD ARGS...` under exactly the isolation a zone of that role gets."""
    from threezone.backends import get_backend
    from threezone.backends.commands import run_in_zone

    command = list(ctx.args)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command or role not in ("reader", "planner"):
        raise _fail(
            ThreezoneError("usage: threezone sandbox run [--role reader|planner] -- CMD ...")
        )
    try:
        code = asyncio.run(run_in_zone(get_backend(backend), role, command))  # type: ignore[arg-type]
    except ThreezoneError as exc:
        raise _fail(exc) from exc
    raise typer.Exit(code)


@app.command()
def sanitize(
    path: Annotated[str, typer.Argument(help="A raw email or event file, or - for stdin.")],
    channel: Annotated[str, typer.Option(help="email, telegram or slack.")] = "email",
    jsonl: Annotated[
        bool, typer.Option(help='Lines of {"id", "raw"} in, one result per line out.')
    ] = False,
    in_process: Annotated[bool, typer.Option(help="Run the reader here, not in its zone.")] = False,
    backend: Annotated[str, typer.Option(help="Isolation backend for the zone.")] = "sandbox",
) -> None:
    """Run a reader on untrusted input and print its strict JSON (exit 1 if it refused)."""
    import sys

    from threezone.cli.sanitize_cmd import parse_channel, sanitize_one, sanitize_stream

    try:
        chosen = parse_channel(channel)
    except ValueError as exc:
        raise _fail(ThreezoneError(str(exc))) from exc
    source = sys.stdin.buffer if path == "-" else None
    try:
        if jsonl:
            with source or open(path, "rb") as lines:
                failed = asyncio.run(
                    sanitize_stream(lines, sys.stdout, in_process, backend, chosen)
                )
            raise typer.Exit(1 if failed else 0)
        data = source.read() if source else Path(path).read_bytes()
        outcome = asyncio.run(sanitize_one(data, in_process, backend, chosen))
    except OSError as exc:
        raise _fail(ThreezoneError(f"cannot read {path}: {exc.strerror}")) from exc
    except ThreezoneError as exc:
        raise _fail(exc) from exc
    if isinstance(outcome, tuple):
        errors.print(f"refused: {outcome[0]}: {outcome[1]}", highlight=False, markup=False)
        raise typer.Exit(1)
    console.print_json(msgspec.json.encode(outcome).decode())


@policy_app.command("check")
def policy_check(
    directory: Annotated[Path | None, typer.Argument(help="Default: the config's.")] = None,
    config: ConfigOption = Path("threezone.toml"),
) -> None:
    """Report every problem in a policy directory, like a compiler; exit 1 if any."""
    from threezone.cli.policy_cmd import check

    try:
        problems, summary = check(directory, config)
    except ThreezoneError as exc:
        raise _fail(exc) from exc
    for problem in problems:
        errors.print(str(problem), highlight=False, markup=False)
    console.print(summary, highlight=False)
    raise typer.Exit(1 if problems else 0)


@policy_app.command("eval")
def policy_eval(  # noqa: PLR0917 - typer maps each option to one parameter
    action: Annotated[str, typer.Option(help="The action, e.g. email.send.")],
    args: Annotated[str, typer.Option(help='Its arguments as JSON: {"to": "a@b.c"}.')] = "{}",
    trigger: Annotated[
        str, typer.Option(help='The trigger as JSON: {"channel": "email", "sender": ...}.')
    ] = "{}",
    origins: Annotated[
        str,
        typer.Option(
            help='Where arguments came from: {"to": "content"} (trusted|content|planner).'
        ),
    ] = "{}",
    directory: Annotated[Path | None, typer.Option("--dir", help="Policy directory.")] = None,
    config: ConfigOption = Path("threezone.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """The decision and the rule for a hypothetical action (exit 0 allow, 1 deny, 3 ask)."""
    from threezone.cli.policy_cmd import decide

    try:
        verdict = decide(action, args, trigger, directory, config, origins=origins)
    except ThreezoneError as exc:
        raise _fail(exc) from exc
    shown = {
        "decision": verdict.decision,
        "rule": verdict.rule,
        "rule_text": verdict.rule_text,
        "reason": verdict.reason,
    }
    if as_json:
        console.print_json(msgspec.json.encode(shown).decode())
    else:
        console.print(f"{verdict.decision} by {verdict.rule}: {verdict.reason}", highlight=False)
    raise typer.Exit({"allow": 0, "deny": 1, "ask": 3}[verdict.decision])


if __name__ == "__main__":
    app()
