"""Fuzz the tag database: a real history file (``write_history``) with hostile rows and properties."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from cvmfs_client.errors import CvmfsError
from cvmfs_client.hashing import ContentHash, HashAlgorithm
from cvmfs_client.history import History, Tag, write_history

from .common import FUZZ, Property, mutated

_H = ContentHash.of(HashAlgorithm.SHA1, b"x")
_COLUMNS = {
    "tags": ["name", "hash", "revision", "timestamp", "channel", "description", "size", "branch"],
    "properties": ["key", "value"],
}


@lru_cache(maxsize=1)
def _template() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "h.sqlite"
        tags = [Tag("trunk", _H, 5, 1_750_000_000), Tag("v1", _H, 3, 1_740_000_000, description="first")]
        write_history(path, tags, None, fqrn="fuzz.example.org")
        return path.read_bytes()


sql_value = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=30),
    st.binary(max_size=30),
    st.tuples(st.just("rawtext"), st.binary(max_size=20)),
    st.sampled_from([_H.hex, _H.hex.upper(), "0" * 40, "1.0", "2.0", "nan", "9" * 5000, "trunk"]),
)
edit = st.one_of(
    st.tuples(st.just("update"), st.sampled_from(sorted(_COLUMNS)), st.integers(1, 6), st.data(), sql_value),
    st.tuples(st.just("tag"), st.lists(sql_value, min_size=8, max_size=8)),
    st.tuples(
        st.just("property"),
        st.sampled_from(["schema", "schema_revision", "fqrn", "previous_revision"]),
        sql_value,
    ),
    st.tuples(st.just("drop"), st.sampled_from(["tags", "properties", "branches"])),
    st.tuples(st.just("drop_column"), st.sampled_from(sorted(_COLUMNS)), st.data()),
)


class _Draw:
    """Stands in for ``st.data()`` in explicit examples: always draws ``value``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def draw(self, _strategy: Any) -> Any:
        return self.value


def _bad_schema_text() -> bytes:
    data = bytearray(_template())
    data[data.index(b"CREATE TABLE tags") + 7] = 0x80  # "CREATE \x80ABLE tags"
    return bytes(data)


def _ph(value: Any) -> str:
    return "CAST(? AS TEXT)" if isinstance(value, tuple) else "?"


def _v(value: Any) -> Any:
    return value[1] if isinstance(value, tuple) else value


def _apply(con: sqlite3.Connection, e: tuple[Any, ...]) -> None:
    if e[0] == "update":
        _, table, rowid, data, value = e
        col = data.draw(st.sampled_from(_COLUMNS[table]))
        con.execute(f'UPDATE {table} SET "{col}" = {_ph(value)} WHERE rowid = ?', (_v(value), rowid))
    elif e[0] == "tag":
        values = e[1]
        con.execute(f"INSERT INTO tags VALUES ({', '.join(map(_ph, values))})", [_v(v) for v in values])
    elif e[0] == "property":
        _, key, value = e
        con.execute("DELETE FROM properties WHERE key = ?", (key,))
        con.execute(f"INSERT INTO properties VALUES (?, {_ph(value)})", (key, _v(value)))
    elif e[0] == "drop":
        con.execute(f"DROP TABLE IF EXISTS {e[1]}")
    else:
        _, table, data = e
        con.execute(f'ALTER TABLE {table} DROP COLUMN "{data.draw(st.sampled_from(_COLUMNS[table]))}"')


history_input = st.one_of(
    st.tuples(st.just("edits"), st.lists(edit, max_size=6)),
    st.tuples(st.just("bytes"), st.deferred(lambda: mutated(_template(), max_edits=6))),
)


def check_history(spec: tuple[Any, ...]) -> None:
    kind, payload = spec
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "history.sqlite"
        db.write_bytes(payload if kind == "bytes" else _template())
        if kind == "edits":
            con = sqlite3.connect(db)
            try:
                for e in payload:
                    with contextlib.suppress(sqlite3.Error):
                        _apply(con, e)
                con.commit()
            finally:
                con.close()
        try:
            with History(db, "fuzz") as h:
                h.fqrn, h.schema_revision, h.previous_revision  # noqa: B018
                for t in h.tags():
                    h.tag(t.name)
                h.latest_by_revision()
                h.tag("trunk")
        except CvmfsError:
            pass


PROPERTIES: dict[str, Property] = {"history.History": (history_input, check_history)}


@FUZZ
@given(history_input)
# Regression: a tags table without its hash column made SQLAlchemy raise NoSuchColumnError.
@example(("edits", [("drop_column", "tags", _Draw("hash"))]))
# Regressions (found by bench/fuzz.py): a tag name that is not UTF-8 (read back with surrogateescape)
# made History.tag(name) raise UnicodeEncodeError; invalid UTF-8 in SQLite's error message made
# the sqlite3 module raise UnicodeDecodeError.
@example(("edits", [("update", "tags", 1, _Draw("name"), ("rawtext", b"\x80"))]))
@example(("bytes", _bad_schema_text()))
def test_history(spec: tuple[Any, ...]) -> None:
    check_history(spec)
