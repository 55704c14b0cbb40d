"""Content hashes: spec 4.1 test vectors, spec 1.3 object paths, hex parsing rules."""

from __future__ import annotations

import hashlib

import pytest

from cvmfs_client import hashing
from cvmfs_client.errors import FormatError, UnknownHashAlgorithm
from cvmfs_client.hashing import ContentHash, HashAlgorithm, ObjectType, hash_hex

# b"hello\n" compressed with zlib level 6 (spec 1.3)
HELLO_ZLIB = bytes.fromhex("789ccb48cdc9c9e70200084b021f")


@pytest.mark.parametrize(
    ("data", "algorithm", "expected"),
    [
        (b"", HashAlgorithm.SHA1, "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        (b"", HashAlgorithm.RMD160, "9c1185a5c5e9fc54612808977ee8f548b2258d31-rmd160"),
        (b"", HashAlgorithm.SHAKE128, "7f9c2ba4e88f827d616045507605853ed73b8093-shake128"),
        (b"abc", HashAlgorithm.RMD160, "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc-rmd160"),
        (b"abc", HashAlgorithm.SHAKE128, "5881092dd818bf5cf8a3ddb793fbcba74097d5c5-shake128"),
    ],
)
def test_spec_vectors(data: bytes, algorithm: HashAlgorithm, expected: str) -> None:
    assert hash_hex(algorithm, data) == expected


def test_incremental_hashing_equals_one_shot() -> None:
    for algorithm in HashAlgorithm:
        h = algorithm.new()
        h.update(b"ab")
        h.update(memoryview(b"c"))
        assert h.content_hash() == ContentHash.of(algorithm, b"abc")
        assert len(h.digest()) == 20


def test_rmd160_falls_back_to_pure_python_without_openssl_support(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ripemd(name: str, *args: object) -> object:
        raise ValueError(f"unsupported hash type {name}")

    monkeypatch.setattr(hashing.hashlib, "new", no_ripemd)
    assert hash_hex(HashAlgorithm.RMD160, b"abc") == "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc-rmd160"


def test_object_paths_of_spec_examples() -> None:
    assert hashlib.sha1(HELLO_ZLIB).hexdigest() == "5798f7f4ca7585d850eea64610a1f73d8f8de7a3"
    sha1 = ContentHash.of(HashAlgorithm.SHA1, HELLO_ZLIB)
    assert sha1.object_path() == "data/57/98f7f4ca7585d850eea64610a1f73d8f8de7a3"
    rmd = ContentHash.of(HashAlgorithm.RMD160, HELLO_ZLIB)
    assert rmd.object_path() == "data/92/e6eb3559a98184aefdab5f76286027aa83bfb0-rmd160"
    catalog = ContentHash.from_hex("0123456789abcdef0123456789abcdef01234567")
    assert catalog.object_path(ObjectType.CATALOG) == "data/01/23456789abcdef0123456789abcdef01234567C"


def test_algorithm_id_comes_before_the_type_char() -> None:
    chunk = ContentHash.from_hex("ab" + "0" * 38 + "-rmd160")
    assert chunk.object_path(ObjectType.PARTIAL) == "data/ab/" + "0" * 38 + "-rmd160P"
    cert = ContentHash.from_hex("df48e91cae6a4f9a4c346da948ee28e2ca42422c-shake128")
    assert cert.object_path("X") == "data/df/48e91cae6a4f9a4c346da948ee28e2ca42422c-shake128X"
    assert cert.cache_name() == "df/48e91cae6a4f9a4c346da948ee28e2ca42422c-shake128"


@pytest.mark.parametrize("text", ["ab" * 20, "ab" * 20 + "-rmd160", "ab" * 20 + "-shake128"])
def test_from_hex_round_trips(text: str) -> None:
    assert ContentHash.from_hex(text).hex == text


@pytest.mark.parametrize(
    "text",
    [
        "AB" * 20,  # uppercase is refused (the C++ decoder only maps 0-9a-f)
        "ab" * 19,  # too short
        "ab" * 21,  # too long
        "ab" * 20 + "-RMD160",
        "ab" * 20 + "-sha1",
        "ab" * 19 + "zz",
        "d41d8cd98f00b204e9800998ecf8427e",  # MD5 is never a content hash
        "",
    ],
)
def test_from_hex_refuses_bad_strings(text: str) -> None:
    with pytest.raises(UnknownHashAlgorithm) as info:
        ContentHash.from_hex(text, "somewhere")
    assert isinstance(info.value, FormatError)
    assert info.value.source == "somewhere"


def test_flag_bits_and_option_names() -> None:
    assert [a.flag_bits for a in HashAlgorithm] == [0, 0x100, 0x200]
    assert HashAlgorithm.from_flags(0x200) is HashAlgorithm.SHAKE128
    assert HashAlgorithm.from_option("RMD160") is HashAlgorithm.RMD160
    with pytest.raises(UnknownHashAlgorithm):
        HashAlgorithm.from_flags(0x500)
    with pytest.raises(UnknownHashAlgorithm):
        HashAlgorithm.from_option("md5")
