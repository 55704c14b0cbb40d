"""Pure HTTP logic of the proxy: parsing, limits, framing, freshness, ranges (no sockets)."""

from __future__ import annotations

import pytest

from proxy.http import (
    MAX_HEAD_BYTES,
    MAX_HEADER_COUNT,
    MAX_REQUEST_LINE,
    ChunkedDecoder,
    Headers,
    RangeNotSatisfiable,
    RemoteProtocolError,
    RequestParser,
    Response,
    ResponseHeadParser,
    client_wants_revalidation,
    end_to_end,
    freshness_lifetime,
    is_absolute_form,
    parse_range,
    parse_target,
    response_framing,
    shared_cache_may_store,
)


def parse_one(raw: bytes):  # type: ignore[no-untyped-def]
    p = RequestParser()
    p.feed(raw)
    return p.next_request()


def test_pipelined_requests_come_out_in_order_and_partial_heads_wait():
    p = RequestParser()
    p.feed(b"GET http://a/cvmfs/x HTTP/1.1\r\nHost: a\r\n\r\nGET http://b:8000/cvmfs/y?q HTTP/1.0\r\n")
    first = p.next_request()
    assert first.method == "GET" and first.raw_target == "http://a/cvmfs/x" and first.keep_alive
    assert p.next_request() is None
    p.feed(b"Connection: keep-alive\r\n\r\n")
    second = p.next_request()
    assert second.version == (1, 0) and second.keep_alive
    t = parse_target(second.raw_target)
    assert (t.host, t.port, t.path, t.url) == ("b", 8000, "/cvmfs/y?q", "http://b:8000/cvmfs/y?q")
    assert p.next_request() is None and p.buffered == 0


@pytest.mark.parametrize(
    ("raw", "keep"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nProxy-Connection: Close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
    ],
)
def test_keep_alive_follows_version_and_connection_tokens(raw, keep):
    assert parse_one(raw).keep_alive is keep


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET  http://a/ HTTP/1.1\r\n\r\n", 400),
        (b"GET http://a/ HTTP/2.0\r\n\r\n", 505),
        (b"GET http://a/ HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        (b"GET http://a/ HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET http://a/ HTTP/1.1\r\n folded\r\n\r\n", 400),
        (b"GET http://a/ HTTP/1.1\r\nX: a\rb\r\n\r\n", 400),
        (b"GET http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 413),
        (b"GET http://a/ HTTP/1.1\n\n", 400),
    ],
)
def test_malformed_requests_are_refused_with_a_status(raw, status):
    with pytest.raises(RemoteProtocolError) as err:
        parse_one(raw)
    assert err.value.status == status


def test_limits_stop_huge_request_lines_and_heads_before_they_complete():
    with pytest.raises(RemoteProtocolError) as err:
        parse_one(b"GET http://a/" + b"x" * MAX_REQUEST_LINE)
    assert err.value.status == 414
    with pytest.raises(RemoteProtocolError) as err:
        parse_one(b"GET http://a/ HTTP/1.1\r\n" + b"X: " + b"y" * MAX_HEAD_BYTES)
    assert err.value.status == 431
    many = b"".join(b"X%d: 1\r\n" % i for i in range(MAX_HEADER_COUNT + 1))
    with pytest.raises(RemoteProtocolError) as err:
        parse_one(b"GET http://a/ HTTP/1.1\r\n" + many + b"\r\n")
    assert err.value.status == 431


@pytest.mark.parametrize(
    "raw",
    [
        "https://a/x",
        "http://user:pw@a/x",
        "http://a b/x",
        "http://[::1/x",
        "http://a:99999/x",
        "http://-a/x",
        "x",
    ],
)
def test_bad_targets_are_refused(raw):
    with pytest.raises(RemoteProtocolError):
        parse_target(raw)


def test_targets_are_normalized_for_cache_keys():
    assert parse_target("http://EXAMPLE.org:80/cvmfs/a#frag").url == "http://example.org/cvmfs/a"
    assert parse_target("http://[::1]:3128/x").authority == "[::1]:3128"
    assert parse_target("http://a?x").path == "/?x"
    assert is_absolute_form("http://a/x") and not is_absolute_form("/cvmfs-proxy/stats")
    assert not is_absolute_form("a:443")


def test_connect_and_origin_form_are_left_to_the_caller():
    assert parse_one(b"CONNECT a:443 HTTP/1.1\r\n\r\n").method == "CONNECT"
    assert parse_one(b"GET /cvmfs-proxy/stats HTTP/1.1\r\n\r\n").raw_target == "/cvmfs-proxy/stats"


def head(raw: bytes) -> Response:
    parser = ResponseHeadParser()
    r = parser.feed(raw)
    assert r is not None
    return r


def test_response_framing():
    assert response_framing("GET", head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")).length == 5
    assert (
        response_framing("GET", head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")).kind
        == "chunked"
    )
    assert response_framing("GET", head(b"HTTP/1.0 200 OK\r\n\r\n")).kind == "close"
    assert response_framing("HEAD", head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")).length == 0
    with pytest.raises(RemoteProtocolError):
        response_framing("GET", head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"))
    with pytest.raises(RemoteProtocolError):
        head(b"HTTP/1.1 OK\r\n\r\n")


def test_chunked_decoding_across_arbitrary_splits():
    raw = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    for step in (1, 2, 7, len(raw)):
        d = ChunkedDecoder()
        out = b"".join(b"".join(d.feed(raw[i : i + step])) for i in range(0, len(raw), step))
        assert out == b"hello world" and d.done
    with pytest.raises(RemoteProtocolError):
        ChunkedDecoder().feed(b"zz\r\n")


def h(*items: tuple[str, str]) -> Headers:
    return Headers(list(items))


def test_freshness_from_s_maxage_max_age_or_expires():
    assert freshness_lifetime(h(("cache-control", "max-age=61"))) == 61
    assert freshness_lifetime(h(("cache-control", "max-age=61, s-maxage=10"))) == 10
    both = h(("date", "Wed, 25 Nov 2026 15:00:00 GMT"), ("expires", "Wed, 25 Nov 2026 15:01:01 GMT"))
    assert freshness_lifetime(both) == 61
    assert freshness_lifetime(h(("expires", "garbage"))) == 0
    assert freshness_lifetime(h()) is None


@pytest.mark.parametrize(
    ("headers", "storable"),
    [
        ([("cache-control", "max-age=61")], True),
        ([("cache-control", "max-age=61, no-store")], False),
        ([("cache-control", "private, max-age=61")], False),
        ([("cache-control", "max-age=61"), ("vary", "Cookie")], False),
        ([("cache-control", "max-age=61"), ("vary", "Accept-Encoding")], True),
        ([("cache-control", "max-age=61"), ("age", "100")], False),
        ([], False),
    ],
)
def test_what_a_shared_cache_stores(headers, storable):
    assert shared_cache_may_store(Response((1, 1), 200, "OK", Headers(headers))) is storable


def test_errors_are_never_stored():
    assert not shared_cache_may_store(Response((1, 1), 404, "", h(("cache-control", "max-age=61"))))


def test_client_revalidation_requests():
    assert client_wants_revalidation(h(("pragma", "no-cache")))
    assert client_wants_revalidation(h(("cache-control", "no-cache")))
    assert client_wants_revalidation(h(("cache-control", "max-age=0")))
    assert not client_wants_revalidation(h(("cache-control", "max-age=60")))
    assert not client_wants_revalidation(h(("pragma", "")))  # what the real CVMFS client sends


def test_ranges():
    assert parse_range("bytes=2-9", 100) == (2, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-5", 100) == (95, 99)
    assert parse_range("bytes=95-200", 100) == (95, 99)
    assert parse_range("bytes=1-2,5-6", 100) is None  # multiple ranges: whole body
    assert parse_range("items=1-2", 100) is None
    assert parse_range("bytes=9-2", 100) is None
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=100-", 100)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-0", 100)


def test_hop_by_hop_headers_are_not_forwarded():
    headers = h(("connection", "close, x-private"), ("x-private", "1"), ("keep-alive", "5"), ("etag", "e"))
    assert end_to_end(headers) == [("etag", "e")]
