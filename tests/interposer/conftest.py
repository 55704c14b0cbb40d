"""Fixtures for the interposer tests: real repositories behind a real nginx, and a way to run jobs.

Everything expensive is built once per session: the ``sw.example.org`` tree (``trees.py``) is
published with our publisher, the real-publisher ``tools.example.org`` fixture is served beside it,
one nginx serves both, and one cache is shared (so later tests also exercise the warm path).
Missing host tools fail the tests with the package to install, never skip them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from cvmfs_client.publisher import publish
from interposer import job
from interposer.session import prepare
from interposer.vfs import Namespace
from tests.integration.nginx import NginxError, NginxServer, start_nginx
from tests.interposer.trees import FQRN, MissingHostTool, build_sw_tree

TOOLS = "tools.example.org"
JOB_TIMEOUT = 90


@pytest.fixture(scope="session")
def sw_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_sw_tree(tmp_path_factory.mktemp("sw") / "src")
    except MissingHostTool as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def stratum1(
    tmp_path_factory: pytest.TempPathFactory, sw_src: Path, real_fixtures: Path
) -> Iterator[tuple[NginxServer, Path]]:
    """nginx serving sw.example.org (ours) and tools.example.org (real publisher); keys dir."""
    root = tmp_path_factory.mktemp("stratum1")
    keys = tmp_path_factory.mktemp("keys")
    publish(sw_src, FQRN, root / FQRN, keys)
    os.symlink(real_fixtures / TOOLS, root / TOOLS)
    trusted = tmp_path_factory.mktemp("trusted")
    shutil.copy(keys / f"{FQRN}.pub", trusted)
    shutil.copy(real_fixtures / TOOLS / f"{TOOLS}.pub", trusted)
    try:
        server = start_nginx(root, tmp_path_factory.mktemp("nginx"))
    except NginxError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server, trusted
    server.stop()


@pytest.fixture(scope="session")
def job_env(stratum1: tuple[NginxServer, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of a job: CVMFS_* pointing at the test nginx, an empty /etc/cvmfs stand-in."""
    server, trusted = stratum1
    config = tmp_path_factory.mktemp("etc-cvmfs")
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path_factory.mktemp("home")),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "CVMFS_CLIENT_CONFIG_DIR": str(config),
        "CVMFS_SERVER_URL": server.server_url,
        "CVMFS_KEYS_DIR": str(trusted),
        "CVMFS_HTTP_PROXY": "DIRECT",
        "CVMFS_CACHE_BASE": str(tmp_path_factory.mktemp("cache")),
        "CVMFS_REPOSITORIES": f"{FQRN},{TOOLS}",
    }


@pytest.fixture
def namespace(job_env: dict[str, str]) -> Iterator[Namespace]:
    """The job's /cvmfs as ``run`` makes it, in this process: for the translator's own tests."""
    options = prepare(environ=job_env)
    ns = Namespace(
        options.shadow_dir, job._opener(options), allowed=job._allowed(options), params=options.params
    )
    yield ns
    ns.close()


class StoppedThread:
    """A thread stopped in a call, as the translator sees it (``translate.Context``): its path
    argument, the memory it can read (address -> bytes), cwd ``/``, no fds."""

    def __init__(self, path: bytes | None, memory: dict[int, bytes] | None = None) -> None:
        self.tid = self.tgid = os.getpid()
        self.pure: bytes | None = None
        self.fd_target: str | None = None
        self.path = path
        self.memory = memory or {}

    def read_path(self, addr: int) -> bytes | None:
        return self.path

    def read_memory(self, addr: int, size: int) -> bytes | None:
        for base, data in self.memory.items():
            if 0 <= addr - base < len(data):
                return data[addr - base : addr - base + size]
        return None

    def cwd(self) -> str:
        return "/"

    def cwd_changed(self) -> None:
        pass

    def fd_path(self, fd: int) -> str | None:
        return None


def cvmfs_run(
    command: Sequence[str],
    env: dict[str, str],
    *,
    options: Sequence[str] = (),
    cwd: Path | None = None,
    input: bytes | None = None,
    timeout: float = JOB_TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    """``cvmfs-client run [options] -- command`` as a subprocess; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "cvmfs_client", "run", *options, "--", *command],
        env=env,
        cwd=cwd,
        input=input,
        capture_output=True,
        timeout=timeout,
    )


def sh(script: str, env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    """Run a shell script under the interposer; fail with its stderr if it fails."""
    r = cvmfs_run(["/bin/sh", "-c", script], env, **kw)  # type: ignore[arg-type]
    assert r.returncode == 0, (
        f"exit {r.returncode}\nstdout:\n{r.stdout.decode()}\nstderr:\n{r.stderr.decode()}"
    )
    return r


def probe_entries(src: Path) -> list[str]:
    """The tree's entries that the random-call probes (data/path_calls.py, change_calls.py) use:
    not the standard library (thousands more of the same kinds), nor the absolute and variant
    symlinks, whose targets differ between /cvmfs and the source tree by design."""
    skip = ("python/lib/python3.11/", "flavors")
    return sorted(
        rel
        for rel in (str(p.relative_to(src)) for p in src.rglob("*"))
        if not rel.startswith(skip) and not rel.endswith("abs-link")
    )


def native(script: str, cwd: Path, env: dict[str, str] | None = None) -> bytes:
    """The same script run directly on a local tree, for comparison."""
    return subprocess.run(
        ["/bin/sh", "-c", script], cwd=cwd, env=env, capture_output=True, check=True, timeout=JOB_TIMEOUT
    ).stdout


def assert_a_bug_kills_the_job(
    patch: str, then: str, message: bytes, env: dict[str, str], tmp_path: Path
) -> None:
    """``cvmfs-client run -- sh -c 'echo $$ > PIDFILE; THEN'`` in a Python where ``patch`` (code)
    breaks a part of the tracer: exit 70 naming the bug within seconds, and the job is gone."""
    pidfile = tmp_path / "pid"
    code = (
        f"import sys\n{patch}\nfrom cvmfs_client.cli import main\n"
        f"sys.argv = ['cvmfs-client', 'run', '--', 'sh', '-c', 'echo $$ > ' + sys.argv[1] + '; {then}']\n"
        "main()\n"
    )
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code, str(pidfile)], env=env, capture_output=True, timeout=60)
    assert r.returncode == 70, r.stderr.decode()
    assert b"internal error" in r.stderr and message in r.stderr
    assert time.monotonic() - t < 20
    assert not pidfile.exists() or not os.path.exists(f"/proc/{pidfile.read_text().strip()}/exe")
