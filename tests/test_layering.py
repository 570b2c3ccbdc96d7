"""DESIGN.md's import rules, enforced by reading every module's imports.

Code that runs inside a zone (zones, readers, sanitize, planner) never imports the
executor, connectors, backends, config, audit or cli; pure packages import no I/O layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "threezone"

ZONE_SIDE = ("zones", "readers", "sanitize", "planner")
FORBIDDEN_IN_ZONES = ("executor", "connectors", "backends", "config", "audit", "cli", "policy")
PURE = ("protocol", "sanitize", "readers")
IO_MODULES = {
    "socket",
    "asyncio",
    "sqlite3",
    "subprocess",
    "threezone.executor",
    "threezone.connectors",
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def modules_in(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


def test_every_zone_package_exists() -> None:
    for package in ZONE_SIDE:
        assert modules_in(package), f"no modules in threezone.{package}"


@pytest.mark.parametrize("package", ZONE_SIDE)
def test_zone_side_never_imports_executor_code(package: str) -> None:
    for path in modules_in(package):
        for name in imports_of(path):
            bad = [
                f"threezone.{f}" for f in FORBIDDEN_IN_ZONES if name.startswith(f"threezone.{f}")
            ]
            assert not bad, f"{path.relative_to(SRC)} imports {name}"


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_do_no_io(package: str) -> None:
    for path in modules_in(package):
        found = {
            n for n in imports_of(path) if any(n == m or n.startswith(m + ".") for m in IO_MODULES)
        }
        assert not found, f"{path.relative_to(SRC)} imports {sorted(found)}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from threezone.executor.inbox import Inbox\nimport socket\n")
    assert {"threezone.executor.inbox", "socket"} <= imports_of(bad)
