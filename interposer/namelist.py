"""``cvmfs-client run -n/--name-list FILE`` and ``-e/--env-list FILE``.

The name list is Parrot's: one ``PATH|HOW`` per line, written when the job ends, where HOW is
``fullcopy`` for a path whose content the job needed (opened, executed, a ``#!`` interpreter or
ELF loader taken from /cvmfs) and ``metadatacopy`` for one it only looked at (stat, lstat,
access, readlink, chdir, xattrs, modifications...). A path is listed once; ``fullcopy`` wins.
PATH is absolute and the job's own name for it: ``/cvmfs/FQRN/...`` (never a cache or shadow
path), mount-list prefixes and the private /tmp mapped back. Relative paths are joined to the
job's cwd or directory fd; ``.``/``..`` are folded lexically (the name as written, symlinks
unresolved), and for content read from /cvmfs the path reached after following symlinks is
listed too. Failed lookups are listed as well (search paths): ``cvmfs-client prewarm`` records
them as not found.

The environment list is the job's initial environment, ``NAME=value`` entries each ended by a
NUL byte (as ``/proc/PID/environ``); values may hold any character but NUL. Restore it with
``xargs -0 -a FILE sh -c 'exec env -i "$@" COMMAND...' sh`` (or, in bash, read it with
``read -r -d ''`` into an array ``a`` and run ``env -i "${a[@]}" COMMAND...``).

Both files are written atomically (a temporary file renamed into place). Without the options
the tracer makes no call here.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from .syscalls import Kind, Spec

FULL = "fullcopy"
META = "metadatacopy"
AT_FDCWD = -100
O_PATH = 0o10000000
_MASK32 = 0xFFFFFFFF


def _int(value: int) -> int:
    value &= _MASK32
    return value - (1 << 32) if value & 0x80000000 else value


class NameList:
    """Paths the job used, in first-use order, with how."""

    def __init__(self, logical_of: Callable[[str], str | None]) -> None:
        self._logical_of = logical_of  # host path -> the job's name (None: the job has none)
        self.paths: dict[str, str] = {}

    def note(self, path: str, how: str) -> None:
        if how == FULL or path not in self.paths:
            self.paths[path] = how

    def syscall(self, ctx: object, spec: Spec, args: tuple[int, ...]) -> None:
        """Record the path argument(s) of a trapped call (before it is decided)."""
        if spec.path is None:
            return
        how = META
        if spec.kind is Kind.EXEC:
            how = FULL
        elif spec.kind is Kind.OPEN:
            how = FULL
            if spec.flags is not None and spec.name != "openat2" and _int(args[spec.flags]) & O_PATH:
                how = META
        self._one(ctx, spec.dirfd, spec.path, args, how)
        if spec.path2 is not None:
            self._one(ctx, spec.dirfd2, spec.path2, args, META)

    def _one(
        self, ctx: object, dirfd_arg: int | None, path_arg: int, args: tuple[int, ...], how: str
    ) -> None:
        raw = ctx.read_path(args[path_arg])  # type: ignore[attr-defined]
        if not raw:
            return
        path = os.fsdecode(raw)
        if path[0] != "/":
            dirfd = _int(args[dirfd_arg]) if dirfd_arg is not None else AT_FDCWD
            real = ctx.cwd() if dirfd == AT_FDCWD else ctx.fd_path(dirfd)  # type: ignore[attr-defined]
            if real is None or not real.startswith("/"):
                return
            base = self._logical_of(real) or real
            path = base.rstrip("/") + "/" + path
        path = posixpath.normpath(path)
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        self.note(path, how)

    def text(self) -> str:
        return "".join(f"{p}|{h}\n" for p, h in self.paths.items() if "\n" not in p)

    def write(self, dest: Path) -> None:
        write_atomic(dest, self.text().encode("utf-8", "surrogateescape"))


def env_bytes(env: Mapping[str, str]) -> bytes:
    return b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in env.items())


def write_atomic(dest: Path, data: bytes) -> None:
    dest = Path(dest).absolute()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
