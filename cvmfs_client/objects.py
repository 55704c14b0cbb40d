"""Stored objects: zlib or raw bytes, verified by the hash of the bytes as stored.

Format facts (spec 4.2, 7.8): the content hash covers the stored (compressed) bytes; compression
is a zlib stream (RFC 1950, not raw deflate, not gzip), one independent stream per object/chunk.
A client verifies while streaming and must never expose data before the whole object verified,
so :class:`ObjectDecoder` writes to a caller's sink and only reports success at ``finish()``.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Callable, Iterable
from typing import BinaryIO

from .errors import CorruptObject, FormatError, HashMismatch
from .hashing import ContentHash

# Inflate output is produced in bounded pieces so a zlib bomb cannot exhaust memory.
_MAX_INFLATE_PIECE = 1 << 20


class Compression(enum.Enum):
    """Catalog flag bits 11-13 (spec 5.5)."""

    ZLIB = 0
    NONE = 1

    @property
    def flag_bits(self) -> int:
        return self.value << 11

    @classmethod
    def from_flags(cls, flags: int, source: str = "catalog flags") -> Compression:
        raw = (flags >> 11) & 7
        try:
            return cls(raw)
        except ValueError:
            raise FormatError(source, f"unknown compression algorithm {raw} in flags {flags:#x}") from None

    @classmethod
    def from_option(cls, name: str) -> Compression:
        spelled = {"zlib": cls.ZLIB, "default": cls.ZLIB, "none": cls.NONE}
        try:
            return spelled[name.lower()]
        except KeyError:
            raise FormatError("compression", f"unknown compression {name!r} (use zlib or none)") from None


class ObjectDecoder:
    """Incremental verify + decode of one stored object into ``sink``.

    Feed stored bytes with :meth:`feed`; call :meth:`finish` to check the hash, the end of the
    zlib stream and (optionally) the decoded size. Until ``finish`` returns, whatever reached
    the sink must be treated as unverified and discarded on error.
    """

    def __init__(
        self,
        expected: ContentHash,
        compression: Compression,
        sink: Callable[[bytes], object],
        source: str,
        expected_size: int | None = None,
    ) -> None:
        self.expected = expected
        self.source = source
        self.expected_size = expected_size
        self._sink = sink
        self._hasher = expected.algorithm.new()
        self._inflater = zlib.decompressobj() if compression is Compression.ZLIB else None
        self._tail = b""  # the last stored bytes: a zlib stream ends with its content's Adler-32
        self._adler = 1  # Adler-32 of raw content, computed as it passes
        self.stored_size = 0
        self.size = 0
        # Adler-32 of the decoded content, set by finish(): a checksum of the decoded file for
        # the cache's fsck that costs nothing for zlib objects (the stream's trailer, which
        # zlib checks while inflating) and little for raw ones.
        self.adler32: int | None = None

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._hasher.update(data)
        self.stored_size += len(data)
        if self._inflater is None:
            self._adler = zlib.adler32(data, self._adler)
            self._emit(data)
            return
        self._tail = data[-4:] if len(data) >= 4 else (self._tail + data)[-4:]
        if self._inflater.eof:
            raise CorruptObject(self.source, "data after the end of the zlib stream")
        try:
            out = self._inflater.decompress(data, _MAX_INFLATE_PIECE)
            self._emit(out)
            while self._inflater.unconsumed_tail and not self._inflater.eof:
                out = self._inflater.decompress(self._inflater.unconsumed_tail, _MAX_INFLATE_PIECE)
                self._emit(out)
        except zlib.error as exc:
            self._check_hash()  # a hash mismatch is the more useful diagnosis
            raise CorruptObject(self.source, f"zlib: {exc}") from None
        if self._inflater.eof and self._inflater.unused_data:
            self._check_hash()
            raise CorruptObject(self.source, "data after the end of the zlib stream")

    def _emit(self, out: bytes) -> None:
        if out:
            self.size += len(out)
            if self.expected_size is not None and self.size > self.expected_size:
                raise CorruptObject(
                    self.source, f"decodes to more than the expected {self.expected_size} bytes"
                )
            self._sink(out)

    def _check_hash(self) -> None:
        actual = ContentHash(self.expected.algorithm, self._hasher.digest())
        if actual != self.expected:
            raise HashMismatch(self.source, self.expected.hex, actual.hex)

    def finish(self) -> int:
        """Verify everything; return the decoded size."""
        self._check_hash()
        if self._inflater is not None:
            if not self._inflater.eof:
                raise CorruptObject(self.source, "truncated zlib stream")
            rest = self._inflater.flush()
            self._emit(rest)
            self.adler32 = int.from_bytes(self._tail, "big")  # RFC 1950: ADLER32, MSB first
        else:
            self.adler32 = self._adler
        if self.expected_size is not None and self.size != self.expected_size:
            raise CorruptObject(
                self.source, f"decodes to {self.size} bytes, catalog says {self.expected_size}"
            )
        return self.size


def decode_to_file(
    pieces: Iterable[bytes],
    out: BinaryIO,
    expected: ContentHash,
    compression: Compression,
    source: str,
    expected_size: int | None = None,
) -> int:
    """Stream ``pieces`` (stored bytes) through verification into ``out``; return decoded size."""
    dec = ObjectDecoder(expected, compression, out.write, source, expected_size)
    for piece in pieces:
        dec.feed(piece)
    return dec.finish()


def decode_bytes(
    stored: bytes,
    expected: ContentHash,
    compression: Compression,
    source: str,
    expected_size: int | None = None,
) -> bytes:
    """Verify and decode a small object held in memory (manifest-sized things, catalogs in tests)."""
    parts: list[bytes] = []
    dec = ObjectDecoder(expected, compression, parts.append, source, expected_size)
    dec.feed(stored)
    dec.finish()
    return b"".join(parts)


def encode(data: bytes, compression: Compression) -> bytes:
    """Stored form of ``data``: zlib at the default level (6), as the real publisher writes."""
    if compression is Compression.NONE:
        return data
    return zlib.compress(data, zlib.Z_DEFAULT_COMPRESSION)


def read_pieces(f: BinaryIO, size: int = 1 << 16) -> Iterable[bytes]:
    while piece := f.read(size):
        yield piece
