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
    result = threezone("demo", "--keep", str(workspace))
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
