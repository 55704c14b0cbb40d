"""ObjectDecoder: verify the stored bytes' hash, inflate, and refuse anything not published."""

from __future__ import annotations

import zlib

import pytest

from cvmfs_client.errors import CorruptObject, HashMismatch, IntegrityError
from cvmfs_client.hashing import ContentHash, HashAlgorithm
from cvmfs_client.objects import Compression, ObjectDecoder, decode_bytes, encode

DATA = b"CernVM-FS object payload\n" * 500


def _stored(data: bytes = DATA, compression: Compression = Compression.ZLIB) -> tuple[bytes, ContentHash]:
    stored = encode(data, compression)
    return stored, ContentHash.of(HashAlgorithm.SHA1, stored)


def test_zlib_object_decodes_when_hash_of_stored_bytes_matches() -> None:
    stored, h = _stored()
    assert stored[:2] == b"\x78\x9c"  # zlib header at the default level
    assert decode_bytes(stored, h, Compression.ZLIB, "obj", expected_size=len(DATA)) == DATA


def test_empty_file_object_matches_spec_hash() -> None:
    stored = encode(b"", Compression.ZLIB)
    assert stored == bytes.fromhex("789c030000000001")
    h = ContentHash.from_hex("e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78")
    assert decode_bytes(stored, h, Compression.ZLIB, "empty") == b""


def test_raw_object_is_passed_through() -> None:
    stored, h = _stored(compression=Compression.NONE)
    assert stored == DATA
    assert decode_bytes(stored, h, Compression.NONE, "obj", expected_size=len(DATA)) == DATA


def test_streaming_in_small_pieces_gives_same_result() -> None:
    stored, h = _stored()
    out: list[bytes] = []
    dec = ObjectDecoder(h, Compression.ZLIB, out.append, "obj")
    for i in range(0, len(stored), 7):
        dec.feed(stored[i : i + 7])
    assert dec.finish() == len(DATA)
    assert b"".join(out) == DATA
    assert dec.stored_size == len(stored)


@pytest.mark.parametrize("compression", list(Compression))
@pytest.mark.parametrize("piece", [1, 3, 4, 5, 1 << 20])
@pytest.mark.parametrize("data", [DATA, b"", b"x"])
def test_finish_gives_the_adler32_of_the_decoded_content(
    compression: Compression, piece: int, data: bytes
) -> None:
    stored, h = _stored(data, compression)
    dec = ObjectDecoder(h, compression, lambda _: None, "obj")
    assert dec.adler32 is None  # nothing verified yet
    for i in range(0, len(stored), piece):
        dec.feed(stored[i : i + piece])
    dec.finish()
    assert dec.adler32 == zlib.adler32(data)


@pytest.mark.parametrize("compression", list(Compression))
def test_flipped_byte_is_a_hash_mismatch(compression: Compression) -> None:
    stored, h = _stored(compression=compression)
    bad = bytearray(stored)
    bad[len(bad) // 2] ^= 0x01
    with pytest.raises(HashMismatch) as info:
        decode_bytes(bytes(bad), h, compression, "data/xx/obj")
    assert info.value.source == "data/xx/obj"
    assert info.value.expected == h.hex


def test_truncated_zlib_stream_is_refused() -> None:
    stored, _ = _stored()
    cut = stored[:-10]
    # Even with a hash that matches the truncated bytes, the stream must be complete.
    with pytest.raises(CorruptObject, match="truncated"):
        decode_bytes(cut, ContentHash.of(HashAlgorithm.SHA1, cut), Compression.ZLIB, "obj")
    with pytest.raises(IntegrityError):
        decode_bytes(cut, _stored()[1], Compression.ZLIB, "obj")


def test_trailing_garbage_after_zlib_stream_is_refused() -> None:
    stored = encode(DATA, Compression.ZLIB) + b"garbage"
    h = ContentHash.of(HashAlgorithm.SHA1, stored)
    with pytest.raises(CorruptObject, match="after the end"):
        decode_bytes(stored, h, Compression.ZLIB, "obj")


def test_not_a_zlib_stream_is_corrupt() -> None:
    stored = zlib.compress(DATA)[2:]  # raw deflate without the zlib header
    h = ContentHash.of(HashAlgorithm.SHA1, stored)
    with pytest.raises(CorruptObject):
        decode_bytes(stored, h, Compression.ZLIB, "obj")


def test_size_differing_from_catalog_is_refused() -> None:
    stored, h = _stored()
    with pytest.raises(CorruptObject, match="catalog says"):
        decode_bytes(stored, h, Compression.ZLIB, "obj", expected_size=len(DATA) + 1)
    with pytest.raises(CorruptObject, match="more than"):
        decode_bytes(stored, h, Compression.ZLIB, "obj", expected_size=len(DATA) - 1)


@pytest.mark.parametrize("algorithm", list(HashAlgorithm))
def test_every_hash_algorithm_verifies(algorithm: HashAlgorithm) -> None:
    stored = encode(DATA, Compression.ZLIB)
    h = ContentHash.of(algorithm, stored)
    assert decode_bytes(stored, h, Compression.ZLIB, "obj") == DATA
    wrong = ContentHash.of(algorithm, stored + b"x")
    with pytest.raises(HashMismatch):
        decode_bytes(stored, wrong, Compression.ZLIB, "obj")


def test_compression_flags() -> None:
    assert Compression.from_flags(Compression.NONE.flag_bits | 0x200) is Compression.NONE
    assert Compression.from_flags(0) is Compression.ZLIB
