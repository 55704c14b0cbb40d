"""Fuzz the whitelist: ``parse_whitelist`` and ``verify_whitelist`` (letter, signature, name, expiry)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from cvmfs_client.errors import CvmfsError
from cvmfs_client.hashing import ContentHash, HashAlgorithm
from cvmfs_client.signing import make_letter
from cvmfs_client.whitelist import parse_whitelist, verify_whitelist

from .common import FUZZ, Property, mutated

_FP = ":".join(f"{b:02X}" for b in ContentHash.of(HashAlgorithm.SHA1, b"x").digest)
timestamp = st.one_of(
    st.text("0123456789", min_size=13, max_size=15),
    st.sampled_from(["20991231235959", "00000000000000", "99999999999999", "20240230120000"]),
    st.binary(min_size=14, max_size=14).map(lambda b: b.decode("latin-1")),
)
fingerprint = st.one_of(
    st.sampled_from(
        [_FP, _FP + "-RMD160", _FP + "-SHAKE128", _FP + " # comment", _FP.lower(), "Vpkcs7", "Wcachain"]
    ),
    st.text(max_size=70),
)


@st.composite
def whitelist_text(draw: st.DrawFn) -> bytes:
    lines = [draw(timestamp), "E" + draw(timestamp), "N" + draw(st.sampled_from(["fuzz.example.org", ""]))]
    lines += draw(st.lists(fingerprint, max_size=6))
    if draw(st.booleans()):
        lines = draw(st.permutations(lines))
    body = "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n"
    if b"\n--\n" in body or body.startswith(b"--\n"):
        return body
    return make_letter(body, draw(st.sampled_from(list(HashAlgorithm)))) + draw(st.binary(max_size=300))


whitelists = st.one_of(st.binary(max_size=400), whitelist_text(), whitelist_text().flatmap(mutated))


@lru_cache(maxsize=1)
def _master_keys() -> list[rsa.RSAPublicKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()]


def check_parse_whitelist(raw: bytes) -> None:
    with contextlib.suppress(CvmfsError):
        parse_whitelist(raw, "fuzz")


def check_verify_whitelist(raw: bytes) -> None:
    with contextlib.suppress(CvmfsError):
        verify_whitelist(raw, _master_keys(), "fuzz.example.org", datetime(2025, 1, 1, tzinfo=UTC), "fuzz")


PROPERTIES: dict[str, Property] = {
    "whitelist.parse_whitelist": (whitelists, check_parse_whitelist),
    "whitelist.verify_whitelist": (whitelists, check_verify_whitelist),
}


@FUZZ
@given(whitelists)
def test_parse_whitelist(raw: bytes) -> None:
    check_parse_whitelist(raw)


@FUZZ
@given(whitelists)
def test_verify_whitelist(raw: bytes) -> None:
    check_verify_whitelist(raw)
