"""Pure parts of ``interposer/job.py`` (running jobs is tested by test_semantics and others)."""

from __future__ import annotations

import pytest

from interposer.job import is_run_command


@pytest.mark.parametrize(
    "argv",
    [
        "/usr/bin/python3 -m cvmfs_client run -- sh",
        "python3.11 -X importtime -u -m cvmfs_client.cli run --repo a.b -- sh",
        "/venv/bin/python /venv/bin/cvmfs-client run -- sh",  # the console script
        "/venv/bin/python /venv/bin/cvmfs-client --config-dir /etc/x -v run -- sh",
        "./cvmfs-client run -- sh",  # the one-file executable
        "/venv/bin/cvmfs-client package run pkg -- sh",  # its jobs see the package's /cvmfs
    ],
)
def test_runs_of_ours_are_recognised(argv: str) -> None:
    assert is_run_command(argv.encode().split())


@pytest.mark.parametrize(
    "argv",
    [
        "strace -f python -m cvmfs_client run -- sh",  # names us, is not us (was taken for us)
        "gdb --args python -m cvmfs_client run",
        "python -m cvmfs_client cat /cvmfs/a.b/x",
        "python -m other run",
        "/venv/bin/cvmfs-client ls -- run",
        "python",
        "",
    ],
)
def test_other_tracers_are_not_taken_for_a_run(argv: str) -> None:
    assert not is_run_command(argv.encode().split())
