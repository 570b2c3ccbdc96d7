"""``threezone policy check|eval``: the policy as a user edits and questions it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import msgspec

from threezone.cli.common import load_config_or_default
from threezone.config.load import LoadedConfig
from threezone.errors import ConfigError, PolicyProblem
from threezone.policy.evaluate import evaluate
from threezone.policy.loader import check_policy_dir, load_policy_dir
from threezone.policy.model import Origin, PolicyDecision
from threezone.protocol.messages import ArgValue, Trigger

T = TypeVar("T")


_config = load_config_or_default


def _directory(loaded: LoadedConfig, directory: Path | None) -> Path:
    return directory if directory is not None else loaded.resolve(loaded.config.policy.dir)


def check(directory: Path | None, config: Path) -> tuple[list[PolicyProblem], str]:
    loaded = _config(config)
    where = _directory(loaded, directory)
    if not where.is_dir():
        raise ConfigError(str(where), "", "no such policy directory")
    problems = check_policy_dir(where, frozenset(loaded.config.lists), relative_to=Path.cwd())
    if problems:
        return problems, f"{len(problems)} problem(s): every action would be denied"
    policy = load_policy_dir(where, frozenset(loaded.config.lists))
    files = len({rule.file for rule in policy.rules})
    return [], f"OK: {len(policy.rules)} rule(s) in {files} file(s) under {where}"


def decide(
    action: str,
    args: str,
    trigger: str,
    directory: Path | None,
    config: Path,
    *,
    origins: str = "{}",
) -> PolicyDecision:
    loaded = _config(config)
    where = _directory(loaded, directory)
    policy = load_policy_dir(where, frozenset(loaded.config.lists), relative_to=Path.cwd())
    arguments = _json(args, dict[str, ArgValue], "--args")
    found = _json(origins, dict[str, Origin], "--origins")
    return evaluate(policy, action, arguments, _trigger(trigger), loaded.lists, origins=found)


def _trigger(text: str) -> Trigger:
    given = _json(text, dict[str, object], "--trigger")
    defaults: dict[str, object] = {
        "channel": "email",
        "account": "",
        "sender": None,
        "sender_authenticated": given.get("sender") is not None,
        "received_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "flagged": False,
    }
    return _convert({**defaults, **given}, Trigger, "--trigger")


def _json(text: str, kind: type[T], option: str) -> T:
    try:
        return msgspec.json.decode(text, type=kind)
    except msgspec.DecodeError as exc:
        raise ConfigError(option, "", f"not valid JSON of the right shape: {exc}") from exc


def _convert(value: object, kind: type[T], option: str) -> T:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(option, "", str(exc)) from exc
