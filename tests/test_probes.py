"""The isolation self-check: it must see the escapes that work, and see them close.

A probe that always said "blocked" would pass any sandbox, so every claim is shown
both ways. In the pytest process (no isolation) the decoys this file sets up are
reachable and the report must say so; inside bubblewrap the same probes, given the
same targets through the same ``--probe`` argument, must flip, and only where the
sandbox really closed something (a network namespace still lets ``socket(AF_INET)``
succeed; only the seccomp variant refuses it).
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from threezone.backends.sandbox import runtime_binds
from threezone.errors import RemoteProtocolError
from threezone.protocol.messages import IsolationReport, Probe
from threezone.zones.client import parse_args
from threezone.zones.probes import (
    PROBE_NAMES,
    ProbeTargets,
    parse_probe_args,
    probe_args,
    run_probes,
)

NO_TARGETS = ProbeTargets(
    decoy_tcp_port=None,
    decoy_abstract=None,
    decoy_secret=None,
    executor_pid=None,
    forbidden_writes=(),
    host_tmp_marker=None,
)
TARGETED = {
    "host_loopback_tcp",
    "abstract_unix",
    "decoy_secret",
    "executor_environ",
    "ptrace_executor",
    "write_outside_scratch",
    "host_tmp",
}
BWRAP = shutil.which("bwrap")
needs_bwrap = pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root holds capabilities here")

# What the zone runs inside the sandbox: targets from argv, report (and time) as JSON.
ZONE_SCRIPT = """
import sys, time, msgspec
from threezone.zones.probes import parse_probe_args, run_probes
targets, _ = parse_probe_args(sys.argv[1:])
start = time.perf_counter()
report = run_probes(targets)
elapsed = time.perf_counter() - start
sys.stdout.buffer.write(msgspec.json.encode({"elapsed": elapsed, "report": report}))
"""


class SandboxRun(msgspec.Struct, frozen=True):
    elapsed: float
    report: IsolationReport


def by_name(report: IsolationReport) -> dict[str, Probe]:
    return {probe.name: probe for probe in report.probes}


def not_blocked(report: IsolationReport) -> set[str]:
    return {probe.name for probe in report.probes if not probe.blocked}


# --- decoys: what an executor would set up ----------------------------------------------------


@pytest.fixture
def executor_pid() -> Iterator[int]:
    """A stand-in executor: a child process we may read and ptrace (we are its parent)."""
    child = subprocess.Popen(["sleep", "60"])
    yield child.pid
    child.kill()
    child.wait()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    (state / "secret.key").write_text("AGE-SECRET-KEY-decoy\n")
    return state


@pytest.fixture
def host_tmp_marker() -> Iterator[str]:
    """In the real host /tmp (not tmp_path, which the sandbox binds in on purpose)."""
    fd, path = tempfile.mkstemp(prefix="threezone-marker-", dir="/tmp")
    os.close(fd)
    yield path
    os.unlink(path)


@pytest.fixture
def decoys(state_dir: Path, executor_pid: int, host_tmp_marker: str) -> Iterator[ProbeTargets]:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        abstract = f"threezone-decoy-{os.getpid()}-{time.monotonic_ns()}"
        unix.bind("\0" + abstract)
        unix.listen(8)
        yield ProbeTargets(
            decoy_tcp_port=tcp.getsockname()[1],
            decoy_abstract=abstract,
            decoy_secret=str(state_dir / "secret.key"),
            executor_pid=executor_pid,
            forbidden_writes=(str(state_dir),),
            host_tmp_marker=host_tmp_marker,
        )


# --- the report's shape -----------------------------------------------------------------------


def test_full_targets_report_every_name_in_order(decoys: ProbeTargets) -> None:
    assert tuple(p.name for p in run_probes(decoys).probes) == PROBE_NAMES


def test_probes_without_a_target_are_left_out() -> None:
    names = [p.name for p in run_probes(NO_TARGETS).probes]
    assert names == [n for n in PROBE_NAMES if n not in TARGETED]


# --- unisolated: the escapes work here, and the report must say so ----------------------------


def test_escapes_that_work_here_are_reported(decoys: ProbeTargets) -> None:
    report = by_name(run_probes(decoys))
    for name in (
        "ipv4_socket",
        "host_loopback_tcp",
        "abstract_unix",
        "decoy_secret",
        "executor_environ",
        "ptrace_executor",
        "write_outside_scratch",
        "host_tmp",
    ):
        assert not report[name].blocked, report[name]
    assert report["host_loopback_tcp"].detail.endswith("connected!")
    assert report["seccomp"].blocked is (_status("Seccomp") == "2")


@needs_root
def test_root_capabilities_are_reported(decoys: ProbeTargets) -> None:
    assert not by_name(run_probes(decoys))["capabilities"].blocked


def test_ptrace_leaves_the_executor_running(decoys: ProbeTargets) -> None:
    assert decoys.executor_pid is not None
    run_probes(decoys)
    assert _state_of(decoys.executor_pid) in {"S", "R"}


def test_write_probe_passes_only_if_every_directory_refuses(tmp_path: Path) -> None:
    missing, writable = str(tmp_path / "missing"), str(tmp_path)
    one_open = _only(ProbeTargets(None, None, None, None, (missing, writable), None))
    all_shut = _only(ProbeTargets(None, None, None, None, (missing,), None))
    assert not one_open.blocked
    assert writable in one_open.detail
    assert all_shut.blocked
    assert all_shut.detail == f"{missing} ENOENT"
    assert os.listdir(tmp_path) == [], "the probe must remove what it created"


def test_an_unexpected_exception_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> socket.socket:
        raise TypeError("a bug, not a refusal")

    monkeypatch.setattr(socket, "socket", broken)
    report = by_name(run_probes(NO_TARGETS))
    assert report["ipv4_socket"] == Probe(
        name="ipv4_socket", blocked=False, detail="probe error: TypeError"
    )


# --- the --probe argument ---------------------------------------------------------------------


def test_probe_args_round_trip_and_leave_other_args_alone(decoys: ProbeTargets) -> None:
    argv = ["--verbose", "x", *probe_args(decoys), "--level", "strict"]
    assert parse_probe_args(argv) == (decoys, ["--verbose", "x", "--level", "strict"])


def test_probe_args_survive_the_zone_argument_parser(decoys: ProbeTargets) -> None:
    args = parse_args("reader", ["--zone", "r1", "--socket", "/s", *probe_args(decoys)])
    assert parse_probe_args(args.extra) == (decoys, [])


def test_the_two_token_form_is_accepted(decoys: ProbeTargets) -> None:
    value = probe_args(decoys)[0].split("=", 1)[1]
    assert parse_probe_args(["--probe", value]) == (decoys, [])


def test_no_probe_argument_means_no_targets() -> None:
    assert parse_probe_args(["--a", "b"]) == (None, ["--a", "b"])


def _with(**change: object) -> str:
    good = msgspec.json.decode(probe_args(NO_TARGETS)[0].split("=", 1)[1])
    return "--probe=" + msgspec.json.encode({**good, **change}).decode()


@pytest.mark.parametrize(
    "argv",
    [
        ["--probe"],
        ["--probe=not json"],
        ["--probe=[]"],
        ["--probe={}"],
        [_with(decoy_tcp_port=True)],
        [_with(decoy_tcp_port=70000)],
        [_with(executor_pid="1")],
        [_with(decoy_abstract="")],
        [_with(forbidden_writes="/")],
        [_with(extra=1)],
        [_with(), _with()],
    ],
)
def test_a_bad_probe_argument_is_refused(argv: list[str]) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_probe_args(argv)


# --- isolated: the same probes inside bubblewrap ------------------------------------------------


@needs_bwrap
def test_bubblewrap_closes_the_network_and_the_host(decoys: ProbeTargets, state_dir: Path) -> None:
    run = run_in_bwrap(decoys, state_dir)
    assert not_blocked(run.report) == {
        "ipv4_socket",  # a network namespace does not refuse socket creation
        "ipv6_socket",
        "udp_socket",
        "vsock_socket",  # nor vsock, which no namespace scopes
        "netlink_socket",
        "decoy_secret",  # bound in read-only on purpose: readable, and reported so
        "seccomp",  # bwrap installs no filter unless given one
        "user_namespace",  # nested user namespaces stay allowed without --disable-userns
    }
    report = by_name(run.report)
    assert report["net_interfaces"].detail == "/proc/net/dev: lo"
    assert report["write_outside_scratch"].detail.endswith("EROFS")


@needs_bwrap
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the test filter is x86_64 BPF")
def test_seccomp_and_no_userns_close_the_rest(
    decoys: ProbeTargets, state_dir: Path, tmp_path: Path
) -> None:
    program = tmp_path / "seccomp.bpf"
    program.write_bytes(_unix_sockets_only_filter())
    with program.open("rb") as bpf:
        hardening = ["--unshare-user", "--disable-userns", "--seccomp", str(bpf.fileno())]
        run = run_in_bwrap(decoys, state_dir, hardening, pass_fds=(bpf.fileno(),))
    assert not_blocked(run.report) == {"decoy_secret"}
    report = by_name(run.report)
    assert report["vsock_socket"].detail == "socket(AF_VSOCK, SOCK_STREAM) -> EPERM"
    assert report["host_loopback_tcp"].detail == "socket(AF_INET) -> EPERM"
    assert report["seccomp"].detail == "Seccomp=2"
    assert run.elapsed < 0.5, "isolation that holds must be verified quickly"


def run_in_bwrap(
    targets: ProbeTargets,
    state_dir: Path,
    hardening: list[str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> SandboxRun:
    """Run the probes in a fresh bwrap sandbox; skip if this host cannot make one."""
    assert BWRAP is not None
    # fmt: off
    argv = [
        BWRAP, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/",
        "--tmpfs", "/tmp", "--ro-bind", str(state_dir), str(state_dir),
        *_runtime_back(),
        "--proc", "/proc", "--dev", "/dev", "--cap-drop", "ALL", *(hardening or []),
        sys.executable, "-c", ZONE_SCRIPT, *probe_args(targets),
    ]
    # fmt: on
    done = subprocess.run(argv, capture_output=True, pass_fds=pass_fds, timeout=60, check=False)
    if done.returncode != 0 and done.stderr.startswith(b"bwrap:"):
        pytest.skip(f"bubblewrap cannot sandbox here: {done.stderr.decode().strip()}")
    assert done.returncode == 0, done.stderr.decode()
    return msgspec.json.decode(done.stdout, type=SandboxRun)


def _runtime_back() -> list[str]:
    """The tmpfs on /tmp hides a checkout or venv that lives there (CI clones): bind back."""
    args: list[str] = []
    for bind in runtime_binds():
        args += ["--ro-bind", str(bind.source), bind.dest]
    return args


def _unix_sockets_only_filter() -> bytes:
    """Classic BPF for seccomp: socket(2) with any family but AF_UNIX -> EPERM.

    A stand-in for the sandbox backend's real filter, just enough to show that the
    socket probes and the seccomp probe see a filter when there is one.
    """
    ld_abs, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    audit_arch_x86_64, nr_socket, af_unix = 0xC000003E, 41, 1
    allow, eperm = 0x7FFF0000, 0x00050000 | 1
    program = [
        (ld_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq, 0, 5, audit_arch_x86_64),  # another arch: allow
        (ld_abs, 0, 0, 0),  # seccomp_data.nr
        (jeq, 0, 3, nr_socket),  # not socket(): allow
        (ld_abs, 0, 0, 16),  # low half of args[0], the family
        (jeq, 1, 0, af_unix),
        (ret, 0, 0, eperm),
        (ret, 0, 0, allow),
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


# --- helpers ----------------------------------------------------------------------------------


def _only(targets: ProbeTargets) -> Probe:
    """The one targeted probe a sparse ProbeTargets enables."""
    (probe,) = [p for p in run_probes(targets).probes if p.name in TARGETED]
    return probe


def _status(key: str) -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return value.strip()
    return "?"


def _state_of(pid: int) -> str:
    """The one-letter state from /proc/PID/stat (T would mean left stopped by ptrace)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]
