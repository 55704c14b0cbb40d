"""A Stratum 1 that fails on purpose: per-URL faults on demand, or a seeded fraction at random.

Real web servers do not misbehave on request, so fault tests (the client's, the interposer's,
the proxy's) and ``bench/soak.py`` use this one. Apart from the injected fault it answers as a
Stratum 1 does (the tests' nginx, :mod:`cvmfs_client.server`): ``root/<fqrn>/...`` under
``/cvmfs/<fqrn>/``, HTTP/1.1 keep-alive, the cvmfs_server cache headers, 404 for what is not
there, one thread per connection. A fault is chosen per request; a connection that survives its
fault (5xx, wrong bytes, slow drip, wrong Content-Length) is kept alive, as a real broken server
would keep it, so the next request on it sees the consequences (stale bytes after a short
Content-Length).

Faults (:class:`Fault`) apply only to GETs of files that exist: 404s and HEADs are always
answered correctly. Requests and injected faults are counted under one lock::

    with FaultOrigin(root, stall_seconds=3) as origin:       # root/<fqrn>/.cvmfspublished ...
        origin.inject(r"/data/.*C$", Fault.TRUNCATE, times=2)  # the next two catalog requests
        origin.random_faults(0.1, seed=1)                      # and 10% of the others, any fault
        env["CVMFS_SERVER_URL"] = f"{origin.url};{good_server}"
        ...
        origin.stats.faults  # {"truncate": 2, "stall": 3, ...}
"""

from __future__ import annotations

import contextlib
import enum
import os
import random
import re
import select
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from cvmfs_client.server import cache_headers, resolve_request_path

PIECE = 1 << 16
IDLE_TIMEOUT = 30.0  # an idle keep-alive connection is closed after this (nginx: 75 s)
HOLD_POLL = 0.05  # how often a stalled answer looks for the client leaving or the origin stopping
EVENTS_KEPT = 100_000
BOUNCE = "/fault-origin/bounce"  # the B of a redirect loop A -> B -> A
LOOP_MARK = "fault-origin=loop"  # query of the A in a loop: always redirected to B again
SELF_MARK = "fault-origin=self"  # query of a URL that always redirects to itself


class Fault(enum.Enum):
    """What goes wrong with one answer. The value is the name used in stats and reports."""

    WRONG_BYTES = "wrong-bytes"  # the whole body with one byte flipped (its middle one)
    TRUNCATE = "truncate"  # right Content-Length, half the body, then close (FIN)
    RESET = "reset"  # head and half the body, then a TCP reset (SO_LINGER 0)
    STALL = "stall"  # the request is read and never answered
    STALL_BODY = "stall-body"  # head and half the body, then nothing more
    SLOW_DRIP = "slow-drip"  # the right answer, ``drip_bytes`` every ``drip_interval`` seconds
    SERVER_ERROR = "5xx"  # ``error_status`` with a short text body; the connection stays open
    LONG_LENGTH = "long-length"  # Content-Length larger than the body; the body; connection kept
    SHORT_LENGTH = "short-length"  # Content-Length smaller than the body; the whole body anyway
    REDIRECT_SELF = "redirect-self"  # 302 to a URL that redirects to itself, forever
    REDIRECT_LOOP = "redirect-loop"  # 302 A -> B, B -> A, forever


ALL_FAULTS: tuple[Fault, ...] = tuple(Fault)
Matcher = Callable[[str], bool]


def matcher(match: str | Matcher) -> Matcher:
    """A string is a regular expression searched in the URL path (no query); else a predicate."""
    if callable(match):
        return match
    pattern = re.compile(match)
    return lambda path: pattern.search(path) is not None


@dataclass
class Rule:
    """One ``inject`` call: ``fault`` for requests whose path matches, ``remaining`` more times
    (None: forever). ``hits`` counts the requests it faulted."""

    match: Matcher
    fault: Fault
    remaining: int | None
    hits: int = 0


@dataclass(frozen=True)
class OriginStats:
    """A snapshot of the counters: every request received (redirect hops included), those
    answered correctly, and the injected faults by kind (``Fault.value``)."""

    requests: int
    clean: int
    faults: dict[str, int] = field(default_factory=dict)

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())


@dataclass(frozen=True)
class Event:
    """One request as the origin saw it: its path and what it got (a fault name or a status)."""

    path: str
    outcome: str


@dataclass
class _RandomMode:
    rate: float
    kinds: tuple[Fault, ...]
    rng: random.Random
    match: Matcher


class FaultOrigin:
    """Serve ``root`` (a directory of published repositories) on 127.0.0.1 with injected faults.

    ``stall_seconds``: how long a stall lasts before the origin closes the connection (None:
    until the client leaves or the origin stops). ``drip_bytes``/``drip_interval``: the pace of
    :attr:`Fault.SLOW_DRIP`. ``error_status``: the status of :attr:`Fault.SERVER_ERROR`.
    Use as a context manager, or :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        root: Path,
        *,
        stall_seconds: float | None = None,
        drip_bytes: int = 16,
        drip_interval: float = 0.1,
        error_status: int = 503,
        port: int = 0,
    ) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"{self.root}: not a directory to serve")
        if drip_bytes < 1 or drip_interval < 0:
            raise ValueError("drip_bytes must be positive and drip_interval not negative")
        self.stall_seconds = stall_seconds
        self.drip_bytes = drip_bytes
        self.drip_interval = drip_interval
        self.error_status = error_status
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._random: _RandomMode | None = None
        self._requests = 0
        self._clean = 0
        self._faults: Counter[str] = Counter()
        self._events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd = _Server(("127.0.0.1", port), self)
        self._thread: threading.Thread | None = None

    # -- addresses ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """A ``CVMFS_SERVER_URL`` entry for this origin."""
        return f"{self.base_url}/cvmfs/@fqrn@"

    def repo_url(self, fqrn: str) -> str:
        return f"{self.base_url}/cvmfs/{fqrn}"

    # -- faults ---------------------------------------------------------------------------------

    def inject(self, match: str | Matcher, fault: Fault, times: int | None = None) -> Rule:
        """Fault the next ``times`` requests (None: all) whose path matches ``match``.

        Rules are tried in the order injected; the first one with faults left wins, before the
        random mode is consulted.
        """
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for every request)")
        rule = Rule(matcher(match), Fault(fault), times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def random_faults(
        self,
        rate: float,
        kinds: Iterable[Fault] = ALL_FAULTS,
        seed: int = 0,
        match: str | Matcher = "",
    ) -> None:
        """Fault a fraction ``rate`` of the requests matching ``match``, each with a kind drawn
        uniformly from ``kinds``, reproducibly from ``seed``. ``rate`` 0 turns it off."""
        if not 0 <= rate <= 1:
            raise ValueError(f"rate {rate} is not between 0 and 1")
        kinds = tuple(Fault(k) for k in kinds)
        if rate and not kinds:
            raise ValueError("no fault kinds to choose from")
        with self._lock:
            self._random = _RandomMode(rate, kinds, random.Random(seed), matcher(match)) if rate else None

    def clear(self) -> None:
        """No more faults: rules and random mode removed (counters kept)."""
        with self._lock:
            self._rules.clear()
            self._random = None

    @property
    def stats(self) -> OriginStats:
        with self._lock:
            return OriginStats(self._requests, self._clean, dict(self._faults))

    @property
    def open_connections(self) -> int:
        """Client connections open right now (stalled and dripping answers included)."""
        with self._lock:
            return len(self._connections)

    def events(self, match: str | Matcher = "") -> list[Event]:
        """The latest requests (up to 100,000) whose path matches, oldest first."""
        want = matcher(match)
        with self._lock:
            return [e for e in self._events if want(e.path)]

    def resolve(self, url_path: str) -> Path | None:
        """The file ``/cvmfs/<fqrn>/<rest>`` names, or None (404).

        ``root/<fqrn>`` may be a symlink to a repository kept elsewhere (the tests link the
        shared real-publisher fixtures), as nginx follows it; below it nothing may leave the
        repository (:func:`resolve_request_path`'s rules).
        """
        parts = url_path.split("/")
        if len(parts) < 4 or parts[0] or parts[1] != "cvmfs":
            return None
        fqrn = unquote(parts[2])
        if fqrn in ("", ".", "..") or "/" in fqrn or "\x00" in fqrn:
            return None
        repo = self.root / fqrn
        if not repo.is_dir():
            return None
        return resolve_request_path(repo, "/" + "/".join(parts[3:]))

    def _choose(self, path: str) -> Fault | None:
        """The fault for one GET of an existing file, counted; None for a correct answer."""
        with self._lock:
            self._requests += 1
            fault = None
            for rule in self._rules:
                if rule.remaining != 0 and rule.match(path):
                    fault = rule.fault
                    rule.hits += 1
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    break
            mode = self._random
            if fault is None and mode is not None and mode.match(path) and mode.rng.random() < mode.rate:
                fault = mode.rng.choice(mode.kinds)
            if fault is None:
                self._clean += 1
                self._events.append(Event(path, "200"))
            else:
                self._faults[fault.value] += 1
                self._events.append(Event(path, fault.value))
            return fault

    def _record(self, path: str, outcome: str, clean: bool) -> None:
        """A request that is not a fault decision: 404s, HEADs, redirect-loop hops."""
        with self._lock:
            self._requests += 1
            self._clean += clean
            self._events.append(Event(path, outcome))

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> FaultOrigin:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": HOLD_POLL},
                name=f"fault-origin:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; stalled and kept-alive connections are closed at once. Safe twice."""
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # wakes a handler blocked reading the next request
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()

    def __enter__(self) -> FaultOrigin:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def hold(self, conn: socket.socket, seconds: float | None) -> None:
        """Wait ``seconds`` (None: no limit), ending early when the client closes its end or the
        origin stops, so that stalled answers do not outlive their clients."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._stopping.is_set():
            wait = HOLD_POLL if deadline is None else min(HOLD_POLL, deadline - time.monotonic())
            if wait <= 0:
                return
            try:
                readable, _, _ = select.select([conn], [], [], wait)
                if readable and not conn.recv(1, socket.MSG_PEEK):
                    return  # the client closed its end
            except OSError:
                return
            if readable:  # a pipelined request waits: it is not answered either
                self._stopping.wait(wait)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for stalled connections' threads

    def __init__(self, address: tuple[str, int], origin: FaultOrigin) -> None:
        self.origin = origin
        self.resets: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        """Close a connection: with a reset when its handler asked for one (no FIN first)."""
        if request in self.resets:
            self.resets.discard(request)
            request.close()  # SO_LINGER 0 was set: the kernel sends RST, drops unsent bytes
            return
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hanging up on a faulty answer are expected; anything else is a bug to show."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fault-origin"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.origin._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.origin._closed(self.connection)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class name
        pass

    # -- dispatch -------------------------------------------------------------------------------

    def _answer(self, body: bool) -> None:
        origin = self.server.origin
        parts = urlsplit(self.path)
        path = parts.path
        try:
            if path.startswith(BOUNCE + "/"):
                origin._record(path, "302", clean=False)
                self._redirect(f"{path[len(BOUNCE) :]}?{LOOP_MARK}", body)
                return
            if parts.query in (LOOP_MARK, SELF_MARK):
                origin._record(path, "302", clean=False)
                target = f"{BOUNCE}{path}" if parts.query == LOOP_MARK else f"{path}?{SELF_MARK}"
                self._redirect(target, body)
                return
            file = origin.resolve(path)
            if file is None:
                origin._record(path, "404", clean=True)
                self._plain(404, "Not Found", body)
                return
            try:
                f = file.open("rb")
            except OSError:
                origin._record(path, "404", clean=True)
                self._plain(404, "Not Found", body)
                return
            with f:
                if not body:
                    origin._record(path, "200", clean=True)
                    self._ok_head(file.name, _size(f))
                    return
                self._serve(f, file.name, path, origin._choose(path))
        except OSError:
            self.close_connection = True  # the client left: nothing more to say on this one

    def _serve(self, f: BinaryIO, name: str, path: str, fault: Fault | None) -> None:
        origin = self.server.origin
        size = _size(f)
        half = size // 2
        if fault is None:
            self._ok_head(name, size)
            self._copy(f, size)
        elif fault is Fault.WRONG_BYTES:
            if size == 0:  # nothing to flip: one byte where none belongs
                self._ok_head(name, 1)
                self.wfile.write(b"\xff")
            else:
                self._ok_head(name, size)
                self._copy(f, size, flip=half)
        elif fault in (Fault.TRUNCATE, Fault.RESET, Fault.STALL_BODY):
            self._ok_head(name, size)
            self._copy(f, half)
            if fault is Fault.RESET:
                self._reset()
                return
            if fault is Fault.STALL_BODY:
                origin.hold(self.connection, origin.stall_seconds)
            self.close_connection = True
        elif fault is Fault.STALL:
            origin.hold(self.connection, origin.stall_seconds)
            self.close_connection = True
        elif fault is Fault.SLOW_DRIP:
            self._ok_head(name, size)
            self._copy(f, size, drip=True)
        elif fault is Fault.SERVER_ERROR:
            self._plain(origin.error_status, _phrase(origin.error_status), True)
        elif fault is Fault.LONG_LENGTH:
            # Then back to reading the next request, as a server that miscounted would: the
            # client waits for bytes that never come.
            self._ok_head(name, size + max(1, size // 4))
            self._copy(f, size)
        elif fault is Fault.SHORT_LENGTH:
            cut = max(1, size // 4)
            self._ok_head(name, max(0, size - cut))
            self._copy(f, size)
            if size == 0:
                self.wfile.write(b"\xff")
        elif fault is Fault.REDIRECT_SELF:
            self._redirect(f"{path}?{SELF_MARK}", True)
        elif fault is Fault.REDIRECT_LOOP:
            self._redirect(f"{BOUNCE}{path}", True)

    # -- pieces of answers ----------------------------------------------------------------------

    def _ok_head(self, name: str, length: int) -> None:
        """The head a Stratum 1 sends for a file (cvmfs_server's Apache expiry rules)."""
        ctype, max_age = cache_headers(name)
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", f"max-age={max_age}")
        self.send_header("Expires", self.date_time_string(time.time() + max_age))
        self.end_headers()

    def _copy(self, f: BinaryIO, limit: int, *, flip: int | None = None, drip: bool = False) -> None:
        """Send the first ``limit`` bytes of ``f``; ``flip``: that offset XOR 0xff; ``drip``: slowly."""
        origin = self.server.origin
        sent = 0
        while sent < limit:
            piece = f.read(min(origin.drip_bytes if drip else PIECE, limit - sent))
            if not piece:  # the file shrank under us: never pretend the short body is whole
                self.close_connection = True
                return
            if flip is not None and sent <= flip < sent + len(piece):
                changed = bytearray(piece)
                changed[flip - sent] ^= 0xFF
                piece = bytes(changed)
            self.wfile.write(piece)
            sent += len(piece)
            if drip and sent < limit and origin._stopping.wait(origin.drip_interval):
                self.close_connection = True
                return

    def _reset(self) -> None:
        """End the connection with RST: linger 0, and no FIN before it (see _Server)."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.resets.add(self.connection)
        self.close_connection = True

    def _redirect(self, target: str, body: bool) -> None:
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.origin.port}"
        location = f"http://{host}{target}"
        text = f"302 Found: {location}\n".encode()
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if body:
            self.wfile.write(text)

    def _plain(self, code: int, text: str, body: bool) -> None:
        data = f"{code} {text}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests: a short plain answer, then close (as server.py)."""
        self.close_connection = True
        self._plain(code, message or "Error", body=self.command != "HEAD")


def _size(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_size


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
