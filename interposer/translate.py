"""Per-syscall decisions: given a trapped call and its arguments, what should happen instead.

The translator is the policy; the tracer only carries its answers out. It reads what it needs
from the tracee through a small :class:`Context` (path strings, cwd, what an fd refers to), so
it can be unit-tested against a fake context, and answers with one of:

``None``
    run the call unchanged (the common case: host paths);
:class:`Rewrite`
    run a (possibly different) syscall with some arguments replaced, one of them a new path;
    optionally move the resulting fd into a reserved range (see :mod:`.seccomp`);
:class:`Return`
    do not run the call, return this value (``-errno`` for errors);
:class:`WriteReturn`
    do not run the call, write bytes into the tracee (readlink, getcwd, the ``struct stat`` of
    a file or symlink, read once from its placeholder) and return a value;
:class:`Exec`
    run ``execve`` of a local file, with a new argv when the tracer resolved a ``#!`` itself.

The invariant that keeps content right: a path that resolves to a regular file in a
repository is only ever opened (or executed) as its ``d/`` data path, never as its ``m/``
placeholder; metadata calls see ``m/``. Relative paths, directory fds, symlinks, ``..`` and
``/proc/self/fd`` links are all resolved here first, so no route reaches a placeholder's bytes.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable

from cvmfs_client import lazylog
from cvmfs_client.errors import CvmfsError
from cvmfs_client.records import Record

from . import arch_x86_64 as arch
from . import elf, magic_xattrs, statx
from .seccomp import FdRanges
from .shadow import ShadowError
from .syscalls import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_NO_AUTOMOUNT,
    AT_REMOVEDIR,
    AT_SYMLINK_NOFOLLOW,
    F_DUPFD,
    F_DUPFD_CLOEXEC,
    MOVE,
    O_ACCMODE,
    O_CLOEXEC,
    O_CREAT,
    O_DIRECTORY,
    O_EXCL,
    O_NOFOLLOW,
    O_PATH,
    O_RDONLY,
    O_TMPFILE,
    O_TRUNC,
    O_WRONLY,
    R_OK,
    RESOLVE_BENEATH,
    RESOLVE_CACHED,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_NO_XDEV,
    SPECS,
    W_OK,
    X_OK,
    Effect,
    FlagStyle,
    Kind,
    Spec,
    follows_last,
    to_int,
)
from .vfs import (
    ENTRY,
    ERROR,
    HOST,
    MAX_SYMLINKS,
    ROOT,
    Mount,
    Namespace,
    Resolved,
    host_link_into_cvmfs,
    names_directory,
)

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)
if TYPE_CHECKING:  # the policy module is imported only by jobs that have one (see job.run)
    from .policy import Policy

log = lazylog.get(__name__)

BINPRM_BUF_SIZE = 256  # the kernel reads this much of a file to find "#!" (fs/binfmt_script.c)
MAX_INTERP_DEPTH = 4  # BINPRM_MAX_RECURSION
_MAPS = re.compile(rb"^/proc/(self|thread-self|\d+)(/task/\d+)?/(maps|smaps)$")
# The mount table a job reads: /etc/mtab is a link to /proc/self/mounts.
_MOUNTS = re.compile(rb"^/proc/(?:(self|thread-self|\d+)(?:/task/\d+)?/)?(mounts|mountinfo)$")
_MAGIC = re.compile(r"^/proc/(self|thread-self|\d+)(/task/\d+)?/(fd/\d+|cwd|exe|root)(/.*)?$")
_DEV_FD = re.compile(r"^/dev/(?:fd/(\d+)|(stdin|stdout|stderr))(/.*)?$")
_STD_FDS = {"stdin": "0", "stdout": "1", "stderr": "2"}
_MAGIC_ROOTS = (b"/proc/", b"/dev/")  # where a host path may be a magic link into /cvmfs
# Host trees where nobody puts a symlink into /cvmfs: paths there are not checked for one
# (the loader's probes, /etc/localtime for every line of `find -ls`, terminfo...).
_SYSTEM_ROOTS = (b"/usr/", b"/lib", b"/etc/", b"/bin/", b"/sbin/", b"/proc/", b"/dev/", b"/sys/", b"/run/")
# The calls whose handler lets a plain host path through before anything else (see
# Translator.fast_rule), and the opens among them that look at one flag first.
_HOST_RULE_CALLS = ("stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2")
_HOST_RULE_OPENS = ("open", "openat")
# What else than its path an errno answer of theirs from a remembered walk depends on: their
# value arguments (dirfd, flags, mode, statx's mask), not their buffers.
_ANSWER_KEYS = {
    "stat": (), "lstat": (), "newfstatat": (0, 3), "statx": (0, 2, 3), "access": (1,),
    "faccessat": (0, 2), "faccessat2": (0, 2, 3), "open": (1, 2), "openat": (0, 2, 3),
}  # fmt: skip
# fstat-like calls answered from an fd's entry alone: fstat(fd), newfstatat(fd, "", AT_EMPTY_PATH)
_FD_STATS = ("fstat", "newfstatat")
# calls whose answer from a walk of the pinned revision alone is a struct stat in their buffer
_STAT_CALLS = ("stat", "lstat", "newfstatat")
_OPEN_SPECIAL = (b"/etc/mtab",)  # opens answered by the translator although under a system root
_STAT_FLAGS = AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH | AT_NO_AUTOMOUNT  # what newfstatat accepts
_STATX_FLAGS = _STAT_FLAGS | statx.AT_STATX_SYNC_TYPE
_STATX_MASK_ARG = 3  # statx(dirfd, path, flags, mask, buf)
_XATTR_GETS = frozenset({"getxattr", "lgetxattr"})  # (path, name, value, size)
_XATTR_LISTS = frozenset({"listxattr", "llistxattr"})  # (path, list, size)
XATTR_NAME_MAX = 255
# Labels a security module gives every inode (SELinux, Smack): the kernel answers them for a
# FUSE mount too, before the file system is asked, so they are the placeholder's.
_LSM_LABELS = ("security.selinux", "security.SMACK64")


FUSE_SUPER_MAGIC = 0x65735546
# ro, nosuid, nodev, relatime, and ST_VALID, which the kernel adds: the real client's mount
_REPOSITORY_FLAGS = 0x1 | 0x2 | 0x4 | 0x1000 | 0x20


def repository_statfs(used: int, quota: int | None) -> bytes:
    """The ``struct statfs`` of a mounted repository (cvmfs.cc ``cvmfs_statfs``): 512-byte
    blocks, the quota as the size and what it leaves free; an unmanaged cache (no quota) as
    full at its current size. Inode counts are the real client's catalog bookkeeping, which
    has no counterpart here: 0."""
    block = 512
    if quota is None:
        blocks, free = used // block, 0
    else:
        blocks, free = quota // block, max(quota - used, 0) // block
    return arch.pack_statfs(FUSE_SUPER_MAGIC, block, blocks, free, free, 0, 0, 255, block, _REPOSITORY_FLAGS)


if TYPE_CHECKING:  # only annotations name it: the tracer's contexts have its shape
    from typing import Protocol

    class Context(Protocol):
        """What the translator may ask about the stopped tracee."""

        tid: int
        tgid: int
        # Set by Translator.locate when the decision's only walk gave the pinned revision's answer
        # (an entry, or an error): what that walk depended on, the absolute path or, for a path
        # relative to a shadow directory's fd, what the fd links to in /proc, NUL, the path. b"" when
        # another walk was made. Reset to None by the caller before each decision.
        pure: bytes | None
        # Set by Translator._fd_entry: what the content fd whose entry answered links to in /proc
        # (its struct stat depends on nothing else). Reset to None by the caller before each decision.
        fd_target: str | None

        def read_path(self, addr: int) -> bytes | None: ...
        def read_memory(self, addr: int, size: int) -> bytes | None: ...
        def cwd(self) -> str: ...
        def cwd_changed(self) -> None: ...
        def fd_path(self, fd: int) -> str | None: ...


class Rewrite(Record):
    """Make the call with these arguments instead (a new path written into scratch)."""

    __slots__ = ("nr", "args", "path", "path_arg", "reloc_base", "reloc_cmd", "path2", "path2_arg", "host")

    def __init__(
        self,
        nr: int,
        args: dict[int, int] | None = None,
        path: bytes | None = None,
        path_arg: int = 0,
        reloc_base: int = 0,
        reloc_cmd: int = F_DUPFD,
        path2: bytes | None = None,
        path2_arg: int = 0,
        host: bool = False,
    ) -> None:
        self.nr = nr
        self.args: dict[int, int] = {} if args is None else args  # argument index -> new value
        self.path = path  # written into scratch; its address goes to argument ``path_arg``
        self.path_arg = path_arg
        self.reloc_base = reloc_base  # 0: leave the fd where the kernel put it
        self.reloc_cmd = reloc_cmd
        self.path2 = path2  # rename/link: a second new path, for argument ``path2_arg``
        self.path2_arg = path2_arg
        self.host = host  # ``path`` is a host path (not a shadow entry or content the tracer made)


class Return(Record):
    """Skip the call; it returns ``value`` (a negative errno)."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value


class WriteReturn(Record):
    """Write ``data`` at ``addr`` in the job, skip the call; it returns ``value``."""

    __slots__ = ("addr", "data", "value")

    def __init__(self, addr: int, data: bytes, value: int) -> None:
        self.addr = addr
        self.data = data
        self.value = value


class Exec(Record):
    """An ``execve`` to run from the stub with a new file name (and argv)."""

    __slots__ = ("nr", "filename", "path_arg", "argv_arg", "argv", "args")

    def __init__(
        self,
        nr: int,
        filename: bytes,
        path_arg: int,
        argv_arg: int,
        argv: list[bytes | int] | None = None,
        args: dict[int, int] | None = None,
    ) -> None:
        self.nr = nr  # execve or execveat
        self.filename = filename
        self.path_arg = path_arg
        self.argv_arg = argv_arg
        self.argv = argv  # strings to write, or existing pointers to reuse
        self.args: dict[int, int] = {} if args is None else args  # other arguments to change


Action = Rewrite | Return | WriteReturn | Exec | None


def _pure(found: Resolved) -> bool:
    """Whether a walk's result is the pinned revision's alone: an entry, or an error but EIO."""
    return found.kind == ENTRY or found.kind == ERROR and found.errno != errno.EIO


class FastRule(Record):
    """See :meth:`Translator.fast_rule`: which calls with which paths the kernel answers alone.

    A call among ``calls`` (path-only) or ``opens`` (their flags argument decides too: an open
    with ``directory_flag`` goes to the translator, as one of ``open_special``) is left alone when
    its path is absolute, contains no "cvmfs" and starts with one of ``prefixes``; or starts with
    none of them nor of ``magic_roots`` and reaches no /cvmfs through a host symlink (the steps of
    :meth:`Translator._host_link_target`); the same for a path relative to a directory outside
    ``shadow_prefix`` (where the shadow trees are), joined to it. ``answer_keys``: per call, the
    arguments besides its path that an errno answer marked :attr:`Context.pure` depends on.
    ``fd_stats``: the calls that are an ``fstat`` when made on an fd (``newfstatat`` with an
    empty path and ``AT_EMPTY_PATH``, other ``stat_flags`` allowed), whose written answer
    depends on nothing but :attr:`Context.fd_target`. ``statx``: that call, its mask argument,
    and the flags and mask :meth:`Translator._stat_answer` answers from a placeholder.
    ``xattr_gets``: ``(l)getxattr``, under the host rule too, and answered ENODATA for an entry
    of a mounted tree that its directory's marker does not name (:meth:`_xattr`), unless the
    name is one of ``xattr_python`` (the magic ones) or starts with one of ``xattr_labels``."""

    __slots__ = (
        "calls", "opens", "prefixes", "open_special", "directory_flag", "answer_keys", "fd_stats",
        "empty_path", "stat_flags", "stat_calls", "magic_roots", "shadow_prefix", "statx",
        "xattr_gets", "xattr_python", "xattr_labels",
    )  # fmt: skip

    def __init__(
        self,
        calls: tuple[str, ...],
        opens: tuple[str, ...],
        prefixes: tuple[bytes, ...],
        open_special: tuple[bytes, ...],
        directory_flag: int,
        answer_keys: dict[str, tuple[int, ...]],
        fd_stats: tuple[str, ...],
        empty_path: int,
        stat_flags: int,
        stat_calls: tuple[str, ...],
        magic_roots: tuple[bytes, ...],
        shadow_prefix: bytes,
        statx: tuple[str, int, int, int],
        xattr_gets: tuple[str, ...] = (),
        xattr_python: tuple[bytes, ...] = (),
        xattr_labels: tuple[bytes, ...] = (),
    ) -> None:
        self.calls = calls
        self.opens = opens
        self.prefixes = prefixes
        self.open_special = open_special
        self.directory_flag = directory_flag
        self.answer_keys = answer_keys
        self.fd_stats = fd_stats
        self.empty_path = empty_path
        self.stat_flags = stat_flags
        self.stat_calls = stat_calls
        self.magic_roots = magic_roots
        self.shadow_prefix = shadow_prefix
        self.statx = statx
        self.xattr_gets = xattr_gets
        self.xattr_python = xattr_python
        self.xattr_labels = xattr_labels


class Translator:
    """Decides what each trapped call does; see the module docstring."""

    def __init__(
        self,
        ns: Namespace,
        ranges: FdRanges | None,
        relocate_host_dirs: bool = True,
        policy: Policy | None = None,
    ) -> None:
        self.ns = ns
        self.ranges = ranges
        self.policy = policy
        self.on_content: Callable[[str], None] | None = None  # --name-list: /cvmfs content used
        # With a policy, host directory fds stay low: calls relative to them must all be checked.
        self.relocate_host_dirs = relocate_host_dirs and ranges is not None and policy is None
        self._warned_32bit: set[str] = set()
        self._memo: dict[tuple[bytes, bool], Resolved] = {}
        self._real_dirs: set[str] = set()  # host directories reached without a link into /cvmfs
        self._fd_entries: dict[str, Resolved] = {}  # content fd targets (d/ paths) -> entries
        # First bytes and PT_INTERP of verified content run by the job (content never changes,
        # so a program started 200 times is read once); host files are read at each execve.
        self._heads: dict[bytes, bytes | None] = {}
        # execve of an absolute /cvmfs path that ran a program (not a script) -> the file run:
        # entry, mode and content are the revision's, the same at every exec of this job
        self._execs: dict[bytes, bytes] = {}
        # (fqrn, xattr): errno if no entry has one (notify.FastPath.add_labels tells C)
        self.labels: dict[tuple[str, str], int] = {}
        self._interps: dict[bytes, elf.Interp | None] = {}
        handlers = {
            Kind.OPEN: self._open,
            Kind.STAT: self._stat,
            Kind.META: self._stat,
            Kind.FSTAT: self._fstat,
            Kind.ACCESS: self._access,
            Kind.READLINK: self._readlink,
            Kind.EXEC: self._exec,
            Kind.CHDIR: self._chdir,
            Kind.FCHDIR: self._fchdir,
            Kind.GETCWD: self._getcwd,
            Kind.MODIFY: self._modify,
            Kind.MODIFY2: self._modify2,
            Kind.MODIFY_FD: self._modify_fd,
            Kind.DUP: self._dup,
        }
        # By syscall name: a str hash is cached, an Enum member's is computed in Python per call.
        self._by_name = {s.name: handlers[s.kind] for s in SPECS}
        for name in _XATTR_GETS | _XATTR_LISTS:
            self._by_name[name] = self._xattr
        self._by_name["statfs"] = self._statfs

    def decide(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        try:
            return self._by_name[spec.name](ctx, nr, spec, args)
        except (CvmfsError, ShadowError) as exc:
            log.warning("%s: %s", spec.name, exc)
            return Return(-errno.EIO)

    # -- locating a path ------------------------------------------------------------------

    def locate(self, ctx: Context, dirfd: int, raw: bytes, follow: bool, need: int = 0) -> Resolved | None:
        """Where ``raw`` (relative to ``dirfd``) leads, or ``None`` if the kernel alone is right."""
        first = ctx.pure is None
        ctx.pure = b""
        if self.policy is not None:
            return self._locate_policy(ctx, dirfd, raw, follow, need)
        if raw[:1] == b"/":
            if b"cvmfs" not in raw:
                if raw.startswith(_MAGIC_ROOTS):
                    return self._magic(ctx, os.fsdecode(raw), follow)
                return self._via_host_link(raw, follow)
            key = (raw, follow)
            found = self._memo.get(key)
            if found is None:
                found = self.ns.resolve(os.fsdecode(raw), follow)
                if found.kind != ERROR or found.errno != errno.EIO:  # EIO may be transient
                    if len(self._memo) >= 100_000:
                        self._memo.clear()
                    self._memo[key] = found
            if found.kind == HOST and not found.touched:  # "cvmfs" merely in a host path
                return self._via_host_link(raw, follow) or found
            if first and _pure(found):
                ctx.pure = raw  # the repository's answer for this revision: the same every time
            return found
        if not raw:
            return None
        if dirfd == AT_FDCWD:
            base = ctx.cwd()
        else:
            found = ctx.fd_path(dirfd)
            if found is None or not found.startswith("/"):
                return None  # not a directory (EBADF/ENOTDIR from the kernel) or anonymous
            base = found
        logical = self.ns.logical(base)
        rel = os.fsdecode(raw)
        if logical is None:
            full = base.rstrip("/") + "/" + rel
            if "cvmfs" not in full:
                return self._via_host_link(os.fsencode(full), follow)
            found_r = self.ns.resolve(full, follow)
            if found_r.kind == HOST and not found_r.touched:
                return self._via_host_link(os.fsencode(full), follow)
            return found_r
        found = self.ns.resolve(logical.rstrip("/") + "/" + rel, follow)
        if first and dirfd != AT_FDCWD and _pure(found):  # the same from this shadow directory
            ctx.pure = os.fsencode(base) + b"\0" + raw
        return found

    def fast_rule(self) -> FastRule | None:
        """What a supervisor that decides without Python (notify.py's fast path) may answer
        alone: the part of :meth:`_plain_host` that needs nothing but the path, and what the
        answers marked by :attr:`Context.pure` and :attr:`Context.fd_target` depend on.
        ``None`` under a policy, where every path is walked."""
        if self.policy is not None:
            return None
        return FastRule(
            calls=_HOST_RULE_CALLS,
            opens=_HOST_RULE_OPENS,
            prefixes=tuple(r for r in _SYSTEM_ROOTS if not r.startswith(_MAGIC_ROOTS)),
            open_special=_OPEN_SPECIAL,
            directory_flag=O_DIRECTORY if self.relocate_host_dirs else 0,
            answer_keys=dict(_ANSWER_KEYS),
            fd_stats=_FD_STATS,
            empty_path=AT_EMPTY_PATH,
            stat_flags=_STAT_FLAGS,
            stat_calls=_STAT_CALLS,
            magic_roots=_MAGIC_ROOTS,
            shadow_prefix=os.fsencode(self.ns.base_prefix) if self.ns is not None else b"",
            statx=("statx", _STATX_MASK_ARG, _STATX_FLAGS, statx.ASKED),
            xattr_gets=tuple(sorted(_XATTR_GETS)),
            xattr_python=tuple(sorted(n.encode() for n in magic_xattrs.ALL)),
            xattr_labels=tuple(n.encode() for n in _LSM_LABELS),
        )

    def _plain_host(self, raw: bytes) -> bool:
        """Whether :meth:`locate` leaves ``raw`` to the kernel whatever the call: an absolute
        host path outside /cvmfs, /proc and /dev, no host symlink into /cvmfs on the way, and
        no policy. Checked first by the handlers of the commonest calls, so that a host path
        costs them no flag decoding."""
        if b"cvmfs" in raw or raw[:1] != b"/" or self.policy is not None:
            return False
        if raw.startswith(_SYSTEM_ROOTS):
            return not raw.startswith(_MAGIC_ROOTS)
        return self._host_link_target(raw) is None

    def _via_host_link(self, raw: bytes, follow: bool) -> Resolved | None:
        """The /cvmfs entry a host path reaches through a host symlink, else ``None``."""
        if raw.startswith(_SYSTEM_ROOTS):
            return None
        into = self._host_link_target(raw, follow=follow)
        return self.ns.resolve(into, follow) if into is not None else None

    def _host_link_target(self, raw: bytes, depth: int = 0, follow: bool = True) -> str | None:
        """The /cvmfs path that host path ``raw`` reaches through a host symlink (``~/sw ->
        /cvmfs/...``, a venv's ``bin/python``), or ``None``: the kernel finds the same thing.

        One ``readlink`` answers for most paths: not a link (an ordinary file or directory),
        or a link elsewhere. A missing path is walked on the host when its directory was
        not seen before as an ordinary one (a path through ``~/sw`` is missing to the kernel).
        ``follow`` False: a final symlink (no trailing slash) is the answer itself.
        """
        path = os.fsdecode(raw)
        name = path.rstrip("/")  # "sw/" makes the kernel follow sw itself: ask about sw
        if name.rsplit("/", 1)[-1] in ("", ".", ".."):
            return host_link_into_cvmfs(path)
        try:
            target = os.readlink(name)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return None  # there, and not a symlink
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                return None
            parent = os.path.dirname(name) or "/"
            if parent in self._real_dirs:
                return None
            into = host_link_into_cvmfs(path)
            if into is None and os.path.isdir(parent) and not os.path.islink(parent):
                if len(self._real_dirs) >= 100_000:
                    self._real_dirs.clear()
                self._real_dirs.add(parent)
            return into
        if not follow and name == path:
            return None  # lstat, readlink... of the link itself: the kernel's, on the host
        if target.startswith("/"):
            return host_link_into_cvmfs(path) if target.startswith("/cvmfs") else None
        if ".." not in target.split("/") and depth < MAX_SYMLINKS:
            # libfoo.so -> libfoo.so.1: the same directory, which the kernel resolved
            parent = os.path.dirname(name) or "/"
            rest = path[len(name) :]  # the trailing slash, if any
            return self._host_link_target(os.fsencode(f"{parent}/{target}{rest}"), depth + 1)
        return host_link_into_cvmfs(path)

    def _logical_of(self, real: str) -> str | None:
        """The job's name for a host path: /cvmfs for shadow paths, mount-list prefixes reversed.

        ``None``: the job has no name for it (a host path hidden by the mount list).
        """
        found = self.ns.logical(real)
        if found is not None:
            return found
        return self.policy.logical(real) if self.policy is not None else real

    def _locate_policy(
        self, ctx: Context, dirfd: int, raw: bytes, follow: bool, need: int
    ) -> Resolved | None:
        """:meth:`locate` under a mount list or denials: every path is walked (see policy.py)."""
        policy = self.policy
        assert policy is not None
        if not raw:
            return None
        path = os.fsdecode(raw)
        moved = False
        mapped = True
        if path[0] != "/":
            real = ctx.cwd() if dirfd == AT_FDCWD else ctx.fd_path(dirfd)
            if real is None or not real.startswith("/"):
                return None  # not a directory (EBADF/ENOTDIR from the kernel) or anonymous
            base = self._logical_of(real)
            if base is None:  # a cwd/fd from outside the job's namespace: host paths, checked
                base, mapped = real, False
            moved = base != real
            path = base.rstrip("/") + "/" + path
        for _ in range(MAX_SYMLINKS):
            w = policy.walk(path, follow, need, ctx.tgid, ctx.tid, self._logical_of, mapped)
            mapped = True
            if w.err:
                return Resolved(ERROR, err=w.err, touched=True)  # touched: a policy's answer
            if not w.cvmfs:
                if not (w.changed or moved):
                    return None
                return Resolved(HOST, host=w.real, touched=True)
            r = self.ns.resolve(w.cvmfs, follow)
            if r.kind == HOST:
                path, moved = r.host, True  # a /cvmfs symlink or '..' led back out
                continue
            if r.kind != ERROR:
                err = policy.check(r.logical, need, ctx.tgid, ctx.tid)
                if err:
                    return Resolved(ERROR, err=err, touched=True)
            return r
        return Resolved(ERROR, err=errno.ELOOP, touched=True)

    def _magic(self, ctx: Context, path: str, follow: bool) -> Resolved | None:
        """``/proc/PID/fd/N``-style links: follow them ourselves when they lead into /cvmfs."""
        m = _DEV_FD.match(path)
        if m:
            path = f"/proc/self/fd/{m.group(1) or _STD_FDS[m.group(2)]}{m.group(3) or ''}"
        m = _MAGIC.match(path)
        if m is None:
            return None
        rest = m.group(4) or ""
        if not rest and not follow:
            return None  # lstat/readlink of the link itself: the kernel's answer is right
        target = _read_magic_link(ctx, m)
        if target is None:
            return None
        logical = self.ns.logical(target)
        if logical is None:
            return None
        return self.ns.resolve(logical + rest, follow)

    def _meta_target(self, r: Resolved) -> bytes:
        """The ``m/`` path (or the job's /cvmfs directory) of an entry, encoded once."""
        found = r.meta_b
        if found is None:
            if r.kind == ROOT:
                found = os.fsencode(self.ns.jobroot)
            else:
                assert r.mount is not None
                found = os.fsencode(r.mount.meta_path(r.inner))
            r.meta_b = found
        return found

    def _content_target(self, r: Resolved) -> bytes:
        """The ``d/`` path of a regular file, linked into place on first use."""
        found = r.data_b
        if found is None:
            assert r.mount is not None
            if self.on_content is not None:
                self.on_content(r.logical)
            found = os.fsencode(r.mount.content(r.inner))
            r.data_b = found
        return found

    def _fd_entry(self, ctx: Context, fd: int) -> Resolved | None:
        """For an fd the tracer handed out for content: its entry (``m/`` has its metadata).

        The fd's target is read from ``/proc`` at every call (the job may close it and reuse the
        number without a stop); what that target is in the repository is remembered.
        """
        real = ctx.fd_path(fd)
        if real is None:
            return None
        found = self._fd_entries.get(real)
        if found is None:
            logical = self.ns.logical(real)
            if logical is None or logical == "/cvmfs":
                return None
            found = self.ns.resolve(logical, False)
            if found.kind != ENTRY:
                return None
            if len(self._fd_entries) >= 100_000:
                self._fd_entries.clear()
            self._fd_entries[real] = found
        ctx.fd_target = real
        return found

    def _stat_answer(self, r: Resolved, spec: Spec, args: tuple[int, ...], flags: int) -> Action:
        """``stat`` of a regular file or symlink, answered with its placeholder's ``struct stat``.

        Placeholders and shadow symlinks never change once made (a concurrent job making the
        same directory links nothing over an existing name), so the kernel's answer is read
        once and written into the job's buffer: no stub, no path walk. Directories are left
        to the kernel: making their entries changes their ctime. ``None``: rewrite instead.
        The tracer's own search permission stands for the job's (they share credentials; a
        job that drops root's could not reach the shadow trees under root's cache anyway).
        """
        if spec.xbuf is not None:
            if r.kind != ENTRY or flags & ~_STATX_FLAGS or to_int(args[_STATX_MASK_ARG]) & ~statx.ASKED:
                return None  # a mask asking for more than basic stats, birth time and mount id
            data = r.statx_b or self._placeholder_bytes(r, True)
            buf = args[spec.xbuf]
        else:
            if spec.buf is None or flags & ~_STAT_FLAGS or r.kind != ENTRY:
                return None
            data = r.stat_b or self._placeholder_bytes(r, False)
            buf = args[spec.buf]
        return None if data is None else WriteReturn(buf, data, 0)

    def _placeholder_bytes(self, r: Resolved, as_statx: bool) -> bytes | None:
        """The placeholder's ``struct stat`` (or ``statx``), read and kept on ``r``; ``None``
        for a directory, or where the kernel should report an error itself."""
        entry = r.entry
        if entry is None or entry.is_dir:
            return None
        path = self._meta_target(r)
        if as_statx:
            r.statx_b = statx.shadow_statx(path)
            return r.statx_b
        try:
            r.stat_b = arch.pack_stat(os.lstat(path))
        except OSError:
            return None
        return r.stat_b

    @staticmethod
    def _path_rewrite(nr: int, spec: Spec, new: str | bytes) -> Rewrite:
        assert spec.path is not None
        return Rewrite(nr, path=new if isinstance(new, bytes) else os.fsencode(new), path_arg=spec.path)

    @staticmethod
    def _host_rewrite(nr: int, spec: Spec, host: str) -> Rewrite:
        """A rewrite to a host path (``..`` out of /cvmfs, a mount-list target): made with the
        job's permissions wherever it is made (notify.py checks them when running as root)."""
        assert spec.path is not None
        return Rewrite(nr, path=os.fsencode(host), path_arg=spec.path, host=True)

    # -- handlers ---------------------------------------------------------------------------

    def _open(
        self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...], located: Resolved | None = None
    ) -> Action:
        assert spec.path is not None
        raw = ctx.read_path(args[spec.path])
        if raw is None:
            return self._unreadable(ctx, args[spec.path])
        resolve = 0  # openat2's RESOLVE_* flags
        if spec.name == "creat":
            flags = O_CREAT | O_WRONLY | O_TRUNC
        elif spec.name == "openat2":
            how = ctx.read_memory(args[2], 24)  # struct open_how: flags, mode, resolve
            if how is None:
                return self._unreadable(ctx, 0)
            flags = int.from_bytes(how[:8], "little")
            resolve = int.from_bytes(how[16:], "little")
            if self.policy is not None and resolve & RESOLVE_IN_ROOT:
                return Return(-errno.EPERM)  # the kernel would walk from dirfd as "/", not we
            if resolve & _WALKED_RESOLVE and self.policy is None and located is None:
                follow = follows_last(spec, flags)
                walked = self._resolve_walk(ctx, _dirfd_arg(spec, args), raw, resolve, follow)
                if isinstance(walked, int):
                    return Return(-walked)
                if walked is not None:
                    return self._openat2(ctx, nr, spec, args, resolve, walked)
        else:
            assert spec.flags is not None
            flags = to_int(args[spec.flags])
        dirfd = _dirfd_arg(spec, args)
        if located is None:  # (openat2 resolved by its own rules: what raw names to the kernel differs)
            if raw in _OPEN_SPECIAL or raw.startswith(b"/proc/") and _MOUNTS.match(raw):
                return self._proc_mounts(ctx, nr, spec, raw)
            if self._plain_host(raw) and not (flags & O_DIRECTORY and self.relocate_host_dirs):
                return None
            if raw.startswith(b"/proc/") and _MAPS.match(raw):
                return self._proc_maps(ctx, nr, spec, raw)
        need = 0
        if self.policy is not None and not flags & O_PATH:
            acc = flags & O_ACCMODE
            need = R_OK if acc != O_WRONLY else 0
            if acc != O_RDONLY or flags & (O_CREAT | O_TRUNC):
                need |= W_OK
        r = located or self.locate(ctx, dirfd, raw, follows_last(spec, flags), need)
        cmd = F_DUPFD_CLOEXEC if flags & O_CLOEXEC else F_DUPFD
        if r is None or r.kind == HOST:
            dirs = self.relocate_host_dirs and flags & O_DIRECTORY and not flags & O_PATH
            if r is None:
                if not dirs or spec.name == "openat2":
                    return None
                assert self.ranges is not None
                return Rewrite(nr, reloc_base=self.ranges.dirs, reloc_cmd=cmd)
            rw = self._host_rewrite(nr, spec, r.host)
            if dirs and spec.name != "openat2":
                assert self.ranges is not None
                rw.reloc_base, rw.reloc_cmd = self.ranges.dirs, cmd
            return rw
        writing = (flags & O_ACCMODE) != O_RDONLY or flags & O_TRUNC
        if flags & O_CREAT and not (r.kind == ERROR and r.touched):
            # the kernel's order: the parent's lookup, then EISDIR for a name that must be a
            # directory, then the name itself (EEXIST, or EROFS creating it)
            err = self._parent_errno(ctx, dirfd, raw)
            if err:
                return Return(-err)
            if raw.endswith(b"/"):
                return Return(-errno.EISDIR)
            if _last_component(raw) in (b".", b".."):  # a directory that exists
                return Return(-(errno.EEXIST if flags & O_EXCL else errno.EISDIR))
            if r.kind == ERROR and r.errno == errno.ENOENT:
                return Return(-self._dangling_create_errno(ctx, dirfd, raw))
        if r.kind == ERROR:
            return Return(-r.errno)
        if flags & O_CREAT and flags & O_EXCL:
            return Return(-errno.EEXIST)
        if (flags & O_TMPFILE) == O_TMPFILE:
            return Return(-errno.EROFS)
        # openat2 opens as openat does where no flag of its lookup is left to the kernel
        reloc = (not resolve & _WALKED_RESOLVE or located is not None) and self.ranges is not None
        if r.kind == ROOT:
            if writing or flags & O_CREAT:
                return Return(-errno.EISDIR)
            return self._path_rewrite(nr, spec, self._meta_target(r))  # kept low: see seccomp.FdRanges
        entry, mount = r.entry, r.mount
        assert entry is not None and mount is not None
        if entry.is_dir:
            if writing or flags & O_CREAT:
                return Return(-errno.EISDIR)
            rw = self._path_rewrite(nr, spec, self._meta_target(r))
            if not flags & O_PATH:
                mount.shadow.ensure_populated(r.inner)
                # A repository root's fd stays low: relative to it, ".." must reach /cvmfs,
                # which only a translated call can (the kernel would climb into the cache).
                if reloc and r.inner:
                    assert self.ranges is not None
                    rw.reloc_base, rw.reloc_cmd = self.ranges.dirs, cmd
            return rw
        if flags & O_DIRECTORY:
            return Return(-errno.ENOTDIR)
        if entry.is_symlink and not flags & O_PATH:
            return Return(-errno.ELOOP)
        if writing:
            return Return(-errno.EROFS)
        if flags & O_PATH or not entry.is_regular:
            return self._path_rewrite(nr, spec, self._meta_target(r))
        target = self._content_target(r)
        rw = self._path_rewrite(nr, spec, target)
        if reloc:
            assert self.ranges is not None
            rw.reloc_base, rw.reloc_cmd = self.ranges.content, cmd
            # what the new fd will link to in /proc, and so what its fstat will find
            if len(self._fd_entries) >= 100_000:
                self._fd_entries.clear()
            ctx.fd_target = os.fsdecode(target)
            self._fd_entries[ctx.fd_target] = r
        return rw

    def _openat2(
        self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...], resolve: int, walked: Resolved
    ) -> Action:
        """openat2 with RESOLVE_BENEATH, _IN_ROOT, _NO_XDEV or _NO_SYMLINKS where /cvmfs is on the
        way, ``walked`` by those rules here (:meth:`_resolve_walk`): the call runs on the local
        path with those flags taken out of a copy of its ``open_how`` (the kernel would apply
        them to the shadow path, where every rewritten path is absolute)."""
        action = self._open(ctx, nr, spec, args, located=walked)
        if type(action) is Rewrite and action.path is not None and walked.kind != HOST:
            size = min(max(to_int(args[3]), 24), 4096)
            how = ctx.read_memory(args[2], size)
            if how is None:
                return self._unreadable(ctx, args[2])
            kept = resolve & (RESOLVE_NO_MAGICLINKS | RESOLVE_CACHED)
            action.path2, action.path2_arg = how[:16] + kept.to_bytes(8, "little") + how[24:], 2
        return action

    def _resolve_walk(
        self, ctx: Context, dirfd: int, raw: bytes, resolve: int, follow: bool
    ) -> Resolved | int | None:
        """Where openat2's ``raw`` leads under its resolve flags, walked as the kernel would
        (openat2(2)): EXDEV for what leaves dirfd (BENEATH: absolute paths and symlinks, ".."
        above it) or crosses a mount (NO_XDEV: into or out of a repository), ELOOP for a
        symlink (NO_SYMLINKS); IN_ROOT takes dirfd as "/". ``None``: no /cvmfs on the way, the
        kernel's alone."""
        beneath, in_root = resolve & RESOLVE_BENEATH, resolve & RESOLVE_IN_ROOT
        no_xdev, no_links = resolve & RESOLVE_NO_XDEV, resolve & RESOLVE_NO_SYMLINKS
        real = ctx.cwd() if dirfd == AT_FDCWD else ctx.fd_path(dirfd)
        start = self.ns.logical(real) if real is not None and real.startswith("/") else None
        path = os.fsdecode(raw)
        if start is None or not start.startswith("/cvmfs/"):
            if not path.startswith("/cvmfs") or in_root or beneath:
                return None  # a host directory: what the kernel finds there is right
            if no_xdev:
                return errno.EXDEV  # from the host's mount into a repository's
            start = "/"
        base = [c for c in start.split("/") if c]
        root = base if in_root else []
        cur = list(base)
        if path.startswith("/"):
            if beneath:
                return errno.EXDEV
            if not in_root:
                if not path.startswith("/cvmfs"):
                    return None  # from "/", as the kernel walks an absolute path anyway
                if no_xdev:
                    return errno.EXDEV  # from "/"'s mount into a repository's
            cur = list(root)
        todo = [c for c in path.split("/") if c and c != "."]
        trailing = names_directory(path)
        links = 0
        while todo:
            c = todo.pop(0)
            if c == "..":
                if in_root and len(cur) <= len(root):
                    continue  # ".." of the root is the root
                if beneath and len(cur) <= len(base):
                    return errno.EXDEV
                if no_xdev and len(cur) <= 2:
                    return errno.EXDEV  # out of the repository's mount
                if cur:
                    cur.pop()
                continue
            here = "/" + "/".join([*cur, c])
            if not here.startswith("/cvmfs/"):
                if here == "/cvmfs":
                    cur.append(c)
                    continue
                host = "/".join([here, *todo]) + ("/" if trailing else "")
                return Resolved(HOST, host=host, touched=True)  # the rest is the host's
            r = self.ns.resolve(here, False)
            if r.kind == ERROR:
                return r.errno
            link = r.kind == ENTRY and r.entry is not None and r.entry.is_symlink
            if link and (todo or follow or trailing):
                if no_links:
                    return errno.ELOOP
                links += 1
                if links > MAX_SYMLINKS:
                    return errno.ELOOP
                assert r.mount is not None
                target = r.mount.link_target(r.inner)
                if target.startswith("/"):
                    if beneath or (no_xdev and not in_root):
                        return errno.EXDEV
                    cur = list(root)
                todo = [p for p in target.split("/") if p and p != "."] + todo
                continue
            cur.append(c)
        final = self.ns.resolve("/" + "/".join(cur) + ("/" if trailing else ""), False)
        return None if final.kind == HOST else final  # a symlink only where not to be followed

    def content_stat(self, target: str) -> bytes | None:
        """The ``struct stat`` an ``fstat`` of a content fd linking to ``target`` gets, when
        known (a content open just made it the fd's target); ``None`` otherwise."""
        r = self._fd_entries.get(target)
        if r is None:
            return None
        return r.stat_b or self._placeholder_bytes(r, False)

    def _proc_maps(self, ctx: Context, nr: int, spec: Spec, raw: bytes) -> Action:
        """``/proc/PID/maps``: a snapshot with shadow paths shown as ``/cvmfs`` paths, and paths
        moved by the mount table (``package run``, ``--private-tmp``) by the job's names."""
        m = _MAPS.match(raw)
        assert m is not None
        policy = self.policy
        denied = self._proc_denied(ctx, raw)
        if denied is not None:
            return denied
        who = m.group(1).decode()
        pid = str(ctx.tgid) if who in ("self", "thread-self") else who
        task = f"/task/{ctx.tid}" if who == "thread-self" else (m.group(2) or b"").decode()
        try:
            with open(f"/proc/{pid}{task}/{m.group(3).decode()}", "rb") as f:
                text = f.read()
        except OSError:
            return None
        prefix = self.ns.base_prefix.encode()
        moved = policy is not None and policy.redirects
        if prefix not in text and not moved:
            return None
        lines = []
        changed = False
        for line in text.split(b"\n"):
            cut = line.find(b"/")
            if cut > 0 and (moved or line.startswith(prefix, cut)):
                real = os.fsdecode(line[cut:])
                logical = self._logical_of(real)
                if logical is not None and logical != real:
                    line = line[:cut] + os.fsencode(logical)
                    changed = True
            lines.append(line)
        if not changed:
            return None
        return self._path_rewrite(nr, spec, self.ns.snapshot(b"\n".join(lines)))

    def _proc_denied(self, ctx: Context, raw: bytes) -> Return | None:
        """Under a policy, another process's /proc file (maps, mounts) is denied like the rest
        of /proc (--sandbox), before any snapshot of it is made."""
        if self.policy is None:
            return None
        checked = self.locate(ctx, AT_FDCWD, raw, True, R_OK)
        return Return(-checked.errno) if checked is not None and checked.kind == ERROR else None

    def _proc_mounts(self, ctx: Context, nr: int, spec: Spec, raw: bytes) -> Action:
        """``/proc/PID/mounts``, ``mountinfo``, ``/etc/mtab``: the kernel's table plus a fuse
        mount for each repository mounted so far, as the real client's autofs shows them, so
        that wrappers checking ``grep /cvmfs/X /proc/mounts`` or ``mountpoint /cvmfs/X`` (and
        ``df``, ``findmnt``) see it. Device numbers are the shadow tree's (what ``stat`` of a
        /cvmfs path says), mount ids new ones."""
        denied = self._proc_denied(ctx, raw)
        if denied is not None:
            return denied
        mounted = sorted(name for name, m in self.ns.mounts.items() if m is not None)
        if not mounted:
            return None
        m = _MOUNTS.match(raw)
        who = m.group(1).decode() if m is not None and m.group(1) else "self"
        pid = str(ctx.tgid) if who in ("self", "thread-self") else who
        kind = m.group(2).decode() if m is not None else "mounts"
        if m is not None and not m.group(1) and kind != "mounts":
            return None  # there is a /proc/mounts, no /proc/mountinfo
        try:
            with open(f"/proc/{pid}/{kind}", "rb") as f:
                text = f.read()
            st = os.stat(self.ns.jobroot)
        except OSError:
            return None
        options = f"user_id={os.getuid()},group_id={os.getgid()},default_permissions,allow_other"
        lines = []
        if kind == "mounts":
            for name in mounted:
                lines.append(f"cvmfs2 /cvmfs/{name} fuse ro,nosuid,nodev,relatime,{options} 0 0\n")
        else:
            ids = [int(line.split(b" ", 1)[0]) for line in text.splitlines() if line[:1].isdigit()]
            top = max(ids, default=0)
            parent = ids[0] if ids else 1  # the job's root mount
            dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
            for i, name in enumerate(mounted, 1):
                where = f"/ /cvmfs/{name} ro,nosuid,nodev,relatime"
                lines.append(f"{top + i} {parent} {dev} {where} - fuse cvmfs2 ro,{options}\n")
        data = text + "".join(lines).encode()
        return self._path_rewrite(nr, spec, self.ns.snapshot(data))

    def _stat(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        assert spec.path is not None
        if spec.name == "fanotify_mark" and not args[spec.path]:
            return None
        raw = ctx.read_path(args[spec.path])
        if raw is None:
            return self._unreadable(ctx, args[spec.path])
        if self._plain_host(raw):
            return None
        flags = _flags_arg(spec, args)
        dirfd = _dirfd_arg(spec, args)
        if not raw and spec.style is FlagStyle.AT and flags & AT_EMPTY_PATH:
            fr = self._fd_entry(ctx, dirfd)
            if fr is None:
                return None
            answer = self._stat_answer(fr, spec, args, flags)
            if answer is not None:
                return answer
            rw = self._path_rewrite(nr, spec, self._meta_target(fr))
            rw.args[spec.dirfd or 0] = AT_FDCWD
            assert spec.flags is not None
            rw.args[spec.flags] = flags & ~(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)
            return rw
        r = self._located(ctx, nr, spec, dirfd, raw, follows_last(spec, flags))
        if not isinstance(r, Resolved):
            return r
        return self._stat_answer(r, spec, args, flags) or self._path_rewrite(nr, spec, self._meta_target(r))

    def _target(
        self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...], follow: bool
    ) -> Resolved | Action:
        """The /cvmfs entry (or /cvmfs itself) a one-path call without a dirfd names, or the
        answer when it names none (see :meth:`_located`)."""
        assert spec.path is not None
        raw = ctx.read_path(args[spec.path])
        if raw is None:
            return self._unreadable(ctx, args[spec.path])
        if not raw or self._plain_host(raw):
            return None
        return self._located(ctx, nr, spec, AT_FDCWD, raw, follow)

    def _located(
        self, ctx: Context, nr: int, spec: Spec, dirfd: int, raw: bytes, follow: bool
    ) -> Resolved | Action:
        """Where ``raw`` leads if into /cvmfs, else the answer: ``None`` (the kernel's), the
        walk's errno, a rewrite to the host path it reaches."""
        r = self.locate(ctx, dirfd, raw, follow)
        if r is None:
            return None
        if r.kind == ERROR:
            return Return(-r.errno)
        if r.kind == HOST:
            return self._host_rewrite(nr, spec, r.host)
        return r

    def _statfs(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        """``statfs`` of a repository path: the cache's quota and use, as the real client
        reports them (``df /cvmfs/REPO``); /cvmfs itself is the kernel's answer for its
        shadow directory."""
        r = self._target(ctx, nr, spec, args, True)
        if not isinstance(r, Resolved):
            return r
        usage = r.mount.cache_usage() if r.kind == ENTRY and r.mount is not None else None
        if usage is None:
            return self._path_rewrite(nr, spec, self._meta_target(r))
        return WriteReturn(args[1], repository_statfs(*usage), 0)

    def _xattr(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        """``(l)getxattr``/``(l)listxattr``. A /cvmfs entry has the real client's magic
        attributes (magic_xattrs.py) and a security module's label (read from the placeholder,
        as the kernel gives one to a FUSE inode), nothing else: not what the placeholder may
        have got from the cache's file system (a default ACL's)."""
        r = self._target(ctx, nr, spec, args, not spec.nofollow)
        if not isinstance(r, Resolved):
            return r
        if r.kind != ENTRY or r.mount is None:  # /cvmfs itself
            return self._path_rewrite(nr, spec, self._meta_target(r))
        mount = r.mount
        if spec.name in _XATTR_GETS:
            asked = ctx.read_path(args[1])
            if asked is None:
                return self._unreadable(ctx, args[1])
            if not asked or len(asked) > XATTR_NAME_MAX:
                return Return(-errno.ERANGE)
            name = os.fsdecode(asked)
            if name.startswith(_LSM_LABELS):  # the security module's, as on the real client's mount
                return self._label(nr, spec, r, mount, name)
            value = None
            if name in magic_xattrs.ALL:  # a magic one hides the catalog's of the same name
                entry = mount.catalog_entry(r.inner) if magic_xattrs.needs_entry(name) else None
                value = magic_xattrs.value(name, mount.magic_facts, entry, lambda: mount.chunk_list(entry))
            if value is None:
                # published ones (CVMFS_INCLUDE_XATTRS); ls -l's ACL of an entry without any
                # costs no catalog (its directory's marker says so)
                value = mount.entry_xattrs(r.inner).get(name)
            if value is None:
                return Return(-errno.ENODATA)
            buf, size = args[2], to_int(args[3])
        else:
            names: list[str] = []
            try:
                seen = mount.magic_visibility()
                if seen == "always" or (seen == "rootonly" and not r.inner):
                    entry = mount.catalog_entry(r.inner) if seen == "always" else None
                    names = magic_xattrs.listed(seen, not r.inner, entry)
            except CvmfsError as exc:  # a listing without them: cp -a, tar --xattrs go on
                log.info("listxattr /cvmfs/%s%s: %s", mount.fqrn, r.inner, exc)
            # as the real client's XattrList::ListKeysPosix: magic names the catalog has not,
            # then the catalog's, in bytewise order
            try:
                published = sorted(os.fsencode(k) for k in mount.entry_xattrs(r.inner))
            except CvmfsError as exc:
                log.info("listxattr /cvmfs/%s%s: %s", mount.fqrn, r.inner, exc)
                published = []
            magic = [n.encode() for n in names if os.fsencode(n) not in published]
            value = b"".join(n + b"\0" for n in magic + published)
            buf, size = args[1], to_int(args[2])
        if size == 0 or not value:
            return Return(len(value))
        if size < len(value):
            return Return(-errno.ERANGE)
        return WriteReturn(buf, value, len(value))

    def _label(self, nr: int, spec: Spec, r: Resolved, mount: Mount, name: str) -> Action:
        """A security module's label of a /cvmfs entry: the placeholder's.

        A module labels every file of a file system or none (with SELinux the kernel answers
        even for a file without a stored label); ``ls -l`` asks for each entry. So the first
        placeholder asked per repository and name decides: without a label there (ENODATA,
        or EOPNOTSUPP on a file system without such xattrs), the others are answered the
        same without a syscall (34 -> 11 us of supervisor time per ``ls -l`` entry here).
        """
        key = (mount.fqrn, name)
        known = self.labels.get(key)
        if known is None:
            try:
                os.getxattr(self._meta_target(r), name, follow_symlinks=not spec.nofollow)
                known = 0
            except OSError as exc:
                known = exc.errno if exc.errno in (errno.ENODATA, errno.EOPNOTSUPP) else 0
            self.labels[key] = known
        if known:
            return Return(-known)
        return self._path_rewrite(nr, spec, self._meta_target(r))

    def _fstat(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        r = self._fd_entry(ctx, to_int(args[0]))
        if r is None:
            return None
        answer = self._stat_answer(r, spec, args, 0)
        if answer is not None:
            return answer
        # fstat(fd, buf) -> newfstatat(AT_FDCWD, placeholder, buf, 0)
        meta = self._meta_target(r)
        return Rewrite(arch.NR["newfstatat"], args={0: AT_FDCWD, 2: args[1], 3: 0}, path=meta, path_arg=1)

    def _access(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        assert spec.path is not None
        raw = ctx.read_path(args[spec.path])
        if raw is None:
            return self._unreadable(ctx, args[spec.path])
        if self._plain_host(raw):
            return None
        flags = _flags_arg(spec, args)
        dirfd = _dirfd_arg(spec, args)
        r = self._located(ctx, nr, spec, dirfd, raw, follows_last(spec, flags))
        if not isinstance(r, Resolved):
            return r
        if to_int(args[spec.path + 1]) & W_OK:
            return Return(-errno.EROFS)
        return self._path_rewrite(nr, spec, self._meta_target(r))

    def _readlink(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        assert spec.path is not None and spec.buf is not None and spec.size is not None
        raw = ctx.read_path(args[spec.path])
        if not raw:
            return None if raw is not None else self._unreadable(ctx, args[spec.path])
        size = to_int(args[spec.size])
        if size <= 0:
            return None
        dirfd = _dirfd_arg(spec, args)
        text = os.fsdecode(raw)
        checked = None
        if self.policy is not None:  # a denial first: /proc/1/cwd must not tell where it is
            checked = self.locate(ctx, dirfd, raw, False)
            if checked is not None and checked.kind == ERROR:
                return Return(-checked.errno)
        if raw.startswith(b"/proc/"):
            target = self._proc_link(ctx, text)
            if target is not None:
                data = os.fsencode(target)[:size]
                return WriteReturn(args[spec.buf], data, len(data))
        r = checked if self.policy is not None else self.locate(ctx, dirfd, raw, False)
        if r is None:
            return None
        if r.kind == ERROR:
            return Return(-r.errno)
        if r.kind == HOST:
            return self._host_rewrite(nr, spec, r.host)
        if r.kind == ROOT or r.entry is None or not r.entry.is_symlink:
            return Return(-errno.EINVAL)
        assert r.mount is not None
        data = os.fsencode(r.mount.link_target(r.inner))[:size]
        return WriteReturn(args[spec.buf], data, len(data))

    def _proc_link(self, ctx: Context, path: str) -> str | None:
        """The translated target of a ``/proc`` magic link that points into our trees."""
        m = _MAGIC.match(path)
        if m is None or m.group(4):
            return None
        target = _read_magic_link(ctx, m)
        if target is None:
            return None
        if not target.startswith("/"):
            return None
        logical = self._logical_of(target)
        return None if logical is None or logical == target else logical

    def _chdir(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        assert spec.path is not None
        raw = ctx.read_path(args[spec.path])
        if raw is None:
            return self._unreadable(ctx, args[spec.path])
        r = self.locate(ctx, AT_FDCWD, raw, True, X_OK)
        ctx.cwd_changed()  # after locate, which may have cached the old cwd
        if r is None:
            return None
        if r.kind == ERROR:
            return Return(-r.errno)
        if r.kind == HOST:
            return self._host_rewrite(nr, spec, r.host)
        if r.kind == ENTRY:
            assert r.entry is not None and r.mount is not None
            if not r.entry.is_dir:
                return Return(-errno.ENOTDIR)
            r.mount.shadow.ensure_populated(r.inner)
        return self._path_rewrite(nr, spec, self._meta_target(r))

    def _fchdir(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        ctx.cwd_changed()
        return None

    def _getcwd(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        real = ctx.cwd()
        logical = self._logical_of(real)
        if logical is None or logical == real:
            return None
        data = os.fsencode(logical) + b"\0"
        if len(data) > args[1]:
            return Return(-errno.ERANGE)
        return WriteReturn(args[0], data, len(data))

    def _modify(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        assert spec.path is not None and spec.effect is not None
        flags = _flags_arg(spec, args)
        dirfd = _dirfd_arg(spec, args)
        if not args[spec.path]:  # utimensat(fd, NULL, ...) acts on the fd
            return self._modify_fd(ctx, nr, spec, (dirfd,))
        raw = ctx.read_path(args[spec.path])
        if raw is None:
            return self._unreadable(ctx, args[spec.path])
        if not raw and flags & AT_EMPTY_PATH:
            return self._modify_fd(ctx, nr, spec, (dirfd,))
        follow = follows_last(spec, flags) and spec.effect is Effect.CHANGE
        r = self.locate(ctx, dirfd, raw, follow, W_OK)
        if r is None:
            return None
        if r.kind == HOST:
            return self._host_rewrite(nr, spec, r.host)
        if r.kind == ERROR and r.touched:  # the policy's answer
            return Return(-r.errno)
        return Return(-self._read_only_errno(ctx, spec, dirfd, raw, r, args))

    def _read_only_errno(
        self, ctx: Context, spec: Spec, dirfd: int, raw: bytes, r: Resolved, args: tuple[int, ...]
    ) -> int:
        """The errno of a change to /cvmfs path ``raw`` (``r`` where it leads), in the order a
        read-only mount's kernel checks: the parent's lookup, the last component's kind, then
        EEXIST for a name that exists (creating) before EROFS; a removal is refused before its
        name is looked up; a change needs the name (and truncate a regular file)."""
        effect = spec.effect
        if effect is Effect.CHANGE:
            if r.kind == ERROR:
                return r.errno
            if spec.name == "truncate" and r.entry is not None and not r.entry.is_regular:
                return errno.EISDIR if r.entry.is_dir else errno.EINVAL
            return errno.EROFS
        err = self._parent_errno(ctx, dirfd, raw)
        if err:
            return err
        last = _last_component(raw)
        if effect is Effect.REMOVE:
            rm_dir = spec.name == "rmdir" or (spec.name == "unlinkat" and args[2] & AT_REMOVEDIR)
            if last == b"..":
                return errno.ENOTEMPTY if rm_dir else errno.EISDIR
            if last == b".":
                return errno.EINVAL if rm_dir else errno.EISDIR
            return errno.EROFS
        return self._create_errno(ctx, dirfd, raw, spec.name == "mkdir")

    def _create_errno(self, ctx: Context, dirfd: int, raw: bytes, directory: bool) -> int:
        """A new name in /cvmfs whose parent is a directory: EEXIST where a name is there (or
        is "." or ".."), ENOENT for a missing one with a trailing slash (only mkdir takes
        one), else EROFS."""
        if _last_component(raw) in (b".", b".."):
            return errno.EEXIST
        there = self.locate(ctx, dirfd, raw.rstrip(b"/") or raw, False)
        if there is not None and there.kind != ERROR:
            return errno.EEXIST
        if raw.endswith(b"/") and not directory:
            return errno.ENOENT
        return errno.EROFS

    def _dangling_create_errno(self, ctx: Context, dirfd: int, raw: bytes) -> int:
        """``open(O_CREAT)`` of a missing /cvmfs name: EROFS, or, through a dangling symlink
        (which the kernel follows to create its target), why the target's directory cannot
        be looked up."""
        link = self.locate(ctx, dirfd, raw, False)
        if link is None or link.kind != ENTRY or link.entry is None or not link.entry.is_symlink:
            return errno.EROFS
        assert link.mount is not None
        target = link.mount.link_target(link.inner)
        if not target.startswith("/"):
            target = f"{link.logical.rpartition('/')[0]}/{target}"
        return self._parent_errno(ctx, AT_FDCWD, os.fsencode(target)) or errno.EROFS

    def _parent_errno(self, ctx: Context, dirfd: int, raw: bytes) -> int:
        """Why the directory that holds the last component of ``raw`` cannot be looked up in
        /cvmfs (ENOENT, ENOTDIR, ELOOP), or 0."""
        head, sep, _ = raw.rstrip(b"/").rpartition(b"/")
        parent = (head or b"/") if sep else b"."
        r = self.locate(ctx, dirfd, parent, True)
        if r is None or r.kind in (HOST, ROOT):
            return 0
        if r.kind == ERROR:
            return r.errno
        return 0 if r.entry is not None and r.entry.is_dir else errno.ENOTDIR

    def _modify2(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        assert spec.path is not None and spec.path2 is not None
        raw1 = ctx.read_path(args[spec.path])
        raw2 = ctx.read_path(args[spec.path2])
        if raw1 is None or raw2 is None:
            return self._unreadable(ctx, args[spec.path] if raw1 is None else args[spec.path2])
        flags = _flags_arg(spec, args)
        d1 = _dirfd_arg(spec, args)
        d2 = to_int(args[spec.dirfd2]) if spec.dirfd2 is not None else AT_FDCWD
        need = W_OK | MOVE if spec.name.startswith("rename") else W_OK
        if not raw1 and flags & AT_EMPTY_PATH:
            real = ctx.fd_path(d1)
            r1: Resolved | None = Resolved(ROOT) if real and self.ns.is_ours(real) else None
            if r1 is None and self.policy is not None:  # linkat: a new, writable name for the fd's file
                err = self._fd_check(ctx, d1, W_OK)
                if err:
                    return Return(-err)
        else:
            r1 = self.locate(ctx, d1, raw1, spec.name == "linkat" and follows_last(spec, flags), need)
        r2 = self.locate(ctx, d2, raw2, False, need)
        for r in (r1, r2):
            if r is not None and r.kind == ERROR and r.touched:  # the policy's answer
                return Return(-r.errno)
        ours1 = r1 is not None and r1.kind != HOST
        ours2 = r2 is not None and r2.kind != HOST
        if not ours1 and not ours2:
            if not (r1 is not None and r1.touched) and not (r2 is not None and r2.touched):
                return None
            return self._rewrite2(nr, spec, r1, r2)
        if spec.name.startswith("rename"):
            # both parents are looked up, then the mounts compared, then "." and ".." refused,
            # then the mount's write access: before either name is looked up
            for dirfd, raw, ours in ((d1, raw1, ours1), (d2, raw2, ours2)):
                err = self._parent_errno(ctx, dirfd, raw) if ours else 0
                if err:
                    return Return(-err)
            if ours1 != ours2:
                return Return(-errno.EXDEV)
            if {_last_component(raw1), _last_component(raw2)} & {b".", b".."}:
                return Return(-errno.EBUSY)
            return Return(-errno.EROFS)
        # link: the old name is looked up, then the new one is created (its mount's write
        # access and EEXIST first), then the mounts compared
        if r1 is not None and r1.kind == ERROR:
            return Return(-r1.errno)
        if not ours2:
            return Return(-errno.EXDEV)
        err = self._parent_errno(ctx, d2, raw2)
        if err:
            return Return(-err)
        return Return(-self._create_errno(ctx, d2, raw2, False))

    @staticmethod
    def _rewrite2(nr: int, spec: Spec, r1: Resolved | None, r2: Resolved | None) -> Action:
        """rename/link between host paths, one or both moved by the mount list."""
        assert spec.path is not None and spec.path2 is not None
        rw = Rewrite(nr, host=True)  # made with the job's root and permissions (notify.py)
        paths = [(spec.path, spec.dirfd, r1), (spec.path2, spec.dirfd2, r2)]
        new = [(arg, dirfd, os.fsencode(r.host)) for arg, dirfd, r in paths if r is not None and r.touched]
        for _, dirfd, _ in new:
            if dirfd is not None:
                rw.args[dirfd] = AT_FDCWD  # the new paths are absolute anyway
        rw.path_arg, rw.path = new[0][0], new[0][2]
        if len(new) > 1:
            rw.path2_arg, rw.path2 = new[1][0], new[1][2]
        return rw

    def _modify_fd(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        fd = to_int(args[0])
        real = ctx.fd_path(fd)
        if real is not None and self.ns.is_ours(real):
            return Return(-errno.EROFS)
        if self.policy is not None:
            # A change of metadata is a write: an fd opened only for reading (which the
            # kernel accepts for fchmod, fsetxattr, futimens) must not change a file outside
            # --allow-write, as chmod of its name may not.
            err = self._fd_check(ctx, fd, W_OK)
            if err:
                return Return(-err)
            self.policy.written()  # fchmod/fchown of a directory: what the walks remembered may change
        return None

    def _dup(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        """dup/fcntl(F_DUPFD) of a reserved fd: the copy goes to the same range, not to fd 3."""
        ranges = self.ranges
        fd = to_int(args[0])
        if ranges is None or not ranges.content <= fd < ranges.top:
            return None
        base = ranges.content if ranges.is_content(fd) else ranges.dirs
        if spec.name == "dup":
            return Rewrite(arch.NR["fcntl"], args={1: F_DUPFD, 2: base})
        cmd = to_int(args[1])
        if cmd not in (F_DUPFD, F_DUPFD_CLOEXEC):
            return None
        return Rewrite(nr, args={2: max(to_int(args[2]), base)})

    # -- execve ---------------------------------------------------------------------------------

    def _exec(self, ctx: Context, nr: int, spec: Spec, args: tuple[int, ...]) -> Action:
        assert spec.path is not None
        raw = ctx.read_path(args[spec.path])
        if raw is None:
            return self._unreadable(ctx, args[spec.path])
        # execve of a /cvmfs path, no policy: a program run before is run again the same way (W5's
        # 200 runs of one program: ~40 us of Python each, caches cold after the job). Not through
        # "..", which may pass a host symlink (the job may change it), nor relative to the cwd.
        remember = self.policy is None and spec.dirfd is None and raw.startswith(b"/cvmfs/")
        remember = remember and b"/.." not in raw
        known = self._execs.get(raw) if remember else None
        if known is not None:
            return Exec(nr, known, spec.path, spec.path + 1)
        flags = _flags_arg(spec, args)
        dirfd = _dirfd_arg(spec, args)
        argv_arg = spec.path + 1
        if not raw and flags & AT_EMPTY_PATH:
            real = ctx.fd_path(dirfd)
            logical = self.ns.logical(real) if real else None
            if logical is None:
                err = self._fd_check(ctx, dirfd, X_OK) if self.policy is not None else 0
                return Return(-err) if err else None
            r: Resolved | None = self.ns.resolve(logical, True)
            shown = f"/dev/fd/{dirfd}".encode()
        else:
            r = self.locate(ctx, dirfd, raw, not flags & AT_SYMLINK_NOFOLLOW, X_OK)
            shown = raw
        if r is None:
            # A host file: the kernel runs it, unless it is a script whose interpreter is ours.
            host = raw if raw.startswith(b"/") else os.fsencode(ctx.cwd()) + b"/" + raw
            target = self._exec_target(ctx, Resolved(HOST, host=os.fsdecode(host)), shown, 0)
            if isinstance(target, Return):
                return target
            if target is None:
                return None
            filename, argv = target
        else:
            target = self._exec_target(ctx, r, shown, 0)
            if isinstance(target, Return):
                return target
            if target is None:
                return None  # a host program whose path merely contains "cvmfs"
            filename, argv = target
            if remember and argv is None and r.kind == ENTRY and filename == r.data_b:
                # the content itself (not a copy naming its interpreter: that one's link is
                # made again at each exec, should /tmp be cleaned meanwhile)
                if len(self._execs) >= 10_000:
                    self._execs.clear()
                self._execs[raw] = filename
        if argv is not None and shown != raw and _close_on_exec(ctx.tid, dirfd):
            # fexecve of a script through a close-on-exec fd: its interpreter could not open
            # /dev/fd/N after the exec, so the kernel refuses it (execve(2), fexecve(3))
            return Return(-errno.ENOENT)
        if argv is not None:
            rest = self._read_argv_tail(ctx, args[argv_arg])
            if rest is None:
                return Return(-errno.EFAULT)
            argv = argv + rest
        if spec.name == "execveat":
            # execveat(dirfd, path, argv, envp, flags) -> execve(filename, argv, envp)
            return Exec(arch.NR["execve"], filename, 0, 1, argv, args={1: args[2], 2: args[3]})
        return Exec(nr, filename, spec.path, argv_arg, argv)

    def _exec_target(
        self, ctx: Context, r: Resolved, shown: bytes, depth: int
    ) -> tuple[bytes, list[bytes | int] | None] | Return | None:
        """(local file to execute, new argv prefix or None) for an exec of ``r``."""
        if r.kind == ERROR:
            return Return(-r.errno)
        if r.kind == ROOT:
            return Return(-errno.EACCES)
        if r.kind == HOST:
            local = os.fsencode(r.host)
        else:
            entry, mount = r.entry, r.mount
            assert entry is not None and mount is not None
            if not entry.is_regular or not mount.mode(r.inner) & 0o111:
                return Return(-errno.EACCES)
            local = self._content_target(r)
        head = self._exec_head(local, r.kind != HOST)  # the ELF header and program headers
        if head is None and self.policy is not None and r.kind == HOST and os.path.isfile(local):
            # An execute-only program runs "not dumpable": an unprivileged tracer could not read
            # its memory, and so not check its paths.
            log.warning("%s: not readable, cannot be confined: not run", os.fsdecode(shown))
            return Return(-errno.EACCES)
        if head is None or not head.startswith(b"#!"):
            kind = elf.elf_class(head) if head is not None else None
            if kind == elf.ELFCLASS32:
                self._warn_32bit(shown)
            elif kind == elf.ELFCLASS64:
                patched = self._own_interpreter(ctx, local, r, head)
                if patched is not None:
                    return patched
            return (local, None) if r.kind != HOST or r.touched else None
        interp, optarg = _parse_shebang(head[:BINPRM_BUF_SIZE])
        if interp is None or depth >= MAX_INTERP_DEPTH:
            return (local, None) if r.kind != HOST or r.touched else None
        ir = self.locate(ctx, AT_FDCWD, interp, True, X_OK)
        if ir is None and r.kind == HOST and not r.touched:
            return None  # host script, host interpreter: the kernel's business
        if ir is None:
            ir = Resolved(HOST, host=os.fsdecode(interp if interp.startswith(b"/") else interp))
        if ir.kind == ERROR:
            return Return(-errno.ENOENT if ir.errno in (errno.ENOENT, errno.ENOTDIR) else -ir.errno)
        inner = self._exec_target(ctx, ir, interp, depth + 1)
        if isinstance(inner, Return):
            return inner
        if inner is None:
            inner = (os.fsencode(ir.host), None)
        filename, inner_argv = inner
        prefix: list[bytes | int] = [interp] + ([optarg] if optarg else []) + [shown]
        if inner_argv is not None:
            # The interpreter is itself a script: its own interpreter goes in front.
            prefix = inner_argv + prefix[1:]
        return filename, prefix

    def _exec_head(self, local: bytes, content: bool) -> bytes | None:
        if not content:
            return elf.read_at(local)
        if local not in self._heads:
            self._heads[local] = elf.read_at(local)
        return self._heads[local]

    def _exec_interp(self, local: bytes, content: bool, head: bytes) -> elf.Interp | None:
        if not content:
            return elf.read_interp(local, head)
        if local not in self._interps:
            self._interps[local] = elf.read_interp(local, head)
        return self._interps[local]

    def _own_interpreter(
        self, ctx: Context, local: bytes, r: Resolved, head: bytes
    ) -> tuple[bytes, list[bytes | int] | None] | Return | None:
        """A program whose PT_INTERP lies in /cvmfs, or is moved by the mount table (``package
        run``: the package's loader, not the host's): run a copy that names the job's interpreter."""
        interp = self._exec_interp(local, r.kind != HOST, head)
        if interp is None or (b"cvmfs" not in interp.path and self.policy is None):
            return None
        ir = self.locate(ctx, AT_FDCWD, interp.path, True)
        if ir is None or (ir.kind == HOST and not ir.touched):
            return None  # the kernel opens the same file
        if ir.kind == ERROR:
            return Return(-ir.errno)
        if ir.kind == ROOT or (ir.kind == ENTRY and (ir.entry is None or not ir.entry.is_regular)):
            return Return(-errno.EACCES)
        target = os.fsencode(ir.host) if ir.kind == HOST else self._content_target(ir)
        shown = r.logical if r.kind != HOST else (self._logical_of(r.host) or r.host)  # /proc/self/exe
        try:
            patched = self.ns.with_interpreter(local, interp, target, shown)
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot run with interpreter %s: %s", shown, os.fsdecode(interp.path), exc)
            return Return(-errno.ENOEXEC)
        return os.fsencode(patched), None

    def _read_argv_tail(self, ctx: Context, addr: int) -> list[bytes | int] | None:
        """Pointers argv[1:], reused as they are (only the new first entries are written)."""
        if not addr:
            return []
        out: list[bytes | int] = []
        pos = addr
        first = True
        while True:
            chunk = ctx.read_memory(pos, 8 * 64)
            if chunk is None:
                chunk = ctx.read_memory(pos, 8)
                if chunk is None:
                    return None
            for i in range(0, len(chunk), 8):
                ptr = int.from_bytes(chunk[i : i + 8], "little")
                if ptr == 0:
                    return out
                if first:
                    first = False
                    continue
                out.append(ptr)
            pos += len(chunk)

    def _unreadable(self, ctx: Context, addr: int) -> Action:
        """A path (or ``open_how``) argument the tracer could not read.

        Without a policy the call runs and the kernel reports the bad pointer. Under one it is
        refused: the memory may be mapped again by another thread before the kernel reads it.
        """
        if self.policy is None:
            return None
        too_long = addr and ctx.read_memory(addr, 1) is not None
        return Return(-errno.ENAMETOOLONG if too_long else -errno.EFAULT)

    def _fd_check(self, ctx: Context, fd: int, need: int) -> int:
        """Under a policy: 0 if the file open as ``fd`` may be used with ``need``, else an errno
        (the ``/proc/self/fd/N`` rule of policy.py: what the fd does not give is checked on
        the file's name)."""
        r = self.locate(ctx, AT_FDCWD, b"/proc/self/fd/%d" % fd, True, need)
        return r.errno if r is not None and r.kind == ERROR else 0

    def _warn_32bit(self, shown: bytes) -> None:
        name = os.fsdecode(shown)
        if name not in self._warned_32bit:
            self._warned_32bit.add(name)
            log.warning(
                "%s is a 32-bit program: its system calls are refused (ENOSYS) under the interposer", name
            )


def _parse_shebang(head: bytes) -> tuple[bytes | None, bytes | None]:
    """Interpreter and optional argument of a ``#!`` line, as fs/binfmt_script.c splits it."""
    line = head[2:].split(b"\n", 1)[0]
    line = line.strip(b" \t")
    if not line:
        return None, None
    parts = re.split(rb"[ \t]", line, maxsplit=1)
    interp = parts[0]
    optarg = parts[1].strip(b" \t") if len(parts) > 1 else b""
    return interp, optarg or None


__all__ = [
    "Action",
    "Context",
    "Exec",
    "Return",
    "Rewrite",
    "Translator",
    "WriteReturn",
    "AT_SYMLINK_NOFOLLOW",
    "O_NOFOLLOW",
]


def _read_magic_link(ctx: Context, m: re.Match[str]) -> str | None:
    """Where a ``/proc/{self,thread-self,PID}/.../LINK`` magic link of the job points, as the
    kernel reports it (the tracer reads the job's own ``/proc`` entry, not its own)."""
    who = m.group(1)
    if who == "self":
        proc = f"/proc/{ctx.tgid}"
    elif who == "thread-self":
        proc = f"/proc/{ctx.tgid}/task/{ctx.tid}"
    else:
        proc = f"/proc/{who}"
    try:
        return os.readlink(f"{proc}{m.group(2) or ''}/{m.group(3)}")
    except OSError:
        return None


def _close_on_exec(tid: int, fd: int) -> bool:
    """Whether the job's ``fd`` is close-on-exec (its ``/proc`` fdinfo's flags)."""
    try:
        with open(f"/proc/{tid}/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"flags:"):
                    return bool(int(line.split()[1], 8) & O_CLOEXEC)
    except (OSError, ValueError, IndexError):
        pass
    return False


# openat2's resolve flags that _resolve_walk obeys itself (the others stay the kernel's)
_WALKED_RESOLVE = RESOLVE_BENEATH | RESOLVE_IN_ROOT | RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS


def _last_component(raw: bytes) -> bytes:
    """The last component of a path, trailing slashes aside ("a/b/." -> "."; "/" -> "")."""
    return raw.rstrip(b"/").rpartition(b"/")[2]


def _flags_arg(spec: Spec, args: tuple[int, ...]) -> int:
    """The call's flags argument, 0 for calls that have none (open vs openat, stat vs fstatat)."""
    return to_int(args[spec.flags]) if spec.flags is not None else 0


def _dirfd_arg(spec: Spec, args: tuple[int, ...]) -> int:
    """The call's directory fd, AT_FDCWD for calls without one."""
    return to_int(args[spec.dirfd]) if spec.dirfd is not None else AT_FDCWD
