"""The event loop: every ptrace stop of every traced thread, and what to do with it.

The translator decides; this module carries decisions out with the fewest stops:

- a call that needs no change is resumed at once (one stop);
- a call with a new path runs in the *stub* (:mod:`.arch_x86_64`): the tracer writes a frame into
  the thread's slot of the stub mapping, skips the original call and points the thread at the
  stub, which makes the call itself, restores the registers and jumps back (one stop, no
  syscall-exit stop). The stub mapping is created in each new address space on its first
  translated call by injecting ``mmap`` in place of that call; from the mmap's syscall-exit
  stop the call then goes straight to the stub;
- a call answered by the translator (an errno, a ``readlink`` target, a ``struct stat``) is
  skipped with its result written into the tracee (one stop, no stub);
- ``execve`` runs in the stub too, its file name and argv in the slot's scratch area, so that
  it can run straight from the stop of the ``mmap`` that maps the stub (a fork child of a
  shell that never touched /cvmfs: one stop less per program it starts) and a failed one
  returns without a syscall-exit stop. In a vfork child the address space outlives the exec,
  so the slot's depth counter, which only the stub lowers, is put back at the exec event;
- the fallback when the stub cannot be mapped (or is nested too deep) is the classic way:
  arguments rewritten at the seccomp stop, put back at the syscall-exit stop (x86-64 keeps
  argument registers across a syscall, so a rewritten pointer would otherwise leak back to the
  program and into a restarted call).

Process semantics: new threads and processes are followed (TRACECLONE/FORK/VFORK) and a child
reported before its parent's event is held until the event tells which address space and
thread group it belongs to; group-stops are kept stopped with PTRACE_LISTEN so job control
works; other signals are delivered unchanged. The loop ends when no tracee is left.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from cvmfs_client import lazylog
from cvmfs_client.records import Record

from . import arch_x86_64 as arch
from . import ptrace_api as pt
from .syscalls import BY_NR
from .translate import Exec, Return, Rewrite, Translator, WriteReturn

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)

if TYPE_CHECKING:
    from .namelist import NameList

log = lazylog.get(__name__)

CLONE_VM = 0x100
CLONE_THREAD = 0x10000
_STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
_HEADER = struct.Struct("<18Q")
_U64 = struct.Struct("<Q")
_MASK = (1 << 64) - 1
# wait status of a seccomp stop: stopped (0x7f) by SIGTRAP with PTRACE_EVENT_SECCOMP
_SECCOMP_STOP = (pt.EVENT_SECCOMP << 16) | (signal.SIGTRAP << 8) | 0x7F
# the first frame of a slot, seen from the slot's start: counter, gap, header, scratch, path
_FRAME0_PATH = arch.SLOT_FRAMES_OFFSET + arch.F_PATH
assert len(pt.FRAME_BUF) >= _FRAME0_PATH + arch.FRAME_SIZE - arch.F_PATH
# where the first frame's path is copied to: memmove, not a slice of the ctypes array (which
# copies byte by byte in Python: 3 us for a 130-byte path, a tenth of a translated call)
_FRAME0_PATH_ADDR = ctypes.addressof(pt.FRAME_BUF) + _FRAME0_PATH
_memmove = ctypes.memmove
# depth counter (1), gap, then the header of the first frame: one pack_into for both
_FRAME0 = struct.Struct(f"<Q{arch.SLOT_FRAMES_OFFSET - 8}x18Q")
_FRAME_BUF = pt.FRAME_BUF
assert _FRAME0.size == arch.SLOT_FRAMES_OFFSET + _HEADER.size

_EVENT_NAMES = {
    pt.EVENT_STOP: "stop",
    pt.EVENT_FORK: "fork",
    pt.EVENT_VFORK: "vfork",
    pt.EVENT_CLONE: "clone",
    pt.EVENT_EXEC: "exec",
}  # event 0 with any signal: a signal-delivery stop


def _skip(tid: int, regs: arch.Regs, value: int) -> None:
    """Resume ``tid`` past the call it stopped in, as if it had returned ``value``."""
    arch.skip_syscall(regs, value)
    pt.setregs(tid, regs)
    pt.cont(tid)


# address-space states
UNMAPPED, PENDING, STUB, CLASSIC, NOSCRATCH = range(5)


class AddressSpace:
    """What the tracer knows about one address space (shared by threads and vfork children)."""

    __slots__ = ("state", "base", "slots", "free", "big", "big_size", "shared")

    def __init__(self, state: int = UNMAPPED, base: int = 0) -> None:
        self.state = state
        self.base = base
        self.shared = False  # also used by another process (vfork, CLONE_VM): outlives an exec
        self.big = 0  # an extra scratch mapping for an execve with a long argv (rare)
        self.big_size = 0
        self.slots: dict[int, int] = {}
        self.free = list(range(arch.SLOTS - 1, -1, -1))

    def copy_for_fork(self) -> AddressSpace:
        """A forked child inherits the mapping (same address, private copy), not the threads."""
        return AddressSpace(self.state if self.state in (STUB, CLASSIC) else UNMAPPED, self.base)

    def slot(self, tid: int) -> int | None:
        """Address of ``tid``'s slot, assigning a free one on first use."""
        index = self.slots.get(tid)
        if index is None:
            if not self.free:
                return None
            index = self.free.pop()
            self.slots[tid] = index
        return self.base + arch.STUB_CODE_SIZE + index * arch.SLOT_SIZE

    def release(self, tid: int) -> None:
        index = self.slots.pop(tid, None)
        if index is not None:
            self.free.append(index)


class Task(Record):
    """One traced thread."""

    __slots__ = ("tid", "tgid", "mm", "pending", "exec_frame")

    def __init__(
        self,
        tid: int,
        tgid: int,
        mm: AddressSpace,
        pending: tuple | None = None,
        exec_frame: tuple[int, int] | None = None,
    ) -> None:
        self.tid = tid
        self.tgid = tgid
        self.mm = mm
        self.pending = pending  # what to do at this thread's next syscall stop
        self.exec_frame = exec_frame  # slot and depth of an execve run by the stub


class Stats(Record):
    """Counters for ``-v`` and the benchmark: where the stops went."""

    __slots__ = ("stops", "actions", "events", "seconds")

    def __init__(self) -> None:
        self.stops: Counter = Counter()  # seccomp stops, by syscall
        self.actions: Counter = Counter()
        self.events: Counter = Counter()  # every other stop (and exit), by kind
        self.seconds = 0.0  # tracer time spent handling seccomp stops

    def total(self) -> int:
        return sum(self.stops.values())


class _Ctx:
    """The translator's view of one stopped thread (see translate.Context)."""

    __slots__ = ("tid", "tgid", "pure", "fd_target", "_cwds", "pf_addr", "pf_path", "_read_cstring")

    def __init__(self, cwds: dict[int, str], mem: pt.ProcMem | None = None) -> None:
        self.tid = 0
        self.tgid = 0
        self.pure: bytes | None = None  # see translate.Context
        self.fd_target: str | None = None
        self._cwds = cwds
        self.pf_addr = 0  # a path read ahead together with the stub depth counter
        self.pf_path: bytes | None = None
        self._read_cstring = mem.read_cstring if mem is not None else pt.read_cstring

    def read_path(self, addr: int) -> bytes | None:
        if addr == self.pf_addr and addr:
            return self.pf_path
        return self._read_cstring(self.tid, addr) if addr else None

    def read_memory(self, addr: int, size: int) -> bytes | None:
        return pt.read_memory(self.tid, addr, size) if addr else None

    def cwd(self) -> str:
        found = self._cwds.get(self.tgid)
        if found is None:
            try:
                found = os.readlink(f"/proc/{self.tid}/cwd")
            except OSError:
                return "/"
            self._cwds[self.tgid] = found
        return found

    def cwd_changed(self) -> None:
        self._cwds.pop(self.tgid, None)

    def fd_path(self, fd: int) -> str | None:
        if fd < 0:
            return None
        try:
            return os.readlink(f"/proc/{self.tid}/fd/{fd}")
        except OSError:
            return None


class Tracer:
    """Runs the loop for one job whose first process ``main_pid`` is already seized."""

    def __init__(
        self,
        translator: Translator,
        main_pid: int,
        on_main_stop: Callable[[int], None] | None = None,
        debug: bool = False,
        names: NameList | None = None,
    ) -> None:
        self.translator = translator
        self.names = names  # --name-list: every path argument is recorded (None: no cost)
        self.main_pid = main_pid
        self.on_main_stop = on_main_stop
        self.debug = debug
        self.tasks: dict[int, Task] = {main_pid: Task(main_pid, main_pid, AddressSpace())}
        self.early: dict[int, int] = {}  # children seen before their parent's event: tid -> status
        self.cwds: dict[int, str] = {}
        self.ctx = _Ctx(self.cwds)
        self.regs = arch.Regs()
        self.stats = Stats()
        self.main_status: int | None = None
        # Held while a stop is handled: notify.Supervisor serves calls from another thread
        # with the same translator and ptrace_api buffers.
        self.lock = threading.Lock()
        # The supervisor's /proc/TID/mem files: a thread's is dropped when it execs or ends,
        # before it runs again (a vfork child's would otherwise still read its parent's memory).
        self.mem: pt.ProcMem | None = None

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve stops until every tracee is gone; the main process's wait status."""
        waitpid, wall, tasks, lock = os.waitpid, pt.WALL, self.tasks, self.lock
        on_seccomp, dispatch = self._on_seccomp, self._dispatch
        while True:
            try:
                pid, status = waitpid(-1, wall)
            except ChildProcessError:
                break
            with lock:
                try:
                    if status == _SECCOMP_STOP:  # nearly every stop: straight to the translator
                        on_seccomp(tasks.get(pid) or self._adopt(pid))
                    else:
                        dispatch(pid, status)
                except pt.TraceeGone:
                    self._forget(pid)
        return self.main_status if self.main_status is not None else 0

    def _dispatch(self, pid: int, status: int) -> None:
        if (status & 0xFF) != 0x7F:  # exited or killed
            self.stats.events["exit"] += 1
            self._forget(pid)
            if pid == self.main_pid:
                self.main_status = status
            return
        sig = (status >> 8) & 0xFF
        event = status >> 16
        task = self.tasks.get(pid)
        if sig == signal.SIGTRAP and event == pt.EVENT_SECCOMP:  # counted in stats.stops
            if task is None:
                task = self._adopt(pid)
            self._on_seccomp(task)
            return
        self.stats.events[_EVENT_NAMES.get(event, "signal") if sig != pt.SYSCALL_STOP_SIG else "syscall"] += 1
        if sig == pt.SYSCALL_STOP_SIG:
            self._on_syscall_stop(pid, task)
        elif event == 0:
            pt.cont(pid, sig)  # signal-delivery-stop: deliver it
        elif event == pt.EVENT_STOP:
            self._on_event_stop(pid, sig, task)
        elif event in (pt.EVENT_FORK, pt.EVENT_VFORK, pt.EVENT_CLONE):
            self._on_new_task(pid, event, task)
        elif event == pt.EVENT_EXEC:
            self._on_exec(pid)
        else:
            pt.cont(pid)

    def _forget(self, pid: int) -> None:
        task = self.tasks.pop(pid, None)
        self.early.pop(pid, None)
        if self.mem is not None:
            self.mem.forget(pid)
        if task is not None:
            task.mm.release(pid)

    def _adopt(self, pid: int) -> Task:
        """A thread we never saw created (should not happen): give it a fresh, safe record."""
        tgid = _tgid_of(pid)
        leader = self.tasks.get(tgid)
        mm = leader.mm if leader is not None else AddressSpace()
        task = Task(pid, tgid, mm)
        self.tasks[pid] = task
        return task

    def _on_event_stop(self, pid: int, sig: int, task: Task | None) -> None:
        if sig in _STOP_SIGNALS:
            # group-stop: stay stopped (the real parent sees it) until SIGCONT
            pt.listen(pid)
            if pid == self.main_pid and self.on_main_stop is not None:
                self.on_main_stop(sig)
            return
        if task is None:
            self.early[pid] = sig  # first stop of a new child: wait for its parent's event
            return
        pt.cont(pid)

    def _lower_counter(self, task: Task, old: AddressSpace, slot: int, depth: int) -> None:
        """After an execve made by the stub in a shared address space: put the slot's depth
        counter back, through a process still using that space, before the slot is reused."""
        for other in self.tasks.values():
            if other.mm is old and other is not task:
                try:
                    pt.write_memory(other.tid, [(slot, _U64.pack(depth))])
                except pt.TraceeGone:
                    continue
                return

    def _on_new_task(self, pid: int, event: int, parent: Task | None) -> None:
        child = pt.geteventmsg(pid)
        if parent is None:
            parent = self._adopt(pid)
        flags = 0
        if event == pt.EVENT_CLONE:
            flags = self._clone_flags(pid)
        elif event == pt.EVENT_VFORK:
            flags = CLONE_VM
        mm = parent.mm if flags & CLONE_VM else parent.mm.copy_for_fork()
        tgid = parent.tgid if flags & CLONE_THREAD else child
        if flags & CLONE_VM and not flags & CLONE_THREAD:
            mm.shared = True
        self.tasks[child] = Task(child, tgid, mm)
        if tgid != parent.tgid and parent.tgid in self.cwds:
            self.cwds[tgid] = self.cwds[parent.tgid]
        if child in self.early:
            del self.early[child]
            pt.cont(child)
        pt.cont(pid)

    def _clone_flags(self, pid: int) -> int:
        regs = self.regs
        pt.getregs(pid, regs)
        nr = arch.syscall_nr(regs)
        if nr == arch.NR["clone3"]:
            raw = pt.read_memory(pid, arch.arg(regs, 0), 8)
            return int.from_bytes(raw, "little") if raw else CLONE_VM | CLONE_THREAD
        return arch.arg(regs, 0)

    def _on_exec(self, pid: int) -> None:
        former = pt.geteventmsg(pid)
        task = self.tasks.pop(former, None) or self.tasks.get(pid) or Task(pid, pid, AddressSpace())
        if former != pid:
            # execve from a non-leader thread: it took over the leader's tid; the other
            # threads are gone without an exit report.
            for tid, other in list(self.tasks.items()):
                if other.tgid == task.tgid:
                    del self.tasks[tid]
                    if self.mem is not None:
                        self.mem.forget(tid)
        old = task.mm
        if task.exec_frame is not None:
            self._lower_counter(task, old, *task.exec_frame)
            task.exec_frame = None
        old.release(former)
        if self.mem is not None:
            self.mem.forget(former)
            self.mem.forget(pid)
        task.tid = pid
        task.tgid = pid
        task.mm = AddressSpace()
        task.pending = None
        self.tasks[pid] = task
        pt.cont(pid)

    # -- seccomp stops ------------------------------------------------------------------------

    def _on_seccomp(self, task: Task) -> None:
        tid = task.tid
        regs = self.regs
        pt.getregs(tid, regs)
        nr = arch.syscall_nr(regs)
        spec = BY_NR.get(nr)
        self.stats.stops[spec.name if spec else nr] += 1
        if spec is None:
            pt.cont(tid)
            return
        if task.exec_frame is not None:  # that execve failed and returned through the stub
            task.exec_frame = None
        ctx = self.ctx
        ctx.tid = tid
        ctx.tgid = task.tgid
        ctx.pure = ctx.fd_target = None
        started = time.perf_counter()
        args = arch.args(regs)
        depth = None
        mm = task.mm
        if mm.state == STUB and spec.path is not None:
            slot = mm.slot(tid)
            addr = args[spec.path]
            if slot is not None and addr:
                depth, ctx.pf_path = pt.read_u64_and_cstring(tid, slot, addr)
                ctx.pf_addr = addr if depth is not None else 0
        if self.names is not None:
            self.names.syscall(ctx, spec, args)
        action = self.translator.decide(ctx, nr, spec, args)
        ctx.pf_addr = 0
        if self.debug and action is not None:
            log.debug("[%d] %s%s -> %s", tid, spec.name, describe_call(ctx, spec, args), action)
        if action is None:
            pt.cont(tid)
        elif type(action) is Rewrite:
            self._rewrite(task, regs, action, depth)
        elif type(action) is Return:
            self.stats.actions["return"] += 1
            _skip(tid, regs, action.value)
        elif type(action) is WriteReturn:
            self.stats.actions["emulate"] += 1
            ok = pt.write_bytes(tid, action.addr, action.data) if action.data else True
            _skip(tid, regs, action.value if ok else -errno.EFAULT)
        elif type(action) is Exec:
            self._exec(task, regs, action, depth)
        self.stats.seconds += time.perf_counter() - started

    def _rewrite(self, task: Task, regs: arch.Regs, action: Rewrite, depth: int | None = None) -> None:
        mm = task.mm
        tid = task.tid
        if mm.state in (UNMAPPED, PENDING):
            self._need_mapping(task, regs, action)
            return
        if mm.state == STUB:
            slot = mm.slot(tid)
            if depth is None:
                depth_raw = pt.read_memory(tid, slot, 8) if slot is not None else None
                depth = _U64.unpack(depth_raw)[0] if depth_raw else arch.MAX_DEPTH
            if slot is not None and depth < arch.MAX_DEPTH:
                self.stats.actions["stub"] += 1
                self._in_stub(tid, regs, action, slot, depth)
                return
        args = action.args
        slot = task.mm.slot(tid) if task.mm.state in (STUB, CLASSIC) else None
        if action.path2 is not None and slot is not None:
            # the second path goes to the end of the scratch area, the first to its start
            addr = slot + arch.SLOT_SCRATCH_OFFSET + arch.SLOT_SCRATCH_SIZE - 4200
            if not pt.write_memory(tid, [(addr, action.path2 + b"\0")]):
                self._fail(task, regs, errno.EFAULT)
                return
            args = {**args, action.path2_arg: addr}
        self._classic(task, regs, action.nr, args, action.path, action.path_arg)

    def _in_stub(self, tid: int, regs: arch.Regs, action: Rewrite, slot: int, depth: int) -> None:
        """Run ``action`` in the stub: write its frame, skip the call, point the thread there.

        The hot path of every translated call: the first frame (depth 0), counter included, is
        packed in place and written as one region (see :func:`_write_frame`).
        """
        frame = slot + arch.SLOT_FRAMES_OFFSET + depth * arch.FRAME_SIZE
        orig = arch.args(regs)
        path = action.path
        new: tuple[int, ...] | list[int] = orig
        blob = b""
        if action.args or path is not None:
            new = list(orig)
            for i, v in action.args.items():
                new[i] = v & _MASK
            if path is not None:
                new[action.path_arg] = frame + arch.F_PATH
                blob = path + b"\0"
                if action.path2 is not None:
                    new[action.path2_arg] = frame + arch.F_PATH + len(blob)
                    blob += action.path2 + b"\0"
                if len(blob) > arch.FRAME_SIZE - arch.F_PATH:
                    _skip(tid, regs, -errno.ENAMETOOLONG)
                    return
        nr, rip, base, cmd = action.nr & _MASK, regs.rip, action.reloc_base, action.reloc_cmd
        if depth == 0:
            _FRAME0.pack_into(_FRAME_BUF, 0, 1, nr, *new, *orig, rip, 0, base, cmd, slot)
            if blob:
                _memmove(_FRAME0_PATH_ADDR, blob, len(blob))
                ok = pt.write_frame(tid, slot, _FRAME0_PATH + len(blob))
            else:
                ok = pt.write_frame(tid, slot, _FRAME0.size)
        else:
            self.stats.actions["stub-nested"] += 1  # a signal handler interrupted the stub
            ok = _write_frame(tid, slot, depth, frame, (nr, *new, *orig, rip, 0, base, cmd, slot), blob)
        if ok:
            regs.rip = arch.STUB_ADDR
            regs.r11 = frame
        _skip(tid, regs, 0 if ok else -errno.EFAULT)

    def _classic(
        self, task: Task, regs: arch.Regs, nr: int, args: dict[int, int], path: bytes | None, path_arg: int
    ) -> None:
        """Rewrite at the seccomp stop, restore at the syscall-exit stop (two stops)."""
        self.stats.actions["classic"] += 1
        tid = task.tid
        scratch = task.mm.slot(tid) if task.mm.state in (STUB, CLASSIC) else None
        if scratch is None:
            self._fail(task, regs, errno.ENOMEM)
            return
        scratch += arch.SLOT_SCRATCH_OFFSET
        saved = arch.Regs.from_buffer_copy(regs)
        for i, v in args.items():
            arch.set_arg(regs, i, v)
        if path is not None:
            if not pt.write_memory(tid, [(scratch, path + b"\0")]):
                self._fail(task, regs, errno.EFAULT)
                return
            arch.set_arg(regs, path_arg, scratch)
        arch.set_syscall(regs, nr)
        pt.setregs(tid, regs)
        pt.syscall(tid)
        task.pending = ("restore", saved)

    def _exec(self, task: Task, regs: arch.Regs, action: Exec, depth: int | None = None) -> None:
        """Run ``execve`` of a local file: strings and argv in the slot's scratch area, the call
        in the stub (a successful exec ends in its exec event, a failed one returns through the
        stub), or the classic way (a failed one stops again at its exit) when the stub is nested
        too deep or could not be mapped."""
        mm = task.mm
        tid = task.tid
        if mm.state in (UNMAPPED, PENDING):
            self._need_mapping(task, regs, action)
            return
        slot = mm.slot(tid) if mm.state in (STUB, CLASSIC) else None
        if slot is None:
            self._fail(task, regs, errno.ENOMEM)
            return
        size = _exec_size(action)
        if size <= arch.SLOT_SCRATCH_SIZE:
            scratch = slot + arch.SLOT_SCRATCH_OFFSET
        elif size <= mm.big_size:
            scratch = mm.big
        else:
            self._map_big_scratch(task, regs, size)  # the execve restarts afterwards
            return
        blob = bytearray(action.filename + b"\0")
        argv_addr = 0
        if action.argv is not None:
            pointers = []
            for item in action.argv:
                if isinstance(item, bytes):
                    pointers.append(scratch + len(blob))
                    blob += item + b"\0"
                else:
                    pointers.append(item)
            blob += b"\0" * (-len(blob) % 8)
            argv_addr = scratch + len(blob)
            blob += struct.pack(f"<{len(pointers) + 1}Q", *pointers, 0)
        if not pt.write_memory(tid, [(scratch, bytes(blob))]):
            self._fail(task, regs, errno.EFAULT)
            return
        self.stats.actions["exec"] += 1
        if mm.state == STUB:
            if depth is None:
                depth_raw = pt.read_memory(tid, slot, 8)
                depth = _U64.unpack(depth_raw)[0] if depth_raw else arch.MAX_DEPTH
            if depth < arch.MAX_DEPTH:
                args = dict(action.args)
                args[action.path_arg] = scratch
                if argv_addr:
                    args[action.argv_arg] = argv_addr
                self._in_stub(tid, regs, Rewrite(action.nr, args=args), slot, depth)
                if mm.shared:
                    # A vfork child: its address space lives on in the parent, with this slot's
                    # counter raised by the frame, which a successful exec never lowers.
                    task.exec_frame = (slot, depth)
                return
        saved = arch.Regs.from_buffer_copy(regs)
        for i, v in action.args.items():
            arch.set_arg(regs, i, v)
        arch.set_arg(regs, action.path_arg, scratch)
        if argv_addr:
            arch.set_arg(regs, action.argv_arg, argv_addr)
        arch.set_syscall(regs, action.nr)
        pt.setregs(tid, regs)
        pt.syscall(tid)
        task.pending = ("restore", saved)

    def _map_big_scratch(self, task: Task, regs: arch.Regs, size: int) -> None:
        """Inject an anonymous mapping big enough for a long argv, then restart the execve."""
        size = (size + 2 * pt.PAGE) & ~(pt.PAGE - 1)
        saved = arch.Regs.from_buffer_copy(regs)
        arch.set_syscall(regs, arch.NR["mmap"])
        prot = arch.PROT_READ | arch.PROT_WRITE
        for i, v in enumerate((0, size, prot, arch.MAP_PRIVATE | arch.MAP_ANONYMOUS, -1, 0)):
            arch.set_arg(regs, i, v)
        pt.setregs(task.tid, regs)
        pt.syscall(task.tid)
        task.pending = ("big", (saved, size))

    def _fail(self, task: Task, regs: arch.Regs, err: int) -> None:
        _skip(task.tid, regs, -err)

    # -- creating the stub mapping ---------------------------------------------------------------

    def _need_mapping(self, task: Task, regs: arch.Regs, resume: Rewrite | Exec | None = None) -> None:
        """Map the stub in this address space, then run ``resume`` in it at once.

        Without ``resume`` (another thread mapping it, an ``execve`` whose argv needs more
        scratch than a slot has) the call restarts after the mapping and is trapped again.
        """
        tid = task.tid
        if task.mm.state == PENDING:
            # Another thread is mapping it: make this one execute its syscall again later.
            _retry(regs)
            pt.setregs(tid, regs)
            pt.cont(tid)
            return
        task.mm.state = PENDING
        saved = arch.Regs.from_buffer_copy(regs)
        arch.set_syscall(regs, arch.NR["mmap"])
        flags = arch.MAP_PRIVATE | arch.MAP_ANONYMOUS | arch.MAP_NORESERVE | arch.MAP_FIXED_NOREPLACE
        prot = arch.PROT_READ | arch.PROT_WRITE | arch.PROT_EXEC
        for i, v in enumerate((arch.STUB_ADDR, arch.STUB_MAP_SIZE, prot, flags, -1, 0)):
            arch.set_arg(regs, i, v)
        pt.setregs(tid, regs)
        pt.syscall(tid)
        task.pending = ("map", (saved, resume))

    def _on_syscall_stop(self, pid: int, task: Task | None) -> None:
        if task is None or task.pending is None:
            pt.cont(pid)
            return
        what, saved = task.pending
        task.pending = None
        regs = self.regs
        pt.getregs(pid, regs)
        if what == "restore":
            for name in arch.ARG_REGS:
                setattr(regs, name, getattr(saved, name))
            regs.orig_rax = saved.orig_rax  # a restarted call is the original one
            pt.setregs(pid, regs)
            pt.cont(pid)
            return
        result = arch.retval(regs)
        mm = task.mm
        if what == "big":
            saved, size = saved
            if result <= 0:
                # no memory for it: fail the execve as the kernel would with a huge argv
                regs_back = arch.Regs.from_buffer_copy(saved)
                regs_back.rax = -errno.E2BIG & _MASK
                pt.setregs(pid, regs_back)
                pt.cont(pid)
                return
            mm.big, mm.big_size = result, size
        elif what == "map":
            saved, resume = saved
            if result == arch.STUB_ADDR and pt.write_memory(pid, [(arch.STUB_ADDR, arch.STUB_CODE)]):
                mm.state, mm.base = STUB, result
                if resume is not None and mm.slot(pid) is not None:
                    # Run the decided rewrite now, from this syscall-exit stop, as if at the
                    # original call's seccomp stop: the stub returns after that call's
                    # instruction, so the call is not executed (and trapped) a second time.
                    if type(resume) is Rewrite:
                        self._rewrite(task, arch.Regs.from_buffer_copy(saved), resume, 0)
                        return
                    if _exec_size(resume) <= arch.SLOT_SCRATCH_SIZE:
                        self._exec(task, arch.Regs.from_buffer_copy(saved), resume, 0)
                        return
            elif result > 0:
                # Linux < 4.17 ignores MAP_FIXED_NOREPLACE: the mapping works as scratch only.
                mm.state, mm.base = CLASSIC, result
            else:
                log.info("[%d] stub address taken (%s): slower path for this process", pid, -result)
                _retry(regs)  # run mmap again, without a fixed address
                arch.set_arg(regs, 0, 0)
                arch.set_arg(regs, 3, arch.MAP_PRIVATE | arch.MAP_ANONYMOUS | arch.MAP_NORESERVE)
                regs.rax = arch.NR["mmap"]
                pt.setregs(pid, regs)
                pt.syscall(pid)
                task.pending = ("map2-entry", saved)
                return
        elif what == "map2-entry":
            pt.syscall(pid)
            task.pending = ("map2", saved)
            return
        elif what == "map2":
            mm.state, mm.base = (CLASSIC, result) if result > 0 else (NOSCRATCH, 0)
        # Restart the original call: it is trapped again and now finds the mapping.
        regs_back = arch.Regs.from_buffer_copy(saved)
        _retry(regs_back)
        pt.setregs(pid, regs_back)
        pt.cont(pid)


def _write_frame(tid: int, slot: int, depth: int, frame: int, header: tuple[int, ...], blob: bytes) -> bool:
    """Put a nested stub frame (and the slot's new depth) into the tracee, piece by piece.

    The first frame lies right after the depth counter, so :meth:`Tracer._in_stub` writes
    counter, header and path as one region packed in place (:data:`_FRAME0`); a nested frame (a
    signal handler interrupted the stub) is farther away. The gaps of the first region are
    never written by the tracer, so they carry zeros, not bytes of another tracee.
    """
    pieces = [(slot, _U64.pack(depth + 1)), (frame, _HEADER.pack(*header))]
    if blob:
        pieces.append((frame + arch.F_PATH, blob))
    return pt.write_memory(tid, pieces)


def _exec_size(action: Exec) -> int:
    """Scratch bytes an execve needs: the file name, the new argv strings, the pointer array."""
    argv = action.argv or ()
    strings = len(action.filename) + 1 + sum(len(a) + 1 for a in argv if isinstance(a, bytes))
    return strings + 8 + 8 * (len(argv) + 1)


def _retry(regs: arch.Regs) -> None:
    """Make the thread execute its current ``syscall`` instruction again when resumed.

    At a seccomp stop the call is skipped (its "result" is the syscall number, put back in rax);
    at a syscall-exit stop the instruction is simply re-executed.
    """
    nr = arch.syscall_nr(regs)
    arch.skip_syscall(regs, nr)
    arch.rewind_to_syscall(regs, nr)


def _tgid_of(pid: int) -> int:
    found = pt.status_field(pid, b"Tgid:")
    return found if found is not None else pid


def describe_call(ctx: _Ctx, spec: object, args: Sequence[int]) -> str:
    """``(path)`` or ``(fd N)`` of a call, for ``--debug`` (the tracer's and notify.py's)."""
    path_arg = getattr(spec, "path", None)
    if path_arg is None:
        return f"(fd {ctypes.c_int(args[0] & 0xFFFFFFFF).value})"
    raw = ctx.read_path(args[path_arg])
    return f"({raw!r})"
