"""Digests that only name things on disk (shadow-tree markers, mount state files, links).

They are names, not integrity checks: those go through :mod:`hashlib` (cvmfs_client.hashing).
``hashlib`` initialises OpenSSL on import, ~4 ms of every ``cvmfs-client run`` that touches
/cvmfs, where CPython's own implementations of the same digests load in ~0.3 ms. Same bytes
in, same names out, whichever is used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)
if TYPE_CHECKING:
    from typing import Any

    _Factory = Callable[[bytes], Any]


@functools.cache  # looked up once: markers are named on the tracer's path of directory opens
def _builtin(module: str, name: str) -> _Factory:
    try:
        return getattr(__import__(module), name)  # CPython's _sha1/_md5 (no OpenSSL)
    except (ImportError, AttributeError):  # an interpreter built without them
        import hashlib

        return getattr(hashlib, name)


def sha1_hex(data: bytes) -> str:
    """The SHA-1 of ``data``, in hex."""
    return _builtin("_sha1", "sha1")(data).hexdigest()


def md5_hex(data: bytes) -> str:
    """The MD5 of ``data``, in hex."""
    return _builtin("_md5", "md5")(data).hexdigest()
