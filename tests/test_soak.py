"""bench/soak.py: how a job's output is judged, which invariants fail the run, and a short real run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def soak():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_soak", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_soak"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_soak"]


TRUTH = {"a.txt": (10, "a" * 64), "b.bin": (20, "b" * 64), "c.bin": (30, "c" * 64), "d.bin": (40, "d" * 64)}
M = "/cvmfs/soak.example.org"


def test_judge_counts_right_wrong_failed_and_unexplained_files(soak):
    out = f"{'a' * 64}  {M}/a.txt\n{'0' * 64}  {M}/b.bin\n"
    err = f"sha256sum: {M}/c.bin: Input/output error\n"
    r = soak.judge(1, out, err, ["a.txt", "b.bin", "c.bin", "d.bin"], TRUTH)
    assert (r.files_ok, r.bytes_ok) == (1, 10)
    assert (r.wrong, r.wrong_bytes) == (["b.bin"], 20)
    assert r.errors == {"Input/output error": 1}
    assert r.unexplained == ["d.bin"] and r.unclean is None


def test_judge_flags_tracer_errors_and_odd_exit_statuses(soak):
    assert soak.judge(70, "", "cvmfs-client run: internal error: boom\n", [], TRUTH).unclean
    assert soak.judge(0, "", "Traceback (most recent call last):\n  x\nValueError\n", [], TRUTH).unclean
    assert soak.judge(125, "", "cannot trace\n", [], TRUTH).unclean.startswith("exit status 125")
    assert soak.judge(1, "", "", [], TRUTH).unclean is None


def test_every_broken_invariant_fails_the_run(soak):
    totals = soak.Totals()
    totals.add(0, soak.judge(0, f"{'a' * 64}  {M}/a.txt\n", "", ["a.txt"], TRUTH))
    totals.fsck.append((0, "checked 1 objects: 0 bad"))
    assert soak.failures(totals, faults_injected=3, proxy_alive=True) == []
    assert soak.failures(totals, faults_injected=0, proxy_alive=True) == ["no fault was injected"]
    assert soak.failures(totals, faults_injected=3, proxy_alive=False) == ["the proxy died"]
    totals.add(0, soak.judge(0, f"{'0' * 64}  {M}/b.bin\n", "", ["b.bin"], TRUTH))
    totals.add(1, soak.judge(1, "", f"sha256sum: {M}/c.bin: No such file or directory\n", ["c.bin"], TRUTH))
    totals.hung.append("d.bin")
    totals.fsck.append((3, "removed 1"))
    totals.over_quota.append("round 2: 30.0 MiB on disk, quota 20 MiB")
    bad = soak.failures(totals, faults_injected=3, proxy_alive=True)
    assert len(bad) == 5 and "20 wrong bytes" in bad[0] and "hung" in bad[1]
    assert "No such file" in bad[2] and "over the quota" in bad[3] and "fsck" in bad[4]


def test_held_bytes_counts_each_file_once(soak, tmp_path):
    """Objects, links to them and links to evicted objects: distinct inodes, index left out."""
    obj = tmp_path / "shared" / "ab" / "cdef"
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b"x" * 1000)
    (tmp_path / "shared" / "index").mkdir()
    (tmp_path / "shared" / "index" / "cache.db").write_bytes(b"i" * 5000)
    links = tmp_path / "interposer" / "r" / "repo.example.org" / "abc" / "d" / "lib"
    links.mkdir(parents=True)
    os.link(obj, links / "a")
    (links / "evicted").write_bytes(b"y" * 300)
    assert soak.held_bytes(tmp_path) == 1300


def test_a_short_soak_passes(tmp_path):
    """The real thing, small: one job at a time for ~8 s, two rounds, through proxy and faults."""
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "soak.py"),
            *("--minutes", "0.13", "--jobs", "1", "--small", "30", "--large", "1", "--large-mib", "2"),
            *("--round-seconds", "4", "--rate", "0.2", "--stall", "1", "--workdir", str(tmp_path / "soak")),
        ],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "wrong bytes:         0 (0 files)" in out and "result:              PASS" in out
    assert "2 of 2 rounds clean" in out


def test_a_hung_job_is_not_also_counted_as_unexplained(soak):
    r = soak.judge(None, "", "", ["a.txt"], TRUTH)
    assert r.unexplained == [] and r.unclean is None
