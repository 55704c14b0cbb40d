"""Pure-Python RIPEMD-160 (Dobbertin, Bosselaers, Preneel 1996), written from the definition.

Why: ``-rmd160`` repositories need RIPEMD-160, and ``hashlib.new("ripemd160")`` is missing on
OpenSSL 3 builds without the legacy provider. Slow (pure Python), but only used as a fallback.

The interface mirrors a hashlib object: ``update``, ``digest``, ``hexdigest``, ``copy``.
"""

from __future__ import annotations

import struct

_MASK = 0xFFFFFFFF
_BLOCK = 64

# Message word selection for the left (r) and right (r') lines, 5 rounds of 16 steps.
_R_LEFT = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    7, 4, 13, 1, 10, 6, 15, 3, 12, 0, 9, 5, 2, 14, 11, 8,
    3, 10, 14, 4, 9, 15, 8, 1, 2, 7, 0, 6, 13, 11, 5, 12,
    1, 9, 11, 10, 0, 8, 12, 4, 13, 3, 7, 15, 14, 5, 6, 2,
    4, 0, 5, 9, 7, 12, 2, 10, 14, 1, 3, 8, 11, 6, 15, 13,
)  # fmt: skip
_R_RIGHT = (
    5, 14, 7, 0, 9, 2, 11, 4, 13, 6, 15, 8, 1, 10, 3, 12,
    6, 11, 3, 7, 0, 13, 5, 10, 14, 15, 8, 12, 4, 9, 1, 2,
    15, 5, 1, 3, 7, 14, 6, 9, 11, 8, 12, 2, 10, 0, 4, 13,
    8, 6, 4, 1, 3, 11, 15, 0, 5, 12, 2, 13, 9, 7, 10, 14,
    12, 15, 10, 4, 1, 5, 8, 7, 6, 2, 13, 14, 0, 3, 9, 11,
)  # fmt: skip
# Left-rotation amounts (s and s').
_S_LEFT = (
    11, 14, 15, 12, 5, 8, 7, 9, 11, 13, 14, 15, 6, 7, 9, 8,
    7, 6, 8, 13, 11, 9, 7, 15, 7, 12, 15, 9, 11, 7, 13, 12,
    11, 13, 6, 7, 14, 9, 13, 15, 14, 8, 13, 6, 5, 12, 7, 5,
    11, 12, 14, 15, 14, 15, 9, 8, 9, 14, 5, 6, 8, 6, 5, 12,
    9, 15, 5, 11, 6, 8, 13, 12, 5, 12, 13, 14, 11, 8, 5, 6,
)  # fmt: skip
_S_RIGHT = (
    8, 9, 9, 11, 13, 15, 15, 5, 7, 7, 8, 11, 14, 14, 12, 6,
    9, 13, 15, 7, 12, 8, 9, 11, 7, 7, 12, 7, 6, 15, 13, 11,
    9, 7, 15, 11, 8, 6, 6, 14, 12, 13, 5, 14, 13, 13, 7, 5,
    15, 5, 8, 11, 14, 14, 6, 14, 6, 9, 12, 9, 12, 5, 15, 8,
    8, 5, 12, 9, 12, 5, 14, 6, 8, 13, 6, 5, 15, 13, 11, 11,
)  # fmt: skip
# Round constants: left uses K[0..4], right uses K'[0..4].
_K_LEFT = (0x00000000, 0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xA953FD4E)
_K_RIGHT = (0x50A28BE6, 0x5C4DD124, 0x6D703EF3, 0x7A6D76E9, 0x00000000)
_INITIAL = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0)


def _f(round_: int, x: int, y: int, z: int) -> int:
    """The five bitwise functions f1..f5; the right line uses them in reverse order."""
    if round_ == 0:
        return x ^ y ^ z
    if round_ == 1:
        return (x & y) | (~x & z)
    if round_ == 2:
        return (x | (~y & _MASK)) ^ z
    if round_ == 3:
        return (x & z) | (y & ~z)
    return x ^ (y | (~z & _MASK))


def _rol(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & _MASK


def _compress(state: tuple[int, int, int, int, int], block: bytes) -> tuple[int, int, int, int, int]:
    """One 512-bit block: two parallel lines of 80 steps, then the cross-wise combination."""
    x = struct.unpack("<16I", block)
    al, bl, cl, dl, el = state
    ar, br, cr, dr, er = state
    for j in range(80):
        rnd = j >> 4
        t = _rol((al + _f(rnd, bl, cl, dl) + x[_R_LEFT[j]] + _K_LEFT[rnd]) & _MASK, _S_LEFT[j])
        t = (t + el) & _MASK
        al, el, dl, cl, bl = el, dl, _rol(cl, 10), bl, t
        t = _rol((ar + _f(4 - rnd, br, cr, dr) + x[_R_RIGHT[j]] + _K_RIGHT[rnd]) & _MASK, _S_RIGHT[j])
        t = (t + er) & _MASK
        ar, er, dr, cr, br = er, dr, _rol(cr, 10), br, t
    h0, h1, h2, h3, h4 = state
    return (
        (h1 + cl + dr) & _MASK,
        (h2 + dl + er) & _MASK,
        (h3 + el + ar) & _MASK,
        (h4 + al + br) & _MASK,
        (h0 + bl + cr) & _MASK,
    )


class RIPEMD160:
    """Incremental RIPEMD-160 with the hashlib object interface (20-byte digest)."""

    name = "ripemd160"
    digest_size = 20
    block_size = _BLOCK

    __slots__ = ("_state", "_buffer", "_length")

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._state = _INITIAL
        self._buffer = b""
        self._length = 0  # total bytes fed, for the length field of the padding
        if data:
            self.update(data)

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        data = bytes(data)
        self._length += len(data)
        buf = self._buffer + data
        full = len(buf) - len(buf) % _BLOCK
        state = self._state
        for off in range(0, full, _BLOCK):
            state = _compress(state, buf[off : off + _BLOCK])
        self._state = state
        self._buffer = buf[full:]

    def digest(self) -> bytes:
        """Digest of everything fed so far; the object stays usable (padding is done on a copy)."""
        # MD-style padding: 0x80, zeros to 56 mod 64, then the bit length as little-endian u64.
        pad_len = (55 - self._length) % _BLOCK
        tail = (
            self._buffer + b"\x80" + b"\x00" * pad_len + struct.pack("<Q", (self._length * 8) & (2**64 - 1))
        )
        state = self._state
        for off in range(0, len(tail), _BLOCK):
            state = _compress(state, tail[off : off + _BLOCK])
        return struct.pack("<5I", *state)

    def hexdigest(self) -> str:
        return self.digest().hex()

    def copy(self) -> RIPEMD160:
        other = RIPEMD160()
        other._state = self._state
        other._buffer = self._buffer
        other._length = self._length
        return other
