"""cvmfs-proxy in front of a Stratum 1 that fails on purpose (tests/faultorigin.py).

Whatever the upstream does, a client of the proxy gets a 5xx, a response aborted before its end,
the upstream's own redirect, or a correct body: never a complete answer with wrong bytes, and
nothing from a faulty answer is cached (the next request is a miss that goes upstream). Other
clients are served meanwhile.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmfs_client.cache import NodeCache
from cvmfs_client.client import open_repository
from tests.faultorigin import ALL_FAULTS, Fault, FaultOrigin
from tests.truth import compare_with_truth, load_truth

FQRN = "tools.example.org"
UPSTREAM_TIMEOUT = "1"
OBJECT = "data/ed/9b25a423a5b6aadf662913362ecb8dad68bb10"  # bin/clear, ~3.5 kB stored
OTHER = "data/33/6c0d1d19c0894f56b3b014fdfa4748deb6ba5a"  # bin/tput
# What a client of the proxy may see, per upstream fault.
ALLOWED: dict[Fault, set[str]] = {
    Fault.WRONG_BYTES: {"5xx", "aborted"},
    Fault.TRUNCATE: {"5xx", "aborted"},
    Fault.RESET: {"5xx", "aborted"},
    Fault.STALL: {"5xx"},
    Fault.STALL_BODY: {"5xx", "aborted"},
    Fault.SLOW_DRIP: {"correct"},
    Fault.SERVER_ERROR: {"5xx"},
    Fault.LONG_LENGTH: {"5xx", "aborted"},
    Fault.SHORT_LENGTH: {"5xx", "aborted"},
    Fault.REDIRECT_SELF: {"302"},
    Fault.REDIRECT_LOOP: {"302"},
}


@pytest.fixture
def origin(real_fixtures: Path) -> Iterator[FaultOrigin]:
    # 512 bytes every 50 ms: slow, but the proxy (which has no low-speed limit) must finish it.
    with FaultOrigin(real_fixtures, drip_bytes=512, drip_interval=0.05) as o:
        yield o


def fetch(proxy_port: int, url: str, timeout: float = 10) -> tuple[str, bytes, str]:
    """(outcome, body, X-Cache) of one GET through the proxy; outcome is the HTTP status class,
    ``aborted`` for a body cut short, or ``correct``/``wrong`` for a complete 200 (judged later)."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=timeout)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        try:
            body = resp.read()
        except (http.client.IncompleteRead, ConnectionError):
            return "aborted", b"", resp.getheader("X-Cache", "")
        if resp.status == 200:
            return "200", body, resp.getheader("X-Cache", "")
        return ("5xx" if resp.status >= 500 else str(resp.status)), body, resp.getheader("X-Cache", "")
    finally:
        conn.close()


def judged(outcome: str, body: bytes, good: bytes) -> str:
    if outcome != "200":
        return outcome
    return "correct" if body == good else "wrong"


@pytest.mark.parametrize("fault", ALL_FAULTS, ids=[f.value for f in ALL_FAULTS])
def test_each_fault_gives_a_5xx_or_a_correct_body_and_caches_nothing(real_fixtures, proxy, origin, fault):
    p = proxy("--upstream-timeout", UPSTREAM_TIMEOUT)
    good = (real_fixtures / FQRN / OBJECT).read_bytes()
    other = (real_fixtures / FQRN / OTHER).read_bytes()
    url = f"{origin.repo_url(FQRN)}/{OBJECT}"
    origin.inject(OBJECT, fault)
    seen: list[tuple[str, bytes, str]] = []
    faulty = threading.Thread(target=lambda: seen.append(fetch(p.port, url)))
    faulty.start()
    time.sleep(0.1)  # the faulty download is under way (stalled, dripping...)
    start = time.monotonic()
    status, body, _ = fetch(p.port, f"{origin.repo_url(FQRN)}/{OTHER}")
    assert judged(status, body, other) == "correct" and time.monotonic() - start < 0.9, "others are served"
    faulty.join(30)
    outcome = judged(seen[0][0], seen[0][1], good)
    assert outcome in ALLOWED[fault], f"{fault.value}: {outcome}"

    origin.clear()
    before = origin.stats.requests
    status, body, x_cache = fetch(p.port, url)
    assert judged(status, body, good) == "correct"
    if outcome == "correct":  # a slow but right answer may be kept
        assert x_cache.startswith("HIT")
    else:
        assert x_cache.startswith("MISS") and origin.stats.requests == before + 1, "nothing was cached"
        assert fetch(p.port, url)[2].startswith("HIT"), "the good answer is"
    # The proxy's own refusals are counted (an upstream 503 or 302 is passed on as received).
    refused = outcome == "aborted" or (outcome == "5xx" and fault is not Fault.SERVER_ERROR)
    assert p.stats()["upstream_errors"] >= refused
    assert p.process.poll() is None and "Traceback" not in p.log()


def test_an_upstream_trickling_below_the_low_speed_limit_is_dropped(real_fixtures, proxy):
    """16 bytes every 100 ms never trips the silence timeout; the low-speed limit (1 KiB/s
    over --upstream-timeout) ends it, so the download does not hold a connection for minutes."""
    p = proxy("--upstream-timeout", UPSTREAM_TIMEOUT)
    with FaultOrigin(real_fixtures, drip_bytes=16, drip_interval=0.1) as o:
        o.inject(OBJECT, Fault.SLOW_DRIP)  # 3.5 kB: 22 s at this pace
        start = time.monotonic()
        assert fetch(p.port, f"{o.repo_url(FQRN)}/{OBJECT}")[0] in ("5xx", "aborted")
        assert time.monotonic() - start < 4
        deadline = time.monotonic() + 3
        while o.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert o.open_connections == 0, "the proxy closed its upstream connection"
        assert "too slow" in p.log()
        o.clear()
        status, body, x_cache = fetch(p.port, f"{o.repo_url(FQRN)}/{OBJECT}")
        assert (status, x_cache[:4]) == ("200", "MISS") and body == (
            real_fixtures / FQRN / OBJECT
        ).read_bytes()


def test_upstream_sending_more_than_its_content_length_is_refused(real_fixtures, proxy, origin):
    """A signed file cannot be checked by the proxy; a body longer than its Content-Length is
    broken framing, so it is refused rather than stored cut short for 61 s."""
    p = proxy("--upstream-timeout", UPSTREAM_TIMEOUT)
    url = f"{origin.repo_url(FQRN)}/.cvmfspublished"
    origin.inject(r"\.cvmfspublished$", Fault.SHORT_LENGTH, times=1)
    assert fetch(p.port, url)[0] in ("5xx", "aborted")
    status, body, x_cache = fetch(p.port, url)
    assert (status, x_cache[:4]) == ("200", "MISS")
    assert body == (real_fixtures / FQRN / ".cvmfspublished").read_bytes()
    assert "more body bytes than Content-Length" in p.log()


@pytest.mark.parametrize("fault", [Fault.STALL, Fault.SLOW_DRIP, Fault.SERVER_ERROR], ids=lambda f: f.value)
def test_a_request_to_another_server_does_not_wait_for_the_first_servers_download(
    real_fixtures, proxy, fault
):
    """Objects are stored by hash, but downloads are collapsed by URL: a request for the same
    object from a second Stratum 1 (a client failing over) gets its own server's answer at once,
    not the first server's stall, drip or error."""
    p = proxy("--upstream-timeout", "2")
    good = (real_fixtures / FQRN / OBJECT).read_bytes()
    with (
        FaultOrigin(real_fixtures, drip_bytes=16, drip_interval=0.2) as bad,
        FaultOrigin(real_fixtures) as clean,
    ):
        bad.inject(OBJECT, fault)
        first: list[tuple[str, bytes, str]] = []
        slow = threading.Thread(target=lambda: first.append(fetch(p.port, f"{bad.repo_url(FQRN)}/{OBJECT}")))
        slow.start()
        time.sleep(0.3)  # the first download is under way
        start = time.monotonic()
        status, body, _ = fetch(p.port, f"{clean.repo_url(FQRN)}/{OBJECT}")
        assert judged(status, body, good) == "correct" and time.monotonic() - start < 1.0
        assert clean.stats.requests == 1 and p.stats()["collapsed"] == 0
        bad.stop()  # ends a drip
        slow.join(10)
        assert first and judged(first[0][0], first[0][1], good) != "wrong"


def client_params(real_fixtures: Path, cache: Path, servers: list[str], proxy_url: str) -> dict[str, str]:
    (cache / "etc").mkdir(parents=True, exist_ok=True)
    return {
        "CVMFS_SERVER_URL": ";".join(servers),
        "CVMFS_HTTP_PROXY": proxy_url,
        "CVMFS_PUBLIC_KEY": str(real_fixtures / FQRN / f"{FQRN}.pub"),
        "CVMFS_CACHE_BASE": str(cache),
        "CVMFS_TIMEOUT": "2",
        "CVMFS_TIMEOUT_DIRECT": "2",
        "CVMFS_BACKOFF_INIT": "0.01",
        "CVMFS_BACKOFF_MAX": "0.05",
        "CVMFS_HOST_RESET_AFTER": "0.2",
        "CVMFS_CLIENT_CONFIG_DIR": str(cache / "etc"),
    }


def test_damaged_manifest_cached_by_the_proxy_is_flushed_by_the_clients_retry(
    real_fixtures, tmp_path, proxy, origin
):
    p = proxy("--upstream-timeout", UPSTREAM_TIMEOUT)
    origin.inject(r"\.cvmfspublished$", Fault.WRONG_BYTES, times=1)
    url = f"{origin.repo_url(FQRN)}/.cvmfspublished"
    good = (real_fixtures / FQRN / ".cvmfspublished").read_bytes()
    assert judged(*fetch(p.port, url)[:2], good) == "wrong", "the proxy cannot check a signed file"
    with open_repository(FQRN, client_params(real_fixtures, tmp_path / "c", [origin.url], p.url)) as repo:
        assert repo.read_file("bin/clear")
    assert fetch(p.port, url)[1] == good, "the client's no-cache retry replaced the proxy's copy"


def test_client_through_proxy_with_random_upstream_faults_reads_right_bytes(real_fixtures, tmp_path, proxy):
    p = proxy("--upstream-timeout", UPSTREAM_TIMEOUT)
    kw = {"stall_seconds": 1.5, "drip_bytes": 8192, "drip_interval": 0.01}
    with FaultOrigin(real_fixtures, **kw) as bad, FaultOrigin(real_fixtures) as clean:
        bad.random_faults(0.2, seed=5)
        params = client_params(real_fixtures, tmp_path / "cache", [bad.url, clean.url], p.url)
        with open_repository(FQRN, params) as repo:
            assert compare_with_truth(repo, load_truth(real_fixtures / f"{FQRN}.truth.tsv")) == []
            cache_dir = repo.store.directory
        assert bad.stats.total_faults >= 3, bad.stats
        # Whatever the proxy kept is right: every object it serves now matches its file.
        hits = 0
        for obj in sorted((real_fixtures / FQRN / "data").glob("*/*")):
            status, body, x_cache = fetch(
                p.port, f"{clean.repo_url(FQRN)}/{obj.relative_to(real_fixtures / FQRN)}"
            )
            assert judged(status, body, obj.read_bytes()) == "correct", obj
            hits += x_cache.startswith("HIT")
        assert hits > 20
    with NodeCache(cache_dir, None) as cache:
        assert cache.fsck().clean
    assert p.stats()["upstream_errors"] >= 1 and p.process.poll() is None
