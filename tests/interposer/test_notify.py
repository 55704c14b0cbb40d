"""Seccomp user notifications (interposer/notify.py): the metadata calls a supervisor thread
serves must answer exactly as the ptrace path does, on /cvmfs and host paths alike."""

from __future__ import annotations

import ast
import ctypes
import errno
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from interposer import arch_x86_64 as arch
from interposer import notify, ptrace_api, seccomp
from interposer.translate import Rewrite
from tests.interposer.conftest import assert_a_bug_kills_the_job, cvmfs_run
from tests.interposer.trees import MOUNT

ROOT = str(Path(__file__).resolve().parents[2])  # the checkout: imports for the wrapped runs

SURVEY = textwrap.dedent(
    f"""
    import ctypes, errno, os, stat
    M = "{MOUNT}"
    libc = ctypes.CDLL(None, use_errno=True)
    def meta(f, *a, **k):
        try:
            st = f(*a, **k)
        except OSError as e:
            return errno.errorcode[e.errno]
        return (stat.filemode(st.st_mode), st.st_size, st.st_mtime_ns, st.st_nlink)
    def call(f, *a, **k):
        try:
            return f(*a, **k)
        except OSError as e:
            return errno.errorcode[e.errno]
    def access(path, mode):
        return "ok" if libc.access(path.encode(), mode) == 0 else errno.errorcode[ctypes.get_errno()]
    out = {{}}
    names = ["", "/etc", "/etc/example.conf", "/cases/rel-link", "/cases/broken-link",
             "/cases/runme-0755.sh", "/cases/missing", "/etc/example.conf/x", "/bin/tput"]
    for n in names:
        out["stat" + n] = meta(os.stat, M + n)
        out["lstat" + n] = meta(os.lstat, M + n)
        out["readlink" + n] = call(os.readlink, M + n)
        out["access-r" + n] = access(M + n, os.R_OK)
        out["access-x" + n] = access(M + n, os.X_OK)
        out["access-w" + n] = access(M + n, os.W_OK)
    fd = os.open(M + "/etc/example.conf", os.O_RDONLY)
    out["fstat-content"] = meta(os.fstat, fd)
    d = os.open(M + "/etc", os.O_RDONLY | os.O_DIRECTORY)
    out["fstatat-dirfd"] = meta(os.stat, "example.conf", dir_fd=d)
    out["fstat-dirfd"] = meta(os.fstat, d)
    os.chdir(M + "/cases")
    out["getcwd"] = os.getcwd()
    out["getcwd-small"] = libc.getcwd(ctypes.create_string_buffer(8), 8) or 0
    out["relative"] = meta(os.lstat, "rel-link")
    out["relative-follow"] = meta(os.stat, "rel-link")
    out["relative-readlink"] = call(os.readlink, "rel-link")
    out["dotdot-inside"] = meta(os.stat, "../etc/example.conf")
    out["dotdot-out"] = meta(os.stat, "../../..") [0]
    out["cvmfs-root"] = meta(os.stat, "/cvmfs")[0]
    out["host"] = meta(os.stat, "/etc/hostname") == meta(os.stat, "/etc/../etc/hostname")
    out["host-missing"] = meta(os.stat, "/nonexistent/x")
    # opens: where the fds land (seccomp.FdRanges), their fd flags, what they read
    import fcntl, resource
    top = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1024)
    content_base, dirs_base = top - 256, top - 128
    c1 = os.open(M + "/etc/example.conf", os.O_RDONLY | os.O_CLOEXEC)
    c2 = libc.open(b"rel-link", os.O_RDONLY)  # os.open would add O_CLOEXEC
    out["content-read"] = (os.read(c1, 9), os.read(c2, 9))
    out["content-range"] = (content_base <= c1 < dirs_base, content_base <= c2 < dirs_base)
    out["content-cloexec"] = [bool(fcntl.fcntl(f, fcntl.F_GETFD) & fcntl.FD_CLOEXEC) for f in (c1, c2)]
    out["content-fstat"] = meta(os.fstat, c2) == meta(os.stat, "rel-link")
    d1 = os.open(M + "/etc", os.O_RDONLY | os.O_DIRECTORY)
    out["dir-range"] = dirs_base <= d1 < top
    out["dir-blocking"] = not fcntl.fcntl(d1, fcntl.F_GETFL) & os.O_NONBLOCK
    out["dir-listing"] = sorted(os.listdir(d1)) == sorted(os.listdir(M + "/etc"))
    # copies of reserved fds stay in their range (fts duplicates every directory fd it opens)
    d2 = fcntl.fcntl(d1, fcntl.F_DUPFD_CLOEXEC, 3)
    c3 = libc.dup(c1)  # the dup syscall (os.dup is fcntl(F_DUPFD_CLOEXEC))
    out["dups"] = [dirs_base <= d2 < top, content_base <= c3 < dirs_base, d2 != d1, c3 != c1]
    out["dup-cloexec"] = [bool(fcntl.fcntl(f, fcntl.F_GETFD) & fcntl.FD_CLOEXEC) for f in (d2, c3)]
    out["dup-same-file"] = [os.path.samestat(os.fstat(d2), os.fstat(d1)), os.read(c3, 3)]
    # ...except a directory copy with a minimum below 3 (find's per-entry copies, os.dup): the
    # kernel makes it, low, and calls relative to it are translated like any other fd's
    d4 = os.dup(d1)
    out["low-dir-copy"] = [
        d4 < content_base,
        meta(os.stat, "example.conf", dir_fd=d4) == meta(os.stat, "example.conf", dir_fd=d1),
        sorted(os.listdir(d4)) == sorted(os.listdir(M + "/etc")),
        os.readlink(f"/proc/self/fd/{{d4}}") == M + "/etc",
        os.read(os.open("example.conf", os.O_RDONLY, dir_fd=d4), 9),
    ]
    h1 = os.open("/usr", os.O_RDONLY | os.O_DIRECTORY)
    h2 = os.open("lib", os.O_RDONLY | os.O_DIRECTORY, dir_fd=h1)
    os.chdir("/usr")
    h3 = os.open("bin", os.O_RDONLY | os.O_DIRECTORY)
    out["host-dirs"] = [dirs_base <= f < top for f in (h1, h2, h3)] + [
        os.path.samestat(os.fstat(h2), os.stat("/usr/lib")),
        os.path.samestat(os.fstat(h3), os.stat("/usr/bin")),
    ]
    out["open-errors"] = [call(os.open, M + n, os.O_RDONLY) for n in ("/etc/missing", "/etc/example.conf/x")]
    out["open-dir-as-file"] = call(os.open, M + "/etc/example.conf", os.O_RDONLY | os.O_DIRECTORY)
    # a job's own /proc/self and /dev/fd (they name the opener: never the supervisor's)
    selves = []
    for name in (f"/dev/fd/{{h1}}", f"/proc/self/fd/{{h1}}", f"/proc/thread-self/fd/{{h1}}"):
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY)
        selves.append(os.path.samestat(os.fstat(fd), os.stat("/usr")))
    proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    fd = os.open(f"self/fd/{{h1}}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=proc)
    selves.append(os.path.samestat(os.fstat(fd), os.stat("/usr")))
    out["selves"] = selves
    host = os.open("/etc/hostname", os.O_RDONLY)
    out["open-host"] = os.read(host, 100) == open("/etc/hostname", "rb").read(100)
    # xattrs: /cvmfs entries have none here; a host file's, directly and through /cvmfs/..
    import tempfile
    tagged = tempfile.mkdtemp() + "/tagged"
    open(tagged, "w").close()
    os.setxattr(tagged, "user.survey", b"value-1234")
    via = M + "/../.." + tagged
    small = ctypes.create_string_buffer(3)
    out["xattrs"] = [
        call(os.getxattr, M + "/etc/example.conf", "user.survey"),
        call(os.getxattr, M + "/etc/example.conf", "security.selinux", follow_symlinks=False),
        call(os.listxattr, M + "/etc/example.conf"),
        call(os.listxattr, M + "/cases/rel-link", follow_symlinks=False),
        call(os.getxattr, tagged, "user.survey"),
        call(os.getxattr, via, "user.survey"),
        call(os.getxattr, via, "user.survey", follow_symlinks=False),
        call(os.listxattr, via),
        call(os.getxattr, via, "user.other"),
        libc.getxattr(via.encode(), b"user.survey", None, 0),  # the size it needs
        (libc.getxattr(via.encode(), b"user.survey", small, 3), errno.errorcode[ctypes.get_errno()]),
        (libc.getxattr(via.encode(), b"user." + b"x" * 300, small, 3), errno.errorcode[ctypes.get_errno()]),
        small.raw,  # left alone
    ]
    for k, v in out.items():
        print(k, repr(v))
    """
)


def _survey(job_env, tmp_path, *options: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    script = tmp_path / "survey.py"
    script.write_text(SURVEY)
    r = cvmfs_run(["python3", str(script)], job_env, options=["--stats", *options])
    assert r.returncode == 0, r.stderr.decode()
    got = {}
    for line in r.stdout.decode().splitlines():
        key, _, value = line.partition(" ")
        got[key] = ast.literal_eval(value)
    stats = r.stderr.decode().rpartition("stops ")[2]
    return {"answers": got, "stats": ast.literal_eval(stats)}


def test_notified_answers_equal_the_ptrace_ones(job_env, tmp_path):
    # A shadow directory's link count grows as its subdirectories are made (the kernel answers
    # for directories): the first run makes them all, the two compared runs see the same tree.
    _survey(job_env, tmp_path)
    stopped = _survey(job_env, tmp_path, "--ptrace-only")
    notified = _survey(job_env, tmp_path)
    assert notified["answers"] == stopped["answers"]
    answers = notified["answers"]
    assert answers["stat/etc/example.conf"][0] == "-rw-r--r--"
    assert answers["stat/cases/missing"] == "ENOENT" and answers["stat/etc/example.conf/x"] == "ENOTDIR"
    assert answers["readlink/cases/rel-link"] == answers["relative-readlink"] != "EINVAL"
    assert answers["access-w/etc"] == "EROFS" and answers["host"] is True
    assert answers["dotdot-out"] == answers["cvmfs-root"] == "drwxr-xr-x"
    assert answers["getcwd"] == MOUNT + "/cases" and answers["getcwd-small"] == 0  # ERANGE: NULL
    assert answers["content-read"] == (b"# example", b"# example")
    assert answers["content-range"] == (True, True) and answers["content-cloexec"] == [True, False]
    assert answers["content-fstat"] and answers["dir-range"] and answers["dir-blocking"]
    assert answers["dir-listing"] and answers["host-dirs"] == [True] * 5 and answers["open-host"]
    assert answers["dups"] == [True] * 4 and answers["dup-cloexec"] == [True, False]
    assert answers["selves"] == [True] * 4
    assert answers["dup-same-file"] == [True, b" co"]  # c1 and its copy share the offset (9)
    assert answers["low-dir-copy"] == [True, True, True, True, b"# example"]
    assert answers["open-errors"] == ["ENOENT", "ENOTDIR"] and answers["open-dir-as-file"] == "ENOTDIR"
    value = b"value-1234"
    assert answers["xattrs"] == ["ENODATA", "ENODATA", [], [], value, value, value, ["user.survey"],
                                 "ENODATA", len(value), (-1, "ERANGE"), (-1, "ERANGE"), bytes(3)]  # fmt: skip
    # the supervisor served them: no ptrace stop for the stat family, and none the other way
    assert notified["stats"]["actions"]["notified"] > 50
    assert "notified" not in stopped["stats"]["actions"]


def test_a_coreutils_walk_is_the_same_both_ways(job_env):
    walk = "find . -path ./python -prune -o -print0 | sort -z"
    script = f"cd {MOUNT} && {walk} | xargs -0 stat -c '%n %A %s %Y %h %N'"
    outputs = []
    for options in ([], ["--ptrace-only"]):
        r = cvmfs_run(["sh", "-c", script], job_env, options=options)
        assert r.returncode == 0, r.stderr.decode()
        outputs.append(r.stdout)
    assert outputs[0] == outputs[1] and outputs[0].count(b"\n") > 30


def test_ls_l_is_served_without_a_ptrace_stop(job_env):
    """``ls -l`` reads two xattrs of every entry (SELinux label, ACL): with a ptrace stop each,
    a listing of 5000 entries took 1.8 s instead of 0.5."""
    r = cvmfs_run(["ls", "-l", f"{MOUNT}/etc", f"{MOUNT}/cases"], job_env, options=["--stats"])
    assert r.returncode == 0, r.stderr.decode()
    assert b"example.conf" in r.stdout
    stats = ast.literal_eval(r.stderr.decode().rpartition("stops ")[2])
    assert stats["stops"]["lgetxattr"] + stats["stops"]["getxattr"] > 20
    assert "stub" not in stats["actions"], stats
    # No security module labels files here: after the first placeholder said so, no entry's
    # label costs a syscall in the supervisor ("local") any more (one per repository and name).
    r = cvmfs_run(["ls", "-l", f"{MOUNT}/python/lib/python3.11"], job_env, options=["--stats"])
    assert r.returncode == 0, r.stderr.decode()
    stats = ast.literal_eval(r.stderr.decode().rpartition("stops ")[2])
    assert stats["stops"]["lgetxattr"] > 100 and stats["actions"].get("local", 0) < 50, stats


CHANGES = textwrap.dedent(
    """
    import ctypes, os, stat, sys
    libc = ctypes.CDLL(None, use_errno=True)
    os.umask(0o027)
    base = sys.argv[1]
    d = base + "/made"
    os.mkdir(d, 0o777)
    fd = os.open(d + "/f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.write(fd, b"data")
    os.close(fd)
    os.truncate(d + "/f", 2)
    os.setxattr(d + "/f", "user.kept", b"v1")
    os.setxattr(d + "/f", "user.gone", b"v2", follow_symlinks=False)
    os.removexattr(d + "/f", "user.gone")
    os.utime(d + "/f", ns=(1_000_000_123, 2_000_000_456))
    os.close(os.open(d + "/g", os.O_WRONLY | os.O_CREAT, 0o600))
    os.symlink("f", d + "/l")
    os.link(d + "/g", d + "/hard")
    os.rename(d + "/hard", d + "/moved")
    libc.utimes(d.encode() + b"/moved", (ctypes.c_long * 4)(7, 8, 9, 10))
    os.chmod(d + "/moved", 0o604)
    os.mknod(d + "/fifo", 0o666 | stat.S_IFIFO)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.mkdir("sub", 0o777, dir_fd=dfd)
    os.chdir(d)
    os.mkdir("sub2", 0o700)
    os.rename("sub2", d + "/sub3")  # one path the job's own (relative), one moved
    os.unlink(d + "/l")
    os.symlink("/cvmfs/x/y", d + "/abs")
    out = []
    for name in sorted(os.listdir(d)):
        st = os.lstat(d + "/" + name)
        link = os.readlink(d + "/" + name) if stat.S_ISLNK(st.st_mode) else None
        times = st.st_mtime_ns if name in ("f", "g", "moved") else None
        xattrs = os.listxattr(d + "/" + name) if name == "f" else None
        size = None if stat.S_ISDIR(st.st_mode) else st.st_size
        out.append((name, stat.filemode(st.st_mode), size, st.st_nlink, st.st_uid, link, times, xattrs))
    for name in ("f", "g", "moved", "fifo", "abs"):
        os.unlink(d + "/" + name)
    for name in ("sub", "sub3"):
        os.rmdir(d + "/" + name)
    os.chdir("/")
    os.rmdir(d)
    out.append(os.path.exists(d))
    print(out)
    """
)


def test_changes_to_moved_host_paths_are_made_as_the_job(job_env):
    """A change the translator moves (``/cvmfs/..`` leading out, --private-tmp's /tmp) is made
    by the supervisor: with the job's umask, identity, cwd and strings, as the kernel would
    have made it for the job under ptrace."""
    shared = Path(tempfile.mkdtemp(prefix="notify-changes-", dir="/tmp"))
    try:
        shared.chmod(0o1777)
        results = {}
        for where, options, prefix in (
            ("dotdot", [], []),
            ("private", ["--private-tmp"], []),
            ("nobody", [], ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--"]),
        ):
            base = "/tmp" if where == "private" else f"/cvmfs/..{shared}"
            for mode in ([], ["--ptrace-only"]):
                command = [*prefix, "python3", "-c", CHANGES, base]
                r = cvmfs_run(command, job_env, options=[*options, *mode, "--stats"])
                assert r.returncode == 0, (where, mode, r.stderr.decode())
                results[where, bool(mode)] = ast.literal_eval(r.stdout.decode())
                stats = ast.literal_eval(r.stderr.decode().rpartition("stops ")[2])
                if not mode:  # only the chdir into the moved directory stopped
                    assert stats["actions"].get("stub", 0) <= 1, (where, stats)
        for where in ("dotdot", "private", "nobody"):
            assert results[where, False] == results[where, True], where
        uid = 65534
        want = [
            ("abs", "lrwxrwxrwx", 10, 1, 0, "/cvmfs/x/y", None, None),
            ("f", "-rw-r-----", 2, 1, 0, None, 2_000_000_456, ["user.kept"]),
            ("fifo", "prw-r-----", 0, 1, 0, None, None, None),
            ("g", "-rw----r--", 0, 2, 0, None, 9_000_010_000, None),
            ("moved", "-rw----r--", 0, 2, 0, None, 9_000_010_000, None),
            ("sub", "drwxr-x---", None, 2, 0, None, None, None),
            ("sub3", "drwx------", None, 2, 0, None, None, None),
            False,
        ]
        assert results["dotdot", False] == results["private", False] == want
        assert {entry[4] for entry in results["nobody", False][:-1]} == {uid}
    finally:
        shutil.rmtree(shared)


REFUSING = textwrap.dedent(
    """
    import ctypes, os, struct, sys
    # A seccomp filter refusing the syscalls numbered in argv[1] with EPERM, as a container's
    # profile does (Docker's default: unshare without CAP_SYS_ADMIN; kcmp, pidfd_getfd and
    # process_vm_readv/writev without CAP_SYS_PTRACE); then the command.
    numbers = [int(n) for n in sys.argv[1].split(",")]
    code = [(0x20, 0, 0, 0)]  # load the syscall number
    for i, nr in enumerate(numbers):  # equal: jump to the refusal after the remaining tests
        code.append((0x15, len(numbers) - i, 0, nr))
    code += [(0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050000 | 1)]  # allow; ERRNO | EPERM
    raw = b"".join(struct.pack("HBBI", *insn) for insn in code)
    buf = ctypes.create_string_buffer(raw, len(raw))
    prog = struct.pack("HxxxxxxQ", len(code), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    fprog = ctypes.create_string_buffer(prog, len(prog))
    where = ctypes.c_void_p(ctypes.addressof(fprog))
    assert libc.prctl(22, 2, where, 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, a filter
    os.execv(sys.argv[2], sys.argv[2:])
    """
)
UNSHARE, KCMP, PIDFD_GETFD = arch.NR["unshare"], arch.NR["kcmp"], arch.NR["pidfd_getfd"]
VM_READV, VM_WRITEV = arch.NR["process_vm_readv"], arch.NR["process_vm_writev"]


def _refusing(*numbers: int) -> list[str]:
    return [sys.executable, "-c", REFUSING, ",".join(map(str, numbers)), sys.executable]


def test_without_a_umask_of_its_own_creating_calls_stop_and_stay_right(job_env):
    """Where a thread cannot unshare its file-system context (a container's seccomp profile),
    calls that create with a mode are not notified: the job's umask still applies."""
    wrap = _refusing(UNSHARE)
    probe = "from interposer import notify; print(notify.can_own_umask())"
    r = subprocess.run([*wrap, "-c", probe], capture_output=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.stdout == b"False\n", r.stderr
    assert notify.can_own_umask()  # here, without the wrapper
    run = [*wrap, "-m", "cvmfs_client", "run", "--private-tmp", "--stats", "--"]
    r = subprocess.run([*run, "python3", "-c", CHANGES, "/tmp"], capture_output=True, env=job_env, cwd=ROOT)
    assert r.returncode == 0, r.stderr.decode()
    got = ast.literal_eval(r.stdout.decode())
    modes = {entry[0]: entry[1] for entry in got[:-1]}
    assert modes == {"abs": "lrwxrwxrwx", "f": "-rw-r-----", "fifo": "prw-r-----", "g": "-rw----r--",
                     "moved": "-rw----r--", "sub": "drwxr-x---", "sub3": "drwx------"}  # fmt: skip
    stats = ast.literal_eval(r.stderr.decode().rpartition("stops ")[2])
    assert stats["actions"].get("stub", 0) >= 5, stats  # mkdir x3, mknod, the creating opens


def test_a_container_profile_refusing_the_supervisors_calls_changes_no_answer(job_env, tmp_path):
    """Under Docker's default seccomp profile the tracer may not unshare, kcmp, pidfd_getfd
    or process_vm_readv/writev: the calls that need them stop instead, answers are the same."""
    wrap = _refusing(UNSHARE, KCMP, PIDFD_GETFD, VM_READV, VM_WRITEV)
    probe = "from interposer import notify; print(notify.can_take_fds(), notify.can_own_umask())"
    r = subprocess.run([*wrap, "-c", probe], capture_output=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.stdout == b"False False\n", r.stderr
    _survey(job_env, tmp_path)  # the shadow tree complete (see the first test)
    plain = _survey(job_env, tmp_path)
    script = tmp_path / "survey.py"
    for options in ([], ["--ptrace-only"]):
        run = [*wrap, "-m", "cvmfs_client", "run", *options, "--", "python3", str(script)]
        r = subprocess.run(run, capture_output=True, env=job_env, cwd=ROOT)
        assert r.returncode == 0, (options, r.stderr.decode())
        answers = {}
        for line in r.stdout.decode().splitlines():
            key, _, value = line.partition(" ")
            answers[key] = ast.literal_eval(value)
        assert answers == plain["answers"], options
    walk = f"cd {MOUNT} && find . -path ./python -prune -o -print | sort | xargs stat -c '%n %A %s' | md5sum"
    outputs = [cvmfs_run(["sh", "-c", walk], job_env).stdout]
    r = subprocess.run([*wrap, "-m", "cvmfs_client", "run", "--", "sh", "-c", walk], capture_output=True,
                       env=job_env, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == outputs[0]


SIGNALLED = textwrap.dedent(
    """
    import os, signal, sys, time
    signal.signal(signal.SIGUSR1, lambda *a: None)
    signal.siginterrupt(signal.SIGUSR1, False)  # SA_RESTART: interrupted calls start again
    job = os.getpid()
    pest = os.fork()
    if pest == 0:  # a signal every 0.2 ms (each one is a ptrace stop too: no more)
        try:
            while True:
                os.kill(job, signal.SIGUSR1)
                time.sleep(0.0002)
        except ProcessLookupError:
            os._exit(0)
    failed = []
    for i in range(200):
        d = f"/tmp/d{i}"
        for call in (lambda: os.mkdir(d), lambda: os.close(os.open(d + "/x", os.O_CREAT | os.O_EXCL)),
                     lambda: os.rename(d + "/x", d + "/y"), lambda: os.unlink(d + "/y"), lambda: os.rmdir(d)):
            try:
                call()
            except OSError as exc:
                failed.append(f"{i}: {exc}")
    os.kill(pest, signal.SIGKILL)
    print(len(failed), failed[:3])
    """
)


def test_a_change_made_for_the_job_is_not_lost_to_a_signal(job_env):
    """The supervisor makes a change on a moved path (--private-tmp's /tmp) for the job; a
    signal arriving meanwhile must not cut the job's wait short, or its restarted call would
    find the change made (mkdir: EEXIST, rmdir: ENOENT). Without killable waits this failed
    within a few dozen rounds."""
    r = cvmfs_run(["python3", "-c", SIGNALLED], job_env, options=["--private-tmp"])
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().startswith("0 []"), r.stdout


def test_under_a_policy_notified_answers_equal_the_ptrace_ones(job_env, tmp_path):
    """A policy's decisions are the same whichever mechanism carries them out."""
    deny = ["--deny", str(tmp_path / "secret")]
    notified = _survey(job_env, tmp_path, *deny)
    stopped = _survey(job_env, tmp_path, *deny, "--ptrace-only")
    assert notified["stats"]["actions"]["notified"] > 50
    assert "notified" not in stopped["stats"]["actions"]
    for key in ("stat", "lstat"):  # the repository root's link count: see the test above
        notified["answers"].pop(key), stopped["answers"].pop(key)
    assert notified["answers"] == stopped["answers"]
    assert notified["answers"]["host-dirs"] == [False, False, False, True, True]  # kept low


def test_a_job_with_a_low_fd_limit_still_opens_content(job_env):
    """Below the reserved range (``ulimit -n 64`` after the start) fds land where they can."""
    script = f"ulimit -n 64; cat {MOUNT}/etc/example.conf; ls {MOUNT}/etc | head -1"
    for options in ([], ["--ptrace-only"]):
        r = cvmfs_run(["bash", "-c", script], job_env, options=options)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.startswith(b"# example configuration\n"), r.stdout


def test_a_job_that_drops_root_gets_its_own_permissions(job_env):
    """Run as root, a job that drops to nobody cannot read a root-only file through a path the
    supervisor opens for it (``/cvmfs/..`` leads out: a rewritten host path)."""
    assert os.geteuid() == 0, "the suite runs as root (.ci/run)"
    base = Path(tempfile.mkdtemp(prefix="notify-ids-", dir="/tmp"))  # searchable by nobody
    try:
        base.chmod(0o755)
        private = base / "private"
        private.mkdir(mode=0o700)
        (private / "secret").write_text("root only\n")
        readable = base / "readable.txt"
        readable.write_text("for all\n")
        readable.chmod(0o644)
        drop = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--"]
        for options in ([], ["--ptrace-only"]):
            r = cvmfs_run([*drop, "cat", f"/cvmfs/..{private}/secret"], job_env, options=options)
            assert r.returncode != 0 and b"Permission denied" in r.stderr, (options, r.stdout, r.stderr)
            r = cvmfs_run([*drop, "cat", f"/cvmfs/..{readable}"], job_env, options=options)
            assert r.returncode == 0 and r.stdout == b"for all\n", (options, r.stderr)
            xattr = f"import os; os.listxattr('/cvmfs/..{private}/secret')"
            r = cvmfs_run([*drop, "python3", "-c", xattr], job_env, options=options)
            assert r.returncode != 0 and b"PermissionError" in r.stderr, (options, r.stdout, r.stderr)
        # root that gave up the capabilities to read other users' files
        other = base / "other.txt"
        other.write_text("uid 1234 only\n")
        os.chown(other, 1234, 1234)
        other.chmod(0o600)
        weak = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
        for options in ([], ["--ptrace-only"]):
            r = cvmfs_run([*weak, "cat", f"/cvmfs/..{other}"], job_env, options=options)
            assert r.returncode != 0 and b"Permission denied" in r.stderr, (options, r.stdout, r.stderr)
            r = cvmfs_run([*weak, "cat", f"/cvmfs/..{readable}"], job_env, options=options)
            assert r.returncode == 0 and r.stdout == b"for all\n", (options, r.stderr)
    finally:
        shutil.rmtree(base)


def test_host_paths_are_the_jobs_own_after_chroot(job_env, tmp_path):
    """A rewritten host path (``/cvmfs/..`` leads out) is resolved from the job's root, as the
    kernel resolves a stopped call's: after ``chroot`` the job's /marker, not the host's."""
    jail = tmp_path / "jail"
    jail.mkdir()
    shutil.copy("/bin/busybox", jail / "busybox")  # static: needs nothing else in the jail
    (jail / "marker").write_text("inside the jail\n")
    for options in ([], ["--ptrace-only"]):
        r = cvmfs_run(
            ["/usr/sbin/chroot", str(jail), "/busybox", "cat", "/cvmfs/../marker"], job_env, options=options
        )
        assert r.returncode == 0 and r.stdout == b"inside the jail\n", (options, r.stdout, r.stderr)
        # changes too, one path moved (mkdir) or two (rename: made by the supervisor)
        script = "/busybox mkdir /cvmfs/../d && /busybox mv /cvmfs/../marker /cvmfs/../d/moved"
        jailed = ["/usr/sbin/chroot", str(jail), "/busybox", "sh", "-c", script]
        r = cvmfs_run(jailed, job_env, options=options)
        assert r.returncode == 0, (options, r.stderr)
        assert (jail / "d" / "moved").read_text() == "inside the jail\n"
        (jail / "d" / "moved").rename(jail / "marker")
        (jail / "d").rmdir()


BROKEN_SUPERVISOR = """
import interposer.notify as notify
def broken(self, notif_id, tid, nr, args):
    raise RuntimeError("simulated supervisor bug")
notify.Supervisor._answer = broken
"""


def test_a_failing_supervisor_kills_the_job_and_says_why(job_env, tmp_path):
    bug = b"simulated supervisor bug"
    assert_a_bug_kills_the_job(BROKEN_SUPERVISOR, "stat /; exec sleep 30", bug, job_env, tmp_path)


# -- the kernel interface, without a tracer ---------------------------------------------------


def test_kernel_version_gate():
    assert notify.kernel_supports("6.18.44-fc")
    assert notify.kernel_supports("5.5.0")
    assert not notify.kernel_supports("5.4.210-generic")
    assert not notify.kernel_supports("garbage")


def _filtered_child(body, **options: bool):  # type: ignore[no-untyped-def]
    """A child with the notify filter (``options``: build_filter's notify_*) and its listener;
    the parent gets the listener fd."""
    channel = notify.make_channel()
    pid = os.fork()
    if pid == 0:
        try:
            channel.child_side()
            ranges = seccomp.FdRanges.for_limit(1024)
            fd = seccomp.install(seccomp.build_filter(ranges, notify=True, **options), listener=True)
            channel.send_listener(fd)
            body()
        finally:
            os._exit(0)
    channel.parent_side()
    listener = channel.receive_listener(pid)
    channel.close()
    assert listener is not None
    return pid, listener


def _recv(listener: int) -> tuple[int, int, int, list[int]]:
    req = bytearray(notify._NOTIF.size)
    fcntl.ioctl(listener, notify.IOCTL_RECV, req, True)
    notif_id, tid, _, nr, _, _, *args = notify._NOTIF.unpack(req)
    return notif_id, tid, nr, args


def _send(listener: int, notif_id: int, value: int, error: int, flags: int) -> None:
    resp = bytearray(notify._RESP.pack(notif_id, value, error, flags))
    fcntl.ioctl(listener, notify.IOCTL_SEND, resp, True)


def test_the_filter_notifies_metadata_calls_and_continue_runs_them(tmp_path):
    out = tmp_path / "out"

    def body() -> None:
        results = []
        for f in (lambda: os.stat("/etc/hostname"), lambda: os.readlink("/proc/self/exe")):
            try:
                f()
                results.append("ok")
            except OSError as e:
                results.append(errno.errorcode[e.errno])
        os.getpid()  # untrapped
        out.write_text(" ".join(results))

    pid, listener = _filtered_child(body)
    try:
        # open (the write to `out`) is not notified: it would fail with ENOSYS without a tracer
        seen = []
        for answer in ("continue", "error"):
            notif_id, tid, nr, args = _recv(listener)
            seen.append(nr)
            assert tid == pid
            if answer == "continue":
                _send(listener, notif_id, 0, 0, notify.FLAG_CONTINUE)
            else:
                _send(listener, notif_id, 0, -errno.EACCES, 0)
        assert seen == [arch.NR["newfstatat"], arch.NR["readlink"]]
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(listener)
    assert os.WIFEXITED(status)
    # the write to `out` was an openat: RET_TRACE without a tracer is ENOSYS, so no file
    assert not out.exists()


def test_a_rewritten_call_is_made_here_and_copied_into_the_job():
    """_run_here with this process as the 'job': the answer lands in the given buffer."""
    sup = notify.Supervisor.__new__(notify.Supervisor)
    sup._path = ctypes.create_string_buffer(4097)
    sup._out = ctypes.create_string_buffer(4096 + 256)
    sup._root, sup._gid, sup._groups = os.geteuid() == 0, os.getegid(), sorted(os.getgroups())
    sup._mem = ptrace_api.ProcMem()
    buf = ctypes.create_string_buffer(arch.STAT_SIZE)
    at_fdcwd = -100
    rw = Rewrite(arch.NR["newfstatat"], args={0: at_fdcwd, 3: 0}, path=b"/etc/hostname", path_arg=1)
    args = [5, 0, ctypes.addressof(buf), 0x1000, 0, 0]  # as from fstat-like newfstatat(5, "", buf)
    assert sup._run_here(os.getpid(), rw, args) == (0, 0, 0)
    assert buf.raw == arch.pack_stat(os.stat("/etc/hostname"))
    missing = Rewrite(arch.NR["newfstatat"], args={0: at_fdcwd, 3: 0}, path=b"/nonexistent", path_arg=1)
    assert sup._run_here(os.getpid(), missing, args) == (0, -errno.ENOENT, 0)
    link = ctypes.create_string_buffer(64)
    rl = Rewrite(arch.NR["readlink"], path=b"/proc/self/cwd", path_arg=0)
    value, error, _ = sup._run_here(os.getpid(), rl, [0, ctypes.addressof(link), 64, 0, 0, 0])
    assert error == 0 and link.raw[:value] == os.getcwd().encode()[:64]
    relative = Rewrite(arch.NR["newfstatat"], args={0: at_fdcwd}, path=b"etc/hostname", path_arg=1)
    assert sup._run_here(os.getpid(), relative, args) == (0, -errno.EIO, 0)  # our cwd is not the job's


def test_abandon_closes_the_listener_and_kills_the_job():
    job = subprocess.Popen(["sleep", "30"])

    class FakeTracer:
        tasks = {job.pid: None}

    sup = notify.Supervisor.__new__(notify.Supervisor)
    sup.tracer = FakeTracer()  # type: ignore[assignment]
    sup.lock = threading.Lock()
    r, w = os.pipe()
    sup.listener = r
    sup._abandon()
    os.close(w)
    assert sup.listener is None
    with pytest.raises(OSError):
        os.fstat(r)
    assert job.wait(10) == -signal.SIGKILL


def test_paths_are_read_from_the_new_program_after_a_vfork_child_execs(job_env):
    """The supervisor reads paths through /proc/TID/mem files it keeps open; a vfork child's
    file names its parent's address space until the child execs, and must be dropped then
    (posix_spawn's child opens its stdin, a notified call, in the parent's memory)."""
    conf = f"{MOUNT}/etc/example.conf"
    spawn = textwrap.dedent(
        f"""
        import os
        for _ in range(4):
            pid = os.posix_spawn("/usr/bin/stat", ["stat", "-c", "%s %n", {conf!r}, "/etc/hostname"],
                                 os.environ, file_actions=[(os.POSIX_SPAWN_OPEN, 0, {conf!r}, 0, 0)])
            assert os.waitpid(pid, 0)[1] == 0
        """
    )
    r = cvmfs_run(["python3", "-c", spawn], job_env)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    host = f"{os.stat('/etc/hostname').st_size} /etc/hostname"
    assert lines == [lines[0], host] * 4 and lines[0].endswith(f" {conf}"), lines


def test_first_free_looks_after_the_last_one_then_wraps_then_spills():
    held = {700, 701, 703, 705}
    assert notify._first_free(held.__contains__, 700, 700) == 702  # from the minimum up (no range)
    assert notify._first_free(held.__contains__, 704, 700, 706) == 704  # after the last one handed
    assert notify._first_free(held.__contains__, 705, 700, 706) == 702  # 705 taken, range end: wraps
    held |= {702, 704}
    assert notify._first_free(held.__contains__, 705, 700, 706) == 706  # the range is full: above it
    assert notify._first_free(lambda n: None, 700, 700) is None  # the job is gone


@pytest.mark.parametrize("kcmp", [True, False], ids=["kcmp", "proc"])
def test_a_jobs_fd_numbers_are_probed_in_use_or_free(kcmp):
    sup = notify.Supervisor.__new__(notify.Supervisor)
    sup._kcmp, sup._pid, sup.listener = kcmp, os.getpid(), os.open("/dev/null", os.O_RDONLY)
    child = subprocess.Popen(["sleep", "30"], stdin=subprocess.DEVNULL)
    try:
        assert [sup._fd_used(child.pid, n) for n in (0, 1, 2, 9, 900)] == [True, True, True, False, False]
        assert sup._kcmp is kcmp  # kcmp answered (the machine's kernel has it)
        child.kill()
        child.wait()
        assert not sup._fd_used(child.pid, 0)  # gone: nothing to hand an fd to
    finally:
        child.kill()
        os.close(sup.listener)


def test_a_job_holding_more_files_than_the_range_reads_each_right(job_env):
    """Content fds fill the reserved range, wrap around it as they are closed, and spill
    above it when it is full: every fd still reads its own file."""
    code = textwrap.dedent(
        f"""
        import os
        paths = ["{MOUNT}/etc/example.conf", "{MOUNT}/README.txt"] * 100
        fds = [os.open(p, os.O_RDONLY) for p in paths]
        ok = all(os.read(fd, 1 << 16) == open(p, "rb").read() for fd, p in zip(fds, paths))
        for fd in fds[::3]:
            os.close(fd)
        again = [os.open(p, os.O_RDONLY) for p in paths[:50]]
        ok = ok and all(os.read(fd, 1 << 16) == open(p, "rb").read() for fd, p in zip(again, paths))
        print(ok, len(set(fds)), len(set(again) | set(fds[1::3]) | set(fds[2::3])))
        """
    )
    r = cvmfs_run(["python3", "-c", code], job_env)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.split() == [b"True", b"200", str(50 + 200 - 67).encode()]


@pytest.mark.parametrize("take_fds", [True, False])
def test_the_listener_reaches_the_supervisor_either_way(take_fds):
    """Pipes and pidfd_getfd where this process may take fds (no socket module at start-up),
    a Unix socket where not: the supervisor's copy of the listener serves the child's calls; a
    child that installed none says so."""
    for installs in (True, False):
        channel = notify.make_channel(take_fds)
        assert isinstance(channel, notify.PipeChannel if take_fds else notify.SocketChannel)
        pid = os.fork()
        if pid == 0:
            try:
                channel.child_side()
                fd = None
                if installs:
                    ranges = seccomp.FdRanges.for_limit(1024)
                    fd = seccomp.install(seccomp.build_filter(ranges, notify=True), listener=True)
                channel.send_listener(fd)
                os.stat("/etc/hostname")
            finally:
                os._exit(0)
        channel.parent_side()
        listener = channel.receive_listener(pid)
        channel.close()
        if installs:
            assert listener is not None
            notif_id, tid, nr, _ = _recv(listener)
            assert (tid, nr) == (pid, arch.NR["newfstatat"])
            _send(listener, notif_id, 0, 0, notify.FLAG_CONTINUE)
            os.close(listener)
        else:
            assert listener is None
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
