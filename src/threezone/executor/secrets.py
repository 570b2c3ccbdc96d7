"""The owner's credentials: encrypted at rest, decrypted only into executor memory.

Two file formats, both decrypted with an age x25519 identity (``age-keygen`` key file):

* **age** (``*.age``, written by ``threezone secrets set``): an age file whose plaintext
  is one JSON object ``{"NAME": "value", ...}``.
* **sops JSON** (``*.sops.json``, written by the ``sops`` tool, read-only here): values
  are ``ENC[AES256_GCM,...]`` leaves whose AAD is their key path, the data key is in an
  age stanza under ``sops.age``, and ``sops.mac`` is verified, so an edited, swapped or
  reordered value is refused. sops YAML is not read: parsing it faithfully needs a YAML
  library this project does not ship; keep sops secrets in JSON.

:class:`SecretStore` holds the values. It never shows them (``repr`` lists names), cannot
be pickled, and precomputes what :meth:`SecretStore.leaks` searches for, so the executor
can scan every allowed action's arguments for any value (plain, base64, hex,
percent-encoded, reversed or JSON-escaped) before a connector runs it. Zones never hold
secrets; the scan is the tripwire behind that rule, not the rule itself.

Python cannot wipe a ``str``: decrypted values live in this process's memory until the
garbage collector reuses it. Nothing here writes them anywhere else.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, NoReturn
from urllib.parse import unquote, unquote_plus

import pyrage  # type: ignore[import-untyped]  # pyrage 1.4 ships no type information
import re2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from threezone.config.schema import SecretsConfig
from threezone.errors import SecretsError, UnknownSecretError

NAME_PATTERN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Below this length a value also occurs by chance (and its encodings even more so): such
# values are matched only verbatim, and loading them produces a warning.
MIN_SCAN_LENGTH: Final = 8
MAX_VALUE_BYTES: Final = 64 * 1024
MAX_FILE_BYTES: Final = 4 * 1024 * 1024
MAX_KEY_FILE_BYTES: Final = 64 * 1024

Format = Literal["age", "sops"]


def _fail(path: Path | str, detail: str, fix: str = "") -> NoReturn:
    raise SecretsError(str(path), detail, fix)


# --- the in-memory store ----------------------------------------------------------------------


class SecretStore:
    """Named secret values, in memory only. ``warnings`` name values too short to scan well."""

    __slots__ = ("_scanner", "_source", "_values", "warnings")

    def __init__(self, values: Mapping[str, str], source: str = "<memory>") -> None:
        self._source = source
        self._values = {name: _checked(name, value, source) for name, value in values.items()}
        self._scanner = _Scanner(self._values)
        self.warnings: tuple[str, ...] = tuple(
            f"secret {name} is shorter than {MIN_SCAN_LENGTH} characters: arguments are "
            "searched for it verbatim only (not base64, hex, ...), and may match by chance"
            for name in self.names()
            if len(self._values[name]) < MIN_SCAN_LENGTH
        )

    @classmethod
    def empty(cls) -> SecretStore:
        return cls({}, "<no secrets configured>")

    @property
    def source(self) -> str:
        return self._source

    def names(self) -> list[str]:
        return sorted(self._values)

    def get(self, name: str) -> str:
        """The value, for a connector running an action the policy has already admitted."""
        try:
            return self._values[name]
        except KeyError:
            raise UnknownSecretError(self._source, name) from None

    def leaks(self, text: str) -> list[str]:
        """Names of the secrets whose value occurs in ``text``, plainly or encoded."""
        return self._scanner.scan(text)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __repr__(self) -> str:
        return f"<SecretStore {len(self)} secret(s) from {self._source}: {', '.join(self.names())}>"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        # Pickling is how values would leave the process (to a file, a queue, a zone).
        raise TypeError("a SecretStore is never serialised: its values stay in executor memory")


def _checked(name: str, value: object, source: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        _fail(source, f"secret name {name!r} is not an identifier", "use letters, digits and _")
    if not isinstance(value, str):
        _fail(source, f"secret {name} is not a string")
    if not value:
        _fail(source, f"secret {name} is empty", f"threezone secrets set {name}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        _fail(source, f"secret {name} is not valid Unicode text")
    if size > MAX_VALUE_BYTES:
        _fail(source, f"secret {name} is over {MAX_VALUE_BYTES} bytes")
    return value


# --- the leak scanner -------------------------------------------------------------------------


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _base64_cores(raw: bytes) -> set[str]:
    """The base64 characters that encode only ``raw``, at each of the 3 byte alignments.

    Inside a longer base64 text the value starts at some offset mod 3; the characters that
    straddle its neighbours differ, the ones in between do not.
    """
    cores = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode("ascii")
        first, end = -(-8 * shift // 6), 8 * (shift + len(raw)) // 6
        cores.add(encoded[first:end])
    return cores


def _exact_needles(value: str) -> set[bytes]:
    raw = _utf8(value)
    forms = {value, value[::-1], json.dumps(value)[1:-1]}
    for core in _base64_cores(raw):
        forms |= {core, core.translate(str.maketrans("+/", "-_"))}
    return {_utf8(form) for form in forms if form}


class _Scanner:
    """Precomputed needles plus one RE2 automaton that rejects clean text in a single pass.

    Exact needles (plain, reversed, JSON-escaped, base64 std/urlsafe) are searched in the
    text and in its percent-decoded forms; hex needles in the lower-cased text. The RE2
    prefilter is case-insensitive over all needles (a superset of every exact match), so
    text it rejects has no leak; text it accepts is checked needle by needle.
    """

    def __init__(self, values: Mapping[str, str]) -> None:
        self.exact: dict[bytes, set[str]] = {}
        self.folded: dict[bytes, set[str]] = {}
        for name, value in values.items():
            if len(value) < MIN_SCAN_LENGTH:
                self.exact.setdefault(_utf8(value), set()).add(name)
                continue
            for needle in _exact_needles(value):
                self.exact.setdefault(needle, set()).add(name)
            self.folded.setdefault(_utf8(value).hex().encode(), set()).add(name)
        self.prefilter = self._compile([*self.exact, *self.folded])

    @staticmethod
    def _compile(needles: list[bytes]) -> Any:
        if not needles:
            return None
        options = re2.Options()
        options.encoding = re2.Options.Encoding.LATIN1  # bytes as bytes: no UTF-8 decoding
        options.case_sensitive = False
        options.max_mem = 64 << 20
        longest_first = sorted(needles, key=len, reverse=True)
        return re2.compile(b"|".join(re2.escape(n) for n in longest_first), options)

    def scan(self, text: str) -> list[str]:
        if self.prefilter is None:
            return []
        variants = _decoded_variants(text)
        if not any(self.prefilter.search(variant) for variant in variants):
            return []
        folded = [variant.lower() for variant in variants]
        found: set[str] = set()
        for needles, haystacks in ((self.exact, variants), (self.folded, folded)):
            for needle, names in needles.items():
                if not names <= found and any(needle in h for h in haystacks):
                    found |= names
        return sorted(found)


def _decoded_variants(text: str) -> list[bytes]:
    """The text, plus its percent-decoded forms when it has any escapes (%41, +)."""
    forms = [text]
    if "%" in text or "+" in text:
        forms += [unquote(text, errors="replace"), unquote_plus(text, errors="replace")]
    return list(dict.fromkeys(_utf8(form) for form in forms))


# --- the age key file -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgeKey:
    """The x25519 identities of one key file and their public keys (``age1...``)."""

    path: Path
    identities: tuple[Any, ...]
    public_keys: tuple[str, ...]

    def recipients(self) -> list[Any]:
        return [pyrage.x25519.Recipient.from_str(key) for key in self.public_keys]


def read_age_key(path: Path) -> AgeKey:
    """Parse an ``age-keygen`` file after checking that only its owner can read it."""
    text = _read_private_file(path)
    identities = [
        _identity(path, number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not identities:
        _fail(path, "no AGE-SECRET-KEY-1... line in the age key file", "age-keygen -o PATH")
    return AgeKey(path, tuple(identities), tuple(str(i.to_public()) for i in identities))


def _identity(path: Path, number: int, line: str) -> Any:
    # Error messages name the line number only: the line itself may be key material.
    if line.startswith("AGE-PLUGIN-"):
        _fail(path, f"line {number}: age plugin identities are not supported")
    if not line.startswith("AGE-SECRET-KEY-1"):
        _fail(path, f"line {number}: expected AGE-SECRET-KEY-1... or a # comment")
    try:
        return pyrage.x25519.Identity.from_str(line)
    except pyrage.IdentityError:
        _fail(path, f"line {number}: not a valid age secret key")


def _read_private_file(path: Path) -> str:
    """The file's text, if it is a regular file of ours that group and others cannot read.

    Opened once without following symlinks and checked with ``fstat`` on that descriptor,
    so the file checked is the file read.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        _fail(path, "no age key file here", "threezone secrets init (or: age-keygen -o PATH)")
    except OSError as exc:
        if os.path.islink(path):
            _fail(path, "the age key file is a symbolic link", "point identity at the file itself")
        _fail(path, f"cannot open the age key file: {exc.strerror}")
    try:
        _check_private(path, os.fstat(fd))
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        _fail(path, "the age key file is too large to be one")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        _fail(path, "the age key file is not text")


def _check_private(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        _fail(path, "the age key file is not a regular file")
    if info.st_uid != os.getuid():
        _fail(path, f"owned by uid {info.st_uid}, not by you", f"chown {os.getuid()} {path}")
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        _fail(path, f"mode {mode:04o} lets group or others read the age key", f"chmod 600 {path}")


# --- loading ----------------------------------------------------------------------------------


def load_secrets(config: SecretsConfig, resolve: Callable[[str], Path]) -> SecretStore:
    """Decrypt the configured secrets file into a store (empty when no file is configured)."""
    if not config.file:
        return SecretStore.empty()
    path = resolve(config.file)
    key = read_age_key(resolve(config.identity))
    data = _read_store_file(path)
    if detect_format(config, path, data) == "age":
        values = _decrypt_age_store(data, key, path)
    else:
        values = decrypt_sops_json(data, key.identities, str(path), key.public_keys)
    return SecretStore(values, str(path))


def detect_format(config: SecretsConfig, path: Path, data: bytes = b"") -> Format:
    """``config.format``, or for ``auto`` the file name, then the first bytes."""
    name = path.name.lower()
    not_json = config.format == "sops" and bool(data) and data.lstrip()[:1] != b"{"
    if name.endswith((".yaml", ".yml")) or not_json:
        _fail(path, "sops YAML files are not supported", "keep sops secrets in a .sops.json file")
    if config.format != "auto":
        return config.format
    if name.endswith(".age") or data.startswith((b"age-encryption.org/", b"-----BEGIN AGE")):
        return "age"
    if name.endswith(".json") or data.lstrip()[:1] == b"{":
        return "sops"
    _fail(path, "cannot tell whether this is an age or a sops file", 'set [secrets] format = "age"')


def _read_store_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        _fail(path, "no secrets file here", "threezone secrets init")
    except OSError as exc:
        _fail(path, f"cannot read the secrets file: {exc.strerror}")
    if len(data) > MAX_FILE_BYTES:
        _fail(path, f"the secrets file is over {MAX_FILE_BYTES} bytes")
    return data


def _decrypt_age_store(data: bytes, key: AgeKey, path: Path) -> dict[str, str]:
    try:
        plaintext: bytes = pyrage.decrypt(data, list(key.identities))
    except pyrage.DecryptError as exc:
        _fail(path, f"cannot decrypt with {key.path}: {exc}", "use the key file it was made for")
    document = _json_object(plaintext, path)
    for name, value in document.items():
        if not isinstance(value, str):
            _fail(path, f"secret {name} is not a string")
    return document


def _json_object(data: bytes, path: Path | str) -> dict[str, Any]:
    """A JSON object, keys in file order; a repeated key is an error, not last-one-wins."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(items)
        if len(result) != len(items):
            _fail(path, "a key appears twice in one JSON object")
        return result

    try:
        document = json.loads(data, object_pairs_hook=pairs)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(path, f"not valid JSON ({type(exc).__name__} at byte {getattr(exc, 'pos', '?')})")
    if not isinstance(document, dict):
        _fail(path, "expected a JSON object of name: value")
    return document


# --- sops (JSON) ------------------------------------------------------------------------------

# sops' value format (aes/cipher.go); the type is not authenticated, so only str is taken.
_ENC = re.compile(
    r"ENC\[AES256_GCM,data:([A-Za-z0-9+/=]+),iv:([A-Za-z0-9+/=]+),"
    r"tag:([A-Za-z0-9+/=]+),type:([a-z0-9]+)\]"
)
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")
# sops.go MACOnlyEncryptedInitialization: sha256(b"sops"), prepended when mac_only_encrypted.
_MAC_ONLY_ENCRYPTED_INIT: Final = hashlib.sha256(b"sops").digest()


def decrypt_sops_json(
    untrusted: bytes,
    identities: Sequence[Any],
    source: str,
    public_keys: Sequence[str] = (),
) -> dict[str, str]:
    """A flat sops JSON file's ``{name: value}``, after verifying its MAC.

    Faithful to sops' tree walk for a flat object of strings: each leaf's AAD is its key
    path plus ``:``, the MAC is the upper-case hex SHA-512 of the cleartext leaves in file
    order (encrypted with AAD = ``lastmodified`` as Go's RFC 3339 renders it).
    """
    document = _json_object(untrusted, source)
    meta = document.pop("sops", None)
    if not isinstance(meta, dict):
        _fail(source, "not a sops file (no sops metadata object)")
    for name, value in document.items():
        if not isinstance(value, str):
            _fail(source, f"{name}: only a flat object of string values is supported")
    key = _sops_data_key(meta, identities, source, public_keys)
    rules = _SopsRules.from_metadata(meta, source)
    digest = hashlib.sha512(_MAC_ONLY_ENCRYPTED_INIT if rules.mac_only_encrypted else b"")
    values: dict[str, str] = {}
    for name, stored in document.items():
        encrypted = rules.encrypts(name)
        values[name] = _sops_decrypt(stored, key, f"{name}:", source, name) if encrypted else stored
        if encrypted or not rules.mac_only_encrypted:
            digest.update(values[name].encode("utf-8"))
    _verify_mac(meta, key, digest.digest(), source)
    for name in values:
        if not rules.encrypts(name):
            _fail(source, f"{name} is stored unencrypted (the file's encryption rules skip it)")
    return values


def _sops_data_key(
    meta: dict[str, Any], identities: Sequence[Any], source: str, ours: Sequence[str]
) -> bytes:
    stanzas = _age_stanzas(meta, source)
    # Try the stanza addressed to our public key first, then any other (e.g. an ssh key).
    stanzas.sort(key=lambda stanza: stanza.get("recipient") not in ours)
    for stanza in stanzas:
        encrypted = stanza.get("enc")
        if not isinstance(encrypted, str):
            continue
        try:
            key: bytes = pyrage.decrypt(encrypted.encode("ascii"), list(identities))
        except (pyrage.DecryptError, UnicodeEncodeError, ValueError):
            continue
        if len(key) != 32:
            _fail(source, "the sops data key is not 32 bytes")
        return key
    yours = ", ".join(ours) or "your identity"
    _fail(source, f"no age recipient of this file is {yours}", "sops updatekeys, or add --age")


def _age_stanzas(meta: dict[str, Any], source: str) -> list[dict[str, Any]]:
    groups = meta.get("key_groups") or []
    if not isinstance(groups, list) or len(groups) > 1:
        _fail(source, "sops key groups (Shamir secret sharing) are not supported")
    stanzas = (groups[0] if groups and isinstance(groups[0], dict) else meta).get("age") or []
    if not isinstance(stanzas, list) or not stanzas:
        _fail(source, "the sops file has no age recipients", "sops updatekeys, or add --age")
    return [stanza for stanza in stanzas if isinstance(stanza, dict)]


def _sops_decrypt(value: str, key: bytes, aad: str, source: str, what: str) -> str:
    """One ``ENC[AES256_GCM,...]`` leaf; sops leaves an empty value as ``""`` unencrypted."""
    if value == "":
        return ""
    match = _ENC.fullmatch(value)
    if match is None:
        _fail(source, f"{what}: not a sops ENC[AES256_GCM,...] value")
    if match[4] != "str":
        _fail(source, f"{what}: sops type {match[4]!r} is not supported (only str)")
    try:
        data, iv, tag = (base64.b64decode(match[i], validate=True) for i in (1, 2, 3))
    except binascii.Error:
        _fail(source, f"{what}: bad base64 in the ENC value")
    if len(tag) != 16 or not 12 <= len(iv) <= 64:
        _fail(source, f"{what}: bad iv or tag length in the ENC value")
    try:
        plaintext = AESGCM(key).decrypt(iv, data + tag, aad.encode("utf-8"))
    except InvalidTag:
        _fail(source, f"{what}: does not authenticate (edited, or moved from another key)")
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        _fail(source, f"{what}: the decrypted value is not UTF-8 text")


def _verify_mac(meta: dict[str, Any], key: bytes, computed: bytes, source: str) -> None:
    mac, modified = meta.get("mac"), meta.get("lastmodified")
    if not isinstance(mac, str) or not mac or not isinstance(modified, str):
        _fail(source, "the sops file has no MAC (sops.mac and sops.lastmodified are required)")
    stored = _sops_decrypt(mac, key, _go_rfc3339(modified, source), source, "sops.mac")
    try:
        expected = bytes.fromhex(stored)
    except ValueError:
        _fail(source, "sops.mac does not hold a hex digest")
    if not hmac.compare_digest(expected, computed):
        _fail(source, "MAC mismatch: values were edited, added, removed or reordered")


def _go_rfc3339(text: str, source: str) -> str:
    """``lastmodified`` as Go re-renders it after parsing: no fraction, ``Z`` for UTC."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        _fail(source, "sops.lastmodified is not an RFC 3339 time")
    zone = "Z" if match[3] in ("Z", "+00:00", "-00:00") else match[3]
    return match[1] + zone


@dataclass(frozen=True, slots=True)
class _SopsRules:
    """Which keys sops encrypted (sops.go shouldBeEncrypted, for top-level keys)."""

    unencrypted_suffix: str = ""
    encrypted_suffix: str = ""
    unencrypted_regex: Any = None
    encrypted_regex: Any = None
    by_comment: bool = False
    mac_only_encrypted: bool = False

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], source: str) -> _SopsRules:
        fields = ("unencrypted_suffix", "encrypted_suffix", "unencrypted_regex", "encrypted_regex")
        given = {name: meta.get(name) or "" for name in fields}
        several = sum(map(bool, given.values())) > 1
        if several or any(not isinstance(v, str) for v in given.values()):
            _fail(source, f"sops metadata: at most one of {', '.join(fields)}, as a string")
        if not any(given.values()):
            given["unencrypted_suffix"] = "_unencrypted"  # sops' default
        return cls(
            unencrypted_suffix=given["unencrypted_suffix"],
            encrypted_suffix=given["encrypted_suffix"],
            unencrypted_regex=_go_regex(given["unencrypted_regex"], source),
            encrypted_regex=_go_regex(given["encrypted_regex"], source),
            # JSON has no comments, so an encrypted_comment_regex file encrypts nothing.
            by_comment=bool(meta.get("encrypted_comment_regex")),
            mac_only_encrypted=meta.get("mac_only_encrypted") is True,
        )

    def encrypts(self, key: str) -> bool:
        encrypted = not (self.unencrypted_suffix and key.endswith(self.unencrypted_suffix))
        if self.encrypted_suffix:
            encrypted = key.endswith(self.encrypted_suffix)
        if self.unencrypted_regex is not None and self.unencrypted_regex.search(key):
            encrypted = False
        if self.encrypted_regex is not None:
            encrypted = self.encrypted_regex.search(key) is not None
        return encrypted and not self.by_comment


def _go_regex(pattern: str, source: str) -> Any:
    """Go's regexp is RE2, so RE2 reads sops' regexes the way sops does."""
    if not pattern:
        return None
    try:
        return re2.compile(pattern)
    except re2.error as exc:
        _fail(source, f"sops metadata: bad regular expression {pattern!r}: {exc}")


# --- writing (age format only) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InitReport:
    key_path: Path
    key_created: bool
    store_path: Path
    public_keys: tuple[str, ...]


def init_secrets(config: SecretsConfig, resolve: Callable[[str], Path]) -> InitReport:
    """Create the age key (0600, parent 0700) and an empty store, each only if absent.

    Refuses when both exist (nothing to do would hide a mistake) and when only the store
    exists (a new key could not decrypt it).
    """
    path, key_path = _writable_store(config, resolve), resolve(config.identity)
    if path.exists():
        _fail(path, "a secrets file already exists; init never overwrites one")
    created = not key_path.exists() and not key_path.is_symlink()
    key = _create_age_key(key_path) if created else read_age_key(key_path)
    _write_store(path, key, {}, overwrite=False)
    return InitReport(key_path, created, path, key.public_keys)


def set_secret(
    config: SecretsConfig, resolve: Callable[[str], Path], name: str, value: str
) -> SecretStore:
    """Add or replace one secret: decrypt, change in memory, re-encrypt, replace atomically.

    Only the age format is written: a sops file's recipients, key groups and rules are
    sops' to manage, and re-encrypting it here would drop what we do not understand.
    """
    path = _writable_store(config, resolve)
    key = read_age_key(resolve(config.identity))
    with _locked(path.parent):
        values = _decrypt_age_store(_read_store_file(path), key, path)
        updated = SecretStore({**values, name: value}, str(path))
        _write_store(path, key, {**values, name: value}, overwrite=True)
    return updated


def _writable_store(config: SecretsConfig, resolve: Callable[[str], Path]) -> Path:
    if not config.file:
        _fail("threezone.toml", "no [secrets] file is configured", 'add: file = "secrets.age"')
    path = resolve(config.file)
    if config.format == "sops" or path.name.lower().endswith((".json", ".yaml", ".yml")):
        _fail(path, "threezone writes only age secrets files", "edit sops files with sops")
    return path


def _create_age_key(path: Path) -> AgeKey:
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
        path.parent.chmod(0o700)  # mkdir's mode is filtered by the umask
    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    created = datetime.now(UTC).isoformat(timespec="seconds")
    text = f"# created: {created}\n# public key: {public}\n{identity}\n"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        _fail(path, "an age key file already exists; init never overwrites one")
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)
    return AgeKey(path, (identity,), (public,))


def _write_store(path: Path, key: AgeKey, values: Mapping[str, str], *, overwrite: bool) -> None:
    plaintext = json.dumps(dict(sorted(values.items())), ensure_ascii=False).encode("utf-8")
    ciphertext: bytes = pyrage.encrypt(plaintext, key.recipients())
    _write_atomically(path, ciphertext, overwrite=overwrite)


def _write_atomically(path: Path, data: bytes, *, overwrite: bool) -> None:
    """A temp file (0600) in the same directory, fsync, then rename (or link: no overwrite)."""
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        _fail(path, f"cannot write next to the secrets file: {exc.strerror}")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        _publish(temp, path, overwrite=overwrite)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    _fsync_dir(path.parent)


def _publish(temp: str, path: Path, *, overwrite: bool) -> None:
    if overwrite:
        os.replace(temp, path)
        return
    try:
        os.link(temp, path)  # fails if path exists, unlike rename
    except FileExistsError:
        _fail(path, "a secrets file already exists; init never overwrites one")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise writers of one store (two `secrets set` at once must not lose one)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        _fail(directory, f"cannot open the secrets directory: {exc.strerror}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
