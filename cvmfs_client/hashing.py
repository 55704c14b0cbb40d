"""Content hashes as CernVM-FS spells them: algorithms, hex ids with suffixes, object paths.

Format facts (spec sections 1.3, 4.1, 4.3):
- SHA-1 hex ids carry no suffix, RIPEMD-160 ``-rmd160``, SHAKE-128 ``-shake128`` (20-byte output).
- An object lives at ``data/`` + hex[0:2] + ``/`` + hex[2:] + type char; the algorithm id comes
  before the type char (``data/ab/...-rmd160P``).
- Catalog flags store ``algorithm - 1`` in bits 8-10.
- Hex is lowercase; the algorithm is inferred from the string length (40, 47, 49).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Protocol

from .errors import UnknownHashAlgorithm


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


class HashAlgorithm(enum.Enum):
    """The content hash algorithms; ``value`` is the C++ enum value (flags store value - 1)."""

    SHA1 = 1
    RMD160 = 2
    SHAKE128 = 3

    @property
    def suffix(self) -> str:
        """The algorithm id appended to hex digests (``""`` for SHA-1)."""
        return _SUFFIX[self]

    @property
    def option_name(self) -> str:
        """The publisher option spelling (``sha1``, ``rmd160``, ``shake128``)."""
        return _OPTION[self]

    @property
    def flag_bits(self) -> int:
        """The value stored in catalog flags bits 8-10."""
        return (self.value - 1) << 8

    @classmethod
    def from_option(cls, name: str) -> HashAlgorithm:
        for algo, spelling in _OPTION.items():
            if spelling == name.lower():
                return algo
        raise UnknownHashAlgorithm(
            "hash algorithm", f"unknown hash algorithm {name!r} (use sha1, rmd160 or shake128)"
        )

    @classmethod
    def from_flags(cls, flags: int, source: str = "catalog flags") -> HashAlgorithm:
        raw = ((flags >> 8) & 7) + 1
        try:
            return cls(raw)
        except ValueError:
            raise UnknownHashAlgorithm(
                source, f"unknown hash algorithm id {raw} in flags {flags:#x}"
            ) from None

    def new(self) -> _Digester:
        """A fresh incremental hasher whose ``digest()`` gives the CernVM-FS digest (20 bytes)."""
        return _Digester(self)


_SUFFIX = {HashAlgorithm.SHA1: "", HashAlgorithm.RMD160: "-rmd160", HashAlgorithm.SHAKE128: "-shake128"}
_OPTION = {HashAlgorithm.SHA1: "sha1", HashAlgorithm.RMD160: "rmd160", HashAlgorithm.SHAKE128: "shake128"}
DIGEST_SIZE = 20  # all three content algorithms give 20 bytes (SHAKE-128 truncated to 160 bits)


def _new_ripemd160() -> Hasher:
    try:
        return hashlib.new("ripemd160")
    except ValueError:  # OpenSSL 3 without the legacy provider
        from ._ripemd160 import RIPEMD160

        return RIPEMD160()


class _Digester:
    """Uniform incremental hashing over hashlib objects (SHAKE needs a length at digest time)."""

    __slots__ = ("algorithm", "_h")

    def __init__(self, algorithm: HashAlgorithm) -> None:
        self.algorithm = algorithm
        if algorithm is HashAlgorithm.SHA1:
            self._h = hashlib.sha1()
        elif algorithm is HashAlgorithm.RMD160:
            self._h = _new_ripemd160()
        else:
            self._h = hashlib.shake_128()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        if self.algorithm is HashAlgorithm.SHAKE128:
            return self._h.digest(DIGEST_SIZE)
        return self._h.digest()

    def content_hash(self) -> ContentHash:
        return ContentHash(self.algorithm, self.digest())


class ObjectType(enum.StrEnum):
    """Type characters appended to object names (spec 1.3)."""

    FILE = ""
    CATALOG = "C"
    PARTIAL = "P"
    CERTIFICATE = "X"
    HISTORY = "H"
    METAINFO = "M"
    MICRO_CATALOG = "L"


@dataclass(frozen=True, slots=True)
class ContentHash:
    """A content hash: algorithm plus raw 20-byte digest."""

    algorithm: HashAlgorithm
    digest: bytes

    @property
    def hex(self) -> str:
        """Lowercase hex with the algorithm id, as in manifests and nested catalog rows."""
        return self.digest.hex() + self.algorithm.suffix

    def __str__(self) -> str:
        return self.hex

    def object_path(self, kind: ObjectType | str = ObjectType.FILE) -> str:
        """Relative URL/path of the object: ``data/XX/rest[-algo][type]``."""
        h = self.hex
        return f"data/{h[:2]}/{h[2:]}{kind}"

    def cache_name(self) -> str:
        """Name inside a local cache: like the object path without ``data/`` and type char."""
        h = self.hex
        return f"{h[:2]}/{h[2:]}"

    @classmethod
    def from_hex(cls, text: str, source: str = "hash") -> ContentHash:
        """Parse ``<40 hex>[-rmd160|-shake128]``; uppercase or other lengths are refused."""
        if len(text) == 40:
            algo, hexpart = HashAlgorithm.SHA1, text
        elif len(text) == 47 and text.endswith("-rmd160"):
            algo, hexpart = HashAlgorithm.RMD160, text[:40]
        elif len(text) == 49 and text.endswith("-shake128"):
            algo, hexpart = HashAlgorithm.SHAKE128, text[:40]
        else:
            raise UnknownHashAlgorithm(source, f"not a content hash: {text!r}")
        if any(c not in "0123456789abcdef" for c in hexpart):
            raise UnknownHashAlgorithm(source, f"content hash must be lowercase hex: {text!r}")
        return cls(algo, bytes.fromhex(hexpart))

    @classmethod
    def of(cls, algorithm: HashAlgorithm, data: bytes) -> ContentHash:
        h = algorithm.new()
        h.update(data)
        return h.content_hash()


def hash_hex(algorithm: HashAlgorithm, data: bytes) -> str:
    """Hex id (with suffix) of ``data``: the form used in signed hash lines."""
    return ContentHash.of(algorithm, data).hex


def algorithm_of_hex(text: str, source: str = "hash") -> HashAlgorithm:
    return ContentHash.from_hex(text, source).algorithm
