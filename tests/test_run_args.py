"""cvmfs_client/run_args.py: ``run``'s arguments parsed without click give exactly the
parameters click gives, or are left to click."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from cvmfs_client.cli import run_cmd
from cvmfs_client.run_args import OPTIONS, defaults, parse_run_args

# Command lines the fast path takes (each must give click's parameters).
TAKEN = [
    ["ls"],
    ["--", "ls", "-l"],
    ["ls", "-l", "--", "x"],
    ["ls", "--repo", "x"],  # options after the command are the command's
    ["--repo", "a.org", "--repo=b.org", "-v", "--", "sh", "-c", "exit 3"],
    ["-vv", "--debug", "--stats", "--ptrace-only", "true"],
    ["-v", "--verbose", "-v", "true"],
    ["--cache-dir", "/tmp/c", "-r", "a:url=http://x", "true"],
    ["--cache-dir=/tmp/c", "-ra:url=http://x", "true"],
    ["--cvmfs-repos", "<default-repositories>", "true"],
    ["-m", "/tmp/ml", "--mount-list=/tmp/m2", "-M", "/a=/b", "--mount", "/c=/d", "true"],
    ["-M/a=/b", "true"],
    ["--private-tmp", "--", "true"],
    ["--private-tmp=/tmp/p", "--clean-tmp", "true"],
    ["--private-tmp", "--sandbox", "true"],
    ["--deny", "/home", "--deny=/root", "--sandbox", "--allow-write", "/tmp", "true"],
    ["-n", "/tmp/names", "-e", "/tmp/env", "true"],
    ["--name-list=/tmp/names", "--env-list", "/tmp/env", "true"],
    ["--repo", "--", "true"],  # "--" as the value of --repo, as click takes it
    ["--repo", "-v", "true"],
    ["--repo=", "true"],
    ["-r=x", "true"],
    ["-", "x"],
    ["--", "--", "x"],
    ["--", "-v"],
]
# Left to click: help, errors, option forms click treats its own way.
LEFT = [
    [],
    ["--"],
    ["--help"],
    ["-h", "ls"],
    ["--repo"],
    ["--no-such-option", "ls"],
    ["-x", "ls"],
    ["--verbose=2", "ls"],
    ["--debug=yes", "ls"],
    ["-vn", "/tmp/names", "ls"],
    ["--private-tmp", "/tmp/p", "ls"],
    ["--cache-dir", "/etc/hostname", "ls"],  # a file: click.Path(file_okay=False) refuses it
    ["-n", "/tmp", "ls"],  # a directory: click.Path(dir_okay=False) refuses it
    ["--cache-dir", "", "ls"],
]


def _clicks(args: list[str]) -> dict[str, object]:
    ctx = run_cmd.make_context("run", list(args))
    return dict(ctx.params)


@pytest.mark.parametrize("args", TAKEN, ids=" ".join)
def test_the_fast_path_gives_clicks_parameters(args):
    fast = parse_run_args(args)
    assert fast is not None, "the fast path should take this command line"
    assert fast == _clicks(args)


@pytest.mark.parametrize("args", LEFT, ids=lambda a: " ".join(a) or "(nothing)")
def test_what_click_must_answer_is_left_to_it(args):
    assert parse_run_args(args) is None


def test_every_option_of_run_is_known_or_left_to_click():
    """An option added to ``run`` in cli.py must be added here too (or it goes to click)."""
    names = {name for param in run_cmd.params if isinstance(param, click.Option) for name in param.opts}
    assert names - {"--private-tmp", "--help"} == set(OPTIONS)
    assert set(defaults()) == {param.name for param in run_cmd.params}


def test_the_command_runs_a_job_through_the_fast_path_without_click(tmp_path: Path):
    env = dict(os.environ, CVMFS_CACHE_BASE=str(tmp_path / "cache"), CVMFS_CLIENT_CONFIG_DIR=str(tmp_path))
    argv = [sys.executable, "-X", "importtime", "-m", "cvmfs_client", "run", "--", "sh", "-c", "exit 7"]
    r = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    assert r.returncode == 7, r.stderr.decode()[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.decode().splitlines() if "|" in line}
    assert "interposer.tracer" in imported and "click" not in imported
    me = [sys.executable, "-m", "cvmfs_client", "run"]
    r = subprocess.run([*me, "--help"], capture_output=True, timeout=60)
    assert r.returncode == 0 and b"Run COMMAND with /cvmfs" in r.stdout
    r = subprocess.run([*me, "--privat-tmp", "--", "true"], capture_output=True, timeout=60)
    assert r.returncode == 2 and b"No such option '--privat-tmp'" in r.stderr  # a typo: not a command
