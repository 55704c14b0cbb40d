"""The seccomp-bpf filter: which syscalls stop in the tracer, and which run untouched.

Only calls that name a path (or a directory fd the tracer may have translated) return
``SECCOMP_RET_TRACE``; everything else, read/write/mmap included, is allowed without a stop.
The program is laid out so that the kernel's constant-action cache (Linux 5.11+) can prove
"always allowed" for every untrapped syscall number: those branches never load an argument or
the instruction pointer, so they skip the BPF interpreter entirely.

Traps relaxed by arguments (see :class:`FdRanges`): the tracer moves fds it opened for the job
into two reserved ranges, so that the filter can tell them apart without asking the tracer:

- ``dirs``: directory fds. ``newfstatat``/``statx``/``readlinkat`` relative to them with
  ``AT_SYMLINK_NOFOLLOW`` (or ``AT_EMPTY_PATH``) run natively: ``find``, ``du`` and ``tar`` walk a
  shadow tree of directories, symlinks and size-correct placeholders without stopping. Copies
  made with ``F_DUPFD`` stop so that they stay in the range, unless their minimum is below
  :data:`DIR_COPY_MIN` (find's per-entry copies, ``os.dup``).
- ``content``: fds of verified file content. ``fstat`` on them is trapped so that it reports the
  catalog's metadata (glibc's ``fstat`` is ``newfstatat(fd, "", AT_EMPTY_PATH)``); ``fstat`` on
  every other fd is not trapped at all.

Calls made from the stub page (the tracer's own rewritten syscalls) are allowed by instruction
pointer. Syscalls of another ABI (i386 ``int 0x80``, x32) fail with ENOSYS: their numbers mean
different calls and the tracer does not translate them. ``io_uring_setup`` fails with ENOSYS
because io_uring performs file operations without syscalls the filter could see.

With a file-system policy (``--sandbox``, ``--deny``, mount lists, ``--allow-write``: the filter
is built with the tracer's pid) the calls that would take the job out of the view the tracer
checks paths in fail with EPERM: new namespaces, mounts and ``chroot`` (a user namespace needs no
privilege), files by handle, ``ptrace`` (a child made with ``CLONE_UNTRACED``, then traced by the
job, would run its calls unchecked), a seccomp listener of the job's own (``SECCOMP_RET_USER_NOTIF``
takes precedence over ``SECCOMP_RET_TRACE``), ``PR_SET_DUMPABLE`` (an unprivileged tracer could no
longer read the job's memory) and reading or writing the tracer's memory. ``clone3`` fails with
ENOSYS: its flags are in memory the filter cannot read, and glibc then uses ``clone``, whose flags
it can. docs/security.md lists each case with its test.
"""

from __future__ import annotations

import ctypes
import errno
import struct
from collections.abc import Iterable

from cvmfs_client.records import FrozenRecord

from . import arch_x86_64 as arch
from .ptrace_api import raw_syscall, set_no_new_privs

# return values (linux/seccomp.h)
RET_ALLOW = 0x7FFF0000
RET_TRACE = 0x7FF00000
RET_USER_NOTIF = 0x7FC00000
RET_ERRNO = 0x00050000
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
__NR_seccomp = 317

# classic BPF opcodes (linux/filter.h)
LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
JSET_K = 0x45
JA = 0x05
RET_K = 0x06

# offsets into struct seccomp_data
OFF_NR, OFF_ARCH, OFF_IP_LO, OFF_IP_HI = 0, 4, 8, 12


def _arg_lo(i: int) -> int:
    return 16 + 8 * i  # low 32 bits (little endian); fds are ints, compared on their low word


AT_FDCWD_U32 = 0xFFFFFF9C  # -100 as an unsigned 32-bit word
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000

# Syscalls that always stop (unless made by the stub).
TRAPPED = (
    "open", "openat", "openat2", "creat", "stat", "lstat", "statfs", "access", "faccessat",
    "faccessat2", "readlink", "execve", "execveat", "chdir", "fchdir", "getcwd", "mkdir", "mkdirat",
    "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2", "link", "linkat", "symlink",
    "symlinkat", "mknod", "mknodat", "truncate", "chmod", "fchmodat", "fchmodat2", "chown", "lchown",
    "fchownat", "utime", "utimes", "futimesat", "utimensat", "setxattr", "lsetxattr", "getxattr",
    "lgetxattr", "listxattr", "llistxattr", "removexattr", "lremovexattr", "setxattrat",
    "getxattrat", "listxattrat", "removexattrat", "inotify_add_watch", "fanotify_mark",
    "name_to_handle_at", "file_getattr", "file_setattr", "fchmod", "fchown", "fsetxattr",
    "fremovexattr",
)  # fmt: skip
# (name, dirfd argument, flags argument): stop unless relative to a reserved dir fd with
# AT_SYMLINK_NOFOLLOW, or an fstat-style AT_EMPTY_PATH call on an fd that is not content.
STAT_AT = (("newfstatat", 0, 3), ("statx", 0, 2))
# (name, fd argument): stop only for fds in the content range.
FD_CONTENT = (("fstat", 0),)
# (name, dirfd argument): stop unless relative to a reserved dir fd (the shadow symlink is exact).
DIRFD_ALLOWED = (("readlinkat", 0),)
# (name, fd argument): stop for fds in either reserved range (the copy must stay in its range);
# other fds are the job's own business.
FD_OURS = (("dup", 0),)
# fcntl(fd, F_DUPFD[_CLOEXEC], min) on a reserved fd: stop, so that the copy stays in its range
# (fts makes every directory fd it opens its working directory through such a copy, min 3,
# and then calls fstatat relative to it)...
F_DUPFD, F_DUPFD_CLOEXEC = 0, 1030
# ...except a copy of a directory fd with a minimum below this, left to the kernel: find takes one
# per entry it visits (min 0) and closes it unused, Python's os.dup() and os.scandir(fd) make
# theirs so. Such a copy lands below the ranges, where calls relative to it stop again (slower,
# still right), as after a dup2() of a reserved fd, which was never trapped.
DIR_COPY_MIN = 3
ENOSYS = ("io_uring_setup",)
# With a listener (see notify.py): these calls go to the supervisor thread instead of stopping.
# Each only reads metadata into a buffer of a known size, which the supervisor can fill itself.
NOTIFIED = frozenset({
    "stat", "lstat", "newfstatat", "statx", "fstat", "access", "faccessat", "faccessat2", "readlink",
    "readlinkat", "getcwd", "getxattr", "lgetxattr", "listxattr", "llistxattr", "statfs",
    # Changes through an fd, whatever its number: a copy of a shadow directory's or a content fd
    # made below the reserved ranges (dup2, os.dup) must not change the shadow tree or a cache
    # object that every job of the node shares. Answered EROFS for those, else let through:
    # the supervisor changes nothing itself.
    "fchmod", "fchown", "fsetxattr", "fremovexattr",
})  # fmt: skip
# ...and the calls that change host files (a host path is let through, /cvmfs refused, a moved
# path changed by the supervisor as the job; not linkat, whose AT_EMPTY_PATH names a job's fd,
# nor the *xattrat calls and file_setattr, which take structures of pointers)...
NOTIFIED_CHANGES = frozenset({
    "symlink", "symlinkat", "rmdir", "unlink", "unlinkat", "truncate", "chmod", "fchmodat",
    "fchmodat2", "chown", "lchown", "fchownat", "utime", "utimes", "futimesat", "utimensat",
    "setxattr", "lsetxattr", "removexattr", "lremovexattr", "rename", "renameat", "renameat2", "link",
})  # fmt: skip
# ...and those that create with a mode, as creating opens below, only where the supervisor can
# hold the job's umask (a thread of its own file-system context: notify.can_own_umask).
NOTIFIED_CREATES = frozenset({"mkdir", "mkdirat", "mknod", "mknodat"})
# ...and, where the supervisor can hand over an fd (Linux 5.14), these opens unless they ask for
# an O_PATH fd (which the kernel will not hand over, SECCOMP_IOCTL_NOTIF_ADDFD takes it for a bad
# fd) or an O_TMPFILE one: (name, flags argument).
NOTIFIED_OPENS = (("open", 1), ("openat", 2))
# Copies of reserved fds (the supervisor takes the fd with pidfd_getfd and hands the copy back
# into the range), also where an fd can be handed over.
NOTIFIED_DUPS = frozenset({"dup", "fcntl"})
O_CREAT = 0o100
O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE
O_PATH = 0o10000000

# With a policy only (see the module docstring): EPERM always...
CONFINED_EPERM = (
    "chroot", "pivot_root", "mount", "umount2", "setns", "open_tree", "open_tree_attr", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",  # another view of the tree
    "open_by_handle_at",  # a file without a path
    "ptrace", "pidfd_getfd",  # a second tracer; the tracer's own fds
    "uselib", "acct", "swapon", "swapoff", "quotactl",  # path calls the filter does not trap
)  # fmt: skip
CONFINED_ENOSYS = ("clone3",)
CLONE_NEW = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
CLONE_NEWTIME = 0x80  # unshare only (in clone's flags this bit is part of the exit signal)
CLONE_UNTRACED = 0x00800000
SECCOMP_FILTER_FLAG_NEW_LISTENER = 8
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 32  # Linux 5.19
PR_SET_DUMPABLE = 4
# ...EPERM when (argument & mask) != 0...
CONFINED_BITS = (
    ("clone", 0, CLONE_NEW | CLONE_UNTRACED),
    ("unshare", 0, CLONE_NEW | CLONE_NEWTIME),
    ("seccomp", 1, SECCOMP_FILTER_FLAG_NEW_LISTENER),
)
CONFINED_VALUE = (("prctl", 0, PR_SET_DUMPABLE),)  # ...when argument == value...
CONFINED_TRACER = ("process_vm_readv", "process_vm_writev", "pidfd_open")  # ...when arg 0 is the tracer


class FdRanges(FrozenRecord):
    """Reserved fd numbers: ``[content, dirs)`` holds content fds, ``[dirs, top)`` directory fds.

    Chosen below the job's RLIMIT_NOFILE (and below 1024, so that ``select()`` callers and
    programs with small fd tables are unaffected); ``None`` when the limit is too low to spare.
    Content sits below dirs: F_DUPFD picks the lowest free fd at or above its argument, so a full
    content range spills into the dirs range (only fstat then shows cache metadata) while a full
    dirs range spills above ``top``, where everything is trapped again (slower, still correct).
    """

    __slots__ = ("content", "dirs", "top")

    def __init__(self, content: int, dirs: int, top: int) -> None:
        self.content = content
        self.dirs = dirs
        self.top = top

    @classmethod
    def for_limit(cls, soft_limit: int) -> FdRanges | None:
        top = min(soft_limit, 1024)
        if top < 512:
            return None
        return cls(content=top - 256, dirs=top - 128, top=top)

    def is_content(self, fd: int) -> bool:
        return self.content <= fd < self.dirs

    def is_dir(self, fd: int) -> bool:
        return self.dirs <= fd < self.top


class _Asm:
    """A tiny assembler: instructions with symbolic jump targets, resolved at the end."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def ld(self, offset: int) -> None:
        self.code.append((LD_W_ABS, 0, 0, offset))

    def jump(self, op: int, k: int, jt: str | int, jf: str | int) -> None:
        """Conditional jump; integer targets are relative (0 = next instruction)."""
        self.code.append((op, jt, jf, k))

    def ja(self, target: str) -> None:
        self.code.append((JA, 0, 0, target))  # type: ignore[arg-type]

    def ret(self, value: int) -> None:
        self.code.append((RET_K, 0, 0, value))

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (op, jt, jf, k) in enumerate(self.code):
            if op == JA:
                k = self.labels[k] - pc - 1  # type: ignore[index]
            else:
                jt = self._rel(pc, jt)
                jf = self._rel(pc, jf)
            out += struct.pack("<HBBI", op, jt, jf, k)  # type: ignore[arg-type]
        return bytes(out)

    def _rel(self, pc: int, target: object) -> int:
        if isinstance(target, int):
            return target
        off = self.labels[target] - pc - 1  # type: ignore[index]
        if not 0 <= off <= 255:
            raise ValueError(f"BPF jump to {target} out of range ({off})")
        return off


def _in_range(a: _Asm, lo: int, hi: int, yes: str, no: str) -> None:
    """Jump to ``yes`` if the accumulator (an fd) is in ``[lo, hi)``, else to ``no``."""
    a.jump(JGE_K, lo, 0, no)
    a.jump(JGE_K, hi, no, yes)


def _fd_rule(
    a: _Asm,
    label: str,
    fd_arg: int,
    bounds: tuple[int, int] | None,
    inside_stops: bool,
    unranged_allow: bool,
    trap: str = "trace",
) -> None:
    """At ``label``: a call whose fd argument is in ``bounds`` stops (``inside_stops``) or runs,
    one outside does the other; without reserved ranges it runs or stops (``unranged_allow``).
    A stop goes to ``trap`` ("trace", or "notify" for a call the supervisor serves)."""
    a.label(label)
    if bounds is None:
        if unranged_allow:
            a.ret(RET_ALLOW)
        else:
            a.ja(trap)
        return
    stop, run = f"{label}_trace", f"{label}_allow"
    a.ld(_arg_lo(fd_arg))
    _in_range(a, *bounds, *((stop, run) if inside_stops else (run, stop)))
    a.label(run)
    a.ret(RET_ALLOW)
    a.label(stop)
    a.ja(trap)


def build_filter(
    ranges: FdRanges | None,
    tracer_pid: int | None = None,
    notify: bool = False,
    notify_opens: bool = False,
    notify_creates: bool = False,
    notify_dups: bool | None = None,
    notify_changes: bool = False,
) -> bytes:
    """The filter program as raw ``struct sock_filter`` array bytes.

    ``tracer_pid``: given when the job runs under a file-system policy, which adds the
    ``CONFINED_*`` refusals (see the module docstring). ``notify``: the :data:`NOTIFIED` calls
    return ``SECCOMP_RET_USER_NOTIF`` (to a listener, see notify.py) instead of stopping;
    ``notify_opens``: so do the :data:`NOTIFIED_OPENS` (but ``O_PATH`` and ``O_TMPFILE``
    ones) and the :data:`NOTIFIED_DUPS` that copy reserved fds; ``notify_creates``: the
    :data:`NOTIFIED_CREATES` and creating opens too (else they stop), with ``notify_changes``:
    the :data:`NOTIFIED_CHANGES` (for a listener whose waits are killable only, see
    :func:`install`: a change must not happen twice); ``notify_dups`` (default:
    as ``notify_opens``): the :data:`NOTIFIED_DUPS`, where the supervisor may take the job's
    fds (notify.can_take_fds).
    """
    if notify_dups is None:
        notify_dups = notify_opens
    notify_creates = notify_creates and notify_changes
    nr = arch.NR
    a = _Asm()
    opens = {name: arg for name, arg in NOTIFIED_OPENS} if notify and notify_opens else {}

    def trap(name: str) -> str:
        if name in opens:
            return f"open_{name}"
        if notify and (name in NOTIFIED or (notify_changes and name in NOTIFIED_CHANGES)):
            return "notify"
        if notify and notify_creates and name in NOTIFIED_CREATES:
            return "notify"
        if notify and notify_opens and notify_dups and name in NOTIFIED_DUPS:
            return "notify"
        return "trace"

    a.ld(OFF_ARCH)
    a.jump(JEQ_K, arch.AUDIT_ARCH, 1, 0)
    a.ret(RET_ERRNO | errno.ENOSYS)
    a.ld(OFF_NR)
    a.jump(JGE_K, arch.X32_SYSCALL_BIT, 0, 1)
    a.ret(RET_ERRNO | errno.ENOSYS)

    # Dispatch: the frequent conditional calls first, then the always-trapped ones. Each
    # comparison is two instructions so that a block can be anywhere (``ja`` has 32-bit reach).
    blocks: list[tuple[int, str]] = []
    for name, _, _ in STAT_AT:
        blocks.append((nr[name], f"stat_{name}"))
    for name, _ in FD_CONTENT:
        blocks.append((nr[name], f"fdc_{name}"))
    for name, _ in DIRFD_ALLOWED:
        blocks.append((nr[name], f"dirfd_{name}"))
    for name, _ in FD_OURS:
        blocks.append((nr[name], f"fdours_{name}"))
    blocks.append((nr["fcntl"], "fcntl"))
    for name in ENOSYS:
        blocks.append((nr[name], "enosys"))
    for name in TRAPPED:
        blocks.append((nr[name], trap(name)))
    if tracer_pid is not None:
        for name in CONFINED_EPERM:
            blocks.append((nr[name], "eperm"))
        for name in CONFINED_ENOSYS:
            blocks.append((nr[name], "enosys"))
        for name, _, _ in CONFINED_BITS:
            blocks.append((nr[name], f"bits_{name}"))
        for name, _, _ in CONFINED_VALUE:
            blocks.append((nr[name], f"value_{name}"))
        for name in CONFINED_TRACER:
            blocks.append((nr[name], "tracer_pid"))
    for number, target in blocks:
        a.jump(JEQ_K, number, 0, 1)
        a.ja(target)
    a.ret(RET_ALLOW)

    a.label("enosys")
    a.ret(RET_ERRNO | errno.ENOSYS)

    stopping = O_TMPFILE_BIT | O_PATH | (0 if notify_creates else O_CREAT)
    for name, flags_arg in opens.items():  # these opens stop, the others are notified
        a.label(f"open_{name}")
        a.ld(_arg_lo(flags_arg))
        a.jump(JSET_K, stopping, 0, 1)
        a.ja("trace")
        a.ja("notify")

    if tracer_pid is not None:
        a.label("eperm")
        a.ret(RET_ERRNO | errno.EPERM)
        # EPERM when an argument has one of these bits set, or equals this value
        rules = [(f"bits_{name}", arg, JSET_K, mask) for name, arg, mask in CONFINED_BITS]
        rules += [(f"value_{name}", arg, JEQ_K, value) for name, arg, value in CONFINED_VALUE]
        rules.append(("tracer_pid", 0, JEQ_K, tracer_pid))
        for label, arg, op, k in rules:
            a.label(label)
            a.ld(_arg_lo(arg))
            a.jump(op, k, 0, 1)
            a.ret(RET_ERRNO | errno.EPERM)
            a.ret(RET_ALLOW)

    for name, fd_arg, flags_arg in STAT_AT:
        a.label(f"stat_{name}")
        if ranges is None:
            # No reserved ranges: only fstat-style calls on fds (not AT_FDCWD) run natively.
            a.ld(_arg_lo(fd_arg))
            a.jump(JEQ_K, AT_FDCWD_U32, "trace_" + name, 0)
            a.ld(_arg_lo(flags_arg))
            a.jump(JSET_K, AT_EMPTY_PATH, "allow_" + name, "trace_" + name)
        else:
            a.ld(_arg_lo(fd_arg))
            _in_range(a, ranges.content, ranges.dirs, "trace_" + name, "notcontent_" + name)
            a.label("notcontent_" + name)
            _in_range(a, ranges.dirs, ranges.top, "ourdir_" + name, "other_" + name)
            a.label("ourdir_" + name)
            a.ld(_arg_lo(flags_arg))
            a.jump(JSET_K, AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH, "allow_" + name, "trace_" + name)
            a.label("other_" + name)
            a.jump(JEQ_K, AT_FDCWD_U32, "trace_" + name, 0)
            a.ld(_arg_lo(flags_arg))
            a.jump(JSET_K, AT_EMPTY_PATH, "allow_" + name, "trace_" + name)
        a.label("allow_" + name)
        a.ret(RET_ALLOW)
        a.label("trace_" + name)
        a.ja(trap(name))

    # Calls on one fd: inside a reserved range they run or stop, outside the other way round.
    for name, fd_arg in FD_CONTENT:  # content fds stop (fstat shows the catalog's metadata)
        bounds = None if ranges is None else (ranges.content, ranges.dirs)
        _fd_rule(a, f"fdc_{name}", fd_arg, bounds, inside_stops=True, unranged_allow=True, trap=trap(name))
    for name, fd_arg in DIRFD_ALLOWED:  # our m/ directory fds run (fstatat on the shadow tree)
        bounds = None if ranges is None else (ranges.dirs, ranges.top)
        _fd_rule(
            a, f"dirfd_{name}", fd_arg, bounds, inside_stops=False, unranged_allow=False, trap=trap(name)
        )
    for name, fd_arg in FD_OURS:  # any of our fds stops
        bounds = None if ranges is None else (ranges.content, ranges.top)
        _fd_rule(
            a, f"fdours_{name}", fd_arg, bounds, inside_stops=True, unranged_allow=False, trap=trap(name)
        )

    a.label("fcntl")
    if ranges is None:
        a.ret(RET_ALLOW)
    else:
        a.ld(_arg_lo(0))
        _in_range(a, ranges.content, ranges.top, "fcntl_ours", "fcntl_allow")
        a.label("fcntl_ours")
        a.ld(_arg_lo(1))
        a.jump(JEQ_K, F_DUPFD, "fcntl_dup", 0)
        a.jump(JEQ_K, F_DUPFD_CLOEXEC, "fcntl_dup", "fcntl_allow")
        a.label("fcntl_dup")  # a copy of a content fd stops; of a directory fd, see DIR_COPY_MIN
        a.ld(_arg_lo(0))
        _in_range(a, ranges.content, ranges.dirs, "fcntl_trace", "fcntl_dir")
        a.label("fcntl_dir")
        a.ld(_arg_lo(2))
        a.jump(JGE_K, DIR_COPY_MIN, "fcntl_trace", "fcntl_allow")
        a.label("fcntl_allow")
        a.ret(RET_ALLOW)
        a.label("fcntl_trace")
        a.ja(trap("fcntl"))

    # Every trap lands here: calls made by the stub page run untrapped.
    lo = arch.STUB_ADDR & 0xFFFFFFFF
    landings = [("trace", RET_TRACE)] + ([("notify", RET_USER_NOTIF)] if notify else [])
    for landing, action in landings:
        a.label(landing)
        a.ld(OFF_IP_HI)
        a.jump(JEQ_K, arch.STUB_ADDR >> 32, 0, f"ret_{landing}")
        a.ld(OFF_IP_LO)
        _in_range(a, lo, lo + arch.STUB_CODE_SIZE, "ret_allow", f"ret_{landing}")
        a.label(f"ret_{landing}")
        a.ret(action)
    a.label("ret_allow")
    a.ret(RET_ALLOW)
    return a.assemble()


def traced_syscalls() -> Iterable[str]:
    """Names of every syscall the filter can stop (for the tracer's dispatch table and tests)."""
    yield from TRAPPED
    for group in (STAT_AT, FD_CONTENT, DIRFD_ALLOWED, FD_OURS):
        for item in group:
            yield item[0]
    yield "fcntl"


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(program: bytes, listener: bool = False, killable: bool = False) -> int | None:
    """Install ``program`` on the calling process (and its future children and execs).

    Sets no_new_privs first, which an unprivileged process must do; it also means setuid
    programs run without their privileges, as they do under any ptrace-based tool.
    ``listener``: also create the user-notification fd (returned) that serves the program's
    ``SECCOMP_RET_USER_NOTIF`` calls; OSError (EINVAL, EBUSY) if the kernel will not.
    ``killable``: once the listener has taken a call, only a fatal signal ends the wait, so
    that a change the supervisor made is never lost to an interrupted, restarted call.
    """
    set_no_new_privs()
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER if listener else 0
    if listener and killable:
        flags |= SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    fd = raw_syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, flags, ctypes.c_void_p(ctypes.addressof(prog)))
    return fd if listener else None
