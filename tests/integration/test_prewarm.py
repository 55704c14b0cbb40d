"""``cvmfs-client prewarm`` against a real nginx, then jobs reading with the network gone.

Each test pre-warms with the real command (a separate process, as a site would run it), stops
nginx, and reads every pre-warmed file with ``python -m tests.integration.reader``: the content
must be exactly the published bytes, served from the node cache or the alien directory alone.
The last two record the name list with ``cvmfs-client run --name-list`` and read offline under
the interposer (``cvmfs-client run -- sha256sum ...``).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cvmfs_client.cache import NodeCache

FQRN = "warm.example.org"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """600 small files in 12 directories, two chunked 3 MiB files and a symlink to a directory."""
    from cvmfs_client.publisher import publish

    base = tmp_path_factory.mktemp("warm")
    src = base / "src"
    rng = random.Random(11)
    for i in range(600):
        d = src / f"d{i % 12:02}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:03}.bin").write_bytes(rng.randbytes(rng.randrange(500, 20000)))
    for i in range(2):
        (src / "d00" / f"large{i}.bin").write_bytes(rng.randbytes(3 << 20))
    (src / "current").symlink_to("d03")
    publish(src, FQRN, base / "s0" / FQRN, base / "keys", chunk_sizes=(256 << 10, 512 << 10, 1 << 20))
    files = sorted("/" + p.relative_to(src).as_posix() for p in src.rglob("*.bin"))
    return base, src, files


def env_for(base: Path, server, cache_base: Path, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    conf = base / "etc-empty"
    conf.mkdir(exist_ok=True)
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(cache_base.parent),
        "PYTHONPATH": str(ROOT),
        "CVMFS_SERVER_URL": server.server_url,
        "CVMFS_HTTP_PROXY": "DIRECT",
        "CVMFS_PUBLIC_KEY": str(base / "keys" / f"{FQRN}.pub"),
        "CVMFS_CACHE_BASE": str(cache_base),
        "CVMFS_CLIENT_CONFIG_DIR": str(conf),
        "CVMFS_MAX_RETRIES": "0",  # once nginx is gone, fail fast
        **extra,
    }


def prewarm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cvmfs_client.cli", "prewarm", *args]


def run(cmd: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def read_all(env: dict[str, str], paths: list[str]) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "tests.integration.reader", FQRN, *paths], env)


def digests(src: Path, files: list[str]) -> str:
    return "".join(f"{hashlib.sha256((src / f[1:]).read_bytes()).hexdigest()}  {f}\n" for f in files)


def objects_in(directory: Path) -> list[Path]:
    return [p for p in directory.glob("??/*") if p.is_file()]


def test_prewarmed_subtree_and_name_list_are_read_with_the_network_gone(published, tmp_path, nginx_server):
    base, src, files = published
    server = nginx_server(base / "s0")
    env = env_for(base, server, tmp_path / "cache")
    subtree = [f for f in files if f.startswith("/d01/")]
    listed = ["/current/f003.bin", "/d05/f005.bin", "/d00/large1.bin"]  # through a symlink, and chunked
    names = tmp_path / "names.txt"
    names.write_text(
        f"/cvmfs/{FQRN}/current/f003.bin|open\n"
        f"/cvmfs/{FQRN}/d05/f005.bin\n"  # a bare path
        f"/cvmfs/{FQRN}/d00/large1.bin|open\n"
        f"/cvmfs/{FQRN}/d06/f006.bin|stat\n"  # only looked at: no content
        f"/cvmfs/{FQRN}/no/such/file|open\n"  # probed by the job, absent
        "/etc/hostname|open\n"
    )
    dry = run(prewarm_cmd(f"/cvmfs/{FQRN}/d01", "--dry-run"), env)
    assert dry.returncode == 0, dry.stderr
    assert (
        f"would fetch {len(subtree)} objects" in dry.stdout
        and "catalog(s) downloaded to walk the tree" in dry.stdout
    )
    # The root catalog and the certificate, nothing else: a dry run fetches no file content.
    assert len(objects_in(tmp_path / "cache" / "shared")) == 2

    first = run(prewarm_cmd(f"/cvmfs/{FQRN}/d01", "--name-list", str(names), "-j", "4"), env)
    assert first.returncode == 0, first.stderr
    assert "0 failed" in first.stdout and "skipped 0" in first.stdout
    again = run(prewarm_cmd(f"/cvmfs/{FQRN}/d01", "--name-list", str(names)), env)
    assert again.returncode == 0, again.stderr
    assert "fetched 0 objects" in again.stdout, "a second run downloads nothing already present"

    server.stop()
    wanted = subtree + listed
    out = read_all(env, wanted)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == digests(src, wanted)  # src/current is the same symlink
    missing = read_all(env, ["/d06/f006.bin"])
    assert missing.returncode != 0, "content of a file only stat-ed was not pre-warmed; the network is gone"


def test_alien_directory_alone_serves_a_node_with_an_empty_cache_and_no_network(
    published, tmp_path, nginx_server
):
    base, src, files = published
    server = nginx_server(base / "s0")
    alien = tmp_path / "shared-fs" / "cvmfs-alien"
    login = env_for(base, server, tmp_path / "login-cache")
    subtree = [f for f in files if f.startswith("/d00/") or f.startswith("/d02/")]
    done = run(prewarm_cmd(f"/cvmfs/{FQRN}/d00", f"/cvmfs/{FQRN}/d02", "--alien-cache", str(alien)), login)
    assert done.returncode == 0, done.stderr
    assert f"CVMFS_ALIEN_CACHE={alien}" in done.stdout
    assert (alien / "manifests" / f"{FQRN}.cvmfspublished").is_file()
    assert not list((alien / "txn").iterdir())

    server.stop()
    node_cache = tmp_path / "node-cache"
    node = env_for(base, server, node_cache, CVMFS_ALIEN_CACHE=str(alien))
    out = read_all(node, subtree)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == digests(src, subtree)
    # Small files were read in place from the alien tier; only chunked files were assembled locally.
    assert not objects_in(node_cache / "shared")


def test_alien_tier_on_another_file_system_feeds_interposed_jobs_within_the_quota(
    published, tmp_path, nginx_server
):
    """An alien tier on a cluster file system cannot be hardlinked by cvmfs-client run: its
    objects are copied into the node cache (quota-counted, evictable), not into the job's
    shadow tree where no quota sees them."""
    from cvmfs_client.cache_links import held_outside

    base, src, files = published
    server = nginx_server(base / "s0")
    alien = Path(tempfile.mkdtemp(prefix="alien-", dir="/dev/shm"))
    try:
        assert os.stat(alien).st_dev != os.stat(tmp_path).st_dev, "needs two file systems"
        subtree = [f for f in files if f.startswith("/d03/")]
        login = env_for(base, server, tmp_path / "login-cache")
        done = run(prewarm_cmd(f"/cvmfs/{FQRN}/d03", "--alien-cache", str(alien)), login)
        assert done.returncode == 0, done.stderr
        server.stop()
        node_base = tmp_path / "node"
        node = env_for(base, server, node_base, CVMFS_ALIEN_CACHE=str(alien))
        out = sha256sum_offline(node, subtree)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout == expected_sums(src, subtree)
        assert len(objects_in(node_base / "shared")) == len(subtree)
        assert held_outside(node_base / "shared") == 0
    finally:
        shutil.rmtree(alien)


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_objects(directory: Path, count: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(objects_in(directory)) < count and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def test_interrupted_and_killed_prewarm_resumes_with_no_corrupt_object(published, tmp_path, nginx_server):
    base, src, files = published
    server = nginx_server(base / "s0")
    cache_base = tmp_path / "cache"
    cache = cache_base / "shared"
    env = env_for(base, server, cache_base)
    everything = prewarm_cmd(f"/cvmfs/{FQRN}", "-j", "2")

    # Ctrl-C: downloads in flight finish, the run reports what it did and exits 130.
    p = _start(everything, env)
    _wait_for_objects(cache, 40, p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode in (130, 0), err[-2000:]  # 0 only if it finished before the signal
    if p.returncode == 130:
        assert "prewarm interrupted" in out
    with NodeCache(cache, None) as c:
        assert c.fsck().clean
    after_sigint = len(objects_in(cache))

    # kill -9 of the command: its worker processes die with it (no one is left writing).
    p = _start(everything, env)
    _wait_for_objects(cache, after_sigint + 40, p)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    time.sleep(0.5)
    frozen = sorted(objects_in(cache))
    time.sleep(0.5)
    assert sorted(objects_in(cache)) == frozen, "a worker outlived the killed prewarm"
    with NodeCache(cache, None) as c:
        report = c.fsck()
    assert report.clean, report.removed

    final = run(everything, env)
    assert final.returncode == 0, final.stderr
    assert "skipped 0 " not in final.stdout  # resumed: what was there was not fetched again
    server.stop()
    out = read_all(env, files)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == digests(src, files)


# -- the whole workflow with the interposer: record a job's name list, pre-warm, run offline ----

LISTED = ["/current/f003.bin", "/d05/f005.bin", "/d00/large1.bin"]  # a symlinked dir, a chunked file


def cvmfs_run_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cvmfs_client", "run", *args]


def record_name_list(base: Path, server, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """``cvmfs-client run --name-list`` of a job that reads LISTED and only stats d06/f006.bin."""
    names = tmp_path / "job-names.txt"
    env = env_for(base, server, tmp_path / "recording-cache", CVMFS_REPOSITORIES=FQRN)
    reads = " ".join(f"/cvmfs/{FQRN}{f}" for f in LISTED)
    job = f"cat {reads} >/dev/null && stat /cvmfs/{FQRN}/d06/f006.bin >/dev/null"
    out = run(cvmfs_run_cmd("--name-list", str(names), "--", "/bin/sh", "-c", job), env)
    assert out.returncode == 0, out.stderr[-2000:]
    recorded = dict(line.rsplit("|", 1) for line in names.read_text().splitlines())
    for f in LISTED:
        assert recorded[f"/cvmfs/{FQRN}{f}"] == "fullcopy"
    assert recorded[f"/cvmfs/{FQRN}/d06/f006.bin"] == "metadatacopy"
    assert recorded[f"/cvmfs/{FQRN}/d03/f003.bin"] == "fullcopy"  # where the symlink led
    return names


def sha256sum_offline(env: dict[str, str], files: list[str]) -> subprocess.CompletedProcess[str]:
    paths = [f"/cvmfs/{FQRN}{f}" for f in files]
    return run(cvmfs_run_cmd("--", "sha256sum", *paths), dict(env, CVMFS_REPOSITORIES=FQRN))


def expected_sums(src: Path, files: list[str]) -> str:
    return "".join(
        f"{hashlib.sha256((src / f[1:]).read_bytes()).hexdigest()}  /cvmfs/{FQRN}{f}\n" for f in files
    )


def test_recorded_name_list_prewarmed_then_job_runs_under_the_interposer_offline(
    published, tmp_path, nginx_server
):
    base, src, files = published
    server = nginx_server(base / "s0")
    names = record_name_list(base, server, tmp_path)
    env = env_for(base, server, tmp_path / "cache")
    subtree = [f for f in files if f.startswith("/d01/")]
    done = run(prewarm_cmd(f"/cvmfs/{FQRN}/d01", "--name-list", str(names)), env)
    assert done.returncode == 0, done.stderr
    assert "0 failed" in done.stdout

    server.stop()
    wanted = subtree + LISTED
    out = sha256sum_offline(env, wanted)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == expected_sums(src, wanted)
    stat_only = sha256sum_offline(env, ["/d06/f006.bin"])
    assert stat_only.returncode != 0, "only stat-ed by the job: its content was not pre-warmed"
    assert "f006.bin" in stat_only.stderr


def test_recorded_name_list_in_the_alien_cache_alone_serves_an_interposed_job_offline(
    published, tmp_path, nginx_server
):
    base, src, files = published
    server = nginx_server(base / "s0")
    names = record_name_list(base, server, tmp_path)
    alien = tmp_path / "shared-fs" / "cvmfs-alien"
    login = env_for(base, server, tmp_path / "login-cache")
    subtree = [f for f in files if f.startswith("/d02/")]
    done = run(
        prewarm_cmd(f"/cvmfs/{FQRN}/d02", "--name-list", str(names), "--alien-cache", str(alien)), login
    )
    assert done.returncode == 0, done.stderr

    server.stop()
    node = env_for(base, server, tmp_path / "node-cache", CVMFS_ALIEN_CACHE=str(alien))
    wanted = subtree + LISTED
    out = sha256sum_offline(node, wanted)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == expected_sums(src, wanted)
