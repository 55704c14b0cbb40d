"""Mount lists, --private-tmp, --deny and --sandbox with real programs under ``cvmfs-client run``."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import uuid
from pathlib import Path

from tests.interposer.conftest import cvmfs_run, sh
from tests.interposer.test_interactive import Tmux, tmux  # noqa: F401 - the fixture
from tests.interposer.trees import MOUNT

KEPT = re.compile(r"the job's /tmp is kept in (\S+) \((\d+) files\)")


def _host_tmp() -> set[str]:
    return set(os.listdir("/tmp"))


def test_private_tmp_100_files(job_env):
    mark = f"job-{uuid.uuid4().hex[:8]}"
    before = _host_tmp()
    script = f"""
        set -e
        test -z "$(ls -A /tmp)"
        i=0; while [ $i -lt 100 ]; do echo $i > /tmp/{mark}-$i; i=$((i+1)); done
        ls /tmp | grep -c {mark}
        cd /tmp && pwd && cat {mark}-42
        python3 -c 'import os; print(os.getcwd(), len(os.listdir(".")))'
        mkdir /tmp/d && mv /tmp/{mark}-99 /tmp/d/moved && mv /tmp/d/moved /tmp/{mark}-99
        cp {MOUNT}/README.txt /tmp/readme && rm /tmp/readme
        readlink /proc/self/cwd; rmdir /tmp/d
    """
    r = sh(script, job_env, options=["--private-tmp"], cwd=Path("/"))
    out = r.stdout.decode().split("\n")
    assert out[:5] == ["100", "/tmp", "42", "/tmp 100", "/tmp"]
    # (other processes come and go in the host's /tmp meanwhile: check what the job did there)
    after = _host_tmp()
    assert not [n for n in after - before if mark in n or n in ("d", "readme")]
    assert not [n for n in after if mark in n]
    m = KEPT.search(r.stderr.decode())
    assert m and m.group(2) == "100", r.stderr.decode()
    kept = Path(m.group(1))
    assert sorted(os.listdir(kept)) == sorted(f"{mark}-{i}" for i in range(100))
    assert (kept / f"{mark}-7").read_text() == "7\n"


def test_private_tmp_given_dir_and_clean(job_env, tmp_path):
    given = tmp_path / "mytmp"
    r = cvmfs_run(["sh", "-c", "touch /tmp/a /tmp/b && ls /tmp"], job_env, options=[f"--private-tmp={given}"])
    assert r.returncode == 0 and r.stdout == b"a\nb\n"
    assert f"kept in {given} (2 files)" in r.stderr.decode()
    r = cvmfs_run(["sh", "-c", "ls /tmp"], job_env, options=[f"--private-tmp={given}"])
    assert r.returncode != 0 and b"not empty" in r.stderr  # a private /tmp starts empty
    r = cvmfs_run(["sh", "-c", "touch /tmp/c"], job_env, options=["--private-tmp", "--clean-tmp"])
    assert r.returncode == 0 and "removed the job's /tmp (1 files)" in r.stderr.decode()
    r = cvmfs_run(["true"], job_env, options=["--private-tmp"])  # nothing left: nothing said
    assert r.returncode == 0 and r.stderr == b""


def test_mount_list_file_and_option(job_env, tmp_path):
    data = tmp_path / "data"
    (data / "in").mkdir(parents=True)
    (data / "in" / "x.txt").write_text("input\n")
    out = tmp_path / "out"
    out.mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"# a Parrot mount list\n/data {data}\n/data/in {data}/in rx\n/nothing ENOENT\n")
    script = """
        cat /data/in/x.txt; cd /data/in && pwd && cat x.txt
        touch /data/in/new 2>&1 || true
        echo result > /results/r.txt; ls /results
        ls /nothing 2>&1 || true
        python3 -c 'import os; os.chdir("/data"); print(os.getcwd(), sorted(os.listdir(".")))'
    """
    r = cvmfs_run(["sh", "-c", script], job_env, options=["-m", str(mounts), "-M", f"/results={out}"])
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[:3] == ["input", "/data/in", "input"]
    assert "Permission denied" in lines[3]
    assert lines[4] == "r.txt" and (out / "r.txt").read_text() == "result\n"
    assert "No such file" in lines[5]
    assert lines[6] == "/data ['in']"
    assert not (data / "in" / "new").exists()


def test_bad_mount_list_is_reported_with_line(job_env, tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("/tmp /x\n/data rwz\n")
    r = cvmfs_run(["true"], job_env, options=["-m", str(mounts)])
    assert r.returncode != 0 and f"{mounts}:2: TARGET 'rwz' must be an absolute path" in r.stderr.decode()
    mounts.write_text("# x\n/tmp /x rwz\n")
    r = cvmfs_run(["true"], job_env, options=["-m", str(mounts)])
    assert r.returncode != 0 and f"{mounts}:2: invalid ACL" in r.stderr.decode()


def test_sandbox_and_deny(job_env, tmp_path):
    home = tmp_path / "home"
    (home / "x" / ".ssh").mkdir(parents=True)
    (home / "x" / ".ssh" / "id_rsa").write_text("SECRET\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "link").symlink_to(home / "x")
    (scratch / "home").symlink_to("/home")
    rel = str(home).lstrip("/")
    key = f"{home}/x/.ssh/id_rsa"
    attempts = {
        "read": f"cat {key}",
        "read-via-dotdot": f"cat {home}/x/../x/.ssh/id_rsa",
        "list-home": "ls /home",
        "list-fake-home": f"ls {home}",
        "sys": "cat /sys/kernel/mm/transparent_hugepage/enabled",
        "proc1": "cat /proc/1/environ",
        "proc1-cmdline": "cat /proc/1/cmdline",
        "proc1-cwd": "readlink -v /proc/1/cwd",
        "other-maps": f"cat /proc/{os.getpid()}/maps",  # a process of ours outside the job
        "other-smaps": f"cat /proc/{os.getpid()}/task/{os.getpid()}/smaps",
        "link": f"cat {scratch}/link/.ssh/id_rsa",
        "link-home": f"ls {scratch}/home/",
        "cd-relative": f"cd / && cat {rel}/x/.ssh/id_rsa",
        "cd-into": f"cd {home}/x",
        "dirfd": (
            'python3 -c \'import os,sys; fd=os.open("/", os.O_RDONLY|os.O_DIRECTORY); '
            f'print(os.read(os.open("{rel}/x/.ssh/id_rsa", os.O_RDONLY, dir_fd=fd), 9))\''
        ),
        "dirfd-stat": (
            'python3 -c \'import os; fd=os.open("/", os.O_RDONLY|os.O_DIRECTORY); '
            f'os.stat("{rel}/x", dir_fd=fd, follow_symlinks=False)\''
        ),
        "fd-link": f"exec 3<{home}/..; cat /proc/self/fd/3/home/x/.ssh/id_rsa",
        "dev": "ls /dev",
        "disk": "ls -l /dev/sda /dev/vda /dev/nvme0n1 /dev/mem",
        "copy": f"cp {key} {scratch}/stolen",
        "rename": f"mv {home}/x {scratch}/x",
    }
    script = "".join(
        f"( {cmd} ) >/dev/null 2>{scratch}/err-{name} && echo LEAK-{name} || "
        f"{{ grep -q 'Permission denied' {scratch}/err-{name} && echo denied-{name} || "
        f"{{ echo OTHER-{name}; cat {scratch}/err-{name}; }}; }}\n"
        for name, cmd in attempts.items()
    )
    script += f"""
        head -c 16 /dev/urandom | wc -c; echo quiet > /dev/null; cat /dev/null; echo to-stderr >&2
        python3 -c 'import sys; print(sys.version_info[0])'
        bash -c 'echo bash-ok'; ls /usr/bin/env; cat /proc/self/status | head -1
        grep -q libc /proc/self/maps && echo own-maps-ok
        cat {MOUNT}/README.txt | head -c 0; echo cvmfs-ok
    """
    r = cvmfs_run(["bash", "-c", script], job_env, options=["--sandbox", "--deny", str(home)], cwd=tmp_path)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    for name in attempts:
        if name == "disk":
            assert f"LEAK-{name}" not in out
            continue
        assert f"denied-{name}" in out, out
    assert "16\n" in out and "3\n" in out and "bash-ok" in out and "/usr/bin/env" in out
    assert "Name:\tcat" in out and "cvmfs-ok" in out and "own-maps-ok" in out
    assert "to-stderr" in r.stderr.decode()
    assert not (scratch / "stolen").exists() and (home / "x").exists()


def test_sandbox_tmp_link_to_home(job_env):
    script = "ln -s /home /tmp/h && ls /tmp/h/ 2>&1; ls -ld /tmp/h | cut -c1; cd /tmp/h 2>&1; true"
    r = sh(script, job_env, options=["--sandbox", "--private-tmp", "--clean-tmp"], cwd=Path("/"))
    lines = r.stdout.decode().splitlines()
    assert "Permission denied" in lines[0] and lines[1] == "l" and "/tmp/h" in lines[2]


def test_sandbox_with_a_private_tmp_in_a_home_directory(job_env):
    """A user's cache, and so the private /tmp made in it, is under /home, which --sandbox
    denies: the job still gets that /tmp, and cannot reach it by its host name."""
    home = Path("/home") / f"cvmfs-test-{uuid.uuid4().hex[:8]}"
    try:
        env = {**job_env, "CVMFS_CACHE_BASE": str(home / ".cache")}
        script = f"echo hi > /tmp/f && cat /tmp/f && ls {home} 2>&1; {MOUNT}/bin/busybox echo from-cvmfs"
        r = sh(script, env, options=["--sandbox", "--private-tmp"], cwd=Path("/"))
        out = r.stdout.decode().splitlines()
        assert out[0] == "hi" and "Permission denied" in out[1] and out[2] == "from-cvmfs", out
        kept = KEPT.search(r.stderr.decode())
        assert (
            kept and kept.group(1).startswith(f"{home}/") and Path(kept.group(1), "f").read_text() == "hi\n"
        )
        given = home / "given-tmp"
        r = sh(
            "touch /tmp/g && ls /tmp", job_env, options=["--sandbox", f"--private-tmp={given}"], cwd=Path("/")
        )
        assert r.stdout == b"g\n" and (given / "g").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_private_tmp_interactive_login_shell(tmux: Tmux, job_env):  # noqa: F811
    run = f"cd / && {shlex.quote(sys.executable)} -m cvmfs_client run --private-tmp --"
    tmux.line(f"{run} sh -l; echo outer-status=$?")
    tmux.line("PS1='inner$ '")
    tmux.wait_for(lambda s: "inner$" in s)
    tmux.line("for i in 1 2 3 4 5; do touch /tmp/it-$i; done; ls /tmp | wc -l; echo done-$((2+3))")
    tmux.wait_for(lambda s: "5\ndone-5" in s)
    tmux.line("exit")
    screen = tmux.wait_for(lambda s: "outer-status=0" in s)
    m = KEPT.search(screen.replace("\n", ""))
    assert m and m.group(2) == "5", screen
    assert not [n for n in os.listdir("/tmp") if n.startswith("it-")]


def test_allow_write(job_env, tmp_path):
    ok = tmp_path / "ok"
    other = tmp_path / "other"
    ok.mkdir()
    other.mkdir()
    (other / "old").write_text("old\n")
    mark = f"/tmp/aw-{uuid.uuid4().hex[:8]}"
    script = f"""
        echo a > {ok}/a && echo ok-a
        mkdir {ok}/d && mv {ok}/a {ok}/d/a && echo ok-mv
        echo b > {other}/b; mkdir {other}/d; rm {other}/old; touch {mark}; chmod 600 {other}/old
        mv {ok}/d {other}/moved
        echo x > /dev/null && echo ok-null; echo to-stderr > /dev/stderr
        cat {other}/old; python3 -c 'print("py-ok")'
    """
    r = cvmfs_run(["bash", "-c", script], job_env, options=["--allow-write", str(ok)])
    out, err = r.stdout.decode(), r.stderr.decode()
    assert out == "ok-a\nok-mv\nok-null\nold\npy-ok\n", out + err
    assert err.count("Permission denied") == 6 and "to-stderr" in err
    assert "write refused (not under --allow-write)" in err and f"{other}/b" in err
    assert sorted(os.listdir(other)) == ["old"] and not os.path.exists(mark)
    assert (ok / "d" / "a").read_text() == "a\n"
