"""The signed manifest ``.cvmfspublished``: parse, verify, check, render and sign.

Format facts (spec 2.1-2.5):
- ``<key byte><value>\\n`` lines up to the line ``--``; empty lines are skipped; a final line without
  ``\\n`` is ignored; a repeated key overwrites the earlier value, except ``Z`` (joined with ``|``).
- Required: ``C R D S``. Hex is lowercase with the algorithm id; ``G``/``A`` are ``yes``/``no``.
- Signature: RSA PKCS#1 v1.5 with SHA-1 over the hex hash line (never over the body), whatever the
  repository's hash algorithm; the hash line itself uses the repository algorithm.
- The writer's key order is ``C B R D S G A [L] [N] [X] [H] [T] [M] [Y]``; ``T`` only if > 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import FormatError, RepositoryNameMismatch, SignatureError, UnknownHashAlgorithm
from .hashing import ContentHash, HashAlgorithm
from .signing import check_letter_hash, make_letter, split_signed

# MD5("") in hex: the publisher always sets the root path to "" (spec 2.2, key R).
EMPTY_PATH_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
_UINT64_MAX = 2**64 - 1
_UINT64_DIGITS = len(str(_UINT64_MAX))  # 20
_REQUIRED = {"C": "root catalog hash", "R": "root path MD5", "D": "TTL", "S": "revision"}


@dataclass(frozen=True)
class Manifest:
    """Every key of a manifest; ``unknown`` keeps keys this client does not know (ignored)."""

    root_catalog: ContentHash  # C
    root_path_md5: str  # R
    ttl: int  # D
    revision: int  # S
    root_catalog_size: int | None = None  # B, uncompressed root catalog size
    garbage_collectable: bool = False  # G
    alt_paths: bool = False  # A, .cvmfsalt-* bootstrap paths exist
    micro_catalog: ContentHash | None = None  # L (defined, unused)
    fqrn: str | None = None  # N
    certificate: ContentHash | None = None  # X
    history: ContentHash | None = None  # H
    timestamp: int | None = None  # T, Unix seconds of the publish
    metainfo: ContentHash | None = None  # M
    reflog: ContentHash | None = None  # Y
    channel_tips: str | None = None  # Z, repeated values joined with "|"
    unknown: Mapping[str, str] = field(default_factory=dict)

    @property
    def hash_algorithm(self) -> HashAlgorithm:
        """The repository's content hash algorithm (that of the root catalog hash)."""
        return self.root_catalog.algorithm


def _ascii(value: bytes, source: str, line: int) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(source, f"non-ASCII value {value[:60]!r}", line) from None


def _hash(value: bytes, source: str, line: int) -> ContentHash:
    text = _ascii(value, source, line)
    try:
        return ContentHash.from_hex(text, source)
    except UnknownHashAlgorithm as exc:
        raise FormatError(source, exc.reason, line) from None


def _uint(value: bytes, source: str, line: int) -> int:
    text = _ascii(value, source, line)
    # Only plain decimal digits: no sign, no spaces, no "0x" (the C++ reads an unsigned 64-bit int).
    # Length first (leading zeros aside): int() raises ValueError beyond 4300 digits.
    significant = text.lstrip("0") or "0"
    if (
        not text.isdigit()
        or not text.isascii()
        or len(significant) > _UINT64_DIGITS
        or int(significant) > _UINT64_MAX
    ):
        raise FormatError(source, f"not an unsigned decimal number: {text[:60]!r}", line)
    return int(significant)


def _bool(value: bytes, source: str, line: int) -> bool:
    # The C++ client tests for exactly "yes"; anything else means no.
    return value == b"yes"


def _md5(value: bytes, source: str, line: int) -> str:
    text = _ascii(value, source, line)
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        raise FormatError(source, f"not a lowercase MD5 hex digest: {text!r}", line)
    return text


def _text(value: bytes, source: str, line: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(source, f"not UTF-8: {value[:60]!r}", line) from None


# Policy as data: key byte -> (Manifest field, value parser).
_KEYS: dict[str, tuple[str, Callable[[bytes, str, int], Any]]] = {
    "C": ("root_catalog", _hash),
    "B": ("root_catalog_size", _uint),
    "R": ("root_path_md5", _md5),
    "D": ("ttl", _uint),
    "S": ("revision", _uint),
    "G": ("garbage_collectable", _bool),
    "A": ("alt_paths", _bool),
    "L": ("micro_catalog", _hash),
    "N": ("fqrn", _text),
    "X": ("certificate", _hash),
    "H": ("history", _hash),
    "T": ("timestamp", _uint),
    "M": ("metainfo", _hash),
    "Y": ("reflog", _hash),
}


def _key_values(raw: bytes) -> tuple[dict[str, tuple[bytes, int]], list[bytes]]:
    """Split like the C++ ``ParseKeyvalMem``: last value (and its line number) per key, and Z."""
    values: dict[str, tuple[bytes, int]] = {}
    tips: list[bytes] = []
    pos = 0
    lineno = 0
    while (nl := raw.find(b"\n", pos)) >= 0:  # a final unterminated line is never reached
        line = raw[pos:nl]
        pos = nl + 1
        lineno += 1
        if line == b"--":
            break
        if not line:
            continue
        key = chr(line[0])
        if key == "Z":
            tips.append(line[1:])
        else:
            values[key] = (line[1:], lineno)
    return values, tips


def parse_manifest(raw: bytes, source: str = ".cvmfspublished") -> Manifest:
    """Parse the manifest text (a whole signed file or just the body); no signature check here."""
    values, tips = _key_values(raw)
    missing = [f"{k} ({what})" for k, what in _REQUIRED.items() if k not in values]
    if missing:
        raise FormatError(source, "missing required key(s): " + ", ".join(missing))
    kwargs: dict[str, Any] = {}
    unknown: dict[str, str] = {}
    for key, (value, lineno) in values.items():
        if key in _KEYS:
            name, parse = _KEYS[key]
            kwargs[name] = parse(value, source, lineno)
        else:
            unknown[key] = value.decode("utf-8", "surrogateescape")
    if tips:
        kwargs["channel_tips"] = "|".join(t.decode("utf-8", "surrogateescape") for t in tips)
    return Manifest(**kwargs, unknown=unknown)


def verify_manifest_signature(
    raw: bytes, certificate: x509.Certificate, source: str = ".cvmfspublished"
) -> None:
    """Check the letter hash, then the RSA/SHA-1 signature of the hash line with the certificate.

    Raises ``HashMismatch`` if the body was altered, ``SignatureError`` otherwise.
    """
    signed = split_signed(raw, source)
    check_letter_hash(signed, source)
    if not signed.signature:
        raise SignatureError(source, "no signature after the hash line")
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError(source, f"certificate key is {type(key).__name__}, CernVM-FS signs with RSA")
    try:
        key.verify(signed.signature, signed.hash_line, padding.PKCS1v15(), hashes.SHA1())
    except InvalidSignature:
        raise SignatureError(
            source, "RSA signature of the hash line does not verify with the certificate"
        ) from None


def check_manifest(m: Manifest, fqrn: str, source: str = ".cvmfspublished") -> None:
    """The client's checks after parsing (spec 2.5 steps 1-2): right repository, root path ""."""
    if m.fqrn != fqrn:
        raise RepositoryNameMismatch(source, fqrn, m.fqrn or "")
    if m.root_path_md5 != EMPTY_PATH_MD5:
        raise FormatError(source, f"root path hash R{m.root_path_md5} is not MD5 of the empty path")


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def render_manifest(m: Manifest) -> bytes:
    """The manifest body as the real writer spells it (key order of ``ExportString``).

    ``unknown`` keys are not written (the real writer knows none); ``Z`` values, which the real
    writer never produces, go last, one line per ``|``-separated tip, so parsing gives them back.
    """
    lines = [f"C{m.root_catalog.hex}"]
    if m.root_catalog_size is not None:
        lines.append(f"B{m.root_catalog_size}")
    lines += [
        f"R{m.root_path_md5}",
        f"D{m.ttl}",
        f"S{m.revision}",
        f"G{_yes_no(m.garbage_collectable)}",
        f"A{_yes_no(m.alt_paths)}",
    ]
    optional: list[tuple[str, object]] = [
        ("L", m.micro_catalog),
        ("N", m.fqrn),
        ("X", m.certificate),
        ("H", m.history),
        ("T", m.timestamp if m.timestamp else None),  # the writer skips T unless > 0
        ("M", m.metainfo),
        ("Y", m.reflog),
    ]
    lines += [f"{key}{value}" for key, value in optional if value is not None]
    if m.channel_tips is not None:
        lines += [f"Z{tip}" for tip in m.channel_tips.split("|")]
    for line in lines:
        if "\n" in line or line[1:] == "-":
            raise ValueError(f"manifest value cannot be written: {line!r}")
    return "".join(line + "\n" for line in lines).encode("utf-8")


def sign_manifest(body: bytes, private_key: rsa.RSAPrivateKey, algorithm: HashAlgorithm) -> bytes:
    """The whole ``.cvmfspublished``: body, ``--``, hash line, RSA PKCS#1 v1.5 SHA-1 signature."""
    letter = make_letter(body, algorithm)
    hash_line = letter[len(body) + 3 : -1]
    return letter + private_key.sign(hash_line, padding.PKCS1v15(), hashes.SHA1())
