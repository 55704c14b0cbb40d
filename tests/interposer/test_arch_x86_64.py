"""The x86-64 facts the tracer writes into a job: ``struct stat`` exactly as the kernel fills it."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from interposer import arch_x86_64 as arch

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_SYMLINK_NOFOLLOW = -100, 0x100


def _kernel_stat(path: Path) -> bytes:
    """What ``newfstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW)`` writes into ``buf``."""
    buf = ctypes.create_string_buffer(b"\xa5" * 256, 256)  # poisoned: unused bytes must be written too
    r = _libc.syscall(arch.NR["newfstatat"], AT_FDCWD, os.fsencode(path), buf, AT_SYMLINK_NOFOLLOW)
    assert r == 0, os.strerror(ctypes.get_errno())
    assert buf.raw[arch.STAT_SIZE :] == b"\xa5" * (256 - arch.STAT_SIZE)  # the size is the kernel's
    return buf.raw[: arch.STAT_SIZE]


def test_packed_stat_is_what_the_kernel_writes(tmp_path: Path):
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(10**9 + 7)
    old = tmp_path / "before-1970"
    old.write_text("x")
    os.utime(old, ns=(-86_400_123_456_789, -1))  # negative seconds, nanoseconds normalised
    link = tmp_path / "link"
    link.symlink_to("before-1970")
    os.link(old, tmp_path / "twin")
    for path in (sparse, old, link, tmp_path, Path("/dev/null"), Path("/etc/passwd")):
        assert arch.pack_stat(os.lstat(path)) == _kernel_stat(path), path
