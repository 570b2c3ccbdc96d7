"""``threezone secrets init|set|list|check``: the owner's credentials, encrypted at rest.

No command prints a secret value, and none takes one from the command line (argv is
visible to every user in ``ps`` and lands in shell history): ``set`` reads it from a
no-echo prompt, or from standard input when that is not a terminal.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from threezone.config.load import LoadedConfig, default_config, load_config
from threezone.errors import SecretsError, ThreezoneError

if TYPE_CHECKING:  # the crypto imports wait until a secrets command runs (fast CLI start)
    from threezone.executor.secrets import SecretStore

secrets_app = typer.Typer(
    no_args_is_help=True, help="Manage the encrypted credentials (values are never shown)."
)

ConfigOption = Annotated[
    Path, typer.Option("--config", help="threezone.toml: its [secrets] file and identity.")
]


def _config(path: Path) -> LoadedConfig:
    """The config when it exists; defaults (no secrets file) otherwise."""
    return load_config(path) if path.exists() else default_config(Path.cwd())


def _fail(exc: ThreezoneError) -> typer.Exit:
    message = " ".join(str(exc).split())  # always one line
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def read_value(name: str, stream: TextIO, interactive: bool) -> str:
    """The new value: typed twice without echo on a terminal, else all of ``stream``.

    One trailing newline is dropped (``echo "$TOKEN" |`` adds it); nothing else is.
    """
    from threezone.executor.secrets import MAX_VALUE_BYTES

    if interactive:
        value = str(typer.prompt(f"Value for {name}", hide_input=True, confirmation_prompt=True))
    else:
        value = stream.read(MAX_VALUE_BYTES + 1)
        value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise SecretsError("<stdin>", f"empty value for {name}; nothing stored")
    return value


@secrets_app.command("init")
def init(config: ConfigOption = Path("threezone.toml")) -> None:
    """Create the age key file (0600) if absent and an empty secrets file."""
    from threezone.executor.secrets import init_secrets

    try:
        loaded = _config(config)
        report = init_secrets(loaded.config.secrets, loaded.resolve)
    except ThreezoneError as exc:
        raise _fail(exc) from exc
    verb = "created" if report.key_created else "using existing"
    typer.echo(f"{verb} age key {report.key_path} (public key {', '.join(report.public_keys)})")
    typer.echo(f"created empty secrets file {report.store_path}")
    if report.key_created:
        typer.echo("back up the key file: without it the secrets cannot be decrypted")


@secrets_app.command("set")
def set_(
    name: Annotated[str, typer.Argument(help="The secret's name, e.g. SMTP_PASSWORD.")],
    config: ConfigOption = Path("threezone.toml"),
) -> None:
    """Store one secret; the value comes from a hidden prompt or standard input."""
    from threezone.executor.secrets import NAME_PATTERN, load_secrets, set_secret

    try:
        loaded = _config(config)
        if not NAME_PATTERN.fullmatch(name):
            raise SecretsError(
                name, "not a secret name", "letters, digits and _; not a digit first"
            )
        load_secrets(loaded.config.secrets, loaded.resolve)  # fail before asking for the value
        value = read_value(name, sys.stdin, sys.stdin.isatty())
        store = set_secret(loaded.config.secrets, loaded.resolve, name, value)
    except ThreezoneError as exc:
        raise _fail(exc) from exc
    for warning in store.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"stored {name} ({len(store)} secret(s) in {store.source})")


@secrets_app.command("list")
def list_(config: ConfigOption = Path("threezone.toml")) -> None:
    """Print the names of the stored secrets, one per line (never their values)."""
    store = _load(config)[1]
    for name in store.names():
        typer.echo(name)


@secrets_app.command("check")
def check(config: ConfigOption = Path("threezone.toml")) -> None:
    """Decrypt and verify the secrets file as the executor would; report count and warnings."""
    loaded, store = _load(config)
    for warning in store.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if not loaded.config.secrets.file:
        typer.echo("OK: no [secrets] file is configured; the executor holds no secrets")
        return
    typer.echo(f"OK: {len(store)} secret(s) in {store.source}")


def _load(config: Path) -> tuple[LoadedConfig, SecretStore]:
    from threezone.executor.secrets import load_secrets

    try:
        loaded = _config(config)
        return loaded, load_secrets(loaded.config.secrets, loaded.resolve)
    except ThreezoneError as exc:
        raise _fail(exc) from exc
