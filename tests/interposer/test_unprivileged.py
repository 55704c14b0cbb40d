"""``cvmfs-client run`` as an ordinary user, as on a cluster: not as root, as the rest of the suite.

Bugs that only a user meets hid behind root here: the ELF interpreter link named by uid did
not fit the 27 bytes of a host program's PT_INTERP for uids of 3+ digits (every ``package
run``), and ``--sandbox`` denied the private /tmp made in a user's home. These jobs run as
``nobody`` (setpriv), with a home under /home and no CVMFS_CACHE_BASE, against the suite's
nginx. The tracer's Python and its dependencies are copied where ``nobody`` can read them
(the test's interpreter may live in root's home).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.interposer.conftest import JOB_TIMEOUT
from tests.interposer.trees import MOUNT

NOBODY = 65534
SETPRIV = "/usr/bin/setpriv"
PACKAGES = ("cvmfs_client", "interposer", "proxy", "fixtures")


def _dependencies(name: str, seen: set[str]) -> None:
    """``name`` and every distribution it requires (markers for extras left out)."""
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return
    seen.add(key)
    try:
        requires = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return
    for req in requires:
        if "extra ==" in req:
            continue
        _dependencies(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0], seen)


def _copy_distribution(name: str, site: Path) -> None:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return
    for rel in dist.files or []:
        top = rel.parts[0]
        if top.endswith((".dist-info", ".egg-info")) or top in ("..", "__pycache__") or rel.suffix == ".pth":
            continue
        src = Path(dist.locate_file(rel))
        if src.is_file():
            dest = site / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)


def _as_nobody(python: str, *args: str) -> list[str]:
    return [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", python, *args]


@pytest.fixture(scope="session")
def nobody_site() -> Iterator[tuple[str, Path]]:
    """(interpreter, site directory) that ``nobody`` can run: this project and its dependencies."""
    if not os.access(SETPRIV, os.X_OK):
        pytest.fail("setpriv not found: install util-linux", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="cvmfs-nobody-", dir="/tmp"))
    try:
        base.chmod(0o755)
        site = base / "site"
        repo = Path(__file__).resolve().parents[2]
        for package in PACKAGES:
            shutil.copytree(repo / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
        seen: set[str] = set()
        _dependencies("cvmfs-client", seen)
        for name in sorted(seen - {"cvmfs-client"}):
            _copy_distribution(name, site)
        subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
        env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
        for python in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
            probe = subprocess.run(
                _as_nobody(python, "-c", "import cvmfs_client.cli, interposer.job, cryptography, sqlalchemy"),
                env=env,
                capture_output=True,
                timeout=60,
            )
            if probe.returncode == 0:
                yield python, site
                return
        pytest.fail(f"no Python that uid {NOBODY} can run with this project: {probe.stderr.decode()[-500:]}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def user_env(job_env: dict[str, str], nobody_site: tuple[str, Path]) -> Iterator[dict[str, str]]:
    """A job environment for ``nobody``: a home of its own under /home, no CVMFS_CACHE_BASE."""
    home = Path(tempfile.mkdtemp(prefix="cvmfs-user-", dir="/home"))
    try:
        keys = home / "keys"
        shutil.copytree(job_env["CVMFS_KEYS_DIR"], keys)
        (home / "etc").mkdir()
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(home)], check=True)
        env = {k: v for k, v in job_env.items() if k != "CVMFS_CACHE_BASE"}
        env.update(
            HOME=str(home),
            CVMFS_KEYS_DIR=str(keys),
            CVMFS_CLIENT_CONFIG_DIR=str(home / "etc"),
            PYTHONPATH=str(nobody_site[1]),
        )
        yield env
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(f"/tmp/.c{NOBODY}", ignore_errors=True)


def _run(
    nobody_site: tuple[str, Path], env: dict[str, str], *args: str, cwd: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        _as_nobody(nobody_site[0], "-m", "cvmfs_client", *args),
        env=env,
        cwd=cwd or env["HOME"],
        capture_output=True,
        timeout=JOB_TIMEOUT,
    )


def _ok(r: subprocess.CompletedProcess[bytes]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout.decode()}\n{r.stderr.decode()}"
    return r.stdout.decode()


def _job(nobody_site: tuple[str, Path], env: dict[str, str], script: str, options: Sequence[str] = ()) -> str:
    return _ok(_run(nobody_site, env, "run", *options, "--", "sh", "-c", script))


def test_a_user_runs_programs_whose_interpreter_is_in_cvmfs(nobody_site, user_env):
    """The basics as a user: the default cache in the home, a loader in /cvmfs, content."""
    out = _job(nobody_site, user_env, f"id -u; {MOUNT}/bin/own-interp; sha256sum {MOUNT}/etc/example.conf")
    lines = out.splitlines()
    assert lines[:2] == [str(NOBODY), "sum=60"] and lines[2].endswith(f"{MOUNT}/etc/example.conf")
    cache = Path(user_env["HOME"]) / ".cache" / "cvmfs-client"
    assert cache.is_dir() and cache.stat().st_uid == NOBODY  # the user's own default cache


def test_a_user_gets_a_private_tmp_under_the_sandbox(nobody_site, user_env):
    """The private /tmp is made in the user's cache, under /home, which --sandbox denies."""
    out = _job(
        nobody_site,
        user_env,
        "echo x > /tmp/f && cat /tmp/f && ls /home 2>&1; cat /etc/hostname > /dev/null && echo host-ok",
        ["--sandbox", "--private-tmp", "--clean-tmp"],
    )
    lines = out.splitlines()
    assert lines[0] == "x" and "Permission denied" in lines[1] and lines[2] == "host-ok"


def test_a_user_packs_a_job_and_runs_the_package(nobody_site, user_env):
    """package run runs every program (sh here) with the package's loader, through a link in
    /tmp/.c<uid>/ that must fit the 27 bytes of /lib64/ld-linux-x86-64.so.2 for any uid."""
    home = user_env["HOME"]
    _ok(
        _run(
            nobody_site,
            user_env,
            "run",
            "-n",
            f"{home}/names",
            "-e",
            f"{home}/env",
            "--",
            "sh",
            "-c",
            f"{MOUNT}/bin/own-interp",
        )
    )
    _ok(
        _run(
            nobody_site,
            user_env,
            "package",
            "create",
            "-n",
            f"{home}/names",
            "-e",
            f"{home}/env",
            "-o",
            f"{home}/pkg",
        )
    )
    out = _ok(
        _run(
            nobody_site,
            user_env,
            "package",
            "run",
            f"{home}/pkg",
            "--",
            "sh",
            "-c",
            f"{MOUNT}/bin/own-interp",
        )
    )
    assert out.split() == ["sum=60"]
