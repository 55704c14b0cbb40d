"""The fault-injecting origin itself: a correct server except for the fault asked for, each fault
as seen on the wire by a plain HTTP client."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.faultorigin import ALL_FAULTS, Fault, FaultOrigin

FQRN = "test.example.org"
OBJECT = "/cvmfs/test.example.org/data/ab/cdef0123"
MANIFEST = "/cvmfs/test.example.org/.cvmfspublished"
BODY = os.urandom(4096)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    repo = tmp_path / "root" / FQRN
    (repo / "data" / "ab").mkdir(parents=True)
    (repo / "data" / "ab" / "cdef0123").write_bytes(BODY)
    (repo / "data" / "ab" / "empty").write_bytes(b"")
    (repo / ".cvmfspublished").write_bytes(b"Cabc\nNtest.example.org\n--\nsig")
    return tmp_path / "root"


@pytest.fixture
def origin(root: Path):  # type: ignore[no-untyped-def]
    with FaultOrigin(root, stall_seconds=None, drip_bytes=512, drip_interval=0.05) as o:
        yield o


def connect(origin: FaultOrigin, timeout: float = 5.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", origin.port, timeout=timeout)


def get(conn: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    conn.request("GET", path)
    return conn.getresponse()


def status(conn: http.client.HTTPConnection, path: str) -> int:
    """GET ``path`` and read the whole answer (so the connection can carry the next one)."""
    resp = get(conn, path)
    resp.read()
    return resp.status


def test_clean_answers_are_a_stratum1s_with_keep_alive(origin):
    conn = connect(origin)
    resp = get(conn, OBJECT)
    assert resp.status == 200 and resp.read() == BODY
    assert resp.getheader("Cache-Control") == "max-age=259200"
    sock = conn.sock
    resp = get(conn, MANIFEST)
    assert resp.status == 200 and resp.getheader("Cache-Control") == "max-age=61"
    assert resp.read().startswith(b"Cabc")
    resp = get(conn, "/cvmfs/test.example.org/data/00/missing")
    assert resp.status == 404 and resp.read()
    conn.request("HEAD", OBJECT)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Length") == str(len(BODY)) and resp.read() == b""
    assert conn.sock is sock, "one keep-alive connection for every request"
    assert origin.stats.requests == 4 and origin.stats.clean == 4 and origin.stats.total_faults == 0
    assert origin.url == f"http://127.0.0.1:{origin.port}/cvmfs/@fqrn@"


def test_wrong_bytes_flip_exactly_one_byte(origin):
    origin.inject(r"/data/", Fault.WRONG_BYTES, times=1)
    conn = connect(origin)
    resp = get(conn, OBJECT)
    got = resp.read()
    assert resp.status == 200 and len(got) == len(BODY)
    assert [i for i in range(len(BODY)) if got[i] != BODY[i]] == [len(BODY) // 2]
    assert get(conn, OBJECT).read() == BODY, "times=1: the next answer is right, on the same connection"
    assert origin.stats.faults == {"wrong-bytes": 1}


def test_wrong_bytes_of_an_empty_file_are_one_stray_byte(origin):
    origin.inject("empty", Fault.WRONG_BYTES)
    assert get(connect(origin), "/cvmfs/test.example.org/data/ab/empty").read() == b"\xff"


def test_truncate_sends_half_then_closes(origin):
    origin.inject(OBJECT, Fault.TRUNCATE)
    resp = get(connect(origin), OBJECT)
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    assert info.value.partial == BODY[: len(BODY) // 2]


def test_reset_is_a_tcp_reset(origin):
    origin.inject(OBJECT, Fault.RESET)
    with pytest.raises(ConnectionResetError):
        # The reset may overtake the head and half body (both sent just before it).
        get(connect(origin), OBJECT).read()


def test_stall_never_answers_and_is_bounded_by_stall_seconds(origin):
    origin.inject(OBJECT, Fault.STALL)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        get(connect(origin, timeout=0.3), OBJECT)
    assert time.monotonic() - start < 2
    origin.stall_seconds = 0.2
    with pytest.raises(http.client.RemoteDisconnected):  # closed unanswered after the stall
        get(connect(origin, timeout=5), OBJECT)


def test_stall_body_sends_the_head_and_half_the_body(origin):
    origin.inject(OBJECT, Fault.STALL_BODY)
    resp = get(connect(origin, timeout=0.5), OBJECT)
    assert resp.status == 200 and resp.getheader("Content-Length") == str(len(BODY))
    assert resp.read(len(BODY) // 2) == BODY[: len(BODY) // 2]
    with pytest.raises(TimeoutError):
        resp.read(1)


def test_slow_drip_is_right_but_slow(origin):
    origin.inject(OBJECT, Fault.SLOW_DRIP)
    start = time.monotonic()
    resp = get(connect(origin), OBJECT)
    pieces = []
    while piece := resp.read1(65536):
        pieces.append(piece)
    elapsed = time.monotonic() - start
    assert b"".join(pieces) == BODY
    assert elapsed >= (len(BODY) // 512 - 1) * 0.05 * 0.9  # 8 pieces of 512 bytes, 50 ms apart
    assert len(pieces) >= 4, "the body arrives in small pieces"


def test_server_error_keeps_the_connection(origin, root):
    origin.inject(OBJECT, Fault.SERVER_ERROR, times=1)
    conn = connect(origin)
    resp = get(conn, OBJECT)
    assert resp.status == 503 and resp.read() == b"503 Service Unavailable\n"
    assert get(conn, OBJECT).read() == BODY
    with FaultOrigin(root, error_status=500) as other:
        other.inject("", Fault.SERVER_ERROR)
        assert get(connect(other), OBJECT).status == 500


def test_long_content_length_leaves_the_client_waiting(origin):
    origin.inject(OBJECT, Fault.LONG_LENGTH)
    resp = get(connect(origin, timeout=0.5), OBJECT)
    assert int(resp.getheader("Content-Length")) > len(BODY)
    assert resp.read(len(BODY)) == BODY
    with pytest.raises(TimeoutError):
        resp.read(1)


def test_short_content_length_sends_more_than_declared_on_a_kept_connection(origin):
    origin.inject(OBJECT, Fault.SHORT_LENGTH, times=1)
    with socket.create_connection(("127.0.0.1", origin.port), timeout=0.3) as sock:
        sock.sendall(f"GET {OBJECT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with contextlib.suppress(TimeoutError):
            while piece := sock.recv(65536):
                data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        declared = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        assert declared < len(BODY) and body == BODY, "the whole body after a smaller Content-Length"
        sock.sendall(f"GET {OBJECT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 "), "the connection was kept open"


def test_redirect_to_itself_loops_forever(origin):
    origin.inject(OBJECT, Fault.REDIRECT_SELF, times=1)
    resp = get(connect(origin), OBJECT)
    location = resp.getheader("Location")
    assert resp.status == 302 and location == f"{origin.base_url}{OBJECT}?fault-origin=self"
    resp.read()
    again = get(connect(origin), location.removeprefix(origin.base_url))
    assert again.status == 302 and again.getheader("Location") == location
    session = requests.Session()
    session.max_redirects = 4
    with pytest.raises(requests.TooManyRedirects):
        session.get(f"{origin.base_url}{OBJECT}?fault-origin=self", timeout=5)


def test_redirect_loop_goes_a_b_a(origin):
    origin.inject(OBJECT, Fault.REDIRECT_LOOP, times=1)
    conn = connect(origin)
    a = get(conn, OBJECT)
    a.read()
    b_url = a.getheader("Location")
    assert a.status == 302 and b_url != f"{origin.base_url}{OBJECT}"
    b = get(conn, b_url.removeprefix(origin.base_url))
    b.read()
    assert b.status == 302 and b.getheader("Location").startswith(f"{origin.base_url}{OBJECT}?")
    a2 = get(conn, b.getheader("Location").removeprefix(origin.base_url))
    a2.read()
    assert a2.status == 302 and a2.getheader("Location") == b_url
    session = requests.Session()
    session.max_redirects = 4
    with pytest.raises(requests.TooManyRedirects):
        session.get(b_url, timeout=5)
    assert origin.stats.faults == {"redirect-loop": 1}, "loop hops are requests, not new faults"


def test_rules_match_by_regex_or_predicate_in_order_and_count(origin):
    first = origin.inject(lambda path: path.endswith(".cvmfspublished"), Fault.SERVER_ERROR, times=2)
    second = origin.inject(r"\.cvmfs", Fault.SERVER_ERROR, times=1)
    conn = connect(origin)
    statuses = [status(conn, MANIFEST) for _ in range(4)]
    assert statuses == [503, 503, 503, 200]
    assert (first.hits, second.hits) == (2, 1)
    assert status(conn, OBJECT) == 200, "no rule matches the object"
    origin.inject("", Fault.SERVER_ERROR)
    origin.clear()
    assert status(conn, OBJECT) == 200
    assert [e.outcome for e in origin.events(r"published$")] == ["5xx", "5xx", "5xx", "200"]


def test_faults_apply_only_to_files_that_exist(origin):
    origin.inject("", Fault.SERVER_ERROR)
    assert get(connect(origin), "/cvmfs/test.example.org/data/00/missing").status == 404
    conn = connect(origin)
    conn.request("HEAD", OBJECT)
    assert conn.getresponse().status == 200
    assert origin.stats.total_faults == 0


def test_random_mode_is_seeded_and_counts_by_kind(root):
    def run(seed: int) -> list[str]:
        with FaultOrigin(root, stall_seconds=0.05, drip_bytes=4096, drip_interval=0) as o:
            o.random_faults(0.5, kinds=[Fault.SERVER_ERROR, Fault.WRONG_BYTES], seed=seed)
            for _ in range(200):
                conn = connect(o)
                get(conn, OBJECT).read()
                conn.close()
            stats = o.stats
            assert stats.requests == 200 and stats.clean + stats.total_faults == 200
            assert set(stats.faults) <= {"5xx", "wrong-bytes"}
            assert 60 <= stats.total_faults <= 140
            return [e.outcome for e in o.events()]

    first = run(7)
    assert first == run(7), "the same seed faults the same requests the same way"
    assert first != run(8)


def test_random_mode_every_kind_with_threads(root):
    with FaultOrigin(root, stall_seconds=0.05, drip_bytes=4096, drip_interval=0) as o:
        o.random_faults(1.0, seed=1, match="/data/")
        errors: list[BaseException] = []
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()

        def client() -> None:
            for _ in range(40):
                try:
                    conn = connect(o, timeout=0.5)
                    resp = get(conn, OBJECT)
                    outcome = "good" if resp.status == 200 and resp.read() == BODY else "bad"
                    conn.close()
                except (OSError, http.client.HTTPException):
                    outcome = "error"
                except BaseException as exc:  # pragma: no cover - shown by the assert below
                    errors.append(exc)
                    return
                with lock:
                    outcomes[outcome] += 1

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        stats = o.stats
        # Counted under one lock: every request is either clean or one fault, none lost.
        assert stats.requests > 200 and stats.clean == 0 and stats.requests == stats.total_faults
        assert stats.faults.keys() == {f.value for f in ALL_FAULTS}, stats.faults
        assert outcomes["good"] <= stats.faults["slow-drip"], "rate 1.0: only a drip ends right"
        assert get(connect(o), MANIFEST).status == 200, "random mode limited to /data/"


def test_stop_releases_stalled_clients_at_once(root):
    o = FaultOrigin(root).start()
    o.inject("", Fault.STALL)
    sock = socket.create_connection(("127.0.0.1", o.port), timeout=10)
    sock.sendall(f"GET {OBJECT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    time.sleep(0.2)
    start = time.monotonic()
    o.stop()
    assert sock.recv(100) == b""
    assert time.monotonic() - start < 2
    o.stop()


def test_bad_arguments_are_refused(origin, tmp_path):
    with pytest.raises(ValueError):
        origin.inject("", Fault.STALL, times=0)
    with pytest.raises(ValueError):
        origin.random_faults(1.5)
    with pytest.raises(NotADirectoryError):
        FaultOrigin(tmp_path / "nowhere")


def test_a_repository_may_be_a_symlink_but_nothing_leaves_it(root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (root / FQRN).rename(elsewhere)
    (root / FQRN).symlink_to(elsewhere)
    (tmp_path / "secret").write_text("outside")
    (elsewhere / "data" / "ab" / "escape").symlink_to(tmp_path / "secret")
    with FaultOrigin(root) as o:
        conn = connect(o)
        assert status(conn, OBJECT) == 200
        for path in (
            "/cvmfs/test.example.org/data/ab/escape",
            "/cvmfs/../secret",
            "/cvmfs/test.example.org/../../secret",
            "/cvmfs/",
            "/other/test.example.org/.cvmfspublished",
        ):
            assert status(conn, path) in (400, 404), path
