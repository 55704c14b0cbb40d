"""interposer/ptrace_api.py: reading a tracee's paths through /proc/TID/mem (ProcMem)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from interposer.ptrace_api import ProcMem, TraceeGone, read_cstring

# A child that prints the address of a string, waits for a line, then execs (or exits).
CHILD = textwrap.dedent(
    """
    import ctypes, os, sys
    buf = ctypes.create_string_buffer(b"/cvmfs/sw.example.org/README.txt", 8192)
    ctypes.memmove(ctypes.addressof(buf) + 4094, b"/x", 2)  # a path across a page boundary
    print(ctypes.addressof(buf), flush=True)
    if sys.stdin.readline().strip() == "exec":
        os.execv("/bin/sleep", ["sleep", "30"])
    sys.stdin.readline()
    """
)


@pytest.fixture
def child():
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    addr = int(proc.stdout.readline())
    yield proc, addr
    proc.kill()
    proc.wait()


@pytest.fixture
def mem():
    files = ProcMem()
    yield files
    files.close()


def test_reads_what_process_vm_readv_reads(child, mem):
    proc, addr = child
    assert mem.read_cstring(proc.pid, addr) == b"/cvmfs/sw.example.org/README.txt"
    assert mem.read_cstring(proc.pid, addr + 4094) == read_cstring(proc.pid, addr + 4094) == b"/x"
    assert mem.read_cstring(proc.pid, addr + 4) == b"fs/sw.example.org/README.txt"
    assert mem.read_cstring(proc.pid, 4096) is None  # not mapped: EFAULT for the job
    assert mem.read_cstring(proc.pid, 0) is None and mem.read_cstring(proc.pid, (1 << 64) - 1) is None


def test_writes_an_answer_into_the_tracee(child, mem):
    proc, addr = child
    assert mem.write(proc.pid, addr + 7, b"SW")
    assert read_cstring(proc.pid, addr) == b"/cvmfs/SW.example.org/README.txt"
    assert mem.write(proc.pid, addr + 4094, b"AB\0")  # across the page boundary
    assert read_cstring(proc.pid, addr + 4094) == b"AB"
    assert not mem.write(proc.pid, 4096, b"x") and not mem.write(proc.pid, 0, b"x")


def test_an_fd_outlived_by_its_address_space_is_opened_again(child, mem):
    proc, addr = child
    assert mem.read_cstring(proc.pid, addr) is not None  # the file is open now
    proc.stdin.write("exec\n")
    proc.stdin.flush()
    _wait_for_exec(proc.pid)
    arg_start = int(Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[45])
    assert mem.read_cstring(proc.pid, arg_start) == b"sleep"  # the new program's argv[0]


def test_a_thread_that_is_gone_raises_tracee_gone(child, mem):
    proc, addr = child
    assert mem.read_cstring(proc.pid, addr) is not None
    proc.kill()
    proc.wait()
    with pytest.raises(TraceeGone):
        mem.read_cstring(proc.pid, addr)


def test_a_file_refused_falls_back_to_process_vm_readv_and_writev(child, mem, monkeypatch):
    """A non-dumpable job under a tracer without CAP_SYS_PTRACE: /proc/TID/mem is refused."""
    proc, addr = child
    real_open = os.open

    def refuse_mem(path, *args, **kwargs):
        if str(path).endswith("/mem"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_mem)
    assert mem.read_cstring(proc.pid, addr) == b"/cvmfs/sw.example.org/README.txt"
    assert (
        mem.write(proc.pid, addr + 1, b"C")
        and read_cstring(proc.pid, addr) == b"/Cvmfs/sw.example.org/README.txt"
    )
    assert mem.read_cstring(proc.pid, 4096) is None and not mem.write(proc.pid, 4096, b"x")


def test_the_number_of_open_files_is_bounded(child):
    proc, addr = child
    mine = ctypes.create_string_buffer(b"/etc/hostname")
    before = len(os.listdir("/proc/self/fd"))
    mem = ProcMem(limit=2)
    try:
        for _ in range(3):
            assert mem.read_cstring(proc.pid, addr) and mem.read_cstring(os.getpid(), ctypes.addressof(mine))
            assert len(os.listdir("/proc/self/fd")) <= before + 2
            mem.forget(proc.pid)
    finally:
        mem.close()
    assert len(os.listdir("/proc/self/fd")) == before


def _wait_for_exec(pid: int) -> None:
    import time

    deadline = time.monotonic() + 10
    while not os.readlink(f"/proc/{pid}/exe").endswith("sleep"):
        assert time.monotonic() < deadline, "the child did not exec"
        time.sleep(0.01)
