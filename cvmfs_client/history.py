"""The tag database (``H`` object): named root catalogs for ``CVMFS_REPOSITORY_TAG``.

Format (spec 1.3, ``cvmfs/cvmfs:cvmfs/history_sql.cc``; checked against the fixtures' H objects):
SQLite, schema 1.0 revision 3; ``tags(name, hash, revision, timestamp, channel, description,
size, branch)`` with ``hash`` as hex text with the algorithm id, ``size`` the uncompressed root
catalog size, ``branch`` ``''`` for the trunk; a ``branches`` table holding at least the root
branch ``('', NULL, 0)``; an empty ``recycle_bin``; properties ``schema``, ``schema_revision``,
``fqrn``, ``previous_revision`` (40 zeros when there is none).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from . import catalog_schema as schema
from .errors import CatalogError, FormatError, TagNotFound, UnknownHashAlgorithm
from .hashing import ContentHash

_NULL_HASH_HEX = "0" * 40
_NULL_DIGEST = bytes(20)


@dataclass(frozen=True, slots=True)
class Tag:
    """A named revision: ``root_hash`` is the root catalog of that revision."""

    name: str
    root_hash: ContentHash
    revision: int
    timestamp: int
    channel: int = 0
    description: str = ""
    size: int = 0
    branch: str = ""


class History:
    """A history database opened read-only (immutable, like catalogs)."""

    def __init__(self, db_path: Path, source: str) -> None:
        self.db_path = Path(db_path)
        self.source = source
        if not self.db_path.is_file():
            raise CatalogError(source, f"history file {self.db_path} does not exist")
        self._engine = schema.readonly_engine(self.db_path)
        self._closed = False
        try:
            with self._engine.connect() as conn:
                insp = sa.inspect(conn)
                self._columns = {t: {c["name"] for c in insp.get_columns(t)} for t in insp.get_table_names()}
            if "tags" not in self._columns:
                raise CatalogError(source, "history database has no tags table")
            missing = {"name", "hash"} - self._columns["tags"]
            if missing:
                raise CatalogError(source, f"tags table lacks column(s) {', '.join(sorted(missing))}")
            self._props = self._read_properties()
            self._check_schema()
        except sa.exc.DBAPIError as exc:
            self._engine.dispose()
            raise CatalogError(source, f"not a usable SQLite database: {exc.orig}") from None
        except UnicodeError as exc:  # sqlite3 decodes names and error messages strictly
            self._engine.dispose()
            raise CatalogError(source, f"not a usable SQLite database: undecodable text: {exc}") from None
        except BaseException:
            self._engine.dispose()
            raise

    def _execute(self, stmt: sa.Executable) -> list[sa.Row[Any]]:
        if self._closed:
            raise CatalogError(self.source, "history is closed")
        try:
            with self._engine.connect() as conn:
                return list(conn.execute(stmt).all())
        except sa.exc.DBAPIError as exc:
            raise CatalogError(self.source, f"SQLite: {exc.orig}") from None
        except UnicodeError as exc:
            raise CatalogError(
                self.source, f"SQLite: undecodable text in a damaged database: {exc}"
            ) from None

    def _read_properties(self) -> dict[str, str]:
        if "properties" not in self._columns:
            return {}
        p = schema.history_properties.c
        return {str(k): str(v) for k, v in self._execute(sa.select(p.key, p.value)) if k is not None}

    def _check_schema(self) -> None:
        # history_sql.cc accepts schema 1.0 (any revision: later revisions only add columns).
        try:
            version = float(self._props.get("schema", schema.HISTORY_SCHEMA))
        except ValueError:
            raise CatalogError(
                self.source, f"malformed schema property {self._props.get('schema')!r}"
            ) from None
        if abs(version - float(schema.HISTORY_SCHEMA)) > schema.SCHEMA_EPSILON:
            raise CatalogError(self.source, f"unsupported history schema {version} (need 1.0)")

    @property
    def fqrn(self) -> str | None:
        return self._props.get("fqrn")

    @property
    def schema_revision(self) -> int:
        try:
            return int(self._props.get("schema_revision", "0"))
        except ValueError:
            raise CatalogError(self.source, "malformed schema_revision property") from None

    @property
    def previous_revision(self) -> ContentHash | None:
        """The previous history object, ``None`` for the first (stored as 40 zeros)."""
        text = self._props.get("previous_revision", "")
        if not text:
            return None
        try:
            h = ContentHash.from_hex(text, f"{self.source} previous_revision")
        except UnknownHashAlgorithm as exc:
            raise FormatError(self.source, exc.reason) from None
        return None if h.digest == _NULL_DIGEST else h

    def _select(self) -> sa.Select[Any]:
        # Older revisions lack some columns: select by name what the file has.
        present = self._columns["tags"]
        t = schema.tags.c
        return sa.select(*[t[c.name] for c in schema.tags.columns if c.name in present])

    def _make_tag(self, row: sa.Row[Any]) -> Tag:
        m = row._mapping
        name = m["name"]
        what = f"tag {name!r}"
        if not isinstance(name, str) or not isinstance(m["hash"], str):
            raise FormatError(self.source, f"{what}: name and hash must be text")
        try:
            root_hash = ContentHash.from_hex(m["hash"], f"{self.source} {what}")
        except UnknownHashAlgorithm as exc:
            raise FormatError(self.source, f"{what}: {exc.reason}") from None
        ints = {}
        for col in ("revision", "timestamp", "channel", "size"):
            value = m.get(col, 0)
            value = 0 if value is None else value
            if not isinstance(value, int) or isinstance(value, bool):
                raise FormatError(self.source, f"{what}: {col} is {value!r}, not an integer")
            ints[col] = value
        description = m.get("description") or ""
        branch = m.get("branch") or ""
        if not isinstance(description, str) or not isinstance(branch, str):
            raise FormatError(self.source, f"{what}: description and branch must be text")
        return Tag(name, root_hash, description=description, branch=branch, **ints)

    def tags(self) -> list[Tag]:
        """All tags, oldest revision first (ties: by timestamp, then name)."""
        out = [self._make_tag(r) for r in self._execute(self._select())]
        out.sort(key=lambda t: (t.revision, t.timestamp, t.name))
        return out

    def tag(self, name: str) -> Tag:
        """The tag called ``name``; raises :class:`TagNotFound` naming the repository."""
        # Compared as bytes cast to TEXT: a name read with surrogateescape (not valid UTF-8, as
        # stored by a hostile publisher) cannot be bound as a str (UnicodeEncodeError).
        raw = sa.cast(sa.literal(name.encode("utf-8", "surrogateescape"), sa.LargeBinary), sa.Text)
        rows = self._execute(self._select().where(schema.tags.c.name == raw))
        if not rows:
            raise TagNotFound(self.fqrn or self.source, name)
        return self._make_tag(rows[0])

    def latest_by_revision(self) -> Tag | None:
        """The tag with the highest revision (newest timestamp among equals), ``None`` if none."""
        tags = self.tags()
        return tags[-1] if tags else None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def __enter__(self) -> History:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def write_history(path: Path, tags: Iterable[Tag], previous: ContentHash | None, *, fqrn: str) -> Path:
    """Create a history database at ``path`` matching the real publisher's (schema 1.0 rev 3).

    ``previous`` is the previous history object (``None`` for the first: 40 zeros). Tags must
    have unique names and sit on the trunk branch ``''`` (the only branch written here).
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: refusing to overwrite an existing history database")
    tag_list = list(tags)
    names = [t.name for t in tag_list]
    if len(set(names)) != len(names):
        raise ValueError("tag names must be unique")
    for t in tag_list:
        if t.branch:
            raise ValueError(f"tag {t.name!r} is on branch {t.branch!r}; only the trunk '' is supported")
    engine = sa.create_engine(sa.URL.create("sqlite+pysqlite", database=str(path)))
    try:
        with engine.begin() as conn:
            schema.create_schema(conn, schema.HISTORY_CREATE_ORDER)
            props = [
                ("schema", schema.HISTORY_SCHEMA),
                ("schema_revision", str(schema.HISTORY_SCHEMA_REVISION)),
                ("fqrn", fqrn),
                ("previous_revision", previous.hex if previous is not None else _NULL_HASH_HEX),
            ]
            conn.execute(schema.history_properties.insert(), [{"key": k, "value": v} for k, v in props])
            conn.execute(schema.branches.insert(), {"branch": "", "parent": None, "initial_revision": 0})
            if tag_list:
                conn.execute(
                    schema.tags.insert(),
                    [
                        {
                            "name": t.name,
                            "hash": t.root_hash.hex,
                            "revision": t.revision,
                            "timestamp": t.timestamp,
                            "channel": t.channel,
                            "description": t.description,
                            "size": t.size,
                            "branch": t.branch,
                        }
                        for t in tag_list
                    ],
                )
    except BaseException:
        engine.dispose()
        path.unlink(missing_ok=True)
        raise
    engine.dispose()
    return path
