"""StratumServer: real HTTP requests, the headers of a real Stratum 1, no escapes from the tree."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cvmfs_client.server import LONG_MAX_AGE, SHORT_MAX_AGE, StratumServer, cache_headers

OBJECT = "data/57/98f7f4ca7585d850eea64610a1f73d8f8de7a3"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "data" / "57").mkdir(parents=True)
    (repo / "data" / "txn").mkdir()
    (repo / ".cvmfspublished").write_bytes(b"Cabc\n--\nsig")
    (repo / ".cvmfswhitelist").write_bytes(b"20240101000000\n")
    (repo / ".cvmfs_status.json").write_text("{}")
    (repo / OBJECT).write_bytes(b"x\x9c\xcbH\xcd\xc9\xc9\xe7\x02\x00\x08K\x02\x1f")
    (tmp_path / "secret.txt").write_text("outside")
    return repo


@pytest.fixture
def server(tree: Path) -> Iterator[StratumServer]:
    with StratumServer(tree) as srv:
        yield srv


def test_manifest_gets_short_expiry_and_cvmfs_type(server: StratumServer) -> None:
    r = requests.get(f"{server.url}/.cvmfspublished", timeout=5)
    assert r.status_code == 200
    assert r.content == b"Cabc\n--\nsig"
    assert r.headers["Content-Type"] == "application/x-cvmfs"
    assert r.headers["Cache-Control"] == f"max-age={SHORT_MAX_AGE}"
    assert r.headers["Content-Length"] == str(len(r.content))
    assert "Last-Modified" not in r.headers
    assert "ETag" not in r.headers


def test_objects_get_three_days(server: StratumServer) -> None:
    r = requests.get(f"{server.url}/{OBJECT}", timeout=5)
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "max-age=259200"
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert "Last-Modified" not in r.headers and "ETag" not in r.headers


def test_json_gets_short_expiry(server: StratumServer) -> None:
    r = requests.get(f"{server.url}/.cvmfs_status.json", timeout=5)
    assert r.headers["Cache-Control"] == "max-age=61"


def test_cache_header_table() -> None:
    assert cache_headers(".cvmfswhitelist") == ("application/x-cvmfs", SHORT_MAX_AGE)
    assert cache_headers("meta.json") == ("application/json", SHORT_MAX_AGE)
    assert cache_headers("98f7f4ca7585d850eeaC") == ("application/octet-stream", LONG_MAX_AGE)


def test_repository_is_reachable_under_cvmfs_fqrn(server: StratumServer) -> None:
    r = requests.get(f"{server.repository_url('example.org')}/.cvmfspublished", timeout=5)
    assert r.status_code == 200 and r.content.startswith(b"Cabc")


def test_directory_of_repositories(tree: Path) -> None:
    with StratumServer(tree.parent) as srv:
        r = requests.get(f"{srv.url}/cvmfs/repo/{OBJECT}", timeout=5)
        assert r.status_code == 200
        assert requests.get(f"{srv.url}/cvmfs/other/.cvmfspublished", timeout=5).status_code == 404


def test_missing_file_is_404_with_length(server: StratumServer) -> None:
    r = requests.get(f"{server.url}/data/00/nothing", timeout=5)
    assert r.status_code == 404
    assert r.headers["Content-Length"] == str(len(r.content))


def test_no_directory_listing(server: StratumServer) -> None:
    for path in ("/", "/data/", "/data/57", "/cvmfs/repo/"):
        assert requests.get(f"{server.url}{path}", timeout=5).status_code == 404


def _raw_get(srv: StratumServer, path: str) -> bytes:
    """Send the path byte-for-byte (requests would normalise the dots away)."""
    with socket.create_connection((srv.host, srv.port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "path", ["/../secret.txt", "/data/../../secret.txt", "/%2e%2e/secret.txt", "/cvmfs/repo/../secret.txt"]
)
def test_path_traversal_is_refused(server: StratumServer, path: str) -> None:
    reply = _raw_get(server, path)
    assert reply.startswith(b"HTTP/1.1 404")
    assert b"outside" not in reply


def test_symlink_out_of_tree_is_refused(server: StratumServer, tree: Path) -> None:
    (tree / ".cvmfsalt-escape").symlink_to(tree.parent / "secret.txt")
    (tree / ".cvmfsalt-ok").symlink_to(tree / OBJECT)
    assert requests.get(f"{server.url}/.cvmfsalt-escape", timeout=5).status_code == 404
    assert requests.get(f"{server.url}/.cvmfsalt-ok", timeout=5).status_code == 200


def test_head_has_length_and_no_body(server: StratumServer) -> None:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    conn.request("HEAD", f"/{OBJECT}")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Length") == "14"
    assert resp.read() == b""
    conn.close()


def test_keep_alive_serves_several_requests_on_one_connection(server: StratumServer) -> None:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    for path in ("/.cvmfspublished", f"/{OBJECT}", "/missing", "/.cvmfswhitelist"):
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        assert not resp.will_close
    sock = conn.sock
    conn.request("GET", "/.cvmfspublished")
    conn.getresponse().read()
    assert conn.sock is sock  # same TCP connection
    conn.close()


def test_range_request(server: StratumServer) -> None:
    r = requests.get(f"{server.url}/{OBJECT}", headers={"Range": "bytes=2-5"}, timeout=5)
    assert r.status_code == 206
    assert r.content == b"\xcbH\xcd\xc9"
    assert r.headers["Content-Range"] == "bytes 2-5/14"


def test_serves_the_real_fixture(real_fixtures: Path) -> None:
    with StratumServer(real_fixtures) as srv:
        r = requests.get(f"{srv.repository_url('tools.example.org')}/.cvmfspublished", timeout=5)
        assert r.status_code == 200
        assert r.content == (real_fixtures / "tools.example.org" / ".cvmfspublished").read_bytes()


def test_stop_returns_with_idle_keep_alive_connection(tree: Path) -> None:
    srv = StratumServer(tree).start()
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    conn.request("GET", "/.cvmfspublished")
    conn.getresponse().read()
    srv.stop()  # must not hang on the open connection
    conn.close()


@pytest.mark.parametrize(
    "request_line", [b"BREW /pot HTTP/1.1\r\n\r\n", b"POST /.cvmfspublished HTTP/1.1\r\nHost: x\r\n\r\n"]
)
def test_unsupported_methods_get_a_short_answer(server: StratumServer, request_line: bytes) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(request_line)
        reply = b""
        while data := s.recv(65536):
            reply += data
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"501"
    length = next(
        int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
    )
    assert len(body) == length
