"""Fuzz certificate and public key loading: random and mutated PEM/DER, then the trust-chain uses."""

from __future__ import annotations

import base64
import contextlib
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import example, given
from hypothesis import strategies as st

from cvmfs_client.errors import CvmfsError, FormatError
from cvmfs_client.hashing import HashAlgorithm
from cvmfs_client.keys import _self_signed, load_certificate, load_public_key
from cvmfs_client.manifest import verify_manifest_signature
from cvmfs_client.whitelist import Whitelist, certificate_fingerprint, check_certificate

from .common import FUZZ, Property, mutated


@lru_cache(maxsize=1)
def _seeds() -> dict[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cert = _self_signed(key, "fuzz.example.org")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return {
        "cert_der": cert.public_bytes(serialization.Encoding.DER),
        "rsa_spki": key.public_key().public_bytes(*spki),
        "rsa_pkcs1": key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1
        ),
        "ec_spki": ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(*spki),
    }


def _pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN " + label.encode() + b"-----\n" + body + b"-----END " + label.encode() + b"-----\n"


@st.composite
def certificate_bytes(draw: st.DrawFn) -> bytes:
    der = draw(mutated(_seeds()["cert_der"], max_edits=4))
    return _pem("CERTIFICATE", der) if draw(st.booleans()) else der


@st.composite
def public_key_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["rsa_spki", "rsa_pkcs1", "ec_spki"]))
    der = draw(mutated(_seeds()[kind], max_edits=4))
    return _pem("RSA PUBLIC KEY" if kind == "rsa_pkcs1" else "PUBLIC KEY", der)


certificates = st.one_of(st.binary(max_size=300), certificate_bytes(), certificate_bytes().flatmap(mutated))
public_keys = st.one_of(st.binary(max_size=300), public_key_bytes(), public_key_bytes().flatmap(mutated))
_WHITELIST = Whitelist("20250101000000", None, "fuzz.example.org")  # type: ignore[arg-type]


def check_load_certificate(raw: bytes) -> None:
    """Load, then use it as the trust chain does: fingerprint, whitelist check, signature check."""
    try:
        cert = load_certificate(raw, "fuzz")
    except CvmfsError:
        return
    try:
        certificate_fingerprint(cert, HashAlgorithm.SHA1)
        check_certificate(_WHITELIST, cert, "fuzz")
    except CvmfsError:
        pass
    else:
        raise AssertionError("an empty whitelist accepted a certificate")
    with contextlib.suppress(CvmfsError):
        verify_manifest_signature(b"C\n--\n" + b"0" * 40 + b"\nsig", cert, "fuzz")


def check_load_public_key(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.pub"
        path.write_bytes(raw)
        with contextlib.suppress(CvmfsError):
            load_public_key(path)


PROPERTIES: dict[str, Property] = {
    "keys.load_certificate": (certificates, check_load_certificate),
    "keys.load_public_key": (public_keys, check_load_public_key),
}


@FUZZ
@given(certificates)
def test_load_certificate(raw: bytes) -> None:
    check_load_certificate(raw)


# Regression: an RSA key whose algorithm OID is mangled (1.2.840... -> 0.0.840...) made cryptography
# raise UnsupportedAlgorithm, which is not a ValueError, out of load_public_key.
_BAD_OID_KEY = (
    b"-----BEGIN PUBLIC KEY-----\n"
    b"MIGfMA0GCQCGSIb3DQEBAQUAA4GNADCBiQKBgQDIRI6KazpqCbEQjbglzwb5jZZLq1AnmKd6REVo\n"
    b"pslyDCNJ++78GyCqB6pnlQnAVK6X3WPKTW2zSXfQPrmfosGQBx4Tu7FnEQ5Zye3Utcmge3n21+oG\n"
    b"Urdr7hehgCQBi0Mo6vtfyLi4QGHUBshGDjGr7n/B5LLYo/mGhdqpUEVVNQIDAQAB\n"
    b"-----END PUBLIC KEY-----\n"
)


@FUZZ
@given(public_keys)
@example(_BAD_OID_KEY)
def test_load_public_key(raw: bytes) -> None:
    check_load_public_key(raw)


def test_unknown_x509_version_is_a_format_error() -> None:
    """Found by bench/fuzz.py: x509.InvalidVersion (not a ValueError) escaped load_certificate."""
    der = bytearray(_seeds()["cert_der"])
    der[der.index(b"\xa0\x03\x02\x01\x02") + 4] = 1  # version v3 (2) -> 1, which X.509 does not define
    for raw in (bytes(der), _pem("CERTIFICATE", bytes(der))):
        with pytest.raises(FormatError, match="X.509"):
            load_certificate(raw, "fuzz")
