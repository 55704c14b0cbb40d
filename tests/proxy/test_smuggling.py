"""Request and response smuggling between cvmfs-proxy's client (front) and upstream (back)
connections, against the real proxy process.

The upstream here is a scripted TCP server: it records every request head the proxy sends (so a
test sees exactly what crossed to the back connection) and answers each with bytes chosen by the
test, including broken framing. Claims are listed in docs/security.md ("Proxy").
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from proxy.http import ChunkedDecoder, RemoteProtocolError, ResponseHeadParser, response_framing
from tests.proxy.conftest import get
from tests.proxy.procs import ProxyProcess, start_proxy

MANIFEST = "/cvmfs/a.org/.cvmfspublished"
OTHER = "/cvmfs/b.org/.cvmfspublished"
CLOSE = "Connection: close\r\n"  # the proxy closes after its answer: no waiting for a timeout


def ok(body: bytes, extra: str = "") -> bytes:
    """A well-framed, cacheable 200 response."""
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nCache-Control: max-age=60\r\n{extra}\r\n"
    return head.encode() + body


@dataclass
class Upstream:
    """A TCP server that answers the n-th request it reads (over all connections) with
    ``replies[n]``: bytes, or a list of ``(delay, bytes)`` pieces; past the end it sends nothing.
    ``heads`` records ``(connection number, request head)`` in arrival order."""

    replies: list[bytes | list[tuple[float, bytes]]]
    heads: list[tuple[int, bytes]] = field(default_factory=list)
    connections: int = 0
    sock: socket.socket = field(init=False)
    conns: list[socket.socket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                number = self.connections
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                with self.lock:
                    index = len(self.heads)
                    self.heads.append((number, head))
                reply = self.replies[index] if index < len(self.replies) else b""
                for delay, piece in [(0.0, reply)] if isinstance(reply, bytes) else reply:
                    time.sleep(delay)
                    conn.sendall(piece)
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def upstream() -> Iterator[type[Upstream]]:
    made: list[Upstream] = []

    def make(replies: list[bytes | list[tuple[float, bytes]]]) -> Upstream:
        u = Upstream(replies)
        made.append(u)
        return u

    yield make  # type: ignore[misc]
    for u in made:
        u.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """One proxy for the module: each test has its own upstream (its own port, so its own URLs
    and cache entries)."""
    p = start_proxy(tmp_path_factory.mktemp("proxy"), "--upstream-timeout", "1")
    yield p
    p.stop()


def exchange(port: int, raw: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes to the proxy; everything it answers until it closes (or goes quiet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                return out
            if not chunk:
                return out
            out += chunk


def responses(raw: bytes) -> list[tuple[int, bytes]]:
    """Split a byte stream of Content-Length-framed responses into (status, body)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(
            int(v) for k, _, v in (x.partition(b":") for x in lines[1:]) if k.lower() == b"content-length"
        )
        out.append((int(lines[0].split()[1]), rest[:length]))
        raw = rest[length:]
    return out


# --- front: what a client sends ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 0\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\n",
        "Transfer-Encoding: chunked , identity\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "transfer-ENCODING: Chunked\r\n",
        "Transfer-Encoding : chunked\r\n",
        "X-A: a\r\n b\r\n",
        "Transfer-Encoding:\r\n chunked\r\n",
        "X-A: a\rTransfer-Encoding: chunked\r\n",
    ],
    ids=[
        "CL-TE",
        "TE-CL",
        "two-CL",
        "CL",
        "chunked-identity",
        "xchunked",
        "TE-case",
        "space-before-colon",
        "obs-fold",
        "obs-fold-TE",
        "bare-CR",
    ],
)
def test_a_request_with_a_body_or_ambiguous_framing_is_refused_and_the_connection_closed(
    shared, upstream, headers
):
    """Whatever follows such a head (a smuggled request) is never read: the connection closes."""
    up = upstream([ok(b"manifest")])
    p = shared
    smuggled = f"GET {up.url(OTHER)} HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = f"GET {up.url(MANIFEST)} HTTP/1.1\r\nHost: x\r\n{headers}\r\n0\r\n\r\n{smuggled}"
    out = exchange(p.port, raw.encode())
    got = responses(out)
    assert len(got) == 1 and got[0][0] in (400, 411, 413) and b"Connection: close" in out, out[:300]
    time.sleep(0.2)
    assert up.heads == []  # nothing reached the upstream


def test_a_get_body_without_framing_is_taken_as_the_next_request(shared, upstream):
    """No Content-Length, no Transfer-Encoding: no body (RFC 9112 6.3). What follows the head is
    parsed as a request of its own, and refused if it is not one."""
    up = upstream([ok(b"manifest")])
    p = shared
    raw = f"GET {up.url(MANIFEST)} HTTP/1.1\r\nHost: x\r\n\r\nhello\r\n\r\n".encode()
    got = responses(exchange(p.port, raw))
    assert [s for s, _ in got] == [200, 400] and got[0][1] == b"manifest"
    assert [h.split(b"\r\n")[0] for _, h in up.heads] == [f"GET {MANIFEST} HTTP/1.1".encode()]


def test_pipelined_requests_are_answered_in_order_and_forwarded_one_by_one(shared, upstream):
    up = upstream([ok(b"first"), ok(b"second")])
    p = shared
    raw = "".join(
        f"{method} {up.url(path)} HTTP/1.1\r\nHost: x\r\n\r\n"
        for method, path in (("GET", MANIFEST), ("GET", OTHER), ("HEAD", MANIFEST), ("GET", MANIFEST))
    ).encode()
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(raw)
        f = s.makefile("rb")
        got = []
        for i in range(4):
            status = f.readline()
            headers = {}
            while (line := f.readline()) != b"\r\n":
                k, _, v = line.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers["content-length"])
            got.append((status.split()[1], f.read(0 if i == 2 else length)))
    assert got == [(b"200", b"first"), (b"200", b"second"), (b"200", b""), (b"200", b"first")]
    assert [h.split(b"\r\n")[0] for _, h in up.heads] == [
        f"GET {MANIFEST} HTTP/1.1".encode(),
        f"GET {OTHER} HTTP/1.1".encode(),
    ]


def test_the_upstream_host_comes_from_the_absolute_url_never_from_host(proxy, upstream):
    """RFC 9112 3.2.2: with an absolute-form target the Host header is ignored; a Host naming an
    allowed server cannot carry a request to a denied one, nor the reverse."""
    up = upstream([ok(b"manifest")])
    p = proxy("--allow-upstream", "127.0.0.1")
    raw = f"GET {up.url(MANIFEST)} HTTP/1.1\r\nHost: evil.example.org\r\nConnection: close\r\n\r\n".encode()
    assert responses(exchange(p.port, raw))[0] == (200, b"manifest")
    head = up.heads[0][1].decode()
    assert f"\r\nHost: 127.0.0.1:{up.port}\r\n" in head and "evil" not in head
    raw = (
        f"GET http://evil.example.org{MANIFEST} HTTP/1.1\r\nHost: 127.0.0.1:{up.port}\r\n{CLOSE}\r\n".encode()
    )
    assert responses(exchange(p.port, raw))[0][0] == 403
    raw = f"GET {MANIFEST} HTTP/1.1\r\nHost: 127.0.0.1:{up.port}\r\n{CLOSE}\r\n".encode()  # origin-form
    assert responses(exchange(p.port, raw))[0][0] == 400
    assert len(up.heads) == 1


def test_only_a_new_request_head_crosses_to_the_upstream(shared, upstream):
    """The back request is written by the proxy (method, path, Host, a few known headers), never
    copied: a header the client sends cannot add a second request or framing upstream."""
    up = upstream([ok(b"manifest")])
    p = shared
    raw = (
        f"GET {up.url(MANIFEST)} HTTP/1.1\r\nHost: x\r\nUser-Agent: cvmfs\r\nX-CVMFS-Test: 1\r\n"
        "Content-Length: 0\r\nUpgrade: h2c\r\nX-Other: GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
    ).encode()
    assert responses(exchange(p.port, raw))[0] == (200, b"manifest")
    lines = up.heads[0][1].decode().split("\r\n")
    names = [line.split(":")[0].lower() for line in lines[1:]]
    assert lines[0] == f"GET {MANIFEST} HTTP/1.1"
    assert names == ["host", "user-agent", "x-cvmfs-test", "via", "x-forwarded-for", "connection"]


# --- back: what an upstream answers ---------------------------------------------------------------------


def test_only_a_lone_chunked_transfer_encoding_frames_a_response():
    def framing(head: bytes):  # type: ignore[no-untyped-def]
        return response_framing("GET", ResponseHeadParser().feed(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n"))

    assert framing(b"Transfer-Encoding: Chunked\r\n").kind == "chunked"
    assert framing(b"Content-Length: 5\r\nContent-Length: 5\r\n").length == 5  # the same twice
    for bad in (
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: xchunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: \r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
    ):
        with pytest.raises(RemoteProtocolError) as exc:
            framing(bad)
        assert exc.value.status == 502, bad
    decoder = ChunkedDecoder()
    assert decoder.feed(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200") == [b"abc"]
    assert decoder.done and decoder.surplus == len(b"HTTP/1.1 200")


def fetch(port: int, url: str) -> tuple[int, bytes]:
    """(status, body) of one GET through the proxy; status 0 when the body was cut short."""
    try:
        status, _, body = get(port, url)
    except (http.client.IncompleteRead, ConnectionError):
        return 0, b""
    return status, body


def two_requests(p: ProxyProcess, up: Upstream) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
    """One URL, then, once late bytes of its answer (if any) have arrived, another on the same
    upstream: the pooled connection would carry the second request."""
    first = fetch(p.port, up.url(MANIFEST))
    time.sleep(0.3)
    return first, fetch(p.port, up.url(OTHER))


@pytest.mark.parametrize(
    ("name", "reply"),
    [
        ("CL and TE", b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nEVIL!\r\n0\r\n\r\n"),
        ("chunked, identity", b"Transfer-Encoding: chunked, identity\r\n\r\n5\r\nEVIL!\r\n0\r\n\r\n"),
        ("xchunked", b"Transfer-Encoding: xchunked\r\n\r\n5\r\nEVIL!\r\n0\r\n\r\n"),
        ("chunked twice", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("two Content-Lengths", b"Content-Length: 5\r\nContent-Length: 3\r\n\r\nEVIL!"),
        ("obs-fold", b"Content-Length: 5\r\nX-A: a\r\n b\r\n\r\nEVIL!"),
        ("space before colon", b"Content-Length : 3\r\n\r\nEVIL!"),
    ],
)
def test_an_upstream_answer_with_ambiguous_framing_is_refused_and_its_connection_dropped(
    shared, upstream, name, reply
):
    up = upstream([b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n" + reply, ok(b"second"), ok(b"again")])
    p = shared
    (status, body), second = two_requests(p, up)
    assert status == 502, (name, status, body)
    assert second == (200, b"second")
    assert [n for n, _ in up.heads] == [1, 2]  # the second request went out on a new connection
    assert fetch(p.port, up.url(MANIFEST)) == (200, b"again")  # nothing was cached: asked again


@pytest.mark.parametrize("late", [False, True], ids=["same-segment", "later-segment"])
def test_bytes_beyond_content_length_are_never_taken_as_the_next_response(shared, upstream, late):
    """A reply longer than its Content-Length carries, after it, what looks like a response to the
    next request on that connection: it must be dropped with the connection, not served."""
    smuggled = ok(b"EVIL")
    first = ok(b"first")
    reply: bytes | list[tuple[float, bytes]] = [(0.0, first), (0.1, smuggled)] if late else first + smuggled
    up = upstream([reply, ok(b"second")])
    p = shared
    (status, body), second = two_requests(p, up)
    if late:
        assert (status, body) == (200, b"first")  # complete before the extra bytes came
    else:
        assert status in (0, 502)  # the overrun is seen with the body: refused or cut short
    assert second == (200, b"second")
    assert [n for n, _ in up.heads] == [1, 2]
    assert fetch(p.port, up.url(OTHER)) == (200, b"second")  # and the good answer was cached


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 33\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ],
)
def test_a_body_after_a_bodiless_status_is_not_the_next_response(shared, upstream, head):
    up = upstream([[(0.0, head), (0.1, ok(b"EVIL"))], ok(b"second")])
    p = shared
    _, second = two_requests(p, up)
    assert second == (200, b"second")
    assert [n for n, _ in up.heads] == [1, 2]


def test_interim_1xx_answers_are_skipped(shared, upstream):
    up = upstream(
        [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok(b"first")]
    )
    p = shared
    assert fetch(p.port, up.url(MANIFEST)) == (200, b"first")


def test_the_upstream_connection_is_reused_after_a_complete_error_answer_only(shared, upstream):
    """A 404 with its whole body read leaves the connection in step: reused. An answer cut short
    by the proxy (too long for its Content-Length) does not: a new connection follows."""
    not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
    up = upstream([not_found, ok(b"second"), ok(b"third") + b"EXTRA", ok(b"fourth")])
    p = shared
    assert fetch(p.port, up.url(MANIFEST)) == (404, b"not found")
    assert fetch(p.port, up.url(OTHER)) == (200, b"second")
    assert fetch(p.port, up.url("/cvmfs/c.org/.cvmfspublished"))[0] in (0, 502)
    assert fetch(p.port, up.url("/cvmfs/d.org/.cvmfspublished")) == (200, b"fourth")
    assert [n for n, _ in up.heads] == [1, 1, 1, 2]
