"""Every exception threezone raises on purpose, in one tree.

::

    ThreezoneError
    ├── ProtocolError                     bytes on a zone socket were not a valid message
    │   ├── RemoteProtocolError           the peer sent something invalid ("their fault")
    │   │   └── FrameTooLargeError        a frame header announced more than the maximum
    │   └── LocalProtocolError            we tried to send something invalid ("our fault")
    ├── ConfigError                       threezone.toml is unreadable or invalid (key path)
    ├── PolicyError                       a policy file failed to parse (file:line:col)
    ├── AuditError                        the audit log cannot be read or appended
    │   └── AuditChainBroken              verification found the first broken record
    ├── ReaderError                       a reader refused untrusted input (typed, never a crash)
    │   ├── InputTooLargeError            a size, count or depth limit was exceeded
    │   └── MalformedInputError           the input could not be parsed at all
    ├── ZoneError                         a zone misbehaved; the message it held is quarantined
    │   ├── ZoneStartError                the zone did not start or never said hello
    │   ├── ZoneCrashedError              the zone's process died or dropped its socket
    │   ├── ZoneTimeoutError              the zone missed a deadline and was killed
    │   └── ZoneReplyError                the zone answered with the wrong message or an error
    ├── BackendError                      an isolation backend cannot run here
    ├── InboxError                        the durable inbox refused an operation
    ├── StorageError                      the state directory is full or read-only (retry later)
    ├── SecretsError                      the secrets file or its key cannot be used (fix)
    │   └── UnknownSecretError            no secret of that name is loaded
    ├── EgressError                       the executor could not reach a destination
    │   ├── EgressDenied                  the allowlist or the address rules refused it
    │   └── EgressUnresolvable            its name did not resolve, or no address answered
    ├── ApprovalError                     an approval could not be queued, found or decided
    └── ConnectorError                    a channel or provider failed (retryable or not)
        └── LlmError                      the LLM gateway failed or refused (a typed code)

Errors carry fields and render once, in ``__str__``; nobody parses a message.
"""

from __future__ import annotations


class ThreezoneError(Exception):
    """Base of every error threezone raises on purpose."""


# --- protocol ---------------------------------------------------------------------------------


class ProtocolError(ThreezoneError):
    """Bytes on a zone socket were not a valid message."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame or message.

    Any other exception escaping the decoder is a bug in the decoder.
    """


class FrameTooLargeError(RemoteProtocolError):
    """A frame header announced a body over the configured maximum."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class LocalProtocolError(ProtocolError):
    """We tried to encode something that is not a valid message (a bug on our side)."""


# --- configuration and policy -----------------------------------------------------------------


class ConfigError(ThreezoneError):
    """The configuration file is unreadable or does not match the schema."""

    def __init__(self, path: str, key_path: str, detail: str) -> None:
        super().__init__(path, key_path, detail)
        self.path = path
        self.key_path = key_path
        self.detail = detail

    def __str__(self) -> str:
        where = f"{self.path}: {self.key_path}" if self.key_path else self.path
        return f"{where}: {self.detail}"


class PolicyError(ThreezoneError):
    """A policy file failed to parse; carries every error found, first one first."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class PolicyProblem:
    """One parse error at ``file:line:col`` (1-based), with what was expected."""

    __slots__ = ("col", "file", "line", "message")

    def __init__(self, file: str, line: int, col: int, message: str) -> None:
        self.file = file
        self.line = line
        self.col = col
        self.message = message

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"

    def __repr__(self) -> str:
        return f"PolicyProblem({self})"


# --- audit ------------------------------------------------------------------------------------


class AuditError(ThreezoneError):
    """The audit log cannot be read or appended."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, detail)
        self.path = path
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


class AuditChainBroken(AuditError):
    """Verification found a broken record; ``line`` is the first bad one (1-based)."""

    def __init__(self, path: str, line: int, kind: str, detail: str) -> None:
        super().__init__(path, detail)
        self.line = line
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}: {self.detail}"


# --- readers ----------------------------------------------------------------------------------


class ReaderError(ThreezoneError):
    """A reader refused untrusted input. ``code`` is stable and crosses the wire."""

    code = "reader_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class InputTooLargeError(ReaderError):
    """A size, count or depth limit on untrusted input was exceeded."""

    code = "input_too_large"


class MalformedInputError(ReaderError):
    """The untrusted input could not be parsed at all."""

    code = "malformed_input"


# --- zones and backends -----------------------------------------------------------------------


class ZoneError(ThreezoneError):
    """A zone misbehaved. ``code`` is stable and is what the inbox records."""

    code = "zone_error"

    def __init__(self, zone: str, detail: str) -> None:
        super().__init__(zone, detail)
        self.zone = zone
        self.detail = detail

    def __str__(self) -> str:
        return f"zone {self.zone}: {self.code}: {self.detail}"


class ZoneStartError(ZoneError):
    code = "zone_start_failed"


class ZoneCrashedError(ZoneError):
    code = "zone_crashed"


class ZoneTimeoutError(ZoneError):
    code = "zone_timeout"


class ZoneReplyError(ZoneError):
    code = "zone_bad_reply"


class BackendError(ThreezoneError):
    """An isolation backend cannot run on this machine; ``fix`` says what would help."""

    def __init__(self, backend: str, detail: str, fix: str = "") -> None:
        super().__init__(backend, detail, fix)
        self.backend = backend
        self.detail = detail
        self.fix = fix

    def __str__(self) -> str:
        tail = f" (fix: {self.fix})" if self.fix else ""
        return f"backend {self.backend}: {self.detail}{tail}"


class StorageError(ThreezoneError):
    """The state directory cannot take a write now: the disk is full, or it is read-only.

    Nothing was half-written: the write that failed was undone (the audit log is cut back
    to its last whole record; SQLite rolled the transaction back). The executor stops
    fetching and tries again later; an operator frees space or remounts read-write.
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, detail)
        self.path = path
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


class InboxError(ThreezoneError):
    """The durable inbox refused an operation (unknown message, bad transition)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


# --- secrets ----------------------------------------------------------------------------------


class SecretsError(ThreezoneError):
    """The secrets file or its age key cannot be used; ``fix`` says what would help.

    Never carries a secret value: only paths, names and what went wrong.
    """

    def __init__(self, path: str, detail: str, fix: str = "") -> None:
        super().__init__(path, detail, fix)
        self.path = path
        self.detail = detail
        self.fix = fix

    def __str__(self) -> str:
        tail = f" (fix: {self.fix})" if self.fix else ""
        return f"{self.path}: {self.detail}{tail}"


class UnknownSecretError(SecretsError):
    """A connector asked for a secret name the store does not hold."""

    def __init__(self, path: str, name: str) -> None:
        super().__init__(path, f"no secret named {name!r}", f"threezone secrets set {name}")
        self.name = name


# --- egress -----------------------------------------------------------------------------------


class EgressError(ThreezoneError):
    """The executor could not reach ``host:port`` for ``connector``; ``reason`` says why."""

    def __init__(self, connector: str, host: str, port: int, reason: str) -> None:
        super().__init__(connector, host, port, reason)
        self.connector = connector
        self.host = host
        self.port = port
        self.reason = reason

    def __str__(self) -> str:
        return f"egress {self.connector} -> {self.host[:253]}:{self.port}: {self.reason}"


class EgressDenied(EgressError):
    """The allowlist or the address rules refused the destination (a refusal to audit)."""


class EgressUnresolvable(EgressError):
    """The destination's name did not resolve or no pinned address answered (retryable)."""


# --- approvals --------------------------------------------------------------------------------


class ApprovalError(ThreezoneError):
    """An approval could not be queued, found or decided; ``detail`` says why."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, detail)
        self.path = path
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


# --- connectors -------------------------------------------------------------------------------


class ConnectorError(ThreezoneError):
    """A channel or provider failed (``retryable`` says whether backing off may help)."""

    def __init__(self, connector: str, detail: str, *, retryable: bool = True) -> None:
        super().__init__(connector, detail)
        self.connector = connector
        self.detail = detail
        self.retryable = retryable

    def __str__(self) -> str:
        return f"{self.connector}: {self.detail}"


class LlmError(ConnectorError):
    """The LLM gateway could not answer; ``code`` is stable and crosses the wire.

    Codes: ``llm_unavailable``, ``llm_rate_limited``, ``llm_budget_exhausted``,
    ``llm_bad_response``, ``llm_bad_request``, ``llm_refused``. Never carries the API
    key, the prompt or the provider's own error text (which may quote either).
    """

    def __init__(self, code: str, detail: str, *, retryable: bool = False) -> None:
        super().__init__("llm", detail, retryable=retryable)
        self.code = code

    def __str__(self) -> str:
        return f"llm: {self.code}: {self.detail}"
