"""The commands as a user runs them: `threezone demo` and `threezone audit`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "threezone"]


def threezone(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "120"},
    )


def test_demo_stops_the_attack_and_verifies_its_audit_log(tmp_path: Path) -> None:
    workspace = tmp_path / "demo"
    result = threezone("demo", "--planner", "hijacked", "--keep", str(workspace))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No attacker action was executed." in result.stdout
    assert "ran under sandbox: 19 of 19 isolation probes held" in result.stdout
    assert result.stdout.count("DENY by rule policy.d/10-demo.policy:") == 2
    assert result.stdout.count("ALLOW by rule policy.d/10-demo.policy:") == 1
    audit = workspace / "state" / "audit.jsonl"
    verified = threezone("audit", "verify", str(audit))
    assert verified.returncode == 0
    assert "OK" in verified.stdout
    tail = threezone("audit", "tail", str(audit), "-n", "2")
    assert tail.returncode == 0
    assert "executor_stopped" in tail.stdout
    audit.write_text(audit.read_text().replace('"decision":"deny"', '"decision":"allow"', 1))
    broken = threezone("audit", "verify", str(audit))
    assert broken.returncode == 1
    assert "edited" in broken.stderr


def test_demo_refuses_a_non_empty_keep_folder(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("mine")
    result = threezone("demo", "--keep", str(tmp_path))
    assert result.returncode == 2
    assert "not empty" in result.stderr
    assert (tmp_path / "something").read_text() == "mine"  # nothing of the user's touched


def test_audit_verify_on_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = threezone("audit", "verify", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 2
    assert "nope.jsonl" in result.stderr


def demo_policy_workspace(tmp_path: Path) -> Path:
    from threezone.demo import build_workspace

    build_workspace(tmp_path)
    return tmp_path


def run_in(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=folder,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


def test_policy_check_passes_a_good_policy_and_lists_every_problem(tmp_path: Path) -> None:
    workspace = demo_policy_workspace(tmp_path)
    good = run_in(workspace, "policy", "check")
    assert good.returncode == 0
    assert "OK: 5 rule(s)" in good.stdout
    (workspace / "policy.d" / "20-bad.policy").write_text("email.send to=@contcts alow\n")
    bad = run_in(workspace, "policy", "check")
    assert bad.returncode == 1
    assert "policy.d/20-bad.policy:1:15: unknown list '@contcts'" in bad.stderr
    assert "policy.d/20-bad.policy:1:24:" in bad.stderr
    assert "2 problem(s)" in bad.stdout


def test_policy_eval_answers_with_the_rule_and_an_exit_code(tmp_path: Path) -> None:
    import json

    workspace = demo_policy_workspace(tmp_path)
    allowed = run_in(
        workspace,
        "policy",
        "eval",
        "--action",
        "email.reply",
        "--args",
        '{"to": "alice@partner.example"}',
        "--trigger",
        '{"sender": "alice@partner.example"}',
        "--json",
    )
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["rule"] == "policy.d/10-demo.policy:8"
    unauthenticated = run_in(
        workspace,
        "policy",
        "eval",
        "--action",
        "email.reply",
        "--args",
        '{"to": "alice@partner.example"}',
        "--json",
    )
    assert unauthenticated.returncode == 1  # no authenticated sender: the reply rule fails
    flagged = run_in(
        workspace,
        "policy",
        "eval",
        "--action",
        "email.send",
        "--args",
        '{"to": "a@b.c"}',
        "--trigger",
        '{"flagged": true}',
        "--json",
    )
    assert (flagged.returncode, json.loads(flagged.stdout)["rule"]) == (
        1,
        "policy.d/10-demo.policy:5",
    )
    held = run_in(
        workspace,
        "policy",
        "eval",
        "--action",
        "email.send",
        "--args",
        '{"to": "bob@partner.example"}',
        "--json",
    )
    assert (held.returncode, json.loads(held.stdout)["decision"]) == (3, "ask")
    broken = run_in(workspace, "policy", "eval", "--action", "email.send", "--args", "{bad")
    assert broken.returncode == 2
    assert "--args" in broken.stderr


def test_sanitize_runs_the_reader_in_its_zone_and_prints_strict_json(tmp_path: Path) -> None:
    import json

    from threezone.demo import hidden

    raw = tmp_path / "hidden.eml"
    raw.write_bytes(hidden())
    result = run_in(tmp_path, "sanitize", str(raw))
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout)
    assert message["sanitized"] is True
    assert message["injection"]["flagged"] is True
    assert "API keys" not in message["body"]


def test_sanitize_jsonl_streams_one_result_per_line(tmp_path: Path) -> None:
    import json

    from threezone.demo import hidden, meeting

    lines = [
        json.dumps({"id": 1, "raw": meeting().decode()}),
        "this is not json",
        json.dumps({"id": "b", "raw": hidden().decode()}),
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = run_in(tmp_path, "sanitize", "--jsonl", str(source))
    assert result.returncode == 1  # one line was refused
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["id"] for o in out] == [1, None, "b"]
    assert out[0]["result"]["injection"]["flagged"] is False
    assert out[1]["error"]["code"] == "bad_line"
    assert out[2]["result"]["injection"]["flagged"] is True


def test_sanitize_says_clearly_what_it_cannot_do(tmp_path: Path) -> None:
    missing = run_in(tmp_path, "sanitize", str(tmp_path / "nope.eml"))
    assert (missing.returncode, "cannot read" in missing.stderr) == (2, True)
    other = run_in(tmp_path, "sanitize", "--channel", "fax", "-")
    assert (other.returncode, "no reader for channel 'fax'" in other.stderr) == (2, True)


FIXTURES = Path(__file__).parent / "fixtures"


def test_sanitize_reads_a_telegram_update_in_its_zone(tmp_path: Path) -> None:
    import json

    update = FIXTURES / "telegram" / "spoiler_injection.json"
    result = run_in(tmp_path, "sanitize", "--channel", "telegram", str(update))
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout)
    assert (message["channel"], message["from"]) == ("telegram", "tg:5112233445 @dana_k")
    assert message["injection"]["flagged"] is True
    refused = run_in(
        tmp_path, "sanitize", "--channel", "telegram", "--in-process", str(update.parent)
    )
    assert refused.returncode == 2  # a directory is not a file: "cannot read"


def test_sanitize_jsonl_takes_slack_events_as_objects_or_strings(tmp_path: Path) -> None:
    import json

    event = json.loads((FIXTURES / "slack" / "bot_blocks_disagree.json").read_text())
    edit = (FIXTURES / "slack" / "message_changed.json").read_text()
    lines = [
        json.dumps({"id": 1, "raw": event}),
        json.dumps({"id": 2, "raw": edit}),
        json.dumps({"id": 3, "raw": [1, 2]}),
        json.dumps({"id": 4, "raw": "{not json"}),
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = run_in(tmp_path, "sanitize", "--channel", "slack", "--jsonl", str(source))
    assert result.returncode == 1, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["id"] for o in out] == [1, 2, 3, 4]
    assert out[0]["result"]["injection"]["flagged"] is True
    assert out[1]["result"]["body"] == "Deck moved to Tuesday"
    assert out[2]["error"]["code"] == "bad_line"
    assert out[3]["error"]["code"] == "malformed_input"  # refused by the reader, in its zone
    email = run_in(tmp_path, "sanitize", "--jsonl", "--in-process", str(source))
    assert json.loads(email.stdout.splitlines()[0])["error"]["detail"].startswith("`raw` must be")
