"""What a job sees besides file content: errors as on a read-only mount, exit status and signals
passed through exactly, stdin/stdout, options, and a tracer that never leaves a job behind."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.interposer.conftest import TOOLS, assert_a_bug_kills_the_job, cvmfs_run, probe_entries
from tests.interposer.trees import FQRN, MOUNT

ERRNOS = textwrap.dedent(
    f"""
    import ctypes, errno, os
    M = "{MOUNT}"
    libc = ctypes.CDLL(None, use_errno=True)
    def access_errno(path, mode):
        if libc.access(path.encode(), mode) == 0:
            return "ok"
        return errno.errorcode[ctypes.get_errno()]
    def code(f, *a, **k):
        try:
            f(*a, **k)
            return "ok"
        except OSError as e:
            return errno.errorcode[e.errno]
    checks = [
        ("open-write", code(os.open, M + "/etc/example.conf", os.O_WRONLY)),
        ("open-trunc", code(os.open, M + "/etc/example.conf", os.O_RDONLY | os.O_TRUNC)),
        ("open-creat-new", code(os.open, M + "/etc/new.conf", os.O_WRONLY | os.O_CREAT)),
        ("open-creat-excl", code(os.open, M + "/etc/example.conf", os.O_WRONLY | os.O_CREAT | os.O_EXCL)),
        ("open-creat-rdonly-existing", code(os.open, M + "/etc/example.conf", os.O_RDONLY | os.O_CREAT)),
        ("open-missing", code(os.open, M + "/etc/missing", os.O_RDONLY)),
        ("open-missing-dir", code(os.open, M + "/nodir/x", os.O_WRONLY | os.O_CREAT)),
        ("open-dir-write", code(os.open, M + "/etc", os.O_RDWR)),
        ("open-file-as-dir", code(os.open, M + "/etc/example.conf", os.O_RDONLY | os.O_DIRECTORY)),
        ("open-nofollow-link", code(os.open, M + "/cases/rel-link", os.O_RDONLY | os.O_NOFOLLOW)),
        ("stat-through-file", code(os.stat, M + "/etc/example.conf/x")),
        ("stat-broken-link", code(os.stat, M + "/cases/broken-link")),
        ("lstat-broken-link", code(os.lstat, M + "/cases/broken-link")),
        ("mkdir-new", code(os.mkdir, M + "/newdir")),
        ("mkdir-existing", code(os.mkdir, M + "/etc")),
        ("rmdir", code(os.rmdir, M + "/cases/emptydir")),
        ("unlink", code(os.unlink, M + "/etc/example.conf")),
        ("unlink-missing", code(os.unlink, M + "/etc/missing")),
        ("rename-inside", code(os.rename, M + "/etc/example.conf", M + "/etc/x")),
        ("rename-out", code(os.rename, M + "/etc/example.conf", "/tmp/x-cvmfs-test")),
        ("symlink", code(os.symlink, "x", M + "/etc/link")),
        ("chmod", code(os.chmod, M + "/etc/example.conf", 0o600)),
        ("chmod-missing", code(os.chmod, M + "/etc/missing", 0o600)),
        ("utime", code(os.utime, M + "/etc/example.conf")),
        ("truncate", code(os.truncate, M + "/etc/example.conf", 0)),
        ("setxattr", code(os.setxattr, M + "/etc/example.conf", "user.x", b"1")),
        ("access-w", access_errno(M + "/etc", os.W_OK)),
        ("access-r", "ok" if os.access(M + "/etc/example.conf", os.R_OK) else "no"),
        ("access-x-script", "ok" if os.access(M + "/cases/runme-0755.sh", os.X_OK) else "no"),
        ("access-x-data", "ok" if os.access(M + "/cases/empty.txt", os.X_OK) else "no"),
        ("readlink-file", code(os.readlink, M + "/etc/example.conf")),
        ("listdir-file", code(os.listdir, M + "/etc/example.conf")),
        ("chdir-file", code(os.chdir, M + "/etc/example.conf")),
        ("unknown-repo", code(os.stat, "/cvmfs/nothing.example.org")),
        ("cvmfs-root-write", code(os.mkdir, "/cvmfs/x.example.org")),
    ]
    fd = os.open(M + "/etc/example.conf", os.O_RDONLY)
    checks.append(("fchmod-content-fd", code(os.fchmod, fd, 0o600)))
    d = os.open(M + "/etc", os.O_RDONLY | os.O_DIRECTORY)
    checks.append(("fchmod-dir-fd", code(os.fchmod, d, 0o700)))
    checks.append(("unlinkat-dirfd", code(os.unlink, "example.conf", dir_fd=d)))
    checks.append(("mkdirat-dirfd", code(os.mkdir, "sub", dir_fd=d)))
    # copies below the reserved fd ranges (os.dup: F_DUPFD min 0; dup2), which the kernel makes
    os.dup2(d, 7)
    os.dup2(fd, 8)
    for kind, copy in (("dir", os.dup(d)), ("dir-dup2", 7), ("content", os.dup(fd)), ("content-dup2", 8)):
        checks.append((f"fchmod-{{kind}}-copy", code(os.fchmod, copy, 0o700)))
        checks.append((f"fchown-{{kind}}-copy", code(os.fchown, copy, os.getuid(), 4321)))
        checks.append((f"fsetxattr-{{kind}}-copy", code(os.setxattr, copy, "user.x", b"1")))
        checks.append((f"fremovexattr-{{kind}}-copy", code(os.removexattr, copy, "user.x")))
        checks.append((f"futimens-{{kind}}-copy", code(os.utime, copy, ns=(1, 1))))
    low = os.dup(d)
    checks.append(("reopen-rw-proc-fd", code(os.open, f"/proc/self/fd/{{fd}}", os.O_RDWR)))
    checks.append(("chmod-proc-fd-dir-copy", code(os.chmod, f"/proc/self/fd/{{low}}", 0o700)))
    r = libc.fchownat(low, b"", os.getuid(), 4321, 0x1000)  # AT_EMPTY_PATH
    checks.append(("fchownat-empty-path-dir-copy", "ok" if r == 0 else errno.errorcode[ctypes.get_errno()]))
    st, sf = os.stat(M + "/etc"), os.stat(M + "/etc/example.conf")
    checks.append(("modes-after", "%o %o %d %d" % (st.st_mode, sf.st_mode, st.st_mtime_ns > 1, sf.st_gid)))
    for name, result in checks:
        print(name, result)
    """
)

EXPECTED = {
    "open-write": "EROFS",
    "open-trunc": "EROFS",
    "open-creat-new": "EROFS",
    "open-creat-excl": "EEXIST",
    "open-creat-rdonly-existing": "ok",
    "open-missing": "ENOENT",
    "open-missing-dir": "ENOENT",
    "open-dir-write": "EISDIR",
    "open-file-as-dir": "ENOTDIR",
    "open-nofollow-link": "ELOOP",
    "stat-through-file": "ENOTDIR",
    "stat-broken-link": "ENOENT",
    "lstat-broken-link": "ok",
    "mkdir-new": "EROFS",
    "mkdir-existing": "EEXIST",
    "rmdir": "EROFS",
    "unlink": "EROFS",
    "unlink-missing": "EROFS",
    "rename-inside": "EROFS",
    "rename-out": "EXDEV",
    "symlink": "EROFS",
    "chmod": "EROFS",
    "chmod-missing": "ENOENT",
    "utime": "EROFS",
    "truncate": "EROFS",
    "setxattr": "EROFS",
    "access-w": "EROFS",
    "access-r": "ok",
    "access-x-script": "ok",
    "access-x-data": "no",
    "readlink-file": "EINVAL",
    "listdir-file": "ENOTDIR",
    "chdir-file": "ENOTDIR",
    "unknown-repo": "ENOENT",
    "cvmfs-root-write": "EROFS",
    "fchmod-content-fd": "EROFS",
    "fchmod-dir-fd": "EROFS",
    "unlinkat-dirfd": "EROFS",
    "mkdirat-dirfd": "EROFS",
    **{
        f"{call}-{kind}-copy": "EROFS"
        for call in ("fchmod", "fchown", "fsetxattr", "fremovexattr", "futimens")
        for kind in ("dir", "dir-dup2", "content", "content-dup2")
    },
    "reopen-rw-proc-fd": "EROFS",
    "chmod-proc-fd-dir-copy": "EROFS",
    "fchownat-empty-path-dir-copy": "EROFS",
    "modes-after": f"40755 100644 1 {os.getgid()}",
}


def test_errors_are_those_of_a_read_only_mount(job_env, tmp_path):
    """Every change is refused, including those made through copies of /cvmfs fds below the
    reserved fd ranges: the shadow tree and the cache objects are every job's on the node (a
    copy's fchmod once changed a directory's mode for all later jobs)."""
    script = tmp_path / "errnos.py"
    script.write_text(ERRNOS)
    for options in ([], ["--ptrace-only"]):
        r = cvmfs_run(["python3", str(script)], job_env, options=options)
        assert r.returncode == 0, r.stderr.decode()
        got = dict(line.split(" ", 1) for line in r.stdout.decode().splitlines())
        assert got == EXPECTED, (options, {k: v for k, v in got.items() if EXPECTED.get(k) != v})


def test_shell_tools_report_read_only(job_env):
    script = f"touch {MOUNT}/x; rm {MOUNT}/README.txt; echo hi > {MOUNT}/etc/example.conf"
    r = cvmfs_run(["sh", "-c", script], job_env)
    assert r.returncode != 0
    assert r.stderr.decode().count("Read-only file system") == 3


def test_exit_status_passes_through(job_env):
    assert cvmfs_run(["sh", "-c", "exit 42"], job_env).returncode == 42
    assert cvmfs_run(["true"], job_env).returncode == 0
    missing = cvmfs_run(["/no/such/command"], job_env)
    assert missing.returncode == 127 and b"No such file or directory" in missing.stderr
    not_exec = cvmfs_run([f"{MOUNT}/etc/example.conf"], job_env)
    assert not_exec.returncode == 126


def test_a_run_inside_a_job_runs_its_command_under_the_outer_run(job_env):
    """A wrapper that calls cvmfs-client run again (a pilot and its payload's own wrapper):
    ptrace cannot nest, the outer run already shows /cvmfs, so the command just runs; options
    a nested run cannot apply are refused, not ignored."""
    inner = f"{shlex.quote(sys.executable)} -m cvmfs_client run"
    script = (
        f"{inner} -- sh -c 'cat {MOUNT}/etc/example.conf | wc -l; exit 7'; echo inner=$?; "
        f"{inner} --sandbox -- true; echo sandbox=$?; {inner} -- /no/such/command; echo missing=$?"
    )
    r = cvmfs_run(["sh", "-c", script], job_env)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["3", "inner=7", "sandbox=125", "missing=127"]
    err = r.stderr.decode()
    assert "a nested run cannot apply --sandbox" in err and "/no/such/command: No such file" in err


def test_a_traced_process_is_told_who_traces_it(job_env):
    """Where ptrace is refused because this process is traced already (strace -f, a debugger),
    the message names the tracer instead of blaming a security policy."""
    code = (
        "from interposer.job import outer_interposer, ptrace_denied_message\n"
        "print(outer_interposer()); print(ptrace_denied_message())"
    )
    r = cvmfs_run([sys.executable, "-c", code], job_env, cwd=Path(__file__).parents[2])
    pid, message = r.stdout.decode().splitlines()
    assert int(pid) > 0 and f"traced by process {pid} (" in message and "cvmfs_client run" in message
    from interposer.job import outer_interposer

    assert outer_interposer() is None  # this test process is nobody's job


def test_killing_signal_passes_through(job_env):
    for sig in (signal.SIGSEGV, signal.SIGTERM, signal.SIGKILL):
        r = cvmfs_run(["sh", "-c", f"kill -{sig.name[3:]} $$"], job_env)
        assert r.returncode == -sig, (sig, r.returncode, r.stderr.decode())
        assert b"internal error" not in r.stderr


def test_stdin_and_stdout_are_the_jobs(job_env):
    r = cvmfs_run(["sh", "-c", f"cat - {MOUNT}/etc/example.conf | wc -l"], job_env, input=b"a\nb\n")
    assert r.returncode == 0 and int(r.stdout) == 5


def test_sigterm_to_the_tracer_reaches_the_job(job_env, tmp_path):
    marker = tmp_path / "got-term"
    script = (
        f"trap 'echo > {marker}; exit 3' TERM; ls {MOUNT} >/dev/null; echo ready; while :; do sleep 0.1; done"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cvmfs_client", "run", "--", "sh", "-c", script],
        env=job_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 3
    assert marker.exists()


def test_killing_the_tracer_kills_the_job(job_env, tmp_path):
    pidfile = tmp_path / "pid"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cvmfs_client", "run", "--", "sh", "-c", f"echo $$ > {pidfile}; sleep 60"],
        env=job_env,
    )
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    job = int(pidfile.read_text())
    proc.kill()
    proc.wait(timeout=10)
    for _ in range(100):
        try:
            os.kill(job, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{job}/stat") as f:
            if f.read().split(") ")[1].startswith("Z"):
                break
        time.sleep(0.05)
    else:
        raise AssertionError("the job outlived its tracer")


def test_repo_option_restricts_what_can_be_mounted(job_env):
    r = cvmfs_run(["sh", "-c", f"ls /cvmfs; ls /cvmfs/{TOOLS}"], job_env, options=["--repo", FQRN])
    assert r.stdout.decode().split() == [FQRN]
    assert r.returncode != 0


def test_debug_logs_every_translated_call(job_env):
    r = cvmfs_run(["cat", f"{MOUNT}/etc/example.conf"], job_env, options=["--debug"])
    assert r.returncode == 0
    assert f"openat(b'{MOUNT}/etc/example.conf')".encode() in r.stderr


def test_revision_is_fixed_and_cache_dir_option_is_used(job_env, tmp_path):
    cache = tmp_path / "cache"
    env = dict(job_env)
    del env["CVMFS_CACHE_BASE"]
    r = cvmfs_run(["cat", f"{MOUNT}/README.txt"], env, options=["--cache-dir", str(cache)])
    assert r.returncode == 0, r.stderr.decode()
    assert (cache / "interposer" / "r" / FQRN).is_dir()


def test_concurrent_jobs_share_a_cold_cache_safely(job_env, sw_src, tmp_path):
    """Shadow trees and data links are built by whichever job comes first, atomically."""
    env = dict(job_env, CVMFS_CACHE_BASE=str(tmp_path / "cache"))
    script = f"cd {MOUNT} && find cases etc share lib -type f -print0 | sort -z | xargs -0 sha256sum"
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "cvmfs_client", "run", "--", "sh", "-c", script],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = [job.communicate(timeout=120) for job in jobs]
    want = subprocess.run(
        ["sh", "-c", script.replace(f"cd {MOUNT}", f"cd {sw_src}")], capture_output=True
    ).stdout
    for job, (out, err) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, err.decode()
        assert out == want


def test_a_cache_base_reached_through_a_symlink_serves_content(job_env, sw_src, tmp_path):
    """The kernel names a job's fds by their real path: with CVMFS_CACHE_BASE through a symlink,
    files opened relative to a /cvmfs directory fd (tar, find, Python's os.fwalk) read their
    bytes, not the zeros of the shadow tree's placeholders, and fstat shows the catalog's."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    env = dict(job_env, CVMFS_CACHE_BASE=str(tmp_path / "link"))
    code = textwrap.dedent(
        f"""
        import os
        d = os.open("{MOUNT}/etc", os.O_RDONLY | os.O_DIRECTORY)
        fd = os.open("example.conf", os.O_RDONLY, dir_fd=d)
        same = os.fstat(fd).st_mtime == os.stat("{MOUNT}/etc/example.conf").st_mtime
        print(os.read(fd, 100).decode(), same)
        """
    )
    want = (sw_src / "etc" / "example.conf").read_text()[:100]
    for options in ([], ["--ptrace-only"]):
        r = cvmfs_run([sys.executable, "-c", code], env, options=options)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.decode() == f"{want} True\n"
        r = cvmfs_run(["tar", "cf", "-", "-C", f"{MOUNT}/etc", "example.conf"], env, options=options)
        assert r.returncode == 0 and want.encode() in r.stdout, r.stderr.decode()


def test_a_cache_on_a_noexec_file_system_is_named_up_front(job_env, tmp_path):
    """Programs from /cvmfs run from the cache's file system: mounted noexec, the job's exec
    fails (EACCES) and the user is told why, before the job starts; reading still works."""
    assert os.geteuid() == 0, "the suite runs as root (.ci/run): mounting a tmpfs needs it"
    where = tmp_path / "noexec"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=64m", "tmpfs", str(where)], check=True)
    try:
        script = f"head -c 9 {MOUNT}/README.txt; echo; {MOUNT}/bin/tput -T xterm cols; echo rc=$?"
        r = cvmfs_run(["sh", "-c", script], dict(job_env, CVMFS_CACHE_BASE=str(where / "cache")))
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.decode().splitlines() == ["Example s", "rc=126"]
        stderr = r.stderr.decode()
        assert f"{where}/cache/interposer is on a file system mounted noexec" in stderr
        assert stderr.index("noexec") < stderr.index("Permission denied")  # said before the job ran
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)
    r = cvmfs_run(["true"], job_env)
    assert r.returncode == 0 and b"noexec" not in r.stderr


def test_an_unwritable_cache_is_named_before_the_job_starts(job_env, tmp_path):
    """A read-only cache base (a read-only home on compute nodes) is an error that names the
    directory (exit 125), not an internal error after the job was started and killed."""
    assert os.geteuid() == 0, "the suite runs as root (.ci/run): mounting a tmpfs needs it"
    where = tmp_path / "ro"
    where.mkdir()
    marker = tmp_path / "started"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], check=True)
    try:
        r = cvmfs_run(["sh", "-c", f"touch {marker}"], dict(job_env, CVMFS_CACHE_BASE=str(where / "c")))
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)
    assert r.returncode == 125 and not marker.exists()
    assert r.stderr.decode() == (
        f"cvmfs-client run: cannot use the cache directory {where}/c/interposer: Read-only file system;"
        " give --cache-dir (or CVMFS_CACHE_BASE) a writable directory\n"
    )


def test_a_cache_another_user_could_change_is_refused_before_the_job_starts(job_env, tmp_path):
    """Programs run from the cache's shadow trees: a cache base another user owns (one made
    in /tmp beforehand) could hand the job altered ones."""
    where = tmp_path / "theirs"
    where.mkdir()
    os.chown(where, 65534, 65534)
    marker = tmp_path / "started"
    r = cvmfs_run(["sh", "-c", f"touch {marker}"], dict(job_env, CVMFS_CACHE_BASE=str(where)))
    assert r.returncode == 125 and not marker.exists(), r.stderr.decode()
    assert f"{where}/interposer: its parent {where} belongs to uid 65534" in r.stderr.decode()


BROKEN_TRACER = """
import interposer.tracer as tracer
def broken(self, task):
    raise RuntimeError("simulated tracer bug")
tracer.Tracer._on_seccomp = broken
"""


def test_an_internal_error_is_reported_and_kills_the_job(job_env, tmp_path):
    assert_a_bug_kills_the_job(BROKEN_TRACER, "exec sleep 30", b"simulated tracer bug", job_env, tmp_path)


def test_host_script_whose_path_names_cvmfs_runs(job_env, tmp_path):
    """/usr/bin/cvmfs_config is a shell script: a host path containing "cvmfs" is the host's."""
    tool = tmp_path / "cvmfs-tools" / "cvmfs_config"
    tool.parent.mkdir()
    tool.write_text('#!/bin/sh\necho "config $1"\n')
    tool.chmod(0o755)
    r = cvmfs_run([str(tool), "probe"], job_env)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"config probe\n"


def test_a_warning_in_a_job_is_printed_as_before(job_env):
    """Logging is configured when first needed (cvmfs_client/lazylog.py), in run's format."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**job_env, "CVMFS_SERVER_URL": f"http://127.0.0.1:{port}/cvmfs/@fqrn@", "CVMFS_MAX_RETRIES": "0"}
    env["CVMFS_CACHE_BASE"] = job_env["CVMFS_CACHE_BASE"] + "-unreachable"
    r = cvmfs_run(["ls", MOUNT], env)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert f"WARNING interposer.vfs: cannot mount {MOUNT}:" in err, err


def test_random_changes_fail_as_on_a_read_only_mount(job_env, sw_src, tmp_path):
    """The reference is the kernel itself: a read-only bind mount of the source tree (root
    only). Random mkdir/rmdir/unlink/rename/symlink/link/chmod/utime/truncate/xattr/open/
    chown/mknod calls, with ".", ".." and trailing slashes, get the same errno under run,
    from the C loop's Python and from ptrace stops alike (EEXIST before EROFS for a name
    that exists, EISDIR for truncate of a directory, ENOENT through a dangling symlink...)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    bind = subprocess.run(["mount", "--bind", str(sw_src), str(ro)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip(f"no bind mount here: {bind.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True, capture_output=True)
        (tmp_path / "names").write_text("\n".join(probe_entries(sw_src)))
        probe = Path(__file__).parent / "data" / "change_calls.py"
        for seed, options in ((1, []), (2, []), (3, ["--ptrace-only"]), (4, ["--deny", "/home"])):
            args = [str(seed), "", "800", str(tmp_path / "names")]
            args[1] = str(ro)
            want = subprocess.run(["python3", str(probe), *args], capture_output=True, check=True).stdout
            args[1] = MOUNT
            got = cvmfs_run(["python3", str(probe), *args], job_env, options=options)
            assert got.returncode == 0, got.stderr.decode()
            pairs = zip(got.stdout.decode().splitlines(), want.decode().splitlines(), strict=True)
            assert [a for a, b in pairs if a != b] == [], (seed, options)
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


OPENAT2 = """
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
how = ctypes.create_string_buffer(struct.pack("QQQ", os.O_RDONLY | os.O_CLOEXEC, 0, 0))
for name in ("README.txt", "cases/frozen-0444.txt", "cases/twin-a.dat"):
    fd = libc.syscall(437, -100, f"{sys.argv[1]}/{name}".encode(), how, 24)  # openat2
    assert fd >= 0, ctypes.get_errno()
    a, b = os.fstat(fd), os.stat(f"{sys.argv[1]}/{name}")
    same = (a.st_ino, a.st_mtime, a.st_nlink) == (b.st_ino, b.st_mtime, b.st_nlink)
    print(name, a.st_mode == b.st_mode, same)
"""


def test_fstat_of_an_fd_openat2_opened_shows_the_catalog(job_env, tmp_path):
    # openat2 without RESOLVE_* flags opens as openat: its content fd goes to the reserved range,
    # where fstat reports the entry, not the cache file (mode 0555, the cache's times)
    script = tmp_path / "openat2.py"
    script.write_text(OPENAT2)
    for options in ([], ["--ptrace-only"]):
        r = cvmfs_run(["python3", str(script), MOUNT], job_env, options=options)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.decode().split() == [
            w
            for n in ("README.txt", "cases/frozen-0444.txt", "cases/twin-a.dat")
            for w in (n, "True", "True")
        ], options


OPENAT2_RESOLVE = """
import ctypes, errno, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
R = sys.argv[1]
FLAGS = {"beneath": 0x08, "in_root": 0x10, "no_xdev": 0x01, "no_symlinks": 0x04}
CASES = [
    ("", "README.txt", "beneath"), ("", "cases/rel-link", "beneath"), ("", "cases/abs-link", "beneath"),
    ("", "..", "beneath"), ("", "/etc/hostname", "beneath"), ("cases", "../README.txt", "beneath"),
    ("cases", "rel-link", "beneath"), ("", "cases/rel-link", "no_symlinks"),
    ("", "cases/dir-link/core.py", "no_symlinks"), ("", "README.txt", "no_symlinks"),
    ("", "cases/empty.txt", "no_xdev"), ("", "cases/dir-link/core.py", "no_xdev"),
    ("", "/README.txt", "in_root"), ("", "../../README.txt", "in_root"),
    ("", "cases/abs-link", "in_root"), ("", "cases/rel-link", "in_root"),
    ("cases", "/empty.txt", "in_root"), ("cases", "../twin-a.dat", "in_root"),
    ("", "..", "no_xdev"), ("cases", "../..", "no_xdev"), ("", f"{R}/README.txt", "no_xdev"),
]
for where, path, flag in CASES:
    d = os.open(os.path.join(R, where) if where else R, os.O_RDONLY | os.O_DIRECTORY)
    how = ctypes.create_string_buffer(struct.pack("QQQ", os.O_RDONLY | os.O_CLOEXEC, 0, FLAGS[flag]))
    fd = libc.syscall(437, d, path.encode(), how, 24)  # openat2
    if fd < 0:
        out = errno.errorcode[ctypes.get_errno()]
    else:
        st = os.fstat(fd)
        out = (oct(st.st_mode), "<dir>" if st.st_mode & 0o40000 else os.read(fd, 12))
        os.close(fd)
    os.close(d)
    print(where or ".", path.replace(R, "ROOT"), flag, out)
"""


def test_openat2_resolve_flags_are_obeyed_on_cvmfs(job_env, sw_src, tmp_path):
    """BENEATH, IN_ROOT, NO_XDEV and NO_SYMLINKS answer as on the source tree (openat2(2)),
    with the catalog's metadata on the fd; where the source tree is not a mount as a
    repository is, a real mount's answers: EXDEV for ".." out of the repository or an
    absolute /cvmfs path under NO_XDEV."""
    script = tmp_path / "resolve.py"
    script.write_text(OPENAT2_RESOLVE)
    want = subprocess.run(["python3", str(script), str(sw_src)], capture_output=True, check=True)
    want_lines = want.stdout.decode().splitlines()
    mount_only = {". .. no_xdev", "cases ../.. no_xdev", ". ROOT/README.txt no_xdev"}
    for options in ([], ["--ptrace-only"]):
        r = cvmfs_run(["python3", str(script), MOUNT], job_env, options=options)
        assert r.returncode == 0, r.stderr.decode()
        as_a_mount = set()
        for got, native_line in zip(r.stdout.decode().splitlines(), want_lines, strict=True):
            case = got.rsplit(" ", 1)[0] if got.endswith(" EXDEV") else None
            if case in mount_only:
                as_a_mount.add(case)
                continue
            assert got == native_line, options
        assert as_a_mount == mount_only, options
