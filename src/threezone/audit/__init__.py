"""threezone.audit."""

from threezone.audit.chain import (
    GENESIS,
    ChainHead,
    VerifyReport,
    canonical,
    seal,
    verify_lines,
)
from threezone.audit.log import AuditLog, tail, verify_file

__all__ = [
    "GENESIS",
    "AuditLog",
    "ChainHead",
    "VerifyReport",
    "canonical",
    "seal",
    "tail",
    "verify_file",
    "verify_lines",
]
