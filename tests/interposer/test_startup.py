"""What ``cvmfs-client run`` imports: every job pays for it before its command starts.

``run``'s command line is parsed without click (cvmfs_client/run_args.py). A warm job is
answered by the shadow trees and the mount state file, so the fetch stack
(catalogs in SQLite, the fetcher, the node cache, signatures) and the configuration model are
imported only on a cache miss; OpenSSL (hashlib) only once a job touches /cvmfs, json never. An
eager import re-added anywhere on the way (cli, session, job, tracer, vfs...) fails here.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.interposer.conftest import JOB_TIMEOUT, sh
from tests.interposer.trees import FQRN

# Tens of milliseconds of imports together (bench/startup.py measures the whole start).
FETCH_STACK = frozenset(
    {
        "sqlite3",
        "sqlalchemy",
        "diskcache",
        "cryptography",
        "requests",
        "urllib3",
        "ssl",
        "http.client",
        "cvmfs_client.client",
        "cvmfs_client.repository",
        "cvmfs_client.catalog",
        "cvmfs_client.fetcher",
        "cvmfs_client.cache",
        "cvmfs_client.config",
        "cvmfs_client.config_parser",
    }
)
# Needed by the mount state file and the shadow trees' markers, not before.
FOR_CVMFS_ONLY = frozenset({"hashlib", "json"})
# Standard modules that cost milliseconds and that run does without (in a plain venv: logging
# ~7 ms, dataclasses ~9 ms with inspect, shutil ~2 ms with bz2 and lzma, socket ~3 ms with
# selectors, pathlib ~5 ms with urllib.parse and ipaddress, typing ~3 ms); cvmfs_client/lazylog.py,
# interposer/records.py, notify.PipeChannel, os.path for paths, typing's names only for annotations.
SLOW_STDLIB = frozenset(
    {
        "logging", "traceback", "dataclasses", "inspect", "shutil", "lzma", "socket", "selectors",
        "pathlib", "urllib.parse", "ipaddress", "typing",
    }
)  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]


def _modules(args: Sequence[str], env: dict[str, str]) -> set[str]:
    """Every module ``python -S -X importtime ARGS`` imports, with this checkout on the path.

    Without ``site``: its ``.pth`` files may import pathlib or typing themselves (a sandbox's
    certifi hook does), which would hide ours. A warm run needs nothing from site-packages."""
    env = {**env, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", *args], env=env, capture_output=True, timeout=JOB_TIMEOUT
    )
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    lines = r.stderr.decode(errors="replace").splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}


def _imported_by_run(command: Sequence[str], env: dict[str, str], options: Sequence[str] = ()) -> set[str]:
    """Modules ``cvmfs-client run`` imports beyond the interpreter's own start."""
    run = _modules(["-m", "cvmfs_client", "run", *options, "--", *command], env)
    return run - _modules(["-c", "pass"], env)


def test_a_job_off_cvmfs_starts_without_fetch_stack_configuration_or_openssl(tmp_path: Path) -> None:
    config = tmp_path / "etc-cvmfs"
    config.mkdir()
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),  # no CVMFS_CACHE_BASE: the default cache base
        "CVMFS_CLIENT_CONFIG_DIR": str(config),
    }
    imported = _imported_by_run(["/bin/true"], env, options=["--repo", FQRN])
    assert "interposer.tracer" in imported  # the job really ran under the tracer
    assert imported & (FETCH_STACK | FOR_CVMFS_ONLY | SLOW_STDLIB) == set()
    assert "click" not in imported  # the command line was parsed by cvmfs_client.run_args


def test_a_warm_job_on_cvmfs_needs_no_fetch_stack(job_env: dict[str, str]) -> None:
    script = f"cat /cvmfs/{FQRN}/README.txt >/dev/null && ls -l /cvmfs/{FQRN}/bin >/dev/null"
    sh(script, job_env)  # mounts, populates the shadow trees, links README's content
    imported = _imported_by_run(["/bin/sh", "-c", script], job_env)
    assert "interposer.vfs" in imported
    assert imported & (FETCH_STACK | SLOW_STDLIB) == set()
    assert "json" not in imported  # the mount state is one line of text
