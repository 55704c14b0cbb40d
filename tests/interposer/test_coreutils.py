"""Unmodified coreutils/findutils see /cvmfs/sw.example.org exactly as the tree that was published.

Each test runs a command under ``cvmfs-client run`` with its working directory inside /cvmfs and
the same command natively on the source tree, and compares. Known, intended differences are
normalised away and listed here: ``ls`` "total" lines and directory sizes (file-system block
accounting), and ``flavors/current``, whose ``$(EXAMPLE_FLAVOR:-generic)`` target the client
expands (as the real client does).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.interposer.conftest import TOOLS, cvmfs_run, native, probe_entries, sh
from tests.interposer.trees import MOUNT

# The parts of the tree compared entry by entry (python/ is covered by test_programs).
PARTS = "README.txt bin cases deep etc lib share src"


def _ls_normalised(out: bytes) -> list[str]:
    lines = []
    for line in out.decode().splitlines():
        if line.startswith("total ") or "flavors/current" in line:
            continue
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[0].startswith("d"):
            fields[4] = "<dirsize>"
        lines.append(" ".join(fields))
    return lines


def test_ls_lR_matches_the_source_tree(job_env, sw_src):
    script = f"ls -lR --time-style=+%s {PARTS}"
    got = sh(f"cd {MOUNT} && {script}", job_env).stdout
    assert _ls_normalised(got) == _ls_normalised(native(script, sw_src))
    assert b"twin-a.dat" in got and "Grüße".encode() in got


def test_find_ls_shows_types_modes_links_sizes_mtimes_and_targets(job_env, sw_src):
    fmt = r"%y %m %n %s %T@ %p -> %l\n"
    script = f"find {PARTS} -printf '{fmt}' | sort"
    got = sh(f"cd {MOUNT} && {script}", job_env).stdout.decode().splitlines()
    want = native(script, sw_src).decode().splitlines()

    def drop_dir_size(lines: list[str]) -> list[str]:
        return [re.sub(r"^d (\d+) (\d+) \d+ ", r"d \1 \2 <size> ", x) for x in lines]

    assert drop_dir_size(got) == drop_dir_size(want)
    assert any(x.startswith("l ") and x.endswith(f"-> {MOUNT}/etc/example.conf") for x in got)
    # find -ls (fts with directory fds and localtime) over the whole tree, python included
    sh(f"cd {MOUNT} && find . -ls > /dev/null && find {MOUNT}/python -ls | wc -l", job_env)


def test_sha256_of_every_file_matches_the_source(job_env, sw_src):
    script = "find . -type f -print0 | sort -z | xargs -0 sha256sum"
    got = sh(f"cd {MOUNT} && {script}", job_env).stdout
    want = native(script, sw_src)
    assert got == want
    assert got.count(b"\n") > 1000  # the standard library is in there too


def test_du_apparent_sizes_match(job_env, sw_src):
    script = f"du -ab {PARTS} | sort -k2"
    got = dict(
        reversed(x.split("\t")) for x in sh(f"cd {MOUNT} && {script}", job_env).stdout.decode().splitlines()
    )
    want = dict(reversed(x.split("\t")) for x in native(script, sw_src).decode().splitlines())
    files = [p for p in want if (sw_src / p).is_file() and not (sw_src / p).is_symlink()]
    assert files and all(got[p] == want[p] for p in files)
    assert set(got) == set(want)


def test_stat_reports_catalog_metadata(job_env, sw_src):
    names = [
        "cases/twin-a.dat",
        "cases/frozen-0444.txt",
        "cases/secret-0600.key",
        "cases/runme-0755.sh",
        "cases/abs-link",
        "cases/rel-link",
        "cases/broken-link",
        "cases/empty.txt",
        "cases/Grüße aus Köln – 日本語 ✓.txt",
        "share/data/big.bin",
        "lib/libtinfo.so.6",
        "deep/d1",
    ]
    quoted = " ".join(f"'{n}'" for n in names)
    script = f"stat -c '%F|%a|%s|%Y|%h|%N' {quoted}; stat -L -c '%F|%s|%Y' cases/rel-link cases/dir-link"
    got = sh(f"cd {MOUNT} && {script}", job_env).stdout.decode().splitlines()
    want = native(script, sw_src).decode().splitlines()
    dirs = [i for i, n in enumerate(names) if n == "deep/d1"]
    for i in dirs:  # directory sizes are a file-system detail
        got[i] = re.sub(r"\|\d+\|", "|", got[i], count=1)
        want[i] = re.sub(r"\|\d+\|", "|", want[i], count=1)
    assert got[: len(names)] == want[: len(names)]
    assert got[len(names)] == want[len(names)]
    assert got[-1].startswith("directory|")


def test_real_publisher_repository_files_match_truth(job_env, real_fixtures):
    truth = {}
    for line in (real_fixtures / f"{TOOLS}.truth.tsv").read_text().splitlines():
        if line.startswith("#"):
            continue
        path, kind, _mode, _size, sha, *_ = line.split("\t")
        if kind == "f":
            truth[path] = sha
    r = sh(f"cd /cvmfs/{TOOLS} && find . -type f -print0 | xargs -0 sha256sum", job_env)
    got = {}
    for line in r.stdout.decode().splitlines():
        digest, path = line.split("  ", 1)
        got[path[2:]] = digest
    assert got == truth


def test_ls_cvmfs_lists_configured_repositories_and_unknown_ones_are_absent(job_env):
    r = cvmfs_run(["sh", "-c", "ls /cvmfs; ls /cvmfs/no-such.example.org"], job_env)
    out = r.stdout.decode().split()
    assert out[:2] == sorted(["sw.example.org", TOOLS])
    assert r.returncode != 0 and b"No such file or directory" in r.stderr
    # As under autofs, nothing else: programs probe such names (node looks for
    # /cvmfs/package.json) and a warning on the job's stderr for each would be noise.
    assert r.stderr.decode().strip().splitlines() == [
        "ls: cannot access '/cvmfs/no-such.example.org': No such file or directory"
    ]


def test_a_named_repository_that_no_server_has_is_reported(job_env):
    """A repository the user asked for (--repo, CVMFS_REPOSITORIES) that every server says it
    does not have (a wrong CVMFS_SERVER_URL, a typo in the name) is not a probe: without a
    word the job would only print "No such file or directory"."""
    missing = "missing.example.org"
    for how, options, env in [
        ("--repo", ["--repo", missing], job_env),
        ("CVMFS_REPOSITORIES", [], dict(job_env, CVMFS_REPOSITORIES=f"sw.example.org,{missing}")),
    ]:
        r = cvmfs_run(["ls", f"/cvmfs/{missing}"], env, options=options)
        assert r.returncode != 0, how
        err = r.stderr.decode()
        assert f"cannot mount /cvmfs/{missing}: " in err and f"{missing}/.cvmfspublished" in err, (how, err)
        assert err.count("cannot mount") == 1, (how, err)


def test_mounted_repositories_are_in_the_mount_table(job_env):
    """Job wrappers check `grep /cvmfs/X /proc/mounts` or `mountpoint /cvmfs/X` before they
    start; df and findmnt read the table too. A repository is listed once mounted (autofs)."""
    script = (
        f"grep -c {MOUNT} /proc/mounts; ls {MOUNT} > /dev/null; grep -c {MOUNT} /proc/mounts /etc/mtab;"
        f"mountpoint -q {MOUNT} && echo mountpoint; findmnt -n -o SOURCE,FSTYPE {MOUNT};"
        f"findmnt -n -o TARGET -T {MOUNT}/etc/example.conf; df --output=source,target {MOUNT} | tail -1;"
        f"grep -c ' {MOUNT} ro,nosuid,nodev,relatime - fuse cvmfs2 ' /proc/self/mountinfo"
    )
    r = cvmfs_run(["sh", "-c", script], job_env)
    assert r.stdout.decode().split() == [
        "0", "/proc/mounts:1", "/etc/mtab:1", "mountpoint", "cvmfs2", "fuse", MOUNT,
        "cvmfs2", MOUNT, "1",
    ], r.stderr.decode()  # fmt: skip


def test_tar_sees_no_file_changing_while_read(job_env, tmp_path):
    """tar compares fstat of the open file with the earlier stat: they must agree (ctime too)."""
    r = cvmfs_run(["sh", "-c", f"cd {MOUNT} && tar cf - cases etc share | tar tvf - | wc -l"], job_env)
    assert r.returncode == 0, r.stderr.decode()
    assert b"changed as we read it" not in r.stderr
    assert int(r.stdout) > 15


def test_python_package_in_real_repository_imports(job_env):
    code = "import toolkit, toolkit.cli; print(toolkit.__file__)"
    r = sh(f"PYTHONPATH=/cvmfs/{TOOLS}/lib/python python3 -c '{code}'", job_env)
    assert r.stdout.decode().strip() == f"/cvmfs/{TOOLS}/lib/python/toolkit/__init__.py"


def test_sources_are_compared_against_existing_tree(sw_src: Path):
    assert (sw_src / "cases" / "twin-a.dat").stat().st_nlink == 2


def test_df_shows_the_cache_quota_and_use_as_the_real_client(job_env):
    """statfs of a repository path: the node cache's quota as the size, its use, 512-byte
    blocks, type FUSE (cvmfs.cc cvmfs_statfs); host paths keep their own."""
    import ast

    from cvmfs_client.cache import NodeCache
    from interposer import translate

    probe = (
        "import os, sys; s = os.statvfs(sys.argv[1]); h = os.statvfs('/')\n"
        "print([s.f_bsize, s.f_frsize, s.f_blocks, s.f_bfree, s.f_bavail, s.f_namemax, s.f_flag & 1,"
        " h.f_blocks])"
    )
    r = cvmfs_run(["python3", "-c", probe, f"{MOUNT}/etc"], job_env, options=["--stats"])
    assert r.returncode == 0, r.stderr.decode()
    got = ast.literal_eval(r.stdout.decode())
    store = NodeCache(Path(job_env["CVMFS_CACHE_BASE"]) / "shared", 4000 << 20)
    used, quota = store.usage()
    store.close()
    assert quota == 4000 << 20
    assert got[:7] == [512, 512, quota // 512, (quota - used) // 512, (quota - used) // 512, 255, 1]
    assert got[7] == os.statvfs("/").f_blocks  # the host's own
    assert "stub" not in ast.literal_eval(r.stderr.decode().rpartition("stops ")[2])["actions"]
    r = sh(f"stat -f -c %T {MOUNT}; df {MOUNT} | tail -1", job_env)
    fs_type, df_line = r.stdout.decode().splitlines()
    assert fs_type == "fuseblk" and df_line.startswith("cvmfs2 ") and df_line.endswith(MOUNT)
    # the unmanaged cache: full at its size, as the real client reports it
    raw = translate.repository_statfs(10 * 512 + 7, None)
    assert raw[16:40] == (10).to_bytes(8, "little") + bytes(16)


DOT_PROBE = """
import os, sys
for p in sys.argv[1:]:
    res = []
    for f in (os.stat, os.lstat, lambda q: os.close(os.open(q, os.O_RDONLY)), os.readlink, os.listdir):
        try:
            f(p)
            res.append("ok")
        except OSError as e:
            res.append(os.strerror(e.errno))
    print(p, res)
"""


def test_dot_and_dot_dot_after_files_and_symlinks_answer_as_the_kernel(job_env, sw_src, tmp_path):
    # "file/." and "file/.." are ENOTDIR, "link/." follows the link, readlink("dirlink/.") is EINVAL
    names = ["cases/empty.txt", "cases/rel-link", "cases/dir-link", "cases/broken-link", "cases", "bin/tput"]
    paths = [n + s for n in names for s in ("/.", "/..", "/../twin-a.dat", "/./x", "/")]
    probe = tmp_path / "probe.py"
    probe.write_text(DOT_PROBE)
    want = native(f"python3 {probe} {' '.join(paths)}", sw_src)
    for extra in ({}, {"CVMFS_CLIENT_PURE_PYTHON": "1"}):
        got = sh(f"cd {MOUNT} && python3 {probe} {' '.join(paths)}", {**job_env, **extra}).stdout
        assert got.decode().splitlines() == want.decode().splitlines(), extra


def test_random_path_calls_answer_as_on_the_source_tree(job_env, sw_src, tmp_path):
    """Random stat/open/readlink/access/scandir/realpath calls, absolute and relative to cwds
    and directory fds, with ".", ".." and odd slashes, answer under run as they do natively,
    whether the C loop, Python, ptrace stops or a policy's walk decide them, on /cvmfs and
    through a host symlink into it (walks that dropped "." and a trailing slash were found so). Absolute and
    variant symlinks are left out: their targets differ there by design."""
    entries = probe_entries(sw_src)
    dirs = [e for e in entries if (sw_src / e).is_dir() and not (sw_src / e).is_symlink()]
    (tmp_path / "names").write_text("\n".join(entries))
    (tmp_path / "dirs").write_text("\n".join(dirs))
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "sw").symlink_to(MOUNT)  # ~/sw -> /cvmfs/...: the job's view
    (tmp_path / "native").mkdir()
    (tmp_path / "native" / "sw").symlink_to(sw_src)
    probe = Path(__file__).parent / "data" / "path_calls.py"
    args = f"1500 {tmp_path}/names {tmp_path}/dirs"

    def lines(out: bytes, *roots: object) -> list[str]:
        text = out.decode()
        for root in roots:
            text = text.replace(str(root), "ROOT")
        return text.splitlines()

    runs = ((1, MOUNT, sw_src, ""), (2, MOUNT, sw_src, "--ptrace-only"), (3, MOUNT, sw_src, "pure"))
    runs += ((4, f"{tmp_path}/host/sw", f"{tmp_path}/native/sw", ""),)
    runs += (
        (5, MOUNT, sw_src, "--deny /home"),
        (6, f"{tmp_path}/host/sw", f"{tmp_path}/native/sw", "--deny /home"),
    )
    for seed, root, native_root, mode in runs:
        want = lines(native(f"python3 {probe} {seed} {native_root} {args}", sw_src), native_root, sw_src)
        env = {**job_env, "CVMFS_CLIENT_PURE_PYTHON": "1"} if mode == "pure" else job_env
        options = mode.split() if mode.startswith("--") else []  # --deny: the policy's own walk
        got = cvmfs_run(["/bin/sh", "-c", f"python3 {probe} {seed} {root} {args}"], env, options=options)
        assert got.returncode == 0, got.stderr.decode()
        have = lines(got.stdout, root, MOUNT)
        assert len(have) == len(want) == 1500
        assert [a for a, b in zip(have, want, strict=True) if a != b] == [], (seed, mode)
