"""Content-defined chunking exactly as the real publisher cuts files (spec 6.3).

Identical cut points mean identical ``P`` objects, so a file published by this package and by
``cvmfs_server`` shares its chunks, and a changed file only re-uploads the chunks it touched.

The detector is the xor32 rolling checksum of ``cvmfs/ingestion/chunk_detector.cc``:

- ``x = ((x << 1) ^ byte) mod 2**32``: after 32 bytes a byte has shifted out, so ``x`` at position
  ``i`` depends only on bytes ``i-31 .. i``.
- For a chunk starting at ``last``, bytes ``[last+min-32, last+min)`` are fed without testing;
  from ``last+min`` on, every byte is fed and then tested; the first byte ``i`` that passes
  starts the next chunk (chunk = ``[last, i)``). If none passes before ``last+max``, the cut is
  at ``last+max``. ``x`` restarts at 0 for every chunk.
- The test is ``abs(int32(x) - MAGIC) < THRESH`` in C ``int`` arithmetic, which wraps on the
  platforms the publisher runs on; this module emulates that wrap (see :func:`_passes`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from .errors import ConfigError

# Window of the rolling checksum: a byte influences ``x`` for 32 steps (uint32 shift).
XOR32_WINDOW = 32
# Centre of the accepted interval: UINT32_MAX / 2 (chunk_detector.cc, kMagicNumber).
MAGIC = 0xFFFFFFFF // 2
_MASK32 = 0xFFFFFFFF
# Bytes read from the file per step: bounded memory whatever the file size.
READ_BLOCK = 1 << 20

# The real publisher's defaults (cvmfs_server_coda.sh): 4 / 8 / 16 MiB.
DEFAULT_CHUNK_SIZES = (4 * 1024 * 1024, 8 * 1024 * 1024, 16 * 1024 * 1024)


def validate_chunk_sizes(min_size: int, avg_size: int, max_size: int) -> None:
    """Refuse sizes the real detector asserts against (min >= 32, min < avg < max)."""
    for name, value in (("minimum", min_size), ("average", avg_size), ("maximum", max_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"chunk sizes: {name} chunk size must be a positive integer, got {value!r}")
    if min_size < XOR32_WINDOW:
        raise ConfigError(f"chunk sizes: minimum {min_size} is below the {XOR32_WINDOW}-byte checksum window")
    if not min_size < avg_size < max_size:
        raise ConfigError(f"chunk sizes: need min < avg < max, got {min_size}/{avg_size}/{max_size}")


def threshold(avg_size: int) -> int:
    """``UINT32_MAX // avg`` as the C++ computes it (511 for 8 MiB, 32767 for 128 KiB)."""
    return _MASK32 // avg_size


def _passes(x: int, thresh: int) -> bool:
    """The C test ``abs((int32)x - MAGIC) < thresh`` with two's-complement wrap.

    The subtraction is done modulo 2**32 and read back as signed, so values just above 2**31
    also pass (the window straddles 0x80000000). ``abs(INT32_MIN)`` stays negative in C, so
    the single value giving that difference (``x == 0xFFFFFFFF``) passes as well.
    """
    d = (x - MAGIC) & _MASK32
    if d >= 0x80000000:
        d -= 0x100000000
    return d == -0x80000000 or abs(d) < thresh


def _accept_window(thresh: int) -> tuple[int, int]:
    """``(start, width)``: ``_passes(x)`` iff ``(x - start) mod 2**32 < width``, or x == 0xFFFFFFFF.

    Precomputed so the per-byte loop is one subtraction, one mask and one comparison.
    """
    return (MAGIC - thresh + 1) & _MASK32, 2 * thresh - 1


def cut_points(f: BinaryIO, min_size: int, avg_size: int, max_size: int) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, size)`` of every chunk of the file read from ``f`` (from its position).

    Reads ``f`` sequentially in :data:`READ_BLOCK` pieces and never holds more than one piece.
    A file of at most ``min_size`` bytes is one piece (the publisher does not chunk it); an empty
    file gives ``(0, 0)``. A caller that gets a single piece stores the file unchunked, as the
    real publisher does (``IsSolePiece``). A file ending exactly at a maximum-size cut gets no
    empty trailing piece.
    """
    validate_chunk_sizes(min_size, avg_size, max_size)
    start_w, width = _accept_window(threshold(avg_size))

    last = 0  # start of the current chunk
    pos = 0  # file offset of block[0]
    x = 0
    # Below ``feed_from`` bytes are skipped; from there x is fed; from ``last + min`` tested.
    feed_from = min_size - XOR32_WINDOW
    block = f.read(READ_BLOCK)
    while block:
        end = pos + len(block)
        i = max(feed_from, pos)
        warm_end = min(last + min_size, end)
        if i < warm_end:
            for b in block[i - pos : warm_end - pos]:
                x = ((x << 1) ^ b) & _MASK32
            i = warm_end
        stop = last + max_size
        scan_end = min(stop, end)
        cut = -1
        if i < scan_end:
            for j, b in enumerate(block[i - pos : scan_end - pos], i):
                x = ((x << 1) ^ b) & _MASK32
                if ((x - start_w) & _MASK32) < width or x == _MASK32:
                    cut = j
                    break
            else:
                i = scan_end
        if cut < 0 and i == stop:
            cut = stop  # no content-defined cut before the maximum size
        if cut >= 0:
            yield last, cut - last
            last, x = cut, 0
            feed_from = last + min_size - XOR32_WINDOW
            if cut < end:
                continue  # the next cut may lie in the same block
        else:
            feed_from = max(i, feed_from)
        pos = end
        block = f.read(READ_BLOCK)
    if pos > last or pos == 0:
        yield last, pos - last
