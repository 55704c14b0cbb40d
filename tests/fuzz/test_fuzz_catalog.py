"""Fuzz catalog reading: a real SQLite catalog (written by ``CatalogWriter``) made hostile row by row.

Each input is a list of edits applied with raw ``sqlite3`` to a valid catalog, as ``tests/forge.py``
tampers: updates of any column to any SQLite value (huge, negative, REAL, TEXT, BLOB, NULL,
invalid UTF-8 text), new rows with random names/modes/flags/sizes/hashes/xattr blobs, chunk rows,
``nested_catalogs`` paths, property garbage, dropped tables and columns; or the file's bytes
mutated. The catalog is then opened and walked the way the client uses it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import stat
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from cvmfs_client.catalog import Catalog, Chunk, DirEntry, md5path
from cvmfs_client.catalog_writer import CatalogWriter, make_flags
from cvmfs_client.errors import CvmfsError
from cvmfs_client.hashing import ContentHash, HashAlgorithm

from .common import FUZZ, Property, mutated

_ALGO = HashAlgorithm.SHA1
_H = ContentHash.of(_ALGO, b"x")
_PATHS = ["", "/a", "/a/f", "/a/l", "/x", "/n"]


@lru_cache(maxsize=1)
def _template() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "c.sqlite"
        w = CatalogWriter(db, "", revision=3, last_modified=1_750_000_000, is_root=True)
        dflags = make_flags("d")
        w.add_entry(DirEntry("", "", stat.S_IFDIR | 0o755, 4096, 1, dflags))
        w.add_entry(DirEntry("/a", "a", stat.S_IFDIR | 0o755, 4096, 1, dflags))
        chunks = [Chunk(0, 5, ContentHash.of(_ALGO, b"1")), Chunk(5, 5, ContentHash.of(_ALGO, b"2"))]
        w.add_entry(
            DirEntry(
                "/a/f", "f", stat.S_IFREG | 0o644, 10, 1, make_flags("f", algorithm=_ALGO, chunked=True)
            ),
            chunks,
        )
        w.add_entry(DirEntry("/a/l", "l", stat.S_IFLNK | 0o777, 4, 1, make_flags("l"), symlink="$(X)"))
        w.add_entry(
            DirEntry(
                "/x",
                "x",
                stat.S_IFREG | 0o644,
                1,
                1,
                make_flags("f", algorithm=_ALGO),
                content_hash=_H,
                xattrs={"user.k": b"v"},
            )
        )
        w.add_entry(
            DirEntry("/n", "n", stat.S_IFDIR | 0o755, 4096, 1, make_flags("d", nested_mountpoint=True))
        )
        w.add_nested("/n", _H, 1234)
        w.close()
        return db.read_bytes()


_INT64 = st.integers(-(2**63), 2**63 - 1)
sql_value = st.one_of(
    st.none(),
    _INT64,
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63 - 1, -(2**63), 0o40755, 0o100644, 0o120777]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.binary(max_size=40),
    st.tuples(st.just("rawtext"), st.binary(max_size=20)),  # TEXT holding invalid UTF-8
    st.sampled_from(
        [_H.hex, _H.hex + "-rmd160", "0" * 40, "/a", "/n", "/", "", "2.5", "1.0", "nan", "1e999"]
    ),
)
_COLUMNS = {
    "catalog": [
        "md5path_1",
        "md5path_2",
        "parent_1",
        "parent_2",
        "hardlinks",
        "hash",
        "size",
        "mode",
        "mtime",
        "mtimens",
        "flags",
        "name",
        "symlink",
        "uid",
        "gid",
        "xattr",
    ],
    "chunks": ["md5path_1", "md5path_2", "offset", "size", "hash"],
    "nested_catalogs": ["path", "sha1", "size"],
    "statistics": ["counter", "value"],
    "properties": ["key", "value"],
}
_PROPS = [
    "schema",
    "schema_revision",
    "revision",
    "TTL",
    "last_modified",
    "root_prefix",
    "previous_revision",
    "volatile",
]
name_text = st.one_of(st.sampled_from(["", ".", "..", "a/b", "a\0b", "f", "g", "n"]), st.text(max_size=12))
flags = st.one_of(st.integers(0, 0x1FFFF), _INT64)
mode = st.one_of(
    st.sampled_from([stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777, stat.S_IFIFO | 0o644]),
    st.integers(-(2**40), 2**40),
)
xattr_blob = st.one_of(
    st.binary(max_size=30),
    st.builds(lambda n, rest: bytes([1, n]) + rest, st.integers(0, 255), st.binary(max_size=30)),
)

edit = st.one_of(
    st.tuples(st.just("update"), st.sampled_from(sorted(_COLUMNS)), st.integers(1, 8), st.data(), sql_value),
    st.tuples(
        st.just("entry"),
        st.sampled_from(["", "/a", "/n", "/zz"]),
        name_text,
        mode,
        flags,
        st.one_of(_INT64, st.integers(0, 20)),
        st.one_of(st.none(), st.binary(min_size=0, max_size=24)),
        st.one_of(st.none(), xattr_blob),
        st.booleans(),
    ),
    st.tuples(
        st.just("chunk"),
        st.sampled_from(_PATHS),
        _INT64 | st.integers(0, 12),
        _INT64 | st.integers(0, 6),
        st.binary(max_size=24),
    ),
    st.tuples(
        st.just("nested"),
        st.one_of(st.sampled_from(["/n", "/a", "/", "", "/a/", "/../x", "/n/m"]), st.text(max_size=10)),
        sql_value,
        sql_value,
    ),
    st.tuples(st.just("property"), st.sampled_from(_PROPS), sql_value),
    st.tuples(st.just("drop"), st.sampled_from(sorted(_COLUMNS))),
    st.tuples(st.just("drop_column"), st.sampled_from(sorted(_COLUMNS)), st.data()),
)


def _sql(value: Any) -> Any:
    return value[1] if isinstance(value, tuple) else value


def _placeholder(value: Any) -> str:
    return "CAST(? AS TEXT)" if isinstance(value, tuple) else "?"


def _apply(con: sqlite3.Connection, e: tuple[Any, ...]) -> None:
    kind = e[0]
    if kind == "update":
        _, table, rowid, data, value = e
        col = data.draw(st.sampled_from(_COLUMNS[table]))
        con.execute(
            f'UPDATE {table} SET "{col}" = {_placeholder(value)} WHERE rowid = ?', (_sql(value), rowid)
        )
    elif kind == "entry":
        _, parent, name, mode_, flags_, size, digest, xattr, right_key = e
        path = f"{parent}/{name}"
        m1, m2 = md5path(path) if right_key else (hash(path) & 0xFFFF, 7)
        p1, p2 = md5path(parent)
        con.execute(
            "INSERT INTO catalog (md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash, size, mode,"
            " mtime, flags, name, symlink, uid, gid, xattr) VALUES (?,?,?,?,1,?,?,?,1,?,?,'',0,0,?)",
            (m1, m2, p1, p2, digest, size, mode_, flags_, name, xattr),
        )
    elif kind == "chunk":
        _, path, offset, size, digest = e
        m1, m2 = md5path(path)
        con.execute("INSERT INTO chunks VALUES (?,?,?,?,?)", (m1, m2, offset, size, digest))
    elif kind == "nested":
        _, path, sha1, size = e
        con.execute(
            f"INSERT INTO nested_catalogs VALUES (?, {_placeholder(sha1)}, {_placeholder(size)})",
            (path, _sql(sha1), _sql(size)),
        )
    elif kind == "property":
        _, key, value = e
        con.execute("DELETE FROM properties WHERE key = ?", (key,))
        con.execute(f"INSERT INTO properties VALUES (?, {_placeholder(value)})", (key, _sql(value)))
    elif kind == "drop":
        con.execute(f"DROP TABLE IF EXISTS {e[1]}")
    elif kind == "drop_column":
        _, table, data = e
        con.execute(f'ALTER TABLE {table} DROP COLUMN "{data.draw(st.sampled_from(_COLUMNS[table]))}"')


catalog_input = st.one_of(
    st.tuples(st.just("edits"), st.lists(edit, max_size=6), st.sampled_from([None, "/m/p"])),
    st.tuples(st.just("bytes"), st.deferred(lambda: mutated(_template(), max_edits=6)), st.none()),
)


def _walk(cat: Catalog) -> None:
    cat.properties, cat.statistics(), cat.nested_catalogs()  # noqa: B018
    root = cat.mountpoint
    entry = cat.lookup(root or "/")
    stack = [root]
    seen = 0
    while stack and seen < 50:
        path = stack.pop()
        for e in cat.listdir(path or "/"):
            seen += 1
            e.hash_algorithm, e.compression, e.nlink, e.hardlink_group, e.file_type  # noqa: B018
            cat.lookup(e.path)
            if e.is_dir:
                stack.append(e.path)
            elif e.is_regular:
                cat.chunks(e)
            cat.find_nested(e.path), cat.find_nested(e.path, for_listing=True)  # noqa: B018
    if entry is not None:
        entry.hash_algorithm  # noqa: B018


def check_catalog(spec: tuple[Any, ...]) -> None:
    kind, payload, mountpoint = spec
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "catalog.sqlite"
        if kind == "bytes":
            db.write_bytes(payload)
        else:
            db.write_bytes(_template())
            con = sqlite3.connect(db)
            try:
                for e in payload:
                    with contextlib.suppress(sqlite3.Error):  # an edit the schema refuses: skip it
                        _apply(con, e)
                con.commit()
            finally:
                con.close()
        try:
            with Catalog(db, "fuzz", mountpoint=mountpoint) as cat:
                _walk(cat)
        except CvmfsError:
            pass


PROPERTIES: dict[str, Property] = {"catalog.Catalog": (catalog_input, check_catalog)}


def _bad_schema_text() -> bytes:
    """The template with "CREATE TABLE catalog" spelled "CREATE \\x80ABLE": SQLite's error message
    then holds invalid UTF-8, which sqlite3 decodes strictly (UnicodeDecodeError)."""
    data = bytearray(_template())
    data[data.index(b"CREATE TABLE catalog") + 7] = 0x80
    return bytes(data)


@FUZZ
@given(catalog_input)
# Regression (found by bench/fuzz.py): UnicodeDecodeError escaped instead of CatalogError.
@example(("bytes", _bad_schema_text(), None))
# Regression: a negative or > 32-bit mode made stat.S_IFMT raise OverflowError.
@example(("edits", [("entry", "/a", "g", -1, make_flags("f"), 0, None, None, True)], None))
@example(("edits", [("entry", "/a", "g", 2**40, make_flags("f"), 0, None, None, True)], None))
def test_catalog(spec: tuple[Any, ...]) -> None:
    check_catalog(spec)
