"""HTTP/1.1 message parsing and rendering for a caching forward proxy, with no I/O.

Everything here works on bytes and small value objects, in the style of h11: the asyncio server
feeds received bytes into :class:`RequestParser` and :class:`ResponseHeadParser`, asks the pure
helpers what a header means (framing, freshness, ranges), and writes the bytes that the
``render_*`` functions return. Every edge case is therefore a unit test without sockets.

Errors say who was wrong: :class:`RemoteProtocolError` (the peer sent something we refuse) with
the status a proxy answers with. Limits are named constants; each comment says where the number
comes from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from cvmfs_client import http_framing
from cvmfs_client.http_framing import MAX_CHUNK_LINE

# Limits. CVMFS requests are tiny: a request line is a few hundred bytes and carries a handful of
# headers, so these guard memory and parsing time against hostile peers, not real clients.
MAX_REQUEST_LINE = 8 * 1024  # nginx's large_client_header_buffers default (8k); Squid allows 64k
MAX_HEAD_BYTES = 64 * 1024  # Squid's request_header_max_size / reply_header_max_size default (64 KB)
MAX_HEADER_COUNT = 100  # as Apache's LimitRequestFields default
MAX_PORT = 65535

SUPPORTED_METHODS = frozenset({"GET", "HEAD"})  # CVMFS clients only ever GET (HEAD for probes)

# RFC 9110 7.6.1: these describe one connection and are never forwarded or stored.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

REASONS = {
    200: "OK",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
    508: "Loop Detected",
}

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?\.?)+\Z")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)\Z")
_STATUS_LINE = re.compile(r"HTTP/(\d)\.(\d) (\d{3})(?: (.*))?\Z")
_BAD_TARGET_CHARS = re.compile(r"[\x00-\x20\x7f]")
# Saturation value of _decimal: more than any size, offset or age this proxy handles.
_BIG = 10**18
# RFC 9111 1.2.2: a delta-seconds too large to represent is taken as 2**31.
_MAX_DELTA_SECONDS = 2**31


def _decimal(text: str) -> int | None:
    """ASCII decimal digits as an int saturating at ``_BIG``, or None if ``text`` is not one.

    ``str.isdigit()`` alone is true for ``"\u00b2"`` and other digits ``int()`` refuses, and
    ``int()`` refuses more than 4300 digits; both used to escape from here as ValueError.
    """
    if not text or not text.isascii() or not text.isdigit():
        return None
    significant = text.lstrip("0")
    return _BIG if len(significant) > 18 else int(significant or "0")


class ProtocolError(Exception):
    """A message that cannot be handled; ``status`` is what a proxy answers with."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class RemoteProtocolError(ProtocolError):
    """The peer (client or upstream) broke the protocol or a limit; the connection must close."""


class Headers:
    """An ordered header list with case-insensitive lookup; names are kept lower-cased.

    A list rather than a dict because order and repetition matter when forwarding, and CVMFS
    messages carry so few headers that a linear scan beats hashing.
    """

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self.items: list[tuple[str, str]] = items if items is not None else []

    def get(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.items:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.items if k == name]

    def get_joined(self, name: str) -> str | None:
        """All values of a list-valued header joined by ``,`` (RFC 9110 5.3)."""
        values = self.get_all(name)
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> set[str]:
        """Comma-separated tokens of a header, lower-cased (``Connection: close, TE``)."""
        out: set[str] = set()
        for v in self.get_all(name):
            out.update(t.strip().lower() for t in v.split(",") if t.strip())
        return out

    def __contains__(self, name: str) -> bool:
        return any(k == name for k, _ in self.items)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"


@dataclass(frozen=True, slots=True)
class Target:
    """An absolute ``http://`` request target split into what a proxy needs."""

    host: str  # lower-case name or IP literal (IPv6 without brackets)
    port: int
    path: str  # path + query, always starting with "/"

    @property
    def authority(self) -> str:
        """``host[:port]`` as it goes into a Host header (port omitted when 80)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The normalized absolute URL: the cache key of mutable resources."""
        return f"http://{self.authority}{self.path}"


# Request headers whose presence changes how a proxy answers; the parser notes them in one pass
# so that the common request (none of them) skips every further header scan.
_NOTABLE_REQUEST_HEADERS = frozenset({"cache-control", "pragma", "range", "via"})


@dataclass(slots=True)
class Request:
    """One parsed request head.

    ``target`` is filled in by the caller (``parse_target``) for absolute-form requests; it is
    None for origin-form (a request to the proxy itself), authority-form (CONNECT) and ``*``.
    ``keep_alive`` is decided at parse time (RFC 9112 9.3); ``notable`` says whether any header
    that changes caching (Cache-Control, Pragma, Range, Via) is present.
    """

    method: str
    raw_target: str
    version: tuple[int, int]
    headers: Headers
    keep_alive: bool = True
    notable: bool = False
    target: Target | None = None


@dataclass(slots=True)
class Response:
    """One parsed response head (from an upstream server or parent proxy)."""

    version: tuple[int, int]
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.tokens("connection")
        if "close" in conn:
            return False
        return self.version >= (1, 1) or "keep-alive" in conn


def _split_head(block: str, what: str) -> tuple[str, Headers]:
    """Start line and headers of a head block (without the final blank line)."""
    crlf = block.count("\r\n")
    if block.count("\n") != crlf or block.count("\r") != crlf:
        # Bare CR or LF: parsers disagree on them, which is how requests get smuggled.
        raise RemoteProtocolError(f"bare CR or LF in {what} head")
    lines = block.split("\r\n")
    start = lines[0]
    if len(lines) - 1 > MAX_HEADER_COUNT:
        raise RemoteProtocolError(f"more than {MAX_HEADER_COUNT} header fields in {what}", 431)
    items: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise RemoteProtocolError(f"malformed header line in {what}: {line[:80]!r}")
        # No whitespace before the colon (RFC 9112 5.1: request smuggling vector) and no
        # obsolete line folding (RFC 9112 5.2 allows rejecting it with 400).
        if not _TOKEN.match(name):
            raise RemoteProtocolError(f"invalid header name in {what}: {name[:80]!r}")
        items.append((name.lower(), value.strip(" \t")))
    return start, Headers(items)


def parse_target(raw: str) -> Target:
    """Parse an absolute-form target ``http://host[:port]/path?query`` (RFC 9112 3.2.2)."""
    if _BAD_TARGET_CHARS.search(raw):
        raise RemoteProtocolError("control character or space in request target")
    scheme, sep, rest = raw.partition("://")
    if not sep:
        raise RemoteProtocolError(f"not an absolute http:// URL: {raw[:200]!r}")
    if scheme.lower() != "http":
        raise RemoteProtocolError(f"unsupported URL scheme {scheme!r} (only http:// is proxied)", 400)
    slash = rest.find("/")
    question = rest.find("?")
    cut = min(i for i in (slash, question, len(rest)) if i >= 0)
    authority, path = rest[:cut], rest[cut:]
    if not path.startswith("/"):
        path = "/" + path
    if "#" in path:
        path = path[: path.index("#")]
    if "@" in authority:
        raise RemoteProtocolError("credentials in the URL are not supported")
    host, port = split_authority(authority, default_port=80)
    return Target(host, port, path)


def split_authority(authority: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` or ``[v6][:port]`` -> (lower-case host, port); refuses anything odd."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise RemoteProtocolError(f"bad IPv6 literal in {authority!r}")
        host, rest = authority[1:end], authority[end + 1 :]
        if not host or any(c not in "0123456789abcdefABCDEF:." for c in host):
            raise RemoteProtocolError(f"bad IPv6 literal in {authority!r}")
        if rest and not rest.startswith(":"):
            raise RemoteProtocolError(f"bad authority {authority!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = authority.partition(":")
        if not host or not _HOST.match(host):
            raise RemoteProtocolError(f"bad host name {host[:100]!r}")
    if port_text:
        port_number = _decimal(port_text)
        if port_number is None or not 0 < port_number <= MAX_PORT:
            raise RemoteProtocolError(f"bad port in {authority[:200]!r}")
        port = port_number
    else:
        port = default_port
    return host.lower(), port


class RequestParser:
    """Incremental request-head parser for one client connection (pipelining-safe).

    ``feed`` appends received bytes; ``next_request`` returns the next complete request head or
    None when more bytes are needed. Bodies are refused (GET/HEAD only), so after a request head
    the next bytes are the next pipelined request. Any error leaves the connection unusable:
    the caller answers with ``exc.status`` and closes.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed into a request."""
        return len(self._buf)

    def next_request(self) -> Request | None:
        buf = self._buf
        # Tolerate the empty lines some clients send between requests (RFC 9112 2.2).
        while buf[:2] == b"\r\n":
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            line_end = buf.find(b"\r\n")
            if line_end < 0 and len(buf) > MAX_REQUEST_LINE:
                raise RemoteProtocolError(f"request line longer than {MAX_REQUEST_LINE} bytes", 414)
            if len(buf) > MAX_HEAD_BYTES:
                raise RemoteProtocolError(f"request head larger than {MAX_HEAD_BYTES} bytes", 431)
            if b"\n\n" in buf:  # a head ended by bare LFs would otherwise wait for the timeout
                raise RemoteProtocolError("bare LF line ending in request head")
            return None
        if end > MAX_HEAD_BYTES:
            raise RemoteProtocolError(f"request head larger than {MAX_HEAD_BYTES} bytes", 431)
        block = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        return parse_request_head(block)


def parse_request_head(block: str) -> Request:
    """Parse a request head (without the terminating blank line) and check what a proxy must.

    One pass over the header lines: this runs for every request, including memory hits.
    """
    crlf = block.count("\r\n")
    if block.count("\n") != crlf or block.count("\r") != crlf:
        # Bare CR or LF: parsers disagree on them, which is how requests get smuggled.
        raise RemoteProtocolError("bare CR or LF in request head")
    lines = block.split("\r\n")
    if len(lines) - 1 > MAX_HEADER_COUNT:
        raise RemoteProtocolError(f"more than {MAX_HEADER_COUNT} header fields", 431)
    start = lines[0]
    if len(start) > MAX_REQUEST_LINE:
        raise RemoteProtocolError(f"request line longer than {MAX_REQUEST_LINE} bytes", 414)
    parts = start.split(" ")
    if len(parts) != 3:
        raise RemoteProtocolError(f"malformed request line {start[:100]!r}")
    method, raw_target, version_text = parts
    if version_text == "HTTP/1.1":
        version = (1, 1)
    else:
        m = _VERSION.match(version_text)
        if not m:
            raise RemoteProtocolError(f"malformed request line {start[:100]!r}")
        version = (int(m.group(1)), int(m.group(2)))
        if version[0] != 1:
            raise RemoteProtocolError(f"unsupported HTTP version {version_text}", 505)
    if not raw_target or not _TOKEN.match(method):
        raise RemoteProtocolError(f"malformed request line {start[:100]!r}")
    items: list[tuple[str, str]] = []
    connection = ""
    notable = False
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        # No whitespace before the colon (RFC 9112 5.1: a smuggling vector), no obs-fold.
        if not sep or not _TOKEN.match(name):
            raise RemoteProtocolError(f"malformed header line {line[:80]!r}")
        name = name.lower()
        value = value.strip(" \t")
        items.append((name, value))
        if name in _NOTABLE_REQUEST_HEADERS:
            notable = True
        elif name == "connection" or name == "proxy-connection":
            connection += "," + value.lower()
        elif name == "transfer-encoding":
            # Bodies: we only forward GET/HEAD, so any framed body is refused rather than
            # skipped (a mis-skipped body is how requests get smuggled past a proxy).
            raise RemoteProtocolError("request bodies are not supported", 411 if method == "GET" else 405)
        elif name == "content-length" and value != "0":
            raise RemoteProtocolError("request bodies are not supported", 413)
    if connection:
        tokens = {t.strip() for t in connection.split(",")}
        keep_alive = "close" not in tokens and (version >= (1, 1) or "keep-alive" in tokens)
    else:
        keep_alive = version >= (1, 1)
    return Request(method, raw_target, version, Headers(items), keep_alive, notable)


def is_absolute_form(raw_target: str) -> bool:
    """Whether a request target is an absolute URL (a proxy request), not origin/authority form."""
    return not (raw_target.startswith("/") or raw_target == "*") and "://" in raw_target


class ResponseHeadParser:
    """Incremental parser for an upstream response head; the body framing is decided after."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Response | None:
        """Add bytes; return the response head once complete (then see :meth:`leftover`)."""
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise RemoteProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes", 502)
            return None
        block = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        return parse_response_head(block)

    def leftover(self) -> bytes:
        """Body bytes that arrived together with the head."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


def parse_response_head(block: str) -> Response:
    try:
        start, headers = _split_head(block, "response")
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(exc.reason, 502) from None
    m = _STATUS_LINE.match(start)
    if not m:
        raise RemoteProtocolError(f"malformed status line {start[:100]!r}", 502)
    return Response((int(m.group(1)), int(m.group(2))), int(m.group(3)), m.group(4) or "", headers)


@dataclass(frozen=True, slots=True)
class Framing:
    """How a response body ends: ``length`` bytes, chunked, or at connection close."""

    kind: str  # "length" | "chunked" | "close"
    length: int = 0


def response_framing(request_method: str, response: Response) -> Framing:
    """RFC 9112 6.3, by the rule shared with the client (:func:`cvmfs_client.http_framing.body_length`).

    A Transfer-Encoding other than one ``chunked``, or one together with Content-Length, is
    refused rather than resolved by the RFC's precedence rules: two parsers on the path
    disagreeing about where a body ends is how responses get smuggled.
    """
    if request_method == "HEAD":
        return Framing("length", 0)
    fields = response.headers
    length = http_framing.body_length(
        response.status,
        fields.get_all("transfer-encoding"),
        fields.get_all("content-length"),
        _upstream_error,
    )
    if length == http_framing.CHUNKED:
        return Framing("chunked")
    if length == http_framing.UNTIL_CLOSE:
        return Framing("close")
    return Framing("length", length)


def _upstream_error(reason: str) -> RemoteProtocolError:
    """The upstream's response is unusable: the proxy answers its client with 502."""
    return RemoteProtocolError(reason, 502)


class ChunkedDecoder(http_framing.ChunkedDecoder):
    """The shared chunked decoder raising ``RemoteProtocolError(..., 502)``; see :attr:`surplus`.

    A trailer line may be as long as a response head (MAX_HEAD_BYTES).
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(_upstream_error, MAX_CHUNK_LINE, MAX_HEAD_BYTES)


# ---- caching semantics -----------------------------------------------------------------------


def parse_cache_control(headers: Headers) -> dict[str, str | None]:
    """Directives of all Cache-Control headers, names lower-cased, quotes removed."""
    out: dict[str, str | None] = {}
    for value in headers.get_all("cache-control"):
        for part in value.split(","):
            name, sep, arg = part.strip().partition("=")
            if name:
                out[name.lower()] = arg.strip().strip('"') if sep else None
    return out


def _seconds(value: str | None) -> int | None:
    if value is None:
        return None
    seconds = _decimal(value.strip())
    return None if seconds is None else min(seconds, _MAX_DELTA_SECONDS)


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def freshness_lifetime(headers: Headers) -> int | None:
    """Seconds a shared cache may serve a response without asking again (RFC 9111 4.2.1).

    ``s-maxage`` beats ``max-age`` beats ``Expires - Date``. None means the server said nothing,
    and this proxy then does not store the response (no heuristic freshness: a Stratum 1 always
    sends max-age, and guessing for a manifest would delay new revisions).
    """
    cc = parse_cache_control(headers)
    for name in ("s-maxage", "max-age"):
        if name in cc:
            return _seconds(cc[name]) or 0
    expires = headers.get("expires")
    if expires is not None:
        exp = _http_date(expires)
        date = _http_date(headers.get("date"))
        if exp is None or date is None:
            return 0  # RFC 9111 5.3: an invalid Expires means "already expired"
        return max(0, int(exp - date))
    return None


def response_age(headers: Headers) -> int:
    """The upstream's Age header (a parent cache's copy may already be old)."""
    return _seconds(headers.get("age")) or 0


def shared_cache_may_store(response: Response, request_headers: Headers | None = None) -> bool:
    """RFC 9111 3 for a shared cache, narrowed to what CVMFS needs: 200 with explicit freshness."""
    if response.status != 200:
        return False
    cc = parse_cache_control(response.headers)
    if {"no-store", "private", "no-cache"} & cc.keys():
        return False
    if request_headers is not None and "authorization" in request_headers and "public" not in cc:
        return False
    vary = response.headers.tokens("vary")
    if vary - {"accept-encoding"}:  # we never forward Accept-Encoding, so that one is harmless
        return False
    lifetime = freshness_lifetime(response.headers)
    return lifetime is not None and lifetime > response_age(response.headers)


def client_wants_revalidation(headers: Headers) -> bool:
    """``Cache-Control: no-cache`` / ``max-age=0`` / ``Pragma: no-cache`` from the client.

    The real CVMFS client sends ``Pragma: no-cache`` and ``Cache-Control: no-cache`` only when
    it got bad data and retries (spec 7.5): that retry must reach the origin.
    """
    if "no-cache" in headers.tokens("pragma"):
        return True
    cc = headers.get("cache-control")
    if cc is None:
        return False
    directives = parse_cache_control(headers)
    return "no-cache" in directives or directives.get("max-age") == "0"


class RangeNotSatisfiable(Exception):
    """A syntactically valid range that lies outside the representation (answer 416)."""


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as (first, last) inclusive, or None to send the whole body.

    Multiple ranges, other units and malformed values are ignored (RFC 9110 14.2 allows it),
    which is what CVMFS needs: the client only asks for one range of an external file.
    """
    if value is None:
        return None
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    first, last = _decimal(first_text), _decimal(last_text)
    if not first_text:  # suffix range: the last N bytes
        n = last
        if n is None:
            return None
        if n == 0:
            raise RangeNotSatisfiable(value)
        return (max(0, size - n), size - 1) if size else _unsatisfiable(value)
    if first is None or (last_text and last is None):
        return None
    if last is not None and last < first:
        return None  # invalid range: ignored (RFC 9110 14.1.1)
    if first >= size:
        raise RangeNotSatisfiable(value)
    return first, min(size - 1 if last is None else last, size - 1)


def _unsatisfiable(value: str) -> tuple[int, int]:
    raise RangeNotSatisfiable(value)


# ---- rendering ---------------------------------------------------------------------------------


def render_response_head(status: int, headers: list[tuple[str, str]], reason: str | None = None) -> bytes:
    """Status line + headers + blank line, ready to write."""
    lines = [f"HTTP/1.1 {status} {reason or REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def render_request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def end_to_end(headers: Headers, drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Headers that may be forwarded or stored: no hop-by-hop ones, nor those named by Connection."""
    named = headers.tokens("connection")
    return [(k, v) for k, v in headers.items if k not in HOP_BY_HOP and k not in named and k not in drop]


def proxy_status_error(proxy_name: str, error: str, details: str) -> str:
    """A ``Proxy-Status`` value (RFC 9209) saying the proxy, not the origin, produced this error.

    The real CVMFS client treats a 5xx carrying ``Proxy-Status: ...error=`` as a proxy error
    (spec 7.5) and fails over accordingly.
    """
    safe = details.replace("\\", "\\\\").replace('"', '\\"')
    return f'{proxy_name}; error={error}; details="{safe}"'
