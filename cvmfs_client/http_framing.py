"""HTTP/1.1 response body framing, shared by the fetcher's client and the caching proxy; no I/O.

Both read responses from servers they do not control, and both must agree with every other
parser on the path about where a body ends (a disagreement is how responses get smuggled, see
docs/security.md). So there is one rule and one chunked decoder, in this module:
:func:`body_length` decides the framing (RFC 9112 6.3) and :class:`ChunkedDecoder` decodes a
chunked body (RFC 9112 7.1). Each side passes an error factory (message -> exception) so that it
keeps raising its own exception type: ``http1.ProtocolError`` in the client,
``RemoteProtocolError(msg, 502)`` in the proxy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

ErrorFactory = Callable[[str], Exception]

# A chunk-size line with its extensions; real servers send < 20 bytes.
MAX_CHUNK_LINE = 1024

CHUNKED = -1
UNTIL_CLOSE = -2

# Hex digits only (RFC 9112 7.1): int(x, 16) would also take "0x10", "+5", "1_0", spellings
# another parser on the path may read differently. 16 digits: any 64-bit size.
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_MAX_DIGITS = 18  # a Content-Length of up to 10**18 - 1: more than any body handled here


def body_length(
    status: int, transfer_encodings: Sequence[str], content_lengths: Sequence[str], error: ErrorFactory
) -> int:
    """Body length of a response to a GET: bytes, :data:`CHUNKED` or :data:`UNTIL_CLOSE`.

    ``transfer_encodings`` and ``content_lengths`` are the values of every such header field, in
    order. RFC 9112 6.3 in order: bodiless statuses, chunked, Content-Length, until close. A
    Transfer-Encoding other than one lone ``chunked`` (another coding, ``chunked`` twice or not
    last, ``xchunked``, an empty list element), or one together with Content-Length, is refused
    rather than resolved by the RFC's precedence rules (RFC 9112 6.1, 6.3 point 3: "ought to be
    handled as an error"); so are differing or non-decimal Content-Length values.
    """
    if status in (204, 304) or 100 <= status < 200:
        return 0
    if transfer_encodings:
        codings = [t.strip().lower() for v in transfer_encodings for t in v.split(",")]
        if codings != ["chunked"] or content_lengths:
            shown = ", ".join(transfer_encodings)[:60]
            with_length = " with Content-Length" if content_lengths else ""
            raise error(f"ambiguous framing: Transfer-Encoding {shown!r}{with_length}")
        return CHUNKED
    if not content_lengths:
        return UNTIL_CLOSE
    values = {v.strip() for v in content_lengths}
    value = next(iter(values))
    # str.isdigit() alone also accepts "\u00b2"; int() refuses more than 4300 digits.
    if len(values) != 1 or not value.isascii() or not value.isdigit() or len(value.lstrip("0")) > _MAX_DIGITS:
        raise error(f"invalid Content-Length {sorted(v[:30] for v in values)}")
    return int(value)


class ChunkedDecoder:
    """Incremental decoder of a chunked body (RFC 9112 7.1); trailer fields are read and dropped.

    ``feed`` returns the body pieces in the bytes given; ``done`` turns True at the end of the
    body, and bytes received after it are kept (:attr:`leftover`, :attr:`surplus`): the client
    reads its next response from them, the proxy refuses a sender whose framing is not its own.
    A chunk-size line may be ``max_line`` bytes long, a trailer line ``max_trailer_line``.
    """

    __slots__ = ("_buf", "_error", "_left", "_max_line", "_max_trailer_line", "_state", "done")

    def __init__(
        self, error: ErrorFactory, max_line: int = MAX_CHUNK_LINE, max_trailer_line: int = MAX_CHUNK_LINE
    ) -> None:
        self._buf = bytearray()
        self._error = error
        self._left = 0
        self._max_line = max_line
        self._max_trailer_line = max_trailer_line
        self._state = "size"  # size -> data -> crlf -> size ... -> trailer -> done
        self.done = False

    @property
    def leftover(self) -> bytes:
        """The bytes received after the end of the body."""
        return bytes(self._buf) if self.done else b""

    @property
    def surplus(self) -> int:
        """How many bytes were received after the end of the body."""
        return len(self._buf) if self.done else 0

    def feed(self, data: bytes) -> list[bytes]:
        """Body bytes contained in ``data`` (``done`` turns True at the end)."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf and not self.done:
            state = self._state
            if state == "data":
                take = min(self._left, len(buf))
                out.append(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
                if self._left == 0:
                    self._state = "crlf"
            elif state == "crlf":
                if len(buf) < 2:
                    break
                if not buf.startswith(b"\r\n"):
                    raise self._error("chunk data longer than its declared size (no CRLF after it)")
                del buf[:2]
                self._state = "size"
            else:
                limit = self._max_line if state == "size" else self._max_trailer_line
                end = buf.find(b"\r\n")
                if end < 0 and len(buf) <= limit:
                    break
                if end < 0 or end > limit:
                    what = "chunk-size" if state == "size" else "chunked trailer"
                    raise self._error(f"{what} line longer than {limit} bytes")
                if state == "size":
                    size = bytes(buf[:end]).split(b";", 1)[0].strip(b" \t")
                    if not _CHUNK_SIZE.fullmatch(size):
                        raise self._error(f"malformed chunk size {bytes(buf[: min(end, 40)])!r}")
                    self._left = int(size, 16)
                    self._state = "data" if self._left else "trailer"
                elif end == 0:  # the empty line that ends the trailer section
                    self.done = True
                del buf[: end + 2]
        return out
