"""HTTP/1.1 GETs over one persistent connection: the fetcher's path for plain ``http://``.

Why not ``http.client``: it costs ~130 µs of CPU per small response on the 2-core dev VM, most of
it in the ``email`` header parser and a buffered file object made per response, and a cold read
or pre-warm of thousands of small objects is bound by exactly that (bench/README.md). This module
does only what a CVMFS GET needs, in ~40 µs: send the request, read the status line and headers,
then the body as framed by RFC 9112 6.3 (Content-Length, chunked, or until the connection
closes). The parsing is pure (:func:`parse_head`, :func:`body_framing`, :class:`ChunkedDecoder`)
and tested without sockets; :class:`Connection` is the thin socket shell.

Errors reuse ``http.client``'s exception types, which the fetcher already classifies:
``RemoteDisconnected`` (closed before any byte of a response: a kept-alive connection the peer
dropped while idle), ``IncompleteRead`` (a body cut short), :class:`ProtocolError` (an
``HTTPException``) for anything malformed.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from cvmfs_client import http_framing
from cvmfs_client.http_framing import CHUNKED, UNTIL_CLOSE

# Limits against hostile peers (a CVMFS response head is a few hundred bytes): as Squid's
# reply_header_max_size (64 KB) and Apache's LimitRequestFields (100); the chunk-size line limit
# is http_framing.MAX_CHUNK_LINE.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
RECV_PIECE = 1 << 16
# A Content-Length body is received in pieces of up to this: fewer, larger pieces cost less per
# byte in the layers above (hashing, inflating, writing), and the size is known, so no large
# buffer is allocated for a small body.
BODY_PIECE = 1 << 18

_STATUS_LINE = re.compile(r"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: (.*))?\Z")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


class ProtocolError(http.client.HTTPException):
    """The peer sent something that is not a usable HTTP/1.1 response."""


class Headers(Mapping[str, str]):
    """Response header fields by case-insensitive name; repeated fields joined with ``, ``."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields  # lower-case names

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self._fields.get(name.lower(), default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def tokens(self, name: str) -> list[str]:
        """Comma-separated, lower-cased tokens of a list-valued field (Connection, Transfer-Encoding)."""
        value = self._fields.get(name, "")
        return [t.strip().lower() for t in value.split(",") if t.strip()]


@dataclass(frozen=True, slots=True)
class Head:
    """Status line and header fields of a response."""

    version: tuple[int, int]
    status: int
    reason: str
    headers: Headers


def parse_head(block: bytes) -> Head:
    """Parse a response head (status line and fields, without the final empty line)."""
    lines = block.decode("latin-1").split("\r\n")
    m = _STATUS_LINE.match(lines[0])
    if m is None or m.group(3) < "100":
        raise ProtocolError(f"malformed status line {lines[0][:100]!r}")
    if len(lines) - 1 > MAX_HEADERS:
        raise ProtocolError(f"more than {MAX_HEADERS} header fields")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):  # also rejects obsolete line folding (RFC 9112 5.2)
            raise ProtocolError(f"malformed header field {line[:100]!r}")
        key = name.lower()
        value = value.strip(" \t")
        if key in fields:
            if key == "content-length" and fields[key] != value:
                raise ProtocolError(f"conflicting Content-Length fields {fields[key]!r}, {value!r}")
            if key != "content-length":
                fields[key] = f"{fields[key]}, {value}"
        else:
            fields[key] = value
    return Head((int(m.group(1)), int(m.group(2))), int(m.group(3)), m.group(4) or "", Headers(fields))


def body_framing(head: Head) -> int:
    """Body length of a response to a GET: bytes, :data:`CHUNKED` or :data:`UNTIL_CLOSE` (RFC 9112 6.3).

    Framing that two parsers could read differently is refused, by the rule the proxy shares
    (:func:`cvmfs_client.http_framing.body_length`, docs/security.md): ``Transfer-Encoding``
    other than a lone ``chunked``, or together with ``Content-Length``. No server or proxy of a
    CVMFS deployment sends those.
    """
    fields = head.headers
    encoding = fields.get("transfer-encoding")
    length = fields.get("content-length")  # parse_head refused differing repeated values
    return http_framing.body_length(
        head.status,
        () if encoding is None else (encoding,),
        () if length is None else (length,),
        ProtocolError,
    )


def keeps_alive(head: Head, framing: int) -> bool:
    """Whether the connection may carry another request after this response (RFC 9112 9.3)."""
    if framing == UNTIL_CLOSE:
        return False
    connection = head.headers.tokens("connection")
    if "close" in connection:
        return False
    if head.version < (1, 1):
        return "keep-alive" in connection
    return True


class ChunkedDecoder(http_framing.ChunkedDecoder):
    """The shared chunked decoder raising :class:`ProtocolError`; see :attr:`leftover`."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(ProtocolError)


class Response:
    """A response whose head has been read; :meth:`body` streams the rest."""

    def __init__(self, conn: Connection, head: Head) -> None:
        self._conn = conn
        self.head = head
        self.status = head.status
        self.headers = head.headers
        self.framing = body_framing(head)
        self.complete = self.framing == 0  # the whole body has been read
        self.reusable = keeps_alive(head, self.framing)

    def body(self) -> Iterator[bytes]:
        """Body bytes as they arrive (one receive each); raises ``IncompleteRead`` if the
        connection ends first. At the end the connection is ready for the next request, or
        closed if it cannot carry one."""
        conn = self._conn
        if self.framing >= 0:
            left = self.framing
            if conn.buffered and left:
                piece = conn.take(left)
                left -= len(piece)
                yield piece
            while left:
                piece = conn.receive(min(left, BODY_PIECE))
                if not piece:
                    raise http.client.IncompleteRead(b"", left)
                left -= len(piece)
                yield piece
        elif self.framing == CHUNKED:
            decoder = ChunkedDecoder()
            data = conn.take(len(conn.buffered)) if conn.buffered else conn.receive(RECV_PIECE)
            while True:
                if not data:
                    raise http.client.IncompleteRead(b"", None)
                for piece in decoder.feed(data):
                    yield piece
                if decoder.done:
                    conn.give_back(decoder.leftover)
                    break
                data = conn.receive(RECV_PIECE)
        else:
            if conn.buffered:
                yield conn.take(len(conn.buffered))
            while piece := conn.receive(RECV_PIECE):
                yield piece
        self.complete = True
        if conn.buffered:
            # More than the framing announced (a broken or hostile peer): whatever follows
            # cannot be trusted to be the next response.
            self.reusable = False
        if not self.reusable:
            conn.close()


def _kernel_timeouts(sock: socket.socket, timeout: float) -> None:
    """Put the read and write timeouts of ``sock`` into the kernel (``SO_RCVTIMEO``,
    ``SO_SNDTIMEO``) and make it blocking.

    Why not ``settimeout``: Python runs a socket with a timeout in non-blocking mode and calls
    ``poll`` before every ``recv`` and ``send``, one more system call (and one more release of
    the GIL) per operation: two per small GET. With the timeouts in the kernel a blocked
    ``recv``/``send`` fails with ``EAGAIN`` after ``timeout`` seconds instead, which
    :meth:`Connection.receive` and :meth:`Connection.get` report as ``TimeoutError``.
    """
    if timeout <= 0:  # no kernel equivalent of "non-blocking" (0); Python's own mode then
        sock.settimeout(timeout)
        return
    seconds = int(timeout)
    value = struct.pack("@ll", seconds, int((timeout - seconds) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    sock.settimeout(None)


class Connection:
    """One persistent client connection to ``host:port`` (a server or a proxy); not thread-safe."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buffered = bytearray()  # received, not consumed yet
        self.used = False  # a response was read on the current socket

    def set_timeout(self, timeout: float) -> None:
        if timeout != self.timeout:  # system calls each time otherwise
            self.timeout = timeout
            if self.sock is not None:
                _kernel_timeouts(self.sock, timeout)

    def get(self, target: str, headers: Iterable[tuple[str, str]]) -> Response:
        """Send ``GET target`` with ``headers`` and read the response head.

        ``RemoteDisconnected`` means the peer closed before answering: on a connection that
        was used before, that is an idle keep-alive connection it dropped (retry on a new one).
        """
        lines = [f"GET {target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers]
        if _UNSAFE.search("".join(lines)):  # CR or LF would let a value inject header fields
            bad = next(line for line in lines if _UNSAFE.search(line))
            raise ValueError(f"control character in request line or field {bad[:200]!r}")
        request = "\r\n".join(lines) + "\r\n\r\n"
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _kernel_timeouts(self.sock, self.timeout)
            self.buffered.clear()
            self.used = False
        try:
            self.sock.sendall(request.encode("latin-1"))
        except BlockingIOError:  # SO_SNDTIMEO: the peer took nothing for `timeout` seconds
            raise TimeoutError(f"sending to {self.host}:{self.port} timed out") from None
        while True:
            head = self._read_head()
            if not 100 <= head.status < 200:  # interim responses (100 Continue) are skipped
                break
        self.used = True
        return Response(self, head)

    def _read_head(self) -> Head:
        buf = self.buffered
        start = 0
        while (end := buf.find(b"\r\n\r\n", start)) < 0:
            if len(buf) > MAX_HEAD_BYTES:
                raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
            start = max(0, len(buf) - 3)
            piece = self.receive(RECV_PIECE)
            if not piece:
                if buf:
                    raise ProtocolError(f"connection closed within the response head {bytes(buf[:100])!r}")
                raise http.client.RemoteDisconnected("remote end closed connection without response")
            buf += piece
        head = parse_head(bytes(buf[:end]))
        del buf[: end + 4]
        return head

    def receive(self, limit: int) -> bytes:
        """One receive of at most ``limit`` bytes; b"" at the end of the stream."""
        assert self.sock is not None
        try:
            return self.sock.recv(limit)
        except BlockingIOError:  # SO_RCVTIMEO: nothing arrived for `timeout` seconds
            raise TimeoutError(f"no data from {self.host}:{self.port} for {self.timeout:g} s") from None

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of what was received already."""
        piece = bytes(self.buffered[:limit])
        del self.buffered[:limit]
        return piece

    def give_back(self, data: bytes) -> None:
        self.buffered[:0] = data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buffered.clear()
        self.used = False
