"""The ``cvmfs-client`` command's fast path for ``run`` (cvmfs_client/entry.py, run_job.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The job itself is replaced: what matters is the supervisor's state when it would start.
PROBE = """
import gc, os, sys
import interposer.job as job

seen = {}

def run(argv, options):
    seen["enabled"], seen["frozen"] = gc.isenabled(), gc.get_freeze_count()
    return 0

def exit_like(status):
    print(seen["enabled"], seen["frozen"], flush=True)
    os._exit(status)

job.run, job.exit_like = run, exit_like
sys.argv = ["cvmfs-client", "run", "--", "true"]
from cvmfs_client.entry import main
main()
"""


def test_collections_are_on_and_start_up_frozen_when_the_job_starts(tmp_path: Path) -> None:
    """Start-up loads its modules without collections; a job can run for days, so they must be
    back on by then, with what start-up made kept out of their way."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CVMFS_CACHE_BASE": str(tmp_path / "cache")}
    r = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    enabled, frozen = r.stdout.split()
    assert enabled == "True"
    assert int(frozen) > 10_000  # the modules' functions, classes and constants
