"""The pure-Python RIPEMD-160 fallback against published vectors and OpenSSL's implementation."""

from __future__ import annotations

import hashlib
import random

import pytest

from cvmfs_client._ripemd160 import RIPEMD160


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "9c1185a5c5e9fc54612808977ee8f548b2258d31"),
        (b"abc", "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"),
        (b"a", "0bdc9d2d256b3ee9daae347be6f4dc835a467ffe"),
        (b"message digest", "5d0689ef49d2fae572b881b123a85ffa21595f36"),
        (b"1234567890" * 8, "9b752e45573d4b39f4dbd3323cab82bf63326bfb"),
    ],
)
def test_known_vectors(data: bytes, expected: str) -> None:
    assert RIPEMD160(data).hexdigest() == expected


def _openssl(data: bytes) -> str:
    return hashlib.new("ripemd160", data).hexdigest()


@pytest.mark.parametrize("size", [1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000])
def test_padding_boundaries_match_openssl(size: int) -> None:
    data = random.Random(size).randbytes(size)
    assert RIPEMD160(data).hexdigest() == _openssl(data)


def test_long_message_fed_in_odd_pieces_matches_openssl() -> None:
    data = random.Random(7).randbytes(300_001)
    h = RIPEMD160()
    for start in range(0, len(data), 997):
        h.update(memoryview(data)[start : start + 997])
    assert h.hexdigest() == _openssl(data)
    assert h.digest() == bytes.fromhex(_openssl(data))


def test_copy_is_independent_and_digest_does_not_finalize() -> None:
    h = RIPEMD160(b"ab")
    c = h.copy()
    c.update(b"c")
    assert h.hexdigest() == _openssl(b"ab")
    assert h.hexdigest() == _openssl(b"ab")  # digest() twice gives the same answer
    assert c.hexdigest() == _openssl(b"abc")
    h.update(b"cd")
    assert h.hexdigest() == _openssl(b"abcd")
