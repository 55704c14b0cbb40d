"""http1: response heads, body framing and chunked bodies (pure), and one persistent connection
against a scripted local server (keep-alive, stale connections, truncation, surplus bytes)."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from cvmfs_client.http1 import (
    CHUNKED,
    UNTIL_CLOSE,
    ChunkedDecoder,
    Connection,
    ProtocolError,
    body_framing,
    keeps_alive,
    parse_head,
)


def head(text: str):
    return parse_head(text.replace("\n", "\r\n").encode("latin-1"))


def test_head_fields_are_case_insensitive_and_repeated_ones_joined() -> None:
    h = head("HTTP/1.1 503 Service Unavailable\nX-Squid-Error: ERR 111\nVia: a\nvia: b\nContent-Length: 0")
    assert (h.version, h.status, h.reason) == ((1, 1), 503, "Service Unavailable")
    assert h.headers.get("x-squid-error") == "ERR 111" and h.headers["VIA"] == "a, b"
    assert dict(h.headers) == {"x-squid-error": "ERR 111", "via": "a, b", "content-length": "0"}
    assert head("HTTP/1.0 200").reason == ""


@pytest.mark.parametrize(
    "text",
    [
        "HTTP/1.1 2000 OK",
        "HTTP/1.1 200OK",
        "ICY 200 OK",
        "HTTP/1.1 200 OK\nNo-Colon",
        "HTTP/1.1 200 OK\nBad Name: x",
        "HTTP/1.1 200 OK\nA: 1\n folded",
        "HTTP/1.1 200 OK\nContent-Length: 1\nContent-Length: 2",
        "HTTP/1.1 \u00b2\u00b2\u00b2 OK",
        "HTTP/1.1 200 OK" + "\nA: b" * 101,
    ],
)
def test_malformed_heads_are_protocol_errors(text: str) -> None:
    with pytest.raises(ProtocolError):
        head(text)


def test_framing_follows_rfc_9112() -> None:
    assert body_framing(head("HTTP/1.1 200 OK\nContent-Length: 12")) == 12
    assert body_framing(head("HTTP/1.1 304 Not Modified\nContent-Length: 12")) == 0
    assert body_framing(head("HTTP/1.1 204 No Content")) == 0
    assert body_framing(head("HTTP/1.1 200 OK\nTransfer-Encoding: Chunked")) == CHUNKED
    assert body_framing(head("HTTP/1.0 200 OK")) == UNTIL_CLOSE
    for bad in ("-1", "1e3", "\u00b2", " ", "9" * 19):
        with pytest.raises(ProtocolError):
            body_framing(head(f"HTTP/1.1 200 OK\nContent-Length: {bad}"))
    # Framing two parsers could read differently (see docs/security.md, the proxy refuses it too).
    for ambiguous in (
        "Transfer-Encoding: chunked\nContent-Length: 3",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: chunked\nTransfer-Encoding: chunked",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: ",
    ):
        with pytest.raises(ProtocolError, match="ambiguous framing"):
            body_framing(head(f"HTTP/1.1 200 OK\n{ambiguous}"))


def test_keep_alive_rules() -> None:
    assert keeps_alive(head("HTTP/1.1 200 OK\nContent-Length: 1"), 1)
    assert not keeps_alive(head("HTTP/1.1 200 OK\nConnection: Keep-Alive, close"), 1)
    assert not keeps_alive(head("HTTP/1.0 200 OK\nContent-Length: 1"), 1)
    assert keeps_alive(head("HTTP/1.0 200 OK\nConnection: keep-alive"), 1)
    assert not keeps_alive(head("HTTP/1.1 200 OK"), UNTIL_CLOSE)
    assert keeps_alive(head("HTTP/1.1 200 OK\nTransfer-Encoding: chunked"), CHUNKED)


CHUNKED_BODY = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\nNEXT"


def test_chunked_body_decodes_the_same_split_anywhere() -> None:
    whole = ChunkedDecoder()
    assert b"".join(whole.feed(CHUNKED_BODY)) == b"Wikipedia in\r\n\r\nchunks."
    assert whole.done and whole.leftover == b"NEXT"
    for cut in range(1, len(CHUNKED_BODY)):
        d = ChunkedDecoder()
        out = d.feed(CHUNKED_BODY[:cut]) + d.feed(CHUNKED_BODY[cut:])
        assert b"".join(out) == b"Wikipedia in\r\n\r\nchunks." and d.done and d.leftover == b"NEXT"


@pytest.mark.parametrize("body", [b"x\r\n", b"4\r\nWikiX\r\n", b"4" * 2000, b"-4\r\n"])
def test_malformed_chunked_bodies_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(body)


# -- one connection against a scripted server -------------------------------------------------

Script = list[Callable[[socket.socket, bytes], None]]


class ScriptedServer:
    """Accepts connections; answers the n-th request (over all connections) with script[n]."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(client,), daemon=True).start()

    def _answer(self, client: socket.socket) -> None:
        with client, contextlib.suppress(OSError):  # a test may close either end early
            buf = b""
            while len(self.requests) < len(self.script):
                while b"\r\n\r\n" not in buf:
                    piece = client.recv(4096)
                    if not piece:
                        return
                    buf += piece
                request, buf = buf.split(b"\r\n\r\n", 1)
                self.requests.append(request)
                self.script[len(self.requests) - 1](client, request)

    def close(self) -> None:
        self.sock.close()


def send(data: bytes) -> Callable[[socket.socket, bytes], None]:
    return lambda client, _request: client.sendall(data)


def hang_up(client: socket.socket, _request: bytes) -> None:
    client.shutdown(socket.SHUT_RDWR)


def read(resp) -> bytes:
    return b"".join(resp.body())


@pytest.fixture
def serve() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_requests_reuse_one_connection_and_send_the_given_fields(serve) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    server = serve([send(ok), send(b"HTTP/1.1 100 Continue\r\n\r\n" + ok)])
    conn = Connection("127.0.0.1", server.port, 5.0)
    first = conn.get("/a", [("Host", "h"), ("Cache-Control", "max-age=0")])
    assert first.status == 200 and read(first) == b"hello" and first.complete and first.reusable
    assert conn.used
    second = conn.get("/b", [("Host", "h")])  # the interim 100 response is skipped
    assert (second.status, read(second)) == (200, b"hello")
    assert server.connections == 1
    assert server.requests[0] == b"GET /a HTTP/1.1\r\nHost: h\r\nCache-Control: max-age=0"
    conn.close()


def test_chunked_and_until_close_bodies(serve) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY[:-4]
    server = serve([send(chunked), send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nrest"), hang_up])
    conn = Connection("127.0.0.1", server.port, 5.0)
    assert read(conn.get("/c", [])) == b"Wikipedia in\r\n\r\nchunks."

    def close_after(client: socket.socket, request: bytes) -> None:
        client.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nrest")
        client.close()

    server.script[1] = close_after
    resp = conn.get("/d", [])
    assert resp.framing == UNTIL_CLOSE and read(resp) == b"rest" and conn.sock is None


def test_truncated_body_raises_incomplete_read(serve) -> None:
    def short(client: socket.socket, _request: bytes) -> None:
        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        client.close()

    server = serve([short])
    resp = Connection("127.0.0.1", server.port, 5.0).get("/e", [])
    with pytest.raises(http.client.IncompleteRead):
        read(resp)
    assert not resp.complete


def test_surplus_bytes_after_the_body_retire_the_connection(serve) -> None:
    server = serve(
        [send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabEXTRA"), send(b"HTTP/1.1 204 x\r\n\r\n")]
    )
    conn = Connection("127.0.0.1", server.port, 5.0)
    resp = conn.get("/f", [])
    assert read(resp) == b"ab" and resp.complete and not resp.reusable and conn.sock is None
    assert conn.get("/g", []).status == 204 and server.connections == 2


def test_a_connection_closed_by_the_peer_while_idle_is_remote_disconnected(serve) -> None:
    def answer_then_close(client: socket.socket, _request: bytes) -> None:
        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        client.shutdown(socket.SHUT_RDWR)

    server = serve([answer_then_close])
    conn = Connection("127.0.0.1", server.port, 5.0)
    assert read(conn.get("/h", [])) == b"x" and conn.used
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
        conn.get("/i", [])


def test_control_characters_in_a_request_are_refused_before_sending(serve) -> None:
    server = serve([])
    conn = Connection("127.0.0.1", server.port, 5.0)
    with pytest.raises(ValueError):
        conn.get("/a\r\nX: injected", [])
    with pytest.raises(ValueError):
        conn.get("/a", [("X", "v\nY: injected")])
    assert conn.sock is None


def test_a_silent_peer_times_out_after_the_timeout_through_kernel_timeouts(serve) -> None:
    import struct
    import time

    release = threading.Event()

    def stall(client: socket.socket, _request: bytes) -> None:
        release.wait(10)

    server = serve([send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"), stall])
    conn = Connection("127.0.0.1", server.port, 0.3)
    resp = conn.get("/slow-body", [])
    assert conn.sock is not None and conn.sock.gettimeout() is None, "blocking: no poll() per recv"
    seconds, micros = struct.unpack("@ll", conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
    assert (seconds, micros) == (0, 300000)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{server.port}"):
        read(resp)  # two of four body bytes, then nothing
    assert 0.25 <= time.monotonic() - start < 3
    conn.close()
    conn.set_timeout(0.2)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        conn.get("/no-answer", [])  # a new connection, the new timeout: the head never comes
    assert 0.15 <= time.monotonic() - start < 3
    release.set()
    conn.close()
