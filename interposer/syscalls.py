"""What each trapped syscall means for paths: policy as data, looked up by syscall number.

One :class:`Spec` per call says where its directory fd, path and flags are, whether the last
component is followed by default, and what kind of operation it is. The translator has one
handler per :class:`Kind`; adding a syscall is a table row, not a branch.

Kernel facts behind the ``Modify`` rows (fs/namei.c): on a read-only mount ``mkdir``/``mknod``/
``symlink``/``link`` report EEXIST for an existing name before EROFS; ``unlink``/``rmdir``/
``rename`` report EROFS as soon as the parent directory resolves; ``chmod``-like calls need the
target to exist (ENOENT) and then fail with EROFS; crossing mounts in ``rename``/``link`` is EXDEV.
"""

from __future__ import annotations

import enum

from cvmfs_client.records import FrozenRecord

from .arch_x86_64 import NR


class Kind(enum.Enum):
    OPEN = "open"
    STAT = "stat"  # metadata through the shadow tree
    FSTAT = "fstat"  # fd only
    ACCESS = "access"
    READLINK = "readlink"
    EXEC = "exec"
    CHDIR = "chdir"
    FCHDIR = "fchdir"
    GETCWD = "getcwd"
    META = "meta"  # read-only metadata (xattrs, inotify, handles): rewrite to the shadow entry
    MODIFY = "modify"  # one path: EROFS / EEXIST / ENOENT inside /cvmfs
    MODIFY2 = "modify2"  # two paths (rename, link)
    MODIFY_FD = "modify_fd"  # an fd the tracer handed out must not be changed
    DUP = "dup"  # a copy of a reserved fd stays in its range


class Effect(enum.Enum):
    CREATE = "create"  # EEXIST if the name exists, else EROFS
    REMOVE = "remove"  # EROFS once the parent resolves
    CHANGE = "change"  # ENOENT if missing, else EROFS


class FlagStyle(enum.Enum):
    NONE = "none"
    AT = "at"  # AT_SYMLINK_NOFOLLOW (0x100), AT_EMPTY_PATH (0x1000)
    AT_FOLLOW = "at_follow"  # linkat/name_to_handle_at: AT_SYMLINK_FOLLOW (0x400) opts in
    OPEN = "open"  # O_* flags
    INOTIFY = "inotify"  # IN_DONT_FOLLOW in the mask
    FANOTIFY = "fanotify"  # FAN_MARK_DONT_FOLLOW in the flags


class Spec(FrozenRecord):
    """Where one trapped call keeps its fd, path and flag arguments, and what it does to paths."""

    __slots__ = ("name", "kind", "path", "dirfd", "flags", "style", "nofollow", "effect", "path2", "dirfd2",
                 "buf", "xbuf", "size", "fd")  # fmt: skip

    def __init__(
        self,
        name: str,
        kind: Kind,
        path: int | None,
        *,
        dirfd: int | None = None,
        flags: int | None = None,
        style: FlagStyle = FlagStyle.NONE,
        nofollow: bool = False,
        effect: Effect | None = None,
        path2: int | None = None,
        dirfd2: int | None = None,
        buf: int | None = None,
        xbuf: int | None = None,
        size: int | None = None,
        fd: int | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.path = path  # argument index of the path
        self.dirfd = dirfd  # argument index of the directory fd; None = AT_FDCWD
        self.flags = flags  # argument index of the flags
        self.style = style
        self.nofollow = nofollow  # the last component is not followed by default (lstat, lchown...)
        self.effect = effect
        self.path2 = path2  # MODIFY2: second path and its dirfd
        self.dirfd2 = dirfd2
        self.buf = buf  # READLINK/GETCWD: output buffer; FSTAT, STAT: struct stat (not statx)
        self.xbuf = xbuf  # statx: its struct statx
        self.size = size  # READLINK/GETCWD: buffer size
        self.fd = fd  # FSTAT/FCHDIR/MODIFY_FD: the fd argument


def _s(name: str, kind: Kind, path: int | None, **kw: object) -> Spec:
    return Spec(name, kind, path, **kw)  # type: ignore[arg-type]


K, E, F = Kind, Effect, FlagStyle
# fmt: off
SPECS: tuple[Spec, ...] = (
    _s("open", K.OPEN, 0, flags=1, style=F.OPEN),
    _s("openat", K.OPEN, 1, dirfd=0, flags=2, style=F.OPEN),
    _s("openat2", K.OPEN, 1, dirfd=0, flags=2, style=F.OPEN),  # flags: pointer to struct open_how
    _s("creat", K.OPEN, 0, style=F.OPEN),
    _s("stat", K.STAT, 0, buf=1),
    _s("lstat", K.STAT, 0, nofollow=True, buf=1),
    _s("newfstatat", K.STAT, 1, dirfd=0, flags=3, style=F.AT, buf=2),
    _s("statx", K.STAT, 1, dirfd=0, flags=2, style=F.AT, xbuf=4),
    _s("statfs", K.STAT, 0),
    _s("fstat", K.FSTAT, None, fd=0, buf=1),
    _s("access", K.ACCESS, 0, flags=None),
    _s("faccessat", K.ACCESS, 1, dirfd=0),
    _s("faccessat2", K.ACCESS, 1, dirfd=0, flags=3, style=F.AT),
    _s("readlink", K.READLINK, 0, buf=1, size=2, nofollow=True),
    _s("readlinkat", K.READLINK, 1, dirfd=0, buf=2, size=3, nofollow=True),
    _s("execve", K.EXEC, 0),
    _s("execveat", K.EXEC, 1, dirfd=0, flags=4, style=F.AT),
    _s("chdir", K.CHDIR, 0),
    _s("fchdir", K.FCHDIR, None, fd=0),
    _s("getcwd", K.GETCWD, None, buf=0, size=1),
    _s("getxattr", K.META, 0),
    _s("lgetxattr", K.META, 0, nofollow=True),
    _s("listxattr", K.META, 0),
    _s("llistxattr", K.META, 0, nofollow=True),
    _s("getxattrat", K.META, 1, dirfd=0, flags=2, style=F.AT),
    _s("listxattrat", K.META, 1, dirfd=0, flags=2, style=F.AT),
    _s("file_getattr", K.META, 1, dirfd=0, flags=4, style=F.AT),
    _s("inotify_add_watch", K.META, 1, flags=2, style=F.INOTIFY),
    _s("fanotify_mark", K.META, 4, dirfd=3, flags=1, style=F.FANOTIFY),
    _s("name_to_handle_at", K.META, 1, dirfd=0, flags=4, style=F.AT_FOLLOW),
    _s("mkdir", K.MODIFY, 0, effect=E.CREATE, nofollow=True),
    _s("mkdirat", K.MODIFY, 1, dirfd=0, effect=E.CREATE, nofollow=True),
    _s("mknod", K.MODIFY, 0, effect=E.CREATE, nofollow=True),
    _s("mknodat", K.MODIFY, 1, dirfd=0, effect=E.CREATE, nofollow=True),
    _s("symlink", K.MODIFY, 1, effect=E.CREATE, nofollow=True),
    _s("symlinkat", K.MODIFY, 2, dirfd=1, effect=E.CREATE, nofollow=True),
    _s("rmdir", K.MODIFY, 0, effect=E.REMOVE, nofollow=True),
    _s("unlink", K.MODIFY, 0, effect=E.REMOVE, nofollow=True),
    _s("unlinkat", K.MODIFY, 1, dirfd=0, effect=E.REMOVE, nofollow=True),
    _s("truncate", K.MODIFY, 0, effect=E.CHANGE),
    _s("chmod", K.MODIFY, 0, effect=E.CHANGE),
    _s("fchmodat", K.MODIFY, 1, dirfd=0, effect=E.CHANGE),
    _s("fchmodat2", K.MODIFY, 1, dirfd=0, flags=3, style=F.AT, effect=E.CHANGE),
    _s("chown", K.MODIFY, 0, effect=E.CHANGE),
    _s("lchown", K.MODIFY, 0, effect=E.CHANGE, nofollow=True),
    _s("fchownat", K.MODIFY, 1, dirfd=0, flags=4, style=F.AT, effect=E.CHANGE),
    _s("utime", K.MODIFY, 0, effect=E.CHANGE),
    _s("utimes", K.MODIFY, 0, effect=E.CHANGE),
    _s("futimesat", K.MODIFY, 1, dirfd=0, effect=E.CHANGE),
    _s("utimensat", K.MODIFY, 1, dirfd=0, flags=3, style=F.AT, effect=E.CHANGE),
    _s("setxattr", K.MODIFY, 0, effect=E.CHANGE),
    _s("lsetxattr", K.MODIFY, 0, effect=E.CHANGE, nofollow=True),
    _s("removexattr", K.MODIFY, 0, effect=E.CHANGE),
    _s("lremovexattr", K.MODIFY, 0, effect=E.CHANGE, nofollow=True),
    _s("setxattrat", K.MODIFY, 1, dirfd=0, flags=2, style=F.AT, effect=E.CHANGE),
    _s("removexattrat", K.MODIFY, 1, dirfd=0, flags=2, style=F.AT, effect=E.CHANGE),
    _s("file_setattr", K.MODIFY, 1, dirfd=0, flags=4, style=F.AT, effect=E.CHANGE),
    _s("rename", K.MODIFY2, 0, path2=1, nofollow=True),
    _s("renameat", K.MODIFY2, 1, dirfd=0, path2=3, dirfd2=2, nofollow=True),
    _s("renameat2", K.MODIFY2, 1, dirfd=0, path2=3, dirfd2=2, nofollow=True),
    _s("link", K.MODIFY2, 0, path2=1, nofollow=True),
    _s("linkat", K.MODIFY2, 1, dirfd=0, path2=3, dirfd2=2, flags=4, style=F.AT_FOLLOW, nofollow=True),
    _s("fchmod", K.MODIFY_FD, None, fd=0),
    _s("fchown", K.MODIFY_FD, None, fd=0),
    _s("fsetxattr", K.MODIFY_FD, None, fd=0),
    _s("fremovexattr", K.MODIFY_FD, None, fd=0),
    _s("dup", K.DUP, None, fd=0),
    _s("fcntl", K.DUP, None, fd=0, flags=1),
)
# fmt: on

BY_NR: dict[int, Spec] = {NR[s.name]: s for s in SPECS}
BY_NAME: dict[str, Spec] = {s.name: s for s in SPECS}

# open(2) flags (asm-generic/fcntl.h as used on x86-64)
O_ACCMODE = 0o3
O_RDONLY = 0
O_WRONLY = 1
O_RDWR = 2
O_CREAT = 0o100
O_EXCL = 0o200
O_TRUNC = 0o1000
O_APPEND = 0o2000
O_DIRECTORY = 0o200000
O_NOFOLLOW = 0o400000
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
O_TMPFILE = 0o20000000 | O_DIRECTORY

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_NO_AUTOMOUNT = 0x800
AT_EMPTY_PATH = 0x1000
IN_DONT_FOLLOW = 0x02000000
FAN_MARK_DONT_FOLLOW = 0x04
R_OK, W_OK, X_OK = 4, 2, 1
MOVE = 0o10  # with W_OK, for rename: a policy also refuses to move an ancestor of a denied path
# openat2's resolve flags (linux/openat2.h)
RESOLVE_NO_XDEV = 0x01  # no mount point crossed
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08  # nothing outside dirfd: no absolute paths or symlinks, no ".." above it
RESOLVE_IN_ROOT = 0x10  # dirfd is "/" for the whole lookup
RESOLVE_CACHED = 0x20

F_DUPFD = 0
F_DUPFD_CLOEXEC = 1030


def follows_last(spec: Spec, flags: int) -> bool:
    """Whether the call follows a symlink in the last component, given its flags value."""
    style = spec.style
    if style is FlagStyle.AT:
        return not spec.nofollow and not (flags & AT_SYMLINK_NOFOLLOW)
    if style is FlagStyle.AT_FOLLOW:
        return bool(flags & AT_SYMLINK_FOLLOW)
    if style is FlagStyle.OPEN:
        return not (flags & O_NOFOLLOW) and not (flags & O_CREAT and flags & O_EXCL)
    if style is FlagStyle.INOTIFY:
        return not (flags & IN_DONT_FOLLOW)
    if style is FlagStyle.FANOTIFY:
        return not (flags & FAN_MARK_DONT_FOLLOW)
    return not spec.nofollow


def to_int(value: int) -> int:
    """A C ``int`` argument from a 64-bit register (fds, AT_FDCWD are 32-bit)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value
