"""The supervisor's fast path (interposer/_fastnotify.c, notify.FastPath): it lets through only
what the translator would, counts what it let through, and hands everything else to Python."""

from __future__ import annotations

import ast
import contextlib
import ctypes
import errno
import os
import struct
import subprocess
import textwrap
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interposer import arch_x86_64 as arch
from interposer import notify, seccomp
from interposer.tracer import Stats
from interposer.translate import Translator
from tests.interposer.conftest import cvmfs_run
from tests.interposer.test_notify import ROOT, VM_WRITEV, _filtered_child, _refusing, _send, _survey
from tests.interposer.trees import MOUNT

fast = pytest.importorskip("interposer._fastnotify", reason="built without a C compiler")

TRANSLATOR = Translator(ns=None, ranges=None)  # type: ignore[arg-type]  # only the host rule is asked
RULE = TRANSLATOR.fast_rule()
assert RULE is not None
PREFIXES = b"\0".join(RULE.prefixes)
SPECIAL = b"\0".join(RULE.open_special)

PIECES = ["usr", "lib", "lib64", "etc", "mtab", "cvmfs", "proc", "dev", "sys", "run", "bin", "sbin",
          "tmp", "home", "..", ".", "", "localtime", "x86_64-linux-gnu", "cvmfsx", "é"]  # fmt: skip


@given(st.lists(st.sampled_from(PIECES), max_size=6), st.booleans(), st.booleans())
def test_the_path_rule_is_the_translators(pieces, absolute, is_open):
    path = ("/" if absolute else "") + "/".join(pieces)
    raw = path.encode()
    passes = fast.path_passes(raw, PREFIXES, SPECIAL, is_open)
    if raw.startswith(RULE.prefixes) or not passes:  # under a system root Python needs no look
        want = TRANSLATOR._plain_host(raw) and not (is_open and raw in RULE.open_special)
        assert passes == (want and raw.startswith(RULE.prefixes)), path


def test_the_path_rule_by_example():
    for path in (b"/etc/localtime", b"/usr/lib/x86_64-linux-gnu/libc.so.6", b"/lib64/ld.so", b"/run/x"):
        assert fast.path_passes(path, PREFIXES, SPECIAL, True)
    for path in (
        b"/cvmfs/sw.example.org/lib",  # the repositories
        b"/usr/../cvmfs/sw.example.org",  # "cvmfs" anywhere: the translator walks it
        b"/proc/self/fd/3",  # magic links may lead into /cvmfs
        b"/dev/fd/3",
        b"/tmp/x",  # may be a link into /cvmfs (a host symlink to a repository)
        b"/home/user/sw/bin",
        b"etc/localtime",  # relative: the cwd may be in /cvmfs
        b"",
        b"/etc/" + b"x" * 5000,  # longer than PATH_MAX: ENAMETOOLONG is the translator's
    ):
        assert not fast.path_passes(path, PREFIXES, SPECIAL, False), path
    assert fast.path_passes(b"/etc/mtab", PREFIXES, SPECIAL, False)  # stat: the host's link
    assert not fast.path_passes(b"/etc/mtab", PREFIXES, SPECIAL, True)  # open: the job's mounts


def _serve_child(body, path, decide):  # type: ignore[no-untyped-def]
    """Run ``body`` in a child under the notify filter (opens notified too) and serve it with
    ``path`` (a FastPath) until the child is gone: each notification handed over gets
    ``decide(nr, args)``, an errno or 0 to continue. What was handed over, and the fast path's
    own counts."""
    pid, listener = _filtered_child(body, notify_opens=True)
    seen = []
    try:
        req = bytearray(notify._NOTIF.size)
        while (failed := path.receive(listener, req)) == 0:
            notif_id, tid, _, nr, _, _, *args = notify._NOTIF.unpack(req)
            assert tid == pid
            seen.append((nr, args))
            err = decide(nr, args)
            _send(listener, notif_id, 0, -err, 0 if err else notify.FLAG_CONTINUE)
        assert failed == errno.ENOENT  # no process uses the filter any more
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(listener)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    stats = Stats()
    path.add_counts(stats)
    return seen, stats


def test_serve_continues_host_paths_and_hands_the_rest_to_python(tmp_path):
    """A child under the notify filter: its stat and access of system paths, and of host paths
    that lead into no /cvmfs, are let through in C, counted, and run; a stat through a host
    symlink into /cvmfs, one naming "cvmfs" and its /etc/mtab open come to Python."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "elsewhere").symlink_to(tmp_path / "plain")
    (tmp_path / "sw").symlink_to("/cvmfs/sw.example.org")

    def body() -> None:
        os.stat("/etc/hostname")
        os.access("/usr/bin", os.X_OK)
        os.stat(tmp_path / "plain")
        os.stat(tmp_path / "elsewhere")
        with contextlib.suppress(OSError):
            os.stat(tmp_path / "missing")  # walked: no link on the way
        for f in (
            lambda: os.stat("/etc/../cvmfs"),  # "cvmfs" under a system root
            lambda: os.stat(tmp_path / "sw" / "lib"),
            lambda: os.close(os.open("/etc/mtab", os.O_RDONLY)),
        ):
            with contextlib.suppress(OSError):
                f()

    answers = iter((errno.ENOENT, 0, errno.EACCES))
    seen, stats = _serve_child(body, notify.FastPath(RULE), lambda nr, args: next(answers))
    assert [nr for nr, _ in seen] == [arch.NR["newfstatat"], arch.NR["newfstatat"], arch.NR["openat"]]
    assert stats.stops == {"newfstatat": 4, "access": 1}
    assert stats.actions == {"notified": 5, "fast": 5}


def test_getcwd_outside_the_shadow_trees_is_let_through_in_c(tmp_path, monkeypatch):
    """getcwd where the cwd is a host directory is the kernel's to answer (Translator._getcwd
    gives it back), so C lets it through; in a shadow tree, Python writes its /cvmfs name."""
    host, shadow = tmp_path / "host", tmp_path / "shadow"
    (shadow / "r" / "unit").mkdir(parents=True)
    host.mkdir()
    rule = Translator(ns=None, ranges=None).fast_rule()  # type: ignore[arg-type]
    assert rule is not None
    rule.shadow_prefix = os.fsencode(shadow) + b"/"

    def body() -> None:  # chdir stops for a tracer (none here): the child starts in its cwd
        for _ in range(3):
            os.getcwd()

    monkeypatch.chdir(host)
    seen, stats = _serve_child(body, notify.FastPath(rule), lambda nr, args: 0)
    assert seen == [] and stats.stops == {"getcwd": 3} and stats.actions["fast"] == 3
    monkeypatch.chdir(shadow / "r" / "unit")
    seen, stats = _serve_child(body, notify.FastPath(rule), lambda nr, args: 0)
    assert [nr for nr, _ in seen] == [arch.NR["getcwd"]] * 3 and "fast" not in stats.actions


def test_a_job_gets_the_same_answers_with_and_without_it(job_env, tmp_path):
    env = dict(job_env)
    _survey(env, tmp_path)  # populate the shadow tree first (directory link counts)
    env[notify.PURE_PYTHON_ENV] = "1"
    python = _survey(env, tmp_path)
    fast_run = _survey(job_env, tmp_path)
    assert fast_run["answers"] == python["answers"]
    assert fast_run["stats"]["actions"].get("fast", 0) > 0
    assert "fast" not in python["stats"]["actions"]
    # counted as Python counts its own: the same calls, the same notifications
    assert fast_run["stats"]["stops"] == python["stats"]["stops"]
    assert fast_run["stats"]["actions"]["notified"] == python["stats"]["actions"]["notified"]


def test_off_under_a_policy_with_a_name_list_and_with_debug(job_env, tmp_path):
    script = f"import os; [os.stat('/etc/hostname') for _ in range(20)]; os.path.exists('{MOUNT}/x');"
    for options in (["--deny", "/home"], ["--name-list", str(tmp_path / "names")], ["--debug"], []):
        r = cvmfs_run(["python3", "-c", script * 2], job_env, options=["--stats", *options])
        assert r.returncode == 0, r.stderr.decode()
        assert ("'fast'" in r.stderr.decode()) is (options == []), options
        if options == ["--debug"]:  # every answer logged, the second one too
            assert r.stderr.decode().count(f"newfstatat(b'{MOUNT}/x') -> Return") == 2
    names = (tmp_path / "names").read_text()
    assert "/etc/hostname" in names  # every path recorded: none went past Python


def test_answers_are_keyed_by_call_value_arguments_and_path():
    answers = fast.Answers()
    args = (0xFFFFFF9C, 0x7F00DEAD, 0, 0x900, 0, 0)  # newfstatat(AT_FDCWD, path, buf, flags)
    mask = 0b1001  # dirfd and flags, not the buffer
    answers.remember(262, args, mask, b"/cvmfs/r/lib/x86-64-v3/libz.so", errno.ENOENT)
    assert answers.get(262, args, mask, b"/cvmfs/r/lib/x86-64-v3/libz.so") == errno.ENOENT
    other_buffer = (0xFFFFFF9C, 0x1234, 0, 0x900, 0, 0)
    assert answers.get(262, other_buffer, mask, b"/cvmfs/r/lib/x86-64-v3/libz.so") == errno.ENOENT
    other_flags = (0xFFFFFF9C, 0x7F00DEAD, 0, 0x000, 0, 0)  # lstat -> stat: another walk
    assert answers.get(262, other_flags, mask, b"/cvmfs/r/lib/x86-64-v3/libz.so") == 0
    assert answers.get(4, args, mask, b"/cvmfs/r/lib/x86-64-v3/libz.so") == 0  # another call
    assert answers.get(262, args, mask, b"/cvmfs/r/lib/x86-64-v3/libz.s") == 0  # a prefix
    assert answers.get(262, args, mask, b"/cvmfs/r/lib/x86-64-v3/libz.so/") == 0
    answers.remember(262, args, mask, b"/cvmfs/r/lib/x86-64-v3/libz.so", errno.ENOTDIR)  # replaced
    assert answers.get(262, args, mask, b"/cvmfs/r/lib/x86-64-v3/libz.so") == errno.ENOTDIR
    assert answers.size() == 1
    with pytest.raises(ValueError):
        answers.remember(262, args, mask, b"/cvmfs/x", 0)  # not an errno
    with pytest.raises(ValueError):
        answers.remember(262, args[:3], mask, b"/cvmfs/x", errno.ENOENT)


def test_answers_stay_bounded():
    answers = fast.Answers()
    for i in range(20_000):
        answers.remember(4, (0,) * 6, 0, b"/cvmfs/r/missing-%d" % i, errno.ENOENT)
        assert answers.size() <= 4096
    assert answers.get(4, (0,) * 6, 0, b"/cvmfs/r/missing-19999") == errno.ENOENT


def test_serve_gives_a_remembered_answer_again_without_python():
    """The child stats a /cvmfs path three times: Python answers the first and remembers it,
    C the other two; an open of the same path is another call, and comes to Python."""
    missing = b"/cvmfs/sw.example.org/lib/glibc-hwcaps/x86-64-v3/libtinfo.so.6"

    def body() -> None:
        results = []
        for f in [lambda: os.stat(missing)] * 3 + [lambda: os.open(missing, os.O_RDONLY)]:
            try:
                f()
                results.append(0)
            except OSError as e:
                results.append(e.errno)
        os._exit(0 if results == [errno.ENOENT] * 3 + [errno.EACCES] else 1)

    path = notify.FastPath(RULE)
    answers = iter((errno.ENOENT, errno.EACCES))

    def decide(nr: int, args: list[int]) -> int:
        answer = next(answers)
        path.remember(nr, args, missing, answer)
        return answer

    seen, stats = _serve_child(body, path, decide)
    assert [nr for nr, _ in seen] == [arch.NR["newfstatat"], arch.NR["openat"]]
    assert stats.stops == {"newfstatat": 2}
    assert stats.actions == {"notified": 2, "fast": 2, "return": 2}


def test_serve_walks_a_shadow_tree_and_keeps_its_answers(tmp_path):
    """A shadow tree told to C (``add_tree``): the child's first stat of a placeholder, open of
    linked content and stats of a name missing from the populated root are answered there and
    kept, as Python keeps its answers (the loader probes the same paths in every process);
    what the tree cannot answer (content not linked, a symlink on the way) comes to Python."""
    repo = "/cvmfs/t.example.org"
    meta, data, done = (tmp_path / name for name in ("m", "d", "done"))
    for directory in (meta, data, done):
        directory.mkdir()
    (meta / "f").write_bytes(bytes(5))  # the placeholder: the entry's size and times
    os.utime(meta / "f", ns=(10**18, 10**18))
    (data / "f").write_bytes(b"hello")  # its content, linked
    (meta / "g").write_bytes(b"")  # no content linked yet
    (meta / "link").symlink_to("f")
    (done / fast.md5_hex(b"")).write_bytes(b"")  # the root is populated
    path = notify.FastPath(RULE)
    assert path.answers.add_tree(repo.encode(), bytes(meta), bytes(data), bytes(done), arch.STAT_SIZE)
    assert not path.answers.add_tree(repo.encode(), bytes(meta), bytes(data), bytes(done), 7)

    def body() -> None:
        ok = [(st.st_size, st.st_mtime_ns) for st in (os.stat(f"{repo}/f"), os.stat(f"{repo}/f"))]
        ok.append(os.lstat(meta / "f").st_ino == os.stat(f"{repo}/f").st_ino)
        for _ in range(2):
            with contextlib.suppress(FileNotFoundError):
                os.stat(f"{repo}/missing")
                ok.append("missing found")
        fd = os.open(f"{repo}/f", os.O_RDONLY)
        ok.append(os.read(fd, 10))
        os.close(fd)
        for other in (f"{repo}/g", f"{repo}/link/x"):
            with contextlib.suppress(OSError):
                os.close(os.open(other, os.O_RDONLY))
        os._exit(0 if ok == [(5, 10**18)] * 2 + [True, b"hello"] else 1)

    seen, stats = _serve_child(body, path, lambda nr, args: errno.EACCES)
    assert [nr for nr, _ in seen] == [arch.NR["openat"], arch.NR["openat"]]  # g, link/x
    assert stats.stops == {"newfstatat": 6, "openat": 1}  # with a host lstat
    # kept: the placeholder's stat, the ENOENT, the open; and the content fd's fstat
    assert path.answers.size() >= 4


def test_serve_answers_enodata_for_xattrs_the_marker_does_not_name(tmp_path):
    """``ls -l`` asks every entry for an ACL: C answers ENODATA for an entry that its
    directory's marker does not list among those with extended attributes, and ENOENT for a
    missing one. A listed entry, a magic name, a security label, a symlink getxattr follows,
    a directory not populated yet: Python's. A host path: the kernel's. Nothing is kept (the
    name is no key)."""
    repo = "/cvmfs/t.example.org"
    meta, data, done = (tmp_path / name for name in ("m", "d", "done"))
    for directory in (meta, data, done):
        directory.mkdir()
    for name in ("plain", "tagged"):
        (meta / name).write_bytes(b"")
    (meta / "link").symlink_to("plain")
    (meta / "sub").mkdir()  # not populated: no marker
    (done / fast.md5_hex(b"")).write_bytes(b"xattrs:other\0tagged")
    host = tmp_path / "host"
    host.write_bytes(b"")
    try:
        os.getxattr(host, "system.posix_acl_access")
        host_err = 0
    except OSError as exc:
        host_err = exc.errno
    path = notify.FastPath(RULE)
    assert path.answers.add_tree(repo.encode(), bytes(meta), bytes(data), bytes(done), arch.STAT_SIZE)
    asked = [
        (f"{repo}/plain", "system.posix_acl_access", True, errno.ENODATA),
        (f"{repo}/plain", "user.anything", True, errno.ENODATA),
        (f"{repo}/plain", "user.anything", True, errno.ENODATA),  # again: not kept, C again
        (f"{repo}/link", "system.posix_acl_access", False, errno.ENODATA),
        (f"{repo}/missing", "system.posix_acl_access", True, errno.ENOENT),
        (f"{repo}/tagged", "user.anything", True, errno.E2BIG),  # E2BIG: Python's answer here
        (f"{repo}/plain", "user.revision", True, errno.E2BIG),
        (f"{repo}/plain", "security.selinux", False, errno.E2BIG),
        (f"{repo}/link", "system.posix_acl_access", True, errno.E2BIG),
        (f"{repo}/sub/x", "system.posix_acl_access", True, errno.E2BIG),
        (str(host), "system.posix_acl_access", True, host_err),
    ]

    def body() -> None:
        got = []
        for where, name, follow, _ in asked:
            try:
                os.getxattr(where, name, follow_symlinks=follow)
                got.append(0)
            except OSError as exc:
                got.append(exc.errno)
        os._exit(0 if got == [want for *_, want in asked] else 1)

    seen, stats = _serve_child(body, path, lambda nr, args: errno.E2BIG)
    get, lget = arch.NR["getxattr"], arch.NR["lgetxattr"]
    assert [nr for nr, _ in seen] == [get, get, lget, get, get]
    assert stats.stops == {"getxattr": 5, "lgetxattr": 1}  # C's: the 5 errno answers, the host path
    assert stats.actions == {"notified": 6, "fast": 6, "return": 5}
    assert path.answers.size() == 0

    # the label Python found no entry to have (Translator._label), told to C: answered there
    assert path.answers.add_label(repo.encode(), b"security.selinux", errno.ENODATA)
    assert not path.answers.add_label(b"/cvmfs/other.example.org", b"security.selinux", errno.ENODATA)
    asked[7] = (f"{repo}/plain", "security.selinux", False, errno.ENODATA)
    asked.append((f"{repo}/plain", "security.SMACK64", False, errno.E2BIG))  # not told: Python's
    seen, stats = _serve_child(body, path, lambda nr, args: errno.E2BIG)
    assert [nr for nr, _ in seen] == [get, get, get, get, lget]
    assert stats.stops == {"getxattr": 5, "lgetxattr": 2}


def test_stat_answers_are_keyed_by_the_fds_target():
    answers = fast.Answers()
    data = arch.pack_stat(os.stat("/etc/passwd"))
    answers.remember_stat(b"/var/cache/cvmfs/shadow/r/d/lib/libz.so", data)
    assert answers.get_stat(b"/var/cache/cvmfs/shadow/r/d/lib/libz.so") == data
    assert answers.get_stat(b"/var/cache/cvmfs/shadow/r/d/lib/libz.so (deleted)") is None
    # a stat answer is not an errno answer for a call with that path, nor the reverse
    assert answers.get(262, (0,) * 6, 0, b"/var/cache/cvmfs/shadow/r/d/lib/libz.so") == 0
    answers.remember(262, (0,) * 6, 0, b"/cvmfs/r/x", errno.ENOENT)
    assert answers.get_stat(b"/cvmfs/r/x") is None
    with pytest.raises(ValueError):
        answers.remember_stat(b"/x", b"")
    with pytest.raises(ValueError):
        answers.remember_stat(b"/x", bytes(1000))


def test_serve_writes_a_remembered_struct_stat_for_an_fstat():
    """The child fstats an fd in the content range three times, both ways glibc and the kernel
    offer: each answered in C with what was remembered for its target (the struct stat of
    another file, to tell them apart); an fd linking elsewhere comes to Python."""
    ranges = seccomp.FdRanges.for_limit(1024)
    assert ranges is not None
    fd_in_range, other_in_range = ranges.content + 2, ranges.content + 3
    remembered = os.stat("/etc/passwd")

    def body() -> None:
        os.dup2(os.open("/etc/hostname", os.O_RDONLY), fd_in_range)
        sizes = [os.fstat(fd_in_range).st_size for _ in range(2)]  # newfstatat(fd, "", AT_EMPTY_PATH)
        buf = ctypes.create_string_buffer(arch.STAT_SIZE)
        ok = ctypes.CDLL(None, use_errno=True).syscall(arch.NR["fstat"], fd_in_range, buf) == 0
        sizes.append(struct.unpack_from("<q", buf, 48)[0] if ok else -1)  # st_size
        os.dup2(os.open("/etc/group", os.O_RDONLY), other_in_range)
        with contextlib.suppress(OSError):
            os.fstat(other_in_range)
        odd_flags = 0x1000 | 0x4000000  # AT_EMPTY_PATH and a flag the kernel refuses
        ctypes.CDLL(None).syscall(arch.NR["newfstatat"], fd_in_range, b"", buf, odd_flags)
        os._exit(0 if sizes == [remembered.st_size] * 3 else 1)

    path = notify.FastPath(RULE)
    path.answers.remember_stat(b"/etc/hostname", arch.pack_stat(remembered))
    answers = {other_in_range: errno.EBADF, fd_in_range: errno.EINVAL}
    seen, stats = _serve_child(body, path, lambda nr, args: answers[args[0]])
    # the other fd's fstat, then the odd flags
    assert [(nr, args[0]) for nr, args in seen] == [
        (arch.NR["newfstatat"], other_in_range), (arch.NR["newfstatat"], fd_in_range),
    ]  # fmt: skip
    assert stats.stops == {"newfstatat": 2, "fstat": 1, "openat": 2}  # the opens: let through
    assert stats.actions == {"notified": 5, "fast": 5, "emulate": 3}


REMEMBERED = textwrap.dedent(
    f"""
    import errno, os, sys
    M = "{MOUNT}"
    def call(f, *a):
        try:
            f(*a)
            return "ok"
        except OSError as e:
            return errno.errorcode[e.errno]
    out = []
    missing, notdir = M + "/cases/missing", M + "/etc/example.conf/x"
    for _ in range(3):
        out += [call(os.stat, missing), call(os.lstat, notdir), call(os.open, missing, os.O_RDONLY)]
        out += [str(os.access(missing, os.F_OK)), call(os.open, notdir, os.O_RDONLY)]
    out.append(call(os.open, missing, os.O_WRONLY | os.O_CREAT))  # the same path, another answer
    # a host path reached through /cvmfs/..: missing, then made; never a remembered answer
    later = M + "/../.." + sys.argv[1]
    out.append(call(os.stat, later))
    open(sys.argv[1], "w").close()
    out.append(call(os.stat, later))
    print(" ".join(out))
    """
)


def _both_ways(job_env, argv):  # type: ignore[no-untyped-def]
    """``argv`` under ``cvmfs-client run --stats``, decided in Python ("1") and with the fast
    path ("0"): per mode, its output and its counters."""
    runs = {}
    for mode in ("1", "0"):
        env = dict(job_env, **{notify.PURE_PYTHON_ENV: mode})
        r = cvmfs_run(argv, env, options=["--stats"])
        assert r.returncode == 0, (mode, r.stderr.decode())
        runs[mode] = (r.stdout, ast.literal_eval(r.stderr.decode().rpartition("stops ")[2]))
    return runs


def test_tar_of_content_is_the_same_without_it(job_env):
    """tar stats each file, opens it, fstats it twice: modes, sizes and times in the archive."""
    script = f"t=$(mktemp) && cd {MOUNT} && tar --sort=name -cf $t cases etc lib && sha256sum < $t"
    script += " && tar -tvf $t; rm -f $t"
    runs = _both_ways(job_env, ["/bin/sh", "-c", script])
    assert runs["0"][0] == runs["1"][0]


def test_remembered_answers_are_the_pythons(job_env, tmp_path):
    script = tmp_path / "remembered.py"
    script.write_text(REMEMBERED)
    got = {}
    for mode in ("1", "0"):
        env = dict(job_env, **{notify.PURE_PYTHON_ENV: mode})
        later = tmp_path / f"later-{mode}"
        r = cvmfs_run(["python3", str(script), str(later)], env, options=["--stats"])
        assert r.returncode == 0, r.stderr.decode()
        got[mode] = r.stdout.decode().split()
    assert got["0"] == got["1"]
    assert got["0"] == ["ENOENT", "ENOTDIR", "ENOENT", "False", "ENOTDIR"] * 3 + ["EROFS", "ENOENT", "ok"]


def test_a_profile_refusing_only_memory_writes_leaves_fstat_to_python(job_env, tmp_path):
    """process_vm_readv allowed, process_vm_writev refused (a seccomp profile): the C loop
    reads paths but cannot write a struct stat, so it hands the fstat to Python, which writes
    through /proc/PID/mem; the answers are those of a plain run."""
    script = tmp_path / "survey.py"
    _survey(job_env, tmp_path)  # the shadow tree complete (directory link counts)
    plain = _survey(job_env, tmp_path)
    wrap = _refusing(VM_WRITEV)
    r = subprocess.run([*wrap, "-m", "cvmfs_client", "run", "--", "python3", str(script)],
                       capture_output=True, env=job_env, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    answers = {}
    for line in r.stdout.decode().splitlines():
        key, _, value = line.partition(" ")
        answers[key] = ast.literal_eval(value)
    assert answers == plain["answers"]


@pytest.mark.parametrize("kcmp", [True, False], ids=["kcmp", "proc"])
def test_first_free_probes_a_jobs_fds_as_python_does(kcmp):
    """_fastnotify.first_free against notify._first_free over the same child's fds."""
    ours = os.open("/dev/null", os.O_RDONLY)
    child = subprocess.Popen(
        ["python3", "-c", "import os, time; [os.dup2(0, n) for n in (700, 701, 703, 705)]; time.sleep(30)"],
        stdin=subprocess.DEVNULL,
        pass_fds=(),
    )
    try:
        for _ in range(100):  # until the child holds its fds
            if os.path.exists(f"/proc/{child.pid}/fd/705"):
                break
            time.sleep(0.05)
        held = {n for n in range(0, 1024) if os.path.exists(f"/proc/{child.pid}/fd/{n}")}
        assert {700, 701, 703, 705} <= held
        for start, base, end in ((700, 700, 0), (704, 700, 706), (705, 700, 706), (0, 0, 0), (3, 3, 0)):
            found, still = fast.first_free(child.pid, ours, start, base, end, kcmp)
            assert found == notify._first_free(held.__contains__, start, base, end), (start, base, end)
            assert still is kcmp  # kcmp answered (the machine's kernel has it)
        child.kill()
        child.wait()
        sup = notify.Supervisor.__new__(notify.Supervisor)  # Python's probe, for the gone child
        sup._kcmp, sup._pid, sup.listener = kcmp, os.getpid(), ours
        python = notify._first_free(lambda n: sup._fd_used(child.pid, n), 700, 700)
        assert fast.first_free(child.pid, ours, 700, 700, 0, kcmp)[0] == (-1 if python is None else python)
    finally:
        child.kill()
        os.close(ours)


REOPENED = textwrap.dedent(
    f"""
    import ctypes, fcntl, os, resource, stat
    M = "{MOUNT}"
    libc = ctypes.CDLL(None, use_errno=True)  # os.open would add O_CLOEXEC
    def open_(path, flags, dir_fd=-100):
        fd = libc.openat(dir_fd, path.encode(), flags)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return fd
    top = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1024)
    content, dirs = top - 256, top - 128
    out = []
    def seen(fd, how):
        st = os.fstat(fd)
        where = "content" if content <= fd < dirs else "dirs" if dirs <= fd < top else "low"
        cloexec = bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        nonblock = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
        data = os.read(fd, 20) if stat.S_ISREG(st.st_mode) else sorted(os.listdir(fd))[:3]
        out.append((how, where, cloexec, nonblock, stat.filemode(st.st_mode), st.st_size, data))
    for round in range(3):  # the first of each is Python's, the others the C loop's
        for flags in (os.O_RDONLY, os.O_RDONLY | os.O_CLOEXEC, os.O_RDONLY | os.O_NONBLOCK):
            fd = open_(M + "/etc/example.conf", flags)
            seen(fd, "file")
            d = open_(M + "/etc", flags | os.O_DIRECTORY)
            seen(d, "dir")
            rel = open_("example.conf", flags, dir_fd=d)
            seen(rel, "relative file")
            sub = open_("profile.d", flags | os.O_DIRECTORY, dir_fd=d)
            seen(sub, "relative dir")
            for f in (fd, d, rel, sub):
                os.close(f)
        refused = (("/etc/missing", os.O_RDONLY), ("/etc/example.conf", os.O_RDONLY | os.O_DIRECTORY))
        for name, flags in refused:
            try:
                open_(M + name, flags)
            except OSError as e:
                out.append((name, e.strerror))
    print(repr(out))
    """
)


def test_opens_made_again_in_c_are_pythons(job_env, tmp_path):
    """The same /cvmfs files and directories opened again (absolute, relative to a directory
    fd, with and without O_CLOEXEC and O_NONBLOCK): fd range, fd flags, what they read and
    fstat, as in Python; the repeats are handed over by the C loop."""
    script = tmp_path / "reopen.py"
    script.write_text(REOPENED)
    runs = _both_ways(job_env, ["python3", str(script)])
    got = {mode: ast.literal_eval(out.decode()) for mode, (out, _) in runs.items()}
    stats = {mode: counters for mode, (_, counters) in runs.items()}
    assert got["0"] == got["1"]
    rows = got["0"]
    assert {row[1] for row in rows if row[0] in ("file", "relative file")} == {"content"}
    assert {row[1] for row in rows if row[0] in ("dir", "relative dir")} == {"dirs"}
    assert {(row[2], row[3]) for row in rows if row[0] == "dir"} == {
        (False, False),
        (True, False),
        (False, True),
    }
    assert ("/etc/missing", "No such file or directory") in rows and (
        "/etc/example.conf",
        "Not a directory",
    ) in rows
    assert stats["0"]["actions"]["local"] == stats["1"]["actions"]["local"]  # counted the same
    # 2 of every 3 rounds' 12 opens were made by the C loop, without Python
    assert stats["0"]["actions"]["fast"] - stats["1"]["actions"].get("fast", 0) >= 24


def test_remembered_opens_are_checked():
    answers = fast.Answers()
    args = (3, 0, 0x90800, 0, 0, 0)
    answers.remember_open(
        257, args, 0b1100, b"/shadow/m/etc\0profile.d", b"/shadow/m/etc/profile.d", 896, 1024, False
    )
    assert answers.size() == 1
    for bad in (b"relative/path", b"", b"/with\0nul"):
        with pytest.raises(ValueError):
            answers.remember_open(257, args, 0b1100, b"/key", bad, 896, 1024, False)


COPIES = textwrap.dedent(
    f"""
    import fcntl, os, resource, threading
    M = "{MOUNT}"
    top = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1024)
    content, dirs = top - 256, top - 128
    f = os.open(M + "/etc/example.conf", os.O_RDONLY)
    d = os.open(M + "/etc", os.O_RDONLY | os.O_DIRECTORY)
    out = {{}}
    def copies(who):
        got = []
        for _ in range(20):
            c1 = fcntl.fcntl(f, fcntl.F_DUPFD_CLOEXEC, 3)
            c2 = fcntl.fcntl(d, fcntl.F_DUPFD, 3)
            c3 = fcntl.fcntl(d, fcntl.F_DUPFD, top + 5)  # above the range: as asked
            got.append((content <= c1 < dirs, dirs <= c2 < top, c3 >= top + 5,
                        bool(fcntl.fcntl(c1, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
                        bool(fcntl.fcntl(c2, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
                        os.pread(c1, 9, 0), sorted(os.listdir(c2)) == sorted(os.listdir(d))))
            for c in (c1, c2, c3):
                os.close(c)
        out[who] = set(got)
    t = threading.Thread(target=copies, args=("thread",))
    t.start()
    copies("main")
    t.join()
    print(repr(out))
    """
)


def test_copies_of_reserved_fds_from_threads_stay_in_their_ranges(job_env, tmp_path):
    """fcntl(F_DUPFD) of a content and a directory fd, from the main thread (copied in C) and
    from another thread (whose pidfd C cannot open: Python copies): each copy in its range,
    with its own FD_CLOEXEC, the same file; above the range when asked for."""
    script = tmp_path / "copies.py"
    script.write_text(COPIES)
    runs = _both_ways(job_env, ["python3", str(script)])
    want = {(True, True, True, True, False, b"# example", True)}
    for mode, (out, _) in runs.items():
        assert ast.literal_eval(out.decode()) == {"thread": want, "main": want}, mode
    fast_counts = {mode: counters["actions"].get("fast", 0) for mode, (_, counters) in runs.items()}
    assert fast_counts["0"] - fast_counts["1"] >= 40  # the main thread's copies (the thread's: Python)


RESTATED = textwrap.dedent(
    f"""
    import os
    M = "{MOUNT}"
    def meta(f, *a, **k):
        try:
            st = f(*a, **k)
        except OSError as e:
            return e.strerror
        return (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_nlink, st.st_blocks)
    out = []
    d = os.open(M + "/etc", os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(3):  # the first of each is Python's, the others the C loop's
        out.append([
            meta(os.stat, M + "/etc"), meta(os.stat, M + "/etc/"), meta(os.lstat, M + "/cases"),
            meta(os.stat, M + "/etc/example.conf"), meta(os.lstat, M + "/cases/rel-link"),
            meta(os.stat, M + "/cases/rel-link"), meta(os.stat, "example.conf", dir_fd=d),
            meta(os.stat, "profile.d", dir_fd=d), meta(os.stat, M + "/etc/example.conf/x"),
        ])
    print(repr(out))
    """
)


def test_stats_made_again_in_c_are_pythons(job_env, tmp_path):
    """Files, symlinks (followed or not) and directories stat'ed again, absolute and relative
    to a directory fd: the same answers with and without the fast path, every round."""
    script = tmp_path / "restat.py"
    script.write_text(RESTATED)
    runs = _both_ways(job_env, ["python3", str(script)])
    got = {mode: ast.literal_eval(out.decode()) for mode, (out, _) in runs.items()}
    fast_counts = {mode: counters["actions"].get("fast", 0) for mode, (_, counters) in runs.items()}
    assert got["0"] == got["1"]
    assert got["0"][0] == got["0"][1] == got["0"][2]
    assert got["0"][0][-1] == "Not a directory"
    assert fast_counts["0"] - fast_counts["1"] >= 2 * 8  # the later rounds' stats, in C


FIRST_USED = textwrap.dedent(
    f"""
    import os, stat, sys
    M = "{MOUNT}"
    def meta(st):  # a directory's size moves as the shadow tree is populated
        if stat.S_ISDIR(st.st_mode):
            return (st.st_mode, st.st_ino, st.st_mtime_ns, st.st_nlink)
        return (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_nlink, st.st_blocks)
    def call(f, *a, **k):
        try:
            got = f(*a, **k)
        except OSError as e:
            return e.strerror
        return meta(got) if isinstance(got, os.stat_result) else got
    def opened(path, flags=os.O_RDONLY, dir_fd=None):
        fd = os.open(path, flags, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            return meta(st), os.read(fd, 64) if stat.S_ISREG(st.st_mode) else sorted(os.listdir(fd))
        finally:
            os.close(fd)
    out = []
    def survey(path, dir_fd=None):
        out.append((path, dir_fd is not None, call(os.stat, path, dir_fd=dir_fd),
                    call(os.stat, path, dir_fd=dir_fd, follow_symlinks=False),
                    call(opened, path, dir_fd=dir_fd),
                    call(opened, path, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK, dir_fd=dir_fd)))
    for name in ("/cases/twin-a.dat", "/cases/Grüße aus Köln – 日本語 ✓.txt", "/cases/empty.txt",
                 "/cases/frozen-0444.txt", "/cases/runme-0755.sh", "/etc/profile.d", "/cases/emptydir",
                 "/deep", "/cases/rel-link", "/cases/dir-link/x", "/cases/nope", "/cases/nope/deeper",
                 "/nope/deeper/still", "/cases/twin-b.dat/x", "/cases/./empty.txt",
                 "/cases/../etc/example.conf", "/cases/", "/src/include/common.h", "/lib", "/src/main.c"):
        survey(M + name)
    d = os.open(M + "/cases", os.O_RDONLY | os.O_DIRECTORY)
    for rel in ("twin-b.dat", "obsolete.txt", "emptydir", "nope", "dir-link", "abs-link",
                "../etc/example.conf", "emptydir/../secret-0600.key", "emptydir/nope"):
        survey(rel, d)
    os.chdir(M + "/src")
    for rel in ("Makefile", "include/common.h", "include", "nope", "include/nope"):
        survey(rel)
    os.chdir(sys.argv[1])  # a host directory: sw leads into /cvmfs
    for rel in ("sw/etc/example.conf", "sw", "real/f", "real", "missing", ".", "real/../sw/cases"):
        survey(rel)
    print(repr(out))
    """
)


def test_first_uses_in_c_are_pythons(job_env, tmp_path):
    """Entries stat'ed and opened for the first time in a job, absolute, relative to a
    directory fd, to a cwd in /cvmfs and to a host cwd, by a job whose shadow tree holds only
    some of them: the same answers decided in C and in Python, before and after the tree has
    them all (C answers those it holds, and leaves the rest to Python)."""
    env = dict(job_env, CVMFS_CACHE_BASE=str(tmp_path / "cache"))
    host = tmp_path / "host"
    (host / "real").mkdir(parents=True)
    (host / "real" / "f").write_text("f\n")
    (host / "sw").symlink_to(MOUNT)
    script = tmp_path / "first.py"
    script.write_text(FIRST_USED)
    ls = cvmfs_run(["ls", "-la", f"{MOUNT}/cases", f"{MOUNT}/etc"], env)  # some directories only
    assert ls.returncode == 0, ls.stderr.decode()
    runs = []
    for mode in ("0", "1", "0"):  # C with the content not yet fetched, Python, C with it all
        r = cvmfs_run(["python3", str(script), str(host)], dict(env, **{notify.PURE_PYTHON_ENV: mode}),
                      options=["--stats"])  # fmt: skip
        assert r.returncode == 0, (mode, r.stderr.decode())
        counters = ast.literal_eval(r.stderr.decode().rpartition("stops ")[2])
        python = counters["actions"]["notified"] - counters["actions"].get("fast", 0)
        runs.append((ast.literal_eval(r.stdout.decode()), python))
    assert runs[0][0] == runs[1][0] == runs[2][0]
    rows = {(path, relative): rest for path, relative, *rest in runs[0][0]}
    assert rows[(f"{MOUNT}/cases/nope", False)][0] == "No such file or directory"
    assert rows[("emptydir/nope", True)][0] == "No such file or directory"
    assert rows[(f"{MOUNT}/cases/twin-b.dat/x", False)][0] == "Not a directory"
    assert rows[("sw/etc/example.conf", False)][2][1].startswith(b"# example")
    # notifications decided in Python: all of them, then only those the tree cannot answer
    # (symlinks, "..", content not fetched yet, what the job does besides): a third or less
    assert runs[0][1] < runs[1][1] / 2 and runs[2][1] < runs[1][1] / 3


HOST_PIECES = ["real", "f", "abs", "elsewhere", "rel", "up", "loop", "chain", "cvmfsx", "..", ".", "",
               "missing", "etc"]  # fmt: skip


@pytest.fixture(scope="module")
def host_links(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A host directory with every kind of symlink the host rule must tell apart."""
    top = tmp_path_factory.mktemp("links")
    (top / "real").mkdir()
    (top / "real" / "f").write_text("f")
    (top / "abs").symlink_to("/cvmfs/sw.example.org/etc")
    (top / "elsewhere").symlink_to(top / "real")
    (top / "rel").symlink_to("real")
    (top / "up").symlink_to(f"../{top.name}/abs")
    (top / "loop").symlink_to("loop")
    (top / "chain").symlink_to("abs")
    (top / "cvmfsx").symlink_to("/cvmfsx/y")
    (top / "real" / "back").symlink_to("../chain")
    return top


@given(st.lists(st.sampled_from([*HOST_PIECES, "back"]), max_size=5), st.booleans(), st.booleans())
def test_the_host_link_rule_is_the_translators(host_links, pieces, trailing, is_open):
    """Host paths outside the system roots: let through in C exactly when the translator's
    first check (Translator._plain_host) lets them through, symlinks into /cvmfs or not."""
    raw = os.fsencode(str(host_links) + "/" + "/".join(pieces) + ("/" if trailing else ""))
    magic = b"\0".join(RULE.magic_roots)
    want = Translator(ns=None, ranges=None)._plain_host(raw) and not (is_open and raw in RULE.open_special)  # type: ignore[arg-type]
    assert fast.path_passes(raw, PREFIXES, SPECIAL, is_open, magic) == want, raw


def test_the_marker_names_are_md5():
    import hashlib

    for data in (b"", b"/", b"/cases", "/Grüße".encode(), os.urandom(55), os.urandom(56), os.urandom(64),
                 os.urandom(119), os.urandom(1000)):  # fmt: skip
        assert fast.md5_hex(data) == hashlib.md5(data).hexdigest()


def test_statx_answers_in_c_are_pythons(job_env, tmp_path):
    """coreutils' stat asks with statx: files, a symlink, directories and missing names, by a
    job whose shadow tree holds some of them; the same answers (birth times included) decided
    in C and in Python, most of them C's."""
    env = dict(job_env, CVMFS_CACHE_BASE=str(tmp_path / "cache"))
    ls = cvmfs_run(["ls", "-la", f"{MOUNT}/cases"], env)
    assert ls.returncode == 0, ls.stderr.decode()
    names = (
        "cases/twin-a.dat",
        "cases/empty.txt",
        "cases/rel-link",
        "etc/example.conf",
        "cases/nope",
        "src/nope",
    )
    files = " ".join(f"{MOUNT}/{name}" for name in names)
    dirs = " ".join(f"{MOUNT}/{name}" for name in ("cases", "cases/emptydir", "etc", "src/include"))
    script = (
        f"stat -c '%n %f %s %Y %h %i %b %X %W' {files} 2>&1;"
        f" stat -L -c '%n %s' {files} 2>&1; stat -c '%n %f %Y %h %i' {dirs}"
    )
    runs = []
    for mode in ("0", "1", "0"):
        r = cvmfs_run(
            ["/bin/sh", "-c", script], dict(env, **{notify.PURE_PYTHON_ENV: mode}), options=["--stats"]
        )
        counters = ast.literal_eval(r.stderr.decode().rpartition("stops ")[2])
        runs.append((r.stdout, counters["actions"]["notified"] - counters["actions"].get("fast", 0)))
    assert runs[0][0] == runs[1][0] == runs[2][0]
    assert b"No such file or directory" in runs[0][0]
    assert f"{MOUNT}/cases/twin-a.dat 81a4 168 ".encode() in runs[0][0]  # a 0644 file of 168 bytes
    assert runs[2][1] * 8 <= runs[1][1], [python for _, python in runs]  # the statx calls: C's


XATTR_PROBE = """
import os, sys
for path in sys.argv[1:]:
    for name in ("system.posix_acl_access", "security.selinux", "user.nope", "user.revision"):
        for follow in (True, False):
            try:
                got = os.getxattr(path, name, follow_symlinks=follow)
            except OSError as exc:
                got = os.strerror(exc.errno)
            print(path, name, follow, got)
"""


def test_xattr_answers_in_c_are_pythons(job_env, tmp_path):
    """``ls -lR`` and (l)getxattr of files, symlinks, directories and missing names, in a tree
    an earlier job populated: the same answers decided in C and in Python, the ACL and label
    probes of ``ls -l`` nearly all C's."""
    env = dict(job_env, CVMFS_CACHE_BASE=str(tmp_path / "cache"))
    warm = cvmfs_run(["ls", "-lR", MOUNT], env)
    assert warm.returncode == 0, warm.stderr.decode()
    names = ("cases/twin-a.dat", "cases/rel-link", "cases", "etc/example.conf", "cases/nope", "src/nope")
    probe = ["python3", "-c", XATTR_PROBE, *(f"{MOUNT}/{name}" for name in names)]
    runs = {}
    for mode in ("1", "0"):
        mode_env = dict(env, **{notify.PURE_PYTHON_ENV: mode})
        out = []
        for argv in (["ls", "-lR", MOUNT], probe):
            r = cvmfs_run(argv, mode_env, options=["--stats"])
            assert r.returncode == 0, r.stderr.decode()
            counters = ast.literal_eval(r.stderr.decode().rpartition("stops ")[2])
            xattrs = sum(counters["stops"].get(call, 0) for call in ("getxattr", "lgetxattr"))
            python = counters["actions"]["notified"] - counters["actions"].get("fast", 0)
            out.append((r.stdout, xattrs, python))
        runs[mode] = out
    (ls_py, probe_py), (ls_c, probe_c) = runs["1"], runs["0"]
    assert ls_c[0] == ls_py[0] and probe_c[0] == probe_py[0]
    assert b"user.revision True" in probe_c[0] and b"No data available" in probe_c[0]
    assert ls_c[1] > 50  # ls -l's probes: two per entry
    assert ls_c[2] * 4 <= ls_py[2], (ls_c, ls_py)  # Python decided a quarter or less of them
