"""How the tracer carries decisions out, counted in stops: an ``execve`` of /cvmfs content runs in
the stub, straight from the stop that maps it in a fork child, in a vfork child as in a process
of its own, and a failed one returns through the stub leaving its frame counter as it was."""

from __future__ import annotations

import ast
import subprocess

from tests.interposer.conftest import cvmfs_run
from tests.interposer.trees import MOUNT

BUSYBOX = f"{MOUNT}/bin/busybox"

FAILED_EXEC = f"""
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
argv = (ctypes.c_char_p * 2)(b"busybox", None)
rc = libc.execve(b"{BUSYBOX}", argv, ctypes.c_void_p(8))  # envp unreadable: EFAULT from the kernel
print(rc, errno.errorcode[ctypes.get_errno()])
for _ in range(5):
    print(open("{MOUNT}/etc/example.conf").readline().strip())
"""


def _stats(r: subprocess.CompletedProcess[bytes]) -> dict:
    assert r.returncode == 0, r.stderr.decode()
    line = next(x for x in r.stderr.decode().splitlines() if x.startswith("cvmfs-client run: stops "))
    return ast.literal_eval(line.split("stops ", 1)[1])


def test_vfork_children_exec_through_the_stub_and_leave_their_slot_clean(job_env):
    """dash starts commands with vfork: each child execs in the shell's address space, from the
    same stub slot in turn. One syscall-exit stop in all (mapping the stub), none per exec, and
    no child finds the slot's counter raised by the one before (that would nest its frame)."""
    script = f"for i in 1 2 3 4 5 6; do {BUSYBOX} true; done; {BUSYBOX} cat {MOUNT}/etc/example.conf"
    # --ptrace-only: cat's openat runs in the stub too (a notification would not map it)
    stats = _stats(cvmfs_run(["/bin/sh", "-c", script], job_env, options=["--stats", "--ptrace-only"]))
    events, actions = stats["events"], stats["actions"]
    assert events["vfork"] >= 7, stats  # the premise: /bin/sh uses vfork
    assert actions["exec"] == 7 and events["exec"] == 8, stats  # /bin/sh itself, then 7 /cvmfs programs
    assert events.get("syscall", 0) == 2, stats  # the stub mapped for the shell and for cat, no more
    assert "stub-nested" not in actions, stats


def test_fork_children_exec_straight_from_the_mapping_stop(job_env):
    """bash forks: each child has a copy of an address space without the stub (bash never
    touched /cvmfs), maps it for its execve, and the execve then runs from the mmap's stop
    instead of being restarted and trapped a second time."""
    script = f"for i in 1 2 3 4 5; do {BUSYBOX} true; done"
    stats = _stats(cvmfs_run(["/bin/bash", "-c", script], job_env, options=["--stats"]))
    assert stats["events"]["fork"] >= 5, stats  # the premise: bash forks
    assert stats["stops"]["execve"] == 6 and stats["actions"]["exec"] == 5, stats
    assert stats["events"]["syscall"] == 5, stats  # one mapping per child, nothing else


def test_a_failed_exec_returns_through_the_stub(job_env):
    r = cvmfs_run(["python3", "-c", FAILED_EXEC], job_env, options=["--stats"])
    stats = _stats(r)
    assert r.stdout.decode().splitlines() == ["-1 EFAULT"] + ["# example configuration"] * 5
    assert stats["actions"]["exec"] == 1 and stats["events"]["exec"] == 1, stats  # python3's own only
    assert "stub-nested" not in stats["actions"], stats  # the counter went back to 0
