"""The signed-letter format: cut at the first separator, hash line by length, typed failures."""

from __future__ import annotations

import pytest

from cvmfs_client.errors import HashMismatch, SignatureError
from cvmfs_client.hashing import ContentHash, HashAlgorithm
from cvmfs_client.signing import SignedLetter, check_letter_hash, make_letter, split_signed

SPEC_BODY = (
    b"C0123456789abcdef0123456789abcdef01234567\n"
    b"B1048576\n"
    b"Rd41d8cd98f00b204e9800998ecf8427e\n"
    b"D240\n"
    b"S42\n"
    b"Gno\n"
    b"Ano\n"
    b"Nexample.cern.ch\n"
    b"X89abcdef0123456789abcdef0123456789abcdef\n"
    b"H00112233445566778899aabbccddeeff00112233\n"
    b"T1700000000\n"
)


def test_spec_example_letter_has_known_sha1() -> None:
    assert len(SPEC_BODY) == 215
    letter = make_letter(SPEC_BODY, HashAlgorithm.SHA1)
    assert letter == SPEC_BODY + b"--\n68248b9603a056d35fa9f84ba245312e8be81cd9\n"


def test_split_keeps_the_newline_and_a_binary_signature_with_separators() -> None:
    signature = b"\x00\n--\nab\n--\n\xff"  # a signature may contain anything, even the separator
    raw = make_letter(SPEC_BODY, HashAlgorithm.SHA1) + signature
    signed = split_signed(raw, "f")
    assert signed == SignedLetter(SPEC_BODY, b"68248b9603a056d35fa9f84ba245312e8be81cd9", signature)
    assert check_letter_hash(signed, "f") == ContentHash.from_hex("68248b9603a056d35fa9f84ba245312e8be81cd9")


@pytest.mark.parametrize("algorithm", list(HashAlgorithm))
def test_hash_line_length_selects_the_algorithm(algorithm: HashAlgorithm) -> None:
    signed = split_signed(make_letter(b"a\nb\n", algorithm) + b"sig", "f")
    assert check_letter_hash(signed, "f").algorithm is algorithm
    assert signed.hash_line.endswith(algorithm.suffix.encode())


def test_missing_separator_is_a_signature_error() -> None:
    with pytest.raises(SignatureError, match="not signed"):
        split_signed(SPEC_BODY, "f.txt")


def test_unterminated_hash_line_is_a_signature_error() -> None:
    with pytest.raises(SignatureError, match="not terminated"):
        split_signed(SPEC_BODY + b"--\n68248b9603a056d35fa9f84ba245312e8be81cd9", "f")


def test_changed_letter_is_a_hash_mismatch() -> None:
    raw = make_letter(SPEC_BODY, HashAlgorithm.SHA1)
    with pytest.raises(HashMismatch) as info:
        check_letter_hash(split_signed(raw.replace(b"S42", b"S43"), "f"), "f")
    assert info.value.expected == "68248b9603a056d35fa9f84ba245312e8be81cd9"


@pytest.mark.parametrize(
    "hash_line",
    [b"68248B9603A056D35FA9F84BA245312E8BE81CD9", b"68248b96", b"\xff" * 40, b""],
)
def test_hash_line_that_is_not_a_hash_is_a_signature_error(hash_line: bytes) -> None:
    with pytest.raises(SignatureError, match="not a content hash"):
        check_letter_hash(SignedLetter(SPEC_BODY, hash_line, b"sig"), "f")


def test_make_letter_refuses_bodies_readers_would_cut_differently() -> None:
    with pytest.raises(ValueError):
        make_letter(b"Cabc", HashAlgorithm.SHA1)
    with pytest.raises(ValueError):
        make_letter(b"", HashAlgorithm.SHA1)
    with pytest.raises(ValueError):
        make_letter(b"a\n--\nb\n", HashAlgorithm.SHA1)
