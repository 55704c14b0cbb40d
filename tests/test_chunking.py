"""Chunking must cut exactly where the real publisher cut the fixture files (spec 6.3)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import sqlite3
import struct
import zlib
from pathlib import Path

import pytest

from cvmfs_client import chunking
from cvmfs_client.chunking import MAGIC, _passes, cut_points, threshold, validate_chunk_sizes
from cvmfs_client.errors import ConfigError

KiB = 1024
TOOLS_ROOT_CATALOG = "f916797dd4979fc3eb28e82e93f26aa3995edb2b"
SHAKE_ROOT_CATALOGS = ("5c55e8e3cd8edd0297206ebcfbbacf1d7a846341", "43f9ccccc3b29845f1b1cea114c7bb21c358085b")


def _object(repo: Path, hexid: str, kind: str) -> bytes:
    return (repo / "data" / hexid[:2] / f"{hexid[2:]}{kind}").read_bytes()


def _real_chunks(
    repo: Path, catalog_hex: str, path: str, suffix: str, tmp_path: Path
) -> tuple[bytes, list[tuple[int, int]]]:
    """Rebuild a chunked file from the fixture's catalog rows and ``P`` objects."""
    db = tmp_path / "catalog.db"
    db.write_bytes(zlib.decompress(_object(repo, catalog_hex + suffix, "C")))
    md5 = struct.unpack("<qq", hashlib.md5(path.encode()).digest())
    with sqlite3.connect(db) as conn:
        (flags,) = conn.execute("SELECT flags FROM catalog WHERE md5path_1=? AND md5path_2=?", md5).fetchone()
        rows = conn.execute(
            "SELECT offset, size, hash FROM chunks WHERE md5path_1=? AND md5path_2=? ORDER BY offset", md5
        ).fetchall()
    assert flags & 64, "fixture file is not chunked"
    compressed = ((flags >> 11) & 7) == 0
    data = bytearray()
    for offset, size, digest in rows:
        stored = _object(repo, digest.hex() + suffix, "P")
        piece = zlib.decompress(stored) if compressed else stored
        assert offset == len(data) and len(piece) == size
        data += piece
    return bytes(data), [(o, s) for o, s, _ in rows]


@pytest.mark.parametrize(
    ("path", "count"),
    [("/share/data/noise-1.5MiB.bin", 12), ("/share/data/events-600KiB.log", 7), ("/lib/libtinfo.so.6.4", 3)],
)
def test_cut_points_equal_real_publisher_tools(
    real_fixtures: Path, tmp_path: Path, path: str, count: int
) -> None:
    data, real = _real_chunks(real_fixtures / "tools.example.org", TOOLS_ROOT_CATALOG, path, "", tmp_path)
    assert len(real) == count
    assert list(cut_points(io.BytesIO(data), 64 * KiB, 128 * KiB, 256 * KiB)) == real


@pytest.mark.parametrize("catalog", SHAKE_ROOT_CATALOGS)
def test_cut_points_equal_real_publisher_shake(real_fixtures: Path, tmp_path: Path, catalog: str) -> None:
    repo = real_fixtures / "tiny-shake.example.org"
    data, real = _real_chunks(repo, catalog, "/blob/chunked.bin", "-shake128", tmp_path)
    assert len(real) == 7
    assert list(cut_points(io.BytesIO(data), 32 * KiB, 64 * KiB, 128 * KiB)) == real


@pytest.mark.parametrize("block", [77, 4096, 65536 + 5])
def test_cut_points_do_not_depend_on_read_size(
    real_fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    data, real = _real_chunks(
        real_fixtures / "tools.example.org", TOOLS_ROOT_CATALOG, "/share/data/events-600KiB.log", "", tmp_path
    )
    monkeypatch.setattr(chunking, "READ_BLOCK", block)
    assert list(cut_points(io.BytesIO(data), 64 * KiB, 128 * KiB, 256 * KiB)) == real


def test_small_file_is_one_piece() -> None:
    data = os.urandom(1000)
    assert list(cut_points(io.BytesIO(data), 1000, 2000, 4000)) == [(0, 1000)]
    assert list(cut_points(io.BytesIO(b""), 64, 128, 256)) == [(0, 0)]


def test_pieces_cover_file_and_respect_bounds() -> None:
    rng = random.Random(7)
    data = rng.randbytes(300_000)
    pieces = list(cut_points(io.BytesIO(data), 1024, 4096, 8192))
    assert pieces[0][0] == 0
    assert sum(size for _, size in pieces) == len(data)
    for (off, size), (next_off, _) in zip(pieces, pieces[1:], strict=False):
        assert off + size == next_off
        assert 1024 <= size <= 8192
    assert len(pieces) > 10


def test_incompressible_runs_are_cut_at_maximum() -> None:
    # A constant byte stream gives a constant checksum that never passes: hard cuts at max.
    data = b"\x00" * 10_000
    assert list(cut_points(io.BytesIO(data), 64, 128, 256))[:3] == [(0, 256), (256, 256), (512, 256)]
    exact = list(cut_points(io.BytesIO(b"\x00" * 512), 64, 128, 256))
    assert exact == [(0, 256), (256, 256)]  # no empty trailing piece


def test_threshold_matches_cpp_integer_division() -> None:
    assert threshold(8 * 1024 * 1024) == 511
    assert threshold(128 * KiB) == 32767


def test_threshold_test_wraps_like_32_bit_c() -> None:
    t = threshold(128 * KiB)
    assert _passes(MAGIC, t)
    assert _passes(MAGIC + t - 1, t)  # above 2**31: int32 is negative, the C subtraction wraps
    assert not _passes(MAGIC + t, t)
    assert not _passes(MAGIC - t, t)
    assert _passes(0xFFFFFFFF, t)  # abs(INT32_MIN) stays negative in C
    start, width = chunking._accept_window(t)
    rng = random.Random(1)
    for x in [rng.getrandbits(32) for _ in range(2000)] + [MAGIC + d for d in range(-t - 2, t + 3)]:
        x &= 0xFFFFFFFF
        assert _passes(x, t) == (((x - start) & 0xFFFFFFFF) < width or x == 0xFFFFFFFF)


@pytest.mark.parametrize(
    "sizes", [(0, 128, 256), (128, 128, 256), (64, 256, 128), (16, 32, 64), (64, -1, 256)]
)
def test_bad_chunk_sizes_are_refused(sizes: tuple[int, int, int]) -> None:
    with pytest.raises(ConfigError, match="chunk sizes"):
        validate_chunk_sizes(*sizes)
    with pytest.raises(ConfigError):
        list(cut_points(io.BytesIO(b"x" * 1000), *sizes))
