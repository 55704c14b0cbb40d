"""Many jobs on one node share one cache: single downloads, quota, and kill -9 at any moment."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cvmfs_client.cache import NodeCache
from cvmfs_client.publisher import publish
from tests.disk_usage import held_bytes

FQRN = "many.example.org"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def many_files(tmp_path_factory):  # type: ignore[no-untyped-def]
    """200 small files with distinct content and a few large ones, published once per module."""
    base = tmp_path_factory.mktemp("many")
    src = base / "src"
    rng = random.Random(42)
    for i in range(200):
        d = src / f"d{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:03}.bin").write_bytes(rng.randbytes(rng.randrange(1000, 60000)))
    for i in range(3):
        (src / f"large{i}.bin").write_bytes(rng.randbytes(3 << 20))
    publish(src, FQRN, base / "s0" / FQRN, base / "keys", chunk_sizes=(256 << 10, 512 << 10, 1 << 20))
    files = sorted("/" + p.relative_to(src).as_posix() for p in src.rglob("*.bin"))
    return base, src, files


def env_for(base: Path, server, cache: Path, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    conf = cache.parent / "etc-empty"
    conf.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(cache.parent),
        "PYTHONPATH": str(ROOT),
        "CVMFS_SERVER_URL": server.server_url,
        "CVMFS_HTTP_PROXY": "DIRECT",
        "CVMFS_PUBLIC_KEY": str(base / "keys" / f"{FQRN}.pub"),
        "CVMFS_CACHE_BASE": str(cache),
        "CVMFS_CLIENT_CONFIG_DIR": str(conf),
        **extra,
    }


def reader(env: dict[str, str], paths: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.reader", FQRN, *paths],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def expected_digests(src: Path, files: list[str]) -> str:
    import hashlib

    return "".join(f"{hashlib.sha256((src / f[1:]).read_bytes()).hexdigest()}  {f}\n" for f in files)


def test_eight_processes_download_each_object_once(many_files, tmp_path, nginx_server):
    base, src, files = many_files
    server = nginx_server(base / "s0")
    env = env_for(base, server, tmp_path / "cache")
    small = [f for f in files if "/d" in f]
    procs = [reader(env, small) for _ in range(8)]
    want = expected_digests(src, small)
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-2000:]
        assert out.decode() == want
    server.wait_for_requests(len(small) + 4)  # nginx logs just after each response: let it catch up
    time.sleep(0.2)
    data_requests = [line.split('"')[1].split()[1] for line in server.access_lines() if "/data/" in line]
    assert len(data_requests) == len(set(data_requests)), "an object was downloaded twice"
    file_objects = [r for r in data_requests if not r.endswith(("C", "X", "H", "M", "P"))]
    assert len(file_objects) == len(small), "every file's object once, no more and no less"


def test_quota_smaller_than_data_read(many_files, tmp_path, nginx_server):
    base, src, files = many_files
    server = nginx_server(base / "s0")
    cache = tmp_path / "cache"
    env = env_for(base, server, cache, CVMFS_QUOTA_LIMIT="4")  # MB; the files total about 15 MB
    p = reader(env, files)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err.decode()[-2000:]
    assert out.decode() == expected_digests(src, files)
    with NodeCache(cache / "shared", 4 << 20) as c:
        st = c.stat()
        assert st.size_bytes <= 4 << 20
        on_disk = sum(f.stat().st_size for f in (cache / "shared").glob("??/*") if f.is_file())
        on_disk += sum(f.stat().st_size for f in (cache / "shared" / "assembled").rglob("*") if f.is_file())
        assert on_disk <= 4 << 20
        assert c.fsck().clean


def test_kill_9_at_random_moments_leaves_cache_consistent(many_files, tmp_path, nginx_server):
    base, src, files = many_files
    server = nginx_server(base / "s0")
    cache = tmp_path / "cache"
    env = env_for(base, server, cache)
    rng = random.Random(7)
    for round_ in range(50):
        subset = rng.sample(files, 12)
        p = reader(env, subset)
        time.sleep(rng.uniform(0.05, 0.6))
        p.send_signal(signal.SIGKILL)
        p.communicate()
        if round_ % 10 == 9:  # check, then wipe so that later kills hit downloads again
            with NodeCache(cache / "shared", None) as c:
                assert c.fsck().clean
                c.wipe()
    with NodeCache(cache / "shared", None) as c:
        report = c.fsck()
    assert report.clean, report.removed
    p = reader(env, files)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err.decode()[-2000:]
    assert out.decode() == expected_digests(src, files)


def _object_bytes(cache: Path) -> int:
    with NodeCache(cache / "shared", None) as c:
        return c.stat().size_bytes


def _interposed(env: dict[str, str], script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cvmfs_client", "run", "--", "sh", "-c", script],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_quota_holds_for_jobs_under_the_interposer(many_files, tmp_path, nginx_server):
    """The interposer's links to cache objects do not keep evicted bytes beyond a job's end,
    and never take a file from a job still running on the same revision."""
    base, src, files = many_files
    server = nginx_server(base / "s0")
    cache = tmp_path / "cache"
    env = env_for(base, server, cache, CVMFS_QUOTA_LIMIT="4")  # MB; the files total about 15 MB
    mount = f"/cvmfs/{FQRN}"
    go = tmp_path / "go"
    first = files[0]
    wait = f"while [ ! -e {go} ]; do sleep 0.05; done"
    holder = _interposed(env, f"cat {mount}{first} >/dev/null; {wait}; sha256sum {mount}{first}")
    reading = _interposed(env, f"sha256sum {' '.join(mount + f for f in files)}")
    out, err = reading.communicate(timeout=240)
    assert reading.returncode == 0, err.decode()[-2000:]
    assert out.decode() == expected_digests(src, files).replace("  /", f"  {mount}/")
    stat_run = subprocess.run(
        [sys.executable, "-m", "cvmfs_client.cli", "cache", "stat"], env=env, cwd=ROOT, capture_output=True
    )
    assert stat_run.returncode == 0, stat_run.stderr.decode()
    # The holder's revision is in use: what the reader's links keep of evicted objects is shown.
    shown = re.search(rb"outside: +([0-9.]+) MiB outside the quota", stat_run.stdout)
    assert shown is not None, stat_run.stdout.decode()
    assert abs(float(shown.group(1)) * 2**20 - (held_bytes(cache) - _object_bytes(cache))) < 0.1 * 2**20
    wiped = subprocess.run(
        [sys.executable, "-m", "cvmfs_client.cli", "cache", "wipe"], env=env, cwd=ROOT, capture_output=True
    )
    assert wiped.returncode == 0, wiped.stderr.decode()
    assert b"1 repository revision is in use" in wiped.stdout  # the holder's: left to it
    go.touch()
    out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err.decode()[-2000:]
    assert out.decode() == expected_digests(src, [first]).replace("  /", f"  {mount}/")
    assert held_bytes(cache) <= 4 << 20
    wipe = subprocess.run(
        [sys.executable, "-m", "cvmfs_client.cli", "cache", "wipe"], env=env, cwd=ROOT, capture_output=True
    )
    assert wipe.returncode == 0, wipe.stderr.decode()
    assert held_bytes(cache) == 0


def test_trees_of_a_replaced_revision_go_when_its_last_job_ends(tmp_path, nginx_server):
    fqrn = "revs.example.org"
    src, s0, keys = tmp_path / "src", tmp_path / "s0", tmp_path / "keys"
    (src / "ro").mkdir(parents=True)
    (src / "ro" / "a.txt").write_text("first\n")
    (src / "ro").chmod(0o555)  # a read-only directory in the shadow tree must not stop removal
    publish(src, fqrn, s0 / fqrn, keys, ttl=1)
    server = nginx_server(s0)
    cache = tmp_path / "cache"
    env = env_for(tmp_path, server, cache, CVMFS_PUBLIC_KEY=str(keys / f"{fqrn}.pub"))
    units = cache / "interposer" / "r" / fqrn
    go = tmp_path / "go"
    wait = f"while [ ! -e {go} ]; do sleep 0.05; done"
    old_job = _interposed(env, f"cat /cvmfs/{fqrn}/ro/a.txt; {wait}; cat /cvmfs/{fqrn}/ro/a.txt")
    deadline = time.monotonic() + 30
    while not any(units.glob("*/m/ro")) and time.monotonic() < deadline:
        time.sleep(0.05)
    (old,) = [p.name for p in units.iterdir() if p.is_dir()]
    (src / "ro").chmod(0o755)
    (src / "b.txt").write_text("second\n")
    publish(src, fqrn, s0 / fqrn, keys, ttl=1)
    time.sleep(1.5)  # the first revision's TTL
    new_job = subprocess.run(
        [sys.executable, "-m", "cvmfs_client", "run", "--", "cat", f"/cvmfs/{fqrn}/b.txt"],
        env=env, cwd=ROOT, capture_output=True, timeout=60,
    )  # fmt: skip
    assert new_job.returncode == 0, new_job.stderr.decode()
    assert new_job.stdout == b"second\n"
    assert (units / old / "m").is_dir(), "removed under a job still running on it"
    go.touch()
    out, err = old_job.communicate(timeout=60)
    assert old_job.returncode == 0, err.decode()
    assert out == b"first\nfirst\n"
    assert sorted(p.name for p in units.iterdir() if p.is_dir()) != [old]
    assert not (units / old).exists()
