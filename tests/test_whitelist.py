"""Whitelist: real-publisher fixtures, master key checks, expiry by the hour, fingerprints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from cvmfs_client.errors import (
    CertificateNotWhitelisted,
    FormatError,
    HashMismatch,
    IntegrityError,
    RepositoryNameMismatch,
    SignatureError,
    WhitelistExpired,
)
from cvmfs_client.hashing import ContentHash, HashAlgorithm
from cvmfs_client.keys import RepositoryKeys, ensure_repository_keys, load_certificate, load_public_key
from cvmfs_client.signing import make_letter, split_signed
from cvmfs_client.whitelist import (
    Whitelist,
    certificate_fingerprint,
    check_certificate,
    parse_whitelist,
    pkcs1_type1_sign,
    render_whitelist,
    sign_whitelist,
    verify_whitelist,
)

TOOLS = "tools.example.org"
SHAKE = "tiny-shake.example.org"
NOW = datetime(2027, 1, 1, tzinfo=UTC)
FP_SHA1 = "4D:CC:E0:1F:90:B5:B3:5F:93:C1:16:A1:E1:C5:EC:B5:45:2C:CA:D7"
FP_SHAKE = "64:C7:A5:A0:76:BA:BB:4B:07:E9:D8:D6:81:74:54:FB:66:1B:FD:25-SHAKE128"


def _files(real_fixtures: Path, fqrn: str) -> tuple[bytes, rsa.RSAPublicKey, x509.Certificate]:
    repo = real_fixtures / fqrn
    return (
        (repo / ".cvmfswhitelist").read_bytes(),
        load_public_key(repo / f"{fqrn}.pub"),
        load_certificate((repo / f"{fqrn}.crt").read_bytes(), f"{fqrn}.crt"),
    )


def _flip(raw: bytes, index: int) -> bytes:
    b = bytearray(raw)
    b[index] ^= 0x01
    return bytes(b)


@pytest.fixture(scope="module")
def repo_keys(tmp_path_factory: pytest.TempPathFactory) -> RepositoryKeys:
    return ensure_repository_keys(tmp_path_factory.mktemp("keys"), "example.cern.ch")


@pytest.mark.parametrize(
    ("fqrn", "algorithm"), [(TOOLS, HashAlgorithm.SHA1), (SHAKE, HashAlgorithm.SHAKE128)]
)
def test_real_whitelist_verifies_and_lists_the_certificate(
    real_fixtures: Path, fqrn: str, algorithm: HashAlgorithm
) -> None:
    raw, master, cert = _files(real_fixtures, fqrn)
    wl = verify_whitelist(raw, [master], fqrn, NOW, fqrn)
    assert wl.fqrn == fqrn
    assert (wl.pkcs7, wl.cachain) == (False, False)
    assert [fp.algorithm for fp in wl.fingerprints] == [algorithm]
    check_certificate(wl, cert, fqrn)


def test_real_whitelist_fields(real_fixtures: Path) -> None:
    raw, master, cert = _files(real_fixtures, SHAKE)
    wl = verify_whitelist(raw, [master], SHAKE, NOW)
    assert wl.created == "20261124172614"
    assert wl.expires == datetime(2036, 11, 21, 17, 26, 14, tzinfo=UTC)
    assert certificate_fingerprint(cert, HashAlgorithm.SHAKE128) == FP_SHAKE
    _, _, tools_cert = _files(real_fixtures, TOOLS)
    assert certificate_fingerprint(tools_cert, HashAlgorithm.SHA1) == FP_SHA1


@pytest.mark.parametrize(
    ("fqrn", "algorithm"), [(TOOLS, HashAlgorithm.SHA1), (SHAKE, HashAlgorithm.SHAKE128)]
)
def test_render_gives_the_real_servers_bytes(
    real_fixtures: Path, fqrn: str, algorithm: HashAlgorithm
) -> None:
    raw, master, cert = _files(real_fixtures, fqrn)
    wl = verify_whitelist(raw, [master], fqrn, NOW)
    created = datetime.strptime(wl.created, "%Y%m%d%H%M%S")
    assert render_whitelist(fqrn, cert, algorithm, created, wl.expires) == split_signed(raw, fqrn).letter


@pytest.mark.parametrize("fqrn", [TOOLS, SHAKE])
def test_flipped_byte_in_body_is_a_hash_mismatch(real_fixtures: Path, fqrn: str) -> None:
    raw, master, _ = _files(real_fixtures, fqrn)
    with pytest.raises(HashMismatch):
        verify_whitelist(_flip(raw, raw.index(b"\nE") + 5), [master], fqrn, NOW)


@pytest.mark.parametrize("fqrn", [TOOLS, SHAKE])
def test_flipped_byte_in_hash_line_is_refused(real_fixtures: Path, fqrn: str) -> None:
    raw, master, _ = _files(real_fixtures, fqrn)
    with pytest.raises(IntegrityError):
        verify_whitelist(_flip(raw, raw.index(b"\n--\n") + 10), [master], fqrn, NOW)


@pytest.mark.parametrize("fqrn", [TOOLS, SHAKE])
def test_flipped_byte_in_signature_is_a_signature_error(real_fixtures: Path, fqrn: str) -> None:
    raw, master, _ = _files(real_fixtures, fqrn)
    with pytest.raises(SignatureError):
        verify_whitelist(_flip(raw, len(raw) - 3), [master], fqrn, NOW)


def test_wrong_master_key_is_refused_and_any_right_key_suffices(real_fixtures: Path) -> None:
    raw, right, _ = _files(real_fixtures, TOOLS)
    _, wrong, _ = _files(real_fixtures, SHAKE)
    with pytest.raises(SignatureError, match="master key"):
        verify_whitelist(raw, [wrong], TOOLS, NOW)
    with pytest.raises(SignatureError, match="no master public key"):
        verify_whitelist(raw, [], TOOLS, NOW)
    assert verify_whitelist(raw, [wrong, right], TOOLS, NOW).fqrn == TOOLS


def test_key_with_too_small_modulus_is_skipped(real_fixtures: Path) -> None:
    raw, right, _ = _files(real_fixtures, TOOLS)
    tiny = rsa.RSAPublicNumbers(65537, (1 << 255) + 0x1F3).public_key()  # 32-byte modulus < hash line
    with pytest.raises(SignatureError):
        verify_whitelist(raw, [tiny], TOOLS, NOW)
    assert verify_whitelist(raw, [tiny, right], TOOLS, NOW).fqrn == TOOLS


def test_resigning_by_the_repository_certificate_key_is_refused(repo_keys: RepositoryKeys) -> None:
    body = render_whitelist(
        "example.cern.ch", repo_keys.certificate, HashAlgorithm.SHA1, NOW, NOW + timedelta(30)
    )
    raw = sign_whitelist(body, repo_keys.repository_key, HashAlgorithm.SHA1)
    with pytest.raises(SignatureError):
        verify_whitelist(raw, [repo_keys.master_public_key], "example.cern.ch", NOW)


def test_expired_whitelist_is_refused_from_the_start_of_the_expiry_hour(real_fixtures: Path) -> None:
    raw, master, _ = _files(real_fixtures, TOOLS)  # E20361121172606
    just_before_hour = datetime(2036, 11, 21, 16, 59, 59, tzinfo=UTC)
    assert verify_whitelist(raw, [master], TOOLS, just_before_hour).fqrn == TOOLS
    for now in (datetime(2036, 11, 21, 17, 0, 0, tzinfo=UTC), datetime(2040, 1, 1, tzinfo=UTC)):
        with pytest.raises(WhitelistExpired) as info:
            verify_whitelist(raw, [master], TOOLS, now, "wl")
        assert info.value.expiry == "2036-11-21 17:26:06"


def test_expiry_compares_in_utc_and_naive_times_are_utc(real_fixtures: Path) -> None:
    raw, master, _ = _files(real_fixtures, TOOLS)
    zurich = datetime(2036, 11, 21, 17, 30, tzinfo=UTC).astimezone(ZoneInfo("Europe/Zurich"))
    with pytest.raises(WhitelistExpired):
        verify_whitelist(raw, [master], TOOLS, zurich)
    with pytest.raises(WhitelistExpired):
        verify_whitelist(raw, [master], TOOLS, datetime(2036, 11, 21, 17, 0))
    assert verify_whitelist(raw, [master], TOOLS, datetime(2036, 11, 21, 16, 0)).fqrn == TOOLS


def test_certificate_not_listed_is_refused(real_fixtures: Path) -> None:
    raw, master, _ = _files(real_fixtures, TOOLS)
    _, _, other_cert = _files(real_fixtures, SHAKE)
    wl = verify_whitelist(raw, [master], TOOLS, NOW)
    with pytest.raises(CertificateNotWhitelisted) as info:
        check_certificate(wl, other_cert, "wl")
    assert info.value.fingerprint == certificate_fingerprint(other_cert, HashAlgorithm.SHA1)


def test_wrong_repository_name_is_refused(real_fixtures: Path) -> None:
    raw, master, _ = _files(real_fixtures, TOOLS)
    with pytest.raises(RepositoryNameMismatch) as info:
        verify_whitelist(raw, [master], "other.example.org", NOW)
    assert info.value.actual == TOOLS


def test_fingerprint_lines_follow_the_client_rules() -> None:
    sha1 = "ab" * 20
    body = (
        b"20240101120000\nE20240131120000\nNexample.cern.ch\n"
        + b":".join([b"AB"] * 20)
        + b" # trailing comment\n"
        + b"cd" * 20
        + b"\tcomment\n"
        + b"EF" * 20
        + b"-RMD160#x\n"
        + b"not a fingerprint\n"
        + b"\xff\xfe\n"
        + b"12:34\n"
        + b"\n"
    )
    wl = parse_whitelist(body)
    assert [fp.hex for fp in wl.fingerprints] == [sha1, "cd" * 20, "ef" * 20 + "-rmd160"]
    assert wl.created == "20240101120000"


def test_spec_example_parses_and_has_the_spec_hash() -> None:
    body = (
        b"20240101120000\nE20240131120000\nNexample.cern.ch\n"
        b"66:FF:35:41:A6:EF:A4:D2:9E:29:40:81:56:92:EA:D8:B4:1E:68:78\n"
    )
    assert len(body) == 108
    assert make_letter(body, HashAlgorithm.SHA1).endswith(b"--\n66715dd482fd8c80e1f649bf763117b535a40f27\n")
    wl = parse_whitelist(body)
    assert wl.fingerprints == [ContentHash.from_hex("66ff3541a6efa4d29e2940815692ead8b41e6878")]
    assert wl.expires == datetime(2024, 1, 31, 12, tzinfo=UTC)


def test_pkcs7_and_cachain_flags() -> None:
    wl = parse_whitelist(b"20240101120000\nE20240131120000\nNx\nVpkcs7\nWcachain\n" + b"ab" * 20 + b"\n")
    assert (wl.pkcs7, wl.cachain, len(wl.fingerprints)) == (True, True, 1)


def test_cachain_whitelist_is_refused_rather_than_half_checked(real_fixtures: Path) -> None:
    _, _, cert = _files(real_fixtures, TOOLS)
    wl = Whitelist("x", NOW, TOOLS, [ContentHash.from_hex(FP_SHA1.replace(":", "").lower())], cachain=True)
    with pytest.raises(SignatureError, match="Wcachain"):
        check_certificate(wl, cert)


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (b"2024010112000\nE20240131120000\nNx\n", 1),
        (b"20240101120000\n20240131120000\nNx\n", 2),
        (b"20240101120000\nE2024013112000x\nNx\n", 2),
        (b"20240101120000\nE20241331120000\nNx\n", 2),
        (b"20240101120000\nE20240131120000\nx\n", 3),
        (b"20240101120000\nE20240131120000\nN\n", 3),
        (b"20240101120000\nE20240131120000\n", None),
    ],
)
def test_malformed_header_is_a_format_error(body: bytes, line: int | None) -> None:
    with pytest.raises(FormatError) as info:
        parse_whitelist(body, "wl")
    assert info.value.line == line


@pytest.mark.parametrize("algorithm", list(HashAlgorithm))
def test_signed_whitelist_round_trips(repo_keys: RepositoryKeys, algorithm: HashAlgorithm) -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    body = render_whitelist(
        "example.cern.ch", repo_keys.certificate, algorithm, created, created + timedelta(30)
    )
    raw = sign_whitelist(body, repo_keys.master_key, algorithm)
    wl = verify_whitelist(raw, [repo_keys.master_public_key], "example.cern.ch", created)
    check_certificate(wl, repo_keys.certificate)
    assert wl.created == "20260102030405"
    assert wl.expires == datetime(2026, 2, 1, 3, 4, 5, tzinfo=UTC)
    assert [fp.algorithm for fp in wl.fingerprints] == [algorithm]
    assert body.splitlines()[3].decode() == certificate_fingerprint(repo_keys.certificate, algorithm)
    with pytest.raises(WhitelistExpired):
        verify_whitelist(raw, [repo_keys.master_public_key], "example.cern.ch", created + timedelta(30))


def test_type1_signature_is_the_raw_padded_block(repo_keys: RepositoryKeys) -> None:
    message = b"ab" * 20
    signature = pkcs1_type1_sign(repo_keys.master_key, message)
    numbers = repo_keys.master_public_key.public_numbers()
    block = pow(int.from_bytes(signature, "big"), numbers.e, numbers.n).to_bytes(256, "big")
    assert block == b"\x00\x01" + b"\xff" * (256 - 3 - 40) + b"\x00" + message
    with pytest.raises(ValueError):
        pkcs1_type1_sign(repo_keys.master_key, b"x" * 250)
