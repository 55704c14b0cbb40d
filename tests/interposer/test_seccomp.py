"""The seccomp filter on its own: without a tracer, a SECCOMP_RET_TRACE call fails with ENOSYS,
so a child that installs the filter shows exactly which calls would stop."""

from __future__ import annotations

import errno
import fcntl
import os
import resource

from interposer import seccomp
from interposer.syscalls import SPECS


def _in_filtered_child(ranges: seccomp.FdRanges | None, body) -> dict[str, str]:  # type: ignore[no-untyped-def]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            seccomp.install(seccomp.build_filter(ranges))
            results = body()
            os.write(w, repr(results).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    return eval(data.decode())  # noqa: S307 - our own child's repr of a dict of strings


def _try(f, *a):  # type: ignore[no-untyped-def]
    try:
        f(*a)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]


def test_every_table_entry_is_trapped_and_nothing_else():
    assert {s.name for s in SPECS} == set(seccomp.traced_syscalls())


def test_path_calls_stop_and_io_runs_untrapped(tmp_path):
    ranges = seccomp.FdRanges.for_limit(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    assert ranges is not None
    f = tmp_path / "f"
    f.write_text("x")

    assert _in_filtered_child(ranges, lambda: {"open": _try(os.open, str(f), os.O_RDONLY)}) == {
        "open": "ENOSYS"
    }

    def checks() -> dict[str, str]:
        out = {
            "stat": _try(os.stat, str(f)),
            "getcwd": _try(os.getcwd),
            "fstat-low-fd": _try(os.fstat, 0),
            "write": _try(os.write, 2, b""),
            "pipe": _try(os.pipe),
            "dup-low": _try(os.dup, 0),
        }
        high = os.dup2(0, ranges.content + 1)
        out["fstat-content-range"] = _try(os.fstat, high)
        out["dup-content-range"] = _try(os.dup, high)
        d = os.dup2(0, ranges.dirs + 1)
        out["fstat-dirs-range"] = _try(os.fstat, d)
        out["fstatat-nofollow-dirs-range"] = _try(lambda: os.stat("x", dir_fd=d, follow_symlinks=False))
        out["fstatat-follow-dirs-range"] = _try(lambda: os.stat("x", dir_fd=d))
        out["readlinkat-dirs-range"] = _try(lambda: os.readlink("x", dir_fd=d))
        out["readlinkat-low"] = _try(lambda: os.readlink("x", dir_fd=0))
        out["copy-dir-min-0"] = _try(fcntl.fcntl, d, fcntl.F_DUPFD_CLOEXEC, 0)  # find's per-entry copy
        out["copy-dir-min-3"] = _try(fcntl.fcntl, d, fcntl.F_DUPFD_CLOEXEC, 3)  # fts's working directory
        out["copy-content-min-0"] = _try(fcntl.fcntl, high, fcntl.F_DUPFD, 0)
        out["copy-low-min-3"] = _try(fcntl.fcntl, 0, fcntl.F_DUPFD, 3)
        return out

    got = _in_filtered_child(ranges, checks)
    assert got == {
        "stat": "ENOSYS",
        "getcwd": "ENOSYS",
        "fstat-low-fd": "ok",
        "write": "ok",
        "pipe": "ok",
        "dup-low": "ok",
        "fstat-content-range": "ENOSYS",
        "dup-content-range": "ENOSYS",
        "fstat-dirs-range": "ok",
        "fstatat-nofollow-dirs-range": "ENOTDIR",  # reached the kernel: fd 0 is not a directory
        "fstatat-follow-dirs-range": "ENOSYS",
        "readlinkat-dirs-range": "ENOTDIR",
        "readlinkat-low": "ENOSYS",
        "copy-dir-min-0": "ok",
        "copy-dir-min-3": "ENOSYS",
        "copy-content-min-0": "ENOSYS",
        "copy-low-min-3": "ok",
    }


def test_without_reserved_ranges_only_fstat_style_calls_pass():
    got = _in_filtered_child(
        None, lambda: {"fstat": _try(os.fstat, 1), "stat": _try(os.stat, "/"), "lstat": _try(os.lstat, "/")}
    )
    assert got == {"fstat": "ok", "stat": "ENOSYS", "lstat": "ENOSYS"}


def test_fd_ranges_follow_the_limit():
    assert seccomp.FdRanges.for_limit(256) is None
    r = seccomp.FdRanges.for_limit(1 << 20)
    assert r == seccomp.FdRanges(768, 896, 1024)
    assert r.is_content(800) and r.is_dir(900) and not r.is_dir(1024)
