"""``threezone audit verify|tail``: what was done to the log, in the owner's words.

``verify`` prints each finding as ``source:line: kind: detail`` on stderr (like a
compiler), the summary, the key it trusted and what it could not check on stdout, and
exits 0 only when nothing was found. ``--json`` prints the whole report as one object.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from rich.console import Console
from rich.markup import escape

from threezone.audit.chain import CHECKPOINT_KIND
from threezone.audit.checkpoint import CheckpointLines
from threezone.audit.log import read_checkpoint_lines
from threezone.audit.verify import AuditReport, verify_log
from threezone.errors import AuditError

_JSON_PREFIX = "{"


def verify(
    console: Console,
    errors: Console,
    path: Path,
    *,
    public_keys: list[Path],
    anchors: list[str],
    as_json: bool,
) -> int:
    """Verify ``path``, print the report, return the exit code (0 clean, 1 findings).

    Raises ``AuditError`` when the log, a key or an anchor cannot be read (exit 2).
    """
    report = verify_log(
        path,
        public_keys=public_keys or None,
        anchors=[_anchor(value, index) for index, value in enumerate(anchors, start=1)],
    )
    if as_json:
        console.out(msgspec.json.encode(_as_json(report)).decode(), highlight=False)
    else:
        _print_report(console, errors, report)
    return 0 if report.clean else 1


def tail(console: Console, records: list[dict[str, object]]) -> None:
    """Print records one per line; a checkpoint shows what it covers and its key."""
    for record in records:
        seq, ts, kind = (escape(str(record.get(field))) for field in ("seq", "ts", "kind"))
        text = f"[dim]{seq} {ts}[/] [bold]{kind}[/] {escape(_describe(record))}"
        console.print(text, highlight=False, soft_wrap=True)


# --- helpers ----------------------------------------------------------------------------------


def _anchor(value: str, index: int) -> CheckpointLines:
    """``--anchor``: a checkpoint's JSON itself, or a file of them (one per line), such as
    what an anchor command appended to; blank lines are skipped."""
    if value.lstrip().startswith(_JSON_PREFIX):
        lines = value.encode().strip().splitlines()
        return CheckpointLines(f"anchor#{index}", tuple(enumerate(lines, start=1)))
    path = Path(value)
    if not path.is_file():
        raise AuditError(value, "--anchor is neither checkpoint JSON nor a readable file")
    read = read_checkpoint_lines(path)
    kept = tuple((line, raw) for line, raw in read.lines if raw.strip())
    return CheckpointLines(read.source, kept, read.torn)


def _print_report(console: Console, errors: Console, report: AuditReport) -> None:
    for finding in report.findings:
        errors.print(str(finding), highlight=False, markup=False, soft_wrap=True)
    summary = (
        f"{report.head.seq + 1} records, head {report.head.hash[:16]}, "
        f"{report.checkpoints} checkpoint(s)"
    )
    if report.clean:
        console.print(
            f"{report.path}: OK, {summary}", highlight=False, markup=False, soft_wrap=True
        )
    else:
        count = len(report.findings)
        errors.print(
            f"{report.path}: {count} finding{'s' * (count != 1)} ({summary})",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    for key_id, key_path in report.keys:
        console.print(
            f"trusted key: {key_id} ({key_path})", highlight=False, markup=False, soft_wrap=True
        )
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


def _as_json(report: AuditReport) -> dict[str, object]:
    return {
        "path": str(report.path),
        "clean": report.clean,
        "lines": report.lines,
        "head": {"seq": report.head.seq, "hash": report.head.hash},
        "checkpoints": report.checkpoints,
        "keys": [{"key_id": key_id, "path": str(path)} for key_id, path in report.keys],
        "findings": [finding.to_json() for finding in report.findings],
        "notes": list(report.notes),
    }


def _describe(record: dict[str, object]) -> str:
    data = record.get("data", {})
    if record.get("kind") == CHECKPOINT_KIND and isinstance(data, dict):
        return (
            f"covers seq {data.get('seq')} (hash {str(data.get('hash'))[:16]}, "
            f"key {str(data.get('key_id'))[:16]})"
        )
    return msgspec.json.encode(data).decode()
