"""The isolation self-check a zone runs on itself before it says hello.

Runs *inside* a zone, so it imports only the standard library and the protocol. The
executor cannot see into a zone; a backend's configuration says what isolation it
*meant* to build, and this module reports what the zone can actually *do*. Each probe
tries one escape (open an IP socket, reach a decoy listener the executor holds on host
loopback, read a decoy secret beside the executor's state, ptrace the executor, ...)
and reports ``blocked=True`` only when the escape failed. The executor compares the
report with the level it requires and refuses a zone that falls short.

Three rules keep the report honest:

* **Fail closed.** A probe that cannot tell (an unexpected exception, an unreadable
  ``/proc/self/status``, a fork that failed) reports ``blocked=False``. A false alarm
  stops a zone; a false "all clear" would hand an injected agent the network.
* **Probes are real attempts**, not readings of configuration: "no IP sockets" is
  tested by calling ``socket(AF_INET)``, because a network namespace alone leaves IP
  sockets (and ``AF_VSOCK``) creatable; only seccomp refuses them.
* **No side effects that outlive the probe.** Files are created and removed, a
  successful ptrace is detached at once (after its attach-stop), and the
  user-namespace attempt runs in a forked child so the zone itself is unchanged.

Probes whose target the executor did not provide (``None``, or no forbidden
directories) are left out of the report rather than reported as passed; the executor
knows which targets it gave and so which names to expect (see :data:`PROBE_NAMES`).

Wiring, for the zone entry point::

    targets, rest = parse_probe_args(args.extra)
    isolation = run_probes(targets) if targets is not None else None
    # ... Hello(..., isolation=isolation)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any, NoReturn

from threezone.errors import RemoteProtocolError
from threezone.protocol.messages import IsolationReport, Probe

PROBE_FLAG = "--probe"
"""The zone argument that carries :class:`ProbeTargets` as JSON (``--probe=<json>``)."""

CONNECT_TIMEOUT = 1.0
"""Seconds a connect probe waits. A refused or unroutable connect fails at once; only
a listener that silently drops packets costs the full timeout."""

PROBE_NAMES: tuple[str, ...] = (
    "ipv4_socket",
    "ipv6_socket",
    "udp_socket",
    "vsock_socket",
    "netlink_socket",
    "packet_socket",
    "net_interfaces",
    "host_loopback_tcp",
    "abstract_unix",
    "decoy_secret",
    "executor_environ",
    "ptrace_executor",
    "write_outside_scratch",
    "host_tmp",
    "seccomp",
    "no_new_privs",
    "capabilities",
    "user_namespace",
)
"""Every name :func:`run_probes` can report, in report order; stable, for doctor tables."""

# Linux constants, spelled out because the socket module lacks some of them off Linux
# and ctypes has none of them.
AF_NETLINK = 16
AF_PACKET = 17
AF_VSOCK = 40
NETLINK_ROUTE = 0
PTRACE_ATTACH = 16
_WALL = 0x40000000  # waitpid flag: also wait for tracees that are not our children
PTRACE_DETACH = 17
CLONE_NEWUSER = 0x10000000

_MAX_DETAIL = 240
_MAX_ARG = 64 * 1024
_CHILD_BROKEN = 255  # exit code of the unshare child when it could not even try

_Outcome = tuple[bool, str]
_Check = Callable[[], _Outcome]


@dataclass(frozen=True, slots=True)
class ProbeTargets:
    """What the executor set up for a zone to try to reach; ``None`` skips that probe.

    No defaults: the executor states every target, so a skipped probe is a decision,
    not an oversight. The executor owns all of them (it listens on the decoys, wrote
    the files, knows its own pid), so a probe that succeeds proves a real way out.
    """

    decoy_tcp_port: int | None
    """The executor listens on host ``127.0.0.1:PORT``; connecting must fail."""
    decoy_abstract: str | None
    """The executor listens on abstract Unix socket ``"\\0NAME"``; connecting must fail."""
    decoy_secret: str | None
    """A file beside the executor's real state; reading it must fail."""
    executor_pid: int | None
    """Reading ``/proc/PID/environ`` and ptrace-attaching must fail."""
    forbidden_writes: tuple[str, ...]
    """Directories where creating a file must fail (``/``, the socket dir, sys.prefix)."""
    host_tmp_marker: str | None
    """A file in the *host* ``/tmp``; the zone's private ``/tmp`` must not show it."""


# --- arguments ---------------------------------------------------------------------------------


def probe_args(targets: ProbeTargets) -> list[str]:
    """Encode targets as one zone argument, so the executor can build the zone's argv.

    One ``--probe=<json>`` token rather than two: argparse's ``parse_known_args`` then
    passes it through untouched, whatever the JSON looks like.
    """
    payload = asdict(targets)
    payload["forbidden_writes"] = list(targets.forbidden_writes)
    return [f"{PROBE_FLAG}={json.dumps(payload, separators=(',', ':'), sort_keys=True)}"]


def parse_probe_args(extra: Sequence[str]) -> tuple[ProbeTargets | None, list[str]]:
    """Take ``--probe`` out of a zone's extra arguments; return the targets and the rest.

    Accepts ``--probe=<json>`` and ``--probe <json>``. A malformed or repeated
    ``--probe`` raises :class:`RemoteProtocolError` (the executor built it; a zone
    that ignored it would skip its self-check, which is exactly what must not happen).
    """
    targets: ProbeTargets | None = None
    rest: list[str] = []
    args = iter(extra)
    for arg in args:
        if arg == PROBE_FLAG:
            value = next(args, None)
            if value is None:
                raise _bad_arg("missing value")
        elif arg.startswith(PROBE_FLAG + "="):
            value = arg[len(PROBE_FLAG) + 1 :]
        else:
            rest.append(arg)
            continue
        if targets is not None:
            raise _bad_arg("given twice")
        targets = _decode_targets(value)
    return targets, rest


def _bad_arg(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"bad {PROBE_FLAG} argument: {why}")


def _decode_targets(untrusted_value: str) -> ProbeTargets:
    """JSON -> ProbeTargets with every key required and every type checked."""
    if len(untrusted_value) > _MAX_ARG:
        raise _bad_arg(f"longer than {_MAX_ARG} characters")
    try:
        raw = json.loads(untrusted_value)
    except ValueError as exc:
        raise _bad_arg(f"not JSON ({exc})") from None
    expected = {f.name for f in fields(ProbeTargets)}
    if not isinstance(raw, dict) or set(raw) != expected:
        raise _bad_arg(f"expected an object with exactly the keys {sorted(expected)}")
    return ProbeTargets(
        decoy_tcp_port=_optional_int(raw, "decoy_tcp_port", 1, 65535),
        decoy_abstract=_optional_str(raw, "decoy_abstract"),
        decoy_secret=_optional_str(raw, "decoy_secret"),
        executor_pid=_optional_int(raw, "executor_pid", 1, 2**22),
        forbidden_writes=_strings(raw, "forbidden_writes"),
        host_tmp_marker=_optional_str(raw, "host_tmp_marker"),
    )


def _optional_int(raw: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = raw[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad_arg(f"{key} must be null or an integer in [{low}, {high}]")
    return value


def _optional_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw[key]
    if value is None or (isinstance(value, str) and value and "\0" not in value):
        return value
    raise _bad_arg(f"{key} must be null or a non-empty string without NUL")


def _strings(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = raw[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad_arg(f"{key} must be a list of non-empty strings")
    return tuple(value)


# --- running -----------------------------------------------------------------------------------


def run_probes(targets: ProbeTargets) -> IsolationReport:
    """Run every probe whose target is known, in :data:`PROBE_NAMES` order."""
    return IsolationReport(probes=[_run(name, check) for name, check in _plan(targets)])


def _run(name: str, check: _Check) -> Probe:
    """One probe as a result, never an exception: a probe that breaks has proved nothing."""
    try:
        blocked, detail = check()
    except Exception as exc:
        blocked, detail = False, f"probe error: {type(exc).__name__}"
    return Probe(name=name, blocked=blocked, detail=detail[:_MAX_DETAIL])


def _plan(t: ProbeTargets) -> list[tuple[str, _Check]]:
    """The probes to run for these targets; the order is PROBE_NAMES's order."""
    checks: dict[str, _Check | None] = {
        "ipv4_socket": partial(_socket, socket.AF_INET, socket.SOCK_STREAM, 0),
        "ipv6_socket": partial(_socket, socket.AF_INET6, socket.SOCK_STREAM, 0),
        "udp_socket": partial(_socket, socket.AF_INET, socket.SOCK_DGRAM, 0),
        "vsock_socket": partial(_socket, AF_VSOCK, socket.SOCK_STREAM, 0),
        "netlink_socket": partial(_socket, AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE),
        "packet_socket": partial(_socket, AF_PACKET, socket.SOCK_RAW, 0),
        "net_interfaces": _interfaces,
        "host_loopback_tcp": _maybe(_tcp_loopback, t.decoy_tcp_port),
        "abstract_unix": _maybe(_abstract_unix, t.decoy_abstract),
        "decoy_secret": _maybe(_read_file, t.decoy_secret),
        "executor_environ": _maybe(_read_file, _environ_path(t.executor_pid)),
        "ptrace_executor": _maybe(_ptrace_attach, t.executor_pid),
        "write_outside_scratch": _maybe(_writes, t.forbidden_writes or None),
        "host_tmp": _maybe(_host_tmp, t.host_tmp_marker),
        "seccomp": partial(_status_is, {"Seccomp": 2}, 10),
        "no_new_privs": partial(_status_is, {"NoNewPrivs": 1}, 10),
        "capabilities": partial(_status_is, {"CapEff": 0, "CapPrm": 0, "CapAmb": 0}, 16),
        "user_namespace": _user_namespace,
    }
    return [(name, check) for name in PROBE_NAMES if (check := checks[name]) is not None]


def _maybe(probe: Callable[[Any], _Outcome], target: object) -> _Check | None:
    return None if target is None else partial(probe, target)


def _environ_path(pid: int | None) -> str | None:
    return None if pid is None else f"/proc/{pid}/environ"


def _errname(exc: OSError) -> str:
    """``ECONNREFUSED`` rather than a sentence: details are compared and tabulated."""
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


_FAMILIES: dict[int, str] = {
    socket.AF_INET: "AF_INET",
    socket.AF_INET6: "AF_INET6",
    AF_VSOCK: "AF_VSOCK",
    AF_NETLINK: "AF_NETLINK",
    AF_PACKET: "AF_PACKET",
}
_TYPES: dict[int, str] = {
    socket.SOCK_STREAM: "SOCK_STREAM",
    socket.SOCK_DGRAM: "SOCK_DGRAM",
    socket.SOCK_RAW: "SOCK_RAW",
}


# --- the probes ----------------------------------------------------------------------------------


def _socket(family: int, kind: int, proto: int) -> _Outcome:
    """Creating the socket must fail: a netns alone lets it succeed, seccomp refuses it."""
    call = f"socket({_FAMILIES[family]}, {_TYPES[kind]})"
    try:
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        return True, f"{call} -> {_errname(exc)}"
    sock.close()
    return False, f"{call} created"


def _interfaces() -> _Outcome:
    """Only ``lo`` may exist: any other interface is a way out, even if it is down."""
    names, source = _interface_names()
    return names <= {"lo"}, f"{source}: {' '.join(sorted(names)) or 'none'}"


def _interface_names() -> tuple[set[str], str]:
    """From /proc/net/dev, which follows our netns; /sys/class/net follows sysfs's mounter,
    so the fallback may list the host's interfaces (and then fails closed)."""
    try:
        with open("/proc/net/dev", encoding="ascii") as f:
            lines = f.read().splitlines()[2:]
        return {line.split(":", 1)[0].strip() for line in lines if ":" in line}, "/proc/net/dev"
    except OSError:
        return set(os.listdir("/sys/class/net")), "/sys/class/net"


def _tcp_loopback(port: int) -> _Outcome:
    """The executor's decoy on host loopback: reachable means the zone shares its netns."""
    return _connect(socket.AF_INET, ("127.0.0.1", port), f"127.0.0.1:{port}")


def _abstract_unix(name: str) -> _Outcome:
    """Abstract sockets have no file to hide; only a netns (or Landlock scoping) stops them."""
    return _connect(socket.AF_UNIX, "\0" + name, f"@{name}")


def _connect(family: int, address: str | tuple[str, int], label: str) -> _Outcome:
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return True, f"socket({_FAMILIES.get(family, 'AF_UNIX')}) -> {_errname(exc)}"
    with sock:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(address)
        except OSError as exc:
            return True, f"connect({label}) -> {_errname(exc)}"
    return False, f"connect({label}) connected!"


def _read_file(path: str) -> _Outcome:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        return True, f"open({path}) -> {_errname(exc)}"
    return False, f"read {path}!"


def _libc() -> ctypes.CDLL:
    """The C library already linked into this interpreter; errno kept for the probe."""
    return ctypes.CDLL(None, use_errno=True)


def _ptrace_attach(pid: int) -> _Outcome:
    """Attaching must fail. If it works (no isolation), let the target go cleanly.

    A tracee stays attached until it is detached or the tracer exits, and a zone lives
    long: an executor left traced would freeze at its next signal. So after a
    successful PTRACE_ATTACH wait for the attach-stop and PTRACE_DETACH at once."""
    libc = _libc()
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) == -1:
        name = errno.errorcode.get(ctypes.get_errno(), "?")
        return True, f"ptrace(ATTACH, {pid}) -> {name}"
    _detach(libc, pid)
    return False, f"ptrace(ATTACH, {pid}) attached!"


def _detach(libc: ctypes.CDLL, pid: int) -> None:
    """DETACH needs the tracee in its attach-stop, so wait (briefly) for that first."""
    deadline = time.monotonic() + CONNECT_TIMEOUT
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(pid, os.WNOHANG | _WALL)[0] != pid and time.monotonic() < deadline:
            time.sleep(0.001)
    libc.ptrace(PTRACE_DETACH, pid, None, None)


def _writes(directories: tuple[str, ...]) -> _Outcome:
    """Blocked only if every directory refuses; stops at the first that accepts."""
    refusals = []
    for directory in directories:
        refusal = _try_create(directory)
        if refusal is None:
            return False, f"created a file in {directory}!"
        refusals.append(f"{directory} {refusal}")
    return True, "; ".join(refusals)


def _try_create(directory: str) -> str | None:
    """Create and remove a fresh file; the errno name if refused, None if it worked."""
    path = os.path.join(directory, f".threezone-probe-{os.getpid()}-{secrets.token_hex(6)}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        return _errname(exc)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)
    return None


def _host_tmp(marker: str) -> _Outcome:
    """The zone's /tmp must be its own: the host's marker file must not be there."""
    try:
        os.lstat(marker)
    except OSError as exc:
        return True, f"lstat({marker}) -> {_errname(exc)}"
    return False, f"{marker} is visible!"


def _status_is(expected: Mapping[str, int], base: int) -> _Outcome:
    """Compare fields of /proc/self/status; an unreadable or odd value is not a pass."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            status = dict(_split_status(line) for line in f)
    except OSError as exc:
        return False, f"/proc/self/status -> {_errname(exc)}"
    got = {key: status.get(key, "?") for key in expected}
    ok = all(_as_int(got[key], base) == want for key, want in expected.items())
    return ok, " ".join(f"{key}={value}" for key, value in got.items())


def _split_status(line: str) -> tuple[str, str]:
    key, _, value = line.partition(":")
    return key, value.strip()


def _as_int(text: str, base: int) -> int | None:
    try:
        return int(text, base)
    except ValueError:
        return None


def _user_namespace() -> _Outcome:
    """unshare(CLONE_NEWUSER) must fail. Tried in a forked child: on success the zone
    itself would be in a new namespace, and a threaded process could not try at all."""
    libc = _libc()
    libc.unshare.argtypes = [ctypes.c_int]
    libc.unshare.restype = ctypes.c_int
    try:
        pid = os.fork()
    except OSError as exc:
        return False, f"fork -> {_errname(exc)}"
    if pid == 0:
        _unshare_child(libc)
    _, status = os.waitpid(pid, 0)
    return _unshare_verdict(status)


def _unshare_child(libc: ctypes.CDLL) -> NoReturn:
    """Report through the exit code: 0 = it worked, else the errno. Never returns."""
    code = _CHILD_BROKEN
    try:
        if libc.unshare(CLONE_NEWUSER) == 0:
            code = 0
        else:
            code = min(ctypes.get_errno(), _CHILD_BROKEN - 1) or _CHILD_BROKEN - 1
    finally:
        os._exit(code)


def _unshare_verdict(status: int) -> _Outcome:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        # seccomp's KILL action answers a denied syscall with SIGSYS: a refusal.
        return sig == signal.SIGSYS, f"unshare child killed by {signal.Signals(sig).name}"
    code = os.WEXITSTATUS(status)
    if code == 0:
        return False, "unshare(CLONE_NEWUSER) succeeded!"
    if code == _CHILD_BROKEN:
        return False, "probe error: unshare child failed"
    return True, f"unshare(CLONE_NEWUSER) -> {errno.errorcode.get(code, str(code))}"
