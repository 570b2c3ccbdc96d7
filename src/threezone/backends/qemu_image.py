"""What a ``qemu`` zone boots: a Debian kernel from a cache, and an initramfs built here.

The kernel comes from Debian's own package (``apt-get download``, whose signatures apt
checks), unpacked into a cache, never installed into the host's ``/boot``. Its
compressed ``vmlinuz`` is turned into the uncompressed ``vmlinux`` QEMU can boot
directly (PVH entry), which roughly halves boot time under software emulation. The
virtio modules the guest needs are copied beside it, with their load order worked out
from each module's ``depends=`` field.

The initramfs is a *bundle*: the interpreter, the shared libraries it and its
extension modules link, and only the Python modules the zone programs import (compiled,
sourceless), at the same paths they have on the host. Nothing else of the host is in
the guest: no ``/etc``, no ``/home``, no host ``/proc``. A bundle is cached by the
hash of everything in it.

A cache entry that is missing or does not match its manifest is rebuilt; when that
cannot be done here, :class:`~threezone.errors.BackendError` names the command to run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import threezone
from threezone.errors import BackendError

BACKEND = "qemu"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
# virtio_mmio finds microvm's devices (described by ACPI); virtio_console is the channel.
GUEST_MODULES = ("virtio_mmio", "virtio_console")
BUNDLE_FORMAT = 1  # bump when the bundle's layout or the guest init changes shape

# What the guest runs: PID 1, then one of these as the zone.
GUEST_IMPORTS = (
    "threezone.zones.vm_guest",
    "threezone.zones.reader_main",
    "threezone.zones.planner_main",
    "threezone.zones.sandbox_exec",
    "threezone.testing.faulty_zone",
    "runpy",
    "ctypes",
    "email.parser",
    "email.policy",
    "email.headerregistry",
    "email.contentmanager",
    "email.generator",
    "email.feedparser",
    "zlib",  # zipimport of the rest of the standard library
    # hashlib's own implementations: OpenSSL's _hashlib is left out (below)
    "_md5",
    "_sha1",
    "_sha256",
    "_sha512",
    "_sha3",
    "_blake2",
)
# Extension modules the zones never use that would pull large libraries in (OpenSSL).
EXCLUDED_EXTENSIONS = ("_hashlib", "_ssl")
# Standard library packages no zone needs, left out of the fallback archive.
EXCLUDED_STDLIB = (
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "site-packages",
    "venv",
    "sqlite3",
    "curses",
    "dbm",
    "lib-dynload",
)


def cache_root() -> Path:
    """``$THREEZONE_QEMU_CACHE``, else ``$XDG_CACHE_HOME/threezone/qemu``."""
    override = os.environ.get("THREEZONE_QEMU_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "threezone" / "qemu"


# --- the kernel -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kernel:
    directory: Path
    release: str
    vmlinux: Path
    modules: tuple[Path, ...]  # in load order

    def digest(self) -> str:
        return _digest_files([self.vmlinux, *self.modules])


def ensure_kernel(root: Path | None = None, package: str | None = None) -> Kernel:
    """The cached kernel, fetched and unpacked first if it is missing or damaged."""
    root = root or cache_root()
    kernels = root / "kernels"
    for entry in sorted(kernels.glob("*/manifest.json"), reverse=True):
        kernel = _load_kernel(entry.parent)
        if kernel is not None:
            return kernel
        shutil.rmtree(entry.parent, ignore_errors=True)  # damaged: fetched again below
    return fetch_kernel(kernels, package or _resolve_package())


def _resolve_package() -> str:
    """The versioned image package Debian's cloud kernel meta-package points at today."""
    result = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], "find the guest kernel")
    for line in result.splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if match:
            return match.group(1)
    raise BackendError(BACKEND, f"apt-cache names no image package for {KERNEL_META_PACKAGE}")


def fetch_kernel(kernels: Path, package: str) -> Kernel:
    """``apt-get download`` the package, unpack it, keep the vmlinux and the modules."""
    kernels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kernels, prefix=".fetch-") as name:
        work = Path(name)
        os.chmod(work, 0o755)  # noqa: S103 - apt's _apt user writes the download here
        _run(["apt-get", "download", "-q", package], "download the guest kernel", cwd=work)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise BackendError(BACKEND, f"apt-get download {package} left no .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), str(work / "x")], "unpack the guest kernel")
        vmlinuz = sorted((work / "x" / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise BackendError(BACKEND, f"{package} holds no /boot/vmlinuz-*")
        release = vmlinuz[0].name.removeprefix("vmlinuz-")
        target = work / release
        target.mkdir()
        (target / "vmlinux").write_bytes(extract_vmlinux(vmlinuz[0].read_bytes()))
        module_tree = work / "x" / "lib" / "modules" / release
        names = []
        for path in module_order(module_tree, GUEST_MODULES):
            shutil.copyfile(path, target / path.name)
            names.append(path.name)
        manifest = {"release": release, "package": package, "modules": names}
        manifest["digest"] = _digest_files([target / "vmlinux", *(target / n for n in names)])
        (target / "manifest.json").write_text(json.dumps(manifest, indent=1))
        final = kernels / release
        shutil.rmtree(final, ignore_errors=True)
        target.rename(final)
    kernel = _load_kernel(final)
    assert kernel is not None
    return kernel


def _load_kernel(directory: Path) -> Kernel | None:
    """The kernel in ``directory`` if its files match the manifest, else None."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        kernel = Kernel(
            directory,
            str(manifest["release"]),
            directory / "vmlinux",
            tuple(directory / str(name) for name in manifest["modules"]),
        )
        if kernel.digest() != manifest["digest"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return kernel


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage (Debian compresses it with LZ4's legacy format)."""
    for magic, decompress in ((_LZ4_LEGACY, _lz4_legacy), (b"\x1f\x8b\x08", _gunzip)):
        start = bzimage.find(magic)
        while start != -1:
            try:
                elf = decompress(bzimage[start:])
            except (ValueError, EOFError, OSError, RuntimeError):
                elf = b""
            if elf.startswith(b"\x7fELF"):
                return elf
            start = bzimage.find(magic, start + 1)
    raise BackendError(BACKEND, "no LZ4- or gzip-compressed ELF kernel in the bzImage")


_LZ4_LEGACY = struct.pack("<I", 0x184C2102)


def _lz4_legacy(data: bytes) -> bytes:
    """LZ4's legacy frame: the magic, then blocks of (LE32 size, block) of <= 8 MiB each."""
    import lz4.block  # type: ignore[import-untyped]

    out = bytearray()
    offset = 4
    while offset + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, offset)
        if size in {0x184C2102, 0} or offset + 4 + size > len(data):
            break  # a second frame, or the end: the kernel follows with its own data
        block = data[offset + 4 : offset + 4 + size]
        try:
            out += lz4.block.decompress(block, uncompressed_size=8 << 20)
        except lz4.block.LZ4BlockError:
            break  # past the end of the compressed kernel
        offset += 4 + size
    return bytes(out)


def _gunzip(data: bytes) -> bytes:
    import zlib

    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def module_order(tree: Path, wanted: Iterable[str]) -> list[Path]:
    """The ``.ko`` files for ``wanted`` and what they depend on, dependencies first."""
    files = {p.stem: p for p in tree.rglob("*.ko")}
    order: list[Path] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise BackendError(BACKEND, f"module dependency loop: {' -> '.join((*path, name))}")
        if name not in files:
            raise BackendError(BACKEND, f"the guest kernel has no module {name}")
        for dependency in _depends(files[name]):
            visit(dependency, (*path, name))
        if files[name] not in order:
            order.append(files[name])

    for name in wanted:
        visit(name, ())
    return order


def _depends(module: Path) -> list[str]:
    match = re.search(rb"\x00depends=([^\x00]*)\x00", module.read_bytes())
    if match is None or not match.group(1):
        return []
    return [n.replace("-", "_") for n in match.group(1).decode().split(",") if n]


# --- the bundle -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bundle:
    initramfs: Path
    digest: str
    python: str  # the interpreter's path, on the host and in the guest
    size: int


KEEP_BUNDLES = 4  # per cache: this installation's and those of a few others


def ensure_bundle(kernel: Kernel, root: Path | None = None) -> Bundle:
    """The initramfs for this kernel and this installation, built if not cached."""
    root = root or cache_root()
    files, python = collect_files()
    digest = hashlib.sha256()
    digest.update(f"format {BUNDLE_FORMAT}\nkernel {kernel.digest()}\n".encode())
    for path in sorted({*files, __file__}):  # this builder's own code is an input too
        info = os.stat(path)
        digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    key = digest.hexdigest()[:24]
    target = root / "bundles" / f"initramfs-{key}.cpio"
    if target.exists():
        os.utime(target)  # recently used: kept when other installations prune
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        _prune_bundles(target.parent, keep=KEEP_BUNDLES - 1)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".build-")
        with os.fdopen(fd, "wb") as out:
            write_initramfs(out, files, python, kernel)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    return Bundle(target, key, python, target.stat().st_size)


def _prune_bundles(directory: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently used bundles. Several installations
    (checkouts, virtualenvs) share the cache, and another may be booting from one."""
    bundles = sorted(
        directory.glob("initramfs-*.cpio"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in bundles[keep:]:
        old.unlink(missing_ok=True)


_COLLECT = """
import importlib, json, pkgutil, sys
names = json.loads(sys.argv[1])
for name in names:
    importlib.import_module(name)
import encodings
for info in pkgutil.iter_modules(encodings.__path__):
    try:
        importlib.import_module("encodings." + info.name)
    except ImportError:
        pass
from threezone.zones import vm_guest
vm_guest.warm_up()
import argparse
argparse.ArgumentParser(prog="warm").format_help()
files = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
print(json.dumps({"files": files, "path": sys.path, "executable": sys.executable}))
"""


@functools.cache
def collect_files() -> tuple[frozenset[str], str]:
    """Every file the guest needs: modules the zones import, the interpreter, its libs.
    Listed once per process (a subprocess imports every zone program to find them)."""
    python = os.path.realpath(sys.executable)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep + os.pathsep.join(_python_path())}
    result = subprocess.run(
        [python, "-S", "-c", _COLLECT, json.dumps(GUEST_IMPORTS)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise BackendError(BACKEND, f"cannot list the zone's modules: {result.stderr[-800:]}")
    found = json.loads(result.stdout)
    files = {
        os.path.realpath(f)
        for f in found["files"]
        if os.path.basename(f).split(".")[0] not in EXCLUDED_EXTENSIONS
    }
    files |= {str(p) for p in _package_sources()}
    files.add(python)
    files.add(sys.executable)  # a venv's python: a link to it (`sandbox run` uses it)
    stdlib = (
        Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    )
    files.add(str(stdlib / "os.py"))  # the landmark Python finds its prefix by
    for binary in [f for f in files if _is_elf(f)]:
        files |= shared_libraries(binary)
    return frozenset(files), python


def _python_path() -> list[str]:
    """Where this installation's packages live (site-packages, an editable src/)."""
    package_root = str(Path(threezone.__file__).resolve().parent.parent)
    paths = [p for p in sys.path if p.endswith("site-packages")]
    return [package_root, *paths]


def _package_sources() -> Iterator[Path]:
    """All of threezone's own zone-side code (small), so a lazy import never misses."""
    root = Path(threezone.__file__).resolve().parent
    for package in ("zones", "readers", "sanitize", "planner", "protocol"):
        yield from (root / package).rglob("*.py")
    yield root / "__init__.py"
    yield root / "errors.py"


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


def shared_libraries(binary: str) -> set[str]:
    """The libraries ``ldd`` says ``binary`` loads, the dynamic loader included."""
    result = subprocess.run(
        ["ldd", binary],  # noqa: S607 - glibc's ldd, on PATH
        capture_output=True,
        text=True,
        check=False,
    )
    libs: set[str] = set()
    for line in result.stdout.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libs.add(match.group(1))
            libs.add(os.path.realpath(match.group(1)))
    return libs


# --- cpio (newc) ----------------------------------------------------------------------------------


class CpioWriter:
    """The initramfs format the kernel unpacks: ``newc`` headers, 4-byte alignment."""

    def __init__(self, out: object) -> None:
        self._out = out
        self._ino = 1000
        self._seen: set[str] = set()

    def _write(self, data: bytes) -> None:
        self._out.write(data)  # type: ignore[attr-defined]

    def entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        name = name.lstrip("/")
        if name in self._seen:
            return
        self._seen.add(name)
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
        self._write(header + encoded + _pad(len(header) + len(encoded)))
        self._write(data + _pad(len(data)))

    def directory(self, name: str) -> None:
        parts = [p for p in name.strip("/").split("/") if p]
        for i in range(1, len(parts) + 1):
            self.entry("/".join(parts[:i]), stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.directory(os.path.dirname(name))
        self.entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self.directory(os.path.dirname(name))
        self.entry(name, stat.S_IFLNK | 0o777, target.encode())

    def node(self, name: str, major: int, minor: int) -> None:
        self.directory(os.path.dirname(name))
        self.entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def close(self) -> None:
        self.entry("TRAILER!!!", 0)


def _stripped(path: str, strip: str | None) -> bytes:
    """An ELF file without its debugging symbols (pyenv's libpython: 22 MB to 4 MB)."""
    if strip is None or not _is_elf(path):
        return Path(path).read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        copy = os.path.join(scratch, "elf")
        result = subprocess.run(
            [strip, "--strip-debug", "-o", copy, path], capture_output=True, check=False
        )
        return Path(copy if result.returncode == 0 else path).read_bytes()


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def write_initramfs(out: object, files: frozenset[str], python: str, kernel: Kernel) -> None:
    """The bundle: host files at their own paths, compiled; /init; the modules."""
    cpio = CpioWriter(out)
    for name in ("dev", "proc", "sys", "tmp", "run"):
        cpio.directory(name)
    cpio.node("dev/console", 5, 1)
    cpio.node("dev/null", 1, 3)
    for link in ("bin", "lib", "lib64", "sbin"):  # Debian's merged /usr
        top = Path("/") / link
        if top.is_symlink():
            cpio.symlink(link, os.readlink(top))
    strip = shutil.which("strip")
    for name in sorted(files):
        real = os.path.realpath(name)
        alias = os.path.join(os.path.realpath(os.path.dirname(name)), os.path.basename(name))
        if alias != real:  # a library's soname link: the link, and the file once
            cpio.symlink(alias, os.path.relpath(real, os.path.dirname(alias)))
        path = real  # /lib/x is /usr/lib/x on Debian: stored once, at the real path
        if path.endswith(".py") and not path.endswith(f"{os.sep}os.py"):
            cpio.file(path[:-3] + ".pyc", compile_pyc(path))
            continue
        mode = 0o755 if os.access(path, os.X_OK) else 0o644
        cpio.file(path, _stripped(path, strip), mode)
    for module in kernel.modules:
        cpio.file(f"threezone/modules/{module.name}", module.read_bytes())
    order = "\n".join(m.name for m in kernel.modules) + "\n"
    cpio.file("threezone/modules.order", order.encode())
    cpio.file(STDLIB_ARCHIVE, stdlib_archive(files))
    cpio.file("threezone/path", "\n".join([*_python_path(), f"/{STDLIB_ARCHIVE}"]).encode())
    init = (
        f"#!{python} -IS\n"
        "import sys\n"
        "sys.path[:0] = open('/threezone/path').read().split()\n"
        "from threezone.zones import vm_guest\n"
        "vm_guest.main()\n"
    )
    cpio.file("init", init.encode(), 0o755)
    cpio.close()


STDLIB_ARCHIVE = "threezone/stdlib.zip"


def compile_pyc(path: str) -> bytes:
    """A sourceless, unchecked hash-based ``.pyc`` (PEP 552): no mtime to go stale."""
    import importlib.util
    import marshal

    source = Path(path).read_bytes()
    code = compile(source, path, "exec", dont_inherit=True)
    flags = struct.pack("<I", 0b01)  # hash-based, not checked against a source
    return (
        importlib.util.MAGIC_NUMBER
        + flags
        + importlib.util.source_hash(source)
        + marshal.dumps(code)
    )


def stdlib_archive(loose: frozenset[str]) -> bytes:
    """The rest of the standard library, compiled, as a zip on ``sys.path`` after the
    loose files: a module imported lazily (argparse's shutil) is still found."""
    import io
    import zipfile

    stdlib = (
        Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in sorted(stdlib.rglob("*.py")):
            relative = path.relative_to(stdlib)
            if relative.parts[0] in EXCLUDED_STDLIB or str(path) in loose:
                continue
            try:
                archive.writestr(str(relative.with_suffix(".pyc")), compile_pyc(str(path)))
            except (SyntaxError, ValueError, UnicodeDecodeError):
                continue  # a file of deliberately broken code (lib2to3's test data)
    return buffer.getvalue()


# --- helpers --------------------------------------------------------------------------------------


def _digest_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    if shutil.which(argv[0]) is None:
        raise BackendError(
            BACKEND,
            f"cannot {what}: {argv[0]} is not installed (Debian's apt is needed to fetch "
            "the guest kernel)",
            f"on Debian, run as root: {' '.join(argv)}",
        )
    result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False, timeout=600)
    if result.returncode != 0:
        raise BackendError(
            BACKEND,
            f"cannot {what}: {' '.join(argv)} failed: {result.stderr.strip()[-500:]}",
            f"check that apt works, then run: {' '.join(argv)}",
        )
    return result.stdout
