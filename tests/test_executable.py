"""The one-file executable (``python -m cvmfs_client.build_executable``), as a batch job uses it.

The executable is built once per source state and cached (the build takes ~30-60 s): under
``$CVMFS_EXECUTABLE_CACHE`` if set, else pytest's cache directory, keyed by a hash of every
source and data file that goes into it plus the PyInstaller and Python versions. A fresh
checkout (CI) therefore builds it. Then it runs from a job directory, with a site configuration
in ``cvmfs-config/`` beside it, in an empty environment (``env -i``, PATH=/usr/bin:/bin, an
empty HOME), against a repository served by a real nginx.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmfs_client import frozen
from interposer.job import ptrace_denied_message
from tests.integration.nginx import NginxError, NginxServer, free_port, start_nginx

ROOT = Path(__file__).resolve().parent.parent
FQRN = "bundle.example.org"
NAME = "cvmfs-client"
BUILD_INPUTS = ("cvmfs_client", "interposer", "proxy", "fixtures")


def _source_key() -> str:
    import PyInstaller

    h = hashlib.sha256(f"{PyInstaller.__version__} {sys.version} {sys.executable}".encode())
    files = [ROOT / "pyproject.toml"]
    for top in BUILD_INPUTS:
        files += [p for p in (ROOT / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    for p in sorted(files):
        h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:20]


@pytest.fixture(scope="session")
def executable(request: pytest.FixtureRequest) -> Path:
    """The built executable, from the cache when the sources did not change."""
    from cvmfs_client.build_executable import build

    override = os.environ.get("CVMFS_EXECUTABLE_CACHE")
    cache = Path(override) if override else Path(request.config.cache.mkdir("cvmfs-client-executable"))
    key = _source_key()
    built = cache / key / NAME
    if not built.is_file():
        started = time.monotonic()
        staging = cache / f"{key}.tmp{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        build(staging)
        for old in cache.iterdir():  # keep one version only: each is ~30 MB
            if old != staging and ".tmp" not in old.name:  # not another session's build in progress
                shutil.rmtree(old, ignore_errors=True)
        if not built.is_file():  # another session may have finished the same build first
            staging.rename(cache / key)
        print(f"built {built} in {time.monotonic() - started:.0f} s")
    return built


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, NginxServer]]:
    """The example tree published as FQRN and served by nginx: (source, keys dir, server)."""
    from cvmfs_client.publisher import publish
    from fixtures.example_tree import build_example_tree

    base = tmp_path_factory.mktemp("bundle-repo")
    src = build_example_tree(base / "src", fqrn=FQRN)
    publish(src, FQRN, base / "s0" / FQRN, base / "keys")
    try:
        server = start_nginx(base / "s0", base / "nginx")
    except NginxError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield src, base / "keys", server
    server.stop()


@pytest.fixture
def job_dir(tmp_path: Path, executable: Path, repository: tuple[Path, Path, NginxServer]) -> Path:
    """What a batch job gets: the executable and ``cvmfs-config/`` (site configuration + key)."""
    _src, keys, server = repository
    job = tmp_path / "job"
    conf = job / "cvmfs-config"
    (conf / "keys").mkdir(parents=True)
    shutil.copy2(executable, job / NAME)
    shutil.copy2(keys / f"{FQRN}.pub", conf / "keys" / f"{FQRN}.pub")
    (conf / "default.local").write_text(
        f"CVMFS_SERVER_URL={server.server_url}\nCVMFS_HTTP_PROXY=DIRECT\nCVMFS_REPOSITORIES={FQRN}\n"
    )
    return job


def clean_env(home: Path, **extra: str) -> list[str]:
    """``env -i`` with nothing but PATH and an empty HOME (plus ``extra``)."""
    home.mkdir(parents=True, exist_ok=True)
    assignments = ["PATH=/usr/bin:/bin", f"HOME={home}", *(f"{k}={v}" for k, v in extra.items())]
    return ["env", "-i", *assignments]


def _regular_files(src: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file of the source tree."""
    out = {}
    for p in sorted(src.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(src).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_run_sha256sum_in_empty_environment(job_dir: Path, repository, tmp_path: Path) -> None:
    src, _keys, _server = repository
    expected = _regular_files(src)
    assert len(expected) > 10
    # a job's working directory is the repository root, so sha256sum prints relative paths
    cmd = [
        *clean_env(tmp_path / "home"),
        str(job_dir / NAME),
        "run",
        "--",
        "/bin/sh",
        "-c",
        f'cd /cvmfs/{FQRN} && sha256sum -- "$@"',
        "sh",
        *expected,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = {}
    for line in done.stdout.splitlines():
        digest, name = line.split(maxsplit=1)
        got[name.lstrip("*")] = digest
    assert got == expected


def test_configuration_beside_the_executable(job_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = subprocess.run(
        [*clean_env(home), str(job_dir / NAME), "config", FQRN], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    conf = job_dir / "cvmfs-config"
    assert f"# from {conf}/default.local" in done.stdout
    assert f"CVMFS_KEYS_DIR={conf}/keys" in done.stdout
    # an explicit --config-dir wins over the directory beside the executable
    empty = tmp_path / "empty-conf"
    empty.mkdir()
    done = subprocess.run(
        [*clean_env(home), str(job_dir / NAME), "--config-dir", str(empty), "config", FQRN],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert str(conf) not in done.stdout


def test_prewarm_alien_cache_then_jobs_read_without_data_downloads(
    job_dir: Path, repository, tmp_path: Path
) -> None:
    src, _keys, server = repository
    alien = tmp_path / "alien"
    done = subprocess.run(
        [
            *clean_env(tmp_path / "login-home"),
            str(job_dir / NAME),
            "prewarm",
            "--alien-cache",
            str(alien),
            f"/cvmfs/{FQRN}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"CVMFS_ALIEN_CACHE={alien}" in done.stdout
    before = len(server.access_lines())
    files = sorted(_regular_files(src).items())[:20]
    done = subprocess.run(
        [
            *clean_env(tmp_path / "node-home", CVMFS_ALIEN_CACHE=str(alien)),
            str(job_dir / NAME),
            "run",
            "--",
            "sha256sum",
            *(f"/cvmfs/{FQRN}/{name}" for name, _ in files),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == [digest for _, digest in files]
    new = server.access_lines()[before:]
    assert not [line for line in new if "/data/" in line], new


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"the proxy did not listen on port {port} within {timeout} s")


def test_proxy_subcommand_serves_a_second_client(job_dir: Path, repository, tmp_path: Path) -> None:
    src, _keys, _server = repository
    port = free_port()
    proxy = subprocess.Popen(
        [
            *clean_env(tmp_path / "proxy-home"),
            str(job_dir / NAME),
            "proxy",
            "--listen",
            f"127.0.0.1:{port}",
            "--cache-dir",
            str(tmp_path / "proxy-cache"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_listening(port, proxy)
        name, digest = next((n, d) for n, d in sorted(_regular_files(src).items()) if n.startswith("bin/"))
        done = subprocess.run(
            [
                *clean_env(tmp_path / "client-home", CVMFS_HTTP_PROXY=f"http://127.0.0.1:{port}"),
                str(job_dir / NAME),
                "run",
                "--",
                "sha256sum",
                f"/cvmfs/{FQRN}/{name}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[0] == digest
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/cvmfs-proxy/stats", timeout=10) as reply:
            stats = json.loads(reply.read())
        assert stats["upstream_requests"] > 0 and stats["requests"] >= stats["upstream_requests"]
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()


# -- no ptrace -----------------------------------------------------------------------------------

_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_EPERM = 1
_NR_PTRACE = 101  # x86-64


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _deny_ptrace() -> None:
    """preexec_fn: a seccomp filter that fails ptrace(2) with EPERM, as container profiles do."""
    ld_w_abs, jeq_k, ret_k = 0x20, 0x15, 0x06
    prog = (_SockFilter * 4)(
        _SockFilter(ld_w_abs, 0, 0, 0),  # A = seccomp_data.nr
        _SockFilter(jeq_k, 0, 1, _NR_PTRACE),
        _SockFilter(ret_k, 0, 0, _SECCOMP_RET_ERRNO | _EPERM),
        _SockFilter(ret_k, 0, 0, _SECCOMP_RET_ALLOW),
    )
    fprog = _SockFprog(4, prog)
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


@pytest.mark.parametrize("how", ["executable", "installed"])
def test_no_ptrace_is_one_clear_line_and_exit_125(
    how: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if how == "executable":
        cmd = [str(request.getfixturevalue("executable"))]
    else:
        cmd = [sys.executable, "-m", "cvmfs_client.cli"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CVMFS_CLIENT_CONFIG_DIR": str(tmp_path)}
    if how == "installed":
        env["PYTHONPATH"] = str(ROOT)
    started = time.monotonic()
    done = subprocess.run(
        [*cmd, "run", "--", "/bin/true"],
        env=env,
        preexec_fn=_deny_ptrace,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert time.monotonic() - started < 20
    assert done.returncode == 125
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("cvmfs-client run: ptrace is not permitted here (")
    assert lines[0].endswith("): cannot run jobs under the interposer")


def test_ptrace_denied_message_names_yama(tmp_path: Path) -> None:
    yama = tmp_path / "ptrace_scope"
    yama.write_text("3\n")
    assert "(kernel.yama.ptrace_scope=3)" in ptrace_denied_message(yama)
    yama.write_text("1\n")
    assert "seccomp" in ptrace_denied_message(yama) and "ptrace_scope=1" in ptrace_denied_message(yama)
    assert "seccomp" in ptrace_denied_message(tmp_path / "absent")


# -- the frozen entry point's rules, without building ------------------------------------------------


def test_bundled_config_dir_rule(tmp_path: Path) -> None:
    exe = tmp_path / "job" / NAME
    exe.parent.mkdir()
    exe.write_text("")
    assert frozen.bundled_config_dir(str(exe), ["run"], {}) is None  # no cvmfs-config/ yet
    (exe.parent / "cvmfs-config").mkdir()
    assert frozen.bundled_config_dir(str(exe), ["run", "--", "x"], {}) == exe.parent / "cvmfs-config"
    assert frozen.bundled_config_dir(str(exe), ["--config-dir", "/etc/x", "ls"], {}) is None
    assert frozen.bundled_config_dir(str(exe), ["--config-dir=/etc/x", "ls"], {}) is None
    assert frozen.bundled_config_dir(str(exe), ["run", "--", "tool", "--config-dir"], {}) is not None
    assert frozen.bundled_config_dir(str(exe), ["ls"], {"CVMFS_CLIENT_CONFIG_DIR": "/x"}) is None
    link = tmp_path / "elsewhere"
    link.symlink_to(exe)  # symlinks are resolved: the file's own directory counts
    assert frozen.bundled_config_dir(str(link), ["ls"], {}) == exe.parent / "cvmfs-config"


def test_restore_environment() -> None:
    env = {"LD_LIBRARY_PATH": "/tmp/_MEI1", "LD_LIBRARY_PATH_ORIG": "/opt/lib", "X": "1"}
    frozen.restore_environment(env)
    assert env == {"LD_LIBRARY_PATH": "/opt/lib", "X": "1"}
    env = {"LD_LIBRARY_PATH": "/tmp/_MEI1"}
    frozen.restore_environment(env)
    assert env == {}
