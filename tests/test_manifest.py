"""Manifest: real-publisher fixtures, parser rules of the C++ client, tampering, round trips."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cvmfs_client.errors import (
    FormatError,
    HashMismatch,
    IntegrityError,
    RepositoryNameMismatch,
    SignatureError,
)
from cvmfs_client.hashing import ContentHash, HashAlgorithm, ObjectType
from cvmfs_client.keys import RepositoryKeys, ensure_repository_keys, load_certificate
from cvmfs_client.manifest import (
    EMPTY_PATH_MD5,
    Manifest,
    check_manifest,
    parse_manifest,
    render_manifest,
    sign_manifest,
    verify_manifest_signature,
)
from cvmfs_client.objects import Compression, decode_bytes
from cvmfs_client.signing import make_letter, split_signed

REPOS = ["tools.example.org", "tiny-shake.example.org"]
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
MINIMAL = b"C" + b"ab" * 20 + b"\nR" + EMPTY_PATH_MD5.encode() + b"\nD240\nS7\n"


def _real(real_fixtures: Path, fqrn: str) -> tuple[bytes, Manifest, x509.Certificate]:
    """The manifest and the certificate taken from its X object (zlib, hash-verified)."""
    repo = real_fixtures / fqrn
    raw = (repo / ".cvmfspublished").read_bytes()
    m = parse_manifest(raw, f"{fqrn}/.cvmfspublished")
    assert m.certificate is not None
    stored = (repo / m.certificate.object_path(ObjectType.CERTIFICATE)).read_bytes()
    pem = decode_bytes(stored, m.certificate, Compression.ZLIB, "certificate")
    assert pem == (repo / f"{fqrn}.crt").read_bytes()
    return raw, m, load_certificate(pem, "certificate")


@pytest.fixture(scope="module")
def repo_keys(tmp_path_factory: pytest.TempPathFactory) -> RepositoryKeys:
    return ensure_repository_keys(tmp_path_factory.mktemp("keys"), "example.cern.ch")


@pytest.mark.parametrize("fqrn", REPOS)
def test_real_manifest_parses_and_verifies_with_its_certificate(real_fixtures: Path, fqrn: str) -> None:
    raw, m, cert = _real(real_fixtures, fqrn)
    verify_manifest_signature(raw, cert, fqrn)
    check_manifest(m, fqrn)
    assert m.fqrn == fqrn
    assert (m.revision, m.ttl, m.garbage_collectable, m.alt_paths) == (3, 240, False, False)
    assert m.timestamp is not None and m.timestamp > 1_700_000_000
    assert m.history is not None and m.metainfo is not None and m.reflog is not None
    assert m.unknown == {}


def test_real_manifest_values(real_fixtures: Path) -> None:
    _, tools, _ = _real(real_fixtures, "tools.example.org")
    assert tools.root_catalog.hex == "f916797dd4979fc3eb28e82e93f26aa3995edb2b"
    assert tools.root_catalog_size == 65536
    assert tools.hash_algorithm is HashAlgorithm.SHA1
    _, shake, _ = _real(real_fixtures, "tiny-shake.example.org")
    assert shake.root_catalog.hex == "43f9ccccc3b29845f1b1cea114c7bb21c358085b-shake128"
    assert shake.hash_algorithm is HashAlgorithm.SHAKE128
    assert shake.certificate is not None and shake.certificate.algorithm is HashAlgorithm.SHAKE128


@pytest.mark.parametrize("fqrn", REPOS)
def test_render_gives_the_real_writers_bytes(real_fixtures: Path, fqrn: str) -> None:
    raw, m, _ = _real(real_fixtures, fqrn)
    assert render_manifest(m) == split_signed(raw, fqrn).letter


def _flip(raw: bytes, index: int) -> bytes:
    b = bytearray(raw)
    b[index] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("fqrn", REPOS)
def test_flipped_byte_in_body_is_a_hash_mismatch(real_fixtures: Path, fqrn: str) -> None:
    raw, _, cert = _real(real_fixtures, fqrn)
    with pytest.raises(HashMismatch):
        verify_manifest_signature(_flip(raw, raw.index(b"\nS") + 2), cert, fqrn)


@pytest.mark.parametrize("fqrn", REPOS)
def test_flipped_byte_in_hash_line_is_refused(real_fixtures: Path, fqrn: str) -> None:
    raw, _, cert = _real(real_fixtures, fqrn)
    hash_start = raw.index(b"\n--\n") + 4
    with pytest.raises(IntegrityError):
        verify_manifest_signature(_flip(raw, hash_start + 5), cert, fqrn)


@pytest.mark.parametrize("fqrn", REPOS)
def test_flipped_byte_in_signature_is_a_signature_error(real_fixtures: Path, fqrn: str) -> None:
    raw, _, cert = _real(real_fixtures, fqrn)
    with pytest.raises(SignatureError):
        verify_manifest_signature(_flip(raw, len(raw) - 20), cert, fqrn)
    with pytest.raises(SignatureError):
        verify_manifest_signature(raw[:-1], cert, fqrn)


def test_other_repositorys_certificate_is_a_signature_error(real_fixtures: Path) -> None:
    raw, _, _ = _real(real_fixtures, "tools.example.org")
    _, _, other = _real(real_fixtures, "tiny-shake.example.org")
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest_signature(raw, other, "tools.example.org")


def test_resigned_letter_with_a_forged_hash_line_does_not_verify(real_fixtures: Path) -> None:
    # Changing the body and recomputing the hash line is caught by the RSA step.
    raw, m, cert = _real(real_fixtures, "tools.example.org")
    forged = render_manifest(dataclasses.replace(m, revision=4))
    forged_raw = make_letter(forged, HashAlgorithm.SHA1) + split_signed(raw, "x").signature
    with pytest.raises(SignatureError):
        verify_manifest_signature(forged_raw, cert, "tools.example.org")


def test_wrong_repository_name_is_refused(real_fixtures: Path) -> None:
    _, m, _ = _real(real_fixtures, "tools.example.org")
    with pytest.raises(RepositoryNameMismatch) as info:
        check_manifest(m, "other.example.org", "src")
    assert (info.value.expected, info.value.actual) == ("other.example.org", "tools.example.org")
    with pytest.raises(RepositoryNameMismatch):
        check_manifest(dataclasses.replace(m, fqrn=None), "tools.example.org")


def test_root_path_other_than_empty_is_refused(real_fixtures: Path) -> None:
    _, m, _ = _real(real_fixtures, "tools.example.org")
    with pytest.raises(FormatError, match="root path"):
        check_manifest(dataclasses.replace(m, root_path_md5="0" * 32), "tools.example.org")


def test_spec_example_parses() -> None:
    m = parse_manifest(SPEC_BODY)
    assert m.root_catalog == ContentHash.from_hex("0123456789abcdef0123456789abcdef01234567")
    assert (m.root_catalog_size, m.ttl, m.revision, m.timestamp) == (1048576, 240, 42, 1700000000)
    assert m.fqrn == "example.cern.ch"
    assert render_manifest(m) == SPEC_BODY


def test_parser_stops_at_dash_line_and_skips_empty_lines() -> None:
    m = parse_manifest(MINIMAL + b"\n\nNname\n--\nNignored\n")
    assert m.fqrn == "name"
    assert parse_manifest(b"\n" + MINIMAL).revision == 7


def test_repeated_key_overwrites_except_z_which_joins() -> None:
    m = parse_manifest(MINIMAL + b"S8\nZa\nZb\nZc\n")
    assert m.revision == 8
    assert m.channel_tips == "a|b|c"
    assert parse_manifest(render_manifest(m)).channel_tips == "a|b|c"


def test_final_unterminated_line_is_ignored() -> None:
    m = parse_manifest(MINIMAL + b"Nname")
    assert m.fqrn is None
    with pytest.raises(FormatError, match="S"):
        parse_manifest(MINIMAL[:-1])  # "S7" without newline is not there


def test_unknown_keys_are_kept_aside_and_values_not_trimmed() -> None:
    m = parse_manifest(MINIMAL + b"V2.12.0\nN name \nGyes\nAmaybe\n")
    assert m.unknown == {"V": "2.12.0"}
    assert m.fqrn == " name "
    assert m.garbage_collectable is True
    assert m.alt_paths is False  # anything but "yes" is no, as in the C++ client


@pytest.mark.parametrize("key", ["C", "R", "D", "S"])
def test_missing_required_key_is_a_format_error(key: str) -> None:
    body = b"".join(
        line + b"\n" for line in MINIMAL.split(b"\n") if line and not line.startswith(key.encode())
    )
    with pytest.raises(FormatError, match=f"missing required key.*{key}"):
        parse_manifest(body, "m")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"X" + b"AB" * 20, "lowercase"),
        (b"H" + b"ab" * 19, "not a content hash"),
        (b"Tsoon", "decimal"),
        (b"B-5", "decimal"),
        (b"D 240", "decimal"),
        (b"S0x10", "decimal"),
        (b"T" + str(2**64).encode(), "decimal"),
        (b"R" + b"D41D8CD98F00B204E9800998ECF8427E", "MD5"),
        (b"N\xff\xfe", "UTF-8"),
    ],
)
def test_bad_values_are_format_errors_naming_the_line(line: bytes, reason: str) -> None:
    with pytest.raises(FormatError, match=reason) as info:
        parse_manifest(MINIMAL + b"\n" + line + b"\n", "pub")
    assert info.value.line == 6
    assert str(info.value).startswith("pub:6:")


@pytest.mark.parametrize("algorithm", list(HashAlgorithm))
def test_signed_manifest_round_trips(repo_keys: RepositoryKeys, algorithm: HashAlgorithm) -> None:
    def h(tag: bytes) -> ContentHash:
        return ContentHash.of(algorithm, tag)

    m = Manifest(
        root_catalog=h(b"catalog"),
        root_path_md5=EMPTY_PATH_MD5,
        ttl=240,
        revision=5,
        root_catalog_size=4096,
        garbage_collectable=True,
        alt_paths=False,
        fqrn="example.cern.ch",
        certificate=h(b"cert"),
        history=h(b"history"),
        timestamp=1_795_541_171,
        metainfo=h(b"meta"),
        reflog=h(b"reflog"),
    )
    raw = sign_manifest(render_manifest(m), repo_keys.repository_key, algorithm)
    verify_manifest_signature(raw, repo_keys.certificate, "m")
    back = parse_manifest(raw)
    check_manifest(back, "example.cern.ch")
    assert back == m
    assert split_signed(raw, "m").hash_line.endswith(algorithm.suffix.encode())
    with pytest.raises(SignatureError):  # signed with the repository key, not the master key
        verify_manifest_signature(
            sign_manifest(render_manifest(m), repo_keys.master_key, algorithm), repo_keys.certificate, "m"
        )


def test_render_follows_writer_order_and_omits_absent_keys() -> None:
    m = Manifest(
        root_catalog=ContentHash.from_hex("ab" * 20),
        root_path_md5=EMPTY_PATH_MD5,
        ttl=60,
        revision=1,
        micro_catalog=ContentHash.from_hex("cd" * 20),
        fqrn="x.y",
        timestamp=0,  # the writer skips T unless > 0
        unknown={"V": "ignored"},
    )
    keys = [line[:1] for line in render_manifest(m).split(b"\n") if line]
    assert keys == [b"C", b"R", b"D", b"S", b"G", b"A", b"L", b"N"]


def test_certificate_without_rsa_key_is_a_signature_error(real_fixtures: Path) -> None:
    raw, _, _ = _real(real_fixtures, "tools.example.org")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(SignatureError, match="RSA"):
        verify_manifest_signature(raw, cert, "m")
