"""threezone.toml: strict schema, errors that name the file and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from threezone.config import load_config, parse_config
from threezone.demo import config_text
from threezone.errors import ConfigError


def test_demo_config_parses() -> None:
    config = parse_config(config_text())
    assert config.channels.email is not None
    assert config.lists["contacts"] == ["alice@partner.example", "bob@partner.example"]


def test_empty_config_gets_defaults() -> None:
    config = parse_config("")
    assert config.executor.backend == "sandbox"
    assert config.channels.email is None


@pytest.mark.parametrize(
    ("text", "key_path"),
    [
        ("[executor]\nbackend_name = 'x'", "$.executor.backend_name"),
        ("surprise = 1", "$.surprise"),
        ("[channels.email]\nmaildir = 3", "$.channels.email.maildir"),
        ("[executor]\nbackend = 'docker'", "$.executor.backend"),
        ("[executor]\nrequest_timeout = -1", "$.executor.request_timeout"),
        ("[qemu]\nmemory_mb = 64", "$.qemu.memory_mb"),
        ("[qemu]\naccel = 'hvf'", "$.qemu.accel"),
        ("[readers.email]\ndisposable = 'yes'", "$.readers.email.disposable"),
        ("[readers.fax]\ndisposable = true", "$.readers.fax"),
    ],
)
def test_errors_name_the_key_path(text: str, key_path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "threezone.toml")
    assert caught.value.key_path == key_path
    assert str(caught.value).startswith(f"threezone.toml: {key_path}: ")


def test_invalid_toml_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^cfg.toml: not valid TOML"):
        parse_config("[executor\n", "cfg.toml")


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "threezone.toml"
    path.write_text("[executor]\nstate_dir = 'st'\n")
    loaded = load_config(path)
    assert loaded.resolve(loaded.config.executor.state_dir) == tmp_path.resolve() / "st"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_lists_are_lowercased_for_matching() -> None:
    from threezone.config.load import LoadedConfig

    loaded = LoadedConfig(
        parse_config("[lists]\ncontacts = ['Alice@Example.COM']"), Path("."), None
    )
    assert loaded.lists == {"contacts": frozenset({"alice@example.com"})}
