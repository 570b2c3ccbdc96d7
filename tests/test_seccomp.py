"""The sandbox's seccomp filter, loaded for real in a child process that then tries things.

The child is this file run as a script: it loads the filter (or not, for the control
run), forks once per probe so that a probe's side effects or death stay contained, and
prints each outcome as JSON. Every "denied" assertion is paired with the same probe
without the filter, so a test proves the filter made the difference, not the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import platform
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from threezone.backends import seccomp
from threezone.errors import BackendError

# An errno the kernel never returns for any probed call: seeing it proves a rule answered.
MARKER_ERRNO = errno.ENOTRECOVERABLE
HERE = Path(__file__).resolve()
CORE_SYSCALLS = {
    "socket",
    "socketpair",
    "clone",
    "clone3",
    "ioctl",
    "personality",
    "getpid",
    "io_uring_setup",
    "ptrace",
    "unshare",
    "mount",
}


# --- the probe child --------------------------------------------------------------------------

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_SET_DUMPABLE = 4
SECCOMP_MODE_FILTER = 2
CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
ADDR_NO_RANDOMIZE = 0x0040000
TIOCSTI = 0x5412
X32_SYSCALL_BIT = 0x40000000
HIGH_BIT = 1 << 32
PTRACE_PEEKDATA = 2
ALL_ONES = ctypes.c_long(-1)
# without the filter: ENOENT as root, EPERM otherwise; never a real mount
MOUNT_ON_NOTHING = tuple(ctypes.c_char_p(s) for s in (b"none", b"/nonexistent-tz", b"tmpfs"))


def io_uring_params() -> ctypes.Array[ctypes.c_char]:
    """A zeroed ``struct io_uring_params`` (120 bytes) that the kernel may write into."""
    return ctypes.create_string_buffer(120)


class SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long


def raw_syscall(number: int, *args: object) -> int:
    """``syscall(2)`` with every argument passed as a full 64-bit register value."""
    wide = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = int(LIBC.syscall(ctypes.c_long(number), *wide))
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def load_filter(program: bytes) -> None:
    """What bwrap does with ``--seccomp``: no_new_privs, then PR_SET_SECCOMP."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def outcome(probe: Callable[[], object]) -> str:
    """Run ``probe`` in a forked child: "ok", an errno name, or "signal:NAME" if it died."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.write(write_end, _run_in_child(probe).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"signal:{signal.Signals(os.WTERMSIG(status)).name}"
    return answer


def _run_in_child(probe: Callable[[], object]) -> str:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a SIGSYS kill must not drop a core file
    LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    try:
        probe()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def probes(nr: dict[str, int], scratch: Path) -> dict[str, Callable[[], object]]:
    """Every probe by name; ``nr`` maps syscall names to native numbers (from the parent)."""
    found: dict[str, Callable[[], object]] = {
        **socket_probes(nr),
        "ptrace_peek": lambda: raw_syscall(nr["ptrace"], PTRACE_PEEKDATA, os.getppid(), 0, 0),
        "io_uring_setup": lambda: raw_syscall(nr["io_uring_setup"], 1, io_uring_params()),
        "unshare_user": lambda: raw_syscall(nr["unshare"], CLONE_NEWUSER),
        "clone_newns": lambda: raw_clone(nr["clone"], CLONE_NEWNS | signal.SIGCHLD),
        "clone_newuser_high": lambda: raw_clone(nr["clone"], HIGH_BIT | CLONE_NEWUSER | 17),
        "clone3": lambda: raw_syscall(nr["clone3"], 0, 0),
        "mount": lambda: raw_syscall(nr["mount"], *MOUNT_ON_NOTHING, 0, 0),
        "personality_aslr_off": lambda: raw_syscall(nr["personality"], ADDR_NO_RANDOMIZE),
        "personality_linux": lambda: raw_syscall(nr["personality"], 0),
        "tiocsti": lambda: tiocsti(nr["ioctl"], TIOCSTI),
        "tiocsti_high": lambda: tiocsti(nr["ioctl"], HIGH_BIT | TIOCSTI),
        "fork": fork_and_wait,
        "thread": start_thread,
        "file_io": lambda: file_io(scratch),
        "x32_getpid": lambda: raw_syscall(X32_SYSCALL_BIT | nr["getpid"]),
        "i386_int80_getpid": i386_getpid,
    }
    for name, number in nr.items():
        if name.startswith("denied:"):
            found[name] = all_ones_call(number)
    return found


def all_ones_call(number: int) -> Callable[[], object]:
    """Every argument -1: invalid for each denied call, so harmless if a rule were missing."""
    return lambda: raw_syscall(number, *[ALL_ONES] * 6)


def socketpair(family: int) -> None:
    for end in socket.socketpair(family):
        end.close()


def socket_probes(nr: dict[str, int]) -> dict[str, Callable[[], object]]:
    def sock(family: int, kind: int = socket.SOCK_STREAM) -> Callable[[], object]:
        return lambda: socket.socket(family, kind).close()

    return {
        "socket_unix": sock(socket.AF_UNIX),
        "socket_inet": sock(socket.AF_INET),
        "socket_inet6": sock(socket.AF_INET6),
        "socket_vsock": sock(socket.AF_VSOCK),
        "socket_netlink": sock(socket.AF_NETLINK, socket.SOCK_RAW),
        "socket_packet": sock(socket.AF_PACKET, socket.SOCK_RAW),
        # AF_UNIX with a high bit: the kernel reads an int (1), the filter all 64 bits
        "socket_unix_high": lambda: raw_syscall(nr["socket"], HIGH_BIT | 1, 1, 0),
        "socketpair_unix": lambda: socketpair(socket.AF_UNIX),
        "socketpair_inet": lambda: socketpair(socket.AF_INET),
    }


def raw_clone(number: int, flags: int) -> None:
    """``clone`` without a new stack: like fork, and the copy leaves at once."""
    child = raw_syscall(number, flags, 0, 0, 0, 0)
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)


def tiocsti(number: int, request: int) -> None:
    read_end, _ = os.pipe()  # not a tty: without the filter the kernel says ENOTTY
    char = ctypes.c_char(b"x")
    raw_syscall(number, read_end, request, ctypes.cast(ctypes.pointer(char), ctypes.c_void_p))


def fork_and_wait() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 7:
        raise OSError(errno.ECHILD, "forked child did not exit 7")


def start_thread() -> None:
    """glibc's pthread_create tries clone3 first; ENOSYS must send it to clone."""
    ran: list[bool] = []
    thread = threading.Thread(target=lambda: ran.append(True))
    thread.start()
    thread.join()
    if not ran:
        raise OSError(errno.ECHILD, "thread did not run")


def file_io(scratch: Path) -> None:
    path = scratch / f"io-{os.getpid()}"
    path.write_bytes(b"zone")
    if path.read_bytes() != b"zone":
        raise OSError(errno.EIO, "read back something else")
    path.unlink()


def i386_getpid() -> int:
    """``mov eax, 20 (i386 getpid); int 0x80; ret``: an i386 syscall from a 64-bit process."""
    if platform.machine() != "x86_64":
        raise OSError(errno.ENOSYS, "x86_64 only")
    code = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return int(ctypes.CFUNCTYPE(ctypes.c_int)(address)())


def probe_main(argv: list[str]) -> None:
    """``test_seccomp.py probe BPF_FILE|- SCRATCH`` with syscall numbers as JSON on stdin."""
    nr: dict[str, int] = json.loads(sys.stdin.read())
    scratch = Path(argv[3])
    all_probes = probes(nr, scratch)
    if argv[2] != "-":
        load_filter(Path(argv[2]).read_bytes())
    print(json.dumps({name: outcome(probe) for name, probe in all_probes.items()}))


# --- the tests (parent side) ------------------------------------------------------------------


def syscall_numbers() -> dict[str, int]:
    import pyseccomp  # type: ignore[import-untyped]  # no type hints; numbers only

    def number(name: str) -> int:
        return int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))

    missing = seccomp.unresolved_syscalls()
    denied = {f"denied:{n}": number(n) for n in seccomp.DENIED_SYSCALLS if n not in missing}
    return {**{name: number(name) for name in CORE_SYSCALLS}, **denied}


def run_probes(
    tmp_path: Path,
    program: bytes | None,
    prefix: tuple[str, ...] = (),
    pass_fds: tuple[int, ...] = (),
) -> dict[str, str]:
    """Outcomes of every probe in a fresh child, under ``program`` (None: no filter)."""
    bpf = "-"
    if program is not None:
        bpf = str(tmp_path / "filter.bpf")
        Path(bpf).write_bytes(program)
    argv = [*prefix, sys.executable, str(HERE), "probe", bpf, str(tmp_path)]
    numbers = json.dumps(syscall_numbers())
    done = subprocess.run(
        argv,
        check=False,
        input=numbers,
        capture_output=True,
        text=True,
        timeout=120,
        pass_fds=pass_fds,
    )
    assert done.returncode == 0, done.stderr
    outcomes: dict[str, str] = json.loads(done.stdout)
    return outcomes


def seccomp_available() -> bool:
    status = Path("/proc/self/status").read_text()
    return "Seccomp_filters:" in status or "Seccomp:" in status


@pytest.fixture(scope="module")
def program() -> bytes:
    if not seccomp_available():
        pytest.skip("this kernel has no seccomp")
    try:
        return seccomp.build_filter()
    except BackendError as exc:
        pytest.skip(f"libseccomp unavailable: {exc}")


@pytest.fixture(scope="module")
def unfiltered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return run_probes(tmp_path_factory.mktemp("unfiltered"), None)


@pytest.fixture(scope="module")
def filtered(program: bytes, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return run_probes(tmp_path_factory.mktemp("filtered"), program)


def test_the_control_run_can_do_what_the_filter_denies(unfiltered: dict[str, str]) -> None:
    """Without the filter the same child reaches the kernel, so the denials below are ours."""
    assert unfiltered["socket_inet"] == "ok"
    assert unfiltered["socket_inet6"] in ("ok", "EAFNOSUPPORT")  # a kernel without IPv6
    assert unfiltered["socket_unix_high"] == "ok"
    assert unfiltered["socketpair_inet"] == errno.errorcode[errno.EOPNOTSUPP]
    assert unfiltered["ptrace_peek"] == "ESRCH"
    assert unfiltered["clone3"] == "EINVAL"
    assert unfiltered["tiocsti"] == unfiltered["tiocsti_high"] == "ENOTTY"
    assert unfiltered["personality_aslr_off"] == "ok"


def test_only_unix_sockets_are_allowed(filtered: dict[str, str]) -> None:
    assert filtered["socket_unix"] == "ok"
    assert filtered["socketpair_unix"] == "ok"
    for family in ("inet", "inet6", "vsock", "netlink", "packet"):
        assert filtered[f"socket_{family}"] == "EAFNOSUPPORT", family
    assert filtered["socketpair_inet"] == "EAFNOSUPPORT"
    # the filter compares all 64 bits: a high bit cannot smuggle a family past it
    assert filtered["socket_unix_high"] == "EAFNOSUPPORT"


def test_process_and_kernel_interfaces_are_denied(filtered: dict[str, str]) -> None:
    assert filtered["ptrace_peek"] == "EPERM"
    assert filtered["io_uring_setup"] == "EPERM"
    assert filtered["unshare_user"] == "EPERM"
    assert filtered["mount"] == "EPERM"
    assert filtered["personality_aslr_off"] == "EPERM"
    assert filtered["tiocsti"] == filtered["tiocsti_high"] == "EPERM"


def test_namespaces_cannot_be_made_with_clone(
    filtered: dict[str, str], unfiltered: dict[str, str]
) -> None:
    assert filtered["clone_newns"] == "EPERM"
    assert filtered["clone_newuser_high"] == "EPERM"
    if os.geteuid() == 0:  # without the filter, root may make a mount namespace
        assert unfiltered["clone_newns"] == "ok"


def test_clone3_says_enosys_so_libc_falls_back(filtered: dict[str, str]) -> None:
    assert filtered["clone3"] == "ENOSYS"
    assert filtered["thread"] == "ok"
    assert filtered["fork"] == "ok"


def test_ordinary_work_still_runs(filtered: dict[str, str]) -> None:
    assert filtered["file_io"] == "ok"
    assert filtered["personality_linux"] == "ok"


def test_every_denied_syscall_is_refused_by_its_rule(
    tmp_path: Path, unfiltered: dict[str, str]
) -> None:
    """With a marker errno no kernel returns here, each refusal is provably the filter's."""
    marked = run_probes(tmp_path, seccomp.build_filter(deny_errno=MARKER_ERRNO))
    marker = errno.errorcode[MARKER_ERRNO]
    denied = [name for name in marked if name.startswith("denied:")]
    assert len(denied) == len(seccomp.DENIED_SYSCALLS) - len(seccomp.unresolved_syscalls())
    assert {name: marked[name] for name in denied} == dict.fromkeys(denied, marker)
    assert all(unfiltered[name] != marker for name in denied)


def test_the_default_filter_answers_eperm(filtered: dict[str, str]) -> None:
    denied = {name: result for name, result in filtered.items() if name.startswith("denied:")}
    assert denied
    assert set(denied.values()) == {"EPERM"}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x32 and i386 are x86_64 ABIs")
def test_foreign_abi_syscalls_kill_the_process(
    filtered: dict[str, str], unfiltered: dict[str, str]
) -> None:
    assert filtered["x32_getpid"] == "signal:SIGSYS"
    assert filtered["i386_int80_getpid"] == "signal:SIGSYS"
    assert unfiltered["x32_getpid"] != "signal:SIGSYS"
    assert unfiltered["i386_int80_getpid"] != "signal:SIGSYS"


def test_the_core_list_resolves_on_this_architecture() -> None:
    arch = seccomp.native_arch()
    if arch not in seccomp.ARCH_SPECIFIC_SYSCALLS:
        pytest.skip(f"no expectations for {arch}")
    assert seccomp.unresolved_syscalls() == seccomp.ARCH_SPECIFIC_SYSCALLS[arch]


def test_the_program_checks_the_architecture_first(program: bytes) -> None:
    """Static view of what the dynamic test above shows on x86_64, for any architecture.

    The program must open with ``ld [4]`` (seccomp_data.arch) and hold a
    ``ret SECCOMP_RET_KILL_PROCESS``: the bad-arch action build_filter sets.
    """
    instructions = [struct.unpack("<HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    bpf_ld_w_abs, bpf_ret_k, kill_process = 0x20, 0x06, 0x8000_0000
    assert instructions[0][0] == bpf_ld_w_abs
    assert instructions[0][3] == 4
    assert (bpf_ret_k, 0, 0, kill_process) in instructions


def test_filter_fd_holds_the_program_sealed(program: bytes) -> None:
    fd = seccomp.filter_fd(program)
    try:
        assert os.read(fd, len(program) + 1) == program
        with pytest.raises(PermissionError):
            os.write(fd, b"x")
    finally:
        os.close(fd)


def test_something_that_is_not_a_program_is_refused() -> None:
    with pytest.raises(BackendError):
        seccomp.filter_fd(b"\x00" * 7)
    with pytest.raises(BackendError):
        seccomp.filter_fd(b"")


def test_bwrap_loads_the_filter(program: bytes, tmp_path: Path) -> None:
    """The production path: bwrap reads the memfd and loads it before exec."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bwrap is not installed")
    base = [bwrap, "--dev-bind", "/", "/"]
    if subprocess.run([*base, "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("bwrap cannot run here (no user namespaces?)")
    fd = seccomp.filter_fd(program)
    try:
        outcomes = run_probes(tmp_path, None, (*base, "--seccomp", str(fd)), pass_fds=(fd,))
    finally:
        os.close(fd)
    assert outcomes["socket_unix"] == "ok"
    assert outcomes["socket_inet"] == outcomes["socket_vsock"] == "EAFNOSUPPORT"
    assert outcomes["io_uring_setup"] == "EPERM"
    assert outcomes["clone3"] == "ENOSYS"
    assert outcomes["thread"] == "ok"


if __name__ == "__main__" and sys.argv[1:2] == ["probe"]:
    probe_main(sys.argv)
