"""Programs that live in /cvmfs run: dynamic ELF with libraries in the repository, a static
binary, ``#!`` scripts whose interpreter is in /cvmfs, CPython finding its prefix from its own
path, make -j2 over sources in /cvmfs, threads reading concurrently, execve from a thread."""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from cvmfs_client.publisher import publish
from tests.integration.nginx import start_nginx
from tests.interposer.conftest import TOOLS, cvmfs_run, sh
from tests.interposer.trees import MOUNT

PY = f"{MOUNT}/python/bin/python3"


def test_dynamic_binary_with_libraries_in_the_repository(job_env):
    r = sh(
        f"export LD_LIBRARY_PATH={MOUNT}/lib; {MOUNT}/bin/tput -T xterm cols;"
        f"ldd {MOUNT}/bin/tput | grep tinfo;"
        f"LD_LIBRARY_PATH=/cvmfs/{TOOLS}/lib /cvmfs/{TOOLS}/bin/clear -T xterm | od -c | head -1",
        job_env,
    )
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "80"
    assert f"libtinfo.so.6 => {MOUNT}/lib/libtinfo.so.6" in lines[1]
    assert "033" in lines[2]  # clear wrote an escape sequence
    # Programs and libraries ran through links to their cache objects, not copies of them.
    copies = Path(job_env["CVMFS_CACHE_BASE"]) / "interposer" / "x"
    assert not copies.is_dir() or list(copies.iterdir()) == []


def test_host_symlinks_into_cvmfs_are_followed(job_env, tmp_path):
    """``python -m venv`` with a Python from /cvmfs makes ``venv/bin/python`` a host symlink into
    /cvmfs, found by the shell through PATH after ``activate`` and named by the venv's scripts'
    ``#!``; ``~/sw -> /cvmfs/...`` is listed, read, run and entered. The kernel, following them,
    finds no /cvmfs: the tracer follows them instead, and the links themselves stay links."""
    venv, sw = tmp_path / "venv", tmp_path / "sw"
    script = (
        f"{PY} -m venv --without-pip {venv} && . {venv}/bin/activate;"
        "python -c 'import sys, json; print(sys.prefix)';"
        f"printf '#!{venv}/bin/python\nimport sys; print(sys.argv[1:])\n' > {venv}/bin/tool;"
        f"chmod +x {venv}/bin/tool && tool a b;"
        f"ln -s {MOUNT}/bin/busybox {tmp_path}/echo && cd {tmp_path} && ./echo linked;"
        f"ln -s {MOUNT}/etc {sw} && cd {sw} && cat example.conf | wc -l && /bin/pwd;"
        f"ls {sw}/ | head -1; stat -c %F {sw} {sw}/; readlink {sw}; wc -l < {sw}/example.conf;"
        f"touch {sw}/new 2>&1 | grep -c 'Read-only file system'"
    )
    r = sh(script, job_env)
    assert r.stdout.decode().splitlines() == [
        str(venv), "['a', 'b']", "linked", "3", f"{MOUNT}/etc", "example.conf",
        "symbolic link", "directory", f"{MOUNT}/etc", "3", "1",
    ]  # fmt: skip


def test_runpath_with_origin_finds_libraries_in_the_repository(job_env):
    r = sh(f"{MOUNT}/bin/rpath-cols; cd {MOUNT}/bin && ./rpath-cols", job_env)
    assert r.stdout.decode().split() == ["cols=80", "cols=80"]


def test_program_whose_elf_interpreter_lives_in_cvmfs(job_env, tmp_path):
    r = sh(f"{MOUNT}/bin/own-interp; readlink -f {MOUNT}/bin/own-interp", job_env)
    assert r.stdout.decode().split() == ["sum=60", f"{MOUNT}/bin/own-interp"]
    # the same program outside /cvmfs (a user's build against a /cvmfs toolchain)
    copy = tmp_path / "own-interp"
    r = sh(f"cp {MOUNT}/bin/own-interp {copy} && {copy}", job_env)
    assert r.stdout.decode().split() == ["sum=60"]


def test_static_binary_and_applet_symlink(job_env):
    r = sh(f"{MOUNT}/bin/busybox ls {MOUNT}/cases | head -3; {MOUNT}/bin/ash -c 'echo $0 ok'", job_env)
    out = r.stdout.decode().splitlines()
    assert out[-1] == f"{MOUNT}/bin/ash ok"
    assert "abs-link" in out


def test_shebang_scripts_with_interpreters_in_cvmfs(job_env):
    r = sh(
        f"{MOUNT}/bin/pyscript one two; {MOUNT}/bin/bbscript x y; cd {MOUNT}/bin && ./bbscript rel", job_env
    )
    out = dict(
        line.split(" ", 1) for line in r.stdout.decode().splitlines() if not line.startswith("busybox")
    )
    assert out["executable"] == PY
    assert out["prefix"] == f"{MOUNT}/python"
    assert out["argv0"] == f"{MOUNT}/bin/pyscript"
    assert out["exe"] == f"{MOUNT}/python/bin/python3.11"
    assert out["os"] == f"{MOUNT}/python/lib/python3.11/os.py"
    assert out["args"] == "one two"
    bb = [line for line in r.stdout.decode().splitlines() if line.startswith("busybox")]
    assert bb == [f"busybox script {MOUNT}/bin/bbscript x y", "busybox script ./bbscript rel"]
    # a long argument list (more than the tracer's per-thread scratch holds)
    r = sh(f"{MOUNT}/bin/bbscript $(seq 20000) | wc -w", job_env)
    assert int(r.stdout) == 20003


def test_shell_scripts_find_their_siblings_through_dollar_zero(job_env):
    r = sh(f"{MOUNT}/bin/example-env.sh; {MOUNT}/bin/exampkg; {MOUNT}/cases/runme-0755.sh", job_env)
    out = r.stdout.decode().splitlines()
    assert out[0].startswith(f"PATH={MOUNT}/bin:")
    assert out[1] == f"LD_LIBRARY_PATH={MOUNT}/lib"
    assert out[3].startswith("exampkg 1.0.0")
    assert out[-1] == "runme"


BASH = f"""
set -e
shopt -s nullglob
source {MOUNT}/etc/profile.d/example.sh
n=0; for f in {MOUNT}/cases/*.txt; do n=$((n+1)); done; echo "txt=$n"
[[ -d {MOUNT}/cases/dir-link && -L {MOUNT}/cases/dir-link && -r {MOUNT}/etc/example.conf ]] && echo tests-ok
[[ -w {MOUNT}/etc/example.conf ]] || echo not-writable
cd {MOUNT}/cases/dir-link; echo "logical=$PWD physical=$(pwd -P)"
pushd {MOUNT}/deep/d1/d2 >/dev/null; popd >/dev/null; echo "back=$PWD"
mapfile -t lines < {MOUNT}/etc/example.conf; echo "lines=${{#lines[@]}}"
while read -r word rest; do echo "first=$word"; break; done < {MOUNT}/README.txt
"""


def test_bash_features_over_cvmfs(job_env):
    r = sh(f"exec bash -c '{BASH}'", job_env)
    out = r.stdout.decode().splitlines()
    assert out == [
        "txt=4",
        "tests-ok",
        "not-writable",
        f"logical={MOUNT}/cases/dir-link physical={MOUNT}/lib/python/exampkg",
        f"back={MOUNT}/cases/dir-link",
        "lines=3",
        "first=Example",
    ]


def test_cpython_in_the_repository_finds_its_prefix_and_stdlib(job_env):
    code = textwrap.dedent(
        """
        import sys, os, json, email.parser, http.client, xml.dom.minidom, asyncio, logging, decimal
        import csv, unittest, argparse, urllib.request, zipfile, tarfile, sqlite3, hashlib
        print(sys.executable, sys.prefix, sys.base_prefix)
        print(os.__file__, json.__file__, sqlite3.__file__)
        print(os.path.realpath(sys.executable), os.readlink("/proc/self/exe"))
        print(hashlib.sha256(b"x").hexdigest()[:8], decimal.Decimal("1.10") + 1)
        print([l.split()[-1] for l in open("/proc/self/maps") if "python3.11" in l][0])
        """
    )
    r = sh(
        f"{PY} -c '{code}' && cd {MOUNT}/python/bin && ./python3 -c 'import sys; print(sys.prefix)'", job_env
    )
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == [PY, f"{MOUNT}/python", f"{MOUNT}/python"]
    assert all(p.startswith(f"{MOUNT}/python/lib/python3.11/") for p in lines[1].split())
    assert lines[2].split() == [f"{MOUNT}/python/bin/python3.11"] * 2
    assert lines[3] == "2d711642 2.10"
    assert lines[4] == f"{MOUNT}/python/bin/python3.11"  # /proc/self/maps shows /cvmfs paths
    assert lines[5] == f"{MOUNT}/python"
    # PATH lookup: python3 found in /cvmfs by the shell and by CPython itself
    r = sh(
        f"PATH={MOUNT}/python/bin:$PATH python3 -c 'import sys; print(sys.executable, sys.prefix)'", job_env
    )
    assert r.stdout.decode().split() == [f"{MOUNT}/python/bin/python3", f"{MOUNT}/python"]


def test_make_j2_builds_sources_from_cvmfs(job_env, tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    r = sh(f"make -j2 -C {build} -f {MOUNT}/src/Makefile SRC={MOUNT}/src && {build}/prog", job_env)
    assert r.stdout.decode().splitlines()[-1] == "sum=60"
    # make's timestamp logic uses stat() on the sources: nothing is rebuilt the second time
    r = sh(f"make -C {build} -f {MOUNT}/src/Makefile SRC={MOUNT}/src", job_env)
    assert b"is up to date" in r.stdout


THREADS = """
import hashlib, os, sys, threading
from concurrent.futures import ThreadPoolExecutor
root = sys.argv[1]
files = sorted(
    os.path.join(d, n) for d, _, names in os.walk(root) for n in names
    if not os.path.islink(os.path.join(d, n))
)
def digest(p):
    with open(p, "rb") as f:
        data = f.read()
        st = os.fstat(f.fileno())
    return p, hashlib.sha256(data).hexdigest(), st.st_size, st.st_mtime
with ThreadPoolExecutor(8) as ex:
    results = list(ex.map(digest, files * 3))
seen = {}
for p, d, size, mtime in results:
    seen.setdefault(p, set()).add((d, size, mtime))
for p in files:
    (d, size, mtime), = seen[p]
    st = os.stat(p)
    assert (size, mtime) == (st.st_size, st.st_mtime), p
    print(d, p[len(root) + 1:])
sys.stdout.flush()
def go():
    os.execv(sys.argv[2] + "/bin/busybox", ["busybox", "echo", "exec from thread"])
t = threading.Thread(target=go)
t.start()
t.join()
print("not reached")
"""


def test_threads_read_concurrently_and_a_thread_can_exec(job_env, sw_src, tmp_path):
    script = tmp_path / "threads.py"
    script.write_text(THREADS)
    r = cvmfs_run(["python3", str(script), f"{MOUNT}/share", MOUNT], job_env)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[-1] == "exec from thread"
    for line in lines[:-1]:
        digest, rel = line.split(" ", 1)
        assert hashlib.sha256((sw_src / "share" / rel).read_bytes()).hexdigest() == digest, rel
    assert len(lines) - 1 == sum(1 for p in (sw_src / "share").rglob("*") if p.is_file())


def test_signal_handlers_interrupting_translated_calls(job_env, tmp_path):
    source = Path(__file__).parent / "data" / "sigstress.c"
    binary = tmp_path / "sigstress"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    # ptrace stops: the opens run in the stub, which signal handlers interrupt and re-enter;
    # notifications: the supervisor opens and hands the fd over while signals arrive.
    for options, marker in ((["--ptrace-only"], b"stub-nested"), ([], b"'notified'")):
        r = cvmfs_run(
            [str(binary), f"{MOUNT}/etc/example.conf", "4000"], job_env, options=["--stats", *options]
        )
        assert r.returncode == 0, r.stderr.decode()
        handled = int(r.stdout.split(b"handled=")[1].split()[0])
        assert handled > 100 and b"bad=0" in r.stdout
        assert marker in r.stderr  # the handlers did run inside the stub (and it held) / notified


def test_first_translated_call_of_a_process_stops_once(job_env):
    """The stub is mapped at a process's first rewritten call, which then runs in it straight
    from the mapping's stop: static ``cat`` of a /cvmfs file traps its one ``openat`` once."""
    r = cvmfs_run(
        [f"{MOUNT}/bin/busybox", "cat", f"{MOUNT}/etc/example.conf"],
        job_env,
        options=["--stats", "--ptrace-only"],
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.startswith(b"# example configuration\n")
    line = next(x for x in r.stderr.decode().splitlines() if x.startswith("cvmfs-client run: stops "))
    stats = ast.literal_eval(line.split("stops ", 1)[1])
    assert stats["stops"]["openat"] == 1 and stats["actions"]["stub"] == 1, stats


def test_programs_opened_from_relative_paths_and_fds(job_env, tmp_path: Path):
    code = textwrap.dedent(
        f"""
        import os
        os.chdir("{MOUNT}/cases")
        print(os.getcwd(), os.readlink("/proc/self/cwd"))
        print(open("rel-link").read().splitlines()[0])
        print(open("../etc/example.conf").read().splitlines()[0])
        d = os.open("{MOUNT}/etc", os.O_RDONLY | os.O_DIRECTORY)
        fd = os.open("example.conf", os.O_RDONLY, dir_fd=d)
        print(os.readlink(f"/proc/self/fd/{{fd}}"), os.readlink(f"/proc/self/fd/{{d}}"))
        print(os.read(fd, 9))
        p = os.open("{MOUNT}/etc/example.conf", os.O_PATH)
        print(open(f"/proc/self/fd/{{p}}", "rb").read(9), open(f"/dev/fd/{{p}}", "rb").read(9))
        print(os.stat("example.conf", dir_fd=d).st_size == os.fstat(fd).st_size)
        print(sorted(os.listdir("{MOUNT}/..")), os.path.exists("{MOUNT}/../{TOOLS}/bin/tput"))
        os.chdir("..")
        print(os.getcwd(), sorted(os.listdir("."))[:3], os.stat("..").st_ino == os.stat("/cvmfs").st_ino)
        os.chdir("../..")
        print(os.getcwd())
        os.chdir("{MOUNT}/deep/d1/d2")
        print(open("../../../cases/dir-link/__init__.py").read().count("version"))
        """
    )
    script = tmp_path / "paths.py"
    script.write_text(code)
    r = cvmfs_run(["python3", str(script)], job_env)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode().splitlines()
    assert out[0] == f"{MOUNT}/cases {MOUNT}/cases"
    assert out[1] == out[2] == "# example configuration"
    assert out[3] == f"{MOUNT}/etc/example.conf {MOUNT}/etc"
    assert out[4] == "b'# example'"
    assert out[5] == "b'# example' b'# example'"  # reopening an O_PATH fd reads content, not zeros
    assert out[6] == "True"
    assert out[7] == f"['sw.example.org', '{TOOLS}'] True"
    assert out[8] == f"{MOUNT} ['README.txt', 'bin', 'cases'] True"
    assert out[9] == "/"
    assert int(out[10]) >= 1


MPI_HELLO = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long bytes = 0;
    char buf[4096];
    size_t n;
    FILE *f = fopen(argv[1], "r");
    if (f == NULL)
        bytes = -1000000;
    else {
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            bytes += n;
        fclose(f);
    }
    long total = 0;
    MPI_Reduce(&bytes, &total, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0)
        printf("ranks=%d total=%ld\n", size, total);
    MPI_Finalize();
    return 0;
}
"""


def test_mpi_ranks_of_a_program_in_cvmfs(job_env, tmp_path):
    """The HPC case: the host's mpirun (OpenMPI: orted, PMIx, shared-memory transport, progress
    threads) starts four ranks of a program that lives in /cvmfs, each rank reads a /cvmfs
    file, and the reduced total comes back to rank 0."""
    mpicc, mpirun = shutil.which("mpicc"), shutil.which("mpirun")
    if mpicc is None or mpirun is None:
        pytest.fail("mpicc/mpirun not found: apt-get install -y openmpi-bin libopenmpi-dev", pytrace=False)
    fqrn = "mpi.example.org"
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "data").mkdir()
    (tmp_path / "hello.c").write_text(MPI_HELLO)
    subprocess.run([mpicc, "-O1", "-o", str(src / "bin" / "hello"), str(tmp_path / "hello.c")], check=True)
    (src / "data" / "input.txt").write_bytes(b"x" * 100_000)
    keys = tmp_path / "keys"
    publish(src, fqrn, tmp_path / "s1" / fqrn, keys)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(keys / f"{fqrn}.pub", trusted)
    server = start_nginx(tmp_path / "s1", tmp_path / "nginx")
    try:
        env = dict(job_env, CVMFS_SERVER_URL=server.server_url, CVMFS_KEYS_DIR=str(trusted))
        env["OMPI_MCA_rmaps_base_oversubscribe"] = "1"  # 4 ranks on a 2-core machine
        if os.getuid() == 0:
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        m = f"/cvmfs/{fqrn}"
        r = cvmfs_run([mpirun, "-n", "4", f"{m}/bin/hello", f"{m}/data/input.txt"], env, timeout=120)
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["ranks=4", "total=400000"], r.stderr.decode()


def test_calls_relative_to_a_repository_root_fd_see_cvmfs_above_it(job_env, tmp_path: Path):
    # The root's fd stays below the reserved range, so fstatat(root, "..") is translated: above
    # the repository is /cvmfs, not the shadow tree's own directories (seccomp.FdRanges).
    code = textwrap.dedent(
        f"""
        import os
        cvmfs = os.stat("/cvmfs").st_ino
        for _ in range(3):  # the first open is Python's, the next ones the C loop's where built
            r = os.open("{MOUNT}", os.O_RDONLY | os.O_DIRECTORY)
            up = os.stat("..", dir_fd=r, follow_symlinks=False)
            bin_ = os.stat("bin", dir_fd=r, follow_symlinks=False)
            print(up.st_ino == cvmfs, bin_.st_ino == os.lstat("{MOUNT}/bin").st_ino,
                  os.stat("bin/..", dir_fd=r, follow_symlinks=False).st_ino == os.lstat("{MOUNT}").st_ino)
            os.close(r)
        """
    )
    script = tmp_path / "root_fd.py"
    script.write_text(code)
    for extra in ({}, {"CVMFS_CLIENT_PURE_PYTHON": "1"}):
        r = cvmfs_run(["python3", str(script)], {**job_env, **extra})
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.decode().splitlines() == ["True True True"] * 3, extra


def test_fexecve_of_a_script_needs_an_fd_its_interpreter_can_open(job_env, tmp_path: Path):
    # fexecve(3): a script run through a close-on-exec fd fails with ENOENT (its interpreter
    # would be given /dev/fd/N, closed by then); through an inheritable fd it runs.
    code = textwrap.dedent(
        f"""
        import errno, os
        for inheritable in (False, True):
            fd = os.open("{MOUNT}/cases/runme-0755.sh", os.O_RDONLY)
            os.set_inheritable(fd, inheritable)
            pid = os.fork()
            if pid == 0:
                try:
                    os.execve(fd, ["runme"], dict(os.environ))
                except OSError as e:
                    print(errno.errorcode[e.errno], flush=True)
                os._exit(99)
            print(inheritable, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
        """
    )
    script = tmp_path / "fexec.py"
    script.write_text(code)
    r = cvmfs_run(["python3", str(script)], job_env)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().splitlines() == ["ENOENT", "False 99", "runme", "True 0"]
