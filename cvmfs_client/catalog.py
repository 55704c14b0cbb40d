"""Reading file catalogs: rows in, typed entries out, hostile rows refused.

Format facts this module relies on (spec section 5):
- paths are absolute inside the repository, the root is ``""`` (not ``/``); rows are keyed by
  the MD5 of the path split into two little-endian signed int64 (5.4);
- columns are selected by name because upgraded catalogs append columns (5.2);
- the content hash algorithm and compression of a file, and of its chunks, come from the file
  row's flags (5.5, 6.1);
- a catalog whose ``root_prefix`` differs from where it is mounted (bind mountpoints) is keyed
  by ``root_prefix + (path - mountpoint)`` (5.9).

A catalog is data from the network: its hash was verified, but the publisher may be hostile
or buggy, so names that could escape a directory, nested catalogs that could loop, and
malformed blobs raise :class:`~cvmfs_client.errors.HostileCatalog`.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from . import catalog_schema as schema
from .errors import CatalogError, CorruptObject, HostileCatalog, UnknownHashAlgorithm
from .hashing import DIGEST_SIZE, ContentHash, HashAlgorithm
from .objects import Compression

# Flag bits (spec 5.5, cvmfs/cvmfs:cvmfs/catalog_sql.h SqlDirent).
FLAG_DIR = 1
FLAG_NESTED_MOUNTPOINT = 2
FLAG_FILE = 4
FLAG_LINK = 8
FLAG_SPECIAL = 16
FLAG_NESTED_ROOT = 32
FLAG_CHUNKED = 64
FLAG_EXTERNAL = 128
FLAG_HASH_MASK = 0x700
FLAG_COMPRESSION_MASK = 0x3800
FLAG_BIND_MOUNTPOINT = 0x4000
FLAG_HIDDEN = 0x8000
FLAG_DIRECT_IO = 0x10000

DEFAULT_TTL = 240  # seconds, when the root catalog has no TTL property (spec 5.3)
# Byte 0 of a packed xattr blob (cvmfs/cvmfs:cvmfs/xattr.h, xattr.cc XattrEntrySerializer):
# version 1 gives each value's length in one byte; version 2 (CernVM-FS 2.12, written when a
# value is longer than 255 bytes) in two, little-endian, values below 64 KiB. Earlier clients
# refuse version 2 blobs.
XATTR_VERSION = 1
XATTR_VERSION_BIG = 2
XATTR_BIG_VALUE_MAX = 64 * 1024 - 1
MAX_XATTRS = 256  # cvmfs/cvmfs:cvmfs/xattr.h kMaxNumXattrs
_NULL_DIGEST = bytes(DIGEST_SIZE)  # "no previous revision" is written as 40 zeros
# Directory rows remembered per open catalog (:meth:`Catalog.lookup`): resolving a path looks
# up every parent directory again; a catalog never changes, so a remembered row stays right.
# Files are not remembered: each is looked up about once, and with them in an LRU a walk over
# more files than it holds would push out the directories that every lookup needs.
LOOKUP_MEMO_DIRS = 4096
_LOW32 = 0xFFFFFFFF


def md5path(path: str) -> tuple[int, int]:
    """Row key of ``path``: MD5 split into two little-endian signed int64 (spec 5.4).

    The root is ``""``; callers must not pass ``/`` or trailing slashes. Non-UTF-8 names read
    with ``surrogateescape`` hash back to their stored bytes.
    """
    digest = hashlib.md5(path.encode("utf-8", "surrogateescape")).digest()
    first, second = struct.unpack("<qq", digest)
    return first, second


def parse_xattrs(blob: bytes, source: str) -> dict[str, bytes]:
    """Unpack an xattr BLOB (spec 5.7): version, count, then (klen, vlen, key, value)...,
    ``vlen`` one byte in version 1 and two (little-endian) in version 2.

    Anything that does not parse exactly (trailing bytes, empty or NUL keys, duplicates) is
    refused: a client must not guess what a publisher meant by a malformed blob.
    """
    if len(blob) == 0:
        return {}
    if len(blob) < 2:
        raise HostileCatalog(source, "xattr blob shorter than its header")
    if blob[0] not in (XATTR_VERSION, XATTR_VERSION_BIG):
        raise HostileCatalog(
            source, f"xattr blob version {blob[0]}, expected {XATTR_VERSION} or {XATTR_VERSION_BIG}"
        )
    head = 2 if blob[0] == XATTR_VERSION else 3
    count = blob[1]
    pos = 2
    out: dict[str, bytes] = {}
    for _ in range(count):
        if pos + head > len(blob):
            raise HostileCatalog(source, "xattr blob truncated in an entry header")
        klen = blob[pos]
        vlen = blob[pos + 1] if head == 2 else blob[pos + 1] | blob[pos + 2] << 8
        pos += head
        if pos + klen + vlen > len(blob):
            raise HostileCatalog(source, "xattr blob truncated in a key or value")
        key_raw = blob[pos : pos + klen]
        value = blob[pos + klen : pos + klen + vlen]
        pos += klen + vlen
        if not key_raw or b"\0" in key_raw:
            raise HostileCatalog(source, f"xattr key {key_raw!r} is empty or contains NUL")
        key = key_raw.decode("utf-8", "surrogateescape")
        if key in out:
            raise HostileCatalog(source, f"xattr key {key!r} appears twice")
        out[key] = value
    if pos != len(blob):
        raise HostileCatalog(source, f"{len(blob) - pos} bytes after the last xattr")
    return out


def encode_xattrs(xattrs: Mapping[str, bytes]) -> bytes | None:
    """Pack xattrs as the publisher does (bytewise key order); ``None`` when there are none."""
    if not xattrs:
        return None
    if len(xattrs) > MAX_XATTRS - 1:  # the count must fit in one byte
        raise ValueError(f"{len(xattrs)} extended attributes, at most {MAX_XATTRS - 1} fit")
    items = sorted((k.encode("utf-8", "surrogateescape"), bytes(v)) for k, v in xattrs.items())
    big = any(len(value) > 255 for _, value in items)  # as CernVM-FS 2.12: version 2 only then
    out = bytearray((XATTR_VERSION_BIG if big else XATTR_VERSION, len(items)))
    for key, value in items:
        if not key or b"\0" in key or len(key) > 255 or len(value) > XATTR_BIG_VALUE_MAX:
            raise ValueError(f"xattr {key!r}: key must be 1-255 bytes without NUL, value < 64 KiB")
        size = len(value).to_bytes(2, "little") if big else bytes((len(value),))
        out += bytes((len(key),)) + size + key + value
    return bytes(out)


def check_name(name: str) -> str | None:
    """Why ``name`` cannot be a directory entry name, or ``None`` if it can."""
    if name in ("", ".", ".."):
        return f"entry name {name!r} is not allowed"
    if "/" in name or "\0" in name:
        return f"entry name {name!r} contains '/' or NUL"
    return None


def check_abs_path(path: str) -> str | None:
    """Why ``path`` is not a normalized absolute repository path (``/a/b``), or ``None``."""
    if not path.startswith("/") or path.endswith("/"):
        return f"path {path!r} is not absolute or ends with '/'"
    for part in path[1:].split("/"):
        why = check_name(part)
        if why is not None:
            return f"path {path!r}: {why}"
    return None


def normalize_path(path: str) -> str:
    """Validate a repository path given by a caller; ``/`` is accepted as the root ``""``."""
    if path in ("", "/"):
        return ""
    why = check_abs_path(path)
    if why is not None:
        raise ValueError(why)
    return path


def is_below(path: str, prefix: str, strictly: bool = False) -> bool:
    """Whether ``path`` is ``prefix`` or inside it, respecting component boundaries."""
    if path == prefix:
        return not strictly
    return path.startswith(prefix + "/")


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One catalog row, decoded. ``path`` is absolute inside the repository (root ``""``)."""

    path: str
    name: str
    mode: int
    size: int
    mtime: int
    flags: int
    mtime_ns: int | None = None  # nanosecond part, NULL when unknown (rev >= 7)
    uid: int = 0
    gid: int = 0
    hardlinks: int = 1  # raw: (group << 32) | link count
    content_hash: ContentHash | None = None
    symlink: str = ""  # raw target, may contain $(VAR)
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return bool(self.flags & FLAG_DIR)

    @property
    def is_symlink(self) -> bool:
        return bool(self.flags & FLAG_LINK)

    @property
    def is_special(self) -> bool:
        return bool(self.flags & FLAG_SPECIAL)

    @property
    def is_regular(self) -> bool:
        return not (self.flags & (FLAG_DIR | FLAG_LINK | FLAG_SPECIAL))

    @property
    def is_chunked(self) -> bool:
        return bool(self.flags & FLAG_CHUNKED)

    @property
    def is_external(self) -> bool:
        return bool(self.flags & FLAG_EXTERNAL)

    @property
    def is_nested_mountpoint(self) -> bool:
        return bool(self.flags & FLAG_NESTED_MOUNTPOINT)

    @property
    def is_nested_root(self) -> bool:
        return bool(self.flags & FLAG_NESTED_ROOT)

    @property
    def is_bind_mountpoint(self) -> bool:
        return bool(self.flags & FLAG_BIND_MOUNTPOINT)

    @property
    def is_hidden(self) -> bool:
        return bool(self.flags & FLAG_HIDDEN)

    @property
    def is_direct_io(self) -> bool:
        return bool(self.flags & FLAG_DIRECT_IO)

    @property
    def nlink(self) -> int:
        """Link count: lower 32 bits of ``hardlinks``, never reported as 0."""
        return max(1, self.hardlinks & _LOW32)

    @property
    def hardlink_group(self) -> int:
        """Upper 32 bits of ``hardlinks``; 0 = not hardlinked; unique only inside one catalog."""
        return self.hardlinks >> 32

    @property
    def hash_algorithm(self) -> HashAlgorithm:
        return HashAlgorithm.from_flags(self.flags, self.path or "/")

    @property
    def compression(self) -> Compression:
        return Compression.from_flags(self.flags, self.path or "/")

    @property
    def file_type(self) -> str:
        """``d`` directory, ``l`` symlink, ``s`` special, ``f`` regular file."""
        if self.is_dir:
            return "d"
        if self.is_symlink:
            return "l"
        if self.is_special:
            return "s"
        return "f"


@dataclass(frozen=True, slots=True)
class Chunk:
    """A byte range of a chunked file; its object is ``content_hash`` + ``P``.

    Compression is not stored per chunk: it is the file entry's ``compression``.
    """

    offset: int
    size: int
    content_hash: ContentHash


@dataclass(frozen=True, slots=True)
class NestedRef:
    """A nested catalog (or bind mountpoint) row; ``content_hash`` is ``None`` when unusable."""

    path: str
    content_hash: ContentHash | None
    size: int
    is_bind: bool = False


# Mode type bits each flag kind must agree with (the real client takes the type from mode).
_SPECIAL_TYPES = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)
# flags' hash algorithm field (bits 8-10) is the HashAlgorithm value - 1
_ALGORITHMS_BY_ID = {a.value - 1: a for a in HashAlgorithm}


def _type_agrees(flags: int, mode: int) -> bool:
    """Whether a row's type flags and its mode's file type say the same."""
    fmt = stat.S_IFMT(mode)
    if flags & FLAG_DIR:
        return fmt == stat.S_IFDIR and not flags & FLAG_FILE
    if flags & FLAG_LINK:
        return fmt == stat.S_IFLNK
    if flags & FLAG_SPECIAL:
        return fmt in _SPECIAL_TYPES
    return fmt == stat.S_IFREG


class Catalog:
    """One opened catalog database, mounted at ``mountpoint`` (``None``: its ``root_prefix``).

    Thread-safe: each query checks a connection out of the engine's pool, except
    :meth:`lookup`, the query of every path resolution: it runs its SQL (rendered once from the
    SQLAlchemy statement) on a DB-API connection of its own per thread, which costs a fifth of
    a checkout, a Core execution and its result rows.
    """

    def __init__(self, db_path: Path, source: str, mountpoint: str | None = None) -> None:
        self.db_path = Path(db_path)
        self.source = source
        if not self.db_path.is_file():
            raise CatalogError(source, f"catalog file {self.db_path} does not exist")
        self._engine = schema.readonly_engine(self.db_path)
        self._closed = False
        self._nested: list[NestedRef] | None = None
        try:
            self._columns = self._table_columns()
            self._props = self._read_properties()
            self._parse_properties()
            self._entry_columns = self._choose_entry_columns()
            self.mountpoint = self.root_prefix if mountpoint is None else normalize_path(mountpoint)
            c = schema.catalog.c
            lookup = self._entry_select().where(
                c.md5path_1 == sa.bindparam("m1"), c.md5path_2 == sa.bindparam("m2")
            )
            self._lookup_sql = str(lookup.compile(dialect=self._engine.dialect))  # "?" parameters
            self._fast_columns = self._choose_fast_columns()
            self._dirs: dict[str, DirEntry] = {}
            self._local = threading.local()
            self._raw: list[sqlite3.Connection] = []  # every thread's, closed by close()
            self._raw_lock = threading.Lock()
        except BaseException:
            self._engine.dispose()
            raise

    # ----- opening -------------------------------------------------------------------------

    def _execute(self, stmt: sa.Executable) -> list[sa.Row[Any]]:
        if self._closed:
            raise CatalogError(self.source, "catalog is closed")
        try:
            with self._engine.connect() as conn:
                return list(conn.execute(stmt).all())
        except sa.exc.DBAPIError as exc:
            raise CatalogError(self.source, f"SQLite: {exc.orig}") from None
        except UnicodeError as exc:  # sqlite3 decodes names and error messages strictly
            raise CatalogError(
                self.source, f"SQLite: undecodable text in a damaged database: {exc}"
            ) from None

    def _table_columns(self) -> dict[str, set[str]]:
        """Tables and their columns as they are in the file (upgraded catalogs differ)."""
        try:
            with self._engine.connect() as conn:
                insp = sa.inspect(conn)
                return {t: {c["name"] for c in insp.get_columns(t)} for t in insp.get_table_names()}
        except sa.exc.DBAPIError as exc:
            raise CatalogError(self.source, f"not a usable SQLite database: {exc.orig}") from None
        except UnicodeError as exc:
            raise CatalogError(
                self.source, f"not a usable SQLite database: undecodable text: {exc}"
            ) from None

    def _read_properties(self) -> dict[str, str]:
        if "properties" not in self._columns:
            return {}
        rows = self._execute(sa.select(schema.properties.c.key, schema.properties.c.value))
        return {str(k): str(v) for k, v in rows if k is not None and v is not None}

    def _parse_properties(self) -> None:
        props = self._props
        try:
            # Missing schema -> 1.0, missing revision -> 0 (cvmfs/cvmfs:cvmfs/sql_impl.h).
            self.schema = float(props.get("schema", "1.0"))
            self.schema_revision = int(props.get("schema_revision", "0"))
            self.revision = int(props.get("revision", "0"))
            self.ttl = int(props.get("TTL", str(DEFAULT_TTL)))
            lm = props.get("last_modified")
            self.last_modified = int(lm) if lm else None
        except ValueError as exc:
            raise CatalogError(self.source, f"malformed property: {exc}") from None
        if not self._schema_supported(self.schema):
            raise CatalogError(
                self.source, f"unsupported catalog schema {self.schema} (need < 2.0, 2.4 or 2.5)"
            )
        self.volatile = props.get("volatile", "0") not in ("", "0")
        self.root_prefix = props.get("root_prefix", "")
        if self.root_prefix in ("/",):
            self.root_prefix = ""
        if self.root_prefix:
            why = check_abs_path(self.root_prefix)
            if why is not None:
                raise HostileCatalog(self.source, f"root_prefix: {why}")
        self.previous_revision = self._parse_previous(props.get("previous_revision", ""))

    @staticmethod
    def _schema_supported(version: float) -> bool:
        # cvmfs/cvmfs:cvmfs/catalog_sql.cc CheckSchemaCompatibility.
        eps = schema.SCHEMA_EPSILON
        if version < 2.0 - eps:
            return True
        return abs(version - 2.4) < eps or abs(version - 2.5) < eps

    def _parse_previous(self, text: str) -> ContentHash | None:
        if not text:
            return None
        try:
            h = ContentHash.from_hex(text, f"{self.source} previous_revision")
        except UnknownHashAlgorithm as exc:
            raise CatalogError(self.source, exc.reason) from None
        return None if h.digest == _NULL_DIGEST else h

    @property
    def _legacy(self) -> bool:
        """Schema < 2.1: ``inode`` instead of ``hardlinks``, no uid/gid, SHA-1 only."""
        return self.schema < 2.1 - schema.SCHEMA_EPSILON

    def _choose_entry_columns(self) -> list[str]:
        names = ["md5path_1", "md5path_2", "parent_1", "parent_2", "hash", "size", "mode", "mtime"]
        names += ["flags", "name", "symlink"]
        names += ["inode"] if self._legacy else ["hardlinks", "uid", "gid"]
        if not self._legacy and self.schema_revision >= 2:
            names.append("xattr")
        if self.schema_revision >= 7:
            names.append("mtimens")
        present = self._columns.get("catalog")
        if present is None:
            raise CatalogError(self.source, "no catalog table")
        missing = [n for n in names if n not in present]
        if missing:
            raise CatalogError(self.source, f"catalog table lacks column(s) {', '.join(missing)}")
        return names

    def _choose_fast_columns(self) -> tuple[int, ...] | None:
        """Positions of the row fields :meth:`_decode_row` reads (-1: absent, read as NULL);
        None for legacy catalogs, which always take the general path."""
        if self._legacy:
            return None
        where = {n: i for i, n in enumerate(self._entry_columns)}
        fields = ("name", "flags", "mode", "size", "mtime", "hardlinks", "uid", "gid", "hash", "symlink")
        return tuple(where[n] for n in fields) + (where.get("mtimens", -1), where.get("xattr", -1))

    def _entry_select(self) -> sa.Select[Any]:
        table = schema.catalog.c
        cols = [table[n] if n in table else sa.literal_column(n) for n in self._entry_columns]
        return sa.select(*cols).select_from(schema.catalog)

    # ----- path translation (spec 5.9, bind mountpoints) -----------------------------------

    def _to_catalog(self, path: str) -> str:
        if not is_below(path, self.mountpoint):
            raise ValueError(f"{path!r} is not inside catalog {self.source} mounted at {self.mountpoint!r}")
        return self.root_prefix + path[len(self.mountpoint) :]

    def _to_repo(self, cpath: str) -> str:
        return self.mountpoint + cpath[len(self.root_prefix) :]

    # ----- rows ----------------------------------------------------------------------------

    def _hostile(self, what: str, reason: str) -> HostileCatalog:
        return HostileCatalog(self.source, f"{what}: {reason}")

    def _int(self, value: object, what: str, column: str, nullable: bool = False) -> int | None:
        if value is None and nullable:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._hostile(what, f"column {column} is {value!r}, not an integer")
        return value

    def _make_entry(self, row: Mapping[str, Any], cpath: str) -> DirEntry:
        """Decode and validate a row found at catalog path ``cpath``."""
        repo_path = self._to_repo(cpath)
        name = row["name"]
        what = f"row {name!r} at {repo_path or '/'!r}"
        if not isinstance(name, str):
            raise self._hostile(what, "name is not text")
        expected = cpath.rpartition("/")[2]
        if name != expected:
            raise self._hostile(what, f"name does not match the path's last component {expected!r}")
        flags = self._int(row["flags"], what, "flags")
        mode = self._int(row["mode"], what, "mode")
        size = self._int(row["size"], what, "size")
        mtime = self._int(row["mtime"], what, "mtime")
        assert flags is not None and mode is not None and size is not None and mtime is not None
        if size < 0:
            raise self._hostile(what, f"negative size {size}")
        if not 0 <= mode <= _LOW32:  # mode_t is 32 bits; stat.S_IFMT raises OverflowError beyond
            raise self._hostile(what, f"mode {mode} is not a 32-bit unsigned value")
        if not self._legacy:
            self._check_type(flags, mode, what)
        if self._legacy:
            hardlinks, uid, gid = 1, os.getuid(), os.getgid()  # the client substitutes its own ids
        else:
            hardlinks = self._int(row["hardlinks"], what, "hardlinks")
            uid = self._int(row["uid"], what, "uid")
            gid = self._int(row["gid"], what, "gid")
            assert hardlinks is not None and uid is not None and gid is not None
        mtime_ns = self._int(row["mtimens"], what, "mtimens", nullable=True) if "mtimens" in row else None
        symlink = row["symlink"]
        if symlink is None:
            symlink = ""
        if not isinstance(symlink, str):
            raise self._hostile(what, "symlink is not text")
        xattrs: dict[str, bytes] = {}
        blob = row.get("xattr")
        if blob is not None:
            if not isinstance(blob, bytes):
                raise self._hostile(what, "xattr is not a BLOB")
            xattrs = parse_xattrs(blob, f"{self.source} {what}")
        content_hash = self._content_hash(row["hash"], flags, what)
        # The root of a bind-mounted catalog is presented under its mountpoint's name.
        shown_name = repo_path.rpartition("/")[2]
        return DirEntry(
            path=repo_path,
            name=shown_name,
            mode=mode,
            size=size,
            mtime=mtime,
            flags=flags,
            mtime_ns=mtime_ns,
            uid=uid,
            gid=gid,
            hardlinks=hardlinks,
            content_hash=content_hash,
            symlink=symlink,
            xattrs=xattrs,
        )

    def _check_type(self, flags: int, mode: int, what: str) -> None:
        if not _type_agrees(flags, mode):
            raise self._hostile(what, f"flags {flags:#x} disagree with mode {mode:#o}")

    def _content_hash(self, raw: object, flags: int, what: str) -> ContentHash | None:
        if raw is None or raw == b"":
            return None
        if not isinstance(raw, bytes) or len(raw) != DIGEST_SIZE:
            raise self._hostile(what, f"hash {raw!r} is not a {DIGEST_SIZE}-byte BLOB")
        if self._legacy:
            return ContentHash(HashAlgorithm.SHA1, raw)  # 1.x catalogs are SHA-1 only
        algo = HashAlgorithm.from_flags(flags, f"{self.source} {what}")
        return ContentHash(algo, raw)

    # ----- public queries ------------------------------------------------------------------

    def lookup(self, path: str) -> DirEntry | None:
        """The row of ``path`` in this catalog, or ``None`` (it may live in a nested catalog)."""
        if self._closed:
            raise CatalogError(self.source, "catalog is closed")
        cpath = self._to_catalog(normalize_path(path))
        entry = self._dirs.get(cpath)
        if entry is None:
            entry = self._lookup_row(cpath)
            if entry is not None and entry.is_dir:
                if len(self._dirs) >= LOOKUP_MEMO_DIRS:
                    self._dirs.clear()
                self._dirs[cpath] = entry
        return entry

    def _lookup_row(self, cpath: str) -> DirEntry | None:
        try:
            row = self._raw_connection().execute(self._lookup_sql, md5path(cpath)).fetchone()
        except sqlite3.Error as exc:
            raise CatalogError(self.source, f"SQLite: {exc}") from None
        except UnicodeError as exc:  # sqlite3 decodes names and error messages strictly
            raise CatalogError(
                self.source, f"SQLite: undecodable text in a damaged database: {exc}"
            ) from None
        if row is None:
            return None
        return self._decode_row(row, cpath)

    def _decode_row(self, row: Sequence[Any], cpath: str) -> DirEntry:
        """:meth:`_make_entry` for the usual row, ~2x faster (cold reads look up every file).

        Same checks; any row it is not sure about (a legacy schema, xattrs, anything that would
        fail a check) is decoded by :meth:`_make_entry`, which names the problem.
        """
        fast = self._fast_columns
        if fast is not None:
            name, flags, mode, size, mtime, hardlinks, uid, gid, raw_hash, symlink, mtime_ns, xattr = (
                row[i] if i >= 0 else None for i in fast
            )
            if (
                xattr is None
                and type(flags) is int
                and type(mode) is int
                and type(size) is int
                and type(mtime) is int
                and type(hardlinks) is int
                and type(uid) is int
                and type(gid) is int
                and (mtime_ns is None or type(mtime_ns) is int)
                and (symlink is None or type(symlink) is str)
                and size >= 0
                and 0 <= mode <= _LOW32
                and type(name) is str
                and name == cpath.rpartition("/")[2]
                and _type_agrees(flags, mode)
                and (raw_hash is None or (type(raw_hash) is bytes and len(raw_hash) in (0, DIGEST_SIZE)))
            ):
                content_hash = None
                if raw_hash:
                    algo = _ALGORITHMS_BY_ID.get((flags >> 8) & 7)
                    if algo is None:
                        return self._make_entry(dict(zip(self._entry_columns, row, strict=True)), cpath)
                    content_hash = ContentHash(algo, raw_hash)
                repo_path = self._to_repo(cpath)
                return DirEntry(
                    repo_path,
                    repo_path.rpartition("/")[2],
                    mode,
                    size,
                    mtime,
                    flags,
                    mtime_ns,
                    uid,
                    gid,
                    hardlinks,
                    content_hash,
                    symlink or "",
                    {},
                )
        return self._make_entry(dict(zip(self._entry_columns, row, strict=True)), cpath)

    def _raw_connection(self) -> sqlite3.Connection:
        """This thread's DB-API connection (a new one after ``fork``: SQLite's are not shared)."""
        held = getattr(self._local, "held", None)
        if held is None or held[0] != os.getpid():
            conn = schema.readonly_connection(self.db_path)
            with self._raw_lock:
                self._raw.append(conn)
            held = self._local.held = (os.getpid(), conn)
        return held[1]

    def listdir(self, path: str) -> list[DirEntry]:
        """Visible children of directory ``path`` stored in this catalog, sorted by name bytes.

        Hidden entries (flag 0x8000, e.g. ``/.cvmfs``) are validated but not listed.
        """
        cpath = self._to_catalog(normalize_path(path))
        p1, p2 = md5path(cpath)
        c = schema.catalog.c
        rows = self._execute(self._entry_select().where(c.parent_1 == p1, c.parent_2 == p2))
        out: list[DirEntry] = []
        at = self._entry_columns.index
        i_name, i_md5_1, i_md5_2 = at("name"), at("md5path_1"), at("md5path_2")
        for row in rows:
            name = row[i_name]
            why = "name is not text" if not isinstance(name, str) else check_name(name)
            child = f"{cpath}/{name}"
            if why is None and (row[i_md5_1], row[i_md5_2]) != md5path(child):
                why = "md5path does not match parent path + name"
            if why is not None:  # the row's context is formatted for an error only
                raise self._hostile(f"row {name!r} in {self._to_repo(cpath) or '/'!r}", why)
            entry = self._decode_row(row, child)  # the lookups' decoder, faster than _make_entry
            if not entry.is_hidden:
                out.append(entry)
        out.sort(key=lambda e: e.name.encode("utf-8", "surrogateescape"))
        return out

    def chunks(self, entry: DirEntry) -> list[Chunk]:
        """Chunks of a chunked file in offset order, checked to cover ``entry.size`` exactly.

        The algorithm comes from the file entry's flags (spec 6.1); unchunked entries give ``[]``.
        """
        if not entry.is_chunked or self.schema < 2.4 - schema.SCHEMA_EPSILON:
            return []
        cpath = self._to_catalog(normalize_path(entry.path))
        m1, m2 = md5path(cpath)
        t = schema.chunks.c
        rows = self._execute(
            sa.select(t.offset, t.size, t.hash).where(t.md5path_1 == m1, t.md5path_2 == m2).order_by(t.offset)
        )
        what = f"chunks of {entry.path!r}"
        if not rows:
            # The real client answers EIO for a chunked file without chunk rows (spec 6.1).
            raise CorruptObject(self.source, f"{what}: file is flagged chunked but has no chunk rows")
        algo = entry.hash_algorithm
        out: list[Chunk] = []
        expected = 0
        for offset, size, digest in rows:
            offset = self._int(offset, what, "offset")
            size = self._int(size, what, "size")
            assert offset is not None and size is not None
            if offset != expected or size <= 0:
                raise self._hostile(what, f"chunk {offset}+{size} leaves a gap or overlaps at {expected}")
            if not isinstance(digest, bytes) or len(digest) != DIGEST_SIZE:
                raise self._hostile(what, f"chunk at {offset}: hash {digest!r} is not a 20-byte BLOB")
            out.append(Chunk(offset, size, ContentHash(algo, digest)))
            expected += size
        if expected != entry.size:
            raise self._hostile(what, f"chunks cover {expected} bytes, file size is {entry.size}")
        return out

    def nested_catalogs(self) -> list[NestedRef]:
        """Nested catalogs (and, for schema 2.5 rev >= 4, bind mountpoints), sorted by path."""
        if self._nested is None:
            refs = self._nested_rows("nested_catalogs", schema.nested_catalogs, is_bind=False)
            if abs(self.schema - 2.5) < schema.SCHEMA_EPSILON and self.schema_revision >= 4:
                refs += self._nested_rows("bind_mountpoints", schema.bind_mountpoints, is_bind=True)
            refs.sort(key=lambda r: r.path.encode("utf-8", "surrogateescape"))
            self._nested = refs
        return list(self._nested)

    def _nested_rows(self, table_name: str, table: sa.Table, is_bind: bool) -> list[NestedRef]:
        present = self._columns.get(table_name)
        if present is None:
            if is_bind:
                raise CatalogError(self.source, f"revision {self.schema_revision} but no {table_name} table")
            return []
        cols = [table.c.path]
        # Schema 1.0 without sha1 is "0.9": nested hashes unusable; rev 0 has no size (spec 5.2).
        cols += [table.c.sha1] if "sha1" in present else []
        cols += [table.c.size] if "size" in present else []
        out: list[NestedRef] = []
        for row in self._execute(sa.select(*cols)):
            m = row._mapping
            path = m["path"]
            what = f"{table_name} row {path!r}"
            if not isinstance(path, str):
                raise self._hostile(what, "path is not text")
            why = check_abs_path(path)
            if why is not None:
                raise self._hostile(what, why)
            if not is_below(path, self.root_prefix, strictly=True):
                raise self._hostile(what, f"not strictly below the catalog root {self.root_prefix or '/'!r}")
            sha1 = m.get("sha1")
            content_hash: ContentHash | None = None
            if sha1 not in (None, ""):
                if not isinstance(sha1, str):
                    raise self._hostile(what, "sha1 is not text")
                try:
                    content_hash = ContentHash.from_hex(sha1, what)
                except UnknownHashAlgorithm as exc:
                    raise self._hostile(what, exc.reason) from None
            size = self._int(m.get("size", 0), what, "size", nullable=True) or 0
            if size < 0:
                raise self._hostile(what, f"negative size {size}")
            out.append(NestedRef(self._to_repo(path), content_hash, size, is_bind))
        return out

    def find_nested(self, path: str, for_listing: bool = False) -> NestedRef | None:
        """The nested catalog of this catalog that holds ``path`` (spec 5.9), or ``None``.

        A mountpoint's own stat row lives in the parent, so ``path == mountpoint`` matches only
        ``for_listing`` (its children live in the child catalog). Prefixes respect component
        boundaries: ``/a/bc`` is not under ``/a/b``. The outermost match wins.
        """
        p = normalize_path(path)
        best: NestedRef | None = None
        for ref in self.nested_catalogs():
            if is_below(p, ref.path) and (best is None or len(ref.path) < len(best.path)):
                best = ref
        if best is None or (best.path == p and not for_listing):
            return None
        return best

    def statistics(self) -> dict[str, int]:
        """Counters (``self_*``, ``subtree_*``); empty before schema 2.4 (spec 5.2)."""
        if self.schema < 2.4 - schema.SCHEMA_EPSILON or "statistics" not in self._columns:
            return {}
        t = schema.statistics.c
        out: dict[str, int] = {}
        for counter, value in self._execute(sa.select(t.counter, t.value)):
            if not isinstance(counter, str) or not isinstance(value, int):
                raise self._hostile(f"statistics row {counter!r}", f"value {value!r} is not an integer")
            out[counter] = value
        return out

    @property
    def properties(self) -> dict[str, str]:
        """All raw properties, as stored (text)."""
        return dict(self._props)

    # ----- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._dirs.clear()
            with self._raw_lock:
                raw, self._raw = self._raw, []
            for conn in raw:
                conn.close()
            self._engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({self.source!r}, mountpoint={self.mountpoint!r}, revision={self.revision})"
