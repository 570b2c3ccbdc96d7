"""The qemu backend's pure parts: the cpio writer, module order, vmlinux, exit codes."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
from pathlib import Path

import lz4.block  # type: ignore[import-untyped]
import pytest

from threezone.backends.qemu import guest_code
from threezone.backends.qemu_image import (
    CpioWriter,
    _prune_bundles,
    extract_vmlinux,
    module_order,
)
from threezone.errors import BackendError


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs cpio to read the archive back")
def test_cpio_archive_unpacks_with_gnu_cpio(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    cpio = CpioWriter(buffer)
    cpio.file("a/b/c.txt", b"hello\n")
    cpio.file("a/b/c.txt", b"second copy is dropped\n")
    cpio.symlink("a/link", "b/c.txt")
    cpio.file("odd", b"x" * 5, 0o755)
    cpio.close()
    subprocess.run(["cpio", "-idm", "--quiet"], input=buffer.getvalue(), cwd=tmp_path, check=True)
    assert (tmp_path / "a/b/c.txt").read_bytes() == b"hello\n"
    assert (tmp_path / "a/link").read_bytes() == b"hello\n"
    assert (tmp_path / "odd").stat().st_mode & 0o777 == 0o755


def _module(directory: Path, name: str, depends: str) -> None:
    (directory / f"{name}.ko").write_bytes(b"\x7fELF junk\x00depends=" + depends.encode() + b"\x00")


def test_module_order_puts_dependencies_first(tmp_path: Path) -> None:
    _module(tmp_path, "virtio_ring", "")
    _module(tmp_path, "virtio", "virtio_ring")
    _module(tmp_path, "virtio_console", "virtio,virtio_ring")
    names = [p.stem for p in module_order(tmp_path, ["virtio_console"])]
    assert names == ["virtio_ring", "virtio", "virtio_console"]


def test_module_order_refuses_missing_and_loops(tmp_path: Path) -> None:
    _module(tmp_path, "a", "b")
    _module(tmp_path, "b", "a")
    with pytest.raises(BackendError, match="loop"):
        module_order(tmp_path, ["a"])
    with pytest.raises(BackendError, match="no module"):
        module_order(tmp_path, ["absent"])


def test_vmlinux_comes_out_of_an_lz4_legacy_bzimage() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 100
    block = lz4.block.compress(elf, store_size=False)
    bzimage = b"MZ setup code" * 10 + struct.pack("<I", 0x184C2102)
    bzimage += struct.pack("<I", len(block)) + block + b"trailer"
    assert extract_vmlinux(bzimage) == elf


def test_a_bzimage_without_a_kernel_is_refused() -> None:
    with pytest.raises(BackendError, match="no LZ4"):
        extract_vmlinux(b"MZ" + b"\x00" * 1000)


@pytest.mark.parametrize(
    ("raw", "zone"),
    [(1, 0), (3, 1), (255, 127), (0, 127), (-9, -9), (2, 2)],
)
def test_guest_exit_codes_map_back(raw: int, zone: int) -> None:
    assert guest_code(raw) == zone


def test_only_the_most_recently_used_bundles_are_kept(tmp_path: Path) -> None:
    for age in range(6):
        bundle = tmp_path / f"initramfs-{age}.cpio"
        bundle.write_bytes(b"x")
        os.utime(bundle, (1_000_000 - age * 100, 1_000_000 - age * 100))
    (tmp_path / "unrelated.txt").write_text("kept")
    _prune_bundles(tmp_path, keep=3)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["initramfs-0.cpio", "initramfs-1.cpio", "initramfs-2.cpio", "unrelated.txt"]
