"""Fuzz the signed manifest: ``parse_manifest``, ``split_signed`` + letter hash + signature."""

from __future__ import annotations

import contextlib
from functools import lru_cache

from cryptography import x509
from hypothesis import example, given
from hypothesis import strategies as st

from cvmfs_client.errors import CvmfsError
from cvmfs_client.hashing import ContentHash, HashAlgorithm
from cvmfs_client.manifest import parse_manifest, verify_manifest_signature
from cvmfs_client.signing import check_letter_hash, make_letter, split_signed

from .common import FUZZ, Property, hostile_number_text, mutated

_HASHES = [ContentHash.of(a, b"x").hex for a in HashAlgorithm]

value = st.one_of(
    st.sampled_from(_HASHES + ["d41d8cd98f00b204e9800998ecf8427e", "yes", "no", "-", ""]),
    hostile_number_text,
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
    st.text(max_size=40),
)
line = st.tuples(st.sampled_from(list("CBRDSGALNXHTMYZ") + ["\x00", "\xff", "-"]), value).map(
    lambda kv: (kv[0] + kv[1]).encode("utf-8", "surrogateescape")
)


@st.composite
def manifest_text(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(line, max_size=20))
    required = [f"C{_HASHES[0]}", "Rd41d8cd98f00b204e9800998ecf8427e", "D240", "S1"]
    if draw(st.booleans()):
        lines = [r.encode() for r in required] + lines
    body = b"\n".join(lines) + draw(st.sampled_from([b"\n", b"", b"\n\n"]))
    tail = draw(st.sampled_from(["none", "signed", "garbage"]))
    if tail == "signed" and body.endswith(b"\n") and b"\n--\n" not in body and not body.startswith(b"--\n"):
        algo = draw(st.sampled_from(list(HashAlgorithm)))
        return make_letter(body, algo) + draw(st.binary(max_size=300))
    if tail == "garbage":
        return body + b"--\n" + draw(st.binary(max_size=80)) + draw(st.sampled_from([b"\n", b""]))
    return body


manifests = st.one_of(st.binary(max_size=500), manifest_text(), manifest_text().flatmap(mutated))


@lru_cache(maxsize=1)
def _certificate() -> x509.Certificate:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from cvmfs_client.keys import _self_signed

    # 1024 bits: a fast throwaway key, only used to check that bad signatures are refused cleanly.
    return _self_signed(rsa.generate_private_key(public_exponent=65537, key_size=1024), "fuzz.example.org")


def check_parse_manifest(raw: bytes) -> None:
    with contextlib.suppress(CvmfsError):
        parse_manifest(raw, "fuzz")


def check_signed_manifest(raw: bytes) -> None:
    with contextlib.suppress(CvmfsError):
        check_letter_hash(split_signed(raw, "fuzz"), "fuzz")
    with contextlib.suppress(CvmfsError):
        verify_manifest_signature(raw, _certificate(), "fuzz")


PROPERTIES: dict[str, Property] = {
    "manifest.parse_manifest": (manifests, check_parse_manifest),
    "signing.split_signed+verify": (manifests, check_signed_manifest),
}


@FUZZ
@given(manifests)
# Regression: a 4301-digit revision made int() raise ValueError (Python's digit limit).
@example(b"C" + _HASHES[0].encode() + b"\nRd41d8cd98f00b204e9800998ecf8427e\nD1\nS" + b"9" * 4301 + b"\n")
@example(b"C" + _HASHES[0].encode() + b"\nRd41d8cd98f00b204e9800998ecf8427e\nD1\nS" + b"0" * 4301 + b"\n")
def test_parse_manifest(raw: bytes) -> None:
    check_parse_manifest(raw)


@FUZZ
@given(manifests)
def test_signed_manifest(raw: bytes) -> None:
    check_signed_manifest(raw)
