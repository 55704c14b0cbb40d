"""The "letter" format shared by the signed files ``.cvmfspublished`` and ``.cvmfswhitelist``.

Format facts (spec 2.4, 3.3; mistake 9 in spec 10)::

    <letter: text lines, each ending in "\\n">--\\n<hex hash of the letter>\\n<binary signature>

- The cut is at the FIRST ``b"\\n--\\n"``; the letter keeps that ``\\n``. The signature is binary and
  may contain ``\\n`` or ``--``, so the file must never be split into lines before cutting.
- The hash line's length names the algorithm (40 SHA-1, 47 ``-rmd160``, 49 ``-shake128``).
- What is signed differs per file (manifest: RSA/SHA-1 over the hash line; whitelist: raw PKCS#1
  type 1 around the hash line), so callers append the signature themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import HashMismatch, SignatureError, UnknownHashAlgorithm
from .hashing import ContentHash, HashAlgorithm

SEPARATOR = b"\n--\n"


@dataclass(frozen=True, slots=True)
class SignedLetter:
    """A signed file cut into its three parts (no part is trusted yet)."""

    letter: bytes  # everything before "--\n", including the "\n" that ends the last line
    hash_line: bytes  # the hex hash, without its "\n"
    signature: bytes  # every byte after the hash line's "\n", to end of file


def split_signed(raw: bytes, source: str) -> SignedLetter:
    """Cut ``raw`` at the first ``\\n--\\n``; a file without separator or hash line is unsigned."""
    pos = raw.find(SEPARATOR)
    if pos < 0:
        raise SignatureError(source, "no '--' line: the file is not signed")
    hash_line, newline, signature = raw[pos + len(SEPARATOR) :].partition(b"\n")
    if not newline:
        raise SignatureError(source, "the hash line after '--' is not terminated by a newline")
    return SignedLetter(raw[: pos + 1], hash_line, signature)


def check_letter_hash(signed: SignedLetter, source: str) -> ContentHash:
    """Recompute the letter's hash with the algorithm the hash line implies; return it if equal.

    A hash line that is not a lowercase content hash is a signature problem (the real client's
    ``VerifyLetter`` just fails), not a format problem of the letter.
    """
    try:
        text = signed.hash_line.decode("ascii")
        expected = ContentHash.from_hex(text, source)
    except (UnicodeDecodeError, UnknownHashAlgorithm):
        shown = signed.hash_line[:60].decode("ascii", "backslashreplace")
        raise SignatureError(source, f"the hash line {shown!r} is not a content hash") from None
    actual = ContentHash.of(expected.algorithm, signed.letter)
    if actual != expected:
        raise HashMismatch(source, expected.hex, actual.hex)
    return actual


def make_letter(body: bytes, algorithm: HashAlgorithm) -> bytes:
    """``body + b"--\\n" + hex hash of body + b"\\n"``; the caller appends the signature.

    ``body`` must end in ``\\n`` and contain no ``--`` line, or readers would cut it elsewhere.
    """
    if not body.endswith(b"\n"):
        raise ValueError("a letter body must be non-empty and end with a newline")
    if SEPARATOR in body or body.startswith(b"--\n"):
        raise ValueError("a letter body must not contain a '--' line")
    return body + b"--\n" + ContentHash.of(algorithm, body).hex.encode("ascii") + b"\n"
