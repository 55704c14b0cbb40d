"""The certificate whitelist ``.cvmfswhitelist``: parse, verify with master keys, render, sign.

Format facts (spec 3.1-3.5)::

    YYYYMMDDHHMMSS          creation (UTC; only its length is checked)
    EYYYYMMDDHHMMSS         expiry (UTC); expired from the start of that hour
    N<fqrn>
    [Vpkcs7] [Wcachain]     optional flags, in this order
    <fingerprint>...        "AB:CD:..[-SHAKE128|-RMD160]", rest of line after space/tab/# ignored
    --
    <hex hash of the letter>
    <signature>             raw PKCS#1 v1.5 type-1 block around the ASCII hash line, no DigestInfo

Lines that do not decode to a fingerprint are ignored, as the real client does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import (
    CertificateNotWhitelisted,
    FormatError,
    RepositoryNameMismatch,
    SignatureError,
    UnknownHashAlgorithm,
    WhitelistExpired,
)
from .hashing import ContentHash, HashAlgorithm
from .signing import SEPARATOR, check_letter_hash, make_letter, split_signed

_TIMESTAMP_FORMAT = "%Y%m%d%H%M%S"  # WhitelistTimestamp: %04d%02d%02d%02d%02d%02d of UTC
_TIMESTAMP = re.compile(rb"[0-9]{14}")
# PKCS#1 v1.5 padding needs 3 bytes of framing and at least 8 padding bytes (RFC 8017, 9.2/7.2).
_PKCS1_OVERHEAD = 11


@dataclass
class Whitelist:
    """A parsed whitelist; fingerprints keep their algorithm (any may differ from the repository's)."""

    created: str
    expires: datetime  # UTC, aware
    fqrn: str
    fingerprints: list[ContentHash] = field(default_factory=list)
    pkcs7: bool = False  # "Vpkcs7": the real client checks .cvmfswhitelist.pkcs7 instead
    cachain: bool = False  # "Wcachain": the certificate's X.509 chain must verify too

    def is_expired(self, now: datetime) -> bool:
        """Hour granularity (spec 3.5): expired from ``YYYYMMDDHH:00:00`` of the ``E`` line on."""
        limit = self.expires.replace(minute=0, second=0, microsecond=0)
        return _as_utc(now) >= limit


def _as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC (the whitelist times are UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _parse_fingerprint(line: bytes) -> ContentHash | None:
    """``MkFromFingerprint``: up to the first space/tab/#, drop ':', lowercase; None if not a hash."""
    cut = re.split(rb"[ \t#]", line, maxsplit=1)[0]
    try:
        text = cut.decode("ascii").replace(":", "").lower()
        return ContentHash.from_hex(text)
    except (UnicodeDecodeError, UnknownHashAlgorithm):
        return None


def parse_whitelist(raw: bytes, source: str = ".cvmfswhitelist") -> Whitelist:
    """Parse the letter of a whitelist (whole signed file or body only); no signature check here."""
    pos = raw.find(SEPARATOR)
    letter = raw[: pos + 1] if pos >= 0 else raw
    lines = letter.split(b"\n")[:-1]  # a final line without "\n" is not part of the letter
    if len(lines) < 3:
        raise FormatError(source, "too short: needs creation time, E expiry and N name lines")
    created, expiry, name = lines[0], lines[1], lines[2]
    if len(created) != 14:
        raise FormatError(source, f"creation time must be 14 characters (YYYYMMDDHHMMSS): {created!r}", 1)
    if not (expiry.startswith(b"E") and _TIMESTAMP.fullmatch(expiry[1:])):
        raise FormatError(source, f"expiry line must be EYYYYMMDDHHMMSS: {expiry!r}", 2)
    try:
        expires = datetime.strptime(expiry[1:].decode("ascii"), _TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise FormatError(source, f"expiry is not a valid date: {expiry!r}", 2) from None
    if not name.startswith(b"N") or len(name) < 2:
        raise FormatError(source, f"third line must be N<repository name>: {name!r}", 3)
    try:
        fqrn = name[1:].decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(source, f"repository name is not UTF-8: {name!r}", 3) from None
    rest = lines[3:]
    pkcs7 = bool(rest) and rest[0] == b"Vpkcs7"
    if pkcs7:
        rest = rest[1:]
    cachain = bool(rest) and rest[0] == b"Wcachain"
    if cachain:
        rest = rest[1:]
    fingerprints = [fp for fp in map(_parse_fingerprint, rest) if fp is not None]
    return Whitelist(
        created=created.decode("ascii", "replace"),
        expires=expires,
        fqrn=fqrn,
        fingerprints=fingerprints,
        pkcs7=pkcs7,
        cachain=cachain,
    )


def _recovers(key: rsa.RSAPublicKey, signature: bytes, hash_line: bytes) -> bool:
    """``VerifyRsa`` for one key: public-decrypt the type-1 block and compare to the hash line."""
    size = (key.key_size + 7) // 8
    if len(hash_line) > size - _PKCS1_OVERHEAD or len(signature) != size:
        return False  # modulus too small for this message, or a signature for another key size
    try:
        return key.recover_data_from_signature(signature, padding.PKCS1v15(), None) == hash_line
    except (InvalidSignature, ValueError):
        return False


def verify_whitelist(
    raw: bytes,
    master_keys: list[rsa.RSAPublicKey],
    fqrn: str,
    now: datetime,
    source: str = ".cvmfswhitelist",
) -> Whitelist:
    """Verify and parse: letter hash, master key signature (any key), name, expiry (in that order).

    The signature is checked before anything the letter says is believed. The RSA signature is
    required even with ``Vpkcs7`` (where the real client checks a PKCS#7 file instead): stricter,
    since PKCS#7 whitelists are not supported here.
    """
    signed = split_signed(raw, source)
    check_letter_hash(signed, source)
    if not master_keys:
        raise SignatureError(source, "no master public key configured")
    if not any(_recovers(key, signed.signature, signed.hash_line) for key in master_keys):
        raise SignatureError(source, f"not signed by any of the {len(master_keys)} master key(s)")
    wl = parse_whitelist(signed.letter, source)
    if wl.fqrn != fqrn:
        raise RepositoryNameMismatch(source, fqrn, wl.fqrn)
    if wl.is_expired(now):
        raise WhitelistExpired(source, wl.expires.strftime("%Y-%m-%d %H:%M:%S"))
    return wl


def _certificate_digest(cert: x509.Certificate, algorithm: HashAlgorithm) -> ContentHash:
    return ContentHash.of(algorithm, cert.public_bytes(serialization.Encoding.DER))


def certificate_fingerprint(cert: x509.Certificate, algorithm: HashAlgorithm) -> str:
    """``AB:CD:...`` of the DER hash, with ``-RMD160``/``-SHAKE128`` for non-SHA-1 (spec 3.4)."""
    digest = _certificate_digest(cert, algorithm).digest
    return ":".join(f"{b:02X}" for b in digest) + algorithm.suffix.upper()


def check_certificate(whitelist: Whitelist, cert: x509.Certificate, source: str = ".cvmfswhitelist") -> None:
    """Accept ``cert`` if any listed fingerprint matches its DER hash in that line's algorithm."""
    if whitelist.cachain:
        # Refuse rather than skip a check the signer asked for.
        raise SignatureError(
            source, "the whitelist requires X.509 CA chain verification (Wcachain), unsupported"
        )
    for listed in whitelist.fingerprints:
        if _certificate_digest(cert, listed.algorithm) == listed:
            return
    algorithm = whitelist.fingerprints[0].algorithm if whitelist.fingerprints else HashAlgorithm.SHA1
    raise CertificateNotWhitelisted(source, certificate_fingerprint(cert, algorithm))


def render_whitelist(
    fqrn: str, cert: x509.Certificate, algorithm: HashAlgorithm, created: datetime, expires: datetime
) -> bytes:
    """The whitelist body as ``cvmfs_server`` writes it: times, name, one fingerprint line."""
    lines = [
        _as_utc(created).strftime(_TIMESTAMP_FORMAT),
        "E" + _as_utc(expires).strftime(_TIMESTAMP_FORMAT),
        "N" + fqrn,
        certificate_fingerprint(cert, algorithm),
    ]
    if "\n" in fqrn:
        raise ValueError(f"repository name cannot contain a newline: {fqrn!r}")
    return "".join(line + "\n" for line in lines).encode("utf-8")


def pkcs1_type1_sign(private_key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """``RSA_private_encrypt(message, RSA_PKCS1_PADDING)``: ``00 01 FF.. 00 message`` to the power d.

    cryptography has no API for a raw type-1 block without DigestInfo, so the RSA operation is
    done with the private numbers (Python's ``pow``; not constant time, fine for a publisher).
    """
    numbers = private_key.private_numbers()
    n = numbers.public_numbers.n
    size = (private_key.key_size + 7) // 8
    if len(message) > size - _PKCS1_OVERHEAD:
        raise ValueError(f"message of {len(message)} bytes too long for a {private_key.key_size}-bit key")
    block = b"\x00\x01" + b"\xff" * (size - 3 - len(message)) + b"\x00" + message
    signature = pow(int.from_bytes(block, "big"), numbers.d, n).to_bytes(size, "big")
    # Self-check with the library's own recovery, so a wrong signature never leaves this function.
    if private_key.public_key().recover_data_from_signature(signature, padding.PKCS1v15(), None) != message:
        raise InvalidSignature("raw PKCS#1 type-1 signature did not verify")
    return signature


def sign_whitelist(body: bytes, master_private_key: rsa.RSAPrivateKey, algorithm: HashAlgorithm) -> bytes:
    """The whole ``.cvmfswhitelist``: body, ``--``, hash line, raw type-1 signature of the hash line."""
    letter = make_letter(body, algorithm)
    hash_line = letter[len(body) + 3 : -1]
    return letter + pkcs1_type1_sign(master_private_key, hash_line)
