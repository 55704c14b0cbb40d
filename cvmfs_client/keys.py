"""Keys and certificates: master public keys for clients, the key set a publisher needs.

Format facts (spec 3.7, 2.5):
- Master public keys are PEM SubjectPublicKeyInfo RSA keys. ``CVMFS_PUBLIC_KEY`` is a ``:``-separated
  list of files; without it every ``*.pub`` in ``CVMFS_KEYS_DIR`` is tried, sorted by name.
- ``cvmfs_server`` keeps ``<fqrn>.masterkey`` (RSA 2048, mode 0400), ``<fqrn>.pub``, ``<fqrn>.key``
  (repository key) and ``<fqrn>.crt`` (self-signed, CN ``<fqrn> CernVM-FS Release Managers``,
  365 days; the client never checks its dates).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .errors import ConfigError, FormatError

KEY_BITS = 2048  # openssl genrsa 2048 in cvmfs_server_ssl.sh
CERT_DAYS = 365  # openssl x509 -days 365 in cvmfs_server_ssl.sh
_PRIVATE_MODE = 0o400  # chmod 400 on .masterkey and .key
_PUBLIC_MODE = 0o644  # umask default for openssl output


def load_public_key(path: str | os.PathLike[str]) -> rsa.RSAPublicKey:
    """An RSA public key from PEM (``BEGIN PUBLIC KEY`` or ``BEGIN RSA PUBLIC KEY``)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read public key: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:  # garbage, or a key type OpenSSL does not know
        raise ConfigError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(f"{path}: {type(key).__name__} is not an RSA key; CernVM-FS master keys are RSA")
    return key


def load_master_keys(public_key: str | None, keys_dir: str | None) -> list[tuple[str, rsa.RSAPublicKey]]:
    """The client's key selection: the ``CVMFS_PUBLIC_KEY`` list if set, else ``*.pub`` in the dir.

    Every named file must load (a typo in the list is an error, not a silently smaller key set).
    """
    if public_key:
        paths = [p for p in public_key.split(":") if p]
    elif keys_dir:
        directory = Path(keys_dir)
        if not directory.is_dir():
            raise ConfigError(f"{keys_dir}: CVMFS_KEYS_DIR is not a readable directory")
        try:
            paths = sorted(str(p) for p in directory.iterdir() if p.name.endswith(".pub") and p.is_file())
        except OSError as exc:
            raise ConfigError(f"{keys_dir}: cannot list CVMFS_KEYS_DIR: {exc.strerror or exc}") from None
        if not paths:
            raise ConfigError(f"{keys_dir}: no *.pub master public key found in CVMFS_KEYS_DIR")
    else:
        raise ConfigError("no master public key: set CVMFS_PUBLIC_KEY or CVMFS_KEYS_DIR")
    if not paths:
        raise ConfigError(f"CVMFS_PUBLIC_KEY={public_key!r} names no file")
    return [(p, load_public_key(p)) for p in paths]


def load_certificate(pem_or_der: bytes, source: str) -> x509.Certificate:
    """An X.509 certificate from PEM (what the ``X`` object holds) or DER bytes."""
    try:
        if pem_or_der.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(pem_or_der)
        return x509.load_der_x509_certificate(pem_or_der)
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:  # the last two: not ValueErrors
        raise FormatError(source, f"not an X.509 certificate: {exc}") from None


@dataclass(frozen=True)
class RepositoryKeys:
    """The publisher's key set for one repository, as found in ``keys_dir``."""

    keys_dir: Path
    fqrn: str
    master_key: rsa.RSAPrivateKey  # signs the whitelist
    master_public_key: rsa.RSAPublicKey  # what clients trust (<fqrn>.pub)
    repository_key: rsa.RSAPrivateKey  # signs the manifest
    certificate: x509.Certificate  # holds the repository key's public half

    @property
    def masterkey_path(self) -> Path:
        return self.keys_dir / f"{self.fqrn}.masterkey"

    @property
    def public_key_path(self) -> Path:
        return self.keys_dir / f"{self.fqrn}.pub"

    @property
    def key_path(self) -> Path:
        return self.keys_dir / f"{self.fqrn}.key"

    @property
    def certificate_path(self) -> Path:
        return self.keys_dir / f"{self.fqrn}.crt"

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data`` unless it exists: temp file + ``os.link`` (never overwrites).

    A concurrent creator wins the link race; our copy is dropped and the loader later reads and
    cross-checks whatever is on disk, so no process ends up with a key another one overwrote.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    # PKCS#8 "BEGIN PRIVATE KEY", what OpenSSL 3's genrsa writes.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_pem(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_private_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read private key: {exc.strerror or exc}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{path}: {type(key).__name__} is not an RSA key")
    return key


def _self_signed(key: rsa.RSAPrivateKey, fqrn: str) -> x509.Certificate:
    """Like ``openssl req -subj "/CN=<fqrn> CernVM-FS Release Managers"`` + ``x509 -req -days 365``."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{fqrn} CernVM-FS Release Managers")])
    now = _dt.datetime.now(_dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _dt.timedelta(days=CERT_DAYS))
        .sign(key, hashes.SHA256())
    )


def _same_key(a: rsa.RSAPublicKey, b: rsa.RSAPublicKey) -> bool:
    return a.public_numbers() == b.public_numbers()


def ensure_repository_keys(keys_dir: Path, fqrn: str) -> RepositoryKeys:
    """Load the repository's keys from ``keys_dir``, creating missing ones as ``cvmfs_server`` does.

    A missing public half is derived from its private key; a public half without its private key
    (``.pub`` without ``.masterkey``, ``.crt`` without ``.key``) cannot be repaired: ConfigError.
    """
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: keys_dir / f"{fqrn}.{ext}" for ext in ("masterkey", "pub", "key", "crt")}
    for private, public in (("masterkey", "pub"), ("key", "crt")):
        if paths[public].exists() and not paths[private].exists():
            raise ConfigError(f"{paths[public]}: exists without its private key {paths[private]}")

    if not paths["masterkey"].exists():
        master = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        _write_new(paths["masterkey"], _private_pem(master), _PRIVATE_MODE)
    master = _load_private_key(paths["masterkey"])
    if not paths["pub"].exists():
        _write_new(paths["pub"], _public_pem(master.public_key()), _PUBLIC_MODE)
    master_public = load_public_key(paths["pub"])
    if not _same_key(master_public, master.public_key()):
        raise ConfigError(f"{paths['pub']}: does not match the master key {paths['masterkey']}")

    if not paths["key"].exists():
        repo_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        _write_new(paths["key"], _private_pem(repo_key), _PRIVATE_MODE)
    repo_key = _load_private_key(paths["key"])
    if not paths["crt"].exists():
        cert_pem = _self_signed(repo_key, fqrn).public_bytes(serialization.Encoding.PEM)
        _write_new(paths["crt"], cert_pem, _PUBLIC_MODE)
    try:
        cert_bytes = paths["crt"].read_bytes()
    except OSError as exc:
        raise ConfigError(f"{paths['crt']}: cannot read certificate: {exc.strerror or exc}") from None
    cert = load_certificate(cert_bytes, str(paths["crt"]))
    cert_key = cert.public_key()
    if not isinstance(cert_key, rsa.RSAPublicKey) or not _same_key(cert_key, repo_key.public_key()):
        raise ConfigError(f"{paths['crt']}: does not hold the public half of {paths['key']}")
    return RepositoryKeys(keys_dir, fqrn, master, master_public, repo_key, cert)
