"""Fuzz the fetcher's HTTP/1.1 response parsing (``cvmfs_client.http1``): response heads, body
framing and chunked bodies split anywhere. Only ``ProtocolError`` may escape, and a chunked body
decodes to the same bytes however it is split.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from cvmfs_client.http1 import ChunkedDecoder, ProtocolError, body_framing, keeps_alive, parse_head

from .common import FUZZ, Property

_HEAD_PIECES = [
    b"HTTP/1.1 200 OK",
    b"HTTP/1.0 304",
    b"HTTP/9.9 999 x",
    b"HTTP/1.1 \xb2\xb2\xb2 OK",
    b"\r\n",
    b"Content-Length: ",
    b"content-length: 5",
    b"Transfer-Encoding: ",
    b"chunked",
    b"gzip, chunked",
    b"Connection: close",
    b"Connection: keep-alive",
    b"X-Squid-Error: ERR_CONNECT_FAIL 111",
    b"0",
    b"-1",
    b"9" * 4400,
    b"\xb2",
    b":",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
]
head_bytes = st.one_of(
    st.binary(max_size=200), st.lists(st.sampled_from(_HEAD_PIECES), max_size=30).map(b"".join)
)

_CHUNK_PIECES = [
    b"0",
    b"4",
    b"a",
    b"F" * 17,
    b";ext",
    b"\r\n",
    b"\n",
    b"Wiki",
    b"x" * 15,
    b"Trailer: t",
    b"\xb2",
]
chunked_input = st.tuples(
    st.one_of(st.binary(max_size=200), st.lists(st.sampled_from(_CHUNK_PIECES), max_size=30).map(b"".join)),
    st.lists(st.integers(1, 40), max_size=6),
)


def check_head(block: bytes) -> None:
    try:
        head = parse_head(block)
        framing = body_framing(head)
    except ProtocolError:
        return
    keeps_alive(head, framing)
    assert framing >= -2 and 100 <= head.status <= 999


def _decode(data: bytes, cuts: list[int]) -> tuple[bytes, bool, bytes] | None:
    decoder = ChunkedDecoder()
    out: list[bytes] = []
    pos = 0
    try:
        for n in [*cuts, len(data)]:
            out += decoder.feed(data[pos : pos + n])
            pos += n
        out += decoder.feed(data[pos:])
    except ProtocolError:
        return None
    return b"".join(out), decoder.done, decoder.leftover


def check_chunked(spec: tuple[bytes, list[int]]) -> None:
    data, cuts = spec
    split = _decode(data, cuts)
    whole = _decode(data, [])
    if split is not None and whole is not None:
        assert split == whole


PROPERTIES: dict[str, Property] = {
    "http1.parse_head": (head_bytes, check_head),
    "http1.ChunkedDecoder": (chunked_input, check_chunked),
}


@FUZZ
@given(head_bytes)
@example(b"HTTP/1.1 200 OK\r\nContent-Length: \xb2")  # str.isdigit() accepts "²", int() does not
@example(b"HTTP/1.1 000 zero")
def test_response_head(block: bytes) -> None:
    check_head(block)


@FUZZ
@given(chunked_input)
@example((b"4\r\nWiki\r\n0\r\n\r\nNEXT", [5, 3]))
def test_chunked_body(spec: tuple[Any, ...]) -> None:
    check_chunked(spec)
