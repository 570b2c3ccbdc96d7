"""The seccomp filter every ``sandbox`` zone runs under (bubblewrap loads it: ``--seccomp FD``).

Namespaces and a dropped capability set already stop most of what is listed here;
the filter is the second wall, and the only one for two things a network namespace
does not cover: ``AF_VSOCK`` sockets (they reach the hypervisor, not the netns) and
io_uring (its operations bypass per-syscall checks). The policy:

* default **allow** - a zone runs CPython, and an allowlist of its syscalls would
  break on every libc or kernel update; the dangerous surface is small and named;
* ``socket``/``socketpair``: only ``AF_UNIX`` (``EAFNOSUPPORT`` otherwise, the errno a
  kernel without that family gives, so libraries fall back instead of crashing);
* every name in :data:`DENIED_SYSCALLS`: ``EPERM``;
* ``clone`` with any ``CLONE_NEW*`` flag: ``EPERM``; ``clone3``: ``ENOSYS``, because its
  flags live in memory seccomp cannot read, and ``ENOSYS`` makes glibc fall back to
  ``clone``, which the filter can inspect;
* ``ioctl`` ``TIOCSTI``/``TIOCLINUX`` (terminal input injection): ``EPERM``;
* ``personality`` with anything but ``PER_LINUX`` (0): ``EPERM`` (no
  ``ADDR_NO_RANDOMIZE``, no ``READ_IMPLIES_EXEC``);
* a syscall from a foreign ABI (i386 ``int 0x80`` or x32 on x86_64, arm32 on aarch64):
  the process is killed (``SIGSYS``). libseccomp's filter holds only the native
  architecture, so a foreign ABI's syscall numbers, which mean different syscalls,
  never reach a rule that was written for the native ones.

libseccomp (through the ``pyseccomp`` ctypes binding) compiles the rules; it is
imported lazily so that ``doctor`` can print the policy on a machine without it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any  # pyseccomp's SyscallFilter is untyped

from threezone.errors import BackendError

BACKEND = "sandbox"
FIX = "install libseccomp2 (apt install libseccomp2) and pyseccomp==0.1.2"

DENIED_SYSCALLS: tuple[str, ...] = (
    # io_uring: a second syscall interface that seccomp cannot see into
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    # reading or steering other processes
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    # the kernel keyring is shared beyond the zone
    "keyctl",
    "add_key",
    "request_key",
    # large kernel attack surface
    "bpf",
    "perf_event_open",
    "userfaultfd",
    # changing the filesystem view
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    # leaving or creating namespaces
    "unshare",
    "setns",
    # the kernel itself
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    # host administration
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "uselib",
    # file handles bypass path-based checks
    "open_by_handle_at",
    "name_to_handle_at",
    # x86 hardware and segment access
    "iopl",
    "ioperm",
    "vm86",
    "vm86old",
    "modify_ldt",
)
"""Denied outright with ``EPERM``; names the native architecture lacks are skipped."""

ARCH_SPECIFIC_SYSCALLS: dict[str, frozenset[str]] = {
    # vm86/vm86old exist on i386 only; that ABI is killed as a foreign arch anyway
    "x86_64": frozenset({"vm86", "vm86old"}),
    "aarch64": frozenset({"iopl", "ioperm", "vm86", "vm86old", "modify_ldt"}),
}
"""Per native architecture, the names in :data:`DENIED_SYSCALLS` it does not have."""

ALLOWED_SOCKET_FAMILIES: tuple[str, ...] = ("AF_UNIX",)
"""``socket``/``socketpair`` families a zone may use: the channel to the executor only."""

SOCKET_SYSCALLS = ("socket", "socketpair")

CLONE_NAMESPACE_FLAGS: dict[str, int] = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    # CLONE_NEWTIME (0x80) is absent on purpose: in clone() that bit is part of the
    # exit signal (CSIGNAL); the kernel accepts CLONE_NEWTIME only from clone3/unshare,
    # and both are denied.
}
"""``clone`` flags whose presence makes ``clone`` fail (flags are arg 0 on x86_64 and aarch64)."""

DENIED_IOCTLS: dict[str, int] = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C}
"""``ioctl`` requests that push input into a terminal."""

_SOCKET_FAMILY_NUMBERS = {"AF_UNIX": 1}
_PER_LINUX = 0
_U32 = 0xFFFF_FFFF
_BPF_INSTRUCTION_SIZE = 8  # struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}
_BPF_MAXINSNS = 4096
_SUPPORTED_ARCHES = {"x86_64": "X86_64", "aarch64": "AARCH64"}


@dataclass(frozen=True)
class ArgTest:
    """A condition on one syscall argument: ``args[index] & mask == value`` or ``!= value``."""

    index: int
    op: str  # "ne" or "masked_eq"
    value: int
    mask: int = _U32

    def __str__(self) -> str:
        if self.op == "ne":
            return f"arg{self.index} != {self.value:#x}"
        return f"arg{self.index} & {self.mask:#x} == {self.value:#x}"


@dataclass(frozen=True)
class Rule:
    """Fail ``syscall`` with ``errno`` (only when ``when`` holds, if given).

    Rules are data so that ``doctor`` can print exactly what a zone is refused.
    """

    syscall: str
    errno: int
    when: ArgTest | None = None

    def __str__(self) -> str:
        condition = f" if {self.when}" if self.when else ""
        return f"{self.syscall}{condition} -> {errno.errorcode[self.errno]}"


def rules(*, deny_errno: int = errno.EPERM) -> tuple[Rule, ...]:
    """Every rule of the filter, in order. ``deny_errno`` lets tests prove a rule answered.

    With a distinctive errno (one the kernel never returns for these calls), a test can
    tell "the filter refused" from "the kernel refused for its own reasons".
    """
    return (
        *_socket_rules(),
        *(Rule(name, deny_errno) for name in DENIED_SYSCALLS),
        *_clone_rules(deny_errno),
        *(Rule("ioctl", deny_errno, ArgTest(1, "masked_eq", v)) for v in DENIED_IOCTLS.values()),
        Rule("personality", deny_errno, ArgTest(0, "ne", _PER_LINUX)),
    )


def _socket_rules() -> tuple[Rule, ...]:
    # libseccomp 2.5 refuses two comparisons on one argument in a rule, so "family not in
    # the allowlist" is expressible as a single "!=": the allowlist holds exactly one family.
    (family,) = ALLOWED_SOCKET_FAMILIES
    allowed = ArgTest(0, "ne", _SOCKET_FAMILY_NUMBERS[family])
    return tuple(Rule(name, errno.EAFNOSUPPORT, allowed) for name in SOCKET_SYSCALLS)


def _clone_rules(deny_errno: int) -> tuple[Rule, ...]:
    # One rule per flag: libseccomp ORs rules on the same syscall, so any flag set is enough.
    # The 64-bit mask also catches a flag hidden in the upper half (the kernel reads 64 bits).
    namespace_rules = tuple(
        Rule("clone", deny_errno, ArgTest(0, "masked_eq", flag, mask=flag))
        for flag in CLONE_NAMESPACE_FLAGS.values()
    )
    return (*namespace_rules, Rule("clone3", errno.ENOSYS))


def build_filter(*, deny_errno: int = errno.EPERM) -> bytes:
    """The compiled classic-BPF program (``struct sock_filter[]``) for the native architecture."""
    seccomp = _libseccomp()
    _require_supported_arch()
    try:
        syscall_filter = seccomp.SyscallFilter(seccomp.ALLOW)
        # KILL_PROCESS, not ERRNO: a zone issuing foreign-ABI syscalls is attacking the filter.
        syscall_filter.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
        missing = unresolved_syscalls()
        for rule in rules(deny_errno=deny_errno):
            if rule.syscall not in missing:
                _add_rule(seccomp, syscall_filter, rule)
        program = _export(syscall_filter)
    except OSError as exc:
        raise BackendError(BACKEND, f"libseccomp cannot build the filter: {exc}", FIX) from exc
    _check_program(program)
    return program


def unresolved_syscalls() -> frozenset[str]:
    """Names in the rules that the native architecture does not have (skipped, not errors)."""
    seccomp = _libseccomp()
    names = {rule.syscall for rule in rules()}
    # libseccomp answers negative "pseudo syscall" numbers for names of other architectures.
    return frozenset(n for n in names if int(seccomp.resolve_syscall(seccomp.Arch.NATIVE, n)) < 0)


def native_arch() -> str:
    """``x86_64`` or ``aarch64`` (or ``unknown:<audit arch>`` elsewhere), as libseccomp sees it."""
    seccomp = _libseccomp()
    native = int(seccomp.system_arch())
    for name, attribute in _SUPPORTED_ARCHES.items():
        if native == int(getattr(seccomp.Arch, attribute)):
            return name
    return f"unknown:{native:#x}"


def filter_fd(program: bytes) -> int:
    """A sealed memfd holding ``program`` at offset 0, for bwrap's ``--seccomp FD``.

    The caller passes it with ``pass_fds`` and closes it after the launch. Sealing makes
    the program immutable between here and bwrap reading it.
    """
    _check_program(program)
    fd = os.memfd_create("threezone-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        _write_all(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except OSError as exc:
        os.close(fd)
        raise BackendError(BACKEND, f"cannot hand the seccomp filter to bwrap: {exc}") from exc
    return fd


# --- helpers ----------------------------------------------------------------------------------


def _libseccomp() -> ModuleType:
    try:
        # pyseccomp ships no type hints; the calls below go through typed helpers.
        import pyseccomp  # type: ignore[import-untyped]
    except (ImportError, RuntimeError) as exc:  # RuntimeError: the binding found no .so
        raise BackendError(BACKEND, f"libseccomp is unavailable: {exc}", FIX) from exc
    module: ModuleType = pyseccomp
    return module


def _require_supported_arch() -> None:
    # The clone rule reads flags from arg 0, true on x86_64 and aarch64 (s390x swaps them).
    arch = native_arch()
    if arch not in _SUPPORTED_ARCHES:
        raise BackendError(BACKEND, f"no seccomp policy for architecture {arch}")


def _add_rule(seccomp: ModuleType, syscall_filter: Any, rule: Rule) -> None:
    action = seccomp.ERRNO(rule.errno)
    add = syscall_filter.add_rule
    if rule.when is None:
        add(action, rule.syscall)
    elif rule.when.op == "ne":
        add(action, rule.syscall, seccomp.Arg(rule.when.index, seccomp.NE, rule.when.value))
    else:
        test = seccomp.Arg(rule.when.index, seccomp.MASKED_EQ, rule.when.mask, rule.when.value)
        add(action, rule.syscall, test)


def _export(syscall_filter: Any) -> bytes:
    fd = os.memfd_create("threezone-seccomp-export", os.MFD_CLOEXEC)
    with open(fd, "w+b") as file:
        syscall_filter.export_bpf(file)
        file.seek(0)
        return file.read()


def _check_program(program: bytes) -> None:
    count, remainder = divmod(len(program), _BPF_INSTRUCTION_SIZE)
    if remainder or not 0 < count <= _BPF_MAXINSNS:
        raise BackendError(BACKEND, f"not a seccomp BPF program ({len(program)} bytes)")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
