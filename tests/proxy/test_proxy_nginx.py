"""cvmfs-proxy as a real process between clients and a real nginx Stratum 1."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from cvmfs_client.client import open_repository
from tests.integration.nginx import free_port
from tests.proxy.conftest import get
from tests.truth import compare_with_truth, load_truth

FQRNS = ("tools.example.org", "tiny-shake.example.org")
BIG = 50 << 20


def client_params(fixtures: Path, server_url: str, proxy_url: str, cache: Path, fqrn: str) -> dict[str, str]:
    return {
        "CVMFS_SERVER_URL": server_url,
        "CVMFS_HTTP_PROXY": proxy_url,
        "CVMFS_PUBLIC_KEY": str(fixtures / fqrn / f"{fqrn}.pub"),
        "CVMFS_CACHE_BASE": str(cache),
    }


def read_all(fixtures: Path, server_url: str, proxy_url: str, cache: Path) -> None:
    for fqrn in FQRNS:
        with open_repository(fqrn, client_params(fixtures, server_url, proxy_url, cache, fqrn)) as repo:
            assert compare_with_truth(repo, load_truth(fixtures / f"{fqrn}.truth.tsv")) == []


def some_object(root: Path, fqrn: str = "tools.example.org") -> str:
    """Relative name of one content object of a fixture repository."""
    data = root / fqrn / "data"
    return str(
        min(p for p in data.rglob("*") if p.is_file() and p.stat().st_size > 64).relative_to(root / fqrn)
    )


def make_big_object(root: Path, fqrn: str = "big.example.org", corrupt: bool = False) -> tuple[str, bytes]:
    """A 50 MB content object named by its SHA-1 (``corrupt``: the stored bytes differ by one)."""
    data = os.urandom(BIG)
    h = hashlib.sha1(data).hexdigest()
    path = root / fqrn / "data" / h[:2] / h[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = bytearray(data)
    if corrupt:
        stored[BIG // 2] ^= 0xFF
    path.write_bytes(stored)
    return f"/cvmfs/{fqrn}/data/{h[:2]}/{h[2:]}", data


def test_client_reads_real_repositories_through_proxy_and_second_client_hits(
    real_fixtures, tmp_path, nginx_server, proxy
):
    server = nginx_server(real_fixtures)
    p = proxy()
    read_all(real_fixtures, server.server_url, p.url, tmp_path / "c1")
    upstream = len(server.wait_for_requests(1))
    first = p.stats()
    assert first["upstream_requests"] == upstream > 0
    assert first["hash_mismatches"] == 0 and first["stored_objects"] > 0

    read_all(real_fixtures, server.server_url, p.url, tmp_path / "c2")  # a second node, empty cache
    second = p.stats()
    # Only the signed entry files went upstream again: our client asks for them with
    # Cache-Control: max-age=0 (revalidation); every content object came from the proxy cache.
    again = server.access_lines()[upstream:]
    assert again and all(re.search(r"/\.cvmfs(published|whitelist) ", line) for line in again), again
    assert second["hits"] - first["hits"] == second["requests"] - first["requests"] - 1 - len(again)
    assert second["revalidations"] - first["revalidations"] == len(again)
    lines = [line for line in p.access_lines() if "/cvmfs-proxy/stats" not in line]
    squid = re.compile(r"^\d+\.\d{3} +\d+ 127\.0\.0\.1 [A-Z_]+/\d{3} \d+ GET http://\S+ - [A-Z_]+/\S+ \S+$")
    assert lines and all(squid.match(line) for line in lines), lines[:3]
    assert any("TCP_MEM_HIT/200" in line for line in lines)
    assert any("TCP_MISS/200" in line and "HIER_DIRECT/127.0.0.1" in line for line in lines)


def test_restart_keeps_cache_and_serves_with_origin_down(real_fixtures, tmp_path, nginx_server, proxy):
    server = nginx_server(real_fixtures)
    cache = tmp_path / "proxy-cache"
    p = proxy(cache_dir=cache)
    read_all(real_fixtures, server.server_url, p.url, tmp_path / "c1")
    objects = p.stats()["cache_objects"]
    assert p.stop() == 0
    server.stop()  # the origin is gone: only the proxy's disk cache can answer now

    p2 = proxy(cache_dir=cache)
    assert p2.stats()["cache_objects"] == objects
    read_all(real_fixtures, server.server_url, p2.url, tmp_path / "c2")
    stats = p2.stats()
    # The signed files the client revalidates (max-age=0) are served from the cache when the
    # upstream cannot be reached, as Squid does (TCP_REFRESH_FAIL_OLD).
    assert stats["hits"] > 0 and stats["upstream_requests"] == stats["upstream_errors"] == 4
    assert sum("TCP_REFRESH_FAIL_OLD/200" in line for line in p2.access_lines()) == 4


def test_corrupted_object_is_refused_and_not_cached(real_fixtures, tmp_path, nginx_server, proxy):
    root = tmp_path / "origin"
    shutil.copytree(real_fixtures / "tools.example.org", root / "tools.example.org")
    name = some_object(root)
    obj = root / "tools.example.org" / name
    obj.chmod(0o644)
    raw = bytearray(obj.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    obj.write_bytes(raw)
    server = nginx_server(root)
    p = proxy()
    url = f"{server.url}/cvmfs/tools.example.org/{name}"
    for attempt in (1, 2):
        status, headers, body = get(p.port, url)
        assert status == 502 and "hash mismatch" in body.decode()
        assert "error=http_response_content_error" in headers["proxy-status"]
        assert len(server.wait_for_requests(attempt)) == attempt, "a refused object must not be cached"
    stats = p.stats()
    assert stats["hash_mismatches"] == 2 and stats["cache_objects"] == 0

    # A client's own verification then fails over to a good server; the good copy is cached.
    good = nginx_server(real_fixtures)
    status, _, body = get(p.port, f"{good.url}/cvmfs/tools.example.org/{name}")
    assert status == 200 and body == (real_fixtures / "tools.example.org" / name).read_bytes()
    status, headers, body = get(p.port, url)  # same hash, other host: served verified from cache
    assert status == 200 and headers["x-cache"].startswith("HIT") and body != bytes(raw)


def test_large_corrupted_object_is_aborted_mid_body(tmp_path, slow_nginx, proxy):
    path, _ = make_big_object(tmp_path / "origin", corrupt=True)
    server = slow_nginx(tmp_path / "origin", rate="200m")
    p = proxy()
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=30)
    conn.request("GET", f"{server.url}{path}")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == BIG  # streamed before the end
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        resp.read()
    conn.close()
    stats = p.stats()
    assert stats["hash_mismatches"] == 1 and stats["cache_objects"] == 0


def _fetch_and_compare(
    port: int, url: str, expected: bytes, results: list[bool], barrier: threading.Barrier
) -> None:
    ok = False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            barrier.wait()
            s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            buf = bytearray()
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("no head")
                buf += chunk
            head, _, rest = bytes(buf).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            view = memoryview(expected)
            pos, same = len(rest), rest == expected[: len(rest)]
            piece = bytearray(1 << 20)
            while same:
                n = s.recv_into(piece)
                if not n:
                    break
                same = piece[:n] == view[pos : pos + n]
                pos += n
            ok = same and pos == len(expected)
    finally:
        results.append(ok)


def test_200_concurrent_misses_make_one_upstream_request(tmp_path, slow_nginx, proxy):
    path, data = make_big_object(tmp_path / "origin")
    server = slow_nginx(tmp_path / "origin", rate="50m")  # about 1 s: every client arrives mid-download
    p = proxy()
    url = f"{server.url}{path}"
    results: list[bool] = []
    barrier = threading.Barrier(200)
    threads = [
        threading.Thread(target=_fetch_and_compare, args=(p.port, url, data, results, barrier))
        for _ in range(200)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results.count(True) == 200
    lines = server.wait_for_requests(1)
    assert len(lines) == 1 and path in lines[0]
    stats = p.stats()
    assert stats["upstream_requests"] == 1
    assert stats["collapsed"] + stats["hits"] == 199 and stats["collapsed"] > 100


def test_not_an_open_proxy(real_fixtures, nginx_server, proxy):
    server = nginx_server(real_fixtures)
    url = f"{server.url}/cvmfs/tools.example.org/.cvmfspublished"
    outsider = proxy("--allow-client", "10.0.0.0/8")
    status, headers, _ = get(outsider.port, url)
    assert status == 403 and "http_request_denied" in headers["proxy-status"]

    p = proxy("--allow-upstream", "stratum1.example.org", "--allow-upstream", "*.cern.ch")
    status, headers, body = get(p.port, url)
    assert status == 403 and "not in the allowed upstream patterns" in body.decode()
    assert len(server.access_lines()) == 0

    open_ = proxy()  # defaults: loopback clients, any host, but only /cvmfs/ paths
    status, _, _ = get(open_.port, f"{server.url}/etc/passwd")
    assert status == 403
    status, _, _ = get(open_.port, url, method="POST")
    assert status == 405
    with socket.create_connection(("127.0.0.1", open_.port), timeout=5) as s:
        s.sendall(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 403")


def _recv_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def test_malformed_requests_are_cut_off_without_harming_others(real_fixtures, nginx_server, proxy):
    server = nginx_server(real_fixtures)
    p = proxy("--header-timeout", "1")
    url = f"{server.url}/cvmfs/tools.example.org/.cvmfspublished"
    assert get(p.port, url)[0] == 200
    latencies: list[float] = []
    stop = threading.Event()

    def good_client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
        while not stop.is_set():
            t = time.monotonic()
            conn.request("GET", url)
            assert conn.getresponse().read()
            latencies.append(time.monotonic() - t)
            time.sleep(0.01)
        conn.close()

    worker = threading.Thread(target=good_client)
    worker.start()
    try:
        slow = [socket.create_connection(("127.0.0.1", p.port), timeout=10) for _ in range(50)]
        for s in slow:  # slowloris: a head that never ends
            s.sendall(b"GET " + url.encode() + b" HTTP/1.1\r\nX-a: ")
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"GARBAGE\r\n\r\n")
            assert _recv_all(s).startswith(b"HTTP/1.1 400")
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"GET " + url.encode() + b" HTTP/1.1\r\n" + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n")
            assert _recv_all(s)[:12] in (b"HTTP/1.1 431", b"")  # answered, or reset while still sending
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"GET " + url.encode() + b" HTTP/1.1\n\n")  # bare LF
            assert _recv_all(s).startswith(b"HTTP/1.1 400")
        t = time.monotonic()
        for s in slow:
            s.sendall(b"b")  # trickling bytes must not extend the header deadline
        answers = [_recv_all(s) for s in slow]
        assert time.monotonic() - t < 3
        assert all(a.startswith(b"HTTP/1.1 408") or a == b"" for a in answers)
        for s in slow:
            s.close()
    finally:
        stop.set()
        worker.join()
    assert latencies and max(latencies) < 0.5
    stats = p.stats()
    assert stats["bad_requests"] >= 2 and stats["client_timeouts"] >= 50 and stats["clients"] <= 2


def test_failed_upstream_host_poisons_nothing(real_fixtures, tmp_path, nginx_server, proxy):
    server = nginx_server(real_fixtures)
    p = proxy()
    dead = f"http://127.0.0.1:{free_port()}/cvmfs/@fqrn@"
    read_all(real_fixtures, f"{dead};{server.server_url}", p.url, tmp_path / "c1")
    stats = p.stats()
    assert stats["upstream_errors"] >= 1
    name = some_object(real_fixtures)
    dead_url = dead.replace("@fqrn@", "tools.example.org") + "/.cvmfspublished"
    for _ in range(2):  # the error is never cached: each request asks again
        status, headers, body = get(p.port, dead_url)
        assert status == 502 and "connection_refused" in headers["proxy-status"] and b"cannot connect" in body
    # An immutable object from the dead host's URL is answered from what the live host delivered.
    status, headers, body = get(p.port, dead.replace("@fqrn@", "tools.example.org") + "/" + name)
    assert status == 200 and body == (real_fixtures / "tools.example.org" / name).read_bytes()


def test_no_cache_revalidates_and_range_is_served_from_cache(real_fixtures, nginx_server, proxy):
    server = nginx_server(real_fixtures)
    p = proxy()
    manifest = f"{server.url}/cvmfs/tools.example.org/.cvmfspublished"
    expected = (real_fixtures / "tools.example.org" / ".cvmfspublished").read_bytes()
    assert get(p.port, manifest)[2] == expected
    status, headers, _ = get(p.port, manifest)
    assert headers["x-cache"].startswith("HIT") and int(headers["age"]) < 61
    assert len(server.wait_for_requests(1)) == 1
    for h in ({"Cache-Control": "no-cache"}, {"Pragma": "no-cache"}):
        status, headers, body = get(p.port, manifest, h)
        assert status == 200 and headers["x-cache"].startswith("MISS") and body == expected
    assert len(server.wait_for_requests(3)) == 3

    name = some_object(real_fixtures)
    data = (real_fixtures / "tools.example.org" / name).read_bytes()
    url = f"{server.url}/cvmfs/tools.example.org/{name}"
    status, headers, body = get(p.port, url, {"Range": "bytes=2-9"})  # a miss: whole object fetched
    assert status == 206 and body == data[2:10] and headers["content-range"] == f"bytes 2-9/{len(data)}"
    status, headers, body = get(p.port, url, {"Range": "bytes=-5"})
    assert status == 206 and body == data[-5:] and headers["x-cache"].startswith("HIT")
    assert get(p.port, url, {"Range": f"bytes={len(data)}-"})[0] == 416
    status, _, body = get(p.port, url, method="HEAD")
    assert status == 200 and body == b""
    assert len(server.wait_for_requests(4)) == 4


def test_signals_stats_and_graceful_shutdown(tmp_path, slow_nginx, proxy):
    path, data = make_big_object(tmp_path / "origin")
    server = slow_nginx(tmp_path / "origin", rate="50m")
    p = proxy()
    p.process.send_signal(signal.SIGUSR1)
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=30)
    conn.request("GET", f"{server.url}{path}")
    resp = conn.getresponse()
    p.process.send_signal(signal.SIGTERM)  # mid-transfer: the transfer finishes, then the proxy exits
    assert hashlib.sha1(resp.read()).digest() == hashlib.sha1(data).digest()
    assert p.process.wait(20) == 0
    log = p.log()
    assert re.search(r"stats \{.*\"requests\": 0", log) and "shutting down" in log
    assert any("TCP_MISS/200" in line for line in p.access_lines(wait=0))


def test_pipelined_requests_shaped_like_the_real_cvmfs_client(real_fixtures, nginx_server, proxy):
    """libcurl as the real client uses it (spec 7.1): empty Pragma, Proxy-Connection, pipelined."""
    server = nginx_server(real_fixtures)
    p = proxy()
    name = some_object(real_fixtures)
    urls = [f"{server.url}/cvmfs/tools.example.org/{n}" for n in (".cvmfspublished", name, name)]
    request = (
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\nProxy-Connection: Keep-Alive\r\n"
        "Connection: Keep-Alive\r\nPragma:\r\nUser-Agent: cvmfs Fuse 2.12.0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall("".join(request.format(u) for u in urls).encode())  # all three at once
        f = s.makefile("rb")
        bodies = []
        for _ in urls:
            status = f.readline()
            headers = {}
            while (line := f.readline()) != b"\r\n":
                k, _, v = line.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            assert status.startswith(b"HTTP/1.1 200") and headers["connection"] == "keep-alive"
            bodies.append(f.read(int(headers["content-length"])))
    root = real_fixtures / "tools.example.org"
    assert bodies == [(root / ".cvmfspublished").read_bytes(), *[(root / name).read_bytes()] * 2]
    assert len(server.wait_for_requests(2)) == 2


class _BadUpstream:
    """A TCP server that misbehaves on purpose: ``hang`` never answers, ``truncate`` stops mid-body."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.recv(65536)
            self.requests += 1
            if self.mode == "truncate":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nCache-Control: max-age=60\r\n\r\n"
                    + b"x" * 10
                )
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_hanging_and_truncating_upstreams_give_504_and_502_and_cache_nothing(proxy):
    p = proxy("--upstream-timeout", "1")
    hang, trunc = _BadUpstream("hang"), _BadUpstream("truncate")
    try:
        status, headers, body = get(p.port, f"http://127.0.0.1:{hang.port}/cvmfs/a.org/.cvmfspublished")
        assert status == 504 and "http_response_timeout" in headers["proxy-status"] and b"no response" in body
        url = f"http://127.0.0.1:{trunc.port}/cvmfs/a.org/.cvmfspublished"
        for attempt in (1, 2):
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
            conn.request("GET", url)
            try:
                resp = conn.getresponse()
                assert resp.status != 200 or len(resp.read()) < 1000
            except (http.client.IncompleteRead, ConnectionError):
                pass
            finally:
                conn.close()
            assert trunc.requests == attempt  # the partial object was not cached
    finally:
        hang.close()
        trunc.close()
    stats = p.stats()
    assert stats["cache_objects"] == 0 and stats["upstream_errors"] == 3
