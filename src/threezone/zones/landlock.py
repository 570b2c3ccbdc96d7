"""Landlock, applied by a zone to itself before it reads any untrusted input.

The mount namespace already limits what a zone can *see*; Landlock adds what it can
*do* with it, in a way the zone cannot undo: writes only beneath the paths it is
given, no TCP bind or connect (ABI 4+), and no abstract Unix sockets or signals
reaching outside the zone (ABI 6+). A prompt-injected reader that achieved code
execution would still find these limits in the kernel.

Landlock binds the calling thread and the children it starts later, so a zone calls
:func:`restrict` first, while single-threaded. A kernel without Landlock is reported
(``enforced=False``), not raised: the executor decides whether that is acceptable.

This module runs inside a zone: it imports only the standard library and
:mod:`threezone.errors`, and calls the three Landlock syscalls through ctypes (their
numbers are the same on x86_64 and aarch64).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from threezone.errors import BackendError

LAYER = "landlock"

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights, from <linux/landlock.h>.
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

FS_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
"""What a ``readable`` path gets."""

_FS_FILE_ONLY = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
"""The rights that mean something on a non-directory; the kernel rejects the others there."""

_FS_BY_ABI = (
    (1, (1 << 13) - 1),
    (2, FS_REFER),
    (3, FS_TRUNCATE),
    (5, FS_IOCTL_DEV),
)


@dataclass(frozen=True)
class LandlockStatus:
    """What :func:`restrict` achieved; ``detail`` is one line for logs and ``doctor``."""

    abi: int
    enforced: bool
    fs: bool
    net: bool
    scoped: bool
    detail: str


@dataclass(frozen=True)
class Handled:
    """The access a ruleset takes over for one ABI: anything handled and not granted is denied."""

    fs: int
    net: int
    scoped: int

    @classmethod
    def for_abi(cls, abi: int) -> Handled:
        fs = 0
        for since, rights in _FS_BY_ABI:
            if abi >= since:
                fs |= rights
        net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
        scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
        return cls(fs=fs, net=net, scoped=scoped)


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is __attribute__((packed)): 12 bytes
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


_LIBC = ctypes.CDLL(None, use_errno=True)  # dlopen(NULL): no ldconfig lookup inside a zone
_LIBC.syscall.restype = ctypes.c_long
_LIBC.prctl.restype = ctypes.c_int


def abi_version() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is missing or disabled."""
    return _probe_abi()[0]


def restrict(writable: Sequence[str], readable: Sequence[str] | None = None) -> LandlockStatus:
    """Confine this thread and its future children: writes beneath ``writable`` only.

    Each ``writable`` path gets every handled right beneath it; each ``readable`` path
    (default ``/``: the mount namespace already decides what exists) gets read and
    execute. Everything else the ABI handles is denied, including all TCP bind/connect
    (ABI 4+) and abstract Unix sockets and signals leaving the domain (ABI 6+).
    Irreversible. Raises :class:`BackendError` only for an unexpected failure.
    """
    abi, why_not = _probe_abi()
    if abi == 0:
        return LandlockStatus(0, False, False, False, False, f"Landlock unavailable: {why_not}")
    _require_single_thread()
    handled = Handled.for_abi(abi)
    ruleset_fd = _create_ruleset(handled, abi)
    try:
        for path in writable:
            _allow_beneath(ruleset_fd, path, handled.fs)
        for path in ("/",) if readable is None else readable:
            _allow_beneath(ruleset_fd, path, FS_READ & handled.fs)
        _set_no_new_privs()
        _checked(_SYS_LANDLOCK_RESTRICT_SELF, "landlock_restrict_self", ruleset_fd, 0)
    finally:
        os.close(ruleset_fd)
    return _status(abi, handled, writable)


# --- steps ------------------------------------------------------------------------------------


def _probe_abi() -> tuple[int, str]:
    try:
        version = _syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    except OSError as exc:
        reasons = {
            errno.ENOSYS: "the kernel has no Landlock (or a seccomp filter hides it)",
            errno.EOPNOTSUPP: "Landlock is disabled at boot (lsm= does not list it)",
        }
        return 0, reasons.get(exc.errno or 0, f"landlock_create_ruleset: {exc}")
    return version, ""


def _require_single_thread() -> None:
    # Landlock binds only the calling thread: a thread started earlier stays free, and
    # shares this process's memory, so restricting now would be a silent hole.
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:  # no /proc in this zone: Python's own count is the best we have
        threads = threading.active_count()
    if threads > 1:
        raise BackendError(
            LAYER, f"restrict() called with {threads} threads running; call it first"
        )


def _create_ruleset(handled: Handled, abi: int) -> int:
    attr = _RulesetAttr(handled.fs, handled.net, handled.scoped)
    # An older kernel rejects a struct larger than it knows (E2BIG unless the tail is
    # zero); pass exactly the fields this ABI defines.
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    return _checked(
        _SYS_LANDLOCK_CREATE_RULESET, "landlock_create_ruleset", ctypes.byref(attr), size, 0
    )


def _allow_beneath(ruleset_fd: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise BackendError(LAYER, f"cannot open {path!r} for a Landlock rule: {exc}") from exc
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FS_FILE_ONLY
        if rights:  # the kernel refuses an empty rule (ENOMSG)
            rule = _PathBeneathAttr(rights, fd)
            args = (ruleset_fd, _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
            _checked(_SYS_LANDLOCK_ADD_RULE, f"landlock_add_rule({path!r})", *args)
    finally:
        os.close(fd)


def _set_no_new_privs() -> None:
    # Required for an unprivileged landlock_restrict_self, and right for a zone anyway:
    # nothing it executes may gain privileges (setuid, file capabilities).
    if _LIBC.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), *[ctypes.c_ulong(0)] * 3) != 0:
        code = ctypes.get_errno()
        raise BackendError(LAYER, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(code)}")


def _status(abi: int, handled: Handled, writable: Sequence[str]) -> LandlockStatus:
    parts = [f"Landlock ABI {abi}: writes only beneath {', '.join(writable) or 'nothing'}"]
    if handled.net:
        parts.append("TCP bind/connect denied")
    if handled.scoped:
        parts.append("abstract Unix sockets and signals scoped to the zone")
    return LandlockStatus(
        abi=abi,
        enforced=True,
        fs=True,
        net=bool(handled.net),
        scoped=bool(handled.scoped),
        detail="; ".join(parts),
    )


# --- syscalls ---------------------------------------------------------------------------------


def _syscall(number: int, *args: object) -> int:
    """``syscall(2)``; ints widened to 64 bits so no register carries stale upper bits."""
    wide = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = int(_LIBC.syscall(ctypes.c_long(number), *wide))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _checked(number: int, what: str, *args: object) -> int:
    try:
        return _syscall(number, *args)
    except OSError as exc:
        raise BackendError(LAYER, f"{what} failed: {exc.strerror}") from exc
