"""Key loading as the client selects keys, and key creation as cvmfs_server does it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from cvmfs_client.errors import ConfigError, FormatError
from cvmfs_client.keys import ensure_repository_keys, load_certificate, load_master_keys, load_public_key

TOOLS = "tools.example.org"
SHAKE = "tiny-shake.example.org"


def _numbers(key: object) -> rsa.RSAPublicNumbers:
    assert isinstance(key, rsa.RSAPublicKey)
    return key.public_numbers()


def test_real_public_key_loads(real_fixtures: Path) -> None:
    key = load_public_key(real_fixtures / TOOLS / f"{TOOLS}.pub")
    assert key.key_size == 2048


def test_pkcs1_rsa_public_key_is_accepted(real_fixtures: Path, tmp_path: Path) -> None:
    key = load_public_key(real_fixtures / TOOLS / f"{TOOLS}.pub")
    pkcs1 = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    assert pkcs1.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    (tmp_path / "k.pub").write_bytes(pkcs1)
    assert _numbers(load_public_key(tmp_path / "k.pub")) == _numbers(key)


def test_bad_public_keys_are_config_errors_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pub"
    with pytest.raises(ConfigError, match=str(missing)):
        load_public_key(missing)
    garbage = tmp_path / "garbage.pub"
    garbage.write_bytes(b"not a key\n")
    with pytest.raises(ConfigError, match="garbage.pub.*PEM"):
        load_public_key(garbage)
    ec_pub = tmp_path / "ec.pub"
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    ec_pub.write_bytes(
        ec_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="not an RSA key"):
        load_public_key(ec_pub)


def test_public_key_list_is_colon_separated_and_wins_over_keys_dir(real_fixtures: Path) -> None:
    a = str(real_fixtures / TOOLS / f"{TOOLS}.pub")
    b = str(real_fixtures / SHAKE / f"{SHAKE}.pub")
    keys = load_master_keys(f"{b}:{a}", str(real_fixtures / "nowhere"))
    assert [p for p, _ in keys] == [b, a]
    assert all(isinstance(k, rsa.RSAPublicKey) for _, k in keys)


def test_missing_file_in_public_key_list_is_an_error(real_fixtures: Path, tmp_path: Path) -> None:
    good = str(real_fixtures / TOOLS / f"{TOOLS}.pub")
    with pytest.raises(ConfigError, match="typo.pub"):
        load_master_keys(f"{good}:{tmp_path}/typo.pub", None)


def test_keys_dir_gives_every_pub_file_sorted(real_fixtures: Path, tmp_path: Path) -> None:
    for fqrn, name in ((TOOLS, "b.pub"), (SHAKE, "a.pub")):
        (tmp_path / name).write_bytes((real_fixtures / fqrn / f"{fqrn}.pub").read_bytes())
    (tmp_path / "readme.txt").write_text("not a key")
    (tmp_path / "sub.pub").mkdir()  # not a file: ignored
    keys = load_master_keys(None, str(tmp_path))
    assert [Path(p).name for p, _ in keys] == ["a.pub", "b.pub"]


def test_no_key_found_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load_master_keys(None, str(tmp_path))
    with pytest.raises(ConfigError, match="not a readable directory"):
        load_master_keys(None, str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="CVMFS_PUBLIC_KEY or CVMFS_KEYS_DIR"):
        load_master_keys(None, None)


def test_certificate_loads_from_pem_and_der(real_fixtures: Path) -> None:
    pem = (real_fixtures / TOOLS / f"{TOOLS}.crt").read_bytes()
    cert = load_certificate(pem, "crt")
    assert load_certificate(cert.public_bytes(serialization.Encoding.DER), "der") == cert
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == f"{TOOLS} CernVM-FS Release Managers"


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_bad_certificate_is_a_format_error(data: bytes) -> None:
    with pytest.raises(FormatError) as info:
        load_certificate(data, "data/xx/yyX")
    assert info.value.source == "data/xx/yyX"


def test_ensure_creates_the_key_set_like_cvmfs_server(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    k = ensure_repository_keys(keys_dir, "new.example.org")
    names = sorted(p.name for p in keys_dir.iterdir())
    assert names == [f"new.example.org.{ext}" for ext in ("crt", "key", "masterkey", "pub")]
    for private in (k.masterkey_path, k.key_path):
        assert stat.S_IMODE(private.stat().st_mode) & 0o077 == 0
    assert k.public_key_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert k.master_key.key_size == 2048 and k.repository_key.key_size == 2048
    assert _numbers(k.master_public_key) == _numbers(k.master_key.public_key())
    assert _numbers(k.certificate.public_key()) == _numbers(k.repository_key.public_key())
    assert _numbers(load_public_key(k.public_key_path)) != _numbers(k.repository_key.public_key())
    cn = k.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "new.example.org CernVM-FS Release Managers"
    assert k.certificate.issuer == k.certificate.subject
    lifetime = k.certificate.not_valid_after_utc - k.certificate.not_valid_before_utc
    assert lifetime.days == 365
    assert load_certificate(k.certificate_path.read_bytes(), "crt") == k.certificate
    assert not [p for p in keys_dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_ensure_loads_existing_keys_unchanged(tmp_path: Path) -> None:
    first = ensure_repository_keys(tmp_path, "r.example.org")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    second = ensure_repository_keys(tmp_path, "r.example.org")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert second.certificate == first.certificate
    assert _numbers(second.master_public_key) == _numbers(first.master_public_key)


def test_ensure_recreates_missing_public_halves_from_private_keys(tmp_path: Path) -> None:
    first = ensure_repository_keys(tmp_path, "r.example.org")
    first.public_key_path.unlink()
    first.certificate_path.unlink()
    again = ensure_repository_keys(tmp_path, "r.example.org")
    assert _numbers(again.master_public_key) == _numbers(first.master_public_key)
    assert _numbers(again.certificate.public_key()) == _numbers(first.repository_key.public_key())


@pytest.mark.parametrize("private", ["masterkey", "key"])
def test_public_half_without_private_key_is_a_config_error(tmp_path: Path, private: str) -> None:
    ensure_repository_keys(tmp_path, "r.example.org")
    (tmp_path / f"r.example.org.{private}").unlink()
    with pytest.raises(ConfigError, match=f"without its private key .*r.example.org.{private}"):
        ensure_repository_keys(tmp_path, "r.example.org")


def test_mismatched_files_are_config_errors(tmp_path: Path) -> None:
    a = ensure_repository_keys(tmp_path / "a", "r.example.org")
    b = ensure_repository_keys(tmp_path / "b", "r.example.org")
    a.public_key_path.write_bytes(b.public_key_path.read_bytes())
    with pytest.raises(ConfigError, match="does not match the master key"):
        ensure_repository_keys(tmp_path / "a", "r.example.org")
    c = ensure_repository_keys(tmp_path / "c", "r.example.org")
    c.certificate_path.write_bytes(b.certificate_path.read_bytes())
    with pytest.raises(ConfigError, match="does not hold the public half"):
        ensure_repository_keys(tmp_path / "c", "r.example.org")
