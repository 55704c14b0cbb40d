"""Forge small, correctly signed repositories whose catalogs say hostile things.

The signatures are valid (made with keys generated for the test), so only the client's own
defences stand between these catalogs and the user: exactly what the hostile-catalog tests need.
"""

from __future__ import annotations

import sqlite3
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cvmfs_client.catalog import DirEntry
from cvmfs_client.catalog_writer import CatalogWriter, make_flags
from cvmfs_client.hashing import ContentHash, HashAlgorithm, ObjectType
from cvmfs_client.keys import RepositoryKeys, ensure_repository_keys
from cvmfs_client.manifest import Manifest, render_manifest, sign_manifest
from cvmfs_client.objects import Compression, encode
from cvmfs_client.whitelist import render_whitelist, sign_whitelist

ALGO = HashAlgorithm.SHA1
MTIME = 1_750_000_000


def store_object(root: Path, data: bytes, kind: ObjectType = ObjectType.FILE) -> ContentHash:
    stored = encode(data, Compression.ZLIB)
    h = ContentHash.of(ALGO, stored)
    path = root / h.object_path(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(stored)
    return h


def dir_entry(path: str) -> DirEntry:
    return DirEntry(path, path.rpartition("/")[2], stat.S_IFDIR | 0o755, 4096, MTIME, make_flags("d"))


def file_entry(root: Path, path: str, data: bytes) -> DirEntry:
    h = store_object(root, data)
    return DirEntry(
        path,
        path.rpartition("/")[2],
        stat.S_IFREG | 0o644,
        len(data),
        MTIME,
        make_flags("f", algorithm=ALGO),
        content_hash=h,
    )


def link_entry(path: str, target: str) -> DirEntry:
    return DirEntry(
        path,
        path.rpartition("/")[2],
        stat.S_IFLNK | 0o777,
        len(target),
        MTIME,
        make_flags("l"),
        symlink=target,
    )


def build_catalog(
    root: Path,
    work: Path,
    prefix: str,
    entries: list[DirEntry],
    nested: list[tuple[str, ContentHash, int]] = (),  # type: ignore[assignment]
    tamper: Callable[[sqlite3.Connection], None] | None = None,
) -> tuple[ContentHash, int]:
    """Write a catalog (root when ``prefix`` is ""), optionally tamper with its rows, store it."""
    db = work / f"catalog-{time.monotonic_ns()}.sqlite"
    w = CatalogWriter(db, prefix, revision=1, last_modified=MTIME, is_root=not prefix)
    for e in entries:
        w.add_entry(e)
    for path, h, size in nested:
        w.add_nested(path, h, size)
    w.close()
    if tamper is not None:
        con = sqlite3.connect(db)
        tamper(con)
        con.commit()
        con.close()
    data = db.read_bytes()
    return store_object(root, data, ObjectType.CATALOG), len(data)


def sign_repository(
    root: Path, keys_dir: Path, fqrn: str, root_hash: ContentHash, size: int
) -> RepositoryKeys:
    """Certificate object, whitelist and manifest for ``root_hash``: a valid trust chain."""
    keys = ensure_repository_keys(keys_dir, fqrn)
    cert = store_object(root, keys.certificate_pem, ObjectType.CERTIFICATE)
    now = datetime.now(UTC)
    wl = render_whitelist(fqrn, keys.certificate, ALGO, now, now + timedelta(days=30))
    (root / ".cvmfswhitelist").write_bytes(sign_whitelist(wl, keys.master_key, ALGO))
    m = Manifest(
        root_catalog=root_hash,
        root_path_md5="d41d8cd98f00b204e9800998ecf8427e",
        ttl=240,
        revision=1,
        root_catalog_size=size,
        fqrn=fqrn,
        certificate=cert,
        timestamp=int(now.timestamp()),
    )
    (root / ".cvmfspublished").write_bytes(sign_manifest(render_manifest(m), keys.repository_key, ALGO))
    return keys
