"""A policy directory on disk -> one :class:`Policy`; the only policy module doing I/O.

Files named ``*.policy`` are read in name order and their rules concatenated, so
``10-mail.policy`` is consulted before ``99-default.policy``. Dotfiles are skipped:
editors leave lock and backup files such as ``.#10-mail.policy`` beside the real one.

Loading never raises for a bad policy. Any problem in any file (a parse error, an
unreadable file, bytes that are not UTF-8) yields :meth:`Policy.deny_all` carrying
every problem of every file, because a policy we only half understood must not allow
anything. A missing directory is not a problem: it is a policy with no rules, which
denies everything anyway.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from threezone.errors import PolicyError, PolicyProblem
from threezone.policy.model import Policy, Rule
from threezone.policy.parser import parse_policy

SUFFIX = ".policy"


def load_policy_dir(
    directory: Path, known_lists: frozenset[str] | None = None, relative_to: Path | None = None
) -> Policy:
    """The directory's policy, or a deny-all policy naming every problem found.

    Rules are named ``file:line`` with ``file`` relative to ``relative_to`` when given
    (the config's folder), so audit records read ``policy.d/10-mail.policy:3``.
    """
    rules, problems = _read_dir(directory, known_lists, relative_to)
    if problems:
        return Policy.deny_all(PolicyError(problems))
    return Policy(rules)


def check_policy_dir(
    directory: Path, known_lists: frozenset[str] | None = None, relative_to: Path | None = None
) -> list[PolicyProblem]:
    """Every problem in the directory, first file first; empty when the policy loads."""
    return _read_dir(directory, known_lists, relative_to)[1]


def _read_dir(
    directory: Path, known_lists: frozenset[str] | None, relative_to: Path | None
) -> tuple[tuple[Rule, ...], list[PolicyProblem]]:
    try:
        paths = _policy_files(directory)
    except FileNotFoundError:
        return (), []
    except OSError as exc:
        return (), [_io_problem(directory, "cannot list the policy directory", exc)]
    rules: list[Rule] = []
    problems: list[PolicyProblem] = []
    for path in paths:
        text = _read_text(path)
        if isinstance(text, PolicyProblem):
            problems.append(text)
            continue
        try:
            rules.extend(parse_policy(text, _display(path, relative_to), known_lists))
        except PolicyError as exc:
            problems.extend(exc.problems)
    return tuple(rules), problems


def _display(path: Path, relative_to: Path | None) -> str:
    if relative_to is not None and path.is_relative_to(relative_to):
        return str(path.relative_to(relative_to))
    return str(path)


def _policy_files(directory: Path) -> list[Path]:
    found = [
        path
        for path in directory.iterdir()
        if path.name.endswith(SUFFIX) and not path.name.startswith(".")
    ]
    return sorted(found, key=lambda path: path.name)


def _read_text(path: Path) -> str | PolicyProblem:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _io_problem(path, "cannot read the policy file", exc)
    return _decode(data, str(path))


def _decode(data: bytes, file: str) -> str | PolicyProblem:
    """UTF-8 text (a leading BOM dropped), or a problem at the first bad byte."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line_start = before.rfind(b"\n") + 1
        col = len(before[line_start:].decode("utf-8", errors="replace")) + 1
        line = before.count(b"\n") + 1
        return PolicyProblem(file, line, col, "not valid UTF-8; policy files must be UTF-8 text")


def _io_problem(path: Path, what: str, exc: OSError) -> PolicyProblem:
    """I/O failures have no position; 1:1 keeps the usual file:line:col shape."""
    return PolicyProblem(str(path), 1, 1, f"{what}: {exc.strerror or exc}")
