"""The asyncio shell of ``cvmfs-proxy``: client connections, downloads, hits, logs and signals.

Protocol decisions live in :mod:`proxy.http` (parsing, framing, freshness, ranges), which URLs
are verifiable in :mod:`proxy.cvmfs_urls`, storage in :mod:`proxy.cache`. This module moves bytes.

How a request flows:

* **Memory hit** (small hot objects): answered inside ``data_received`` with one
  ``transport.write``; no task, no future, which is what keeps small-object throughput close to
  Squid's despite Python.
* **Disk hit**: a task sends the head, then the body with ``loop.sendfile`` (``os.sendfile``:
  the bytes never enter Python).
* **Miss**: one :class:`Download` per URL fetches from the upstream (or the parent proxy)
  into a temp file of the cache; every client asking for that URL meanwhile (collapsed
  forwarding) streams from that file with ``sendfile`` as it grows, so memory stays bounded
  whatever the object size and however many clients wait. The download is independent of its
  clients: the first one hanging up does not cancel it for the others.

Verification of immutable objects (``data/...``): the download hashes the bytes as they arrive
and only stores the object if its hash matches its name. Clients are streamed the body before
the end is verified (a 50 MB object must not wait for its last byte), but nobody is ever sent
the **last byte** before the download finished and verified: on a mismatch every client's
connection is aborted mid-body, so each sees a truncated response (shorter than its
Content-Length), which HTTP clients report as an error and CVMFS clients reject and retry (spec
7.5), and nothing is cached. Range requests and responses of unknown length wait for the
complete, verified body instead (a range cannot be checked by the client).

Failures (connect, timeout, malformed upstream response, hash mismatch) are never cached and
never poison anything: the download is dropped from the in-flight table when it ends, so the
next request (e.g. the CVMFS client failing over to another Stratum 1 URL) starts afresh; and
since immutable objects are keyed by hash, what another host delivers serves both URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import resource
import signal
import socket
import time
from email.utils import formatdate
from pathlib import Path

from .cache import Cache, DiskHit, MemoryHit, Meta, TempFile
from .config import ProxyConfig
from .cvmfs_urls import ImmutableObject, classify
from .http import (
    SUPPORTED_METHODS,
    ChunkedDecoder,
    Framing,
    Headers,
    RangeNotSatisfiable,
    RemoteProtocolError,
    Request,
    RequestParser,
    Response,
    ResponseHeadParser,
    Target,
    client_wants_revalidation,
    end_to_end,
    freshness_lifetime,
    is_absolute_form,
    parse_range,
    parse_target,
    proxy_status_error,
    render_request_head,
    render_response_head,
    response_age,
    response_framing,
    shared_cache_may_store,
)
from .stats import Stats, squid_log_line

log = logging.getLogger("cvmfs-proxy")

# A parsed request target: (target, immutable object or None, cache key, denial reason or None).
Route = tuple[Target, ImmutableObject | None, str, str | None]

STATS_PATH = "/cvmfs-proxy/stats"
UPSTREAM_READ_SIZE = 256 * 1024  # asyncio's own max recv size; larger reads gain nothing
# An upstream body arriving slower than this (bytes/s, averaged over --upstream-timeout) is dropped:
# the CVMFS client's own CVMFS_LOW_SPEED_LIMIT default, so the proxy gives up where its clients do.
UPSTREAM_LOW_SPEED = 1024
SMALL_BODY = 64 * 1024  # below this, head and body are joined into one send
PIPELINE_BACKLOG = 64 * 1024  # unparsed pipelined bytes held while busy before reading pauses
SENDFILE_PIECE = 8 << 20  # each piece must finish within the client write timeout
MAX_IDLE_UPSTREAM = 64  # idle keep-alive connections kept per upstream
UPSTREAM_IDLE_MAX_AGE = 30.0  # nginx's keepalive_timeout is 75 s: reuse well before it closes
SWEEP_INTERVAL = 0.5  # timeouts and log flushing
# Request headers passed to the upstream: what CVMFS clients send that servers may use.
ROUTE_CACHE_SIZE = 16384  # parsed request targets remembered (a hot set of CVMFS objects)
PASS_REQUEST_HEADERS = frozenset({"user-agent", "accept", "cvmfs-info"})
# Response headers not stored or forwarded as received: the proxy sets them itself.
OWN_RESPONSE_HEADERS = frozenset({"content-length", "age", "set-cookie", "x-cache"})


class ClientConnection(asyncio.Protocol):
    """One client TCP connection: parse requests in order, answer each, one at a time.

    Responses go out in request order (pipelining): while a task answers one request, further
    pipelined bytes wait in the parser (reading pauses past ``PIPELINE_BACKLOG``).
    """

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.parser = RequestParser()
        self.transport: asyncio.Transport | None = None
        self.peer = "-"
        self.allowed = False
        self.busy = False  # a task is answering a request
        self.closed = False
        self.write_paused = False
        self.reading_paused = False
        self.deadline: float | None = None
        self.in_head = False  # deadline is the header timeout (vs idle)
        self.task: asyncio.Task[None] | None = None
        self._drain: asyncio.Future[None] | None = None

    # ---- asyncio callbacks ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self.server
        if len(server.connections) >= server.config.max_clients or server.shutting_down:
            transport.abort()
            self.closed = True
            return
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "-"
        self.allowed = server.config.policy.client_allowed(self.peer)
        server.connections.add(self)
        self.deadline = time.monotonic() + server.config.header_timeout
        self.in_head = True

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.parser.feed(data)
        if self.busy or self.write_paused:
            if self.parser.buffered > PIPELINE_BACKLOG and not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
            return
        self.process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("client went away"))
        # A running answer is not cancelled: a task cancelled before its first step would skip
        # its cleanup (descriptor, download reference). It sees ``closed`` at its next step.

    def pause_writing(self) -> None:
        self.write_paused = True
        self.deadline = time.monotonic() + self.server.config.client_write_timeout
        self.in_head = False

    def resume_writing(self) -> None:
        self.write_paused = False
        self.deadline = None  # ``process`` sets the next one when it runs out of requests
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if not self.busy:
            self.process()

    # ---- request loop ----

    def process(self) -> None:
        """Answer every complete request in the buffer that can be answered right now."""
        server = self.server
        while not self.closed and not self.busy and not self.write_paused:
            try:
                request = self.parser.next_request()
            except RemoteProtocolError as exc:
                server.stats.bad_requests += 1
                server.respond_error(self, None, exc.status, exc.reason, "http_request_error", False)
                return
            if request is None:
                if self.parser.buffered:
                    if not self.in_head:  # first byte of a new head: the header clock starts
                        self.in_head = True
                        self.deadline = time.monotonic() + server.config.header_timeout
                else:
                    self.in_head = False
                    self.deadline = time.monotonic() + server.config.idle_timeout
                if self.reading_paused:
                    self.reading_paused = False
                    self.transport.resume_reading()  # type: ignore[union-attr]
                return
            self.in_head = False
            self.deadline = None
            server.handle(self, request)

    def start_task(self, coro) -> None:  # type: ignore[no-untyped-def]
        """Answer the current request asynchronously; ``finish`` resumes the request loop."""
        self.busy = True
        self.deadline = None
        self.task = asyncio.get_running_loop().create_task(coro)

    def finish(self, keep_alive: bool) -> None:
        """The current asynchronous answer is complete."""
        self.busy = False
        self.task = None
        if self.closed:
            return
        if not keep_alive or self.server.shutting_down:
            self.close()
            return
        self.process()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.connections.discard(self)
            self.transport.close()  # type: ignore[union-attr]  # flushes what is buffered

    def abort(self) -> None:
        """Drop the connection now (RST): the client sees a truncated body, never a complete one."""
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
        self.server.connections.discard(self)

    def on_timeout(self) -> None:
        self.server.stats.client_timeouts += 1
        if self.in_head and self.parser.buffered and not self.write_paused:
            self.server.respond_error(
                self, None, 408, "request head not received in time", "http_request_error", False
            )
        else:
            self.abort() if self.write_paused else self.close()

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self.closed:
            raise ConnectionResetError("client went away")
        if not self.write_paused:
            return
        self._drain = asyncio.get_running_loop().create_future()
        try:
            await self._drain
        finally:
            self._drain = None


class Download:
    """One upstream fetch of one URL (stored under its cache key), shared by every client that
    asks for that URL meanwhile.

    Body bytes go to a temp file of the cache (``temp``); clients read them from there at their
    own pace with sendfile. ``refs`` counts clients still reading: the file descriptor is closed
    when the fetch has ended and the last reader is done.
    """

    def __init__(
        self,
        server: ProxyServer,
        key: str,
        target: Target,
        obj: ImmutableObject | None,
        request: Request,
        client: str,
        revalidate: bool,
    ) -> None:
        self.server = server
        self.key = key
        self.target = target
        self.obj = obj
        self.request = request
        self.client = client
        self.revalidate = revalidate
        self.response: Response | None = None
        self.out_headers: list[tuple[str, str]] = []
        self.length: int | None = None  # body length when the upstream declared it
        self.temp: TempFile | None = None
        self.written = 0
        self.done = False  # body complete (and verified, for immutable objects)
        self.failed = False
        self.error: tuple[int, str, str] | None = None  # (status, Proxy-Status error, details)
        self.cacheable = False
        self.stored = False
        self.peer = "-"
        self.refs = 0
        self.finished = False  # run() returned
        self._waiters: list[asyncio.Future[None]] = []
        self.task: asyncio.Task[None] | None = None

    # ---- for readers ----

    def sendable(self) -> int:
        """Bytes clients may be sent now: all once done, else all but the last one (see module doc)."""
        if self.done:
            return self.written
        return max(0, self.written - 1)

    async def wait(self) -> None:
        """Until the next progress (head, bytes, end or failure)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def acquire(self) -> None:
        self.refs += 1

    def release(self) -> None:
        self.refs -= 1
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.finished and self.refs <= 0 and self.temp is not None:
            self.temp.close()

    # ---- the fetch ----

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        server = self.server
        try:
            await self._fetch()
        except asyncio.CancelledError:
            self._fail(503, "proxy_internal_error", "proxy shutting down")
            raise
        except Exception as exc:  # a bug must not leave clients waiting forever
            log.exception("download of %s failed", self.target.url)
            self._fail(500, "proxy_internal_error", f"internal error: {exc}")
        finally:
            if server.inflight.get(self.target.url) is self:
                del server.inflight[self.target.url]
            if self.temp is not None and not self.stored:
                server.cache.discard(self.temp)
            self.finished = True
            self._notify()
            self._maybe_close()

    def _fail(self, status: int, error: str, details: str) -> None:
        if self.done or self.failed:
            return
        self.failed = True
        if self.error is None:
            self.error = (status, error, details)
        self._notify()

    async def _fetch(self) -> None:
        server, config = self.server, self.server.config
        target = self.target
        host, port = config.parent or (target.host, target.port)
        upstream = f"{host}:{port}"
        server.stats.upstream_requests += 1
        head = self._request_head()
        for attempt in (0, 1):
            try:
                async with asyncio.timeout(config.upstream_connect_timeout):
                    reader, writer, reused = await server.pool.get(host, port)
            except TimeoutError:
                return self._upstream_error(504, "connection_timeout", f"connecting to {upstream} timed out")
            except socket.gaierror as exc:
                return self._upstream_error(502, "dns_error", f"cannot resolve {host}: {exc.strerror}")
            except OSError as exc:
                return self._upstream_error(
                    502, "connection_refused", f"cannot connect to {upstream}: {exc.strerror or exc}"
                )
            peer = writer.get_extra_info("peername")
            self.peer = peer[0] if peer else host
            parser = ResponseHeadParser()
            response: Response | None = None
            try:
                writer.write(head)
                while response is None:
                    async with asyncio.timeout(config.upstream_read_timeout):
                        data = await reader.read(UPSTREAM_READ_SIZE)
                    if not data:
                        raise ConnectionResetError("connection closed before a response")
                    response = parser.feed(data)
                    # Interim 1xx answers come before the real one (RFC 9110 15.2): skip them, or
                    # the real answer would be left in the connection for the next request.
                    while response is not None and 100 <= response.status < 200:
                        if response.status == 101:
                            raise RemoteProtocolError("switching protocols, never asked for", 502)
                        response = parser.feed(b"")
            except TimeoutError:
                writer.close()
                return self._upstream_error(504, "http_response_timeout", f"no response from {upstream}")
            except RemoteProtocolError as exc:
                writer.close()
                return self._upstream_error(502, "http_protocol_error", f"{upstream}: {exc.reason}")
            except OSError as exc:
                writer.close()
                if reused and attempt == 0:
                    continue  # a pooled connection the server had closed: retry once on a new one
                return self._upstream_error(502, "connection_terminated", f"{upstream}: {exc}")
            break
        assert response is not None
        try:
            framing = response_framing("GET", response)
        except RemoteProtocolError as exc:
            writer.close()
            return self._upstream_error(502, "http_protocol_error", f"{upstream}: {exc.reason}")
        reusable = await self._receive(response, framing, parser.leftover(), reader, writer, upstream)
        if reusable:
            server.pool.put(host, port, reader, writer)
        else:
            writer.close()

    def _request_head(self) -> bytes:
        server, target, req = self.server, self.target, self.request
        headers: list[tuple[str, str]] = [("Host", target.authority)]
        for k, v in req.headers.items:
            if k in PASS_REQUEST_HEADERS or k.startswith("x-cvmfs-"):
                headers.append((k, v))
        via = req.headers.get_joined("via")
        headers.append(("Via", f"{via}, {server.via}" if via else server.via))
        xff = req.headers.get_joined("x-forwarded-for")
        headers.append(("X-Forwarded-For", f"{xff}, {self.client}" if xff else self.client))
        if self.revalidate:
            # Also a parent cache must go to the origin: this is how a CVMFS client flushes a
            # poisoned object out of a proxy hierarchy (spec 7.5).
            headers += [("Cache-Control", "no-cache"), ("Pragma", "no-cache")]
        headers.append(("Connection", "keep-alive"))
        line_target = target.url if server.config.parent else target.path
        return render_request_head("GET", line_target, headers)

    def _upstream_error(self, status: int, error: str, details: str) -> None:
        self.server.stats.upstream_errors += 1
        log.warning("upstream error for %s: %s", self.target.url, details)
        self._fail(status, error, details)

    async def _receive(
        self,
        response: Response,
        framing: Framing,
        first: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: str,
    ) -> bool:
        """Stream the body into the temp file; verify; store. True if the connection is reusable."""
        server, cache, config = self.server, self.server.cache, self.server.config
        now = time.time()
        obj = self.obj if response.status == 200 else None
        headers = end_to_end(response.headers, OWN_RESPONSE_HEADERS)
        via = next((v for k, v in headers if k == "via"), None)
        headers = [(k, v) for k, v in headers if k != "via"]
        headers.append(("Via", f"{via}, {server.via}" if via else server.via))
        self.out_headers = headers
        if framing.kind == "length":
            self.length = framing.length
        if obj is not None:
            self.cacheable = self.length is None or cache.storable_size(self.length)
            expires_at = None
        else:
            self.cacheable = shared_cache_may_store(response, self.request.headers) and (
                self.length is None or cache.storable_size(self.length)
            )
            lifetime = freshness_lifetime(response.headers) or 0
            expires_at = now + lifetime - response_age(response.headers)
        try:
            self.temp = cache.new_temp()
        except OSError as exc:
            writer.close()
            self._upstream_error(502, "proxy_internal_error", f"cache directory: {exc}")
            return False
        if self.cacheable and self.length:
            cache.reserve(self.length)
        self.response = response
        self._notify()

        hasher = obj.expected.algorithm.new() if obj is not None else None
        chunked = ChunkedDecoder() if framing.kind == "chunked" else None
        remaining = self.length if framing.kind == "length" else None
        stats = server.stats
        data = first
        overrun = False
        window_start, window_bytes = time.monotonic(), 0
        try:
            while True:
                if data:
                    window_bytes += len(data)
                    stats.bytes_from_upstream += len(data)
                    pieces = chunked.feed(data) if chunked is not None else [data]
                    for piece in pieces:
                        if remaining is not None:
                            if len(piece) > remaining:
                                piece = piece[:remaining]  # more than declared: never reuse this one
                                overrun = True
                            remaining -= len(piece)
                        self.temp.write(piece)
                        self.written += len(piece)
                        if hasher is not None:
                            hasher.update(piece)
                    self._notify()
                if remaining == 0 or (chunked is not None and chunked.done):
                    overrun = overrun or (chunked is not None and chunked.surplus > 0)
                    break
                if not self.cacheable and self.refs == 0 and self.response is not None and self.written:
                    return False  # nobody wants these bytes any more and they will not be kept
                now = time.monotonic()
                if now - window_start >= config.upstream_read_timeout:
                    # Silence alone is not enough: an upstream trickling a few bytes at a time
                    # would hold this download (and its clients) for hours.
                    if window_bytes < UPSTREAM_LOW_SPEED * (now - window_start):
                        rate = window_bytes / (now - window_start)
                        self._upstream_error(
                            504,
                            "http_response_timeout",
                            f"{upstream} too slow ({rate:.0f} B/s) after {self.written} bytes",
                        )
                        return False
                    window_start, window_bytes = now, 0
                async with asyncio.timeout(config.upstream_read_timeout):
                    data = await reader.read(UPSTREAM_READ_SIZE)
                if not data:
                    if framing.kind == "close":
                        break
                    raise ConnectionResetError(f"body truncated after {self.written} bytes")
        except TimeoutError:
            self._upstream_error(
                504, "http_response_timeout", f"{upstream} stalled after {self.written} bytes"
            )
            return False
        except RemoteProtocolError as exc:
            self._upstream_error(502, "http_protocol_error", f"{upstream}: {exc.reason}")
            return False
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._upstream_error(502, "proxy_internal_error", f"cache disk full: {exc}")
            else:
                self._upstream_error(502, "connection_terminated", f"{upstream}: {exc}")
            return False

        if overrun:
            # More body than the declared Content-Length (or bytes after the last chunk): the
            # upstream's framing is broken, so the body (likely cut short) is neither stored nor
            # completed for clients, who see it aborted, as for a hash mismatch; a CVMFS client
            # then retries or fails over. The surplus is never read as the next response.
            what = "bytes after the last chunk" if chunked is not None else f"Content-Length {self.length}"
            self._upstream_error(502, "http_protocol_error", f"{upstream}: more body bytes than {what}")
            return False
        if hasher is not None and obj is not None:
            actual = hasher.digest()
            if actual != obj.expected.digest:
                stats.hash_mismatches += 1
                stats.upstream_errors += 1
                log.warning(
                    "refused %s from %s: content hash %s expected, got %s",
                    self.target.url,
                    upstream,
                    obj.expected.hex,
                    actual.hex() + obj.expected.algorithm.suffix,
                )
                self._fail(502, "http_response_content_error", f"hash mismatch from {upstream}")
                return framing.kind != "close" and response.keep_alive
        if self.cacheable:
            meta = Meta(
                self.key,
                response.status,
                headers,
                now,
                expires_at,
                response_age(response.headers),
                self.written,
            )
            self.stored = cache.commit(self.temp, meta)
            if self.stored:
                stats.stored_objects += 1
        self.done = True
        self._notify()
        return framing.kind != "close" and response.keep_alive and not overrun


class UpstreamPool:
    """Idle keep-alive connections to upstream servers (or the parent), reused by later misses."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]]] = {}

    async def get(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        idle = self._idle.get((host, port))
        if idle:
            await asyncio.sleep(0)  # one loop pass: bytes already in the sockets reach the readers
        now = time.monotonic()
        while idle:
            reader, writer, since = idle.pop()
            if (
                now - since < UPSTREAM_IDLE_MAX_AGE
                and not reader.at_eof()
                and not writer.is_closing()
                and not _unsolicited(reader)
            ):
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.open_connection(host, port, limit=UPSTREAM_READ_SIZE)
        return reader, writer, False

    def put(self, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        idle = self._idle.setdefault((host, port), [])
        if len(idle) >= MAX_IDLE_UPSTREAM or reader.at_eof():
            writer.close()
            return
        idle.append((reader, writer, time.monotonic()))

    def close(self) -> None:
        for idle in self._idle.values():
            for _, writer, _ in idle:
                writer.close()
        self._idle.clear()


def _unsolicited(reader: asyncio.StreamReader) -> bool:
    """Whether an idle upstream connection received bytes nobody asked for.

    A server sends nothing between responses; bytes there (a body longer than its framing that
    arrived late, a body after a 304) would be read as the answer to the next request on that
    connection: such a connection is dropped. ``StreamReader`` has no public way to look at what
    it holds without waiting; its ``_buffer`` (CPython 3.7 to 3.13) is read, if present.
    """
    return bool(getattr(reader, "_buffer", b""))


class AccessLog:
    """Buffered Squid-format access log; flushed twice a second and at exit, reopened on SIGHUP."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lines: list[str] = []
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (lives as long as the proxy)

    def add(self, line: str) -> None:
        self._lines.append(line)

    def flush(self) -> None:
        if self._lines:
            self._file.write("".join(self._lines))
            self._lines.clear()
            self._file.flush()

    def reopen(self) -> None:
        self.flush()
        self._file.close()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        self.flush()
        self._file.close()


class ProxyServer:
    """A running proxy: owns the listening socket, connections, cache, downloads and counters."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.cache = Cache(config.cache_dir, config.cache_size, config.memory_cache)
        self.inflight: dict[str, Download] = {}
        self._routes: dict[str, Route] = {}
        self.connections: set[ClientConnection] = set()
        self.pool = UpstreamPool()
        self.access_log: AccessLog | None = None
        self.via = f"1.1 {config.name}"
        self.shutting_down = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    # ---- life cycle ----

    async def start(self) -> None:
        self.cache.open()
        if self.config.access_log is not None:
            self.config.access_log.parent.mkdir(parents=True, exist_ok=True)
            self.access_log = AccessLog(self.config.access_log)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self),
            self.config.listen_host,
            self.config.listen_port,
            backlog=4096,
            reuse_address=True,
        )
        self._sweeper = loop.create_task(self._sweep())
        log.info("listening on %s:%d, cache %s", self.config.listen_host, self.port, self.config.cache_dir)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def serve_until_signalled(self) -> None:
        """Start, then run until SIGTERM/SIGINT; SIGUSR1 logs the counters; SIGHUP reopens the log.

        The handlers are installed before the listening socket exists (and before "listening"
        is logged): a SIGUSR1 that arrived earlier would otherwise kill the process.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, self.log_stats)
        loop.add_signal_handler(signal.SIGHUP, self._reopen_log)
        await self.start()
        await stop.wait()
        log.info("shutting down: finishing %d transfers", sum(1 for c in self.connections if c.busy))
        await self.shutdown()

    def log_stats(self) -> None:
        if self._server is None:
            return  # not started yet
        log.info("stats %s", json.dumps(self.snapshot(), sort_keys=True))
        if self.access_log is not None:
            self.access_log.flush()

    def _reopen_log(self) -> None:
        if self.access_log is not None:
            self.access_log.reopen()

    async def shutdown(self) -> None:
        """Graceful stop: no new connections, idle ones closed, running transfers may finish."""
        self.shutting_down = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()
        deadline = time.monotonic() + self.config.shutdown_grace
        while any(c.busy for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        for dl in list(self.inflight.values()):
            if dl.task is not None:
                dl.task.cancel()
        await asyncio.sleep(0)
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.pool.close()
        if self.access_log is not None:
            self.access_log.close()
        self.cache.close()
        log.info("stopped; %s", json.dumps(self.snapshot(), sort_keys=True))

    async def _sweep(self) -> None:
        """Enforce client deadlines (slowloris, idle, stalled readers) and flush the log."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.deadline is not None and now > conn.deadline:
                    conn.on_timeout()
            if self.access_log is not None:
                self.access_log.flush()

    def snapshot(self) -> dict[str, float | int]:
        return self.stats.snapshot(
            clients=len(self.connections),
            downloads_in_progress=len(self.inflight),
            cache_bytes=self.cache.disk_used,
            cache_objects=self.cache.objects,
            cache_limit=self.cache.max_bytes,
            memory_bytes=self.cache.memory_used,
            memory_objects=self.cache.memory_objects,
            evictions=self.cache.evictions,
        )

    # ---- answering ----

    def handle(self, conn: ClientConnection, req: Request) -> None:
        """Answer one request: synchronously when possible, else via a task on ``conn``."""
        stats = self.stats
        stats.requests += 1
        start = time.time()
        keep = req.keep_alive
        if not conn.allowed:
            stats.denied += 1
            reason = f"client {conn.peer} is not allowed to use this proxy"
            return self.respond_error(conn, req, 403, reason, "http_request_denied", keep)
        route = self._routes.get(req.raw_target)
        if route is None:
            route = self._route(conn, req)
            if route is None:
                return
        target, obj, key, denied = route
        req.target = target
        if req.method not in SUPPORTED_METHODS:
            reason = f"method {req.method} is not supported (GET and HEAD only)"
            return self.respond_error(conn, req, 405, reason, "http_request_error", keep)
        if denied:
            stats.denied += 1
            return self.respond_error(conn, req, 403, denied, "destination_ip_prohibited", keep)
        revalidate = False
        if req.notable:
            via = req.headers.get_joined("via")
            if via and self.via in [v.strip() for v in via.split(",")]:
                reason = "forwarding loop: the request already passed this proxy"
                return self.respond_error(conn, req, 508, reason, "http_request_error", False)
            revalidate = client_wants_revalidation(req.headers)
        code = "TCP_CLIENT_REFRESH_MISS" if revalidate else "TCP_MISS"
        stale_ok = revalidate and self.cache.has(key)
        if not revalidate:
            hit = self.cache.lookup(key, start)
            if hit is not None:
                if hit.meta.fresh(start):
                    stats.hits += 1
                    if isinstance(hit, MemoryHit):
                        stats.memory_hits += 1
                        return self._respond_memory(conn, req, hit, start, obj is not None)
                    stats.disk_hits += 1
                    return conn.start_task(self._respond_disk(conn, req, hit, start, obj is not None))
                if isinstance(hit, DiskHit):
                    os.close(hit.fd)
                code, stale_ok = "TCP_REFRESH_MODIFIED", True
        if code != "TCP_MISS":
            stats.revalidations += 1
        stats.misses += 1
        # Collapsed per URL, stored per cache key: a request for the same object from another
        # Stratum 1 is a client failing over, and must not wait for (or share the failure of)
        # the download from the server it is leaving.
        dl = self.inflight.get(target.url)
        if dl is None:
            dl = Download(self, key, target, obj, req, conn.peer, revalidate)
            self.inflight[target.url] = dl
            dl.start()
            leader = True
        else:
            stats.collapsed += 1
            leader = False
        dl.acquire()
        conn.start_task(self._respond_download(conn, req, dl, start, code, leader, stale_ok))

    def _route(self, conn: ClientConnection, req: Request) -> Route | None:
        """Parse, classify and check a request target once; remembered for repeated URLs.

        Returns None after answering requests that are not proxy requests (CONNECT, the
        counters endpoint, malformed URLs).
        """
        keep = req.keep_alive
        if req.method == "CONNECT":
            self.stats.denied += 1
            self.respond_error(conn, req, 403, "CONNECT is not allowed", "http_request_denied", keep)
            return None
        if not is_absolute_form(req.raw_target):
            if req.raw_target.split("?", 1)[0] == STATS_PATH and req.method in SUPPORTED_METHODS:
                self._respond_stats(conn, req, time.time())
                return None
            self.stats.bad_requests += 1
            reason = "not a proxy request: use an absolute http:// URL"
            self.respond_error(conn, req, 400, reason, "http_request_error", keep)
            return None
        try:
            target = parse_target(req.raw_target)
        except RemoteProtocolError as exc:
            self.stats.bad_requests += 1
            self.respond_error(conn, req, exc.status, exc.reason, "http_request_error", keep)
            return None
        obj = classify(target.path)
        key = obj.cache_key if obj is not None else "url:" + target.url
        route = (target, obj, key, self.config.policy.upstream_denied(target))
        if len(self._routes) >= ROUTE_CACHE_SIZE:
            self._routes.clear()  # cheaper than LRU bookkeeping on every request
        self._routes[req.raw_target] = route
        return route

    def _hit_head(
        self,
        req: Request,
        meta: Meta,
        status: int,
        length: int,
        extra: list[tuple[str, str]],
        now: float,
        immutable: bool,
    ) -> bytes:
        headers = list(meta.headers)
        headers.extend(extra)
        headers.append(("Content-Length", str(length)))
        if not immutable:
            # Downstream caches (a child Squid) must not keep a mutable copy longer than we may.
            headers.append(("Age", str(meta.age(now))))
        headers.append(("X-Cache", f"HIT from {self.config.name}"))
        headers.append(("Connection", "keep-alive" if req.keep_alive else "close"))
        return render_response_head(status, headers)

    def _range(self, req: Request, size: int) -> tuple[int, int, int, list[tuple[str, str]]] | None:
        """(status, first, end, extra headers) for the client's Range, or None if unsatisfiable."""
        value = req.headers.get("range") if req.notable else None
        if value is None:
            return 200, 0, size, []
        try:
            rng = parse_range(value, size)
        except RangeNotSatisfiable:
            return None
        if rng is None:
            return 200, 0, size, []
        first, last = rng
        return 206, first, last + 1, [("Content-Range", f"bytes {first}-{last}/{size}")]

    def _respond_memory(
        self, conn: ClientConnection, req: Request, hit: MemoryHit, start: float, immutable: bool
    ) -> None:
        meta, body = hit.meta, hit.body
        transport = conn.transport
        assert transport is not None
        status = 200
        if immutable and not req.notable:
            # The hot path: an immutable object never changes, so neither does its head.
            head_key = (req.method, req.keep_alive)
            head = hit.heads.get(head_key)
            if head is None:
                head = hit.heads[head_key] = self._hit_head(req, meta, 200, meta.body_size, [], start, True)
            part = body
        else:
            rng = self._range(req, meta.body_size)
            if rng is None:
                return self._respond_416(conn, req, meta.body_size)
            status, first, end, extra = rng
            head = self._hit_head(req, meta, status, end - first, extra, start, immutable)
            part = body if status == 200 else body[first:end]
        sent = 0
        if req.method == "HEAD":
            transport.write(head)
        else:
            sent = len(part)
            if sent <= SMALL_BODY:
                transport.write(head + part)
            else:
                transport.write(head)
                transport.write(part)
        self.stats.bytes_to_clients += sent
        if self.access_log is not None:
            self._log(conn, req, start, "TCP_MEM_HIT", status, sent, "HIER_NONE", "-", meta.headers)
        if not req.keep_alive:
            conn.close()

    async def _respond_disk(
        self, conn: ClientConnection, req: Request, hit: DiskHit, start: float, immutable: bool
    ) -> None:
        keep, status, sent = req.keep_alive, 0, 0
        try:
            status, sent = await self._send_hit(conn, req, hit, start, immutable, [])
        except (OSError, RuntimeError, TimeoutError):
            keep = False
            conn.abort()
        finally:
            self.stats.bytes_to_clients += sent
            if self.access_log is not None and status:
                self._log(conn, req, start, "TCP_HIT", status, sent, "HIER_NONE", "-", hit.meta.headers)
            conn.finish(keep)

    async def _send_hit(
        self,
        conn: ClientConnection,
        req: Request,
        hit: MemoryHit | DiskHit,
        start: float,
        immutable: bool,
        extra: list[tuple[str, str]],
    ) -> tuple[int, int]:
        """Send a stored response (range-aware) from a task; returns (status, body bytes sent)."""
        meta = hit.meta
        transport = conn.transport
        assert transport is not None
        rng = self._range(req, meta.body_size)
        if rng is None:
            if isinstance(hit, DiskHit):
                os.close(hit.fd)
            self._respond_416(conn, req, meta.body_size)
            return 416, 0
        status, first, end, more = rng
        transport.write(self._hit_head(req, meta, status, end - first, extra + more, start, immutable))
        if isinstance(hit, MemoryHit):
            if req.method == "HEAD":
                return status, 0
            transport.write(hit.body[first:end] if status == 206 else hit.body)
            return status, end - first
        with open(hit.fd, "rb", buffering=0) as f:
            if req.method == "HEAD":
                return status, 0
            await self._sendfile(conn, f, first, end)
        return status, end - first

    async def _sendfile(self, conn: ClientConnection, f, first: int, end: int) -> None:  # type: ignore[no-untyped-def]
        """Send bytes [first, end) of ``f`` with os.sendfile, in pieces under the write timeout."""
        loop = asyncio.get_running_loop()
        timeout = self.config.client_write_timeout
        pos = first
        while pos < end:
            if conn.closed:
                raise ConnectionResetError("client went away")
            n = min(SENDFILE_PIECE, end - pos)
            async with asyncio.timeout(timeout):
                done = await loop.sendfile(conn.transport, f, pos, n)  # type: ignore[arg-type]
            if done != n:
                raise ConnectionResetError(f"file ended after {pos + done} of {end} bytes")
            pos += n

    async def _respond_download(
        self,
        conn: ClientConnection,
        req: Request,
        dl: Download,
        start: float,
        code: str,
        leader: bool,
        stale_ok: bool,
    ) -> None:
        keep = req.keep_alive
        status, sent = 0, 0
        stale_headers: list[tuple[str, str]] | None = None
        try:
            while dl.response is None and not dl.failed:
                await dl.wait()
            response = dl.response
            ranged = (
                response is not None and response.status == 200 and req.notable and "range" in req.headers
            )
            if response is not None and not dl.failed and (dl.length is None or ranged):
                # Unknown length, or a range: only the complete (verified) body will do.
                while not dl.done and not dl.failed:
                    await dl.wait()
            if stale_ok and (response is None or dl.failed or response.status >= 500):
                # The upstream cannot be reached (or fails): a copy we have beats an error, as
                # Squid's TCP_REFRESH_FAIL_OLD (RFC 9111 4.2.4 allows it when disconnected).
                hit = self.cache.lookup(dl.key, start)
                if hit is not None:
                    code, leader, stale_headers = "TCP_REFRESH_FAIL_OLD", False, hit.meta.headers
                    warning = [("Warning", f'111 {self.config.name} "Revalidation Failed"')]
                    status, sent = await self._send_hit(conn, req, hit, start, dl.obj is not None, warning)
                    return
            if response is None or dl.failed:  # nothing sent yet: a clean error response
                status, error, details = dl.error or (502, "proxy_internal_error", "download failed")
                self.respond_error(conn, req, status, details, error, keep, log_it=False)
                return
            total = dl.length if dl.length is not None else dl.written
            status, first, end, extra = 200, 0, total, []
            if response.status == 200:
                rng = self._range(req, total)
                if rng is None:
                    self._respond_416(conn, req, total)
                    status = 416
                    return
                status, first, end, extra = rng
            else:
                status = response.status
            headers = list(dl.out_headers) + extra
            headers += [
                ("Content-Length", str(end - first)),
                ("X-Cache", f"MISS from {self.config.name}"),
                ("Connection", "keep-alive" if keep else "close"),
            ]
            transport = conn.transport
            assert transport is not None
            transport.write(render_response_head(status, headers, response.reason or None))
            if req.method == "HEAD":
                return
            with open(dl.temp.fd, "rb", buffering=0, closefd=False) as f:  # type: ignore[union-attr]
                pos = first
                while pos < end:
                    avail = min(dl.sendable(), end)
                    if avail > pos:
                        await self._sendfile(conn, f, pos, avail)
                        sent += avail - pos
                        pos = avail
                    elif dl.failed:
                        keep = False
                        conn.abort()  # truncated on purpose: the client must not see a complete body
                        return
                    elif conn.closed:
                        return
                    else:
                        await dl.wait()
        except (OSError, RuntimeError, TimeoutError):
            keep = False
            conn.abort()
        finally:
            dl.release()
            self.stats.bytes_to_clients += sent
            if self.access_log is not None and status:
                if dl.failed and sent and stale_headers is None:
                    code += "_ABORTED"
                hier = "HIER_NONE"  # answered from a download another request started
                if leader:
                    hier = "FIRSTUP_PARENT" if self.config.parent else "HIER_DIRECT"
                headers = stale_headers or (dl.out_headers if dl.response is not None else [])
                self._log(conn, req, start, code, status, sent, hier, dl.peer if leader else "-", headers)
            conn.finish(keep)

    def _respond_416(self, conn: ClientConnection, req: Request, size: int) -> None:
        headers = [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")]
        headers.append(("Connection", "keep-alive" if req.keep_alive else "close"))
        conn.transport.write(render_response_head(416, headers))  # type: ignore[union-attr]

    def _respond_stats(self, conn: ClientConnection, req: Request, start: float) -> None:
        body = json.dumps(self.snapshot(), sort_keys=True).encode() + b"\n"
        headers = [
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
            ("Content-Length", str(len(body))),
            ("Connection", "keep-alive" if req.keep_alive else "close"),
        ]
        head = render_response_head(200, headers)
        conn.transport.write(head if req.method == "HEAD" else head + body)  # type: ignore[union-attr]
        if self.access_log is not None:
            self._log(conn, req, start, "NONE_NONE", 200, len(body), "HIER_NONE", "-", headers)
        if not req.keep_alive:
            conn.close()

    def respond_error(
        self,
        conn: ClientConnection,
        req: Request | None,
        status: int,
        details: str,
        error: str,
        keep_alive: bool,
        log_it: bool = True,
    ) -> None:
        """An error generated by the proxy itself: text body, ``Proxy-Status`` naming the reason."""
        if conn.closed:
            return
        body = f"cvmfs-proxy: {status} {details}\n".encode("utf-8", "replace")
        headers = [
            ("Date", formatdate(usegmt=True)),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Proxy-Status", proxy_status_error(self.config.name, error, details)),
            ("X-Cache", f"MISS from {self.config.name}"),
            ("Connection", "keep-alive" if keep_alive else "close"),
        ]
        head = render_response_head(status, headers)
        conn.transport.write(head if req is not None and req.method == "HEAD" else head + body)  # type: ignore[union-attr]
        if log_it and self.access_log is not None:
            code = "TCP_DENIED" if status == 403 else "NONE_NONE" if req is None else "TCP_MISS"
            if req is None:
                req = Request("NONE", "error:invalid-request", (1, 1), Headers())
            self._log(conn, req, time.time(), code, status, len(body), "HIER_NONE", "-", headers)
        if not keep_alive:
            conn.close()

    def _log(
        self,
        conn: ClientConnection,
        req: Request,
        start: float,
        code: str,
        status: int,
        size: int,
        hierarchy: str,
        peer: str,
        headers: list[tuple[str, str]],
    ) -> None:
        ctype = next((v for k, v in headers if k.lower() == "content-type"), "-")
        assert self.access_log is not None
        self.access_log.add(
            squid_log_line(
                start=start,
                end=time.time(),
                client=conn.peer,
                code=code,
                status=status,
                size=size,
                method=req.method,
                url=req.target.url if req.target is not None else req.raw_target,
                hierarchy=hierarchy,
                peer=peer,
                content_type=ctype,
            )
        )


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one: each client costs a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


async def serve(config: ProxyConfig) -> None:
    """Start a proxy and run it until SIGTERM/SIGINT (the CLI's whole job)."""
    raise_file_limit()
    server = ProxyServer(config)
    await server.serve_until_signalled()


def run(config: ProxyConfig) -> None:
    asyncio.run(serve(config))
