"""ptrace(2) and process_vm_readv/writev(2) through ctypes: the tracer's hot path.

python-ptrace is not used here: its import alone costs ~30 ms of every job's start-up, and it has
neither the seccomp constants nor process_vm_readv. Each helper is one libc call on preallocated
buffers, because a tracer written in Python pays for every allocation in every stop.

A tracee can die between two calls (SIGKILL from elsewhere, its process exiting): calls on it
then fail with ESRCH, which surfaces as :class:`TraceeGone` so the event loop can drop it.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

from .arch_x86_64 import Regs

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)
if TYPE_CHECKING:
    from typing import Any

# request numbers (linux/ptrace.h)
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208

# options
O_TRACESYSGOOD = 0x01
O_TRACEFORK = 0x02
O_TRACEVFORK = 0x04
O_TRACECLONE = 0x08
O_TRACEEXEC = 0x10
O_TRACESECCOMP = 0x80
O_EXITKILL = 0x100000

# events (status >> 16 of a SIGTRAP stop)
EVENT_FORK = 1
EVENT_VFORK = 2
EVENT_CLONE = 3
EVENT_EXEC = 4
EVENT_SECCOMP = 7
EVENT_STOP = 128

WALL = 0x40000000  # __WALL: threads and clone children too
SYSCALL_STOP_SIG = 0x80 | 5  # SIGTRAP | 0x80 with PTRACE_O_TRACESYSGOOD

PAGE = os.sysconf("SC_PAGE_SIZE")


class TraceeGone(ProcessLookupError):
    """The tracee vanished (ESRCH) between its stop and our request."""


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_ptrace.restype = ctypes.c_long
_readv = _libc.process_vm_readv
_writev = _libc.process_vm_writev
for _f in (_readv, _writev):
    _f.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    _f.restype = ctypes.c_ssize_t


def _fail(what: str, tid: int) -> None:
    err = ctypes.get_errno()
    if err == errno.ESRCH:
        raise TraceeGone(err, f"{what}: tracee {tid} is gone")
    raise OSError(err, f"{what} on {tid}: {os.strerror(err)}")


def seize(tid: int, options: int) -> None:
    if _ptrace(PTRACE_SEIZE, tid, None, ctypes.c_void_p(options)) != 0:
        _fail("PTRACE_SEIZE", tid)


def cont(tid: int, sig: int = 0) -> None:
    if _ptrace(PTRACE_CONT, tid, None, sig or None) != 0:
        _fail("PTRACE_CONT", tid)


def syscall(tid: int, sig: int = 0) -> None:
    """Resume and stop again at the end of the current (or next) syscall."""
    if _ptrace(PTRACE_SYSCALL, tid, None, sig or None) != 0:
        _fail("PTRACE_SYSCALL", tid)


def listen(tid: int) -> None:
    """Keep a group-stopped tracee stopped, but let SIGCONT (and its real parent) see it."""
    if _ptrace(PTRACE_LISTEN, tid, None, None) != 0:
        _fail("PTRACE_LISTEN", tid)


def getregs(tid: int, regs: Regs) -> None:
    if _ptrace(PTRACE_GETREGS, tid, None, ctypes.addressof(regs)) != 0:
        _fail("PTRACE_GETREGS", tid)


def setregs(tid: int, regs: Regs) -> None:
    if _ptrace(PTRACE_SETREGS, tid, None, ctypes.addressof(regs)) != 0:
        _fail("PTRACE_SETREGS", tid)


_msg = ctypes.c_ulong()


def geteventmsg(tid: int) -> int:
    if _ptrace(PTRACE_GETEVENTMSG, tid, None, ctypes.byref(_msg)) != 0:
        _fail("PTRACE_GETEVENTMSG", tid)
    return _msg.value


# --- memory --------------------------------------------------------------------------------

PATH_MAX = 4096
_SHORT = 256  # most paths are shorter: read this much first
_READ_BUF = ctypes.create_string_buffer(PATH_MAX + PAGE)
_READ_ADDR = ctypes.addressof(_READ_BUF)
_local = _IoVec(_READ_ADDR, PATH_MAX + PAGE)
_local_ref = ctypes.byref(_local)
_remote = (_IoVec * 2)()
_string_at = ctypes.string_at
_get_errno = ctypes.get_errno
# process_vm_readv/writev refused outright: a container's seccomp profile (Docker's default
# without CAP_SYS_PTRACE) or a kernel without them. /proc/TID/mem then does the same work.
_VM_REFUSED = (errno.EPERM, errno.ENOSYS)


def _vm_refused(n: int) -> bool:
    return n < 0 and _get_errno() in _VM_REFUSED


def _proc_mem(tid: int, addr: int, size: int = 0, data: bytes | None = None) -> bytes | int | None:
    """Read ``size`` bytes at ``addr`` (as many as are mapped) or write ``data`` there through
    ``/proc/TID/mem``, opened for the one transfer; None if it cannot be done."""
    try:
        fd = os.open(f"/proc/{tid}/mem", os.O_RDWR | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise TraceeGone(errno.ESRCH, f"tracee {tid} is gone") from exc
    except OSError:
        return None
    try:
        return os.pread(fd, size, addr) if data is None else os.pwrite(fd, data, addr)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_fallback(tid: int, addr: int, size: int) -> int:
    """:func:`_read_into_buf` through ``/proc/TID/mem``: bytes read into the shared buffer."""
    data = _proc_mem(tid, addr, size)
    if not isinstance(data, bytes) or not data:
        return -1
    ctypes.memmove(_READ_ADDR, data, len(data))
    return len(data)


def _write_fallback(tid: int, pieces: list[tuple[int, bytes]]) -> bool:
    return all(_proc_mem(tid, addr, data=data) == len(data) for addr, data in pieces)


def _read_into_buf(tid: int, addr: int, size: int) -> int:
    """Read up to ``size`` bytes at ``addr`` into the shared buffer, cut at the first page end."""
    first = PAGE - (addr % PAGE)
    r0 = _remote[0]
    r0.base = addr
    if first >= size:
        r0.len = size
        count = 1
    else:
        r0.len = first
        r1 = _remote[1]
        r1.base = addr + first
        r1.len = size - first
        count = 2
    n = _readv(tid, _local_ref, 1, _remote, count, 0)
    if n < 0:
        if _get_errno() == errno.ESRCH:
            raise TraceeGone(errno.ESRCH, f"tracee {tid} is gone")
        if _vm_refused(n):
            return _read_fallback(tid, addr, size)
    return n


def read_cstring(tid: int, addr: int, limit: int = PATH_MAX) -> bytes | None:
    """The NUL-terminated string at ``addr``; ``None`` if unreadable or longer than ``limit``.

    process_vm_readv never splits one remote iovec, so the range is cut at the first page
    boundary: a string that ends just before an unmapped page still reads. A short read comes
    first because almost every path is short.
    """
    n = _read_into_buf(tid, addr, _SHORT)
    if n <= 0:
        return None
    data = _string_at(_READ_ADDR, n)
    end = data.find(b"\0")
    if end >= 0:
        return data[:end]
    if n < _SHORT:
        return None
    n = _read_into_buf(tid, addr, limit + 1)
    if n <= 0:
        return None
    data = _string_at(_READ_ADDR, n)
    end = data.find(b"\0")
    return data[:end] if end >= 0 else None


class ProcMem:
    """The tracees' memory through ``/proc/TID/mem``, one fd kept per thread.

    ``pread`` on it costs ~1.5 us, ``process_vm_readv`` ~4 us: the latter checks ptrace access
    on every call, the file once, when opened. For the supervisor, which reads a path in every
    notification. An fd outlives its address space (``execve``, exit, a tid used again): it then
    reads nothing, and is opened again once. Where the file cannot be opened (a non-dumpable
    job under a tracer without CAP_SYS_PTRACE) :func:`read_cstring` and :func:`write_bytes`
    do instead.
    """

    def __init__(self, limit: int = 256) -> None:
        self._fds: dict[int, int] = {}
        self._limit = limit
        self._refused: set[int] = set()

    def read_cstring(self, tid: int, addr: int, limit: int = PATH_MAX) -> bytes | None:
        """As the module's :func:`read_cstring`: ``None`` if unreadable or too long."""
        data = self._transfer(os.pread, tid, _SHORT, addr)
        if data is None:
            return read_cstring(tid, addr, limit) if tid in self._refused else None
        end = data.find(b"\0")
        if end >= 0:
            return data[:end]
        if len(data) < _SHORT:
            return None  # the next page is not mapped
        data = self._transfer(os.pread, tid, limit + 1, addr)
        end = data.find(b"\0") if data is not None else -1
        return data[:end] if data is not None and end >= 0 else None

    def write(self, tid: int, addr: int, data: bytes) -> bool:
        """Write an answer (a ``struct stat``, a link target) into the tracee; False if the
        range is not mapped. Like ``process_vm_writev`` but for one case, a read-only private
        page: the file writes it (a copy of the page, as a debugger's poke), where the job's
        own call would have failed with EFAULT. Shared mappings are refused by the kernel."""
        written = self._transfer(os.pwrite, tid, data, addr)
        if written is None:
            return write_bytes(tid, addr, data) if tid in self._refused else False
        return written == len(data)

    def _transfer(self, io: Callable[[int, Any, int], Any], tid: int, what: Any, addr: int) -> Any:
        """``io(fd, what, addr)`` (pread, pwrite) on the thread's file: its result, or None if
        the range is not mapped (EFAULT for the job) or the file cannot be opened. A file whose
        address space is gone (it reads and writes nothing) is opened again once."""
        if not 0 < addr < 1 << 63:
            return None
        for _ in (0, 1):
            fd = self._fds.get(tid)
            if fd is None:
                fd = self._open(tid)
                if fd is None:
                    return None
            try:
                done = io(fd, what, addr)
            except OSError:
                return None  # EIO: not mapped
            if done:
                return done
            self.forget(tid)  # its address space is gone: perhaps a new one (execve)
        raise TraceeGone(errno.ESRCH, f"tracee {tid} is gone")

    def _open(self, tid: int) -> int | None:
        if tid in self._refused:
            return None
        if len(self._fds) >= self._limit:
            self.close()
        try:
            fd = os.open(f"/proc/{tid}/mem", os.O_RDWR | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise TraceeGone(errno.ESRCH, f"tracee {tid} is gone") from exc
        except OSError:
            self._refused.add(tid)
            return None
        self._fds[tid] = fd
        return fd

    def forget(self, tid: int) -> None:
        fd = self._fds.pop(tid, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._refused.clear()


_U64_BUF = ctypes.c_uint64()
_pair_local = (_IoVec * 2)((ctypes.addressof(_U64_BUF), 8), (_READ_ADDR, _SHORT))
_pair_remote = (_IoVec * 3)()


def read_u64_and_cstring(tid: int, u64_addr: int, addr: int) -> tuple[int | None, bytes | None]:
    """One call for the tracer's hot path: a counter in the stub page and a path argument."""
    first = PAGE - (addr % PAGE)
    _pair_remote[0].base = u64_addr
    _pair_remote[0].len = 8
    r1 = _pair_remote[1]
    r1.base = addr
    if first >= _SHORT:
        r1.len = _SHORT
        count = 2
    else:
        r1.len = first
        r2 = _pair_remote[2]
        r2.base = addr + first
        r2.len = _SHORT - first
        count = 3
    n = _readv(tid, _pair_local, 2, _pair_remote, count, 0)
    if n < 8:
        if n < 0 and _get_errno() == errno.ESRCH:
            raise TraceeGone(errno.ESRCH, f"tracee {tid} is gone")
        if _vm_refused(n):
            raw = read_memory(tid, u64_addr, 8)
            return (int.from_bytes(raw, "little") if raw else None), read_cstring(tid, addr)
        return None, None
    value = _U64_BUF.value
    if n > 8:
        data = _string_at(_READ_ADDR, n - 8)
        end = data.find(b"\0")
        if end >= 0:
            return value, data[:end]
    return value, read_cstring(tid, addr)


def read_memory(tid: int, addr: int, size: int) -> bytes | None:
    """``size`` bytes at ``addr``, or ``None`` if any of them cannot be read."""
    if size > len(_READ_BUF):
        buf = ctypes.create_string_buffer(size)
        local = _IoVec(ctypes.addressof(buf), size)
        remote = _IoVec(addr, size)
        n = _readv(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if _vm_refused(n):
            data = _proc_mem(tid, addr, size)
            return data if isinstance(data, bytes) and len(data) == size else None
        return buf.raw if n == size else None
    r0 = _remote[0]
    r0.base = addr
    r0.len = size
    n = _readv(tid, _local_ref, 1, _remote, 1, 0)
    if n != size:
        if n < 0 and _get_errno() == errno.ESRCH:
            raise TraceeGone(errno.ESRCH, f"tracee {tid} is gone")
        if _vm_refused(n):
            data = _proc_mem(tid, addr, size)
            return data if isinstance(data, bytes) and len(data) == size else None
        return None
    return _string_at(_READ_ADDR, size)


_WRITE_MAX = 4
_WRITE_BUF = ctypes.create_string_buffer(3 * PAGE + PATH_MAX)
_WRITE_ADDR = ctypes.addressof(_WRITE_BUF)
_wlocal = (_IoVec * _WRITE_MAX)()
_wremote = (_IoVec * _WRITE_MAX)()
_memmove = ctypes.memmove


def write_memory(tid: int, pieces: list[tuple[int, bytes]]) -> bool:
    """Write each ``(addr, data)`` piece into the tracee in one call; True if all were written."""
    count = len(pieces)
    total = sum(len(d) for _, d in pieces)
    if count > _WRITE_MAX or total > len(_WRITE_BUF):
        return all(_write_large(tid, addr, data) for addr, data in pieces)
    offset = 0
    for i, (addr, data) in enumerate(pieces):
        size = len(data)
        _memmove(_WRITE_ADDR + offset, data, size)
        lo = _wlocal[i]
        lo.base = _WRITE_ADDR + offset
        lo.len = size
        ro = _wremote[i]
        ro.base = addr
        ro.len = size
        offset += size
    n = _writev(tid, _wlocal, count, _wremote, count, 0)
    return _write_fallback(tid, pieces) if _vm_refused(n) else _written(tid, n, total)


def _written(tid: int, n: int, size: int) -> bool:
    """Whether a ``process_vm_writev`` wrote all ``size`` bytes; a vanished tracee raises."""
    if n < 0 and _get_errno() == errno.ESRCH:
        raise TraceeGone(errno.ESRCH, f"tracee {tid} is gone")
    return n == size


_wlocal0 = _wlocal[0]
_wremote0 = _wremote[0]


def write_bytes(tid: int, addr: int, data: bytes) -> bool:
    """:func:`write_memory` of one piece (an emulated call's answer), without the generality."""
    size = len(data)
    if size > len(_WRITE_BUF):
        return _write_large(tid, addr, data)
    _memmove(_WRITE_ADDR, data, size)
    _wlocal0.base = _WRITE_ADDR
    _wlocal0.len = size
    _wremote0.base = addr
    _wremote0.len = size
    n = _writev(tid, _wlocal, 1, _wremote, 1, 0)
    return _write_fallback(tid, [(addr, data)]) if _vm_refused(n) else _written(tid, n, size)


FRAME_BUF = (ctypes.c_char * (2 * PAGE))()  # filled in place by the tracer (struct.pack_into)
_FRAME_ADDR = ctypes.addressof(FRAME_BUF)
_flocal = _IoVec(_FRAME_ADDR, 0)
_fremote = _IoVec(0, 0)
_flocal_ref = ctypes.byref(_flocal)
_fremote_ref = ctypes.byref(_fremote)


def write_frame(tid: int, addr: int, size: int) -> bool:
    """Write the first ``size`` bytes of :data:`FRAME_BUF` to ``addr``: one region, one call.

    The stub frame (depth counter, header, path) is laid out contiguously by the caller, so
    the hot path copies no Python bytes into a staging buffer and builds one iovec.
    """
    _flocal.len = size
    _fremote.base = addr
    _fremote.len = size
    n = _writev(tid, _flocal_ref, 1, _fremote_ref, 1, 0)
    if _vm_refused(n):
        return _write_fallback(tid, [(addr, bytes(FRAME_BUF[:size]))])
    return _written(tid, n, size)


def _write_large(tid: int, addr: int, data: bytes) -> bool:
    buf = ctypes.create_string_buffer(data, len(data))
    local = _IoVec(ctypes.addressof(buf), len(data))
    remote = _IoVec(addr, len(data))
    n = _writev(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    return _write_fallback(tid, [(addr, data)]) if _vm_refused(n) else n == len(data)


# --- the calls the child makes on itself before execve ----------------------------------------

PR_SET_NO_NEW_PRIVS = 38
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def status_field(pid: int | str, name: bytes) -> int | None:
    """A numeric field (``Tgid:``, ``TracerPid:``) of ``/proc/PID/status``; None if unreadable."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def set_no_new_privs() -> None:
    """Required before an unprivileged process may install a seccomp filter."""
    if _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")


def raw_syscall(nr: int, *args: int | ctypes.c_void_p) -> int:
    """``syscall(2)``; returns the result or raises OSError."""
    conv = [a if isinstance(a, ctypes.c_void_p) else ctypes.c_long(a) for a in args]
    res = _syscall(ctypes.c_long(nr), *conv)
    if res == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res
