"""Isolation backends: how a zone's process is started and contained."""

from __future__ import annotations

from typing import TYPE_CHECKING

from threezone.backends.base import Backend, Limits, ZoneHandle, ZoneSpec
from threezone.backends.qemu import QemuBackend, QemuSettings
from threezone.backends.sandbox import SandboxBackend
from threezone.backends.unsafe_process import UnsafeProcessBackend
from threezone.errors import BackendError

if TYPE_CHECKING:
    from threezone.config.schema import Config

BACKENDS: dict[str, type[Backend]] = {
    SandboxBackend.name: SandboxBackend,
    QemuBackend.name: QemuBackend,
    UnsafeProcessBackend.name: UnsafeProcessBackend,
}


def get_backend(name: str, config: Config | None = None) -> Backend:
    """The backend called ``name``, with its settings from ``config`` where it has any;
    never a silent fallback to another one."""
    if name == QemuBackend.name and config is not None:
        qemu = config.qemu
        settings = QemuSettings(
            memory_mb=qemu.memory_mb,
            accel=qemu.accel,
            tb_size_mb=qemu.tb_size_mb,
            template=qemu.template,
        )
        return QemuBackend(settings)
    try:
        return BACKENDS[name]()
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise BackendError(name, f"not available on this machine (available: {known})") from None


__all__ = ["BACKENDS", "Backend", "Limits", "ZoneHandle", "ZoneSpec", "get_backend"]
