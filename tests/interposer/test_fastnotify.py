"""The supervisor's fast path (interposer/_fastnotify.c, notify.FastPath): it lets through only
what the translator would, counts what it let through, and hands everything else to Python."""

from __future__ import annotations

import contextlib
import errno
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interposer import arch_x86_64 as arch
from interposer import notify
from interposer.tracer import Stats
from interposer.translate import Translator
from tests.interposer.conftest import cvmfs_run
from tests.interposer.test_notify import _filtered_child, _send, _survey

fast = pytest.importorskip("interposer._fastnotify", reason="built without a C compiler")

TRANSLATOR = Translator(ns=None, ranges=None)  # type: ignore[arg-type]  # only the host rule is asked
RULE = TRANSLATOR.host_rule()
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


def test_serve_continues_host_paths_and_hands_the_rest_to_python(tmp_path):
    """A child under the notify filter: its stat and access of system paths are let through
    in C, counted, and run; its other stats and its /etc/mtab open come to Python."""

    def body() -> None:
        os.stat("/etc/hostname")
        os.access("/usr/bin", os.X_OK)
        for f in (
            lambda: os.stat("/etc/../cvmfs"),  # "cvmfs" under a system root
            lambda: os.stat(str(tmp_path)),
            lambda: os.close(os.open("/etc/mtab", os.O_RDONLY)),
        ):
            with contextlib.suppress(OSError):
                f()

    path = notify.FastPath(RULE)
    pid, listener = _filtered_child(body, notify_opens=True)
    seen = []
    try:
        req = bytearray(notify._NOTIF.size)
        for answer in (-errno.ENOENT, 0, -errno.EACCES):
            assert path.receive(listener, req) == 0
            notif_id, tid, _, nr, _, _, *args = notify._NOTIF.unpack(req)
            assert tid == pid
            seen.append(nr)
            _send(listener, notif_id, 0, answer, notify.FLAG_CONTINUE if answer == 0 else 0)
        # the child has exited: RECV fails with ENOENT (no process uses the filter any more)
        assert path.receive(listener, req) == errno.ENOENT
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(listener)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert seen == [arch.NR["newfstatat"], arch.NR["newfstatat"], arch.NR["openat"]]
    stats = Stats()
    path.add_counts(stats)
    assert stats.stops == {"newfstatat": 1, "access": 1}
    assert stats.actions == {"notified": 2, "fast": 2}


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


def test_off_under_a_policy_and_with_a_name_list(job_env, tmp_path):
    script = "import os, time; [os.stat('/etc/hostname') for _ in range(20)]; time.localtime()"
    for options in (["--deny", "/home"], ["--name-list", str(tmp_path / "names")]):
        r = cvmfs_run(["python3", "-c", script], job_env, options=["--stats", *options])
        assert r.returncode == 0, r.stderr.decode()
        assert "'fast'" not in r.stderr.decode()
    names = (tmp_path / "names").read_text()
    assert "/etc/hostname" in names  # every path recorded: none went past Python
