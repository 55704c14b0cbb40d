"""The framing rule and chunked decoder shared by the client (http1) and the proxy, without sockets:
each side gets its own exception type from the error factory, and the limits are parameters."""

from __future__ import annotations

import pytest

from cvmfs_client.http_framing import CHUNKED, MAX_CHUNK_LINE, UNTIL_CLOSE, ChunkedDecoder, body_length


class Refused(Exception):
    """The error factory of these tests: proves the caller's type is what escapes."""


def length(status: int = 200, te: tuple[str, ...] = (), cl: tuple[str, ...] = ()) -> int:
    return body_length(status, te, cl, Refused)


def test_framing_follows_rfc_9112() -> None:
    assert length(cl=("12",)) == 12
    assert length(cl=("5", " 5")) == 5  # the same value twice
    assert length(cl=("0" * 30 + "7",)) == 7  # leading zeros are still one unambiguous number
    assert length(304, cl=("12",)) == 0 and length(204) == 0 and length(101) == 0
    assert length(te=("Chunked",)) == CHUNKED
    assert length() == UNTIL_CLOSE


@pytest.mark.parametrize(
    "cl", [("-1",), ("1e3",), ("\u00b2",), (" ",), ("",), ("9" * 19,), ("5", "6"), ("5, 5",)]
)
def test_invalid_content_length_is_refused(cl: tuple[str, ...]) -> None:
    with pytest.raises(Refused, match="invalid Content-Length"):
        length(cl=cl)


@pytest.mark.parametrize(
    ("te", "cl"),
    [
        (("chunked",), ("3",)),
        (("gzip, chunked",), ()),
        (("chunked, identity",), ()),
        (("chunked", "chunked"), ()),
        (("chunked, chunked",), ()),
        (("chunked,",), ()),
        (("xchunked",), ()),
        (("",), ()),
    ],
)
def test_anything_but_a_lone_chunked_transfer_encoding_is_refused(
    te: tuple[str, ...], cl: tuple[str, ...]
) -> None:
    with pytest.raises(Refused, match="ambiguous framing"):
        length(te=te, cl=cl)


BODY = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\nNEXT"


def test_chunked_body_decodes_the_same_split_anywhere() -> None:
    whole = ChunkedDecoder(Refused)
    assert b"".join(whole.feed(BODY)) == b"Wikipedia in\r\n\r\nchunks."
    assert whole.done and whole.leftover == b"NEXT" and whole.surplus == 4
    for cut in range(1, len(BODY)):
        d = ChunkedDecoder(Refused)
        out = d.feed(BODY[:cut]) + d.feed(BODY[cut:])
        assert b"".join(out) == b"Wikipedia in\r\n\r\nchunks." and d.done and d.leftover == b"NEXT"


def test_bytes_after_the_end_are_kept_not_decoded() -> None:
    d = ChunkedDecoder(Refused)
    assert d.feed(b"1\r\na\r\n0\r\n\r\n") == [b"a"] and d.done and d.leftover == b"" and d.surplus == 0
    assert d.feed(b"3\r\nabc\r\n") == [] and d.leftover == b"3\r\nabc\r\n"
    unfinished = ChunkedDecoder(Refused)
    unfinished.feed(b"3\r\nab")
    assert not unfinished.done and unfinished.leftover == b"" and unfinished.surplus == 0


@pytest.mark.parametrize(
    "body",
    [
        b"x\r\n",
        b"-4\r\n",
        b"0x10\r\n",
        b"+5\r\n",
        b"1_0\r\n",
        b"\r\n",
        b"f" * 17 + b"\r\n",
        b"4\r\nWikiX\r\n",
        b"4\r\nWiki\n0\r\n",  # a bare LF after the data
    ],
)
def test_malformed_chunked_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(Refused):
        ChunkedDecoder(Refused).feed(body)


def test_chunk_size_line_limit_applies_with_or_without_crlf() -> None:
    ok = b"1;" + b"e" * (MAX_CHUNK_LINE - 2) + b"\r\nx\r\n"
    assert ChunkedDecoder(Refused).feed(ok) == [b"x"]
    for body in (b"0" * (MAX_CHUNK_LINE + 1), b"0" * 2000 + b"1\r\nx"):
        with pytest.raises(Refused, match="chunk-size line longer than 1024 bytes"):
            ChunkedDecoder(Refused).feed(body)
    with pytest.raises(Refused):
        ChunkedDecoder(Refused, max_line=8).feed(b"1;ext=xyz\r\n")  # 9 bytes


def test_trailer_line_limit_is_a_parameter() -> None:
    trailer = b"0\r\nX-T: " + b"t" * 2000 + b"\r\n\r\n"
    with pytest.raises(Refused, match="chunked trailer line longer than 1024 bytes"):
        ChunkedDecoder(Refused).feed(trailer)
    roomy = ChunkedDecoder(Refused, max_trailer_line=4096)
    assert roomy.feed(trailer) == [] and roomy.done
    with pytest.raises(Refused, match="chunked trailer"):
        ChunkedDecoder(Refused, max_trailer_line=4096).feed(b"0\r\n" + b"t" * 4097)
