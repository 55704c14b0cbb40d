"""The production fetcher: the one place where repository bytes cross the network.

It behaves like the real client's download manager (spec 7): servers tried in order with a
sticky current server, proxy groups with random load balancing and failover, same-URL retries
with backoff for transfer errors, one no-cache retry for bad data, connect and low-speed
timeouts, optional Geo API ordering. The decisions themselves live in :mod:`.failover` (pure,
unit-tested); this module only turns HTTP and file reads into :class:`~.failover.ErrorClass`
values and carries out the decisions.

Consumer contract (unchanged from :class:`.fetch.ObjectSource`): ``fetch(name, consume)`` calls
``consume(pieces, url)`` with an iterator of the stored bytes; ``consume`` verifies while
streaming and raises an :class:`~.errors.IntegrityError` to reject them. The iterator raises
(inside ``consume``) if the transfer breaks, so a consumer never reaches its final check with a
truncated body. ``consume`` may be called several times for one ``fetch`` and must start from
scratch each time.

Threads: per thread, persistent :mod:`.http1` connections per next hop for plain ``http://``
GETs (the common case, ~30 µs of CPU per request against ~1.2 ms with requests), and one
``requests.Session`` for the rest (https, followed redirects, caller-supplied sessions); neither
is thread-safe. The route state is shared by all threads of the process behind one lock, as in
the real client.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import requests
import urllib3.exceptions
import urllib3.response
from requests.adapters import HTTPAdapter

from . import __version__, http1
from .config import expand_templates
from .errors import ConfigError, CorruptObject, FetchError, FormatError, IntegrityError
from .failover import (
    DIRECT,
    Action,
    Cause,
    ErrorClass,
    Failover,
    HostChain,
    ProxyChain,
    RequestState,
    RetryPolicy,
    Route,
    classify_failure,
    classify_status,
    uses_proxies,
)
from .geoapi import MAX_REPLY, MAX_SERVERS_ASKED, apply_geo_order, geo_query, host_name, parse_geo_reply

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_AGENT = f"cvmfs-client/{__version__}"
# Request fields of every object request (mappings passed on are never changed).
_HEADERS = {"User-Agent": USER_AGENT, "Connection": "Keep-Alive", "Accept-Encoding": "identity"}
# Manifests and whitelists are a few KiB; refuse anything absurd instead of buffering it.
MAX_SIGNED_FILE = 1 << 20
PIECE = 1 << 16
MAX_REDIRECTS = 4  # spec 7.1: the real client follows at most 4 redirects
# Keep-alive pools per session: one per server or proxy a thread talks to.
_POOL_CONNECTIONS = 16
_POOL_MAXSIZE = 4
_PROBE_WORKERS = 8
# spec 7.1 URL escaping: bytes outside this set (plus letters and digits) become %XX.
_URL_SAFE = "/:.@+-_~[],"
_NEEDS_NO_QUOTING = re.compile(r"[A-Za-z0-9/:.@+\-_~\[\],]*")  # what quote() keeps with _URL_SAFE

Sleep = Callable[[float], None]
SessionFactory = Callable[[], requests.Session]


# -- settings -----------------------------------------------------------------------------------

_ON = frozenset({"yes", "on", "1", "true"})
_OFF = frozenset({"no", "off", "0", "false"})


def _parse_bool(name: str, value: str) -> bool:
    """Spec 8.2: yes/on/1/true and no/off/0/false, case-insensitive."""
    v = value.strip().lower()
    if v in _ON:
        return True
    if v in _OFF:
        return False
    raise ConfigError(f"{name}={value!r}: not a boolean (use yes or no)")


def _parse_number(name: str, value: str, *, integer: bool, positive: bool) -> float:
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{name}={value!r}: not {kind}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}={value!r}: not a finite number")
    if number < 0 or (positive and number == 0):
        raise ConfigError(f"{name}={value!r}: must be {'positive' if positive else 'zero or more'}")
    return number


# parameter -> (field, integer?, positive?). Defaults are the shipped default.conf values
# (spec 8.4), which is what a site running the real client has.
_NUMBERS: dict[str, tuple[str, bool, bool]] = {
    "CVMFS_TIMEOUT": ("timeout", False, True),
    "CVMFS_TIMEOUT_DIRECT": ("timeout_direct", False, True),
    "CVMFS_LOW_SPEED_LIMIT": ("low_speed_limit", True, False),
    "CVMFS_MAX_RETRIES": ("max_retries", True, False),
    "CVMFS_BACKOFF_INIT": ("backoff_init", False, False),
    "CVMFS_BACKOFF_MAX": ("backoff_max", False, False),
    "CVMFS_PROXY_RESET_AFTER": ("proxy_reset_after", False, False),
    "CVMFS_HOST_RESET_AFTER": ("host_reset_after", False, False),
    "CVMFS_MAX_SERVERS": ("max_servers", True, False),
}
_BOOLEANS: dict[str, str] = {
    "CVMFS_USE_GEOAPI": "use_geoapi",
    "CVMFS_FOLLOW_REDIRECTS": "follow_redirects",
}


def _parse_servers(value: str, fqrn: str) -> tuple[str, ...]:
    servers = []
    for raw in value.split(";"):
        url = expand_templates(raw.strip(), fqrn).rstrip("/")
        if not url:
            continue
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.hostname):
            raise ConfigError(
                f"CVMFS_SERVER_URL: unsupported server URL {url!r} (use http://, https:// or file://)"
            )
        servers.append(url)
    if not servers:
        raise ConfigError(
            f"{fqrn}: no server configured; set CVMFS_SERVER_URL (e.g. http://host/cvmfs/@fqrn@)"
        )
    return tuple(servers)


def _parse_proxy(name: str, member: str) -> str:
    if member.lower() == "auto":
        raise ConfigError(
            f"{name}={member!r}: proxy auto-discovery is not supported; list the proxies or use DIRECT"
        )
    url = member if "://" in member else f"http://{member}"  # dns::AddDefaultScheme
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigError(f"{name}: bad port in proxy {member!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"{name}: unsupported proxy {member!r} (use http://host:port or DIRECT)")
    return url.rstrip("/")


def parse_proxy_groups(name: str, value: str, *, allow_direct: bool = True) -> tuple[tuple[str, ...], ...]:
    """``a|b;c;DIRECT`` -> ``(("http://a", "http://b"), ("http://c",), ("DIRECT",))`` (spec 7.3).

    Without ``allow_direct``, DIRECT members are dropped (with a warning, as the real client
    does for ``CVMFS_FALLBACK_PROXY`` and for the regular list when fallback proxies exist);
    groups left empty disappear.
    """
    groups: list[tuple[str, ...]] = []
    for group in value.split(";"):
        members: list[str] = []
        for raw in group.split("|"):
            member = raw.strip()
            if not member:
                continue
            if member.upper() == DIRECT:
                if allow_direct:
                    members.append(DIRECT)
                else:
                    log.warning("%s: DIRECT is not used here (fallback proxies configured); dropped", name)
                continue
            members.append(_parse_proxy(name, member))
        if members:
            groups.append(tuple(members))
    return tuple(groups)


@dataclass(frozen=True)
class FetcherSettings:
    """Everything the fetcher needs from the ``CVMFS_*`` parameters; times in seconds."""

    servers: tuple[str, ...]
    proxy_groups: tuple[tuple[str, ...], ...] = ((DIRECT,),)
    fallback_groups: tuple[tuple[str, ...], ...] = ()
    timeout: float = 5.0
    timeout_direct: float = 10.0
    low_speed_limit: int = 1024
    max_retries: int = 1
    backoff_init: float = 2.0
    backoff_max: float = 10.0
    proxy_reset_after: float = 300.0
    host_reset_after: float = 1800.0
    use_geoapi: bool = False
    max_servers: int = 0
    follow_redirects: bool = False
    proxy_template: str | None = None

    def __post_init__(self) -> None:
        if not self.servers:
            raise ConfigError("no server configured; set CVMFS_SERVER_URL")
        if not self.proxy_groups and not self.fallback_groups:
            raise ConfigError("no proxy configured; set CVMFS_HTTP_PROXY=DIRECT to connect directly")

    @classmethod
    def from_parameters(cls, params: Mapping[str, str], fqrn: str) -> FetcherSettings:
        """Settings from a mapping of parameters, with the real client's rules and defaults.

        ``@fqrn@``/``@org@`` are substituted here too (harmless if already done). Any malformed
        value is a :class:`ConfigError` naming the parameter and the value.
        """
        fields: dict[str, object] = {"servers": _parse_servers(params.get("CVMFS_SERVER_URL", ""), fqrn)}
        regular_raw = expand_templates(params.get("CVMFS_HTTP_PROXY", ""), fqrn)
        fallback_raw = expand_templates(params.get("CVMFS_FALLBACK_PROXY", ""), fqrn)
        regular = parse_proxy_groups("CVMFS_HTTP_PROXY", regular_raw)
        if not regular:
            # The real client refuses to mount ("failed to discover HTTP proxy servers"): going
            # direct to a Stratum 1 from a whole cluster must be an explicit choice.
            raise ConfigError(
                f"CVMFS_HTTP_PROXY={regular_raw!r}: no proxy configured; list your site's proxies, "
                "or set CVMFS_HTTP_PROXY=DIRECT to connect to the servers directly"
            )
        fallback = parse_proxy_groups("CVMFS_FALLBACK_PROXY", fallback_raw, allow_direct=False)
        if fallback:
            regular = parse_proxy_groups("CVMFS_HTTP_PROXY", regular_raw, allow_direct=False)
        fields["proxy_groups"] = regular
        fields["fallback_groups"] = fallback
        for name, (field, integer, positive) in _NUMBERS.items():
            value = params.get(name, "").strip()
            if value:
                fields[field] = _parse_number(name, value, integer=integer, positive=positive)
        for name, field in _BOOLEANS.items():
            value = params.get(name, "").strip()
            if value:
                fields[field] = _parse_bool(name, value)
        template = params.get("CVMFS_PROXY_TEMPLATE", "").strip()
        if template:
            fields["proxy_template"] = template
        return cls(**fields)  # type: ignore[arg-type]

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.max_retries,
            backoff_init_ms=round(self.backoff_init * 1000),
            backoff_max_ms=round(self.backoff_max * 1000),
        )


# -- attempts -----------------------------------------------------------------------------------


class _AttemptFailed(Exception):
    """One attempt failed below the consumer (network, status, short body). Never leaves this module."""

    def __init__(self, error: ErrorClass, reason: str, *, missing: bool = False) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.missing = missing  # the server said it has no such file (HTTP 404)


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: requests and urllib3 nest the root cause in args/reason/__cause__."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo and len(seen) < 32:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner = [getattr(e, "reason", None), e.__cause__, e.__context__, *e.args]
        todo.extend(x for x in inner if isinstance(x, BaseException))


# urllib3 1.26 has no NameResolutionError; its NewConnectionError then wraps socket.gaierror.
_NAME_RESOLUTION_ERROR: type[BaseException] = getattr(
    urllib3.exceptions, "NameResolutionError", socket.gaierror
)

# Most specific first: urllib3's NewConnectionError subclasses its ConnectTimeoutError, and
# NameResolutionError subclasses NewConnectionError.
_CAUSES: tuple[tuple[tuple[type[BaseException], ...], Cause, str], ...] = (
    ((_NAME_RESOLUTION_ERROR, socket.gaierror), Cause.RESOLVE, "cannot resolve host name"),
    ((requests.exceptions.SSLError, urllib3.exceptions.SSLError, ssl.SSLError), Cause.TLS, "TLS error"),
    ((requests.exceptions.TooManyRedirects,), Cause.REDIRECTS, "too many redirects"),
    ((ConnectionRefusedError,), Cause.CONNECT, "connection refused"),
    ((urllib3.exceptions.NewConnectionError,), Cause.CONNECT, "cannot connect"),
    (
        (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError, socket.timeout),
        Cause.TIMEOUT,
        "timed out",
    ),
    ((urllib3.exceptions.IncompleteRead, http.client.IncompleteRead), Cause.SHORT_TRANSFER, "truncated body"),
    (
        (
            urllib3.exceptions.ProtocolError,
            requests.exceptions.ChunkedEncodingError,
            http.client.HTTPException,
            ConnectionError,  # the built-in one (reset, aborted, broken pipe), not requests'
        ),
        Cause.SHORT_TRANSFER,
        "connection broken",
    ),
)


def _raw_pieces(raw: urllib3.response.BaseHTTPResponse) -> Iterator[bytes]:
    """Body bytes as they arrive, undecoded (the hash covers the bytes as stored).

    ``read1`` returns after one receive, which the low-speed check needs; ``stream(n)`` (the
    fallback for urllib3 releases without ``read1``) blocks until ``n`` bytes have arrived.
    """
    read1 = getattr(raw, "read1", None)
    if read1 is None:
        yield from raw.stream(PIECE, decode_content=False)
        return
    while piece := read1(PIECE, decode_content=False):
        yield piece


def _failure(exc: BaseException, *, via_proxy: bool) -> _AttemptFailed:
    chain = list(_exception_chain(exc))
    for types, cause, reason in _CAUSES:
        if any(isinstance(e, types) for e in chain):
            return _AttemptFailed(classify_failure(cause, via_proxy=via_proxy), reason)
    return _AttemptFailed(
        classify_failure(Cause.CONNECT, via_proxy=via_proxy), str(exc) or type(exc).__name__
    )


def _status_reason(resp: requests.Response) -> str:
    return _status_reason_of(resp.status_code, resp.headers)


def _status_reason_of(status: int, headers: Mapping[str, str]) -> str:
    reason = f"HTTP {status}"
    squid = headers.get("X-Squid-Error")
    if squid:
        reason += f" (X-Squid-Error: {squid})"
    elif "error=" in (headers.get("Proxy-Status") or ""):
        reason += f" (Proxy-Status: {headers['Proxy-Status']})"
    if 300 <= status < 400 and headers.get("Location"):
        reason += f" redirect to {headers['Location']} (set CVMFS_FOLLOW_REDIRECTS=yes to follow)"
    return reason


def _without_source(message: str, url: str) -> str:
    """Integrity errors start with the URL given to the consumer; the attempt list already has it."""
    prefix = f"{url}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _default_session() -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=_POOL_CONNECTIONS, pool_maxsize=_POOL_MAXSIZE, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@dataclass(frozen=True)
class ProbeResult:
    """One server x proxy pair tried by :meth:`Fetcher.probe`."""

    server: str
    proxy: str
    ok: bool
    latency_s: float
    reason: str


class ObjectSource(Protocol):
    """What readers need from a fetcher: stream a name into a verifying consumer."""

    def fetch(
        self, name: str, consume: Callable[[Iterator[bytes], str], T], *, revalidate: bool = False
    ) -> T: ...

    def fetch_bytes(
        self,
        name: str,
        limit: int = ...,
        *,
        revalidate: bool = True,
        check: Callable[[bytes, str], None] | None = None,
    ) -> bytes: ...

    def close(self) -> None: ...


def file_url(path: str | Path) -> str:
    """``file://`` URL of a local Stratum-0 tree (the real client accepts these too)."""
    return Path(path).resolve().as_uri()


class Fetcher:
    """Fetch repository-relative names through the configured servers and proxies.

    ``session_factory`` makes the per-thread ``requests.Session`` (tests and callers can add
    adapters); ``sleep``, ``rng`` and ``clock`` are injectable so backoff, load balancing and
    reset timers are reproducible in tests.
    """

    @classmethod
    def for_servers(cls, *servers: str) -> Fetcher:
        """A fetcher going DIRECT to ``servers`` with default settings (tools and tests)."""
        return cls(FetcherSettings(servers=tuple(servers)))

    def __init__(
        self,
        settings: FetcherSettings,
        session_factory: SessionFactory | None = None,
        *,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        client_uuid: str | None = None,
    ) -> None:
        self.settings = settings
        self._sleep = sleep
        self._rng = rng or random.Random()
        hosts = HostChain(settings.servers, reset_after=settings.host_reset_after, clock=clock)
        proxies = ProxyChain(
            settings.proxy_groups,
            fallback_groups=settings.fallback_groups,
            reset_after=settings.proxy_reset_after,
            rng=self._rng,
            clock=clock,
        )
        self._failover = Failover(hosts, proxies, settings.retry_policy, self._rng)
        # The Geo API stands in for the real client's per-installation UUID when going DIRECT.
        self._uuid = client_uuid or str(uuid.uuid4())
        self._geo_pending = settings.use_geoapi
        self._geo_lock = threading.Lock()
        if not self._geo_pending and settings.max_servers:
            self._failover.reorder(range(len(settings.servers)), (), settings.max_servers)
        self._session_factory = session_factory or _default_session
        # Plain http:// GETs take the light path (:meth:`_attempt_plain`) unless the caller
        # wants its own requests sessions (adapters) or redirects must be followed.
        self._plain_http = session_factory is None and not settings.follow_redirects
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._connections: list[http1.Connection] = []
        self._hops: dict[tuple[str, str], tuple[tuple[str, int], str, str]] = {}
        self._sessions_lock = threading.Lock()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every thread's session (their keep-alive connections)."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
            connections, self._connections = self._connections, []
        for session in sessions:
            session.close()
        for conn in connections:
            conn.close()
        self._local = threading.local()

    @property
    def failover(self) -> Failover:
        """The shared route state (current server and proxy), for status displays."""
        return self._failover

    # -- public fetching ------------------------------------------------------------------------

    def fetch(
        self, name: str, consume: Callable[[Iterator[bytes], str], T], *, revalidate: bool = False
    ) -> T:
        """Stream ``name`` into ``consume(pieces, url)`` through the current route, failing over.

        ``revalidate`` sends ``Cache-Control: max-age=0`` so caches on the way check with the
        server (for the mutable ``.cvmfspublished``/``.cvmfswhitelist``). If every attempt was
        rejected by ``consume`` the last :class:`IntegrityError` is raised (the precise
        diagnosis); otherwise a :class:`FetchError` lists every attempt.
        """
        self._ensure_geo()
        # Object names need no quoting (quote() costs more than the check, per object).
        quoted = name if _NEEDS_NO_QUOTING.fullmatch(name) else urllib.parse.quote(name, safe=_URL_SAFE)
        state = RequestState()
        attempts: list[str] = []
        integrity: list[IntegrityError] = []
        missing = True
        while True:
            route = self._failover.route()
            try:
                result = self._attempt(route, quoted, consume, nocache=state.nocache, revalidate=revalidate)
            except IntegrityError as exc:
                integrity.append(exc)
                error, reason = ErrorClass.BAD_DATA, _without_source(str(exc), f"{route.host}/{quoted}")
                missing = False
            except _AttemptFailed as exc:
                error, reason = exc.error, exc.reason
                missing = missing and exc.missing
            else:
                if attempts:
                    # Said once, here: a failure that failover hid would otherwise go unseen. A
                    # fetch that fails says it in the error it raises (every attempt listed).
                    log.warning(
                        "%s: fetched from %s after %d failed attempt(s): %s",
                        name,
                        route.host if route.direct else f"{route.host} via {route.proxy}",
                        len(attempts),
                        "; ".join(attempts),
                    )
                return result
            where = route.describe(quoted)
            attempts.append(f"{where}: {reason}")
            decision = self._failover.record(state, route, error)
            log.info("%s: %s [%s]; %s", where, reason, error.value, decision.action.value)
            if decision.action is Action.GIVE_UP:
                break
            if decision.backoff > 0:
                self._sleep(decision.backoff)
        if len(integrity) == len(attempts):
            raise integrity[-1]
        raise FetchError(name, attempts, not_found=missing)

    def fetch_bytes(
        self,
        name: str,
        limit: int = MAX_SIGNED_FILE,
        *,
        revalidate: bool = True,
        check: Callable[[bytes, str], None] | None = None,
    ) -> bytes:
        """A small file checked by its signature (manifest, whitelist); at most ``limit`` bytes.

        ``check(data, url)`` verifies each answer and rejects it by raising an
        :class:`IntegrityError`: like a hash mismatch, it is retried without caches, then on the
        next server (a damaged or stale signed file from one server must not fail the mount).
        """

        def collect(pieces: Iterator[bytes], url: str) -> bytes:
            buf = bytearray()
            for piece in pieces:
                buf += piece
                if len(buf) > limit:
                    # No signed file comes near this size: treat as bad data (retry uncached,
                    # then another server) rather than buffering without bound.
                    raise CorruptObject(url, f"larger than {limit} bytes")
            if check is not None:
                check(bytes(buf), url)
            return bytes(buf)

        return self.fetch(name, collect, revalidate=revalidate)

    def probe(self, name: str = ".cvmfspublished") -> list[ProbeResult]:
        """GET ``name`` through every server x every proxy (fallback included), in parallel.

        Each pair uses a fresh connection, so the latency includes connection set-up; the shared
        route state is not changed.
        """
        quoted = urllib.parse.quote(name, safe=_URL_SAFE)
        routes = self._failover.all_routes()

        def drain(pieces: Iterator[bytes], url: str) -> int:
            total = 0
            for piece in pieces:
                total += len(piece)
                if total > MAX_SIGNED_FILE:
                    raise CorruptObject(url, f"larger than {MAX_SIGNED_FILE} bytes")
            return total

        def one(route: Route) -> ProbeResult:
            session = self._new_session()
            start = time.perf_counter()
            try:
                size = self._attempt(route, quoted, drain, nocache=False, revalidate=True, session=session)
                ok, reason = True, f"ok ({size} bytes)"
            except IntegrityError as exc:
                ok, reason = False, _without_source(str(exc), f"{route.host}/{quoted}")
            except _AttemptFailed as exc:
                ok, reason = False, f"{exc.reason} [{exc.error.value}]"
            finally:
                session.close()
            elapsed = time.perf_counter() - start
            log.debug("probe %s: %s", route.describe(quoted), reason)
            return ProbeResult(route.host, route.proxy, ok, elapsed, reason)

        with ThreadPoolExecutor(max_workers=max(1, min(_PROBE_WORKERS, len(routes)))) as pool:
            return list(pool.map(one, routes))

    # -- one attempt ----------------------------------------------------------------------------

    def _attempt(
        self,
        route: Route,
        name: str,
        consume: Callable[[Iterator[bytes], str], T],
        *,
        nocache: bool,
        revalidate: bool,
        session: requests.Session | None = None,
    ) -> T:
        url = f"{route.host}/{name}"
        if not uses_proxies(route.host):
            return self._attempt_file(url, consume)
        if nocache:
            # Spec 7.1/7.8: only after bad data, so a proxy replaces a poisoned copy.
            headers = {**_HEADERS, "Pragma": "no-cache", "Cache-Control": "no-cache"}
        elif revalidate:
            headers = {**_HEADERS, "Cache-Control": "max-age=0"}
        else:
            headers = _HEADERS  # read only
        plain_hop = route.direct or route.proxy.startswith("http://")
        if session is None and self._plain_http and url.startswith("http://") and plain_hop:
            return self._attempt_plain(route, url, headers, consume)
        return self._attempt_http(route, url, headers, consume, session or self._session())

    def _attempt_file(self, url: str, consume: Callable[[Iterator[bytes], str], T]) -> T:
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after the consumer is done
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise _AttemptFailed(ErrorClass.HOST_HTTP, "no such file", missing=True) from None
        except PermissionError:
            raise _AttemptFailed(ErrorClass.HOST_HTTP, "permission denied") from None
        except OSError as exc:
            raise _AttemptFailed(ErrorClass.HOST_CONNECTION, f"cannot open: {exc.strerror or exc}") from None

        def pieces() -> Iterator[bytes]:
            try:
                while chunk := f.read(PIECE):
                    yield chunk
            except OSError as exc:
                raise _AttemptFailed(
                    ErrorClass.HOST_SHORT_TRANSFER, f"read error: {exc.strerror or exc}"
                ) from exc

        with f:
            return consume(pieces(), url)

    def _attempt_http(
        self,
        route: Route,
        url: str,
        headers: dict[str, str],
        consume: Callable[[Iterator[bytes], str], T],
        session: requests.Session,
    ) -> T:
        via_proxy = not route.direct
        timeout = self.settings.timeout if via_proxy else self.settings.timeout_direct
        proxies = {"http": route.proxy, "https": route.proxy} if via_proxy else {}
        try:
            resp = session.get(
                url,
                headers=headers,
                stream=True,
                timeout=(timeout, timeout),
                proxies=proxies,
                allow_redirects=self.settings.follow_redirects,
            )
        except requests.RequestException as exc:
            raise _failure(exc, via_proxy=via_proxy) from exc
        with resp:
            error = classify_status(resp.status_code, resp.headers, via_proxy=via_proxy)
            if error is not None:
                raise _AttemptFailed(
                    error,
                    _status_reason(resp),
                    missing=resp.status_code == 404 and error is ErrorClass.HOST_HTTP,
                )
            return consume(self._stream(resp, timeout, via_proxy), url)

    def _attempt_plain(
        self,
        route: Route,
        url: str,
        headers: dict[str, str],
        consume: Callable[[Iterator[bytes], str], T],
    ) -> T:
        """One attempt over a persistent :mod:`.http1` connection (per thread and next hop).

        Why not requests here: it costs ~1.2 ms of CPU per request under the GIL (DESIGN.md
        "Measured here"), ``http.client`` ~130 µs and this ~40 µs, and pre-warming and cold
        reads are bound by exactly that. Same contract as :meth:`_attempt_http`: the same
        headers, the absolute URI and the origin's ``Host`` through a proxy, no redirects (this
        path is only taken when they are errors), the same status and failure classes, the same
        body checks. A kept-alive connection that the peer closed while idle fails before any
        response; that one case is retried once on a new connection (as urllib3 does), every
        other failure is reported.
        """
        via_proxy = not route.direct
        timeout = self.settings.timeout if via_proxy else self.settings.timeout_direct
        key, host_field, target = self._plain_hop(route, url)
        fields = [("Host", host_field), *headers.items()]
        for fresh_retry in (False, True):
            conn, reused = self._connection(key, timeout)
            try:
                resp = conn.get(target, fields)
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._drop_connection(key, conn)
                if reused and not fresh_retry:
                    continue
                raise _failure(exc, via_proxy=via_proxy) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection(key, conn)
                raise _failure(exc, via_proxy=via_proxy) from exc
        reusable = False
        try:
            error = classify_status(resp.status, resp.headers, via_proxy=via_proxy)
            if error is not None:
                raise _AttemptFailed(
                    error,
                    _status_reason_of(resp.status, resp.headers),
                    missing=resp.status == 404 and error is ErrorClass.HOST_HTTP,
                )
            expected = resp.framing if resp.framing >= 0 else None
            body = self._checked(resp.body(), expected, timeout, via_proxy)
            result = consume(body, url)
            reusable = True
            return result
        finally:
            # Not reused unless the body was read to its end and accepted: after bad data the
            # peer may have sent more than its Content-Length (the rest would be read as the
            # next response's head, failing an innocent request, e.g. the no-cache retry).
            if not reusable or not resp.complete or conn.sock is None:
                self._drop_connection(key, conn)

    def _plain_hop(self, route: Route, url: str) -> tuple[tuple[str, int], str, str]:
        """(next hop (host, port), ``Host`` field, request target) of ``url`` on ``route``.

        What depends on the route alone is parsed once per route and remembered: parsing two
        URLs per request cost more CPU than reading a small response.
        """
        parsed = self._hops.get((route.host, route.proxy))
        if parsed is None:
            via_proxy = not route.direct
            origin = urllib.parse.urlsplit(route.host)
            hop = urllib.parse.urlsplit(route.proxy) if via_proxy else origin
            try:
                key = (hop.hostname or "", hop.port or 80)
            except ValueError as exc:  # a malformed port
                raise _AttemptFailed(classify_failure(Cause.CONNECT, via_proxy=via_proxy), str(exc)) from exc
            # Through a proxy the target is the absolute URL; directly, the path (server URLs
            # have neither query nor fragment: quoting escapes '?' and '#' in names).
            parsed = key, origin.netloc, "" if via_proxy else origin.path
            self._hops[(route.host, route.proxy)] = parsed
        key, host_field, path_prefix = parsed
        return key, host_field, url if route.proxy != DIRECT else path_prefix + url[len(route.host) :]

    def _stream(self, resp: requests.Response, timeout: float, via_proxy: bool) -> Iterator[bytes]:
        declared = resp.headers.get("Content-Length")
        # isascii: str.isdigit() also accepts "²", which int() refuses
        expected = int(declared) if declared and declared.isascii() and declared.isdigit() else None
        return self._checked(_raw_pieces(resp.raw), expected, timeout, via_proxy)

    def _checked(
        self, pieces: Iterator[bytes], expected: int | None, timeout: float, via_proxy: bool
    ) -> Iterator[bytes]:
        """The body as stored (no content decoding), checked for stalls, slowness and truncation.

        The socket read timeout catches a stalled transfer; the low-speed check approximates
        curl's ``CVMFS_LOW_SPEED_LIMIT`` (bytes/s averaged over ``timeout`` seconds), measured
        per received piece, so a proxy trickling a few bytes at a time cannot hold a request
        forever.
        """
        limit = self.settings.low_speed_limit
        got = 0
        window_start = time.monotonic()
        window_bytes = 0
        try:
            for piece in pieces:
                got += len(piece)
                window_bytes += len(piece)
                now = time.monotonic()
                if limit and now - window_start >= timeout:
                    if window_bytes < limit * (now - window_start):
                        rate = window_bytes / (now - window_start)
                        raise _AttemptFailed(
                            classify_failure(Cause.TIMEOUT, via_proxy=via_proxy),
                            f"too slow ({rate:.0f} B/s < CVMFS_LOW_SPEED_LIMIT={limit})",
                        )
                    window_start, window_bytes = now, 0
                yield piece
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise _failure(exc, via_proxy=via_proxy) from exc
        if expected is not None and got != expected:
            raise _AttemptFailed(
                classify_failure(Cause.SHORT_TRANSFER, via_proxy=via_proxy),
                f"truncated body ({got} of {expected} bytes)",
            )

    # -- sessions -------------------------------------------------------------------------------

    def _new_session(self) -> requests.Session:
        session = self._session_factory()
        # The route is decided here, per request: proxy variables of the environment (and their
        # no_proxy exceptions) must not add or remove a hop behind the failover logic's back.
        session.trust_env = False
        session.max_redirects = MAX_REDIRECTS
        return session

    def _connection(self, key: tuple[str, int], timeout: float) -> tuple[http1.Connection, bool]:
        """This thread's connection to ``key`` (host, port), and whether it was used before."""
        conns: dict[tuple[str, int], http1.Connection] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(key)
        if conn is None:
            conn = http1.Connection(key[0], key[1], timeout)
            conns[key] = conn
            with self._sessions_lock:
                self._connections.append(conn)
            return conn, False
        conn.set_timeout(timeout)
        return conn, conn.used

    def _drop_connection(self, key: tuple[str, int], conn: http1.Connection) -> None:
        conn.close()
        conns = getattr(self._local, "conns", {})
        if conns.get(key) is conn:
            del conns[key]
        with self._sessions_lock, contextlib.suppress(ValueError):
            self._connections.remove(conn)

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._new_session()
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    # -- Geo API --------------------------------------------------------------------------------

    def _ensure_geo(self) -> None:
        """Order the servers by the Geo API once, before the first request (spec 1.4).

        Failure only costs the configured order, so it is logged and ignored.
        """
        if not self._geo_pending:
            return
        with self._geo_lock:
            if not self._geo_pending:
                return
            try:
                self._geo_sort()
            finally:
                self._geo_pending = False

    def _geo_sort(self) -> None:
        servers = self._failover.hosts.hosts
        chain = self._failover.proxies
        keep = self.settings.max_servers
        query = geo_query(servers, chain.groups[chain.first_fallback :], chain.first_fallback > 0)
        if query is None:
            self._failover.reorder(range(len(servers)), (), keep)
            return
        if not all(uses_proxies(s) for s in servers):
            log.warning("Geo API: not used, the server list has a local (file://) server")
            self._failover.reorder(range(len(servers)), (), keep)
            return
        route = self._failover.route()
        if route.direct or chain.on_fallback:
            # Spec 1.4: on a fallback group (or DIRECT) ask directly, named by the client's UUID.
            proxy, proxy_name = DIRECT, self.settings.proxy_template or self._uuid
        else:
            proxy, proxy_name = route.proxy, self.settings.proxy_template or host_name(route.proxy)
        path = query.path(urllib.parse.quote(proxy_name, safe=_URL_SAFE))

        def collect(pieces: Iterator[bytes], url: str) -> bytes:
            buf = bytearray()
            for piece in pieces:
                buf += piece
                if len(buf) > MAX_REPLY:
                    raise FormatError(url, f"Geo API reply larger than {MAX_REPLY} bytes")
            return bytes(buf)

        asked = self._rng.sample(range(len(servers)), min(MAX_SERVERS_ASKED, len(servers)))
        failures: list[str] = []
        for index in asked:
            geo_route = Route(index, servers[index], proxy, route.proxy_group, route.proxy_member)
            url = f"{servers[index]}/{path}"
            try:
                body = self._attempt(geo_route, path, collect, nocache=False, revalidate=False)
                order = parse_geo_reply(body, len(query.names), url)
            except (_AttemptFailed, FormatError) as exc:  # a FormatError names its URL itself
                failures.append(
                    str(exc) if isinstance(exc, FormatError) else f"{geo_route.describe(path)}: {exc}"
                )
                log.info("Geo API: %s", failures[-1])
                continue
            host_order, fallback_order = apply_geo_order(query, order)
            self._failover.reorder(host_order, fallback_order, keep)
            log.info("Geo API: server order %s", ", ".join(self._failover.hosts.hosts))
            return
        log.warning(
            "Geo API: no usable answer (%s); keeping the configured server order", "; ".join(failures)
        )
        self._failover.reorder(range(len(servers)), (), keep)
