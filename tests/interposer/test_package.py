"""``cvmfs-client package create`` / ``package run`` with real programs: record a job with
``run -n -e``, pack what it used, take the original files away, run it from the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.interposer.conftest import JOB_TIMEOUT, cvmfs_run
from tests.interposer.trees import MOUNT

# Prints the same line wherever it runs, then whether each argument exists, then the inode of
# the ELF loader mapped into it (from /proc/self/maps), to tell whose loader ran.
PY_CODE = """
import json, sqlite3, ssl, decimal, os, sys
print(json.dumps([sqlite3.sqlite_version, ssl.OPENSSL_VERSION, str(decimal.Decimal(1) / 7)]))
for p in sys.argv[1:]:
    try:
        os.stat(p)
        print(p, "visible")
    except FileNotFoundError:
        print(p, "ENOENT")
maps = [l.split() for l in open("/proc/self/maps")]
print("loader", sorted({(f[5], int(f[4])) for f in maps if len(f) > 5 and "ld-linux" in f[5]}))
"""
GREET_C = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
const char *greeting(void);
int main(int argc, char **argv) {
    printf("%s\n", greeting());
    for (int i = 1; i < argc; i++) {
        struct stat st;
        printf("%s %s\n", argv[i], stat(argv[i], &st) == 0 ? "visible" : strerror(errno));
    }
    return 0;
}
"""
LIBGREET_C = 'const char *greeting(void) { return "hello from libgreet, 6*7=42"; }\n'
HOST_LOADER = os.path.realpath("/lib64/ld-linux-x86-64.so.2")


def cli(args: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "cvmfs_client.cli", *args],
        env=env,
        capture_output=True,
        timeout=JOB_TIMEOUT,
        **kw,  # type: ignore[arg-type]
    )


def ok(r: subprocess.CompletedProcess[bytes]) -> str:
    assert r.returncode == 0, (
        f"exit {r.returncode}\nstdout:\n{r.stdout.decode()}\nstderr:\n{r.stderr.decode()}"
    )
    return r.stdout.decode()


def record_and_pack(command: list[str], env: dict[str, str], tmp_path: Path, cwd: Path) -> tuple[str, Path]:
    """Run ``command`` under ``run -n -e``, then ``package create``: (its output, the package)."""
    names, envf, pkg = tmp_path / "names", tmp_path / "env", tmp_path / "pkg"
    out = ok(cvmfs_run(command, env, options=["-n", str(names), "-e", str(envf)], cwd=cwd))
    r = cli(["package", "create", "-n", str(names), "-e", str(envf), "-o", str(pkg)], env)
    ok(r)
    assert f"package {pkg}:" in r.stdout.decode()
    return out, pkg


def loader(output: str) -> list[tuple[str, int]]:
    """(path, inode) of the ELF loader mapped into the job, as its /proc/self/maps says."""
    line = output.strip().split("\n")[-1]
    assert line.startswith("loader ")
    return eval(line.split(" ", 1)[1])  # noqa: S307 - a list of tuples we printed


def test_portable_python_from_cvmfs_runs_without_repository_or_host_files(job_env, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = dict(job_env, PATH=f"{MOUNT}/python/bin:/usr/bin:/bin", LD_LIBRARY_PATH=f"{MOUNT}/lib")
    recorded, pkg = record_and_pack(["python3", "-c", PY_CODE, "/no/such/probe"], env, tmp_path, work)
    first = recorded.split("\n")[0]
    assert first.startswith('["3.') and "OpenSSL" in first and "0.142857" in first
    assert loader(recorded) == [(HOST_LOADER, os.stat(HOST_LOADER).st_ino)]

    # No repository any more (a dead server, an empty cache), a host file made after packing:
    host_only = tmp_path / "host-only.txt"
    host_only.write_text("not in the package\n")
    assert os.path.exists("/usr/bin/gcc") and not os.path.exists("/cvmfs")
    gone = dict(
        job_env,
        CVMFS_SERVER_URL="http://127.0.0.1:9/cvmfs/@fqrn@",
        CVMFS_CACHE_BASE=str(tmp_path / "empty-cache"),
    )
    unused = f"{MOUNT}/README.txt"  # in the repository, never read by the job: not in the package
    r = cli(
        ["package", "run", str(pkg), "--", "python3", "-c", PY_CODE, "/usr/bin/gcc", str(host_only), unused],
        gone,
    )
    out = ok(r).split("\n")
    assert out[0] == first  # the same result
    assert out[1:4] == ["/usr/bin/gcc ENOENT", f"{host_only} ENOENT", f"{unused} ENOENT"]
    # the package's loader (the kernel opens it: PT_INTERP), under the job's name for it
    package_loader = pkg / "root" / HOST_LOADER.lstrip("/")
    assert loader(ok(r)) == [(HOST_LOADER, os.stat(package_loader).st_ino)]
    assert r.stderr == b""


def _build_greet(app: Path) -> None:
    (app / "bin").mkdir(parents=True)
    (app / "lib").mkdir()
    (app / "src").mkdir()
    (app / "src" / "greet.c").write_text(GREET_C)
    (app / "src" / "libgreet.c").write_text(LIBGREET_C)
    gcc = shutil.which("gcc")
    assert gcc, "gcc not found: install it with `apt-get install -y gcc`"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-o", str(app / "lib" / "libgreet.so"), str(app / "src" / "libgreet.c")],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [gcc, "-o", str(app / "bin" / "greet"), str(app / "src" / "greet.c"), f"-L{app / 'lib'}", "-lgreet"],
        check=True,
        capture_output=True,
    )


def test_portable_c_program_with_its_own_library_runs_after_its_directory_is_deleted(job_env, tmp_path):
    app = tmp_path / "app"
    _build_greet(app)
    env = dict(job_env, PATH=f"{app / 'bin'}:/usr/bin:/bin", LD_LIBRARY_PATH=str(app / "lib"))
    recorded, pkg = record_and_pack(["greet", "/no/such/probe"], env, tmp_path, tmp_path)
    assert recorded == "hello from libgreet, 6*7=42\n/no/such/probe No such file or directory\n"
    shutil.rmtree(app)  # PATH and LD_LIBRARY_PATH now name nothing on the host
    assert shutil.which("greet", path=env["PATH"]) is None

    probes = ["/no/such/probe", "/usr/bin/gcc", str(app / "bin" / "greet")]
    out = ok(cli(["package", "run", str(pkg), "--", "greet", *probes], job_env))
    assert out == (
        "hello from libgreet, 6*7=42\n/no/such/probe No such file or directory\n"
        f"/usr/bin/gcc No such file or directory\n{app}/bin/greet visible\n"
    )
    # --allow-host shows a host tree inside the package, and nothing else
    r = cli(
        [
            "package",
            "run",
            str(pkg),
            "--allow-host",
            "/usr/bin",
            "--",
            "greet",
            "/usr/bin/gcc",
            "/etc/hostname",
        ],
        job_env,
    )
    assert ok(r).split("\n")[1:3] == ["/usr/bin/gcc visible", "/etc/hostname No such file or directory"]


def test_package_run_uses_only_the_recorded_environment_and_working_directory(job_env, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    code = "import os; print(os.getcwd(), os.environ.get('MARK'), os.environ.get('HOST_ONLY'))"
    env = dict(job_env, PATH=f"{MOUNT}/python/bin:/usr/bin:/bin", MARK="recorded", PWD=str(work))
    recorded, pkg = record_and_pack(["python3", "-c", code], env, tmp_path, work)
    assert recorded == f"{work} recorded None\n"
    out = ok(cli(["package", "run", str(pkg), "--", "python3", "-c", code], dict(job_env, HOST_ONLY="x")))
    assert out == f"{work} recorded None\n"
    out = ok(cli(["package", "run", str(pkg), "--cwd", "/", "--", "python3", "-c", code], job_env))
    assert out == "/ recorded None\n"


def test_package_errors_have_the_cli_exit_codes(job_env, tmp_path):
    r = cli(
        [
            "package",
            "create",
            "-n",
            str(tmp_path / "none"),
            "-e",
            str(tmp_path / "e"),
            "-o",
            str(tmp_path / "p"),
        ],
        job_env,
    )
    assert r.returncode == 2 and b"name list" in r.stderr and b"none: no such file" in r.stderr
    r = cli(["package", "run", str(tmp_path), "--", "true"], job_env)
    assert r.returncode == 2 and b"has no manifest.json: not a package" in r.stderr
    names = tmp_path / "names"
    names.write_text("/bin/true|fullcopy\n")
    (tmp_path / "env").write_bytes(b"PATH=/bin\0")
    ok(
        cli(
            ["package", "create", "-n", str(names), "-e", str(tmp_path / "env"), "-o", str(tmp_path / "p")],
            job_env,
        )
    )
    r = cli(["package", "run", str(tmp_path / "p"), "--", "sh", "-c", "true"], job_env)
    assert r.returncode == 127 and b"sh: No such file or directory" in r.stderr  # no shell packaged
    # the package's loader (added: the kernel opens it) runs, and finds no libc in the package
    r = cli(["package", "run", str(tmp_path / "p"), "--", "/bin/true"], job_env)
    assert r.returncode == 127 and b"libc.so.6: cannot open shared object file" in r.stderr
