"""Isolation backends: how a zone's process is started and contained."""

from threezone.backends.base import Backend, Limits, ZoneHandle, ZoneSpec
from threezone.backends.qemu import QemuBackend
from threezone.backends.sandbox import SandboxBackend
from threezone.backends.unsafe_process import UnsafeProcessBackend
from threezone.errors import BackendError

BACKENDS: dict[str, type[Backend]] = {
    SandboxBackend.name: SandboxBackend,
    QemuBackend.name: QemuBackend,
    UnsafeProcessBackend.name: UnsafeProcessBackend,
}


def get_backend(name: str) -> Backend:
    """The backend called ``name``; never a silent fallback to another one."""
    try:
        return BACKENDS[name]()
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise BackendError(name, f"not available on this machine (available: {known})") from None


__all__ = ["BACKENDS", "Backend", "Limits", "ZoneHandle", "ZoneSpec", "get_backend"]
