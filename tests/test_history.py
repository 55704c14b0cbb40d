"""History (tag) database: the real publisher's H objects, and our writer matching them."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from cvmfs_client.errors import CatalogError, FormatError, TagNotFound
from cvmfs_client.hashing import ContentHash, HashAlgorithm, ObjectType
from cvmfs_client.history import History, Tag, write_history
from cvmfs_client.objects import Compression, decode_bytes

TOOLS = "tools.example.org"
SHAKE = "tiny-shake.example.org"
# From the fixtures README tables.
TOOLS_ROOTS = {
    1: "2137ffdaaa221802fa3bacc2714e7500d9195c17",
    2: "280cd917f5fb67cfa2dfb4e8f5262c4b6b66cc4d",
    3: "f916797dd4979fc3eb28e82e93f26aa3995edb2b",
}
SHAKE_ROOTS = {
    1: "61f1f853486c92620d2dc32ae7a5cd4a084f5e19-shake128",
    2: "5c55e8e3cd8edd0297206ebcfbbacf1d7a846341-shake128",
    3: "43f9ccccc3b29845f1b1cea114c7bb21c358085b-shake128",
}


def manifest_field(repo_dir: Path, key: str) -> str:
    body = repo_dir.joinpath(".cvmfspublished").read_bytes().split(b"\n--\n", 1)[0]
    return next(line[1:] for line in body.decode().splitlines() if line.startswith(key))


def open_history(real: Path, repo: str, tmp_path: Path) -> History:
    h = ContentHash.from_hex(manifest_field(real / repo, "H"))
    stored = (real / repo / h.object_path(ObjectType.HISTORY)).read_bytes()
    db = tmp_path / f"{repo}.history"
    db.write_bytes(decode_bytes(stored, h, Compression.ZLIB, h.object_path(ObjectType.HISTORY)))
    return History(db, f"{repo} history")


def master_rows(db: Path) -> list[tuple[str, str, str, str | None]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid").fetchall()
    return [(t, n, tb, re.sub(r"\s+", "", s) if s else None) for t, n, tb, s in rows]


def dump(db: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


@pytest.mark.parametrize(("repo", "roots"), [(TOOLS, TOOLS_ROOTS), (SHAKE, SHAKE_ROOTS)])
def test_real_history_tags(real_fixtures: Path, tmp_path: Path, repo: str, roots: dict[int, str]) -> None:
    with open_history(real_fixtures, repo, tmp_path) as hist:
        assert hist.fqrn == repo and hist.schema_revision == 3
        trunk = hist.tag("trunk")
        assert trunk.root_hash == ContentHash.from_hex(roots[3])
        assert (trunk.revision, trunk.description, trunk.channel, trunk.branch) == (3, "current HEAD", 0, "")
        prev = hist.tag("trunk-previous")
        assert prev.root_hash == ContentHash.from_hex(roots[2]) and prev.revision == 2
        assert prev.description == "default undo target"
        generic = sorted((t for t in hist.tags() if t.name.startswith("generic-")), key=lambda t: t.revision)
        assert [t.revision for t in generic] == [1, 2, 3]
        for t in generic:
            assert t.root_hash == ContentHash.from_hex(roots[t.revision])
            assert t.description == "" and t.size > 0
        assert {t.name for t in hist.tags()} == {t.name for t in generic} | {"trunk", "trunk-previous"}
        latest = hist.latest_by_revision()
        assert latest is not None and latest.revision == 3 and latest.root_hash == trunk.root_hash
        assert hist.previous_revision is not None
        with pytest.raises(TagNotFound) as info:
            hist.tag("no-such-tag")
        assert info.value.fqrn == repo and info.value.tag == "no-such-tag"


def test_shake_history_hashes_carry_the_suffix(real_fixtures: Path, tmp_path: Path) -> None:
    with open_history(real_fixtures, SHAKE, tmp_path) as hist:
        assert all(t.root_hash.algorithm is HashAlgorithm.SHAKE128 for t in hist.tags())
        assert hist.tag("generic-2026-11-24T17:26:18Z").revision == 3


def test_written_history_matches_real_one(real_fixtures: Path, tmp_path: Path) -> None:
    """Rewrite the real tools history from its tags: same DDL, rows and properties."""
    with open_history(real_fixtures, TOOLS, tmp_path) as hist:
        tags, previous = hist.tags(), hist.previous_revision
    real = tmp_path / f"{TOOLS}.history"
    ours = write_history(tmp_path / "ours.history", tags, previous, fqrn=TOOLS)
    assert master_rows(ours) == master_rows(real)
    for query in (
        "SELECT key, value FROM properties ORDER BY rowid",
        "SELECT * FROM tags ORDER BY name",
        "SELECT * FROM branches",
        "SELECT * FROM recycle_bin",
        "SELECT typeof(hash), typeof(revision), typeof(description), typeof(branch) FROM tags",
    ):
        assert dump(ours, query) == dump(real, query), query
    with History(ours, "ours") as again:
        assert again.tags() == tags


def test_first_history_has_null_previous(tmp_path: Path) -> None:
    root = ContentHash.of(HashAlgorithm.SHAKE128, b"catalog")
    tag = Tag("trunk", root, 1, 1700000000, description="current HEAD", size=57344)
    db = write_history(tmp_path / "h.db", [tag], None, fqrn="x.example.org")
    assert ("previous_revision", "0" * 40) in dump(db, "SELECT key, value FROM properties")
    with History(db, "h") as hist:
        assert hist.previous_revision is None and hist.tag("trunk") == tag
    empty = write_history(tmp_path / "e.db", [], None, fqrn="x.example.org")
    with History(empty, "e") as hist:
        assert hist.tags() == [] and hist.latest_by_revision() is None
        with pytest.raises(TagNotFound):
            hist.tag("trunk")


def test_write_history_refuses_bad_input(tmp_path: Path) -> None:
    root = ContentHash.of(HashAlgorithm.SHA1, b"c")
    tag = Tag("t", root, 1, 1)
    with pytest.raises(ValueError):
        write_history(tmp_path / "d.db", [tag, tag], None, fqrn="x")
    with pytest.raises(ValueError):
        write_history(tmp_path / "b.db", [Tag("t", root, 1, 1, branch="dev")], None, fqrn="x")
    write_history(tmp_path / "ok.db", [tag], None, fqrn="x")
    with pytest.raises(FileExistsError):
        write_history(tmp_path / "ok.db", [tag], None, fqrn="x")


def test_malformed_history_is_refused(tmp_path: Path) -> None:
    db = write_history(
        tmp_path / "h.db", [Tag("t", ContentHash.of(HashAlgorithm.SHA1, b"c"), 1, 1)], None, fqrn="x"
    )
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE tags SET hash = 'NOT-A-HASH'")
    with History(db, "h") as hist, pytest.raises(FormatError):
        hist.tag("t")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE properties SET value = '2.0' WHERE key = 'schema'")
    with pytest.raises(CatalogError, match="unsupported"):
        History(db, "h")
    junk = tmp_path / "junk"
    junk.write_bytes(b"junk" * 1000)
    with pytest.raises(CatalogError):
        History(junk, "junk")
