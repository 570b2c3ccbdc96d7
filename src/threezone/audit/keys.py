"""The checkpoint signing key on disk: created on first use, refused when others can read it.

The private key is an Ed25519 key in PKCS#8 PEM, mode 0600, in a folder created 0700.
A key file that is group- or world-accessible, or owned by another user, is refused
with the ``chmod 600`` that fixes it, like ``ssh`` does: a signing key others could read
signs nothing worth trusting. The public key is written beside it (``<key>.pub``) for
``threezone audit verify`` and for the owner to keep elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from threezone.errors import AuditError

DEFAULT_KEY_NAME: Final = "audit-signing.key"
"""The key's file name in the state folder when the config names none."""

_KEY_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_PUB_MODE: Final = 0o644
_MAX_KEY_BYTES: Final = 16 * 1024


def public_key_path(key_path: Path) -> Path:
    """Where the public half of ``key_path`` is written: the same name plus ``.pub``."""
    return key_path.with_name(key_path.name + ".pub")


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path``, generated (0600, folder 0700) if there is none yet.

    Also (re)writes ``<path>.pub`` when it is missing or differs. Raises ``AuditError``
    for a key others can access, owned by someone else, or not an Ed25519 PEM key.
    """
    if not path.exists():
        _create(path)
    key = load_signing_key(path)
    _write_public(public_key_path(path), key.public_key())
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load an existing private key, after checking who owns it and who may read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise AuditError(str(path), f"cannot open the signing key: {exc}") from exc
    with os.fdopen(fd, "rb") as file:
        _check_private(os.fstat(fd), path)
        pem = file.read(_MAX_KEY_BYTES + 1)
    return _parse_private(pem, path)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load a public key (PEM, as written next to the signing key) to verify with."""
    try:
        pem = path.read_bytes()[: _MAX_KEY_BYTES + 1]
    except OSError as exc:
        raise AuditError(str(path), f"cannot read the public key: {exc}") from exc
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise AuditError(str(path), f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(str(path), f"not an Ed25519 public key ({type(key).__name__})")
    return key


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of ``key``, as ``.pub`` files hold it."""
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


# --- helpers ----------------------------------------------------------------------------------


def _check_private(info: os.stat_result, path: Path) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise AuditError(str(path), "the signing key is not a regular file")
    if info.st_uid != os.geteuid():
        raise AuditError(
            str(path),
            f"the signing key belongs to uid {info.st_uid}, not to uid {os.geteuid()} who "
            f"runs threezone; give it to this user and run `chmod 600 {path}`",
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise AuditError(
            str(path),
            f"the signing key is accessible by group or others (mode {mode:04o}); "
            f"run `chmod 600 {path}`",
        )


def _parse_private(pem: bytes, path: Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise AuditError(str(path), f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(str(path), f"not an Ed25519 private key ({type(key).__name__})")
    return key


def _create(path: Path) -> None:
    """Write a fresh key under a temporary name, then link it into place.

    ``os.link`` fails if ``path`` appeared meanwhile (another process won the race, and
    its key is kept), and nobody ever sees a half-written key file.
    """
    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        _write_new(tmp, pem, _KEY_MODE)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise AuditError(str(path), f"cannot create the signing key: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _write_public(path: Path, key: Ed25519PublicKey) -> None:
    pem = public_key_pem(key)
    with contextlib.suppress(OSError):
        if path.read_bytes() == pem:
            return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        _write_new(tmp, pem, _PUB_MODE)
        tmp.replace(path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise AuditError(str(path), f"cannot write the public key: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never following or reusing an existing one) with exactly ``mode``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(path, flags, mode), "wb") as file:
        os.fchmod(file.fileno(), mode)  # whatever the umask
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
