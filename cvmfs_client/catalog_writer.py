"""Writing file catalogs exactly as the real publisher does (schema 2.5 revision 7).

What "exactly" covers, checked against catalogs made by CernVM-FS 2.12 (fixtures):
- the DDL and table order (``catalog_schema``);
- the property set and order: ``schema``, ``schema_revision``, then ``TTL`` (root catalog) or
  ``root_prefix`` (nested), ``last_modified``, ``revision``, ``previous_revision``; a brand-new
  nested catalog gets ``previous_revision`` = 40 zeros, as the publisher writes it;
- all 24 ``statistics`` counters, ``self_*`` computed from the rows added here and
  ``subtree_*`` given by the caller (the sum of self + subtree of every nested catalog below);
- row encoding: md5path/parent split (spec 5.4), flags (5.5), ``hardlinks`` = group << 32 | nlink
  (5.6), NULL hash for directories, symlinks and chunked files, ``''`` symlink for non-links,
  NULL xattr when there are none.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

import sqlalchemy as sa

from . import catalog_schema as schema
from .catalog import (
    FLAG_BIND_MOUNTPOINT,
    FLAG_CHUNKED,
    FLAG_DIR,
    FLAG_DIRECT_IO,
    FLAG_EXTERNAL,
    FLAG_FILE,
    FLAG_HIDDEN,
    FLAG_LINK,
    FLAG_NESTED_MOUNTPOINT,
    FLAG_NESTED_ROOT,
    FLAG_SPECIAL,
    Chunk,
    DirEntry,
    check_abs_path,
    check_name,
    encode_xattrs,
    is_below,
    md5path,
)
from .hashing import ContentHash, HashAlgorithm
from .objects import Compression

_NULL_HASH_HEX = "0" * 40  # what the publisher writes for "no previous revision"
_TYPE_FLAGS = {"d": FLAG_DIR, "f": FLAG_FILE, "l": FLAG_FILE | FLAG_LINK, "s": FLAG_FILE | FLAG_SPECIAL}


def make_flags(
    file_type: str,
    *,
    algorithm: HashAlgorithm | None = None,
    compression: Compression = Compression.ZLIB,
    chunked: bool = False,
    external: bool = False,
    nested_mountpoint: bool = False,
    nested_root: bool = False,
    bind_mountpoint: bool = False,
    hidden: bool = False,
    direct_io: bool = False,
) -> int:
    """Catalog flags of an entry (spec 5.5), as ``CreateDatabaseFlags`` builds them.

    ``file_type`` is ``f``/``d``/``l``/``s``. Pass ``algorithm`` only when the entry has a content
    hash or is chunked: the algorithm bits are written only then (directories and symlinks
    carry 0). Compression bits belong to regular files. Examples: zlib SHA-1 file 4, SHAKE-128
    file 516, chunked SHA-1 file 68, nested mountpoint 3, nested root 33.
    """
    try:
        flags = _TYPE_FLAGS[file_type]
    except KeyError:
        raise ValueError(f"file type {file_type!r} is not one of f, d, l, s") from None
    regular = file_type == "f"
    if (chunked or external) and not regular:
        raise ValueError("only regular files can be chunked or external")
    if (nested_mountpoint or nested_root or bind_mountpoint) and file_type != "d":
        raise ValueError("only directories can be mountpoints or nested roots")
    if chunked and algorithm is None:
        raise ValueError("a chunked file needs the algorithm of its chunk hashes")
    if algorithm is not None:
        flags |= algorithm.flag_bits
    if regular:
        flags |= compression.flag_bits
    for wanted, bit in (
        (chunked, FLAG_CHUNKED),
        (external, FLAG_EXTERNAL),
        (nested_mountpoint, FLAG_NESTED_MOUNTPOINT),
        (nested_root, FLAG_NESTED_ROOT),
        (bind_mountpoint, FLAG_BIND_MOUNTPOINT),
        (hidden, FLAG_HIDDEN),
        (direct_io, FLAG_DIRECT_IO),
    ):
        if wanted:
            flags |= bit
    return flags


def make_hardlinks(group: int, nlink: int) -> int:
    """The ``hardlinks`` column: group id in the upper 32 bits, link count in the lower (5.6)."""
    if not (0 <= group < 1 << 32 and 0 <= nlink < 1 << 32):
        raise ValueError(f"hardlink group {group} / link count {nlink} do not fit in 32 bits")
    return (group << 32) | nlink


def total_statistics(stats: Mapping[str, int]) -> dict[str, int]:
    """Bare counter name -> self + subtree, from a ``Catalog.statistics()`` style mapping.

    Summing this over a catalog's nested children gives its ``subtree`` counters.
    """
    return {n: stats.get(f"self_{n}", 0) + stats.get(f"subtree_{n}", 0) for n in schema.COUNTER_NAMES}


class CatalogWriter:
    """Builds one catalog file; rows go in through ``add_*``, ``close()`` finishes it.

    ``root_prefix`` is ``""`` for the root catalog (``is_root=True``), else the absolute path of
    the nested catalog's root directory. Everything is written in one transaction, so an
    interrupted writer leaves no half-valid catalog (the context manager deletes the file).
    """

    def __init__(
        self,
        path: Path,
        root_prefix: str,
        revision: int,
        ttl: int = 240,
        previous_revision: ContentHash | None = None,
        last_modified: int | None = None,
        *,
        is_root: bool,
    ) -> None:
        self.path = Path(path)
        if is_root and root_prefix:
            raise ValueError(f"a root catalog has root prefix '', not {root_prefix!r}")
        if not is_root:
            why = check_abs_path(root_prefix)
            if why is not None:
                raise ValueError(f"nested catalog root prefix: {why}")
        if self.path.exists():
            raise FileExistsError(f"{self.path}: refusing to overwrite an existing catalog")
        self.root_prefix = root_prefix
        self.is_root = is_root
        self._self = dict.fromkeys(schema.COUNTER_NAMES, 0)
        self._subtree = dict.fromkeys(schema.COUNTER_NAMES, 0)
        self._closed = False
        self._engine = sa.create_engine(sa.URL.create("sqlite+pysqlite", database=str(self.path)))
        self._conn = self._engine.connect()
        self._tx = self._conn.begin()
        schema.create_schema(self._conn, schema.CATALOG_CREATE_ORDER)
        props: list[tuple[str, str]] = [
            ("schema", f"{schema.CATALOG_SCHEMA:.1f}"),
            ("schema_revision", str(schema.CATALOG_SCHEMA_REVISION)),
            ("TTL", str(ttl)) if is_root else ("root_prefix", root_prefix),
            ("last_modified", str(int(time.time()) if last_modified is None else last_modified)),
            ("revision", str(revision)),
        ]
        if previous_revision is not None:
            props.append(("previous_revision", previous_revision.hex))
        elif not is_root:
            props.append(("previous_revision", _NULL_HASH_HEX))
        self._conn.execute(schema.properties.insert(), [{"key": k, "value": v} for k, v in props])

    # ----- rows ----------------------------------------------------------------------------

    def add_entry(self, entry: DirEntry, chunks: Iterable[Chunk] = ()) -> None:
        """Insert ``entry`` (and its chunks); md5path and parent are derived from ``entry.path``.

        The catalog's own root entry gets parent (0, 0) in a root catalog; in a nested catalog
        it gets its parent directory's md5 and flag 32 instead of 2 (spec 5.9).
        """
        self._check_open()
        chunk_list = list(chunks)
        path = entry.path
        if path and check_abs_path(path) is not None:
            raise ValueError(f"entry path: {check_abs_path(path)}")
        if not is_below(path, self.root_prefix):
            raise ValueError(f"{path!r} is outside this catalog's root {self.root_prefix or '/'!r}")
        dirname, _, basename = path.rpartition("/")
        if entry.name != basename:
            raise ValueError(f"entry name {entry.name!r} is not the last component of {path!r}")
        flags = entry.flags
        if path == self.root_prefix:
            if not entry.is_dir:
                raise ValueError(f"catalog root {path or '/'!r} must be a directory")
            parent = (0, 0) if self.is_root else md5path(dirname)
            if not self.is_root:
                flags = (flags & ~FLAG_NESTED_MOUNTPOINT) | FLAG_NESTED_ROOT
        else:
            why = check_name(entry.name)
            if why is not None:
                raise ValueError(why)
            parent = md5path(dirname)
        self._check_content(entry, chunk_list)
        m1, m2 = md5path(path)
        row = {
            "md5path_1": m1,
            "md5path_2": m2,
            "parent_1": parent[0],
            "parent_2": parent[1],
            "hardlinks": entry.hardlinks,
            "hash": entry.content_hash.digest if entry.content_hash is not None else None,
            "size": entry.size,
            "mode": entry.mode,
            "mtime": entry.mtime,
            "mtimens": entry.mtime_ns,
            "flags": flags,
            "name": entry.name,
            "symlink": entry.symlink,
            "uid": entry.uid,
            "gid": entry.gid,
            "xattr": encode_xattrs(entry.xattrs),
        }
        try:
            self._conn.execute(schema.catalog.insert(), row)
        except sa.exc.IntegrityError:
            raise ValueError(f"{path or '/'!r} was already added to {self.path}") from None
        if chunk_list:
            self._conn.execute(
                schema.chunks.insert(),
                [
                    {
                        "md5path_1": m1,
                        "md5path_2": m2,
                        "offset": c.offset,
                        "size": c.size,
                        "hash": c.content_hash.digest,
                    }
                    for c in chunk_list
                ],
            )
        self._count(entry, len(chunk_list))

    @staticmethod
    def _check_content(entry: DirEntry, chunk_list: list[Chunk]) -> None:
        """Refuse rows a reader would reject: hash/flags disagreement, chunks not covering the file."""
        if entry.content_hash is not None and entry.content_hash.algorithm != entry.hash_algorithm:
            raise ValueError(
                f"{entry.path!r}: flags say {entry.hash_algorithm.name}, hash is {entry.content_hash}"
            )
        if bool(chunk_list) != entry.is_chunked:
            raise ValueError(f"{entry.path!r}: chunks given iff the entry is flagged chunked")
        expected = 0
        for c in sorted(chunk_list, key=lambda c: c.offset):
            if c.offset != expected or c.size <= 0:
                raise ValueError(f"{entry.path!r}: chunk {c.offset}+{c.size} leaves a gap or overlaps")
            if c.content_hash.algorithm != entry.hash_algorithm:
                raise ValueError(f"{entry.path!r}: chunk hash {c.content_hash} disagrees with the flags")
            expected += c.size
        if chunk_list and expected != entry.size:
            raise ValueError(f"{entry.path!r}: chunks cover {expected} bytes, size is {entry.size}")

    def _count(self, entry: DirEntry, n_chunks: int) -> None:
        # cvmfs/cvmfs:cvmfs/catalog_counters_impl.h: every row counts, including the catalog
        # root and nested mountpoints; chunked and external files are regular files too.
        s = self._self
        if entry.is_dir:
            s["dir"] += 1
        elif entry.is_symlink:
            s["symlink"] += 1
        elif entry.is_special:
            s["special"] += 1
        else:
            s["regular"] += 1
            s["file_size"] += entry.size
            if entry.is_chunked:
                s["chunked"] += 1
                s["chunked_size"] += entry.size
                s["chunks"] += n_chunks
            if entry.is_external:
                s["external"] += 1
                s["external_file_size"] += entry.size
        if entry.xattrs:
            s["xattr"] += 1

    def add_nested(self, path: str, content_hash: ContentHash, size: int) -> None:
        """Reference a nested catalog; ``size`` is its uncompressed size in bytes."""
        self._add_reference(schema.nested_catalogs, path, content_hash, size)
        self._self["nested"] += 1

    def add_bind_mountpoint(self, path: str, content_hash: ContentHash, size: int) -> None:
        """Bind another root catalog at ``path`` (snapshot directories, spec 5.9)."""
        self._add_reference(schema.bind_mountpoints, path, content_hash, size)

    def _add_reference(self, table: sa.Table, path: str, content_hash: ContentHash, size: int) -> None:
        self._check_open()
        why = check_abs_path(path)
        if why is not None:
            raise ValueError(why)
        if not is_below(path, self.root_prefix, strictly=True):
            raise ValueError(
                f"{path!r} is not strictly below this catalog's root {self.root_prefix or '/'!r}"
            )
        try:
            self._conn.execute(table.insert(), {"path": path, "sha1": content_hash.hex, "size": size})
        except sa.exc.IntegrityError:
            raise ValueError(f"{path!r} is already referenced in {self.path}") from None

    # ----- statistics ----------------------------------------------------------------------

    def self_statistics(self) -> dict[str, int]:
        """Counters of the rows added so far (bare names, e.g. ``regular``)."""
        return dict(self._self)

    def set_subtree_statistics(self, counters: Mapping[str, int]) -> None:
        """Set ``subtree_*`` from bare counter names; missing names count 0."""
        unknown = set(counters) - set(schema.COUNTER_NAMES)
        if unknown:
            raise ValueError(f"unknown counter(s) {', '.join(sorted(unknown))}")
        self._subtree = {n: int(counters.get(n, 0)) for n in schema.COUNTER_NAMES}

    # ----- lifetime ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: catalog writer is closed")

    def close(self) -> Path:
        """Write the statistics, commit and close; returns the catalog's path."""
        if self._closed:
            return self.path
        rows = [{"counter": f"self_{n}", "value": v} for n, v in self._self.items()]
        rows += [{"counter": f"subtree_{n}", "value": v} for n, v in self._subtree.items()]
        rows.sort(key=lambda r: r["counter"])
        self._conn.execute(schema.statistics.insert(), rows)
        self._tx.commit()
        self._finish()
        return self.path

    def abort(self) -> None:
        """Discard everything and remove the file."""
        if not self._closed:
            self._tx.rollback()
            self._finish()
        self.path.unlink(missing_ok=True)

    def _finish(self) -> None:
        self._closed = True
        self._conn.close()
        self._engine.dispose()

    def __enter__(self) -> CatalogWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
