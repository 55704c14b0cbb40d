"""What a cache base really keeps on disk, counted independently of the code under test."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

# Bookkeeping of the node cache, not objects.
_NOT_OBJECTS = ("index", "locks", "txn", "linked", "manifests")


def held_bytes(cache_base: Path) -> int:
    """Bytes of the distinct files the node cache and the interposer's links keep on disk
    (objects, assembled files, ``d/`` links, ``x/`` copies; not the index or shadow metadata)."""
    held: dict[tuple[int, int], int] = {}
    tops = [cache_base / "shared", cache_base / "interposer" / "x"]
    tops += list((cache_base / "interposer" / "r").glob("*/*/d"))
    for top in tops:
        for dirpath, dirs, names in os.walk(top):
            dirs[:] = [d for d in dirs if d not in _NOT_OBJECTS]
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(os.path.join(dirpath, name))
                    if stat.S_ISREG(st.st_mode):
                        held[(st.st_dev, st.st_ino)] = st.st_size
    return sum(held.values())
