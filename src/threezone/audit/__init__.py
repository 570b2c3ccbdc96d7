"""threezone.audit."""

from threezone.audit.chain import (
    GENESIS,
    ChainHead,
    VerifyReport,
    canonical,
    seal,
    verify_lines,
)
from threezone.audit.checkpoint import Checkpoint
from threezone.audit.findings import Finding, FindingKind
from threezone.audit.log import (
    AuditLog,
    Checkpointing,
    checkpointing_from_config,
    tail,
    verify_file,
)
from threezone.audit.verify import AuditReport, verify_log

__all__ = [
    "GENESIS",
    "AuditLog",
    "AuditReport",
    "ChainHead",
    "Checkpoint",
    "Checkpointing",
    "Finding",
    "FindingKind",
    "VerifyReport",
    "canonical",
    "checkpointing_from_config",
    "seal",
    "tail",
    "verify_file",
    "verify_lines",
    "verify_log",
]
