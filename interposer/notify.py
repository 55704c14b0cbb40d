"""Seccomp user notifications: metadata calls and opens served without a ptrace stop.

A ptrace stop costs two scheduler hand-overs through the tracer's ``waitpid`` loop, ~20 us
pinned to one CPU and ~60-120 us when job and tracer sit on different CPUs of a VM. For the
calls in :data:`.seccomp.NOTIFIED` (the ``stat`` family, ``access``, ``readlink``, reading
xattrs: they only read metadata into a buffer of known size), the calls that change files
(:data:`.seccomp.NOTIFIED_CHANGES`, on Linux 5.19+: see :data:`CHANGES_NEED`) and, on 5.14+,
the opens (creating ones with the changes) and the copies of reserved fds
(:data:`.seccomp.NOTIFIED_OPENS`, ``NOTIFIED_DUPS``), the filter returns
``SECCOMP_RET_USER_NOTIF`` instead, and this thread answers from the listener fd:

- a host path the translator leaves alone (``stat("/etc/localtime")`` in every ``localtime()``
  of a job without TZ, the dynamic loader's probes): ``SECCOMP_USER_NOTIF_FLAG_CONTINUE``, the
  kernel runs the call as if nothing had looked at it;
- a ``/cvmfs`` answer (a placeholder's ``struct stat``, a symlink target, an errno): written
  into the job's memory, the call skipped with its result;
- a rewritten metadata path (a shadow directory, a host path reached through ``..``): the
  thread makes the call itself on the new path into its own buffer and copies the result into
  the job's. The two processes share credentials and mounts, and rewritten paths are absolute,
  so the answer is the one the job would have had;
- a change on a moved host path (``/cvmfs/..`` leading out, a mount-list target): the thread
  makes it as the job would (:meth:`Supervisor._change_here`); on /cvmfs, an errno;
- an open of /cvmfs content or a shadow directory: the thread opens it and hands the fd over
  (``SECCOMP_IOCTL_NOTIF_ADDFD`` with ``SEND``) at the number the kernel would have chosen, or
  at the lowest free one in the reserved range (see :class:`.seccomp.FdRanges`); a ``dup`` of a
  reserved fd takes the job's fd with ``pidfd_getfd`` and hands the copy back the same way.

``SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`` (Linux 6.6) makes the kernel hand the notification and
its answer over on one CPU. An fd handed over has no such variant (the job installs it while
this thread waits): the job thread is moved to this thread's CPU for that moment
(:mod:`.cpu_pin`), the fd goes over, the job's CPU mask is put back, then the answer. A signal
that interrupts the call between the fd and the answer leaves the job that fd (unnamed by any
result, like an fd a signal handler's longjmp skips); ``ADDFD_FLAG_SEND`` would close that
window but lets the job run on before its mask is back.

Fast path: where the translator's first check is its whole decision (no policy, no name list),
the host-path calls it leaves to the kernel need no Python. :class:`FastPath` receives with
:mod:`._fastnotify` (C, built when the package is installed with a C compiler), which continues
every ``stat``/``access``/``open`` whose path is absolute, names no "cvmfs" and lies under a system
tree (:meth:`.Translator.fast_rule`), and hands any other notification to the loop below. A
``find -ls`` stats ``/etc/localtime`` for every line: W3 of bench/interposer.py lost 14%. It also
gives again the ENOENT/ENOTDIR answers the translator marked as the repository's alone
(``Context.pure``: an absolute /cvmfs path whose remembered walk failed), keyed by the call, its
value arguments and the path (:meth:`FastPath.remember`): the dynamic loader probes the same
~20 missing paths of a /cvmfs ``LD_LIBRARY_PATH`` in every process (W5: -10%). And it writes the
``struct stat`` of /cvmfs content for an ``fstat`` of a content fd, keyed by what the fd links
to in ``/proc`` (:meth:`FastPath.remember_stat`, primed when the supervisor opens the content):
glibc's stdio and ``tar`` fstat every file they open (W4: -10%). A ``stat`` made again after a
walk of the pinned revision alone is answered there too: a file's or symlink's placeholder
``struct stat`` written (:meth:`FastPath.remember_write`), a directory's asked of the kernel on
its shadow path each time (:meth:`FastPath.remember_restat`; importlib stats its directories
before every import: W2 -4%). It opens again what it was
told (:meth:`FastPath.remember_open`): an open the translator rewrote to a shadow directory or
content after a walk of the pinned revision alone, absolute or relative to a shadow directory's
fd (keyed then by what that fd links to), made with :meth:`Supervisor._open_here`'s steps in C
(W3's walks after the first: -7%; every process loading the same libraries). A copy of a
reserved fd (``Translator._dup``: it stays in its range) is made there too, as
:meth:`Supervisor._dup_here` makes it, with a pidfd kept per process; a thread's copy, whose
id ``pidfd_open`` refuses, stays Python's (which knows its process). Handing an fd over is C's
too (``hand_over``, ``first_free``) wherever the extension is built.
First uses too, where the shadow tree holds the answer already (an earlier job, or this one,
populated the directory and linked the content; :meth:`FastPath.add_trees` tells C where the
trees of the repositories the job mounted are): a ``stat`` or ``statx`` of a placeholder, the read-only
open of linked content or of a populated directory, ENOENT for a name missing from a
populated directory, reached without a symlink or ``..`` on the way; anything else there is
the translator's walk. Host paths outside the system trees, and paths relative to a host
directory or cwd, are let through after the translator's own symlink check
(:meth:`.Translator._host_link_target`, its steps in C). W4's 1220 first opens, W2's ~350
first stats and opens, W5's shell stats of its cwd were Python's at 50-220 us each. So were a
``getcwd`` from a host cwd (continued in C unless the cwd is in a shadow tree) and ``ls -l``'s
two ``(l)getxattr`` of every entry (W6: 2562 calls at 25-45 us): C answers ENODATA for a name
that is neither magic nor a security label when the entry's directory's marker does not list
it, and a label with the errno the translator found the repository's placeholders to give
(:meth:`FastPath.add_labels`); these answers depend on the name, so none is kept.
Not under ``--debug`` either (every answer is logged). ``CVMFS_CLIENT_PURE_PYTHON=1`` decides
everything in Python; a job whose memory cannot be read or written with ``process_vm_readv``/
``writev`` (container profiles) falls back to it at the first call that needs one.

Decisions are the translator's, made under the tracer's lock (the two threads share its state
and the ptrace helpers' buffers). Under a file-system policy too: the kernel
reads a ``CONTINUE``-d path again after the check (seccomp_unotify(2)), as it does for a ptrace
stop resumed unchanged, and rewritten calls are made here on the checked path, as the stub makes
them on its copy (docs/security.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import itertools
import os
import select
import signal
import struct
import threading
from collections.abc import Callable, Mapping

from cvmfs_client import lazylog

from . import arch_x86_64 as arch
from . import ptrace_api as pt
from .cpu_pin import SameCpu
from .seccomp import FdRanges
from .statx import STATX_SIZE
from .syscalls import BY_NR, Kind, Spec
from .tracer import Stats, Tracer, _Ctx, _tgid_of, describe_call
from .translate import FastRule, Return, Rewrite, WriteReturn

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)

if TYPE_CHECKING:
    from .vfs import Mount

try:
    from . import _fastnotify
except ImportError:  # built without a C compiler: every notification is decided in Python
    _fastnotify = None  # type: ignore[assignment]

log = lazylog.get(__name__)
# Set to 1 to decide every notification in Python (comparisons, bug reports): see "Fast path".
PURE_PYTHON_ENV = "CVMFS_CLIENT_PURE_PYTHON"

# linux/seccomp.h: ioctls on the listener, _IOWR/_IOW('!', nr, type)
IOCTL_RECV = 0xC0502100  # struct seccomp_notif (80 bytes)
IOCTL_SEND = 0xC0182101  # struct seccomp_notif_resp (24 bytes)
IOCTL_ID_VALID = 0x40082102
IOCTL_SET_FLAGS = 0x40082104
IOCTL_ADDFD = 0x40182103  # struct seccomp_notif_addfd (24 bytes)
FD_SYNC_WAKE_UP = 1
FLAG_CONTINUE = 1
ADDFD_FLAG_SETFD = 1  # at the given number (replacing what is there: we pick a free one)
ADDFD_FLAG_SEND = 2  # and answer the call with the new fd's number, atomically

_NOTIF = struct.Struct("<QIIiIQ6Q")  # id, pid, flags, data: nr, arch, instruction pointer, args
_RESP = struct.Struct("<QqiI")  # id, val, error, flags
_ADDFD = struct.Struct("<QIIII")  # id, flags, srcfd, newfd, newfd_flags
_U64 = struct.Struct("<Q")
KCMP_FILE = 0
_NR_KCMP = arch.NR["kcmp"]
_kcmp = ctypes.CDLL(None, use_errno=True).syscall
_kcmp.argtypes = [ctypes.c_long] * 6
_kcmp.restype = ctypes.c_long
_REMEMBERED = frozenset({-errno.ENOENT, -errno.ENOTDIR})  # answers the fast path may give again
_RESPONDED = (0, 0, -1)  # _answer's result when the answer went with an fd already


AT_FDCWD = -100
XATTR_SIZE_MAX = 65536  # include/uapi/linux/limits.h (XATTR_LIST_MAX too)
XATTR_NAME_MAX = 255
_XATTR_GET = frozenset({arch.NR["getxattr"], arch.NR["lgetxattr"]})  # (path, name, value, size)
_XATTR_LIST = frozenset({arch.NR["listxattr"], arch.NR["llistxattr"]})  # (path, list, size)
CLONE_FS = 0x200
_NR = arch.NR
# Changes made here for the job (see _change_here): pointer arguments besides the paths, copied
# out of the job's memory, as (argument, size): None for a NUL-terminated string, a negative -N
# for "as many bytes as argument N says".
_INPUTS: dict[int, tuple[tuple[int, int | None], ...]] = {
    _NR["symlink"]: ((0, None),),
    _NR["symlinkat"]: ((0, None),),
    _NR["setxattr"]: ((1, None), (2, -3)),
    _NR["lsetxattr"]: ((1, None), (2, -3)),
    _NR["removexattr"]: ((1, None),),
    _NR["lremovexattr"]: ((1, None),),
    _NR["utime"]: ((1, 16),),  # struct utimbuf
    _NR["utimes"]: ((1, 32),),  # struct timeval[2]
    _NR["futimesat"]: ((2, 32),),
    _NR["utimensat"]: ((2, 32),),  # struct timespec[2]
}
_CREATES = frozenset({_NR["mkdir"], _NR["mkdirat"], _NR["mknod"], _NR["mknodat"]})  # umask applies
F_DUPFD_CLOEXEC = 1030


def kernel_supports(release: str | None = None, needed: tuple[int, int] = (5, 5)) -> bool:
    """``FLAG_CONTINUE`` needs Linux 5.5 (without it a host path could not be handed back);
    handing an opened fd over with the answer (``ADDFD_FLAG_SEND``) needs 5.14."""
    release = release if release is not None else os.uname().release
    try:
        major, minor = (int(part) for part in release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= needed


OPENS_NEED = (5, 14)
# Changes (mkdir, rename, creating opens...) made by the supervisor need waits that a signal
# cannot cut short once it took the call (SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV): else the
# job's restarted call would find its own change done (EEXIST, ENOENT).
CHANGES_NEED = (5, 19)


def _output(nr: int, args: list[int]) -> tuple[int, int] | None:
    """(argument index, size) of the buffer call ``nr`` fills, or None (access family)."""
    if nr in (arch.NR["stat"], arch.NR["lstat"], arch.NR["fstat"]):
        return 1, arch.STAT_SIZE
    if nr == arch.NR["newfstatat"]:
        return 2, arch.STAT_SIZE
    if nr == arch.NR["statx"]:
        return 4, STATX_SIZE
    if nr == arch.NR["readlink"]:
        return 1, max(0, min(args[2] & 0xFFFFFFFF, pt.PATH_MAX))
    if nr == arch.NR["readlinkat"]:
        return 2, max(0, min(args[3] & 0xFFFFFFFF, pt.PATH_MAX))
    if nr == arch.NR["statfs"]:
        return 1, arch.STATFS_SIZE
    if nr in _XATTR_GET:  # the kernel reads at most XATTR_SIZE_MAX of a larger size
        return 2, min(args[3], XATTR_SIZE_MAX)
    if nr in _XATTR_LIST:
        return 1, min(args[2], XATTR_SIZE_MAX)
    return None


# Calls that return how much of their buffer they filled (the rest of it is left alone).
_FILLS_PART = frozenset({arch.NR["readlink"], arch.NR["readlinkat"], *_XATTR_GET, *_XATTR_LIST})


class Supervisor:
    """The thread that serves one job's user notifications (see the module docstring).

    It receives the listener fd from the job's first process over ``channel`` (the child creates
    it when it installs the filter); if none arrives the thread ends and the filter the child
    installed has no ``RET_USER_NOTIF`` (``job._child`` falls back to the ptrace-only one).
    """

    def __init__(self, tracer: Tracer, channel: Channel, lock: threading.Lock) -> None:
        self.tracer = tracer
        self.channel = channel
        self.lock = lock
        self.listener: int | None = None
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="seccomp-notify", daemon=True)
        self._mem = pt.ProcMem()
        tracer.mem = self._mem  # told of execs and exits (under the lock)
        self.ctx = _Ctx(tracer.cwds, self._mem)
        # fcntl.ioctl on bytearrays: half the price of a ctypes call, and it lets the GIL go
        self._req = bytearray(_NOTIF.size)
        self._resp = bytearray(_RESP.size)
        self._id = bytearray(8)
        self._out = ctypes.create_string_buffer(max(pt.PATH_MAX, STATX_SIZE, XATTR_SIZE_MAX))
        self._name = ctypes.create_string_buffer(XATTR_NAME_MAX + 2)  # an xattr's name
        self._own_umask = False  # this thread's file-system context is its own (_main)
        self._path = ctypes.create_string_buffer(pt.PATH_MAX + 64)  # room for /proc/TID/root
        self._addfd = bytearray(_ADDFD.size)
        self._same_cpu = SameCpu()
        self._cursor: dict[tuple[int, int], int] = {}  # (tgid, range) -> where to look first
        self._kcmp = True  # until the kernel says it has none
        self._pid = os.getpid()
        self._pidfds: dict[int, int] = {}  # tgid -> pidfd, for pidfd_getfd
        self._root = os.geteuid() == 0
        self._gid = os.getegid()
        self._groups = sorted(os.getgroups())
        self._caps = _capget() if self._root else (0, 0, 0)  # (effective, permitted, inheritable)
        pure = os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")
        self._c = None if pure else _fastnotify  # fds handed over in C where built
        self._fast: FastPath | None = None
        # --debug logs every translated call, --name-list records every path: both in Python
        if tracer.names is None and not tracer.debug and not pure:
            rule = tracer.translator.fast_rule()
            if rule is not None and _fastnotify is not None:
                self._fast = FastPath(rule, tracer.translator.ranges)
        ns = tracer.translator.ns
        self._mounts: Mapping[str, Mount | None] = ns.mounts if ns is not None else {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Wait for the thread (the job is over) and close what it used.

        It ends by itself once no process uses the filter (``RECV`` then fails with ENOENT and
        the listener reports POLLHUP), or when the job's first process never sent a listener.
        """
        self._thread.join(2)
        if self._fast is not None:
            self._fast.add_counts(self.tracer.stats)
        if not self._thread.is_alive():
            if self.listener is not None:
                os.close(self.listener)
                self.listener = None
            self._close_pidfds()
            self._mem.close()
        self.channel.close()

    # -- the thread ---------------------------------------------------------------------------

    def _main(self) -> None:
        # Signals for the tracer (SIGTERM, SIGINT... forwarded to the job) go to the main thread,
        # which waits in waitpid: here they would only interrupt RECV and wait for its next stop.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            # A umask of this thread's own: files it creates for a job get the job's (where
            # refused, the filter lets no creating call come here: can_own_umask)
            with contextlib.suppress(OSError):
                pt.raw_syscall(arch.NR["unshare"], CLONE_FS)
                self._own_umask = True
            if not self._receive_listener():
                return
            self._serve()
        except BaseException as exc:  # noqa: BLE001 - reported at the job's end
            self.failure = exc
            self._abandon()

    def _abandon(self) -> None:
        """After a failure here: end the job rather than leave its calls waiting forever.

        Closing the listener makes waiting and future notified calls fail (ENOSYS); the job's
        processes are killed so that nothing runs on with wrong answers, and the tracer's loop
        ends with them; ``job.run`` then reports :attr:`failure`.
        """
        with self.lock:
            if self.listener is not None:
                os.close(self.listener)
                self.listener = None
            for tid in list(self.tracer.tasks):
                with contextlib.suppress(OSError):
                    os.kill(tid, 9)

    def _receive_listener(self) -> bool:
        """Take the listener from the job's first process; False if it sent none (it then
        installed the ptrace-only filter) or ended before sending. A failure to receive one
        is an error (the job's calls could wait for an answer forever): :meth:`_abandon`."""
        listener = self.channel.receive_listener(self.tracer.main_pid)
        if listener is None:
            return False
        self.listener = listener
        os.set_inheritable(self.listener, False)  # nothing this process starts may answer for it
        try:
            fcntl.ioctl(self.listener, IOCTL_SET_FLAGS, FD_SYNC_WAKE_UP)  # the flags by value
        except OSError as exc:
            log.debug("seccomp listener: no synchronous wake-ups (%s)", exc.strerror)
        return True

    def _serve(self) -> None:
        listener = self.listener
        assert listener is not None
        orphaned = select.poll()
        orphaned.register(listener, select.POLLIN)
        req, resp = self._req, self._resp
        zero = bytes(_NOTIF.size)
        lock = self.lock
        ioctl, unpack_from, pack_into = fcntl.ioctl, _NOTIF.unpack_from, _RESP.pack_into
        fast = self._fast
        while True:
            # blocks until a call (or the end); the fast path answers what it can meanwhile
            if fast is not None:
                failed = fast.receive(listener, req)
                if failed < 0:  # no access to the job's memory from C here: Python's way
                    log.debug("seccomp fast path: no process_vm_readv/writev here, left to Python")
                    fast = None
                    failed = 0
            else:
                req[:] = zero  # RECV wants a zeroed struct
                try:
                    ioctl(listener, IOCTL_RECV, req, True)
                    failed = 0
                except OSError as exc:
                    failed = exc.errno
            if failed:
                if failed == errno.EINTR:
                    continue
                if failed == errno.ENOENT:  # a caller gone before we took it, or no one left
                    if any(ev & select.POLLHUP for _, ev in orphaned.poll(0)):
                        return  # no process uses the filter any more: the job is over
                    continue
                raise OSError(failed, f"SECCOMP_IOCTL_NOTIF_RECV: {os.strerror(failed)}")
            notif_id, tid, _, nr, _, _, *args = unpack_from(req)
            with lock:
                value, error, flags = self._answer(notif_id, tid, nr, args)
            if flags < 0:
                continue  # answered with an fd (ADDFD_FLAG_SEND)
            pack_into(resp, 0, notif_id, value, error, flags)
            try:
                ioctl(listener, IOCTL_SEND, resp, True)
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # ENOENT: the call was interrupted meanwhile (a signal)
                    raise OSError(exc.errno, f"SECCOMP_IOCTL_NOTIF_SEND: {exc.strerror}") from None

    def _answer(self, notif_id: int, tid: int, nr: int, args: list[int]) -> tuple[int, int, int]:
        """(value, negative errno, flags) for the notification: continue, or the call's result."""
        tracer = self.tracer
        spec = BY_NR.get(nr)
        tracer.stats.stops[spec.name if spec else nr] += 1
        tracer.stats.actions["notified"] += 1
        if spec is None:
            return 0, 0, FLAG_CONTINUE
        task = tracer.tasks.get(tid)
        ctx = self.ctx
        ctx.tid = tid
        ctx.tgid = task.tgid if task is not None else _tgid_of(tid)
        ctx.pure = ctx.fd_target = None
        args_t = tuple(args)
        if tracer.names is not None:
            tracer.names.syscall(ctx, spec, args_t)
        try:
            action = tracer.translator.decide(ctx, nr, spec, args_t)
        except pt.TraceeGone:
            return 0, -errno.ESRCH, 0
        fast = self._fast
        if fast is not None:
            if len(self._mounts) != fast.mounts_seen:
                fast.add_trees(self._mounts)  # a repository mounted (here, or by the tracer thread)
            if len(tracer.translator.labels) != fast.labels_seen:
                fast.add_labels(tracer.translator.labels)
        if tracer.debug and action is not None:
            log.debug("[%d] %s%s -> %s (notified)", tid, spec.name, describe_call(ctx, spec, args), action)
        if action is None:
            return 0, 0, FLAG_CONTINUE
        if type(action) is Return:  # nothing done to the job: a stale answer is refused
            tracer.stats.actions["return"] += 1
            if ctx.pure and self._fast is not None and action.value in _REMEMBERED:
                self._fast.remember(nr, args, ctx.pure, -action.value)
            return _result(action.value)
        if not self._still_waiting(notif_id):
            return 0, -errno.ESRCH, 0  # gone: its tid may be another process's by now
        if type(action) is WriteReturn:
            tracer.stats.actions["emulate"] += 1
            if action.data and not self._mem.write(tid, action.addr, action.data):
                return 0, -errno.EFAULT, 0
            if self._fast is not None:
                if ctx.fd_target is not None:
                    self._fast.remember_stat(nr, ctx.fd_target, action)
                elif ctx.pure:  # a file's or symlink's stat, the same every time
                    self._fast.remember_write(nr, args, ctx.pure, action)
            return _result(action.value)
        if type(action) is Rewrite:
            tracer.stats.actions["local"] += 1
            if spec.kind is Kind.OPEN:
                if self._fast is not None:
                    if ctx.pure:  # the same open again: in C
                        self._fast.remember_open(nr, args, ctx.pure, action, tracer.translator.ranges)
                    if ctx.fd_target is not None:
                        data = tracer.translator.content_stat(ctx.fd_target)
                        if data is not None:  # the new fd's fstat, answered in C from the first one
                            self._fast.prime_stat(ctx.fd_target, data)
                return self._open_here(notif_id, tid, spec, action, args)
            if spec.kind is Kind.DUP:
                return self._dup_here(notif_id, tid, action, args)
            if spec.kind is Kind.MODIFY or spec.kind is Kind.MODIFY2:
                return self._change_here(tid, spec, action, args)
            if ctx.pure and self._fast is not None:  # a directory's stat: made in C next time
                self._fast.remember_restat(nr, args, ctx.pure, action)
            return self._run_here(tid, action, args)
        log.error("%s: the supervisor cannot carry out %r", spec.name, action)
        return 0, -errno.EIO, 0

    def _still_waiting(self, notif_id: int) -> bool:
        _U64.pack_into(self._id, 0, notif_id)
        try:
            fcntl.ioctl(self.listener, IOCTL_ID_VALID, self._id, True)
        except OSError:
            return False
        return True

    def _run_here(self, tid: int, action: Rewrite, args: list[int]) -> tuple[int, int, int]:
        """Make the rewritten call in this process; copy what it wrote into the job's buffer."""
        if action.path is None or not action.path.startswith(b"/") or action.path2 is not None:
            log.error("supervisor: cannot make %r here (needs the job's fds or cwd)", action)
            return 0, -errno.EIO, 0
        call = list(args)
        for index, value in action.args.items():
            call[index] = value
        path = _in_jobs_root(tid, action.path) if action.host else action.path
        if len(path) >= len(self._path):
            return 0, -errno.ENAMETOOLONG, 0
        self._path.value = path
        call[action.path_arg] = ctypes.addressof(self._path)
        if action.nr in _XATTR_GET:  # the name is in the job's memory too
            name = self.ctx.read_path(call[1])
            if name is None:
                return 0, -errno.EFAULT, 0
            if not name or len(name) > XATTR_NAME_MAX:
                return 0, -errno.ERANGE, 0
            self._name.value = name
            call[1] = ctypes.addressof(self._name)
        out = _output(action.nr, call)
        target = 0
        if out is not None:
            index, size = out
            target = call[index]
            call[index] = ctypes.addressof(self._out)
        identity = self._identity(tid) if self._root and action.host else None
        if identity is not None:
            self._assume(*identity)
        try:
            res = pt.raw_syscall(action.nr, *call)
        except OSError as exc:
            return 0, -(exc.errno or errno.EIO), 0
        finally:
            if identity is not None:
                self._restore()
        if out is not None:
            written = min(res, size) if action.nr in _FILLS_PART else size
            if written and not self._mem.write(tid, target, self._out.raw[:written]):
                return 0, -errno.EFAULT, 0
        return res, 0, 0

    def _change_here(self, tid: int, spec: Spec, action: Rewrite, args: list[int]) -> tuple[int, int, int]:
        """Make a change the translator moved to another host path (``/cvmfs/..`` leading out,
        a mount-list target) here, as the job: its identity (:meth:`_identity`), its umask for
        what is created, and a path it gave that was not moved resolved in its view (from its
        root, its cwd or its directory fd, through ``/proc/TID``). The strings and structures
        the call reads besides its paths are copied out of the job's memory first."""
        call = list(args)
        for index, value in action.args.items():
            call[index] = value
        moved = {action.path_arg: action.path}
        if action.path2 is not None:
            moved[action.path2_arg] = action.path2
        keep: list[ctypes.Array[ctypes.c_char]] = []

        def place(data: bytes) -> int:
            buf = ctypes.create_string_buffer(data, len(data) + 1)
            keep.append(buf)
            return ctypes.addressof(buf)

        for arg, dirfd in ((spec.path, spec.dirfd), (spec.path2, spec.dirfd2)):
            if arg is None:
                continue
            path = moved.get(arg)
            if path is not None:
                if not path.startswith(b"/"):
                    log.error("supervisor: cannot make %r here (relative to the job's cwd)", action)
                    return 0, -errno.EIO, 0
                path = _in_jobs_root(tid, path) if action.host else path
            else:
                raw = self.ctx.read_path(args[arg])
                if raw is None:
                    return 0, -errno.EFAULT, 0
                if not raw:
                    return 0, -errno.ENOENT, 0
                if raw.startswith(b"/"):
                    path = _in_jobs_root(tid, raw)
                else:
                    fd = _signed32(args[dirfd]) if dirfd is not None else AT_FDCWD
                    base = b"/proc/%d/cwd/" % tid if fd == AT_FDCWD else b"/proc/%d/fd/%d/" % (tid, fd)
                    path = base + raw
            if dirfd is not None:
                call[dirfd] = AT_FDCWD & 0xFFFFFFFFFFFFFFFF
            call[arg] = place(path)
        for index, size in _INPUTS.get(action.nr, ()):
            if not call[index]:
                continue  # NULL: "now" for the times, an error for the kernel to give otherwise
            if size is None:
                data = self.ctx.read_path(call[index])
            else:
                wanted = size if size > 0 else min(args[-size], XATTR_SIZE_MAX)
                data = self.ctx.read_memory(call[index], wanted) if wanted else b""
            if data is None:
                return 0, -errno.EFAULT, 0
            call[index] = place(data)
        mask = _umask_of(tid) if action.nr in _CREATES else None
        if mask is not None and not self._own_umask:
            log.error("supervisor: cannot create %r with the job's umask here", action)
            return 0, -errno.EIO, 0
        identity = self._identity(tid) if self._root else None
        if identity is not None:
            self._assume(*identity)
        if mask is not None:
            os.umask(mask)
        try:
            return pt.raw_syscall(action.nr, *call), 0, 0
        except OSError as exc:
            return 0, -(exc.errno or errno.EIO), 0
        finally:
            if identity is not None:
                self._restore()

    # -- the job's file-system identity -------------------------------------------------------
    #
    # The supervisor makes rewritten calls itself, so calls on host paths must be checked against
    # the job's permissions, not ours (shadow entries and content are the tracer's own, made
    # from the repository, and served alike to every job). Run as a user, the job has ours: with
    # no_new_privs it cannot gain an identity, and without privileges it cannot take another.
    # Run as root, a job may drop to a user (su, setpriv): a host call is then made with the
    # job's fsuid, fsgid and groups, set for this thread only (the raw syscalls; glibc's
    # setgroups would change every thread), which also drops root's file capabilities until
    # they are put back.

    def _identity(self, tid: int) -> tuple[int, int, list[int], int] | None:
        """(fsuid, fsgid, groups, effective capabilities) of ``tid`` if not ours, else None."""
        uid = gid = -1
        groups: list[int] = []
        caps = 0
        try:
            with open(f"/proc/{tid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        uid = int(line.split()[4])
                    elif line.startswith(b"Gid:"):
                        gid = int(line.split()[4])
                    elif line.startswith(b"Groups:"):
                        groups = [int(g) for g in line.split()[1:]]
                    elif line.startswith(b"CapEff:"):
                        caps = int(line.split()[1], 16)
                        break
        except (OSError, ValueError, IndexError):
            return (65534, 65534, [], 0)  # unknown: as nobody, never as root
        if uid == 0 and gid == self._gid and sorted(groups) == self._groups and caps == self._caps[0]:
            return None
        return uid, gid, groups, caps

    def _assume(self, uid: int, gid: int, groups: list[int], caps: int) -> None:
        _setgroups(groups)
        pt.raw_syscall(arch.NR["setfsgid"], gid)
        pt.raw_syscall(arch.NR["setfsuid"], uid)  # not 0: drops fs caps
        if uid == 0:  # a root job with fewer capabilities (setpriv, capsh): ours go down to its
            effective, permitted, inheritable = self._caps
            _capset(caps & permitted, permitted, inheritable)

    def _restore(self) -> None:
        pt.raw_syscall(arch.NR["setfsuid"], 0)
        pt.raw_syscall(arch.NR["setfsgid"], self._gid)
        _setgroups(self._groups)
        _capset(*self._caps)

    def _free_fd(self, tid: int, minimum: int) -> int | None:
        """A number for an fd handed to the job: free, at or above ``minimum``.

        In a reserved range the search starts after the number handed last in it to the same
        process and wraps around (the numbers handed before are mostly still open: programs
        close what they opened last, find keeps a chain of directories), so that one probe
        usually finds one; a full range spills above it, as ``F_DUPFD`` would.
        """
        ranges = self.tracer.translator.ranges
        if ranges is None or minimum not in (ranges.content, ranges.dirs):
            return self._first_free(tid, minimum, minimum)
        end = ranges.dirs if minimum == ranges.content else ranges.top
        key = (self.ctx.tgid, minimum)
        start = self._cursor.get(key, minimum)
        found = self._first_free(tid, start, minimum, end)
        if found is not None and found < end:
            if len(self._cursor) >= 4096:
                self._cursor.clear()
            self._cursor[key] = found + 1 if found + 1 < end else minimum
        return found

    def _first_free(self, tid: int, start: int, base: int, end: int = 0) -> int | None:
        """:func:`_first_free` over the job's fds (:meth:`_fd_used`), in C where built."""
        if self._c is None:
            return _first_free(functools.partial(self._fd_used, tid), start, base, end)
        assert self.listener is not None
        found, self._kcmp = self._c.first_free(tid, self.listener, start, base, end, self._kcmp)
        return None if found < 0 else found

    def _fd_used(self, tid: int, n: int) -> bool | None:
        """Whether the job's fd ``n`` is open (None: cannot tell, the job is gone).

        ``kcmp(KCMP_FILE)`` of it against one of our fds answers EBADF for a free number: one
        system call, where a lookup of ``/proc/TID/fd/N`` walks procfs (4-16 us). The lookup
        stays for kernels without kcmp (CONFIG_KCMP) or where it is refused.
        """
        if self._kcmp:
            if _kcmp(_NR_KCMP, tid, self._pid, KCMP_FILE, n, self.listener) >= 0:
                return True
            err = ctypes.get_errno()
            if err == errno.EBADF:
                return False
            if err == errno.ESRCH:
                return None
            self._kcmp = False
        try:
            os.lstat(f"/proc/{tid}/fd/{n}")
        except FileNotFoundError:
            return False
        except OSError:
            return None
        return True

    def _dup_here(self, notif_id: int, tid: int, action: Rewrite, args: list[int]) -> tuple[int, int, int]:
        """``dup``/``fcntl(F_DUPFD[_CLOEXEC])`` of a reserved fd: the copy at a free number
        at or above the action's minimum (:meth:`_free_fd`), handed over with the answer."""
        call = list(args)
        for index, value in action.args.items():
            call[index] = value
        fd, cmd, minimum = _signed32(call[0]), call[1] & 0xFFFFFFFF, _signed32(call[2])
        try:
            mine = self._fd_of(tid, fd)
        except OSError as exc:
            return 0, -(exc.errno or errno.EBADF), 0
        try:
            return self._hand_over(notif_id, tid, mine, self._free_fd(tid, minimum), cmd == F_DUPFD_CLOEXEC)
        finally:
            os.close(mine)

    def _fd_of(self, tid: int, fd: int) -> int:
        """A copy, in this process, of the job's fd (pidfd_getfd)."""
        tgid = self.ctx.tgid
        for attempt in (0, 1):
            pidfd = self._pidfds.get(tgid)
            if pidfd is None:
                if len(self._pidfds) >= 256:
                    self._close_pidfds()
                pidfd = pt.raw_syscall(arch.NR["pidfd_open"], tgid, 0)
                self._pidfds[tgid] = pidfd
            try:
                return pt.raw_syscall(arch.NR["pidfd_getfd"], pidfd, fd, 0)
            except ProcessLookupError:  # a process of that pid that is gone: reopen once
                os.close(self._pidfds.pop(tgid))
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _close_pidfds(self) -> None:
        for pidfd in self._pidfds.values():
            os.close(pidfd)
        self._pidfds.clear()

    def _hand_over(
        self, notif_id: int, tid: int, fd: int, target: int | None, cloexec: bool
    ) -> tuple[int, int, int]:
        """Give the job our ``fd`` as the answer to ``notif_id`` (at ``target`` if given).

        The job installs the fd on this thread's CPU when it can be moved here for the moment
        (:mod:`.cpu_pin`): the fd goes over first, the job gets its CPU mask back, then the
        answer. Otherwise fd and answer go together (``ADDFD_FLAG_SEND``). A job that lowered
        its RLIMIT_NOFILE below the reserved range gets the lowest free number instead (the
        range is an optimisation, as ``F_DUPFD`` failing is in the stub). In C where built
        (``_fastnotify.hand_over``: the same steps, without a Python call per system call).
        """
        if self._c is not None:
            value, error, flags, unpin_errno = self._c.hand_over(
                self.listener, notif_id, tid, fd, -1 if target is None else target, cloexec, True
            )
            if unpin_errno:
                log.warning("cannot give job thread %d its CPUs back: %s", tid, os.strerror(unpin_errno))
            return value, error, flags
        pinned = self._same_cpu.pin(tid)
        try:
            while True:
                flags = (0 if pinned else ADDFD_FLAG_SEND) | (ADDFD_FLAG_SETFD if target is not None else 0)
                cloexec_flag = os.O_CLOEXEC if cloexec else 0
                _ADDFD.pack_into(self._addfd, 0, notif_id, flags, fd, target or 0, cloexec_flag)
                try:
                    installed = fcntl.ioctl(self.listener, IOCTL_ADDFD, self._addfd, True)
                except OSError as exc:
                    err = exc.errno or errno.EIO
                else:
                    return (installed, 0, 0) if pinned else _RESPONDED
                if err == errno.ENOENT:  # the call was interrupted meanwhile: nothing to answer
                    return _RESPONDED
                if target is None or err not in (errno.EBADF, errno.EMFILE, errno.EINVAL):
                    return 0, -err, 0  # EMFILE and the like: the job's call fails with it
                target = None
        finally:
            if pinned:
                failed = self._same_cpu.unpin()
                if failed:  # its cpuset changed meanwhile: it runs on, on the CPU it was given
                    log.warning("cannot give job thread %d its CPUs back: %s", tid, failed)

    def _open_here(
        self, notif_id: int, tid: int, spec: Spec, action: Rewrite, args: list[int]
    ) -> tuple[int, int, int]:
        """Open the rewritten path here and hand the fd to the job as the call's result.

        A Rewrite without a path (a host directory moved into the reserved range) opens the
        job's own path through ``/proc/TID/cwd`` or ``/proc/TID/fd/N``, which the kernel
        resolves in the job's view. The fd lands where the job's kernel would have put it, or
        at a free number in the reserved range from ``reloc_base`` (:meth:`_free_fd`);
        non-blocking first, so that a FIFO among the shadow entries cannot hold this thread.
        """
        assert spec.flags is not None and spec.path is not None
        flags = args[spec.flags] & 0xFFFFFFFF
        path = action.path
        if path is None:
            raw = self.ctx.read_path(args[spec.path])
            if raw is None:
                return 0, -errno.EFAULT, 0
            if not raw.startswith(b"/"):
                dirfd = _signed32(args[spec.dirfd]) if spec.dirfd is not None else AT_FDCWD
                base = f"/proc/{tid}/cwd" if dirfd == AT_FDCWD else f"/proc/{tid}/fd/{dirfd}"
                try:
                    where = os.readlink(base)
                except OSError:
                    return 0, 0, FLAG_CONTINUE  # no such fd: the kernel says so
                if where.startswith(_MAGIC_DIRS):
                    return 0, 0, FLAG_CONTINUE  # "self" there would be us: not moved, still right
                raw = os.fsencode(base) + b"/" + raw
            elif raw.startswith(_MAGIC_PREFIXES):
                return 0, 0, FLAG_CONTINUE
            else:
                raw = _in_jobs_root(tid, raw)
            path = raw
        elif not path.startswith(b"/"):
            log.error("supervisor: cannot open %r here (relative to the job's cwd)", path)
            return 0, -errno.EIO, 0
        elif action.host:
            path = _in_jobs_root(tid, path)
        content = (
            action.reloc_base != 0
            and self.tracer.translator.ranges is not None
            and (self.tracer.translator.ranges.is_content(action.reloc_base))
        )
        blocking = not flags & (os.O_NONBLOCK | os.O_PATH) and not content
        local = (flags & ~os.O_CLOEXEC) | os.O_CLOEXEC | os.O_NOCTTY | (os.O_NONBLOCK if blocking else 0)
        mode = 0
        if flags & os.O_CREAT:  # a host file made for the job: its mode argument, its umask
            if not self._own_umask:
                log.error("supervisor: cannot create %r with the job's umask here", action)
                return 0, -errno.EIO, 0
            mode = args[spec.flags + 1] & 0o7777
            os.umask(_umask_of(tid))
        identity = self._identity(tid) if self._root and (action.host or action.path is None) else None
        if identity is not None:
            self._assume(*identity)
        try:
            fd = os.open(path, local, mode)
        except OSError as exc:
            return 0, -(exc.errno or errno.EIO), 0
        finally:
            if identity is not None:
                self._restore()
        try:
            if blocking:
                os.set_blocking(fd, True)
            target = self._free_fd(tid, action.reloc_base) if action.reloc_base else None
            return self._hand_over(notif_id, tid, fd, target, bool(flags & os.O_CLOEXEC))
        finally:
            os.close(fd)


class FastPath:
    """The supervisor's fast path: :mod:`._fastnotify` (C) receives the notifications and lets
    through, without Python, the host-path calls :meth:`.Translator.fast_rule` describes
    (``stat("/etc/localtime")`` in every ``localtime()``, the dynamic loader's probes), ~6 us
    less each; gives the answers it was told to remember (``remember*``) and those the shadow
    trees hold (:meth:`add_trees`); it hands every other notification to Python. Used only
    when that rule is the translator's whole decision: no policy, no name list (which records
    every path), no ``--debug`` (which logs every answer). :data:`PURE_PYTHON_ENV` turns it off."""

    __slots__ = (
        "_table", "_prefixes", "_special", "_magic", "_shadow", "_directory_flag", "_empty_path",
        "_stat_flags", "_counts", "_keys", "_opens", "_dirfds", "_bufs", "_fd_stats", "_nrs", "_ranges",
        "_xattrs", "answers", "_trees", "mounts_seen", "labels_seen", "_sizes", "_statx",
    )  # fmt: skip

    def __init__(self, rule: FastRule, ranges: FdRanges | None = None) -> None:
        size = _fastnotify.TABLE_NRS
        # copies of reserved fds (Translator._dup), made in C as Supervisor._dup_here does; and
        # getcwd, let through when the cwd is outside the shadow trees (Translator._getcwd)
        self._nrs = (arch.NR["dup"], arch.NR["fcntl"], arch.NR["getcwd"])
        self._ranges = (0, 0, 0) if ranges is None else (ranges.content, ranges.dirs, ranges.top)
        stride = _fastnotify.TABLE_STRIDE  # bytes per syscall number: see _fastnotify.c, struct config
        table = bytearray(stride * size)
        by_name = {spec.name: spec for spec in BY_NR.values()}
        self._keys: dict[int, int] = {}  # syscall number -> mask of the arguments keying an answer
        self._opens: dict[int, int] = {}  # the opens: syscall number -> their flags argument
        self._dirfds: dict[int, int] = {}  # syscall number -> its dirfd argument
        for name in (*rule.calls, *rule.opens):
            spec = by_name[name]
            nr = arch.NR[name]
            assert spec.path is not None and nr < size
            table[stride * nr] = spec.path + 1
            if name in rule.opens:
                assert spec.flags is not None
                table[stride * nr + 1] = spec.flags + 1
                self._opens[nr] = spec.flags
            mask = sum(1 << i for i in rule.answer_keys[name])
            table[stride * nr + 2] = self._keys[nr] = mask
            if spec.dirfd is not None:  # a relative path is keyed by what the dirfd links to
                table[stride * nr + 6] = spec.dirfd + 1
                self._dirfds[nr] = spec.dirfd
        # (l)getxattr: their path under the host rule (no answer is remembered: the name is
        # no key), ENODATA in C from a directory's marker (xattr_entry in _fastnotify.c)
        for name in rule.xattr_gets:
            spec = by_name[name]
            assert spec.path is not None and arch.NR[name] < size
            table[stride * arch.NR[name]] = spec.path + 1
        nrs = [arch.NR[name] for name in rule.xattr_gets] + [-1, -1]
        self._xattrs = (nrs[0], nrs[1], b"\0".join(rule.xattr_python), b"\0".join(rule.xattr_labels))
        # stat, lstat, newfstatat, statx: the buffer a remembered answer is written into, its size
        self._bufs = {arch.NR[name]: by_name[name].buf for name in rule.stat_calls}
        self._sizes = dict.fromkeys(self._bufs, arch.STAT_SIZE)
        name, mask_arg, statx_flags, statx_mask = rule.statx
        statx_nr = arch.NR[name]
        self._bufs[statx_nr] = by_name[name].xbuf
        self._sizes[statx_nr] = STATX_SIZE
        flags_arg = by_name[name].flags
        assert flags_arg is not None
        self._statx = (statx_nr, flags_arg, mask_arg, statx_flags, statx_mask)
        for nr, buf in self._bufs.items():
            assert buf is not None
            table[stride * nr + 4] = buf + 1
        self._fd_stats = frozenset(arch.NR[name] for name in rule.fd_stats)
        for nr in self._fd_stats:
            spec = BY_NR[nr]
            fd, buf = spec.fd if spec.fd is not None else spec.dirfd, spec.buf
            assert fd is not None and buf is not None and nr < size
            flags = 0 if spec.flags is None else spec.flags + 1
            table[stride * nr + 3 : stride * nr + 6] = bytes((fd + 1, buf + 1, flags))
        self._table = bytes(table)
        self._prefixes = b"\0".join(rule.prefixes)
        self._special = b"\0".join(rule.open_special)
        self._magic = b"\0".join(rule.magic_roots)
        self._shadow = rule.shadow_prefix
        self._directory_flag = rule.directory_flag
        self._empty_path, self._stat_flags = rule.empty_path, rule.stat_flags
        # per syscall number: let through, answered with an errno, a struct stat, an fd
        self._counts = bytearray(4 * 8 * size)
        self.answers = _fastnotify.Answers()
        self._trees: set[str] = set()  # the repositories whose shadow trees C knows
        self.mounts_seen = 0  # how many names the namespace had tried to mount when last told
        self.labels_seen = 0  # how many label answers the translator had when last told

    def add_trees(self, mounts: Mapping[str, Mount | None]) -> None:
        """Tell C of the shadow trees of the repositories the job mounted: it then answers the
        first stat or open of an entry these trees hold already, without the translator's walk
        (``first_walk`` in ``_fastnotify.c``). Only from the supervisor thread."""
        self.mounts_seen = len(mounts)
        for name, mount in mounts.items():
            if mount is None or name in self._trees:
                continue
            shadow = mount.shadow
            paths = (f"/cvmfs/{name}", shadow.meta, shadow.data, shadow.markers)
            self.answers.add_tree(*(os.fsencode(p) for p in paths), arch.STAT_SIZE)
            self._trees.add(name)

    def add_labels(self, labels: Mapping[tuple[str, str], int]) -> None:
        """Tell C what asking an entry of a mounted repository for a security module's label
        gets, where the translator found that no entry has one (``Translator._label``): ``ls
        -l``'s ``security.selinux`` of every entry, answered without Python. Only from the
        supervisor thread, after :meth:`add_trees`."""
        known = list(labels.items())  # the tracer thread may add one meanwhile
        self.labels_seen = len(known)
        for (fqrn, name), err in known:
            if err:
                self.answers.add_label(os.fsencode(f"/cvmfs/{fqrn}"), os.fsencode(name), err)

    def receive(self, listener: int, req: bytearray) -> int:
        """Wait for a notification Python must decide and put it in ``req``: 0, or the errno
        ``RECV`` failed with, or a negative number when the job's memory cannot be read from
        C (``req`` then holds a notification, and this path is of no use to the job)."""
        return _fastnotify.serve(
            listener, req, self._table, self._prefixes, self._special, self._magic, self._shadow,
            self._directory_flag, self._empty_path, self._stat_flags, arch.AUDIT_ARCH, self._nrs,
            self._ranges, self._xattrs, self._statx, self.answers, self._counts,
        )  # fmt: skip

    def remember(self, nr: int, args: list[int], key: bytes, err: int) -> None:
        """Give ``-err`` to this call with this key (``Context.pure``: an absolute path, or a
        shadow directory fd's target, NUL, a relative path) from now on, without Python: the
        translator marked it as the repository's answer. Only from the supervisor thread,
        between two :meth:`receive` calls."""
        mask = self._mask(nr, args, key)
        if mask is not None:
            self.answers.remember(nr, tuple(args), mask, key, err)

    def remember_write(self, nr: int, args: list[int], key: bytes, answer: WriteReturn) -> None:
        """Write ``answer``'s struct stat (or statx) into this call's buffer from now on, without
        Python: a file's or symlink's placeholder stat after a walk of the pinned revision alone."""
        buf = self._bufs.get(nr)
        mask = self._mask(nr, args, key)
        if buf is None or mask is None or answer.value != 0 or answer.addr != args[buf]:
            return
        if len(answer.data) == self._sizes[nr]:
            self.answers.remember_write(nr, tuple(args), mask, key, answer.data)

    def remember_restat(self, nr: int, args: list[int], key: bytes, action: Rewrite) -> None:
        """Make this stat on ``action``'s path in C from now on (:meth:`Supervisor._run_here`):
        a shadow directory's, whose answer the kernel gives fresh each time (its ctime moves
        as it is populated), after a walk of the pinned revision alone."""
        buf = self._bufs.get(nr)
        mask = self._mask(nr, args, key)
        path = action.path
        if buf is None or mask is None or action.nr != nr or action.args or action.host or action.path2:
            return
        if path is None or not path.startswith(b"/") or action.path_arg != BY_NR[nr].path:
            return
        self.answers.remember_restat(nr, tuple(args), mask, key, path, self._sizes[nr])

    def remember_open(
        self, nr: int, args: list[int], key: bytes, action: Rewrite, ranges: FdRanges | None
    ) -> None:
        """Open ``action``'s path and hand the fd over, for this call with this key, from now on
        without Python (:meth:`Supervisor._open_here` in C): the translator walked to a
        repository entry (``Context.pure``) and rewrote the open to its shadow directory or
        content, which stay for the job's revision."""
        mask = self._mask(nr, args, key)
        path, base = action.path, action.reloc_base
        if mask is None or nr not in self._opens or args[self._opens[nr]] & os.O_PATH:
            return
        if path is None or not path.startswith(b"/") or action.host or action.args or action.path2:
            return
        if base and (ranges is None or base not in (ranges.content, ranges.dirs)):
            return
        content = ranges is not None and base == ranges.content
        end = 0 if ranges is None else ranges.dirs if content else ranges.top
        self.answers.remember_open(nr, tuple(args), mask, key, path, base, end, content)

    def _mask(self, nr: int, args: list[int], key: bytes) -> int | None:
        """The arguments keying a remembered answer of call ``nr`` (None: none is remembered)."""
        mask = self._keys.get(nr)
        if mask is None:
            return None
        flags = self._opens.get(nr)
        if flags is not None and (args[flags] & os.O_CREAT or args[flags] & os.O_TMPFILE == os.O_TMPFILE):
            return None  # a creating open also walks its parent (O_TMPFILE includes O_DIRECTORY)
        if b"\0" in key:  # relative: the dirfd's number is not the key, what it links to is
            if nr not in self._dirfds:
                return None
            mask &= ~(1 << self._dirfds[nr])
        return mask

    def remember_stat(self, nr: int, target: str, answer: WriteReturn) -> None:
        """Write ``answer``'s struct stat for an ``fstat`` of any fd linking to ``target`` from
        now on, without Python: the translator answered from the fd's entry alone
        (``Context.fd_target``). Only from the supervisor thread, between two :meth:`receive`."""
        if nr in self._fd_stats and answer.value == 0:
            self.prime_stat(target, answer.data)

    def prime_stat(self, target: str, data: bytes) -> None:
        """Write ``data`` (a ``struct stat``) for an ``fstat`` of any fd linking to ``target``."""
        if len(data) == arch.STAT_SIZE:
            self.answers.remember_stat(os.fsencode(target), data)

    def add_counts(self, stats: Stats) -> None:
        """Count the calls let through or answered here as Python counts its own."""
        size = _fastnotify.TABLE_NRS
        for index, n in enumerate(memoryview(self._counts).cast("Q")):
            if n:
                spec = BY_NR[index % size]
                stats.stops[spec.name] += n
                stats.actions["notified"] += n
                stats.actions["fast"] += n
                if index >= size:
                    stats.actions[("return", "emulate", "local")[index // size - 1]] += n
        memoryview(self._counts)[:] = bytes(len(self._counts))  # (serve may still hold it)


def _first_free(used: Callable[[int], bool | None], start: int, base: int, end: int = 0) -> int | None:
    """A number ``used`` says is free: from ``start`` to ``end``, then from ``base`` to ``start``,
    then upwards from ``end`` (``end`` <= ``start``: from ``start`` upwards). None: none found."""
    end = max(end, start)
    for n in itertools.chain(range(start, end), range(base, start), range(end, end + 1024)):
        state = used(n)
        if not state:
            return None if state is None else n
    return None


_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _capget() -> tuple[int, int, int]:
    """This thread's (effective, permitted, inheritable) capability sets, 64 bits each."""
    header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    pt.raw_syscall(arch.NR["capget"], _address(header), _address(data))
    return tuple(
        getattr(data[0], f) | getattr(data[1], f) << 32 for f in ("effective", "permitted", "inheritable")
    )  # type: ignore[return-value]


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capabilities (the raw syscall: this thread only)."""
    header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    pt.raw_syscall(arch.NR["capset"], _address(header), _address(data))


def _setgroups(groups: list[int]) -> None:
    """Supplementary groups of this thread only (glibc's setgroups changes every thread)."""
    array = (ctypes.c_uint32 * max(1, len(groups)))(*groups)
    pt.raw_syscall(arch.NR["setgroups"], len(groups), _address(array))


# Paths whose meaning depends on who opens them (/proc/self, /dev/fd -> /proc/self/fd...): the
# supervisor does not open a job's own such path for it (see _open_here).
_MAGIC_DIRS = ("/proc", "/dev")
_MAGIC_PREFIXES = (b"/proc/", b"/dev/")


def _in_jobs_root(tid: int, path: bytes) -> bytes:
    """A host path as the job's kernel would resolve it: from its root and in its mount
    namespace (a job may chroot or unshare without a policy), as a stopped call would be.
    ``/proc/self``, ``/proc/thread-self`` and ``/dev/fd`` are the job's, not ours."""
    if path.startswith(_MAGIC_PREFIXES):
        for mine, theirs in (
            (b"/proc/self/", b"/proc/%d/" % tid),
            (b"/proc/thread-self/", b"/proc/%d/" % tid),
            (b"/dev/fd/", b"/proc/%d/fd/" % tid),
        ):
            if path.startswith(mine):
                return theirs + path[len(mine) :]
        for n, name in enumerate((b"/dev/stdin", b"/dev/stdout", b"/dev/stderr")):
            if path == name:
                return b"/proc/%d/fd/%d" % (tid, n)
    return b"/proc/%d/root%s" % (tid, path)


def _address(obj: ctypes.Array | ctypes.Structure) -> ctypes.c_void_p:  # type: ignore[type-arg]
    return ctypes.c_void_p(ctypes.addressof(obj))


def can_own_umask() -> bool:
    """Whether a thread of this process may take a file-system context (umask) of its own:
    ``unshare(CLONE_FS)``, refused by some container profiles (Docker's default seccomp
    profile without CAP_SYS_ADMIN). Tried by the calling thread, which then holds a copy of
    the same cwd, root and umask: nothing it sees changes."""
    try:
        pt.raw_syscall(arch.NR["unshare"], CLONE_FS)
    except OSError:
        return False
    return True


def can_take_fds() -> bool:
    """Whether ``pidfd_getfd`` works here (a copy of a job's fd, for its ``dup`` of a reserved
    fd): some container profiles refuse it without CAP_SYS_PTRACE. Tried on our own pidfd."""
    try:
        pidfd = pt.raw_syscall(arch.NR["pidfd_open"], os.getpid(), 0)
    except OSError:
        return False
    try:
        os.close(pt.raw_syscall(arch.NR["pidfd_getfd"], pidfd, pidfd, 0))
    except OSError:
        return False
    finally:
        os.close(pidfd)
    return True


def _umask_of(tid: int) -> int:
    """The umask of the job's thread ``tid`` (its ``Umask:`` status line, Linux 4.7), 0o022 if
    it cannot be read."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _result(value: int) -> tuple[int, int, int]:
    return (0, value, 0) if value < 0 else (value, 0, 0)


class PipeChannel:
    """How the job's first process hands its seccomp listener to the supervisor: it writes the
    fd's number down one pipe, the supervisor takes a copy (``pidfd_getfd``) and closes the
    other pipe, and only then does the child close its own and start the job. Where
    ``pidfd_getfd`` is refused (:func:`can_take_fds`), :class:`SocketChannel` instead: this one
    spares every job the ``socket`` module's import (~3 ms of its start-up)."""

    def __init__(self) -> None:
        self._number_r, self._number_w = os.pipe()
        self._done_r, self._done_w = os.pipe()

    def child_side(self) -> None:
        """In the job's first process, after the fork: the supervisor's ends are not ours."""
        os.close(self._number_r)
        os.close(self._done_w)

    def parent_side(self) -> None:
        os.close(self._number_w)
        os.close(self._done_r)

    def send_listener(self, fd: int | None) -> None:
        """In the job's first process: hand over the listener (or say there is none)."""
        os.write(self._number_w, b"-" if fd is None else b"%d" % fd)
        os.close(self._number_w)
        if fd is not None:
            os.read(self._done_r, 1)  # end of file: the supervisor has its copy (or is gone)
            os.close(fd)
        os.close(self._done_r)

    def receive_listener(self, pid: int) -> int | None:
        """In the supervisor: a copy of process ``pid``'s listener, or None if it has none."""
        try:
            number = os.read(self._number_r, 32)
            if not number or number == b"-":
                return None  # it ended before, or installed the ptrace-only filter
            pidfd = pt.raw_syscall(arch.NR["pidfd_open"], pid, 0)
            try:
                return pt.raw_syscall(arch.NR["pidfd_getfd"], pidfd, int(number), 0)
            finally:
                os.close(pidfd)
        finally:
            os.close(self._done_w)
            self._done_w = -1

    def close(self) -> None:
        for fd in (self._number_r, self._done_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._number_r = self._done_w = -1


class SocketChannel:
    """:class:`PipeChannel`'s work over a Unix socket (``SCM_RIGHTS``), where ``pidfd_getfd``
    is refused."""

    def __init__(self) -> None:
        import socket

        self._socket = socket
        self._parent, self._child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def child_side(self) -> None:
        self._parent.close()

    def parent_side(self) -> None:
        self._child.close()

    def send_listener(self, fd: int | None) -> None:
        if fd is None:
            self._child.send(b"0")
        else:
            self._socket.send_fds(self._child, [b"1"], [fd])
            os.close(fd)
        self._child.close()

    def receive_listener(self, pid: int) -> int | None:
        _, fds, _, _ = self._socket.recv_fds(self._parent, 1, 1)
        return fds[0] if fds else None

    def close(self) -> None:
        self._parent.close()


Channel = PipeChannel | SocketChannel


def make_channel(take_fds: bool | None = None) -> Channel:
    """The way the job's first process will send its listener: pipes and ``pidfd_getfd`` where
    this process may take fds (``take_fds``; asked when None), else a socket."""
    if take_fds is None:
        take_fds = can_take_fds()
    return PipeChannel() if take_fds else SocketChannel()
