"""Flaky networks as a cluster node sees them: two nginx Stratum 1s, a real Squid, bad servers.

Every scenario must still read every file of every path correctly, and leave no bad object in
the cache (``fsck`` clean).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cvmfs_client.cache import NodeCache
from cvmfs_client.client import open_repository
from tests.faultorigin import Fault, FaultOrigin
from tests.integration.nginx import free_port
from tests.proxy.procs import start_squid
from tests.truth import compare_with_truth, load_truth

FQRN = "tools.example.org"


@pytest.fixture
def squid():  # type: ignore[no-untyped-def]
    """A real Squid configured as a CVMFS site proxy (the harness the proxy tests use)."""
    try:
        server = start_squid()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def stratum1s(real_fixtures, tmp_path, nginx_server):  # type: ignore[no-untyped-def]
    """Two nginx servers with their own copy of the repository, like two Stratum 1s."""
    copies = []
    for name in ("s1a", "s1b"):
        shutil.copytree(real_fixtures / FQRN, tmp_path / name / FQRN)
        copies.append(nginx_server(tmp_path / name))
    return copies


def params(real_fixtures: Path, cache: Path, servers: list[str], proxy: str = "DIRECT") -> dict[str, str]:
    return {
        "CVMFS_SERVER_URL": ";".join(servers),
        "CVMFS_HTTP_PROXY": proxy,
        "CVMFS_PUBLIC_KEY": str(real_fixtures / FQRN / f"{FQRN}.pub"),
        "CVMFS_CACHE_BASE": str(cache),
        "CVMFS_TIMEOUT": "1",
        "CVMFS_TIMEOUT_DIRECT": "1",
        "CVMFS_BACKOFF_INIT": "0.01",
        "CVMFS_BACKOFF_MAX": "0.05",
        "CVMFS_CLIENT_CONFIG_DIR": str(cache / "no-etc"),
    }


def read_all_and_check(real_fixtures: Path, p: dict[str, str]) -> None:
    Path(p["CVMFS_CLIENT_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)
    with open_repository(FQRN, p) as repo:
        assert compare_with_truth(repo, load_truth(real_fixtures / f"{FQRN}.truth.tsv")) == []
        cache_dir = repo.store.directory
    with NodeCache(cache_dir, None) as cache:
        report = cache.fsck()
    assert report.clean, report.removed


def corrupt_objects(root: Path) -> None:
    for obj in (root / FQRN / "data").rglob("*"):
        if obj.is_file() and not obj.name.endswith(("C", "X", "H", "M")):
            data = bytearray(obj.read_bytes())
            data[len(data) // 2] ^= 0x55
            obj.write_bytes(bytes(data))


def test_dead_first_server_through_squid(real_fixtures, tmp_path, stratum1s, squid):
    dead = f"http://127.0.0.1:{free_port()}/cvmfs/@fqrn@"
    servers = [dead, stratum1s[0].server_url, stratum1s[1].server_url]
    read_all_and_check(real_fixtures, params(real_fixtures, tmp_path / "cache", servers, squid.url))
    assert any("/data/" in line for line in squid.access_lines()), "objects must have gone through Squid"


def test_server_with_corrupted_objects_behind_squid(real_fixtures, tmp_path, stratum1s, squid):
    corrupt_objects(tmp_path / "s1a")
    servers = [stratum1s[0].server_url, stratum1s[1].server_url]
    read_all_and_check(real_fixtures, params(real_fixtures, tmp_path / "cache", servers, squid.url))
    assert any("/data/" in line for line in stratum1s[0].access_lines()), "the bad server was asked first"
    assert stratum1s[1].access_lines(), "the good Stratum 1 must have been used after the bad one"


def test_truncating_server(real_fixtures, tmp_path, stratum1s):
    with FaultOrigin(real_fixtures) as bad:
        bad.inject("/data/", Fault.TRUNCATE)
        servers = [bad.url, stratum1s[0].server_url]
        read_all_and_check(real_fixtures, params(real_fixtures, tmp_path / "cache", servers))
        assert bad.stats.faults["truncate"] > 0


def test_hanging_server(real_fixtures, tmp_path, stratum1s):
    with FaultOrigin(real_fixtures) as bad:
        bad.inject("", Fault.STALL)
        servers = [bad.url, stratum1s[0].server_url]
        read_all_and_check(real_fixtures, params(real_fixtures, tmp_path / "cache", servers))
        assert bad.stats.faults["stall"] > 0


def test_dead_proxy_in_first_group(real_fixtures, tmp_path, stratum1s, squid):
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    proxies = f"{dead_proxy};{squid.url}"
    read_all_and_check(
        real_fixtures, params(real_fixtures, tmp_path / "cache", [stratum1s[0].server_url], proxies)
    )
    assert any("/data/" in line for line in squid.access_lines())
