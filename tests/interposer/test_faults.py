"""Jobs under the interposer while the Stratum 1 fails on purpose (tests/faultorigin.py).

One job reads eleven files of the real-publisher repository, each file's object served with a
different fault. With a good nginx behind the faulty origin every byte the job reads is right
(failover inside the tracer); with the faulty origin alone every read fails with EIO, promptly,
never with wrong bytes, and ``cvmfs-client run`` ends with the job's status and no tracer error.
In both cases the node cache holds nothing from a faulty answer.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmfs_client.cache import NodeCache
from cvmfs_client.client import open_repository
from cvmfs_client.hashing import ContentHash
from tests.faultorigin import ALL_FAULTS, Fault, FaultOrigin
from tests.integration.nginx import NginxServer
from tests.interposer.conftest import TOOLS, cvmfs_run
from tests.truth import load_truth

TIMEOUT = 1.0
# One file per fault, each with its own object; the three largest are chunked (the fault hits
# their first chunk). The slow drip gets a large chunk, so that its 160 B/s stay below
# CVMFS_LOW_SPEED_LIMIT long enough to be refused.
FILES: dict[Fault, str] = {
    Fault.WRONG_BYTES: "bin/clear",
    Fault.TRUNCATE: "lib/libtinfo.so.6.4",
    Fault.RESET: "bin/tput",
    Fault.STALL: "bin/tools-env.sh",
    Fault.STALL_BODY: "share/data/noise-1.5MiB.bin",
    Fault.SLOW_DRIP: "share/data/events-600KiB.log",
    Fault.SERVER_ERROR: "lib/python/toolkit/util/text.py",
    Fault.LONG_LENGTH: "lib/python/toolkit/config.py",
    Fault.SHORT_LENGTH: "lib/python/toolkit/cli.py",
    Fault.REDIRECT_SELF: "lib/python/toolkit/util/paths.py",
    Fault.REDIRECT_LOOP: "lib/python/toolkit/util/hashing.py",
}
assert set(FILES) == set(ALL_FAULTS)


@pytest.fixture(scope="module")
def objects(
    stratum1: tuple[NginxServer, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[Fault, ContentHash]:
    """The object of each file (its first chunk if chunked), looked up through the good server."""
    server, trusted = stratum1
    cache = tmp_path_factory.mktemp("lookup")
    p = {
        "CVMFS_SERVER_URL": server.server_url,
        "CVMFS_HTTP_PROXY": "DIRECT",
        "CVMFS_KEYS_DIR": str(trusted),
        "CVMFS_CACHE_BASE": str(cache),
        "CVMFS_CLIENT_CONFIG_DIR": str(cache),
    }
    found: dict[Fault, ContentHash] = {}
    with open_repository(TOOLS, p) as repo:
        for fault, path in FILES.items():
            entry = repo.lookup(path)
            found[fault] = repo.chunks(entry)[0].content_hash if entry.is_chunked else entry.content_hash
    assert len(set(found.values())) == len(FILES), "one object per fault"
    return found


@pytest.fixture
def origin(stratum1: tuple[NginxServer, Path], objects: dict[Fault, ContentHash]) -> Iterator[FaultOrigin]:
    """A faulty copy of the test Stratum 1: each file's object always gets its fault."""
    server, _ = stratum1
    with FaultOrigin(server.root) as o:
        for fault, obj in objects.items():
            o.inject(f"/data/{obj.hex[:2]}/{obj.hex[2:]}", fault)
        yield o


def env_for(job_env: dict[str, str], cache: Path, servers: list[str], **extra: str) -> dict[str, str]:
    return {
        **job_env,
        "CVMFS_SERVER_URL": ";".join(servers),
        "CVMFS_CACHE_BASE": str(cache),
        "CVMFS_TIMEOUT": str(TIMEOUT),
        "CVMFS_TIMEOUT_DIRECT": str(TIMEOUT),
        "CVMFS_BACKOFF_INIT": "0.01",
        "CVMFS_BACKOFF_MAX": "0.05",
        # Back to the faulty origin right after each failover, so every file meets its fault.
        "CVMFS_HOST_RESET_AFTER": "0.01",
        **extra,
    }


def job_script(out: Path) -> str:
    """sha256sum of every file, then one file again through ``cat`` into ``out``.

    The pause between files outlasts CVMFS_HOST_RESET_AFTER, so each file starts on the origin.
    """
    paths = " ".join(shlex.quote(f"/cvmfs/{TOOLS}/{p}") for p in FILES.values())
    cat_path = shlex.quote(f"/cvmfs/{TOOLS}/{FILES[Fault.TRUNCATE]}")
    return (
        f"status=0; for f in {paths}; do sha256sum $f || status=1; sleep 0.05; done;"
        f"cat {cat_path} > {shlex.quote(str(out))} || status=1; exit $status"
    )


def cached(cache: Path) -> tuple[bool, set[str]]:
    """(fsck clean, names of cached objects) of the node cache under ``cache``."""
    with NodeCache(cache / "shared", None) as store:
        report = store.fsck()
    names = {str(f.relative_to(cache / "shared")) for f in (cache / "shared").glob("[0-9a-f][0-9a-f]/*")}
    return report.clean, names


def test_job_reads_right_bytes_through_failover_for_every_fault(
    job_env, stratum1, real_fixtures, origin, objects, tmp_path
):
    server, _ = stratum1
    # No same-server retry: a stall costs one TIMEOUT before the good server answers.
    env = env_for(job_env, tmp_path / "cache", [origin.url, server.server_url], CVMFS_MAX_RETRIES="0")
    out = tmp_path / "cat.out"
    start = time.monotonic()
    r = cvmfs_run(["/bin/sh", "-c", job_script(out)], env, timeout=120)
    elapsed = time.monotonic() - start
    err = r.stderr.decode()
    assert r.returncode == 0, err
    truth = load_truth(real_fixtures / f"{TOOLS}.truth.tsv")
    sums = dict(reversed(line.split("  ", 1)) for line in r.stdout.decode().splitlines())
    for fault, path in FILES.items():
        assert sums.get(f"/cvmfs/{TOOLS}/{path}") == truth[path].sha256, f"{fault.value}: {path}"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == truth[FILES[Fault.TRUNCATE]].sha256
    faults = origin.stats.faults
    assert all(faults.get(f.value, 0) >= 1 for f in ALL_FAULTS), f"every fault was met: {faults}"
    assert "Traceback" not in err and "internal error" not in err
    assert elapsed < 60
    clean, names = cached(tmp_path / "cache")
    assert clean and {obj.cache_name() for obj in objects.values()} <= names


def test_job_sees_eio_without_failover_for_every_fault(job_env, real_fixtures, origin, objects, tmp_path):
    env = env_for(job_env, tmp_path / "cache", [origin.url])
    out = tmp_path / "cat.out"
    start = time.monotonic()
    r = cvmfs_run(["/bin/sh", "-c", job_script(out)], env, timeout=120)
    elapsed = time.monotonic() - start
    err = r.stderr.decode()
    assert r.returncode == 1, err  # the job's own status: sha256sum and cat failed
    assert r.stdout == b"", "no file was read, so no checksum of wrong bytes"
    for fault, path in FILES.items():
        assert f"/cvmfs/{TOOLS}/{path}: Input/output error" in err, f"{fault.value}: {err}"
    assert f"cat: /cvmfs/{TOOLS}/{FILES[Fault.TRUNCATE]}: Input/output error" in err
    assert out.read_bytes() == b""
    assert "Traceback" not in err and "internal error" not in err
    # Two attempts of TIMEOUT for each of the four faults that stall, the rest at once.
    assert elapsed < 4 * 2 * TIMEOUT + 25, f"{elapsed:.1f} s"
    clean, names = cached(tmp_path / "cache")
    assert clean and not {obj.cache_name() for obj in objects.values()} & names
    assert not os.listdir(tmp_path / "cache" / "shared" / "txn"), "no half-written object"
