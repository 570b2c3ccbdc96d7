"""``threezone doctor``: a table of what each backend's zones verified from inside."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from threezone.backends import cgroups
from threezone.backends.seccomp import DENIED_SYSCALLS
from threezone.executor.selfcheck import ZoneCheck, check_all
from threezone.zones.landlock import abi_version
from threezone.zones.probes import PROBE_NAMES

EXPLAIN = {
    "sandbox": "bubblewrap namespaces + seccomp + Landlock + rlimits/cgroups: process-level "
    "isolation on the host kernel (a kernel exploit defeats it; the VM backend is for that)",
    "qemu": "a QEMU microVM per zone: its own kernel, no network device, one virtio-serial "
    "port; inside, the sandbox's seccomp filter, uid, rlimits and Landlock",
    "unsafe-process": "a plain subprocess: NO isolation, for debugging only",
}


async def print_doctor(console: Console, backends: list[str] | None) -> bool:
    checks = await check_all(backends)
    console.print(_table(checks))
    for check in checks:
        if check.error:
            console.print(f"[red]{check.backend}/{check.role}[/]: {check.error}")
    for name in dict.fromkeys(c.backend for c in checks):
        console.print(f"[bold]{name}[/]: {EXPLAIN.get(name, '')}")
    console.print(
        f"landlock ABI {abi_version() or 'unavailable'}; cgroups: {cgroups.mode()} "
        f"(rlimits always); seccomp denies {len(DENIED_SYSCALLS)} syscalls and "
        "every socket family but AF_UNIX"
    )
    if any(c.backend == "qemu" and not c.error for c in checks):
        console.print(_qemu_line())
    console.print(_local_model_line())
    sandbox = [c for c in checks if c.backend == "sandbox"]
    return bool(sandbox) and all(c.ok for c in sandbox)


def _qemu_line() -> str:
    """The accelerator the qemu backend uses here, and why; its kernel and bundle."""
    from threezone.backends.qemu import QemuBackend

    facts = QemuBackend().describe()
    return "qemu: " + "; ".join(f"{key} {value}" for key, value in facts.items())


def _local_model_line() -> str:
    """Whether ``planner.kind = "local"`` can run here with the bundled model."""
    import importlib.util

    from threezone.planner.local import BUNDLED_SHA256, ModelError, bundled_model, verify_model

    path = bundled_model()
    if path is None:
        return "local planner model: not installed (make demo installs it)"
    try:
        verify_model(path, BUNDLED_SHA256)
    except ModelError as exc:
        return f"[red]local planner model[/]: {exc}"
    binding = (
        "xllamacpp installed" if importlib.util.find_spec("xllamacpp") else "xllamacpp MISSING"
    )
    return f"local planner model: {path} (SHA-256 as pinned; {binding})"


def _table(checks: list[ZoneCheck]) -> Table:
    table = Table(title="isolation verified from inside each zone (yes = the escape failed)")
    table.add_column("probe")
    for check in checks:
        table.add_column(f"{check.backend}\n{check.role}", justify="center")
    names = list(PROBE_NAMES)
    for check in checks:
        for probe in check.report.probes if check.report else []:
            if probe.name not in names:
                names.append(probe.name)
    for name in names:
        table.add_row(name, *(_cell(check, name) for check in checks))
    return table


def _cell(check: ZoneCheck, name: str) -> str:
    probes = {p.name: p for p in (check.report.probes if check.report else [])}
    probe = probes.get(name)
    if probe is None:
        return "[dim]-[/]"
    return "[green]yes[/]" if probe.blocked else "[red]NO[/]"
