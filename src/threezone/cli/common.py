"""What every ``threezone`` sub-command shares: the config option and error exits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from threezone.config.load import LoadedConfig, default_config, load_config
from threezone.errors import ThreezoneError

errors = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="threezone.toml (lists, policy directory).")
]


def fail(exc: ThreezoneError, code: int = 2) -> typer.Exit:
    """Print the error once, in one line, and pick the exit code."""
    errors.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    return typer.Exit(code)


def load_config_or_default(path: Path) -> LoadedConfig:
    """The config when it exists; defaults (no lists) otherwise, resolved here."""
    return load_config(path) if path.exists() else default_config(Path.cwd())
