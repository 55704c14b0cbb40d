"""Which URLs name immutable, content-addressed CernVM-FS objects, and what hash they must have.

Format facts (spec 1.2, 1.3, 4.2):
- An object lives at ``<base>/data/`` + hex[0:2] + ``/`` + hex[2:] + optional type char, the
  algorithm id (``-rmd160``, ``-shake128``) before the type char; hex is lowercase.
- Type chars on a server: none (file), ``C`` catalog, ``P`` chunk, ``X`` certificate,
  ``H`` history, ``M`` meta-info, ``L`` micro-catalog (defined, unused).
- ``<base>/.cvmfsalt-<hex>`` is an alias of a ``data/`` object (manifest ``A=yes``): same bytes.
- The hash covers the bytes as served (compressed when zlib), so a proxy can verify an object
  without knowing anything else about the repository.

Because the name fixes the bytes, the cache key of such an object is its hash alone: the same
object fetched from two Stratum 1s (client host failover) or two repositories is one entry.
Everything else (manifest, whitelist, external files, JSON, Geo API) is mutable and follows
the upstream's Cache-Control.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cvmfs_client.errors import UnknownHashAlgorithm
from cvmfs_client.hashing import ContentHash

_ALGO = r"(?:-rmd160|-shake128)?"
_DATA = re.compile(r"/data/([0-9a-f]{2})/([0-9a-f]{38}" + _ALGO + r")([CPXHML]?)\Z")
_ALIAS = re.compile(r"/\.cvmfsalt-([0-9a-f]{40}" + _ALGO + r")\Z")


@dataclass(frozen=True, slots=True)
class ImmutableObject:
    """A content-addressed object: ``expected`` is the hash its stored bytes must have."""

    expected: ContentHash
    type_char: str

    @property
    def cache_key(self) -> str:
        """Host- and repository-independent key: same hash, same bytes."""
        return "obj:" + self.expected.hex


def classify(path: str) -> ImmutableObject | None:
    """The immutable object named by a URL path, or None for anything mutable.

    A query string makes a URL mutable (a server could answer it differently), as does any
    name that merely resembles an object (uppercase hex, wrong length, unknown type char).
    """
    if "?" in path or "/data/" not in path and "/.cvmfsalt-" not in path:
        return None
    m = _DATA.search(path)
    if m:
        hex_id, type_char = m.group(1) + m.group(2), m.group(3)
    else:
        m = _ALIAS.search(path)
        if not m:
            return None
        hex_id, type_char = m.group(1), ""
    try:
        return ImmutableObject(ContentHash.from_hex(hex_id, path), type_char)
    except UnknownHashAlgorithm:
        return None
