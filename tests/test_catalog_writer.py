"""Catalog writer: output identical to the real publisher's catalogs, and readable back."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from cvmfs_client.catalog import Catalog, Chunk, DirEntry, NestedRef, md5path
from cvmfs_client.catalog_writer import CatalogWriter, make_flags, make_hardlinks, total_statistics
from cvmfs_client.hashing import ContentHash, HashAlgorithm, ObjectType
from cvmfs_client.objects import Compression, decode_bytes

SHA, RMD, SHAKE = HashAlgorithm.SHA1, HashAlgorithm.RMD160, HashAlgorithm.SHAKE128
REAL_ROOT = ("tools.example.org", "f916797dd4979fc3eb28e82e93f26aa3995edb2b")


def inflate_catalog(real: Path, repo: str, hex_id: str, tmp_path: Path) -> Path:
    h = ContentHash.from_hex(hex_id)
    stored = (real / repo / h.object_path(ObjectType.CATALOG)).read_bytes()
    out = tmp_path / f"real-{hex_id}.db"
    out.write_bytes(decode_bytes(stored, h, Compression.ZLIB, hex_id))
    return out


def all_catalogs(real: Path) -> list[tuple[str, str]]:
    out = []
    for repo in ("tools.example.org", "tiny-shake.example.org"):
        for obj in sorted((real / repo / "data").glob("*/*C")):
            out.append((repo, obj.parent.name + obj.name[:-1]))
    return out


def master_rows(db: Path) -> list[tuple[str, str, str, str | None]]:
    """sqlite_master in creation order, SQL compared modulo whitespace."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid").fetchall()
    return [(t, n, tb, re.sub(r"\s+", "", s) if s else None) for t, n, tb, s in rows]


def dump(db: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


def catalog_entries(cat: Catalog) -> list[DirEntry]:
    """Every row of one catalog: its root, then everything below not inside a nested catalog."""
    root = cat.lookup(cat.mountpoint)
    assert root is not None
    out, todo = [root], [cat.mountpoint]
    while todo:
        here = todo.pop()
        for e in cat.listdir(here):
            out.append(e)
            if e.is_dir and not e.is_nested_mountpoint:
                todo.append(e.path)
    return out


def rewrite(cat: Catalog, dest: Path) -> Path:
    """Re-encode a catalog through DirEntry/CatalogWriter."""
    w = CatalogWriter(
        dest,
        cat.root_prefix,
        cat.revision,
        ttl=cat.ttl,
        previous_revision=cat.previous_revision,
        last_modified=cat.last_modified,
        is_root=cat.root_prefix == "",
    )
    for e in catalog_entries(cat):
        w.add_entry(e, cat.chunks(e))
    for ref in cat.nested_catalogs():
        assert ref.content_hash is not None
        w.add_nested(ref.path, ref.content_hash, ref.size)
    stats = cat.statistics()
    w.set_subtree_statistics({k[len("subtree_") :]: v for k, v in stats.items() if k.startswith("subtree_")})
    return w.close()


# ----- identical to the real publisher ---------------------------------------------------------


def test_ddl_equals_real_catalog(real_fixtures: Path, tmp_path: Path) -> None:
    real = inflate_catalog(real_fixtures, *REAL_ROOT, tmp_path)
    root = CatalogWriter(tmp_path / "root.db", "", 1, is_root=True).close()
    nested = CatalogWriter(tmp_path / "nested.db", "/a/b", 1, is_root=False).close()
    assert master_rows(root) == master_rows(real)
    assert master_rows(nested) == master_rows(real)
    assert any(r[1] == "idx_catalog_parent" for r in master_rows(root))


def test_rewriting_every_real_catalog_gives_identical_tables(real_fixtures: Path, tmp_path: Path) -> None:
    """Decode each real catalog to DirEntry rows and write it again: same rows, counters, properties."""
    catalogs = all_catalogs(real_fixtures)
    assert len(catalogs) == 13
    for repo, hex_id in catalogs:
        real = inflate_catalog(real_fixtures, repo, hex_id, tmp_path)
        with Catalog(real, hex_id) as cat:
            ours = rewrite(cat, tmp_path / f"ours-{hex_id}.db")
            first_revision = cat.revision == 0 and cat.root_prefix == ""
        for query in (
            "SELECT * FROM catalog ORDER BY md5path_1, md5path_2",
            "SELECT * FROM chunks ORDER BY md5path_1, md5path_2, offset",
            "SELECT * FROM nested_catalogs ORDER BY path",
            "SELECT * FROM bind_mountpoints",
            "SELECT * FROM statistics ORDER BY rowid",
        ):
            assert dump(ours, query) == dump(real, query), (repo, hex_id, query)
        props = "SELECT key, value FROM properties ORDER BY rowid"
        if first_revision:
            # Revision 0 comes from `cvmfs_swissknife create`, which writes no TTL.
            assert set(dump(real, props)) <= set(dump(ours, props))
        else:
            assert dump(ours, props) == dump(real, props), (repo, hex_id)


def test_property_values_for_nested_catalog(tmp_path: Path) -> None:
    prev = ContentHash.of(SHAKE, b"previous")
    db = CatalogWriter(tmp_path / "n.db", "/sw", 4, 99, prev, 1234, is_root=False).close()
    assert dump(db, "SELECT key, value FROM properties ORDER BY rowid") == [
        ("schema", "2.5"),
        ("schema_revision", "7"),
        ("root_prefix", "/sw"),
        ("last_modified", "1234"),
        ("revision", "4"),
        ("previous_revision", prev.hex),
    ]
    first = CatalogWriter(tmp_path / "f.db", "/sw", 1, last_modified=1, is_root=False).close()
    assert ("previous_revision", "0" * 40) in dump(first, "SELECT key, value FROM properties")
    with Catalog(first, "first") as cat:
        assert cat.previous_revision is None and cat.root_prefix == "/sw"


# ----- flags and hardlinks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"file_type": "f", "algorithm": SHA}, 4),
        ({"file_type": "f", "algorithm": RMD}, 260),
        ({"file_type": "f", "algorithm": SHAKE}, 516),
        ({"file_type": "f", "algorithm": SHA, "compression": Compression.NONE}, 2052),
        ({"file_type": "f", "algorithm": SHA, "chunked": True}, 68),
        ({"file_type": "f", "algorithm": SHAKE, "chunked": True, "compression": Compression.NONE}, 2628),
        ({"file_type": "f", "algorithm": SHA, "external": True, "compression": Compression.NONE}, 2180),
        ({"file_type": "d", "nested_mountpoint": True}, 3),
        ({"file_type": "d", "nested_root": True}, 33),
        ({"file_type": "d"}, 1),
        ({"file_type": "l"}, 12),
        ({"file_type": "s"}, 20),
        ({"file_type": "d", "hidden": True}, 0x8001),
        ({"file_type": "d", "bind_mountpoint": True}, 0x4001),
        ({"file_type": "f", "algorithm": SHA, "direct_io": True}, 0x10004),
    ],
)
def test_make_flags_matches_spec_examples(kwargs: dict[str, object], expected: int) -> None:
    file_type = kwargs.pop("file_type")
    assert make_flags(file_type, **kwargs) == expected  # type: ignore[arg-type]


def test_make_flags_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        make_flags("x")
    with pytest.raises(ValueError):
        make_flags("f", chunked=True)  # chunk hashes need an algorithm
    with pytest.raises(ValueError):
        make_flags("d", chunked=True, algorithm=SHA)
    with pytest.raises(ValueError):
        make_flags("f", nested_root=True)


def test_make_hardlinks_matches_spec_example() -> None:
    assert make_hardlinks(5, 2) == 21474836482
    assert make_hardlinks(1, 2) == 0x100000002
    with pytest.raises(ValueError):
        make_hardlinks(1 << 32, 1)


# ----- round trip ------------------------------------------------------------------------------


def _h(algo: HashAlgorithm, data: bytes) -> ContentHash:
    return ContentHash.of(algo, data)


def every_kind() -> tuple[list[tuple[DirEntry, list[Chunk]]], ContentHash]:
    d = make_flags("d")
    f = make_flags("f", algorithm=RMD)
    pair = make_hardlinks(1, 2)
    chunks = [Chunk(0, 60, _h(RMD, b"c1")), Chunk(60, 40, _h(RMD, b"c2"))]
    rows: list[tuple[DirEntry, list[Chunk]]] = [
        (DirEntry("", "", 0o40755, 4096, 10, d, hardlinks=5), []),
        (DirEntry("/dir", "dir", 0o40700, 4096, 11, d, mtime_ns=5, uid=1, gid=2, hardlinks=2), []),
        (DirEntry("/dir/file", "file", 0o100644, 3, 12, f, 999, 3, 4, 1, _h(RMD, b"abc")), []),
        (DirEntry("/dir/empty", "empty", 0o100600, 0, 12, f, content_hash=_h(RMD, b"")), []),
        (DirEntry("/dir/a", "a", 0o100644, 5, 13, f, hardlinks=pair, content_hash=_h(RMD, b"same!")), []),
        (DirEntry("/dir/b", "b", 0o100644, 5, 13, f, hardlinks=pair, content_hash=_h(RMD, b"same!")), []),
        (DirEntry("/big", "big", 0o100644, 100, 14, make_flags("f", algorithm=RMD, chunked=True)), chunks),
        (
            DirEntry(
                "/raw",
                "raw",
                0o100644,
                7,
                15,
                make_flags("f", algorithm=RMD, compression=Compression.NONE, external=True),
                content_hash=_h(RMD, b"rawdata"),
                xattrs={"user.b": b"2", "user.a": b"\x00\xff"},
            ),
            [],
        ),
        (DirEntry("/link", "link", 0o120777, 12, 16, make_flags("l"), symlink="$(X:-y)/dir"), []),
        (DirEntry("/null", "null", 0o20666, 0x103, 17, make_flags("s")), []),  # char device, rdev in size
        (DirEntry("/fifo", "fifo", 0o10644, 0, 17, make_flags("s")), []),
        (DirEntry("/.cvmfs", ".cvmfs", 0o40755, 4096, 18, make_flags("d", hidden=True), hardlinks=3), []),
        (
            DirEntry(
                "/.cvmfs/snap", "snap", 0o40755, 4096, 18, make_flags("d", bind_mountpoint=True), hardlinks=2
            ),
            [],
        ),
        (
            DirEntry("/sub", "sub", 0o40755, 4096, 19, make_flags("d", nested_mountpoint=True), hardlinks=2),
            [],
        ),
        (DirEntry("/Grüße ✓", "Grüße ✓", 0o100644, 1, 20, f, content_hash=_h(RMD, b"g")), []),
    ]
    return rows, _h(RMD, b"nested catalog")


def test_every_entry_kind_round_trips(tmp_path: Path) -> None:
    rows, nested_hash = every_kind()
    with CatalogWriter(tmp_path / "c.db", "", 7, ttl=60, last_modified=100, is_root=True) as w:
        for entry, chunks in rows:
            w.add_entry(entry, chunks)
        w.add_nested("/sub", nested_hash, 4096)
        w.add_bind_mountpoint("/.cvmfs/snap", nested_hash, 8192)
        w.set_subtree_statistics({"regular": 3, "dir": 1})
    with Catalog(tmp_path / "c.db", "round trip") as cat:
        assert (cat.revision, cat.ttl, cat.last_modified, cat.previous_revision) == (7, 60, 100, None)
        for entry, chunks in rows:
            assert cat.lookup(entry.path) == entry, entry.path
            assert cat.chunks(entry) == chunks
        assert [e.name for e in cat.listdir("")] == [
            "Grüße ✓",
            "big",
            "dir",
            "fifo",
            "link",
            "null",
            "raw",
            "sub",
        ]
        assert [e.name for e in cat.listdir("/dir")] == ["a", "b", "empty", "file"]
        assert cat.nested_catalogs() == [
            NestedRef("/.cvmfs/snap", nested_hash, 8192, True),
            NestedRef("/sub", nested_hash, 4096, False),
        ]
        kinds = {e.path: e.file_type for e in (cat.lookup(r.path) for r, _ in rows) if e is not None}
        assert kinds["/null"] == kinds["/fifo"] == "s" and kinds["/link"] == "l" and kinds["/big"] == "f"
        stats = cat.statistics()
    assert stats == {
        "self_chunked": 1,
        "self_chunked_size": 100,
        "self_chunks": 2,
        "self_dir": 5,
        "self_external": 1,
        "self_external_file_size": 7,
        "self_file_size": 3 + 0 + 5 + 5 + 100 + 7 + 1,
        "self_nested": 1,
        "self_regular": 7,
        "self_special": 2,
        "self_symlink": 1,
        "self_xattr": 1,
        "subtree_chunked": 0,
        "subtree_chunked_size": 0,
        "subtree_chunks": 0,
        "subtree_dir": 1,
        "subtree_external": 0,
        "subtree_external_file_size": 0,
        "subtree_file_size": 0,
        "subtree_nested": 0,
        "subtree_regular": 3,
        "subtree_special": 0,
        "subtree_symlink": 0,
        "subtree_xattr": 0,
    }
    assert total_statistics(stats)["regular"] == 10
    # Column encodings the real publisher uses: NULL hash for dirs/links/chunked, '' symlink.
    raw = dict(
        (
            (n, (h, s, x))
            for n, h, s, x in dump(tmp_path / "c.db", "SELECT name, hash, symlink, xattr FROM catalog")
        )
    )
    assert raw["dir"] == (None, "", None) and raw["big"][0] is None and raw["link"][0] is None


def test_nested_root_entry_gets_flag_32_and_parent_md5(tmp_path: Path) -> None:
    w = CatalogWriter(tmp_path / "n.db", "/a/b", 2, is_root=False)
    w.add_entry(DirEntry("/a/b", "b", 0o40755, 4096, 1, make_flags("d", nested_mountpoint=True)))
    w.add_entry(DirEntry("/a/b/.cvmfscatalog", ".cvmfscatalog", 0o100644, 0, 1, 4, content_hash=_h(SHA, b"")))
    w.close()
    ((p1, p2, flags),) = dump(
        tmp_path / "n.db", "SELECT parent_1, parent_2, flags FROM catalog WHERE name = 'b'"
    )
    assert (p1, p2) == md5path("/a") and flags == 33
    root = CatalogWriter(tmp_path / "r.db", "", 2, is_root=True)
    root.add_entry(DirEntry("", "", 0o40755, 4096, 1, 1))
    root.close()
    assert dump(tmp_path / "r.db", "SELECT parent_1, parent_2, flags FROM catalog") == [(0, 0, 1)]
    with Catalog(tmp_path / "n.db", "n", mountpoint="/a/b") as cat:
        assert [e.name for e in cat.listdir("/a/b")] == [".cvmfscatalog"]


# ----- refusals --------------------------------------------------------------------------------


def test_writer_refuses_bad_entries(tmp_path: Path) -> None:
    w = CatalogWriter(tmp_path / "n.db", "/a", 1, is_root=False)
    d = make_flags("d")
    f = make_flags("f", algorithm=SHA)
    with pytest.raises(ValueError, match="outside"):
        w.add_entry(DirEntry("/b/x", "x", 0o100644, 0, 1, f))
    with pytest.raises(ValueError, match="outside"):
        w.add_entry(DirEntry("/ab", "ab", 0o100644, 0, 1, f))  # component boundary
    with pytest.raises(ValueError, match="last component"):
        w.add_entry(DirEntry("/a/x", "y", 0o100644, 0, 1, f))
    with pytest.raises(ValueError):
        w.add_entry(DirEntry("/a/..", "..", 0o40755, 0, 1, d))
    with pytest.raises(ValueError, match="chunks"):
        w.add_entry(DirEntry("/a/c", "c", 0o100644, 10, 1, make_flags("f", algorithm=SHA, chunked=True)))
    with pytest.raises(ValueError, match="gap"):
        w.add_entry(
            DirEntry("/a/c", "c", 0o100644, 10, 1, make_flags("f", algorithm=SHA, chunked=True)),
            [Chunk(0, 4, _h(SHA, b"1")), Chunk(5, 5, _h(SHA, b"2"))],
        )
    with pytest.raises(ValueError, match="flags say"):
        w.add_entry(DirEntry("/a/h", "h", 0o100644, 1, 1, f, content_hash=_h(SHAKE, b"x")))
    w.add_entry(DirEntry("/a/ok", "ok", 0o100644, 1, 1, f, content_hash=_h(SHA, b"x")))
    with pytest.raises(ValueError, match="already"):
        w.add_entry(DirEntry("/a/ok", "ok", 0o100644, 1, 1, f, content_hash=_h(SHA, b"x")))
    with pytest.raises(ValueError, match="strictly below"):
        w.add_nested("/a", _h(SHA, b"n"), 1)
    with pytest.raises(ValueError, match="strictly below"):
        w.add_nested("/elsewhere/x", _h(SHA, b"n"), 1)
    with pytest.raises(ValueError):
        w.set_subtree_statistics({"bogus": 1})
    w.close()
    with pytest.raises(FileExistsError):
        CatalogWriter(tmp_path / "n.db", "/a", 1, is_root=False)
    with pytest.raises(ValueError):
        CatalogWriter(tmp_path / "x.db", "/a", 1, is_root=True)
    with pytest.raises(ValueError):
        CatalogWriter(tmp_path / "y.db", "a/", 1, is_root=False)


def test_failed_writer_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), CatalogWriter(tmp_path / "c.db", "", 1, is_root=True) as w:
        w.add_entry(DirEntry("", "", 0o40755, 4096, 1, 1))
        raise RuntimeError("publisher failed")
    assert not (tmp_path / "c.db").exists()
