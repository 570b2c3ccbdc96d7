"""``threezone init``: a set-up that loads, checks, and keeps credentials encrypted."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from threezone.cli.main import app
from threezone.config.load import load_config
from threezone.executor.secrets import load_secrets
from threezone.policy.loader import check_policy_dir

ARGS = [
    "--non-interactive",
    "--owner",
    "me@example.com",
    "--channel",
    "email",
    "--channel",
    "telegram",
    "--imap-host",
    "imap.example.com",
    "--smtp-host",
    "smtp.example.com",
    "--telegram-owner-chat",
    "4242",
    "--llm-provider",
    "openai",
    "--llm-model",
    "local",
    "--llm-base-url",
    "http://127.0.0.1:8080/v1",
]


def test_init_writes_a_setup_that_loads_and_stores_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_PASSWORD", "pw-" + "x" * 20)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:" + "y" * 30)
    result = CliRunner().invoke(app, ["init", str(tmp_path), *ARGS])
    assert result.exit_code == 0, result.output
    assert "still needed: threezone secrets set LLM_API_KEY" in result.output
    loaded = load_config(tmp_path / "threezone.toml")
    config = loaded.config
    assert config.channels.email is not None
    assert config.channels.email.imap.host == "imap.example.com"
    assert config.channels.telegram is not None
    assert config.channels.telegram.owner_chat == 4242
    assert config.llm.provider == "openai"
    assert config.planner.kind == "llm"  # a configured provider is the one the planner uses
    hosts = {(rule.connector, rule.host, rule.port) for rule in config.egress.allow}
    assert ("telegram", "api.telegram.org", 443) in hosts
    assert ("llm", "127.0.0.1", 8080) in hosts
    assert check_policy_dir(loaded.resolve("policy.d"), frozenset(config.lists)) == []
    store = load_secrets(config.secrets, loaded.resolve)
    assert store.names() == ["EMAIL_PASSWORD", "TELEGRAM_BOT_TOKEN"]
    key = loaded.resolve("keys/age.key")
    assert key.stat().st_mode & 0o077 == 0
    for path in tmp_path.rglob("*"):  # no credential lies around in plain text
        if path.is_file():
            assert b"x" * 20 not in path.read_bytes()
            assert b"y" * 30 not in path.read_bytes()


def test_init_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "threezone.toml").write_text("# mine\n")
    result = CliRunner().invoke(app, ["init", str(tmp_path), *ARGS])
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert (tmp_path / "threezone.toml").read_text() == "# mine\n"


def test_init_refuses_an_unknown_channel(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["init", str(tmp_path), "--non-interactive", "--owner", "a@b.c", "--channel", "fax"]
    )
    assert result.exit_code == 1
    assert "unknown channel(s): fax" in result.output
    assert not (tmp_path / "threezone.toml").exists()


def test_without_a_provider_init_chooses_the_local_model(tmp_path: Path) -> None:
    args = ["--non-interactive", "--owner", "me@example.com", "--channel", "telegram"]
    result = CliRunner().invoke(app, ["init", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    assert load_config(tmp_path / "threezone.toml").config.planner.kind == "local"
