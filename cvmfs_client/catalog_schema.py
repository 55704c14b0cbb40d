"""SQLAlchemy table definitions of the catalog (schema 2.5 rev 7) and history (1.0 rev 3) databases.

Why a module of its own: the reader and the writer must agree on one definition, and the writer's
DDL must equal what the real publisher creates (``cvmfs/cvmfs:cvmfs/catalog_sql.cc``
``CreateEmptyDatabase``, ``cvmfs/cvmfs:cvmfs/history_sql.cc``), checked against the fixtures with
``SELECT sql FROM sqlite_master`` modulo whitespace. Hence the details below:

- primary-key columns are declared nullable: the real DDL has no ``NOT NULL`` anywhere;
- constraints carry the real names (``pk_catalog``...), foreign keys are unnamed;
- ``key`` and ``offset`` are emitted unquoted as in the real DDL (SQLite accepts them);
- ``CREATE_ORDER`` is the order the real tools create tables, so ``sqlite_master`` matches too.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

import sqlalchemy as sa

# Spec 5.1/5.2: what current publishers write; the reader also accepts 2.4 and legacy < 2.0.
CATALOG_SCHEMA = 2.5
CATALOG_SCHEMA_REVISION = 7
# cvmfs/cvmfs:cvmfs/sql_impl.h kSchemaEpsilon: schema versions are floats stored as text.
SCHEMA_EPSILON = 0.0005

HISTORY_SCHEMA = "1.0"
HISTORY_SCHEMA_REVISION = 3

# Spec 5.10 (cvmfs/cvmfs:cvmfs/catalog_counters.h): stored as self_<name> and subtree_<name>.
COUNTER_NAMES: tuple[str, ...] = (
    "chunked",
    "chunked_size",
    "chunks",
    "dir",
    "external",
    "external_file_size",
    "file_size",
    "nested",
    "regular",
    "special",
    "symlink",
    "xattr",
)


def _col(name: str, type_: type[sa.types.TypeEngine], **kw: object) -> sa.Column:
    """A column as the real DDL declares it: nullable, unquoted."""
    return sa.Column(name, type_, nullable=True, quote=False, **kw)


def _properties_table(metadata: sa.MetaData) -> sa.Table:
    # cvmfs/cvmfs:cvmfs/sql_impl.h CreatePropertiesTable: shared by catalogs and histories.
    return sa.Table(
        "properties",
        metadata,
        _col("key", sa.Text),
        _col("value", sa.Text),
        sa.PrimaryKeyConstraint("key", name="pk_properties"),
    )


catalog_metadata = sa.MetaData()

properties = _properties_table(catalog_metadata)

# Fresh layout: mtimens between mtime and flags, xattr last. Upgraded catalogs differ (columns
# appended by ALTER TABLE), which is why readers select by name.
catalog = sa.Table(
    "catalog",
    catalog_metadata,
    _col("md5path_1", sa.Integer),
    _col("md5path_2", sa.Integer),
    _col("parent_1", sa.Integer),
    _col("parent_2", sa.Integer),
    _col("hardlinks", sa.Integer),
    _col("hash", sa.LargeBinary),
    _col("size", sa.Integer),
    _col("mode", sa.Integer),
    _col("mtime", sa.Integer),
    _col("mtimens", sa.Integer),
    _col("flags", sa.Integer),
    _col("name", sa.Text),
    _col("symlink", sa.Text),
    _col("uid", sa.Integer),
    _col("gid", sa.Integer),
    _col("xattr", sa.LargeBinary),
    sa.PrimaryKeyConstraint("md5path_1", "md5path_2", name="pk_catalog"),
)

idx_catalog_parent = sa.Index("idx_catalog_parent", catalog.c.parent_1, catalog.c.parent_2)

chunks = sa.Table(
    "chunks",
    catalog_metadata,
    _col("md5path_1", sa.Integer),
    _col("md5path_2", sa.Integer),
    _col("offset", sa.Integer),
    _col("size", sa.Integer),
    _col("hash", sa.LargeBinary),
    sa.PrimaryKeyConstraint("md5path_1", "md5path_2", "offset", "size", name="pk_chunks"),
    sa.ForeignKeyConstraint(["md5path_1", "md5path_2"], ["catalog.md5path_1", "catalog.md5path_2"]),
)

# Column ``sha1`` holds hex in the repository's algorithm whatever it is (spec 4.3).
nested_catalogs = sa.Table(
    "nested_catalogs",
    catalog_metadata,
    _col("path", sa.Text),
    _col("sha1", sa.Text),
    _col("size", sa.Integer),
    sa.PrimaryKeyConstraint("path", name="pk_nested_catalogs"),
)

bind_mountpoints = sa.Table(
    "bind_mountpoints",
    catalog_metadata,
    _col("path", sa.Text),
    _col("sha1", sa.Text),
    _col("size", sa.Integer),
    sa.PrimaryKeyConstraint("path", name="pk_bind_mountpoints"),
)

statistics = sa.Table(
    "statistics",
    catalog_metadata,
    _col("counter", sa.Text),
    _col("value", sa.Integer),
    sa.PrimaryKeyConstraint("counter", name="pk_statistics"),
)

# Order of creation in the real publisher (properties first, then CreateEmptyDatabase).
# ``Table.create`` emits the table's indexes right after it, so idx_catalog_parent follows catalog.
CATALOG_CREATE_ORDER: tuple[sa.Table, ...] = (
    properties,
    catalog,
    chunks,
    nested_catalogs,
    bind_mountpoints,
    statistics,
)


history_metadata = sa.MetaData()

history_properties = _properties_table(history_metadata)

# cvmfs/cvmfs:cvmfs/history_sql.cc: the root branch is '' with parent NULL.
branches = sa.Table(
    "branches",
    history_metadata,
    _col("branch", sa.Text),
    _col("parent", sa.Text),
    _col("initial_revision", sa.Integer),
    sa.PrimaryKeyConstraint("branch", name="pk_branch"),
    sa.ForeignKeyConstraint(["parent"], ["branches.branch"]),
    sa.CheckConstraint("(branch <> '') OR (parent IS NULL)"),
    sa.CheckConstraint("(branch = '') OR (parent IS NOT NULL)"),
)

tags = sa.Table(
    "tags",
    history_metadata,
    _col("name", sa.Text),
    _col("hash", sa.Text),
    _col("revision", sa.Integer),
    _col("timestamp", sa.Integer),
    _col("channel", sa.Integer),
    _col("description", sa.Text),
    _col("size", sa.Integer),
    _col("branch", sa.Text),
    sa.PrimaryKeyConstraint("name", name="pk_tags"),
    sa.ForeignKeyConstraint(["branch"], ["branches.branch"]),
)

recycle_bin = sa.Table(
    "recycle_bin",
    history_metadata,
    _col("hash", sa.Text),
    _col("flags", sa.Integer),
    sa.PrimaryKeyConstraint("hash", name="pk_hash"),
)

HISTORY_CREATE_ORDER: tuple[sa.Table, ...] = (history_properties, branches, tags, recycle_bin)


def create_schema(conn: sa.Connection, objects: tuple[sa.Table, ...]) -> None:
    """Create ``objects`` one by one in the given order (``create_all`` would sort by name)."""
    for obj in objects:
        obj.create(conn)


def readonly_engine(db_path: Path) -> sa.Engine:
    """An engine on ``db_path`` opened read-only and immutable, as the real client opens catalogs.

    ``immutable=1`` skips locking and change detection: catalogs and histories are
    content-addressed and never change once verified (spec 5.1). The path is percent-quoted
    because SQLite URIs give ``?``, ``#`` and ``%`` a meaning. Text is decoded with
    ``surrogateescape`` so non-UTF-8 names survive and hash back to the same md5path.
    """
    url = sa.URL.create(
        "sqlite+pysqlite",
        database=f"file:{_uri_path(db_path)}",
        query={"mode": "ro", "immutable": "1", "uri": "true"},
    )
    # Pooled connections may be handed to another thread; each is used by one thread at a time.
    engine = sa.create_engine(url, connect_args={"check_same_thread": False})
    sa.event.listen(engine, "connect", _set_text_factory)
    return engine


def readonly_connection(db_path: Path) -> sqlite3.Connection:
    """A bare DB-API connection opened as :func:`readonly_engine`'s are (read-only, immutable,
    ``surrogateescape`` text), for a query run so often that the engine's overhead matters.
    It may be closed by another thread than the one that used it."""
    conn = sqlite3.connect(
        f"file:{_uri_path(db_path)}?mode=ro&immutable=1", uri=True, check_same_thread=False
    )
    conn.text_factory = _decode_text
    return conn


def _uri_path(db_path: Path) -> str:
    return urllib.parse.quote(str(db_path.resolve()))


def _set_text_factory(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    dbapi_connection.text_factory = _decode_text


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
