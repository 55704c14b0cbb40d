"""The production fetcher against real HTTP servers and forward proxies on 127.0.0.1.

Every server here is an in-process ``ThreadingHTTPServer`` whose handler can serve files, answer
with an error status, corrupt or truncate a body, hang, or act as a forward proxy (absolute-URI
GET) that is dead or answers with ``X-Squid-Error``. Backoff sleeps are recorded, not slept.
"""

from __future__ import annotations

import http.client
import logging
import random
import socket
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3.exceptions

from cvmfs_client import __version__
from cvmfs_client.cache import NodeCache
from cvmfs_client.errors import ConfigError, FetchError, HashMismatch, IntegrityError
from cvmfs_client.failover import DIRECT, ErrorClass
from cvmfs_client.fetcher import Fetcher, FetcherSettings, _failure
from cvmfs_client.hashing import ContentHash, HashAlgorithm, ObjectType
from cvmfs_client.keys import load_master_keys
from cvmfs_client.repository import Repository

from .truth import compare_with_truth, load_truth

FQRN = "test.example.org"
HANG_S = 5.0  # a hanging server waits this long (or until torn down); timeouts are far shorter


# -- servers ------------------------------------------------------------------------------------


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (a timed-out attempt, a fetcher moving on) is expected."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Server:
    """A ThreadingHTTPServer in a daemon thread, torn down by :meth:`close`."""

    handler: type[_Quiet]

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.log: list[tuple[str, dict[str, str]]] = []
        self._server = _QuietServer(("127.0.0.1", 0), self.handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()


class _OriginHandler(_Quiet):
    def do_GET(self) -> None:
        self.server.owner.handle(self)  # type: ignore[attr-defined]


class Origin(_Server):
    """A Stratum-1 stand-in serving ``/cvmfs/<path>`` from ``files`` or a directory.

    ``behave[name]`` is one behaviour or a list consumed front to back (the last one sticks):
    ``"ok"``, an int status, ``"corrupt"`` (one byte flipped), ``"truncate"`` (Content-Length
    larger than the body, then close), ``"hang"`` (no answer), ``"stall"`` (half the body, then
    nothing), ``("redirect", url)``. ``"*"`` applies to every name.
    """

    handler = _OriginHandler

    def __init__(self, files: dict[str, bytes] | None = None, root: Path | None = None) -> None:
        self.files = dict(files or {})
        self.root = root
        self.behave: dict[str, Any] = {}
        self.geo_reply: bytes | None = None
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cvmfs/{FQRN}"

    def names(self) -> list[str]:
        return [path for path, _ in self.log]

    def _behaviour(self, name: str) -> Any:
        b = self.behave.get(name, self.behave.get("*", "ok"))
        if isinstance(b, list):
            return b.pop(0) if len(b) > 1 else b[0]
        return b

    def handle(self, h: _Quiet) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(h.path).path)
        self.log.append((path, dict(h.headers)))
        rel = path.removeprefix("/cvmfs/")
        name = rel.removeprefix(f"{FQRN}/")
        if "/api/v1.0/geo/" in path:
            if self.geo_reply is None:
                return h.send(404)
            return h.send(200, self.geo_reply, {"Content-Type": "text/plain"})
        body = self.files.get(rel)
        if body is None and self.root is not None and ".." not in rel:
            file = self.root / rel
            body = file.read_bytes() if file.is_file() else None
        behaviour = self._behaviour(name)
        if isinstance(behaviour, int):
            return h.send(behaviour, b"error\n")
        if isinstance(behaviour, tuple):
            return h.send(302, b"", {"Location": f"{behaviour[1]}/{name}"})
        if behaviour == "hang":
            self.stop.wait(HANG_S)
            h.close_connection = True
            return None
        if body is None:
            return h.send(404, b"not found\n")
        if behaviour == "corrupt":
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        if behaviour == "truncate":
            h.send(200, body[: len(body) // 2], {"Content-Length": str(len(body))})
            h.close_connection = True
            return None
        if behaviour == "stall":
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            self.stop.wait(HANG_S)
            h.close_connection = True
            return None
        if behaviour == "trickle":
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            for byte in body:
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
                if self.stop.wait(0.1):
                    break
            h.close_connection = True
            return None
        return h.send(200, body)


class _ProxyHandler(_Quiet):
    def do_GET(self) -> None:
        self.server.owner.relay(self)  # type: ignore[attr-defined]


class Proxy(_Server):
    """A forward proxy: GET with an absolute URI, relayed with http.client (no cache).

    ``squid_error`` makes it answer 503 with ``X-Squid-Error`` as Squid does when it cannot
    reach the server; an unreachable server gets the same answer.
    """

    handler = _ProxyHandler

    def __init__(self, squid_error: bool = False) -> None:
        self.squid_error = squid_error
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def relay(self, h: _Quiet) -> None:
        self.log.append((h.path, dict(h.headers)))
        target = urllib.parse.urlsplit(h.path)
        if target.scheme != "http":
            return h.send(400, b"absolute URI expected\n")
        failure = {"X-Squid-Error": "ERR_CONNECT_FAIL 111"}
        if self.squid_error:
            return h.send(503, b"squid says no\n", failure)
        keep = ("User-Agent", "Cache-Control", "Pragma", "Accept-Encoding")
        headers = {k: h.headers[k] for k in keep if h.headers[k] is not None}
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=HANG_S)
        try:
            conn.request("GET", target.path, headers=headers)
            resp = conn.getresponse()
            try:
                body = resp.read()
            except http.client.IncompleteRead as exc:
                body = exc.partial
            out = {"Content-Length": resp.headers.get("Content-Length", str(len(body)))}
            if resp.headers.get("Location"):
                out["Location"] = resp.headers["Location"]
            h.send(resp.status, body, out)
            if len(body) != int(out["Content-Length"]):
                h.close_connection = True
        except OSError:
            h.send(503, b"cannot connect\n", failure)
        finally:
            conn.close()


def dead_url(path: str = f"/cvmfs/{FQRN}") -> str:
    """A URL on a port nobody listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}{path}"


@pytest.fixture
def make() -> Iterator[Callable[..., Any]]:
    made: list[_Server] = []

    def factory(cls: type[_Server], *args: Any, **kwargs: Any) -> Any:
        server = cls(*args, **kwargs)
        made.append(server)
        return server

    yield factory
    for server in made:
        server.close()


# -- helpers ------------------------------------------------------------------------------------


def stored_object(content: bytes) -> tuple[str, bytes, ContentHash]:
    stored = zlib.compress(content)
    digest = ContentHash.of(HashAlgorithm.SHA1, stored)
    return digest.object_path(ObjectType.FILE), stored, digest


NAME, STORED, DIGEST = stored_object(b"hello from the repository\n" * 200)
NAME2, STORED2, DIGEST2 = stored_object(b"a second object\n" * 50)
FILES = {
    f"{FQRN}/{NAME}": STORED,
    f"{FQRN}/{NAME2}": STORED2,
    f"{FQRN}/.cvmfspublished": b"Cabc\nNtest\n--\n",
}


def settings(servers: list[str], proxy: str = "DIRECT", **params: str) -> FetcherSettings:
    base = {
        "CVMFS_SERVER_URL": ";".join(servers),
        "CVMFS_HTTP_PROXY": proxy,
        "CVMFS_TIMEOUT": "2",
        "CVMFS_TIMEOUT_DIRECT": "2",
    }
    return FetcherSettings.from_parameters({**base, **params}, FQRN)


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def fetcher(s: FetcherSettings, seed: int = 0) -> tuple[Fetcher, Sleeps]:
    sleeps = Sleeps()
    return Fetcher(s, sleep=sleeps, rng=random.Random(seed)), sleeps


def verify(digest: ContentHash) -> Callable[[Iterator[bytes], str], bytes]:
    """A consumer that hashes while streaming and rejects bad bytes, as the store does."""

    def consume(pieces: Iterator[bytes], url: str) -> bytes:
        hasher = digest.algorithm.new()
        buf = bytearray()
        for piece in pieces:
            hasher.update(piece)
            buf += piece
        actual = ContentHash(digest.algorithm, hasher.digest())
        if actual != digest:
            raise HashMismatch(url, digest.hex, actual.hex)
        return bytes(buf)

    return consume


# -- failover between servers -------------------------------------------------------------------


def test_dead_first_server_fails_over_to_second_and_stays_there(make):
    good = make(Origin, FILES)
    f, sleeps = fetcher(settings([dead_url(), good.url]))
    with f:
        assert f.fetch(NAME, verify(DIGEST)) == STORED
        assert len(sleeps) == 1 and 0 <= sleeps[0] <= 2.0  # one same-URL retry after a backoff
        assert f.fetch(NAME2, verify(DIGEST2)) == STORED2
    assert len(sleeps) == 1  # the second fetch went straight to the working server
    assert good.names() == [f"/cvmfs/{FQRN}/{NAME}", f"/cvmfs/{FQRN}/{NAME2}"]


def test_corrupt_server_gets_one_nocache_retry_then_the_next_server(make, tmp_path):
    bad = make(Origin, FILES)
    bad.behave["*"] = "corrupt"
    good = make(Origin, FILES)
    f, sleeps = fetcher(settings([bad.url, good.url]))
    store = NodeCache(tmp_path, None)
    with f:
        path = store.get(DIGEST, f)  # type: ignore[arg-type]
    assert path.read_bytes() == zlib.decompress(STORED)
    assert len(bad.log) == 2
    first, second = bad.log[0][1], bad.log[1][1]
    assert "Pragma" not in first and "Cache-Control" not in first
    assert second["Pragma"] == "no-cache" and second["Cache-Control"] == "no-cache"
    assert len(good.log) == 1
    assert good.log[0][1]["Cache-Control"] == "no-cache"  # the request stays uncached
    assert sleeps == []
    assert list(store.txn.iterdir()) == []


def test_bad_bytes_everywhere_raise_the_integrity_error_and_store_nothing(make, tmp_path):
    a, b = make(Origin, FILES), make(Origin, FILES)
    a.behave["*"] = b.behave["*"] = "corrupt"
    store = NodeCache(tmp_path, None)
    f, _ = fetcher(settings([a.url, b.url]))
    with f, pytest.raises(IntegrityError) as info:
        store.get(DIGEST, f)  # type: ignore[arg-type]
    assert isinstance(info.value, HashMismatch)
    assert b.url in str(info.value)
    assert len(a.log) == 2 and len(b.log) == 1
    assert not store.path_for(DIGEST).exists()


def test_truncated_body_is_detected_and_never_accepted(make):
    short = make(Origin, FILES)
    short.behave["*"] = "truncate"
    good = make(Origin, FILES)
    seen: list[str] = []

    def consume(pieces: Iterator[bytes], url: str) -> bytes:
        data = verify(DIGEST)(pieces, url)
        seen.append(url)
        return data

    f, sleeps = fetcher(settings([short.url, good.url]))
    with f:
        assert f.fetch(NAME, consume) == STORED
    assert seen == [f"{good.url}/{NAME}"]  # the consumer never completed on the short body
    assert len(short.log) == 2 and len(sleeps) == 1  # short transfer: same-URL retry first

    f, _ = fetcher(settings([short.url]))
    with f, pytest.raises(FetchError) as info:
        f.fetch(NAME, consume)
    assert "truncated body" in str(info.value)


def test_hanging_server_times_out_and_fails_over_in_bounded_time(make):
    slow = make(Origin, FILES)
    slow.behave["*"] = "hang"
    good = make(Origin, FILES)
    f, _ = fetcher(settings([slow.url, good.url], CVMFS_TIMEOUT_DIRECT="0.5"))
    start = time.monotonic()
    with f:
        assert f.fetch(NAME, verify(DIGEST)) == STORED
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 3.0  # two 0.5 s timeouts (retry + failover), not HANG_S


def test_stall_in_the_middle_of_a_body_times_out(make):
    slow = make(Origin, FILES)
    slow.behave["*"] = "stall"
    f, _ = fetcher(settings([slow.url], CVMFS_TIMEOUT_DIRECT="0.5"))
    start = time.monotonic()
    with f, pytest.raises(FetchError) as info:
        f.fetch(NAME, verify(DIGEST))
    assert time.monotonic() - start < 3.0
    assert info.value.attempts == [f"{slow.url}/{NAME}: timed out"] * 2


def test_trickling_server_is_too_slow(make):
    slow = make(Origin, FILES)
    slow.behave["*"] = "trickle"  # 10 bytes/s: never idle as long as the read timeout
    f, _ = fetcher(settings([slow.url], CVMFS_TIMEOUT_DIRECT="0.5", CVMFS_LOW_SPEED_LIMIT="1024"))
    start = time.monotonic()
    with f, pytest.raises(FetchError) as info:
        f.fetch(NAME, verify(DIGEST))
    assert time.monotonic() - start < 3.0
    assert len(info.value.attempts) == 2
    assert all("too slow" in a for a in info.value.attempts)


def test_missing_file_on_first_server_fails_over_without_backoff(make):
    empty = make(Origin, {})
    good = make(Origin, FILES)
    f, sleeps = fetcher(settings([empty.url, good.url]))
    with f:
        assert f.fetch(NAME, verify(DIGEST)) == STORED
    assert sleeps == [] and len(empty.log) == 1


def test_429_is_retried_on_the_same_server_after_a_backoff(make):
    busy = make(Origin, FILES)
    busy.behave[NAME] = [429, "ok"]
    f, sleeps = fetcher(settings([busy.url]))
    with f:
        assert f.fetch(NAME, verify(DIGEST)) == STORED
    assert len(busy.log) == 2 and len(sleeps) == 1


def test_redirects_are_errors_unless_enabled(make):
    target = make(Origin, FILES)
    redirecting = make(Origin, FILES)
    redirecting.behave["*"] = ("redirect", target.url)
    f, _ = fetcher(settings([redirecting.url]))
    with f, pytest.raises(FetchError) as info:
        f.fetch(NAME, verify(DIGEST))
    assert "HTTP 302" in str(info.value)
    f, _ = fetcher(settings([redirecting.url], CVMFS_FOLLOW_REDIRECTS="yes"))
    with f:
        assert f.fetch(NAME, verify(DIGEST)) == STORED
    assert len(target.log) == 1


def test_file_server_is_read_directly(tmp_path, make):
    repo = tmp_path / FQRN
    (repo / NAME).parent.mkdir(parents=True)
    (repo / NAME).write_bytes(STORED)
    proxy = make(Proxy)
    f, _ = fetcher(settings([(tmp_path / "missing").as_uri(), repo.as_uri()], proxy.url))
    with f:
        assert f.fetch(NAME, verify(DIGEST)) == STORED
    assert proxy.log == []


# -- proxies ------------------------------------------------------------------------------------


def test_requests_go_through_the_proxy_with_absolute_uri(make):
    origin = make(Origin, FILES)
    proxy = make(Proxy)
    f, _ = fetcher(settings([origin.url], proxy.url.removeprefix("http://")))  # scheme-less proxy
    with f:
        assert f.fetch(NAME, verify(DIGEST)) == STORED
    assert proxy.log[0][0] == f"{origin.url}/{NAME}"
    assert proxy.log[0][1]["User-Agent"] == f"cvmfs-client/{__version__}"
    assert proxy.log[0][1]["Accept-Encoding"] == "identity"


def test_dead_proxy_in_first_group_moves_to_the_next_group(make):
    origin = make(Origin, FILES)
    proxy = make(Proxy)
    f, sleeps = fetcher(settings([origin.url], f"{dead_url('')};{proxy.url}"))
    with f:
        assert f.fetch(NAME, verify(DIGEST)) == STORED
        assert f.fetch(NAME2, verify(DIGEST2)) == STORED2
    assert len(proxy.log) == 2 and len(sleeps) == 1


def test_squid_error_switches_proxy_without_blaming_the_server(make):
    origin = make(Origin, FILES)
    failing = make(Proxy, squid_error=True)
    working = make(Proxy)
    f, sleeps = fetcher(settings([origin.url], f"{failing.url};{working.url}"))
    with f:
        assert f.fetch(NAME, verify(DIGEST)) == STORED
    assert len(failing.log) == 1 and len(working.log) == 1
    assert sleeps == []


def test_load_balanced_members_spread_over_clients_and_stick_per_client(make):
    origin = make(Origin, FILES)
    p1, p2 = make(Proxy), make(Proxy)
    for seed in range(8):
        f, _ = fetcher(settings([origin.url], f"{p1.url}|{p2.url}"), seed=seed)
        with f:
            for _ in range(3):
                f.fetch(NAME, verify(DIGEST))
    assert len(p1.log) + len(p2.log) == 24
    assert len(p1.log) > 0 and len(p2.log) > 0
    assert len(p1.log) % 3 == 0  # each client kept its proxy for all its requests


def test_fallback_proxy_replaces_direct(make):
    origin = make(Origin, FILES)
    fallback = make(Proxy)
    s = settings([origin.url], "DIRECT", CVMFS_FALLBACK_PROXY=fallback.url)
    assert s.proxy_groups == () and s.fallback_groups == ((fallback.url,),)
    f, _ = fetcher(s)
    with f:
        assert f.fetch(NAME, verify(DIGEST)) == STORED
    assert len(fallback.log) == 1


def test_everything_failing_lists_every_attempt(make, caplog):
    broken = make(Origin, FILES)
    broken.behave["*"] = 503
    proxy = make(Proxy)
    dead = dead_url()
    f, sleeps = fetcher(settings([dead, broken.url], f"{proxy.url};DIRECT"))
    with f, caplog.at_level(logging.INFO), pytest.raises(FetchError) as info:
        f.fetch(NAME, verify(DIGEST))
    attempts = info.value.attempts
    assert attempts == [
        f"{dead}/{NAME} via {proxy.url}: HTTP 503 (X-Squid-Error: ERR_CONNECT_FAIL 111)",
        f"{dead}/{NAME}: connection refused",
        f"{dead}/{NAME}: connection refused",
        # The proxy stays marked as failed for the whole process: the next server goes DIRECT.
        f"{broken.url}/{NAME}: HTTP 503",
    ]
    assert len(sleeps) == 1
    assert str(info.value).startswith(f"cannot fetch {NAME}: ")
    assert not info.value.not_found
    # Every attempt is logged as it happens (-v); the error raised says it all, once.
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "cvmfs_client.fetcher"]
    assert [level for level, _ in logged] == [logging.INFO] * len(attempts)
    assert all(a in m for a, (_, m) in zip(attempts, logged, strict=True))


def test_failures_that_failover_hid_are_one_warning(make, caplog):
    dead, broken, good = dead_url(), make(Origin, FILES), make(Origin, FILES)
    broken.behave["*"] = "corrupt"
    f, _ = fetcher(settings([dead, broken.url, good.url]))
    with f, caplog.at_level(logging.WARNING):
        assert f.fetch(NAME, verify(DIGEST)) == STORED
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "cvmfs_client.fetcher"]
    assert warning.startswith(f"{NAME}: fetched from {good.url} after ")
    assert f"{dead}/{NAME}: connection refused" in warning and broken.url in warning


def test_a_file_no_server_has_is_not_found(make, caplog):
    """Every server answering 404 (a repository none of them has) is told apart from failures."""
    empty, also_empty, broken = make(Origin, {}), make(Origin, {}), make(Origin, {})
    broken.behave["*"] = 503
    f, _ = fetcher(settings([empty.url, also_empty.url]))
    with f, caplog.at_level(logging.INFO), pytest.raises(FetchError) as info:
        f.fetch(NAME, verify(DIGEST))
    assert info.value.not_found and len(info.value.attempts) == 2
    assert [r.levelno for r in caplog.records if r.name == "cvmfs_client.fetcher"] == [logging.INFO] * 2
    f, _ = fetcher(settings([empty.url, broken.url]))
    with f, pytest.raises(FetchError) as info:
        f.fetch(NAME, verify(DIGEST))
    assert not info.value.not_found


def test_concurrent_threads_share_the_failover_state(make):
    good = make(Origin, FILES)
    f, _ = fetcher(settings([dead_url(), good.url], CVMFS_MAX_RETRIES="0"))
    results: list[bytes] = []

    def work() -> None:
        results.append(f.fetch(NAME, verify(DIGEST)))

    with f:
        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert f.failover.route().host == good.url  # one switch, not one per thread
    assert results == [STORED] * 6


# -- signed files, probe, Geo API ---------------------------------------------------------------


def test_fetch_bytes_asks_caches_to_revalidate_and_limits_size(make):
    origin = make(Origin, FILES)
    f, _ = fetcher(settings([origin.url]))
    with f:
        assert f.fetch_bytes(".cvmfspublished") == FILES[f"{FQRN}/.cvmfspublished"]
        with pytest.raises(IntegrityError):
            f.fetch_bytes(NAME, limit=10)
    assert origin.log[0][1]["Cache-Control"] == "max-age=0"


def test_probe_reports_every_server_and_proxy(make):
    origin = make(Origin, FILES)
    proxy = make(Proxy)
    dead = dead_url()
    f, _ = fetcher(settings([origin.url, dead], f"{proxy.url};DIRECT"))
    with f:
        results = f.probe()
    assert [(r.server, r.proxy, r.ok) for r in results] == [
        (origin.url, proxy.url, True),
        (origin.url, DIRECT, True),
        (dead, proxy.url, False),
        (dead, DIRECT, False),
    ]
    assert all(r.latency_s >= 0 for r in results)
    assert results[0].reason.startswith("ok")
    assert "X-Squid-Error" in results[2].reason and "connection refused" in results[3].reason
    assert f.failover.route().host == origin.url  # probing does not move the state


def test_geo_api_orders_the_servers_once(make):
    a, b = make(Origin, FILES), make(Origin, FILES)
    a.geo_reply = b.geo_reply = b"2,1\n"
    servers = [a.url.replace("127.0.0.1", "localhost"), b.url]  # names sort as 127.0.0.1, localhost
    f, _ = fetcher(settings(servers, CVMFS_USE_GEOAPI="yes"), seed=1)
    with f:
        f.fetch(NAME, verify(DIGEST))
        f.fetch(NAME2, verify(DIGEST2))
    geo = [p for p in a.names() + b.names() if "/api/v1.0/geo/" in p]
    assert len(geo) == 1
    assert geo[0].endswith("/127.0.0.1,localhost")
    # reply 2,1 = localhost first
    assert [p for p in a.names() if "geo" not in p] == [f"/cvmfs/{FQRN}/{NAME}", f"/cvmfs/{FQRN}/{NAME2}"]


def test_bad_geo_reply_is_ignored_with_a_warning(make, caplog):
    a, b = make(Origin, FILES), make(Origin, FILES)
    a.geo_reply = b.geo_reply = b"1,1\n"
    f, _ = fetcher(settings([b.url, a.url], CVMFS_USE_GEOAPI="yes", CVMFS_MAX_SERVERS="1"))
    with f, caplog.at_level(logging.WARNING):
        f.fetch(NAME, verify(DIGEST))
        assert f.failover.hosts.hosts == (b.url,)  # configured order, truncated to 1
    # One warning naming each server asked and why its answer was not used.
    (warning,) = [r.getMessage() for r in caplog.records if "Geo API" in r.getMessage()]
    assert warning.startswith("Geo API: no usable answer (") and warning.count("/api/v1.0/geo/") == 2


# -- end to end ---------------------------------------------------------------------------------


def test_real_repository_mounts_through_proxy_after_server_failover(make, real_fixtures, tmp_path):
    fqrn = "tools.example.org"
    origin = make(Origin, root=real_fixtures)
    proxy = make(Proxy)
    base = f"http://127.0.0.1:{origin.port}/cvmfs/@fqrn@"
    params = {"CVMFS_SERVER_URL": f"{dead_url('/cvmfs/@fqrn@')};{base}", "CVMFS_HTTP_PROXY": proxy.url}
    f = Fetcher(FetcherSettings.from_parameters(params, fqrn), sleep=lambda s: None)
    keys = load_master_keys(str(real_fixtures / fqrn / f"{fqrn}.pub"), None)
    with f, Repository(fqrn, f, keys, NodeCache(tmp_path, None)) as repo:  # type: ignore[arg-type]
        assert compare_with_truth(repo, load_truth(real_fixtures / f"{fqrn}.truth.tsv")) == []


# -- classification of transport exceptions -----------------------------------------------------


def _wrapped(reason: BaseException) -> requests.ConnectionError:
    return requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "http://h/x", reason))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "via_proxy", "error", "reason"),
    [
        (
            _wrapped(urllib3.exceptions.NameResolutionError("h", None, socket.gaierror(-2, "x"))),  # type: ignore[arg-type]
            False,
            ErrorClass.HOST_RESOLVE,
            "cannot resolve host name",
        ),
        (
            requests.exceptions.ProxyError(
                urllib3.exceptions.MaxRetryError(
                    None,  # type: ignore[arg-type]
                    "http://h/x",
                    urllib3.exceptions.ProxyError("Unable to connect to proxy", socket.gaierror(-2, "x")),
                )
            ),
            True,
            ErrorClass.PROXY_RESOLVE,
            "cannot resolve host name",
        ),
        (
            requests.exceptions.ProxyError(
                urllib3.exceptions.ProxyError(
                    "Unable to connect to proxy", urllib3.exceptions.ConnectTimeoutError("slow")
                )
            ),
            True,
            ErrorClass.PROXY_TOO_SLOW,
            "timed out",
        ),
        (requests.exceptions.ProxyError("odd"), True, ErrorClass.PROXY_CONNECTION, "odd"),
        (requests.exceptions.SSLError("bad cert"), False, ErrorClass.HOST_CONNECTION, "TLS error"),
        (requests.exceptions.TooManyRedirects("5"), True, ErrorClass.HOST_CONNECTION, "too many redirects"),
        (
            _wrapped(urllib3.exceptions.ProtocolError("aborted", ConnectionResetError(104, "reset"))),
            True,
            ErrorClass.PROXY_SHORT_TRANSFER,
            "connection broken",
        ),
        (
            urllib3.exceptions.ReadTimeoutError(None, "u", "read timed out"),
            False,
            ErrorClass.HOST_TOO_SLOW,
            "timed out",
        ),  # type: ignore[arg-type]
    ],
)
def test_transport_exceptions_are_classified_like_curl_errors(exc, via_proxy, error, reason):
    failure = _failure(exc, via_proxy=via_proxy)
    assert (failure.error, failure.reason) == (error, reason)


# -- settings -----------------------------------------------------------------------------------


def test_settings_defaults_and_parsing():
    s = FetcherSettings.from_parameters(
        {
            "CVMFS_SERVER_URL": "http://s1/cvmfs/@fqrn@; http://s2:8000/cvmfs/@org@/",
            "CVMFS_HTTP_PROXY": "p1:3128|http://p2:3128;DIRECT",
        },
        "atlas.cern.ch",
    )
    assert s.servers == ("http://s1/cvmfs/atlas.cern.ch", "http://s2:8000/cvmfs/atlas")
    assert s.proxy_groups == (("http://p1:3128", "http://p2:3128"), (DIRECT,))
    assert (s.timeout, s.timeout_direct, s.max_retries, s.backoff_init, s.backoff_max) == (5, 10, 1, 2, 10)
    assert (s.proxy_reset_after, s.host_reset_after, s.low_speed_limit) == (300, 1800, 1024)
    assert not s.use_geoapi and not s.follow_redirects and s.max_servers == 0
    assert s.retry_policy.backoff_init_ms == 2000


def test_fallback_proxies_strip_direct_from_both_lists():
    s = FetcherSettings.from_parameters(
        {
            "CVMFS_SERVER_URL": "http://s",
            "CVMFS_HTTP_PROXY": "p|DIRECT;DIRECT",
            "CVMFS_FALLBACK_PROXY": "f;DIRECT",
        },
        FQRN,
    )
    assert s.proxy_groups == (("http://p",),)
    assert s.fallback_groups == (("http://f",),)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("CVMFS_TIMEOUT", "soon"),
        ("CVMFS_TIMEOUT_DIRECT", "0"),
        ("CVMFS_MAX_RETRIES", "1.5"),
        ("CVMFS_MAX_RETRIES", "-1"),
        ("CVMFS_BACKOFF_INIT", "nan"),
        ("CVMFS_LOW_SPEED_LIMIT", "fast"),
        ("CVMFS_USE_GEOAPI", "maybe"),
        ("CVMFS_FOLLOW_REDIRECTS", "2"),
        ("CVMFS_MAX_SERVERS", "x"),
        ("CVMFS_HTTP_PROXY", "auto"),
        ("CVMFS_HTTP_PROXY", "socks5://p:1080"),
        ("CVMFS_HTTP_PROXY", "p:notaport"),
        ("CVMFS_SERVER_URL", "ftp://s/cvmfs/x"),
    ],
)
def test_invalid_parameters_name_the_parameter_and_value(param, value):
    params = {"CVMFS_SERVER_URL": "http://s", "CVMFS_HTTP_PROXY": "DIRECT", param: value}
    with pytest.raises(ConfigError) as info:
        FetcherSettings.from_parameters(params, FQRN)
    assert param in str(info.value) and value in str(info.value)


@pytest.mark.parametrize("proxy", [None, "", " ; | "])
def test_empty_proxy_list_is_refused_like_the_real_client(proxy):
    params = {"CVMFS_SERVER_URL": "http://s"}
    if proxy is not None:
        params["CVMFS_HTTP_PROXY"] = proxy
    with pytest.raises(ConfigError, match="CVMFS_HTTP_PROXY=DIRECT"):
        FetcherSettings.from_parameters(params, FQRN)


def test_missing_server_list_is_refused():
    with pytest.raises(ConfigError, match="CVMFS_SERVER_URL"):
        FetcherSettings.from_parameters({"CVMFS_HTTP_PROXY": "DIRECT"}, FQRN)


def test_names_with_reserved_characters_are_quoted(make):
    """Object names never need quoting, but other names (e.g. a tag's file) may: '?', '#',
    '%' and spaces must reach the server as part of the path."""
    odd = "files/a b?c#d%e.txt"
    origin = make(Origin, {f"{FQRN}/{odd}": b"odd"})
    f, _ = fetcher(settings([origin.url]))
    with f:
        assert f.fetch(odd, lambda pieces, url: b"".join(pieces)) == b"odd"
    assert origin.names()[0] == f"/cvmfs/{FQRN}/{odd}"
