"""Secrets at rest (age, sops JSON) and in memory: every claim tried against an attacker.

The sops files these tests need are written by a small test-only encryptor that follows
sops' format (aes/cipher.go, sops.go); one real sops-written file (tests/data/secrets)
checks the reader against sops itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pyrage  # type: ignore[import-untyped]  # pyrage 1.4 ships no type information
import pytest
import typer
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from threezone.cli.secrets_cmd import secrets_app
from threezone.config.load import LoadedConfig
from threezone.config.schema import Config, SecretsConfig
from threezone.errors import SecretsError, UnknownSecretError
from threezone.executor.secrets import (
    SecretStore,
    decrypt_sops_json,
    init_secrets,
    load_secrets,
    read_age_key,
    set_secret,
)

DATA = Path(__file__).parent / "data" / "secrets"
TOKEN = "sk-live-4f9c2a7be1d04c3f9a55"
PASSWORD = "correct horse battery staple"

Resolve = Callable[[str], Path]


def resolver(base: Path) -> Resolve:
    return LoadedConfig(Config(), base, None).resolve


def write_key(path: Path, mode: int = 0o600) -> Any:
    identity = pyrage.x25519.Identity.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# a comment\n\n# public key: {identity.to_public()}\n{identity}\n")
    path.chmod(mode)
    return identity


# --- a test-only sops encryptor, faithful to sops' JSON format --------------------------------


def sops_leaf(value: str, key: bytes, aad: str) -> str:
    if value == "":
        return ""
    iv = os.urandom(32)
    sealed = AESGCM(key).encrypt(iv, value.encode(), aad.encode())
    parts = (sealed[:-16], iv, sealed[-16:])
    data, iv64, tag = (base64.b64encode(p).decode() for p in parts)
    return f"ENC[AES256_GCM,data:{data},iv:{iv64},tag:{tag},type:str]"


def sops_encrypt(
    values: dict[str, str],
    recipient: Any,
    *,
    lastmodified: str = "2026-01-02T03:04:05Z",
    mac_aad: str = "2026-01-02T03:04:05Z",
    mac_only_encrypted: bool = False,
) -> dict[str, Any]:
    """Like `sops encrypt` of a flat JSON object (default rule: *_unencrypted stays clear)."""
    key = os.urandom(32)
    digest = hashlib.sha512(hashlib.sha256(b"sops").digest() if mac_only_encrypted else b"")
    document: dict[str, Any] = {}
    for name, value in values.items():
        clear = name.endswith("_unencrypted")
        if not (clear and mac_only_encrypted):
            digest.update(value.encode())
        document[name] = value if clear else sops_leaf(value, key, f"{name}:")
    stanza = pyrage.encrypt(key, [recipient], armored=True).decode()
    document["sops"] = {
        "age": [{"recipient": str(recipient), "enc": stanza}],
        "lastmodified": lastmodified,
        "mac": sops_leaf(digest.hexdigest().upper(), key, mac_aad),
        "unencrypted_suffix": "_unencrypted",
        "version": "3.9.0",
    }
    if mac_only_encrypted:
        document["sops"]["mac_only_encrypted"] = True
    return document


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "cfg").mkdir()
    return tmp_path / "cfg"


def sops_setup(home: Path, document: dict[str, Any]) -> SecretsConfig:
    (home / "secrets.sops.json").write_text(json.dumps(document, indent=2))
    return SecretsConfig(file="secrets.sops.json", identity="keys/age.key")


def sops_world(home: Path, values: dict[str, str], **options: Any) -> dict[str, Any]:
    identity = write_key(home / "keys" / "age.key")
    return sops_encrypt(values, identity.to_public(), **options)


def load_sops(home: Path, document: dict[str, Any]) -> SecretStore:
    return load_secrets(sops_setup(home, document), resolver(home))


# --- age format: init, set, load --------------------------------------------------------------

AGE = SecretsConfig(file="secrets.age", identity="keys/age.key")


def test_init_set_load_round_trip(home: Path) -> None:
    report = init_secrets(AGE, resolver(home))
    assert report.key_created
    assert report.public_keys[0].startswith("age1")
    assert load_secrets(AGE, resolver(home)).names() == []
    set_secret(AGE, resolver(home), "SMTP_PASSWORD", PASSWORD)
    set_secret(AGE, resolver(home), "API_TOKEN", "old value, replaced below")
    set_secret(AGE, resolver(home), "API_TOKEN", TOKEN)
    store = load_secrets(AGE, resolver(home))
    assert store.names() == ["API_TOKEN", "SMTP_PASSWORD"]
    assert store.get("API_TOKEN") == TOKEN
    assert store.get("SMTP_PASSWORD") == PASSWORD


def test_init_makes_a_private_key_and_directory(home: Path) -> None:
    init_secrets(AGE, resolver(home))
    key = home / "keys" / "age.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "secrets.age").stat().st_mode) == 0o600
    assert read_age_key(key).public_keys  # the file it wrote is one it reads


def test_init_never_overwrites(home: Path) -> None:
    init_secrets(AGE, resolver(home))
    set_secret(AGE, resolver(home), "API_TOKEN", TOKEN)
    key_before = (home / "keys" / "age.key").read_bytes()
    store_before = (home / "secrets.age").read_bytes()
    with pytest.raises(SecretsError, match="already exists"):
        init_secrets(AGE, resolver(home))
    assert (home / "keys" / "age.key").read_bytes() == key_before
    assert (home / "secrets.age").read_bytes() == store_before


def test_init_reuses_an_existing_key(home: Path) -> None:
    identity = write_key(home / "keys" / "age.key")
    report = init_secrets(AGE, resolver(home))
    assert not report.key_created
    assert report.public_keys == (str(identity.to_public()),)


def test_init_refuses_a_new_key_for_an_existing_store(home: Path) -> None:
    (home / "secrets.age").write_bytes(b"age-encryption.org/v1\n")
    with pytest.raises(SecretsError, match="already exists"):
        init_secrets(AGE, resolver(home))
    assert not (home / "keys" / "age.key").exists()


def test_set_leaves_no_plaintext_on_disk(home: Path) -> None:
    init_secrets(AGE, resolver(home))
    set_secret(AGE, resolver(home), "API_TOKEN", TOKEN)
    set_secret(AGE, resolver(home), "SMTP_PASSWORD", PASSWORD)
    files = [p for p in home.parent.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["age.key", "secrets.age"]  # no temp file left
    for path in files:
        data = path.read_bytes()
        for value in (TOKEN, PASSWORD, "API_TOKEN"):
            assert value.encode() not in data, path
            assert value.encode().hex().encode() not in data.lower(), path
    assert stat.S_IMODE((home / "secrets.age").stat().st_mode) == 0o600


def test_set_refuses_bad_names_and_empty_values(home: Path) -> None:
    init_secrets(AGE, resolver(home))
    for name, value in (("1ST", TOKEN), ("has-dash", TOKEN), ("", TOKEN), ("OK", "")):
        with pytest.raises(SecretsError):
            set_secret(AGE, resolver(home), name, value)
    assert load_secrets(AGE, resolver(home)).names() == []


def test_set_does_not_write_sops_files(home: Path) -> None:
    config = SecretsConfig(file="secrets.sops.json", identity="keys/age.key")
    with pytest.raises(SecretsError, match="only age"):
        set_secret(config, resolver(home), "API_TOKEN", TOKEN)


def test_no_file_configured_means_no_secrets(home: Path) -> None:
    store = load_secrets(SecretsConfig(), resolver(home))
    assert len(store) == 0
    assert store.leaks(TOKEN) == []


def test_missing_store_names_the_fix(home: Path) -> None:
    write_key(home / "keys" / "age.key")
    with pytest.raises(SecretsError) as caught:
        load_secrets(AGE, resolver(home))
    assert caught.value.fix == "threezone secrets init"


def test_wrong_identity_is_refused(home: Path) -> None:
    init_secrets(AGE, resolver(home))
    set_secret(AGE, resolver(home), "API_TOKEN", TOKEN)
    write_key(home / "other.key")
    other = SecretsConfig(file="secrets.age", identity="other.key")
    with pytest.raises(SecretsError, match="cannot decrypt"):
        load_secrets(other, resolver(home))


def test_tampered_age_store_is_refused(home: Path) -> None:
    init_secrets(AGE, resolver(home))
    set_secret(AGE, resolver(home), "API_TOKEN", TOKEN)
    data = bytearray((home / "secrets.age").read_bytes())
    data[-5] ^= 0x01
    (home / "secrets.age").write_bytes(bytes(data))
    with pytest.raises(SecretsError):
        load_secrets(AGE, resolver(home))


# --- the key file ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_readable_by_others_is_refused(home: Path, mode: int) -> None:
    write_key(home / "keys" / "age.key", mode)
    with pytest.raises(SecretsError) as caught:
        read_age_key(home / "keys" / "age.key")
    assert caught.value.fix == f"chmod 600 {home / 'keys' / 'age.key'}"
    assert "chmod 600" in str(caught.value)


def test_key_mode_0400_is_fine(home: Path) -> None:
    write_key(home / "age.key", 0o400)
    assert len(read_age_key(home / "age.key").identities) == 1


def test_key_symlink_is_refused(home: Path) -> None:
    write_key(home / "real.key")
    (home / "link.key").symlink_to(home / "real.key")
    with pytest.raises(SecretsError, match="symbolic link"):
        read_age_key(home / "link.key")


def test_key_that_is_not_a_regular_file_is_refused(home: Path) -> None:
    os.mkfifo(home / "fifo.key", 0o600)  # would block a naive open()
    with pytest.raises(SecretsError, match="not a regular file"):
        read_age_key(home / "fifo.key")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another uid")
def test_key_owned_by_someone_else_is_refused(home: Path) -> None:
    write_key(home / "age.key")
    os.chown(home / "age.key", 65534, 65534)
    with pytest.raises(SecretsError, match="not by you"):
        read_age_key(home / "age.key")


def test_key_file_errors_never_echo_key_material(home: Path) -> None:
    secret_looking = "AGE-SECRET-KEY-1NOTVALIDBECH32ATALLXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
    path = home / "age.key"
    path.write_text(f"# ok\n{secret_looking}\n")
    path.chmod(0o600)
    with pytest.raises(SecretsError, match="line 2") as caught:
        read_age_key(path)
    assert secret_looking not in str(caught.value)
    path.write_text("garbage-with-key-bytes\n")
    with pytest.raises(SecretsError, match="line 1") as caught:
        read_age_key(path)
    assert "garbage" not in str(caught.value)


# --- sops --------------------------------------------------------------------------------------


def test_real_sops_file_decrypts_and_its_mac_verifies() -> None:
    identity = pyrage.ssh.Identity.from_buffer((DATA / "sops-nix-ssh-ed25519-key").read_bytes())
    document = (DATA / "sops-nix-native-ssh.sops.json").read_bytes()
    assert decrypt_sops_json(document, [identity], "fixture") == {"test_key": "test_value"}


def test_real_sops_file_with_one_flipped_bit_is_refused() -> None:
    identity = pyrage.ssh.Identity.from_buffer((DATA / "sops-nix-ssh-ed25519-key").read_bytes())
    document = json.loads((DATA / "sops-nix-native-ssh.sops.json").read_text())
    document["test_key"] = document["test_key"].replace("data:TqlrhelN", "data:TqlrhelM")
    with pytest.raises(SecretsError, match="does not authenticate"):
        decrypt_sops_json(json.dumps(document).encode(), [identity], "fixture")


def test_sops_round_trip(home: Path) -> None:
    store = load_sops(home, sops_world(home, {"API_TOKEN": TOKEN, "SMTP_PASSWORD": PASSWORD}))
    assert store.names() == ["API_TOKEN", "SMTP_PASSWORD"]
    assert store.get("SMTP_PASSWORD") == PASSWORD


def test_sops_mac_only_encrypted_round_trip(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN}, mac_only_encrypted=True)
    assert load_sops(home, document).get("API_TOKEN") == TOKEN


def test_sops_lastmodified_is_read_as_go_renders_it(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN}, lastmodified="2026-01-02T03:04:05.5+00:00")
    assert load_sops(home, document).get("API_TOKEN") == TOKEN


def test_sops_wrong_identity_is_refused(home: Path) -> None:
    stranger = pyrage.x25519.Identity.generate().to_public()
    write_key(home / "keys" / "age.key")
    with pytest.raises(SecretsError, match="no age recipient"):
        load_sops(home, sops_encrypt({"API_TOKEN": TOKEN}, stranger))


def test_sops_tampered_ciphertext_is_refused(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN})
    leaf = document["API_TOKEN"]
    data = leaf.split("data:")[1].split(",")[0]
    raw = bytearray(base64.b64decode(data))
    raw[0] ^= 0x01
    document["API_TOKEN"] = leaf.replace(data, base64.b64encode(bytes(raw)).decode())
    with pytest.raises(SecretsError, match="does not authenticate"):
        load_sops(home, document)


def test_sops_values_swapped_between_keys_are_refused(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN, "SMTP_PASSWORD": PASSWORD})
    document["API_TOKEN"], document["SMTP_PASSWORD"] = (
        document["SMTP_PASSWORD"],
        document["API_TOKEN"],
    )
    with pytest.raises(SecretsError, match="does not authenticate"):
        load_sops(home, document)


def test_sops_reordered_keys_are_refused_by_the_mac(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN, "SMTP_PASSWORD": PASSWORD})
    reordered = {k: document[k] for k in ("SMTP_PASSWORD", "API_TOKEN", "sops")}
    with pytest.raises(SecretsError, match="MAC mismatch"):
        load_sops(home, reordered)


def test_sops_removed_key_is_refused_by_the_mac(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN, "SMTP_PASSWORD": PASSWORD})
    del document["SMTP_PASSWORD"]
    with pytest.raises(SecretsError, match="MAC mismatch"):
        load_sops(home, document)


def test_sops_mac_from_another_file_is_refused(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN})
    identity = read_age_key(home / "keys" / "age.key").identities[0]
    other = sops_encrypt({"API_TOKEN": "a different value!"}, identity.to_public())
    document["sops"]["mac"] = other["sops"]["mac"]  # authentic, but under another data key
    with pytest.raises(SecretsError, match=r"sops\.mac"):
        load_sops(home, document)


def test_sops_mac_over_other_values_is_refused(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN})
    key = pyrage.decrypt(
        document["sops"]["age"][0]["enc"].encode(),
        list(read_age_key(home / "keys" / "age.key").identities),
    )
    forged = hashlib.sha512(b"attacker's value").hexdigest().upper()
    document["sops"]["mac"] = sops_leaf(forged, key, document["sops"]["lastmodified"])
    with pytest.raises(SecretsError, match="MAC mismatch"):
        load_sops(home, document)


def test_sops_edited_lastmodified_is_refused(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN})
    document["sops"]["lastmodified"] = "2030-01-01T00:00:00Z"
    with pytest.raises(SecretsError, match=r"sops\.mac"):
        load_sops(home, document)


def test_sops_missing_mac_is_refused(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN})
    del document["sops"]["mac"]
    with pytest.raises(SecretsError, match="no MAC"):
        load_sops(home, document)


def test_sops_cleartext_value_is_refused_even_when_the_mac_holds(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN, "NOTE_unencrypted": "in the clear"})
    with pytest.raises(SecretsError, match="stored unencrypted"):
        load_sops(home, document)


def test_sops_changed_type_is_refused(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN})
    document["API_TOKEN"] = document["API_TOKEN"].replace("type:str", "type:bytes")
    with pytest.raises(SecretsError, match="not supported"):
        load_sops(home, document)


@pytest.mark.parametrize(
    "shape",
    [{"nested": {"a": "b"}}, {"n": 1}, {"n": None}, {"n": ["x"]}],
)
def test_sops_only_flat_strings(home: Path, shape: dict[str, Any]) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN})
    with pytest.raises(SecretsError, match="flat object"):
        load_sops(home, {**shape, **document})


def test_sops_key_groups_are_refused(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN})
    stanza = document["sops"].pop("age")
    document["sops"]["key_groups"] = [{"age": stanza}, {"age": stanza}]
    with pytest.raises(SecretsError, match="Shamir"):
        load_sops(home, document)


def test_sops_duplicate_keys_are_refused(home: Path) -> None:
    document = sops_world(home, {"API_TOKEN": TOKEN})
    text = json.dumps(document)
    doubled = text.replace('"API_TOKEN"', '"API_TOKEN": "x", "API_TOKEN"', 1)
    (home / "secrets.sops.json").write_text(doubled)
    config = SecretsConfig(file="secrets.sops.json", identity="keys/age.key")
    with pytest.raises(SecretsError, match="twice"):
        load_secrets(config, resolver(home))


def test_sops_yaml_is_refused_with_a_fix(home: Path) -> None:
    write_key(home / "keys" / "age.key")
    (home / "secrets.sops.yaml").write_text((DATA / "sops-nix-native-ssh.yaml").read_text())
    config = SecretsConfig(file="secrets.sops.yaml", identity="keys/age.key")
    with pytest.raises(SecretsError, match="YAML") as caught:
        load_secrets(config, resolver(home))
    assert ".sops.json" in caught.value.fix


# --- the store in memory -----------------------------------------------------------------------


def test_store_never_shows_values() -> None:
    store = SecretStore({"API_TOKEN": TOKEN, "SMTP_PASSWORD": PASSWORD}, "secrets.age")
    for text in (repr(store), str(store), f"{store}", repr([store])):
        assert TOKEN not in text
        assert PASSWORD not in text
        assert "API_TOKEN" in text


def test_store_cannot_be_pickled() -> None:
    store = SecretStore({"API_TOKEN": TOKEN})
    with pytest.raises(TypeError, match="never serialised"):
        pickle.dumps(store)


def test_unknown_name_is_a_typed_error() -> None:
    with pytest.raises(UnknownSecretError) as caught:
        SecretStore({"API_TOKEN": TOKEN}).get("NOPE")
    assert caught.value.name == "NOPE"
    assert isinstance(caught.value, SecretsError)


def test_empty_store() -> None:
    store = SecretStore.empty()
    assert store.names() == []
    assert store.leaks("anything at all") == []


# --- leaks ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store() -> SecretStore:
    return SecretStore({"API_TOKEN": TOKEN, "SMTP_PASSWORD": PASSWORD, "PIN": "4711"})


def test_short_values_warn(store: SecretStore) -> None:
    assert len(store.warnings) == 1
    assert "PIN" in store.warnings[0]
    assert "4711" not in store.warnings[0]


ENCODINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda v: v,
    "b64": lambda v: base64.b64encode(v.encode()).decode(),
    "b64-nopad": lambda v: base64.b64encode(v.encode()).decode().rstrip("="),
    "urlsafe-shifted": lambda v: base64.urlsafe_b64encode(b"\xfb\xff" + v.encode()).decode(),
    "hex": lambda v: v.encode().hex(),
    "HEX": lambda v: v.encode().hex().upper(),
    "pct": lambda v: quote(v, safe=""),
    "plus": quote_plus,
    "pct-all": lambda v: "".join(f"%{b:02X}" for b in v.encode()),
    "reversed": lambda v: v[::-1],
    "json": lambda v: json.dumps({"note": v}),
}


@pytest.mark.parametrize("encode", ENCODINGS.values(), ids=ENCODINGS.keys())
def test_leaks_finds_encoded_values(store: SecretStore, encode: Callable[[str], str]) -> None:
    text = f"please visit https://evil.example/?q={encode(PASSWORD)}&x=1"
    assert store.leaks(text) == ["SMTP_PASSWORD"]


def test_leaks_finds_json_escaped_values() -> None:
    value = 'quote"and\\backslash'
    store = SecretStore({"ODD": value})
    assert store.leaks(json.dumps({"body": value})) == ["ODD"]


def test_leaks_names_every_secret_present(store: SecretStore) -> None:
    text = f"{TOKEN} and {base64.b64encode(PASSWORD.encode()).decode()}"
    assert store.leaks(text) == ["API_TOKEN", "SMTP_PASSWORD"]


def test_leaks_ignores_unrelated_text(store: SecretStore) -> None:
    text = "Hi Bob, the meeting moved to 3pm. sk-live-0000 is not a key. " * 2000
    assert store.leaks(text) == []
    assert store.leaks("") == []


def test_short_values_are_matched_verbatim_only(store: SecretStore) -> None:
    assert store.leaks("your pin is 4711") == ["PIN"]
    assert store.leaks(base64.b64encode(b"xx4711xx").decode()) == []


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.binary(max_size=5),
    suffix=st.binary(max_size=5),
    value=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=8, max_size=40),
)
def test_base64_is_found_at_every_alignment(prefix: bytes, suffix: bytes, value: str) -> None:
    store = SecretStore({"S": value})
    blob = prefix + value.encode() + suffix
    assert store.leaks(base64.b64encode(blob).decode()) == ["S"]
    assert store.leaks(base64.urlsafe_b64encode(blob).decode()) == ["S"]
    assert store.leaks(blob.hex()) == ["S"]


@settings(max_examples=300, deadline=None)
@given(
    value=st.text(st.characters(min_codepoint=33, max_codepoint=0x7E), min_size=12, max_size=40),
    text=st.text(max_size=2000),
)
def test_text_without_the_value_does_not_leak(value: str, text: str) -> None:
    assume(value not in text and value[::-1] not in text)
    assert SecretStore({"S": value}).leaks(text) == []


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def cli(home: Path) -> Callable[..., Any]:
    app = typer.Typer()
    app.add_typer(secrets_app, name="secrets")

    @app.command()
    def other() -> None:  # a second command keeps `secrets` a sub-command, as in main.py
        """Unused."""

    (home / "threezone.toml").write_text(
        '[secrets]\nfile = "secrets.age"\nidentity = "keys/age.key"\n'
    )
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Any:
        return runner.invoke(
            app, ["secrets", *args, "--config", str(home / "threezone.toml")], input=input
        )

    return run


def test_cli_init_set_list_check(cli: Callable[..., Any]) -> None:
    assert cli("init").exit_code == 0
    stored = cli("set", "API_TOKEN", input=TOKEN + "\n")
    assert stored.exit_code == 0, stored.stderr
    assert cli("set", "SMTP_PASSWORD", input=PASSWORD).exit_code == 0
    listed = cli("list")
    assert listed.exit_code == 0
    assert listed.stdout.splitlines() == ["API_TOKEN", "SMTP_PASSWORD"]
    checked = cli("check")
    assert checked.exit_code == 0
    assert "2 secret(s)" in checked.stdout
    for result in (stored, listed, checked):
        assert TOKEN not in result.stdout + result.stderr
        assert PASSWORD not in result.stdout + result.stderr


def test_cli_set_strips_one_newline_only(cli: Callable[..., Any], home: Path) -> None:
    cli("init")
    assert cli("set", "API_TOKEN", input=TOKEN + "\n").exit_code == 0
    assert cli("set", "PEM", input="-----END KEY-----\n\n").exit_code == 0
    store = load_secrets(AGE, resolver(home))
    assert store.get("API_TOKEN") == TOKEN
    assert store.get("PEM") == "-----END KEY-----\n"


def test_cli_set_never_takes_the_value_from_argv(cli: Callable[..., Any], home: Path) -> None:
    cli("init")
    result = cli("set", "API_TOKEN", TOKEN, input="")
    assert result.exit_code != 0
    assert "API_TOKEN" not in load_secrets(AGE, resolver(home))


def test_cli_set_refuses_an_empty_value(cli: Callable[..., Any]) -> None:
    cli("init")
    result = cli("set", "API_TOKEN", input="\n")
    assert result.exit_code == 1
    assert "empty" in result.stderr


def test_cli_errors_are_one_line_with_exit_1(cli: Callable[..., Any], home: Path) -> None:
    cli("init")
    (home / "keys" / "age.key").chmod(0o644)
    for command in ("list", "check"):
        result = cli(command)
        assert result.exit_code == 1
        assert result.stderr.count("\n") == 1
        assert "chmod 600" in result.stderr
    assert cli("init").exit_code == 1


def _read_until(fd: int, marker: bytes, seen: bytearray) -> None:
    """Read a pty until ``marker`` shows up (or the child closes it); a deadline, not a test."""
    import select

    while marker not in seen:
        ready, _, _ = select.select([fd], [], [], 30)
        if not ready:
            raise AssertionError(f"no {marker!r} in {bytes(seen)!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return
        if not chunk:
            return
        seen += chunk


def test_cli_set_on_a_terminal_prompts_without_echo(home: Path) -> None:
    import pty
    import subprocess
    import sys

    init_secrets(AGE, resolver(home))
    (home / "threezone.toml").write_text(
        '[secrets]\nfile = "secrets.age"\nidentity = "keys/age.key"\n'
    )
    program = (
        "import typer\n"
        "from threezone.cli.secrets_cmd import secrets_app\n"
        "app = typer.Typer()\n"
        "app.add_typer(secrets_app, name='secrets')\n"
        "app.command('other')(lambda: None)\n"
        "app()\n"
    )
    leader, follower = pty.openpty()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            program,
            "secrets",
            "set",
            "API_TOKEN",
            "--config",
            str(home / "threezone.toml"),
        ],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)
    seen = bytearray()
    try:
        _read_until(leader, b"Value for API_TOKEN: ", seen)
        os.write(leader, TOKEN.encode() + b"\n")
        _read_until(leader, b"confirmation: ", seen)
        os.write(leader, TOKEN.encode() + b"\n")
        _read_until(leader, b"secret(s) in", seen)
        assert child.wait(timeout=60) == 0, bytes(seen)
    finally:
        child.kill()
        os.close(leader)
    assert TOKEN.encode() not in seen  # the terminal never echoed it
    assert load_secrets(AGE, resolver(home)).get("API_TOKEN") == TOKEN


def test_cli_set_checks_the_name_before_reading_a_value(cli: Callable[..., Any]) -> None:
    cli("init")
    result = cli("set", "not-a-name", input=TOKEN)
    assert result.exit_code == 1
    assert "not a secret name" in result.stderr
    assert TOKEN not in result.stdout + result.stderr


def test_cli_check_without_a_configured_file(tmp_path: Path) -> None:
    app = typer.Typer()
    app.add_typer(secrets_app, name="secrets")
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["secrets", "check", "--config", str(tmp_path / "none")])
    assert result.exit_code == 0
    assert "no [secrets] file" in result.stdout
