"""Answers the translator gives without the kernel: ``stat`` of files and symlinks from their
placeholders, remembered, must be byte for byte what the kernel says about the same entry.

The kernel's own answer comes from ``fstatat`` relative to a directory fd in the reserved range
with ``AT_SYMLINK_NOFOLLOW``, which the filter lets run untrapped on the shadow tree (find, tar).
"""

from __future__ import annotations

import ast
import textwrap

import pytest

from interposer import arch_x86_64 as arch
from interposer.syscalls import BY_NAME
from interposer.translate import Exec, Translator
from interposer.vfs import Namespace
from tests.interposer.conftest import StoppedThread, cvmfs_run
from tests.interposer.trees import MOUNT

COMPARE = textwrap.dedent(
    """
    import os, stat, sys
    FIELDS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks",
              "st_blksize", "st_rdev", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
    def key(st):
        return tuple(getattr(st, f) for f in FIELDS)
    root, compared, files = sys.argv[1], 0, 0
    for d in ("cases", "etc", "lib", "bin", "share/data"):
        dfd = os.open(f"{root}/{d}", os.O_RDONLY | os.O_DIRECTORY)
        assert dfd >= 512, dfd  # reserved: fstatat(dfd, name, AT_SYMLINK_NOFOLLOW) is not trapped
        for name in sorted(os.listdir(dfd)):
            kernel = key(os.stat(name, dir_fd=dfd, follow_symlinks=False))
            path = f"{root}/{d}/{name}"
            answers = {"lstat": os.lstat(path)}
            if not stat.S_ISLNK(kernel[0]):
                answers["stat"] = os.stat(path)
            if stat.S_ISREG(kernel[0]):
                files += 1
                fd = os.open(path, os.O_RDONLY)
                answers["fstat"] = os.fstat(fd)
                answers["fstat again"] = os.fstat(fd)
                os.close(fd)
            for how, st in answers.items():
                compared += 1
                if key(st) != kernel:
                    print("MISMATCH", how, path, key(st), kernel)
    print("compared", compared, "files", files)
    """
)


def test_stat_answers_of_files_and_symlinks_are_the_kernels(job_env, tmp_path):
    script = tmp_path / "compare.py"
    script.write_text(COMPARE)
    r = cvmfs_run(["python3", str(script), MOUNT], job_env, options=["--stats"])
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "MISMATCH" not in out, out
    compared, files = int(out.split()[1]), int(out.split()[3])
    assert files >= 15 and compared > 4 * files
    line = next(x for x in r.stderr.decode().splitlines() if x.startswith("cvmfs-client run: stops "))
    stats = ast.literal_eval(line.split("stops ", 1)[1])
    assert stats["actions"]["emulate"] >= 4 * files  # answered by the tracer, not rewritten


ARGV = 0x7000  # where the job's argv is


@pytest.fixture
def translator(namespace: Namespace) -> Translator:
    return Translator(namespace, None)


def _execve(t: Translator, path: str, argv: list[int]) -> object:
    thread = StoppedThread(path.encode(), {ARGV: b"".join(p.to_bytes(8, "little") for p in [*argv, 0])})
    args = (0x1000, ARGV, 0, 0, 0, 0)
    return t.decide(thread, arch.NR["execve"], BY_NAME["execve"], args)  # type: ignore[arg-type]


def test_a_program_run_again_is_the_same_exec_without_a_walk(translator: Translator, monkeypatch):
    """A job that starts one /cvmfs program 200 times (W5) pays its translation once; a script
    is translated at each exec, since its argv carries the job's own arguments."""
    first = _execve(translator, f"{MOUNT}/bin/tput", [0x100, 0x200])
    assert type(first) is Exec and first.argv is None and b"/d/" in first.filename
    assert _execve(translator, f"{MOUNT}/lib/../bin/tput", [0x100]) == first  # ".." may pass a host link
    own = _execve(translator, f"{MOUNT}/bin/own-interp", [0x100])  # runs a copy naming its loader
    assert type(own) is Exec and own.argv is None and b"/p/" in own.filename

    def walk(*_: object) -> None:
        raise AssertionError("walked again")

    monkeypatch.setattr(translator, "_exec_target", walk)
    assert _execve(translator, f"{MOUNT}/bin/tput", [0x100]) == first
    for other in ("bin/tput-missing", "lib/../bin/tput", "bin/own-interp"):
        with pytest.raises(AssertionError, match="walked again"):
            _execve(translator, f"{MOUNT}/{other}", [0x100])
    monkeypatch.undo()
    for tail in ([0x300], [0x400, 0x500]):
        again = _execve(translator, f"{MOUNT}/bin/bbscript", [0x100, *tail])
        assert type(again) is Exec and again.argv is not None and again.argv[-len(tail) :] == tail
