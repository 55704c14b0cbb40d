"""Keep a waiting job thread on the supervisor's CPU while it installs a handed-over fd.

Handing an fd to a job (``SECCOMP_IOCTL_NOTIF_ADDFD``) wakes the job thread so that it installs
the fd itself, and the supervisor sleeps until it has. Unlike a plain answer, that wake-up has no
synchronous variant: the scheduler puts the job on the other, idle CPU (the supervisor is busy on
this one), and the job's "done" then wakes the supervisor's now idle CPU: two cross-CPU wake-ups,
~50 us on a VM, for an open that costs the job 2 us natively.

The job thread is blocked in its notified call for the whole time, so narrowing its CPU mask to
the supervisor's CPU for the hand-over is invisible to it: the mask is put back before the call
is answered (the fd goes over without ``ADDFD_FLAG_SEND``, the answer after the mask). Nothing in
the job can see the narrowed mask, nor inherit it, since no code of the job runs meanwhile.
Only the supervisor's thread changes: when it is on a CPU the job may not use, or the kernel
refuses (another cpuset, a deadline task), the hand-over goes the slow way, which is still right.
"""

from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)
_getcpu = _libc.sched_getcpu
_getcpu.restype = ctypes.c_int
_getaffinity = _libc.sched_getaffinity
_getaffinity.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p]
_setaffinity = _libc.sched_setaffinity
_setaffinity.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p]

MASK_BYTES = 1024  # 8192 CPUs: the kernel's nr_cpu_ids is always below that


class SameCpu:
    """Pins one job thread at a time to the calling thread's CPU, and puts its mask back."""

    def __init__(self) -> None:
        self._saved = ctypes.create_string_buffer(MASK_BYTES)
        self._one = ctypes.create_string_buffer(MASK_BYTES)
        self._tid = 0
        self._cpu = -1

    def pin(self, tid: int) -> bool:
        """Move ``tid`` (blocked in a notified call) to this thread's CPU; False if not done."""
        cpu = _getcpu()
        if cpu < 0 or cpu >= MASK_BYTES * 8:
            return False
        if _getaffinity(tid, MASK_BYTES, self._saved) != 0:
            return False
        byte, bit = divmod(cpu, 8)
        if not self._saved[byte][0] >> bit & 1:  # one byte, not a copy of the whole mask
            return False  # the job may not run here: it chose its CPUs, leave them
        one = self._one
        if self._cpu != cpu:
            ctypes.memset(one, 0, MASK_BYTES)
            one[byte] = bytes((1 << bit,))
            self._cpu = cpu
        if _setaffinity(tid, MASK_BYTES, one) != 0:
            return False
        self._tid = tid
        return True

    def unpin(self) -> str | None:
        """Give the pinned thread its own mask back; why not, if it could not be (a thread
        that is gone needs none)."""
        tid, self._tid = self._tid, 0
        if tid and _setaffinity(tid, MASK_BYTES, self._saved) != 0:
            err = ctypes.get_errno()
            if err != errno.ESRCH:  # ESRCH: killed meanwhile
                return f"sched_setaffinity({tid}): {os.strerror(err)}"
        return None
