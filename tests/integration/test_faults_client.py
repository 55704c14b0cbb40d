"""The client against a Stratum 1 that fails on purpose (tests/faultorigin.py), one fault at a time.

With a good server behind the faulty one (a real nginx) every file reads right through failover;
with the faulty one alone, the read fails with a typed error naming the URL and the reason, the
CLI exits non-zero, and the cache holds nothing from the faulty answers (fsck clean, object
absent). Timeouts are short (1 s) so stalls cost seconds; every test bounds its elapsed time.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmfs_client.cache import NodeCache
from cvmfs_client.client import open_repository
from cvmfs_client.errors import CvmfsError
from cvmfs_client.hashing import ContentHash, ObjectType
from tests.faultorigin import ALL_FAULTS, Fault, FaultOrigin
from tests.truth import compare_with_truth, load_truth

FQRN = "tools.example.org"
TIMEOUT = 1.0
# Content objects of files (no type suffix): a file read fails, the repository still mounts.
FILE_OBJECTS = r"/data/[0-9a-f]{2}/[0-9a-f]+$"
FILE = "bin/clear"  # 14,584 bytes, stored as one zlib object of ~3.5 kB
FILE_SHA256 = "c6543c0d7d5479fc76c1808f9e5a033b54b67e35f2ec1663b7c354267e2adfb6"
# exit code and the reason the client names, per fault, when the faulty server is the only one.
EXPECTED: dict[Fault, tuple[int, str]] = {
    Fault.WRONG_BYTES: (3, "content hash mismatch"),
    Fault.TRUNCATE: (4, "truncated body"),
    Fault.RESET: (4, "connection broken"),
    Fault.STALL: (4, "timed out"),
    Fault.STALL_BODY: (4, "timed out"),
    Fault.SLOW_DRIP: (4, "too slow"),
    Fault.SERVER_ERROR: (4, "HTTP 503"),
    Fault.LONG_LENGTH: (4, "timed out"),
    Fault.SHORT_LENGTH: (3, "content hash mismatch"),
    Fault.REDIRECT_SELF: (4, "HTTP 302 redirect to"),
    Fault.REDIRECT_LOOP: (4, "HTTP 302 redirect to"),
}
# Failover tests: straight to the next server (a stall costs one TIMEOUT, not two).
ONE_TRY = {"CVMFS_MAX_RETRIES": "0"}
# Two attempts on one server (CVMFS_MAX_RETRIES=1) at TIMEOUT each, plus process start-up.
BOUND = 2 * TIMEOUT + 6


@pytest.fixture
def origin(real_fixtures: Path) -> Iterator[FaultOrigin]:
    with FaultOrigin(real_fixtures) as o:
        yield o


def params(real_fixtures: Path, cache: Path, servers: list[str], **extra: str) -> dict[str, str]:
    (cache / "etc").mkdir(parents=True, exist_ok=True)
    return {
        "CVMFS_SERVER_URL": ";".join(servers),
        "CVMFS_HTTP_PROXY": "DIRECT",
        "CVMFS_PUBLIC_KEY": str(real_fixtures / FQRN / f"{FQRN}.pub"),
        "CVMFS_CACHE_BASE": str(cache),
        "CVMFS_TIMEOUT": str(TIMEOUT),
        "CVMFS_TIMEOUT_DIRECT": str(TIMEOUT),
        "CVMFS_BACKOFF_INIT": "0.01",
        "CVMFS_BACKOFF_MAX": "0.05",
        "CVMFS_CLIENT_CONFIG_DIR": str(cache / "etc"),
        **extra,
    }


def cli(args: list[str], p: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": p["CVMFS_CACHE_BASE"], **p}
    return subprocess.run(
        [sys.executable, "-m", "cvmfs_client.cli", *args], env=env, capture_output=True, timeout=timeout
    )


def fsck(p: dict[str, str]) -> tuple[bool, list[str]]:
    """(clean, names of cached objects) of the node cache ``p`` configures."""
    cache_dir = Path(p["CVMFS_CACHE_BASE"]) / "shared"
    with NodeCache(cache_dir, None) as cache:
        report = cache.fsck()
    names = [str(f.relative_to(cache_dir)) for f in cache_dir.glob("[0-9a-f][0-9a-f]/*")]
    assert not any((cache_dir / "txn").iterdir()), "no half-written object is left behind"
    return report.clean, names


def object_of(p: dict[str, str], path: str) -> ContentHash:
    with open_repository(FQRN, p) as repo:
        entry = repo.lookup(path)
        assert entry.content_hash is not None
        return entry.content_hash


@pytest.mark.parametrize("fault", ALL_FAULTS, ids=[f.value for f in ALL_FAULTS])
def test_failover_reads_right_bytes_and_caches_nothing_bad(
    real_fixtures, tmp_path, nginx_server, origin, fault
):
    origin.inject("/data/", fault)  # every object, catalogs included, forever
    good = nginx_server(real_fixtures)
    p = params(real_fixtures, tmp_path / "cache", [origin.url, good.server_url], **ONE_TRY)
    start = time.monotonic()
    with open_repository(FQRN, p) as repo:
        assert compare_with_truth(repo, load_truth(real_fixtures / f"{FQRN}.truth.tsv")) == []
    assert time.monotonic() - start < 20, "one faulty attempt, then the good server for good"
    assert origin.stats.faults.get(fault.value, 0) >= 1, "the faulty server was asked first"
    assert any("/data/" in line for line in good.access_lines()), "and the good one after it"
    clean, names = fsck(p)
    assert clean and names


@pytest.mark.parametrize("fault", ALL_FAULTS, ids=[f.value for f in ALL_FAULTS])
def test_failover_for_signed_files(real_fixtures, tmp_path, nginx_server, origin, fault):
    """A damaged manifest or whitelist is checked on arrival, so it fails over too (it used to
    fail the mount with a bad signature after the download)."""
    origin.inject(r"/\.cvmfs(published|whitelist)$", fault)
    good = nginx_server(real_fixtures)
    p = params(real_fixtures, tmp_path / "cache", [origin.url, good.server_url], **ONE_TRY)
    with open_repository(FQRN, p) as repo:
        assert hashlib.sha256(repo.read_file(FILE)).hexdigest() == FILE_SHA256
    assert origin.stats.faults.get(fault.value, 0) >= 1


@pytest.mark.parametrize("fault", ALL_FAULTS, ids=[f.value for f in ALL_FAULTS])
def test_faulty_server_alone_gives_a_typed_error_and_caches_nothing(real_fixtures, tmp_path, origin, fault):
    p = params(real_fixtures, tmp_path / "cache", [origin.url])
    wanted = object_of(p, FILE)  # mounts (catalogs cached) before any fault
    origin.inject(FILE_OBJECTS, fault)
    start = time.monotonic()
    r = cli(["cat", f"/cvmfs/{FQRN}/{FILE}"], p)
    elapsed = time.monotonic() - start
    code, reason = EXPECTED[fault]
    err = r.stderr.decode()
    last = err.strip().splitlines()[-1]
    assert r.returncode == code, err
    assert r.stdout == b"", "no partial content reaches the output"
    url = f"{origin.repo_url(FQRN)}/{wanted.object_path(ObjectType.FILE)}"
    assert last.startswith("cvmfs-client: ") and url in last and reason in last, last
    assert "Traceback" not in err
    assert elapsed < BOUND, f"{fault.value}: {elapsed:.1f} s"
    clean, names = fsck(p)
    assert clean and wanted.cache_name() not in names


@pytest.mark.parametrize("fault", [Fault.REDIRECT_SELF, Fault.REDIRECT_LOOP], ids=lambda f: f.value)
def test_followed_redirect_loops_are_bounded(real_fixtures, tmp_path, nginx_server, origin, fault):
    p = params(real_fixtures, tmp_path / "cache", [origin.url], CVMFS_FOLLOW_REDIRECTS="yes")
    wanted = object_of(p, FILE)
    origin.inject(FILE_OBJECTS, fault)
    r = cli(["cat", f"/cvmfs/{FQRN}/{FILE}"], p)
    assert r.returncode == 4 and "too many redirects" in r.stderr.decode(), r.stderr.decode()
    hops = origin.events(f"{wanted.hex[:2]}/{wanted.hex[2:]}")  # loop hops name the object too
    assert 2 * 2 <= len(hops) <= 2 * (4 + 1), "two attempts of at most 4 redirects each"
    # Followed redirects and failover together: the good server answers.
    good = nginx_server(real_fixtures)
    p = params(
        real_fixtures, tmp_path / "cache2", [origin.url, good.server_url], CVMFS_FOLLOW_REDIRECTS="yes"
    )
    r = cli(["cat", f"/cvmfs/{FQRN}/{FILE}"], p)
    assert r.returncode == 0 and hashlib.sha256(r.stdout).hexdigest() == FILE_SHA256
    assert fsck(p)[0]


def test_slow_drip_that_keeps_above_the_low_speed_limit_completes(real_fixtures, tmp_path):
    # 256 bytes every 50 ms = 5 kB/s, above CVMFS_LOW_SPEED_LIMIT (1 kB/s): slow but acceptable.
    with FaultOrigin(real_fixtures, drip_bytes=256, drip_interval=0.05) as o:
        p = params(real_fixtures, tmp_path / "cache", [o.url])
        wanted = object_of(p, FILE)
        o.inject(FILE_OBJECTS, Fault.SLOW_DRIP)
        start = time.monotonic()
        with open_repository(FQRN, p) as repo:
            data = repo.read_file(FILE)
        assert hashlib.sha256(data).hexdigest() == FILE_SHA256
        assert time.monotonic() - start > 0.5
        assert o.stats.faults == {"slow-drip": 1}
        assert wanted.cache_name() in fsck(p)[1]


def test_no_cache_retry_after_bad_data_uses_a_new_connection(real_fixtures, tmp_path, origin):
    """After a body shorter than the bytes sent, the stale rest must not be read as the retry's
    answer: the retry (same server, no-cache) gets the right object on a fresh connection."""
    p = params(real_fixtures, tmp_path / "cache", [origin.url])
    object_of(p, FILE)
    origin.inject(FILE_OBJECTS, Fault.SHORT_LENGTH, times=1)
    with open_repository(FQRN, p) as repo:
        assert hashlib.sha256(repo.read_file(FILE)).hexdigest() == FILE_SHA256
    assert [e.outcome for e in origin.events(FILE_OBJECTS)] == ["short-length", "200"]


def test_ls_of_a_nested_catalog_from_a_faulty_server_fails_cleanly(real_fixtures, tmp_path, origin):
    p = params(real_fixtures, tmp_path / "cache", [origin.url])
    assert cli(["ls", f"/cvmfs/{FQRN}/"], p).returncode == 0  # root catalog cached
    origin.inject(r"/data/.*C$", Fault.TRUNCATE)  # catalogs
    r = cli(["ls", f"/cvmfs/{FQRN}/lib/python/toolkit"], p)
    err = r.stderr.decode()
    assert r.returncode == 4 and "truncated body" in err and origin.base_url in err, err
    assert fsck(p)[0]


def test_prewarm_fails_over_from_a_randomly_failing_server(real_fixtures, tmp_path, nginx_server):
    good = nginx_server(real_fixtures)
    with FaultOrigin(real_fixtures, stall_seconds=0.3, drip_bytes=4096, drip_interval=0.01) as o:
        o.random_faults(0.5, seed=3)
        # Back to the first server 0.5 s after each failover, so that many faults are met.
        p = params(real_fixtures, tmp_path / "cache", [o.url, good.server_url], CVMFS_HOST_RESET_AFTER="0.5")
        r = cli(["prewarm", "-j", "2", f"/cvmfs/{FQRN}/"], p, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        assert o.stats.total_faults >= 3
    clean, names = fsck(p)
    assert clean and len(names) > 20


def test_prewarm_with_only_a_faulty_server_reports_failures_and_caches_nothing_bad(
    real_fixtures, tmp_path, origin
):
    p = params(real_fixtures, tmp_path / "cache", [origin.url])
    wanted = object_of(p, FILE)
    origin.inject(FILE_OBJECTS, Fault.WRONG_BYTES)
    r = cli(["prewarm", f"/cvmfs/{FQRN}/bin"], p)
    err = r.stderr.decode()
    assert r.returncode == 3, err
    assert err.count("failed: ") == 5 and "content hash mismatch" in err, "the five files of bin/"
    clean, names = fsck(p)
    assert clean and wanted.cache_name() not in names


def test_random_faults_on_every_server_give_right_bytes_or_a_clean_error(real_fixtures, tmp_path):
    """Both servers fail a fifth of the answers, any fault: each read is right or a CvmfsError."""
    truth = load_truth(real_fixtures / f"{FQRN}.truth.tsv")
    files = [row for row in truth.values() if row.type == "f"]
    kw = {"stall_seconds": 0.3, "drip_bytes": 8192, "drip_interval": 0.01}
    with FaultOrigin(real_fixtures, **kw) as a, FaultOrigin(real_fixtures, **kw) as b:
        p = params(real_fixtures, tmp_path / "cache", [a.url, b.url], CVMFS_HOST_RESET_AFTER="0.2")
        object_of(p, FILE)  # mounted (catalogs cached) before the faults start
        a.random_faults(0.2, seed=1)
        b.random_faults(0.2, seed=2)
        right = errors = 0
        with open_repository(FQRN, p) as repo:
            for row in files:
                try:
                    data = repo.read_file(row.path)
                except CvmfsError:
                    errors += 1
                    continue
                assert hashlib.sha256(data).hexdigest() == row.sha256, row.path
                right += 1
        assert right > len(files) // 2, (right, errors)
        assert a.stats.total_faults + b.stats.total_faults >= 5
    assert fsck(p)[0]
