"""interposer/cpu_pin.py: a job thread waiting for an fd is moved to the supervisor's CPU and
gets its own CPU mask back; a job that chose its CPUs is left alone."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import pytest

from interposer.cpu_pin import SameCpu
from tests.interposer.conftest import cvmfs_run
from tests.interposer.trees import MOUNT

CPUS = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")


@pytest.fixture
def sleeper():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child
    child.kill()
    child.wait()


@pytest.mark.parametrize("cpu", CPUS[:2])
def test_pin_moves_the_thread_here_and_unpin_puts_its_mask_back(sleeper, cpu):
    os.sched_setaffinity(0, {cpu})  # "here": this thread's CPU, kept for the test
    try:
        pin = SameCpu()
        assert pin.pin(sleeper.pid)
        assert os.sched_getaffinity(sleeper.pid) == {cpu}
        assert pin.unpin() is None
        assert os.sched_getaffinity(sleeper.pid) == set(CPUS)
    finally:
        os.sched_setaffinity(0, CPUS)


@needs_two
def test_a_thread_that_may_not_run_here_is_left_alone(sleeper):
    os.sched_setaffinity(0, {CPUS[0]})
    try:
        os.sched_setaffinity(sleeper.pid, {CPUS[1]})
        pin = SameCpu()
        assert not pin.pin(sleeper.pid)
        pin.unpin()  # nothing pinned: nothing changes
        assert os.sched_getaffinity(sleeper.pid) == {CPUS[1]}
    finally:
        os.sched_setaffinity(0, CPUS)


def test_a_thread_that_is_gone_is_not_an_error():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pin = SameCpu()
    assert pin.pin(child.pid)
    child.kill()
    child.wait()
    assert pin.unpin() is None  # nothing to give back to a thread that is gone
    assert not pin.pin(child.pid)


# Opens of /cvmfs content and of directories, and copies of their fds, are handed over by the
# supervisor; after each the job's mask, seen by the job and by its children, is its own.
PROBE = textwrap.dedent(
    f"""
    import os
    seen = set()
    for i in range(300):
        fd = os.open("{MOUNT}/etc/example.conf", os.O_RDONLY)
        seen.add(frozenset(os.sched_getaffinity(0)))
        d = os.open("{MOUNT}/etc", os.O_RDONLY | os.O_DIRECTORY)
        copy = os.dup(d)
        seen.add(frozenset(os.sched_getaffinity(0)))
        for f in (fd, d, copy):
            os.close(f)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if os.open("{MOUNT}/etc/example.conf", os.O_RDONLY) and os.sched_getaffinity(0) else 1)
    child = os.waitpid(pid, 0)[1]
    print(sorted(sorted(s) for s in seen), child, os.read(os.open("{MOUNT}/etc/example.conf", 0), 9))
    """
)


def test_a_job_never_sees_its_cpu_mask_narrowed(job_env):
    r = cvmfs_run([sys.executable, "-c", PROBE], job_env)
    assert r.returncode == 0, r.stderr.decode()
    masks, child, head = _parse(r.stdout.decode())
    assert masks == [CPUS] and child == 0 and head == b"# example"


@needs_two
def test_a_job_pinned_elsewhere_keeps_its_cpu_and_gets_its_files(job_env):
    """Whatever CPU the supervisor runs on, a job pinned to one CPU stays there."""
    for cpu in CPUS[:2]:
        r = cvmfs_run(["taskset", "-c", str(cpu), sys.executable, "-c", PROBE], job_env)
        assert r.returncode == 0, r.stderr.decode()
        masks, child, head = _parse(r.stdout.decode())
        assert masks == [[cpu]] and child == 0 and head == b"# example"


def _parse(out: str) -> tuple[list[list[int]], int, bytes]:
    masks_text, _, rest = out.strip().rpartition("] ")
    child, head = rest.split(" ", 1)
    return ast.literal_eval(masks_text + "]"), int(child), ast.literal_eval(head)


THREADS = textwrap.dedent(
    f"""
    import os, threading
    full = os.sched_getaffinity(0)
    seen = []
    def work():
        for _ in range(200):
            fd = os.open("{MOUNT}/etc/example.conf", os.O_RDONLY)
            copy = os.dup(fd)
            seen.append(os.sched_getaffinity(0) == full and os.read(copy, 9) == b"# example")
            os.close(fd)
            os.close(copy)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(len(seen), all(seen))
    """
)


def test_threads_handed_fds_at_once_each_keep_their_mask(job_env):
    """One supervisor pins one waiting thread at a time; the others run on meanwhile."""
    r = cvmfs_run([sys.executable, "-c", THREADS], job_env)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.split() == [b"800", b"True"]
