"""Canaries: decoy credentials that nothing legitimate ever sends anywhere.

The executor creates a few values shaped like real credentials (an API key, a cloud
access key, a password) once per state directory, keeps them (0600) so they stay
recognisable across restarts, and plants them where an attacker would look: the decoy
secret file beside the executor's state (a zone that escaped its isolation finds it)
and, for language-model planners, the planner's context as "credentials you must never
share". An action whose arguments carry one is refused; the message that triggered
the episode is quarantined and the owner alerted.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path

import msgspec

from threezone.errors import SecretsError
from threezone.executor.secrets import SecretStore

FILE_NAME = "canaries.json"
_ALNUM = string.ascii_letters + string.digits


def _token(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def new_values() -> dict[str, str]:
    return {
        "api_key": "sk-ant-api03-" + secrets.token_urlsafe(40),
        "aws_access_key_id": "AKIA" + _token(string.ascii_uppercase + string.digits, 16),
        "aws_secret_access_key": _token(_ALNUM + "/+", 40),
        "password": "Tz!" + _token(_ALNUM, 17),
    }


def load_or_create(state_dir: Path) -> SecretStore:
    """The state directory's canaries, created (0600) on first use."""
    path = state_dir / FILE_NAME
    try:
        values = msgspec.json.decode(path.read_bytes(), type=dict[str, str])
    except msgspec.DecodeError as exc:
        # Never replaced silently: a canary that changed would no longer be recognised.
        raise SecretsError(
            str(path),
            f"the canaries file is not valid: {exc}",
            "restore it from a backup, or remove it to plant new canaries",
        ) from exc
    except FileNotFoundError:
        values = new_values()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(msgspec.json.encode(values))
            out.flush()
            os.fsync(out.fileno())
    return SecretStore(values, str(path))


def decoy_file_text(canaries: SecretStore) -> str:
    """What a credentials file an attacker hopes to find would look like."""
    lines = ["[default]"]
    lines += [f"{name} = {canaries.get(name)}" for name in canaries.names()]
    return "\n".join(lines) + "\n"
