"""``threezone.toml`` on disk -> a validated :class:`Config`, or a :class:`ConfigError`.

The error names the file and the key path (``$.executor.backnd``) of the first problem.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import msgspec

from threezone.config.schema import Config
from threezone.errors import ConfigError

# msgspec ends a validation message with " - at `$.a.b`"; we lift the path into a field
# so callers never have to parse the rendered text.
_AT_PATH = re.compile(r"^(?P<detail>.*?)(?: - at (?:`key` in )?`(?P<path>\$[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"unknown field `(?P<name>[^`]*)`")


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A config plus the directory its relative paths are resolved against."""

    config: Config
    base: Path
    path: Path | None

    def resolve(self, relative: str) -> Path:
        candidate = Path(relative).expanduser()
        return candidate if candidate.is_absolute() else self.base / candidate

    @property
    def lists(self) -> dict[str, frozenset[str]]:
        return {
            name: frozenset(v.lower() for v in values) for name, values in self.config.lists.items()
        }


def parse_config(text: str, source: str = "<string>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from exc
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(source, *_split_validation(str(exc))) from exc


def _split_validation(message: str) -> tuple[str, str]:
    """(key path, detail) from msgspec's message; an unknown key's own name joins the path."""
    match = _AT_PATH.match(message)
    if match is None:
        return "$", message
    key_path, detail = match["path"] or "$", match["detail"]
    unknown = _UNKNOWN.search(detail)
    if unknown:
        key_path = f"{key_path}.{unknown['name']}"
        detail = "unknown key (not part of the schema)"
    return key_path, detail


def load_config(path: Path) -> LoadedConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc}") from exc
    return LoadedConfig(parse_config(text, str(path)), path.parent.resolve(), path)


def default_config(base: Path) -> LoadedConfig:
    return LoadedConfig(Config(), base.resolve(), None)
