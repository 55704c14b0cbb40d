"""Ways out of ``cvmfs-client run``'s file-system policy (``--sandbox``, ``--deny``, mount lists,
``--allow-write``), each tried by a real program: what is refused, and the limits that remain.

Every claim of the "Sandbox (job interposer)" section of docs/security.md names a test here. A
test of a limit (a race, jumping into the stub) asserts that the way out still works, so that a
change of behaviour is noticed and the document corrected. The C program is ``escape_c.py``.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from interposer import arch_x86_64 as arch
from interposer import seccomp
from interposer.mountlist import MountTable
from interposer.policy import Policy, deny_line
from interposer.syscalls import BY_NAME
from interposer.translate import Return, Translator
from interposer.vfs import Namespace
from tests.interposer.conftest import JOB_TIMEOUT, StoppedThread, cvmfs_run
from tests.interposer.escape_c import build

SECRET = "SECRET"
ENOSYS = seccomp.RET_ERRNO | errno.ENOSYS
EPERM = seccomp.RET_ERRNO | errno.EPERM
# The tracer without capabilities: as an unprivileged user it cannot read a job that is not
# "dumpable" (the tests run as root, whose CAP_SYS_PTRACE would hide that).
NO_CAPS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]


@dataclass
class Layout:
    """``home/x/.ssh/id_rsa`` and ``real/denied01/f`` hold the secret; the rest holds "fine"."""

    home: Path
    secret: Path
    real: Path
    denied: Path  # real/denied01
    decoy: Path  # decoy/denied01/f is "fine"
    deny: list[str]  # the options that deny home and real/denied01


@pytest.fixture(scope="module")
def escape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("escape"))


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    home = tmp_path / "home"
    (home / "x" / ".ssh").mkdir(parents=True)
    (home / "x" / ".ssh" / "id_rsa").write_text(f"{SECRET}\n")
    real = tmp_path / "real"
    for name, text in (("allowed1", "fine"), ("denied01", SECRET)):
        (real / name).mkdir(parents=True)
        (real / name / "f").write_text(f"{text}\n")
    (tmp_path / "decoy" / "denied01").mkdir(parents=True)
    (tmp_path / "decoy" / "denied01" / "f").write_text("fine\n")
    (real / "l").symlink_to("/denied01")  # absolute: inside real/ only for RESOLVE_IN_ROOT
    deny = ["--deny", str(home), "--deny", str(real / "denied01")]
    return Layout(home, home / "x" / ".ssh" / "id_rsa", real, real / "denied01", tmp_path / "decoy", deny)


def attempt(
    job_env: dict[str, str], escape: Path, *args: object, options: list[str], prefix: list[str] | None = None
) -> dict[str, str]:
    """Run one mode of the escape program under ``cvmfs-client run``: its ``NAME: RESULT`` lines."""
    command = [str(escape), *map(str, args)]
    if prefix is None:
        r = cvmfs_run(command, job_env, options=options)
    else:
        argv = [*prefix, sys.executable, "-m", "cvmfs_client", "run", *options, "--", *command]
        r = subprocess.run(argv, env=job_env, capture_output=True, timeout=JOB_TIMEOUT)
    out = r.stdout.decode()
    assert r.returncode == 0, f"exit {r.returncode}\n{out}{r.stderr.decode()}"
    return dict(line.split(": ", 1) for line in out.splitlines())


def native(escape: Path, *args: object) -> dict[str, str]:
    out = subprocess.run([str(escape), *map(str, args)], capture_output=True, check=True).stdout.decode()
    return dict(line.split(": ", 1) for line in out.splitlines())


def race_counts(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in (part.split("=") for part in line.split())}


# --- the filter on its own ------------------------------------------------------------------------


def run_bpf(program: bytes, nr: int, args: tuple[int, ...] = (), audit_arch: int = arch.AUDIT_ARCH) -> int:
    """What the filter answers for one call: a classic-BPF interpreter for the opcodes it uses."""
    data = struct.pack("<IIQ6Q", nr & 0xFFFFFFFF, audit_arch, 0x401000, *(list(args) + [0] * 6)[:6])
    pc = 0
    acc = 0
    while True:
        op, jt, jf, k = struct.unpack_from("<HBBI", program, 8 * pc)
        pc += 1
        if op == seccomp.LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
        elif op == seccomp.RET_K:
            return k
        elif op == seccomp.JA:
            pc += k
        else:
            taken = {seccomp.JEQ_K: acc == k, seccomp.JGE_K: acc >= k, seccomp.JSET_K: bool(acc & k)}[op]
            pc += jt if taken else jf


def test_filter_refuses_i386_and_x32_calls_of_every_number():
    for program in (seccomp.build_filter(None), seccomp.build_filter(None, tracer_pid=4242)):
        assert run_bpf(program, arch.NR["read"]) == seccomp.RET_ALLOW  # the interpreter agrees
        assert run_bpf(program, arch.NR["openat"]) == seccomp.RET_TRACE
        for nr in range(512):
            assert run_bpf(program, nr, audit_arch=0x40000003) == ENOSYS  # AUDIT_ARCH_I386
            assert run_bpf(program, nr | arch.X32_SYSCALL_BIT) == ENOSYS


def test_filter_under_a_policy_refuses_the_calls_that_leave_it():
    tracer = 4242
    confined = seccomp.build_filter(None, tracer_pid=tracer)
    free = seccomp.build_filter(None)
    nr = arch.NR
    thread = 0x3D0F00  # what glibc's pthread_create passes (CLONE_VM | CLONE_THREAD | ...)
    cases = [
        *((nr[name], (), EPERM) for name in seccomp.CONFINED_EPERM),
        (nr["clone3"], (), ENOSYS),
        (nr["clone"], (0x10000000 | 17,), EPERM),  # CLONE_NEWUSER | SIGCHLD
        (nr["clone"], (0x00800000 | 17,), EPERM),  # CLONE_UNTRACED
        (nr["clone"], (17,), seccomp.RET_ALLOW),  # fork
        (nr["clone"], (thread,), seccomp.RET_ALLOW),
        (nr["unshare"], (0x80,), EPERM),  # CLONE_NEWTIME
        (nr["unshare"], (0x400,), seccomp.RET_ALLOW),  # CLONE_FILES
        (nr["seccomp"], (1, 8), EPERM),  # SECCOMP_FILTER_FLAG_NEW_LISTENER
        (nr["seccomp"], (1, 0), seccomp.RET_ALLOW),
        (nr["prctl"], (4, 0), EPERM),  # PR_SET_DUMPABLE
        (nr["prctl"], (38, 1), seccomp.RET_ALLOW),  # PR_SET_NO_NEW_PRIVS
        (nr["process_vm_writev"], (tracer,), EPERM),
        (nr["process_vm_readv"], (tracer,), EPERM),
        (nr["pidfd_open"], (tracer,), EPERM),
        (nr["process_vm_readv"], (tracer + 1,), seccomp.RET_ALLOW),
    ]
    for number, args, expected in cases:
        assert run_bpf(confined, number, args) == expected, (number, args)
        if number != nr["openat"]:
            assert run_bpf(free, number, args) == seccomp.RET_ALLOW, (number, args)


def test_unreadable_path_is_refused_under_a_policy_not_passed_on(tmp_path):
    """The tracer could not read the path (another thread unmapped it): the kernel, reading it a
    moment later, might find it mapped again."""

    thread = StoppedThread(None, {0x2000: b"x" * 8192})  # 0x2000: readable, but no NUL in 4 kB

    def refuse(*_: object) -> None:
        raise AssertionError("no repository is opened")

    ns = Namespace(tmp_path / "shadow", refuse)
    spec = BY_NAME["openat"]
    policy = Policy(MountTable([deny_line(str(tmp_path / "secret"))]))
    confined = Translator(ns, None, policy=policy)
    free = Translator(ns, None)
    for addr, err in ((0x1000, errno.EFAULT), (0x2000, errno.ENAMETOOLONG)):
        args = (-100 & (2**64 - 1), addr, 0, 0, 0, 0)
        assert confined.decide(thread, arch.NR["openat"], spec, args) == Return(-err)
        assert free.decide(thread, arch.NR["openat"], spec, args) is None  # the kernel reports it


# --- real programs ----------------------------------------------------------------------------------


def test_i386_calls_and_io_uring_are_refused(job_env, escape, layout):
    assert native(escape, "abi", layout.secret)["int80-open"] == f"read {SECRET}"  # the kernel has them
    assert native(escape, "abi", layout.secret)["io_uring_setup"] == "ok"
    for options in ([], ["--sandbox", *layout.deny]):
        got = attempt(job_env, escape, "abi", layout.secret, options=options)
        assert got == {"int80-open": "ENOSYS", "x32-open": "ENOSYS", "io_uring_setup": "ENOSYS"}


def test_seccomp_filters_of_the_job_cannot_lift_the_trace(job_env, escape, layout):
    assert native(escape, "filters", layout.secret)["user-notif-open"] == f"read {SECRET}"
    got = attempt(job_env, escape, "filters", layout.secret, options=["--sandbox", *layout.deny])
    assert got == {"allow-all-filter": "ok", "allow-all-open": "EACCES", "user-notif-filter": "EPERM"}


def test_ptrace_and_the_tracers_memory_are_out_of_reach(job_env, escape, layout):
    got = attempt(job_env, escape, "ptrace", options=layout.deny)
    assert got == {
        "traceme": "EPERM",
        "attach-child": "EPERM",
        "vm-read-tracer": "EPERM",
        "vm-write-tracer": "EPERM",
        "pidfd-open-tracer": "EPERM",
        "seize-tracer": "EPERM",
    }
    script = """
        cat /proc/$PPID/status 2>&1 | head -1
        python3 -c 'import sys; open(f"/proc/{sys.argv[1]}/mem", "r+b")' $PPID 2>&1 | tail -1
        head -1 /proc/self/status
    """
    r = cvmfs_run(["sh", "-c", script], job_env, options=layout.deny)
    lines = r.stdout.decode().splitlines()
    assert "Permission denied" in lines[0] and "PermissionError" in lines[1], lines
    assert lines[2] == "Name:\thead"


def test_children_are_traced_however_they_are_made(job_env, escape, layout):
    got = attempt(job_env, escape, "children", layout.secret, options=["--sandbox", *layout.deny])
    assert got == {
        "fork-child-open": "EACCES",
        "vfork-child-open": "EACCES",
        "clone3": "ENOSYS",  # glibc falls back to clone, whose flags the filter sees
        "clone-untraced": "EPERM",
    }
    code = "import subprocess, threading; subprocess.run(['true'], check=True); threading.Thread().start()"
    r = cvmfs_run(["python3", "-c", code], job_env, options=["--sandbox", *layout.deny])
    assert r.returncode == 0, r.stderr.decode()


def test_namespaces_mounts_and_chroot_are_refused(job_env, escape, layout):
    # a user namespace needs no privilege: with it, chroot or a bind mount would hide the path
    # the tracer checks from the one the kernel opens
    options = ["--sandbox", *layout.deny]
    got = attempt(job_env, escape, "namespaces", layout.home, "/x/.ssh/id_rsa", options=options)
    assert got == {
        "unshare-user-mount": "EPERM",
        "setns": "EPERM",
        "clone-newuser": "EPERM",
        "mount-bind": "EPERM",
        "chroot": "EPERM",
    }
    r = cvmfs_run(["unshare", "-Ur", "cat", "/x/.ssh/id_rsa"], job_env, options=options)
    assert r.returncode != 0 and b"Operation not permitted" in r.stderr


def test_files_without_a_path_are_refused(job_env, escape, layout):
    allowed = layout.real / "allowed1" / "f"
    assert native(escape, "handles", allowed) == {
        "name-to-handle": "ok",
        "open-by-handle": "read fine",
        "open-tree": "ok",
    }
    got = attempt(job_env, escape, "handles", allowed, options=layout.deny)
    assert got == {"name-to-handle": "ok", "open-by-handle": "EPERM", "open-tree": "EPERM"}
    got = attempt(job_env, escape, "handles", layout.secret, options=layout.deny)
    assert got == {"name-to-handle": "EACCES", "open-by-handle": "EBADF", "open-tree": "EPERM"}


def test_openat2_in_root_is_refused(job_env, escape, layout):
    # real/l -> /denied01: the tracer reads "/denied01" (nothing denied there); the kernel, with
    # RESOLVE_IN_ROOT, opens real/denied01/f
    assert native(escape, "openat2", layout.real, "l/f")["openat2-in-root"] == f"read {SECRET}"
    got = attempt(job_env, escape, "openat2", layout.real, "allowed1/f", options=layout.deny)
    assert got["openat2-beneath"] == "read fine"
    got = attempt(job_env, escape, "openat2", layout.real, "l/f", options=layout.deny)
    assert got == {"openat2-beneath": "EXDEV", "openat2-in-root": "EPERM"}


def test_the_tracer_cannot_be_blinded(job_env, escape, layout, tmp_path):
    """An unprivileged tracer cannot read a job that is not dumpable: both ways there are refused."""
    got = attempt(job_env, escape, "dumpable", layout.secret, options=layout.deny, prefix=NO_CAPS)
    assert got == {"set-not-dumpable": "EPERM", "open": "EACCES"}
    xonly = tmp_path / "xonly"
    xonly.write_bytes(escape.read_bytes())
    xonly.chmod(0o111)  # execute-only: the kernel marks the process not dumpable
    argv = [*NO_CAPS, sys.executable, "-m", "cvmfs_client", "run", *layout.deny, "--"]
    r = subprocess.run([*argv, str(xonly), "open", layout.secret], env=job_env, capture_output=True)
    assert r.returncode == 126 and b"not readable, cannot be confined" in r.stderr, r.stderr
    r = subprocess.run(
        [*NO_CAPS, str(xonly), "open", str(layout.real / "allowed1" / "f")], capture_output=True
    )
    assert r.stdout == b"open: read fine\n"  # runs without the interposer


# Shell helper: `try NAME CMD...` prints ok-NAME, denied-NAME (EACCES/EPERM seen), or other-NAME
# with the command's output (which then fails the test).
TRY = """
try() {
    name=$1; shift
    if out=$("$@" 2>&1); then echo ok-$name
    elif echo "$out" | grep -q -e 'Permission denied' -e PermissionError -e 'not permitted'; then
        echo denied-$name
    else echo other-$name; echo "$out"; fi
}
"""


def tries(job_env: dict[str, str], script: str, options: list[str], cwd: Path | None = None) -> list[str]:
    """Run ``script`` (using ``try``); its output words."""
    r = cvmfs_run(["bash", "-c", TRY + script], job_env, options=options, cwd=cwd)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    return r.stdout.decode().split()


def test_reopening_an_fd_for_more_than_it_allows_is_checked(job_env, escape, tmp_path):
    ok = tmp_path / "ok"
    ok.mkdir()
    ro = tmp_path / "ro"
    ro.write_text("orig\n")
    script = f"""
        exec 3<{ro} 4>{ok}/w
        try reopen-ro sh -c 'echo HACKED > /proc/self/fd/3'
        try link-ro ln -L /proc/self/fd/3 {ok}/link
        try read-ro head -1 /proc/self/fd/3
        try stdout sh -c 'echo out > /dev/stdout'
        try reopen-rw sh -c 'echo via-fd4 > /proc/self/fd/4'
    """
    got = tries(job_env, script, ["--allow-write", str(ok)])
    assert got == ["denied-reopen-ro", "denied-link-ro", "ok-read-ro", "ok-stdout", "ok-reopen-rw"]
    assert ro.read_text() == "orig\n" and not (ok / "link").exists()
    assert (ok / "w").read_text() == "via-fd4\n"
    got = attempt(job_env, escape, "names", ro, ok / "link2", ok / "w", options=["--allow-write", str(ok)])
    assert got == {"link-fd": "EACCES", "rename-exchange": "EACCES"}
    # a mount-list ACL without w or x (/data) and one with x (/data2): the same through an fd
    mounts = tmp_path / "mounts"
    (tmp_path / "x").mkdir()
    mounts.write_text(f"/data {tmp_path} r\n/data2 {tmp_path / 'x'} rx\n")
    for prog in (tmp_path / "prog", tmp_path / "x" / "prog"):
        prog.write_bytes(Path("/bin/true").read_bytes())
        prog.chmod(0o755)
    fexec = "import os, sys; os.execve(os.open(sys.argv[1], os.O_PATH), ['prog'], {})"
    script = f"""
        exec 3</data/ro
        try reopen-ro sh -c 'echo HACKED > /proc/self/fd/3'
        try exec /data/prog
        try fexec python3 -c "{fexec}" /data/prog
        try fexec-x python3 -c "{fexec}" /data2/prog
        try execveat {escape} execveat /data prog
        try execveat-x {escape} execveat /data2 prog
    """
    got = tries(job_env, script, ["-m", str(mounts)])
    assert got == [
        "denied-reopen-ro",
        "denied-exec",
        "denied-fexec",
        "ok-fexec-x",
        "denied-execveat",
        "ok-execveat-x",
    ]
    assert ro.read_text() == "orig\n"


def test_renaming_a_directory_above_a_denied_path_is_refused(job_env, tmp_path):
    secret = tmp_path / "p" / "sub" / "secret"
    secret.mkdir(parents=True)
    (secret / "k").write_text(f"{SECRET}\n")
    (tmp_path / "p" / "other").mkdir()
    script = """
        try parent mv p/sub p/sub2
        try grandparent mv p p2
        try itself mv p/sub/secret p/x
        try other mv p/other p/other2
        try read cat p/sub/secret/k
    """
    got = tries(job_env, script, ["--deny", str(secret)], cwd=tmp_path)
    assert got == ["denied-parent", "denied-grandparent", "denied-itself", "ok-other", "denied-read"]
    assert (secret / "k").exists()


FD_CHANGES = """
import errno, os, sys
def code(f, *a):
    try:
        f(*a)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
ro, ok = sys.argv[1], sys.argv[2]
fd = os.open(ro, os.O_RDONLY)  # the kernel lets the owner change metadata through it
w = os.open(ok + "/w", os.O_RDWR | os.O_CREAT, 0o644)
for f in (fd, w):
    print(code(os.fchmod, f, 0o600), code(os.fchown, f, os.getuid(), os.getgid()),
          code(os.setxattr, f, "user.x", b"1"), code(os.utime, f, None))
print(code(os.fchmod, 1, 0o644))  # stdout, a pipe
"""


def test_metadata_changes_through_a_read_only_fd_are_writes(job_env, tmp_path):
    """``--allow-write``: fchmod, fchown, fsetxattr and futimens through an fd opened only for
    reading changed a file outside the allowed paths (chmod of its name was refused)."""
    ok = tmp_path / "ok"
    ok.mkdir()
    ro = tmp_path / "ro"
    ro.write_text("orig\n")
    ro.chmod(0o644)
    before = ro.stat()
    command = ["python3", "-c", FD_CHANGES, str(ro), str(ok)]
    r = cvmfs_run(command, job_env, options=["--allow-write", str(ok)])
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["EACCES"] * 4 + ["ok"] * 4 + ["ok"]
    after = ro.stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert os.listxattr(ro) == []
    assert (ok / "w").stat().st_mode & 0o777 == 0o600


def test_links_and_renames_under_allow_write(job_env, tmp_path):
    ok = tmp_path / "ok"
    ok.mkdir()
    outside = tmp_path / "outside"
    outside.write_text("outside\n")
    (ok / "n").write_text("n\n")
    script = f"""
        try hardlink-in ln {outside} {ok}/hard
        try symlink-in ln -s {outside} {ok}/soft
        try write-through-symlink sh -c 'echo HACKED > {ok}/soft'
        try move-in mv {outside} {ok}/moved
        try move-out mv {ok}/n {tmp_path}/n
        try symlink-out ln -s {ok}/n {tmp_path}/s
    """
    got = tries(job_env, script, ["--allow-write", str(ok)])
    assert got == [
        "denied-hardlink-in",
        "ok-symlink-in",
        "denied-write-through-symlink",
        "denied-move-in",
        "denied-move-out",
        "denied-symlink-out",
    ]
    assert outside.read_text() == "outside\n" and sorted(os.listdir(tmp_path)) == ["ok", "outside"]


def test_proc_and_symlink_routes_to_a_denied_path(job_env, layout, tmp_path):
    rel = str(layout.secret.relative_to(layout.home.parent))  # home/x/.ssh/id_rsa
    attempts = {
        "root-link": f"cat /proc/self/root{layout.secret}",
        "thread-root-link": f"cat /proc/thread-self/root{layout.secret}",
        "cwd-link": f"cd {layout.home.parent} && cat /proc/self/cwd/{rel}",
        "other-process-fd": f"sleep 9 3<{layout.home.parent} & cat /proc/$!/fd/3/{rel}; kill $!",
        "pid1-root": f"cat /proc/1/root{layout.secret}",
        "tmp-link-to-pid1-root": f"ln -s /proc/1/root{layout.home} l && cat l/x/.ssh/id_rsa",
        "o-path-then-reopen": (
            f'python3 -c \'import os; fd = os.open("{layout.home}", os.O_PATH); '
            f'print(open(f"/proc/self/fd/{{fd}}/x/.ssh/id_rsa").read())\''
        ),
        "memfd-exec": (
            'python3 -c \'import os; fd = os.memfd_create("c"); '
            'os.write(fd, open("/bin/cat", "rb").read()); '
            f'os.execve(fd, ["cat", "{layout.secret}"], {{}})\''
        ),
    }
    script = "".join(
        f"( {cmd} ) >out-{name} 2>&1; "
        f"if grep -q {SECRET} out-{name}; then echo LEAK-{name}; "
        f"elif grep -q -e 'Permission denied' -e PermissionError out-{name}; then echo denied-{name}; "
        f"else echo OTHER-{name}; cat out-{name}; fi\n"
        for name, cmd in attempts.items()
    )
    script += 'python3 -c \'f = open("/proc/self/mem", "r+b"); print("own-mem-ok")\'\n'
    r = cvmfs_run(["bash", "-c", script], job_env, options=["--sandbox", *layout.deny], cwd=tmp_path)
    out = r.stdout.decode()
    assert out.split() == [f"denied-{name}" for name in attempts] + ["own-mem-ok"], out + r.stderr.decode()


# --- limits: tests that pin what is NOT protected -------------------------------------------------------


def _same_length_paths(prefix: str) -> tuple[str, str]:
    """``prefix//allowed1/f`` and ``prefix//denied01/f``, the differing word 8-byte aligned."""
    prefix = prefix.rstrip("/") + "/"
    prefix += "/" * (-len(prefix) % 8)
    return prefix + "allowed1/f", prefix + "denied01/f"


def test_racing_thread_gets_a_host_path_past_the_check(job_env, escape, layout):
    """Limit: an allowed host path is handed to the kernel as the job wrote it; the kernel reads
    the job's buffer again after the tracer checked it."""
    allowed, denied = _same_length_paths(str(layout.real))
    got = attempt(job_env, escape, "race-buffer", allowed, denied, SECRET, 10, options=layout.deny)
    counts = race_counts(got["race-buffer"])
    assert counts["leaks"] > 0, counts


def test_racing_thread_cannot_change_a_rewritten_path(job_env, escape, layout):
    """A path the tracer rewrites (mount-list targets, private /tmp, /cvmfs) is read by the
    kernel from the tracer's copy in the stub's frame: flipping the job's buffer changes nothing."""
    allowed, denied = _same_length_paths("/data")
    options = ["-M", f"/data={layout.real}", "--deny", "/data/denied01"]
    got = attempt(job_env, escape, "race-buffer", allowed, denied, SECRET, 1.5, options=options)
    counts = race_counts(got["race-buffer"])
    assert counts["leaks"] == 0 and counts["fine"] > 50 and counts["refused"] > 50, counts


def test_racing_thread_swapping_a_directory_fd_gets_past_the_check(job_env, escape, layout):
    """Limit: ``openat(fd, ...)`` is checked against what ``fd`` named at the stop; another thread
    can ``dup2`` another directory onto that number before the kernel looks."""
    args = (layout.decoy, layout.real, "denied01/f", SECRET, 10)
    got = attempt(job_env, escape, "race-dirfd", *args, options=layout.deny)
    counts = race_counts(got["race-dirfd"])
    assert counts["leaks"] > 0, counts


def test_code_jumping_into_the_stub_runs_calls_unchecked(job_env, escape, layout):
    """Limit: the filter lets the stub's calls through by address; any code can jump there."""
    got = attempt(job_env, escape, "stub", layout.secret, options=layout.deny)
    assert got == {"stub-mapped": "yes", "plain-open": "EACCES", "stub-jump-open": f"read {SECRET}"}
