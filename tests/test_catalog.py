"""Catalog reader: real catalogs from the CernVM-FS 2.12 publisher, and hostile ones refused."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from cvmfs_client.catalog import (
    Catalog,
    Chunk,
    DirEntry,
    NestedRef,
    encode_xattrs,
    md5path,
    parse_xattrs,
)
from cvmfs_client.catalog_writer import CatalogWriter, make_flags
from cvmfs_client.errors import CatalogError, CorruptObject, HostileCatalog, UnknownHashAlgorithm
from cvmfs_client.hashing import ContentHash, HashAlgorithm, ObjectType
from cvmfs_client.objects import Compression, decode_bytes

TOOLS = "tools.example.org"
SHAKE = "tiny-shake.example.org"
# Root catalog of the newest revision, from the fixtures README tables.
TOOLS_ROOT = "f916797dd4979fc3eb28e82e93f26aa3995edb2b"
TOOLS_TOOLKIT_V2 = "e5f53c520ea8f72337566064b730f15b0f48db94"
TOOLS_FORMATS = "5806278d77a3659e5eab35ea4793379e3e4d46f3"
SHAKE_ROOT = "43f9ccccc3b29845f1b1cea114c7bb21c358085b-shake128"


# ----- helpers ---------------------------------------------------------------------------------


def manifest_root(repo_dir: Path) -> str:
    """The ``C`` line of ``.cvmfspublished`` (the body ends at the ``--`` separator)."""
    body = repo_dir.joinpath(".cvmfspublished").read_bytes().split(b"\n--\n", 1)[0]
    for line in body.decode().splitlines():
        if line.startswith("C"):
            return line[1:]
    raise AssertionError("manifest without C line")


def inflate(repo_dir: Path, hex_id: str, kind: ObjectType, tmp_path: Path) -> Path:
    """Verify and inflate a stored zlib object (catalog or history) into ``tmp_path``."""
    h = ContentHash.from_hex(hex_id)
    raw = repo_dir.joinpath(h.object_path(kind)).read_bytes()
    out = tmp_path / f"{hex_id}{kind}"
    out.write_bytes(decode_bytes(raw, h, Compression.ZLIB, h.object_path(kind)))
    return out


def open_real(real: Path, repo: str, hex_id: str, tmp_path: Path, mountpoint: str | None = None) -> Catalog:
    path = inflate(real / repo, hex_id, ObjectType.CATALOG, tmp_path)
    return Catalog(path, f"{repo} {hex_id}", mountpoint=mountpoint)


def read_object(repo_dir: Path, h: ContentHash, kind: ObjectType, comp: Compression, size: int) -> bytes:
    raw = repo_dir.joinpath(h.object_path(kind)).read_bytes()
    return decode_bytes(raw, h, comp, h.object_path(kind), size)


class Walker:
    """The spec 5.9 pseudo-code over local fixture objects (no repository module needed)."""

    def __init__(self, real: Path, repo: str, root_hex: str, tmp_path: Path) -> None:
        self.repo_dir = real / repo
        self.tmp = tmp_path
        self.root = open_real(real, repo, root_hex, tmp_path)
        self.opened: dict[str, Catalog] = {}

    def owning(self, path: str, listing: bool) -> Catalog:
        cat = self.root
        while True:
            ref = cat.find_nested(path, for_listing=listing)
            if ref is None:
                return cat
            assert ref.content_hash is not None
            key = ref.content_hash.hex
            if key not in self.opened:
                p = inflate(self.repo_dir, key, ObjectType.CATALOG, self.tmp)
                self.opened[key] = Catalog(p, key, mountpoint=ref.path)
            cat = self.opened[key]

    def stat(self, path: str) -> DirEntry:
        entry = self.owning(path, False).lookup(path)
        assert entry is not None, path
        return entry

    def walk(self, path: str = "") -> list[DirEntry]:
        out = [self.stat(path)]
        for child in self.owning(path, True).listdir(path):
            if child.is_dir:
                out += self.walk(child.path)
            else:
                out.append(self.stat(child.path))
        return out

    def content(self, entry: DirEntry) -> bytes:
        if entry.is_chunked:
            parts = self.owning(entry.path, False).chunks(entry)
            return b"".join(
                read_object(self.repo_dir, c.content_hash, ObjectType.PARTIAL, entry.compression, c.size)
                for c in parts
            )
        assert entry.content_hash is not None
        return read_object(self.repo_dir, entry.content_hash, ObjectType.FILE, entry.compression, entry.size)

    def close(self) -> None:
        self.root.close()
        for c in self.opened.values():
            c.close()


def read_truth(path: Path) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        rel = cols[0]
        rows["" if rel == "." else "/" + rel] = cols
    return rows


# ----- pure functions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", (338333539836370388, 9098107892288553193)),
        (
            "/lib/lhcb/ALIGNMENT/ALIGNMENT_v9r2/Phys/CommonParticles/tests/qmtest/commonparticles.qms/.svn/tmp/prop-base",
            (4069996547627848455, -3471940481646685085),
        ),
        ("/software", (3445601412511816508, 6267067367417020806)),
        ("/software/v1.0/bin/python3", (-279424795832317849, -2980408493606567645)),
        ("/README", (1260699381841350931, 8613707985721844280)),
    ],
)
def test_md5path_matches_spec_vectors(path: str, expected: tuple[int, int]) -> None:
    assert md5path(path) == expected


def test_xattr_blob_round_trip_and_spec_example() -> None:
    blob = bytes.fromhex("01010803757365722e666f6f626172")
    assert parse_xattrs(blob, "t") == {"user.foo": b"bar"}
    assert encode_xattrs({"user.foo": b"bar"}) == blob
    two = encode_xattrs({"user.z": b"1", "user.a": b""})
    assert two is not None and two.index(b"user.a") < two.index(b"user.z")  # bytewise key order
    assert parse_xattrs(two, "t") == {"user.a": b"", "user.z": b"1"}
    assert encode_xattrs({}) is None


def test_xattr_blob_version_2_for_values_beyond_255_bytes() -> None:
    """CernVM-FS 2.12 writes version 2 (two-byte little-endian value lengths) when a value is
    longer than 255 bytes, e.g. an IMA signature; 1 otherwise. A directory holding such an entry
    could not be listed before (the blob was refused as an unknown version)."""
    big = bytes(range(256)) * 2 + b"end"  # 515 bytes
    blob = encode_xattrs({"user.small": b"s", "security.ima": big})
    assert blob is not None and blob[:2] == b"\x02\x02"
    # bytewise key order; each entry: key length (1 byte), value length (2 bytes, LE), key, value
    first = b"\x0c" + len(big).to_bytes(2, "little") + b"security.ima" + big
    assert blob[2 : 2 + len(first)] == first
    assert blob[2 + len(first) :] == b"\x0a\x01\x00user.small" + b"s"
    assert parse_xattrs(blob, "t") == {"user.small": b"s", "security.ima": big}
    # small values keep version 1, byte for byte as before
    assert encode_xattrs({"user.foo": b"bar"}) == bytes.fromhex("01010803757365722e666f6f626172")
    # a version 2 blob of small values (allowed by the format) and one of 64 KiB - 1
    assert parse_xattrs(b"\x02\x01\x01\x01\x00ab", "t") == {"a": b"b"}
    largest = b"x" * (64 * 1024 - 1)
    assert parse_xattrs(encode_xattrs({"user.l": largest}) or b"", "t") == {"user.l": largest}
    with pytest.raises(ValueError, match="64 KiB"):
        encode_xattrs({"user.l": largest + b"x"})


@pytest.mark.parametrize(
    "blob",
    [
        b"\x03\x00",  # unknown version
        b"\x02\x01\x01\x01",  # version 2 entry header cut (3 bytes)
        b"\x02\x01\x01\x05\x00ab",  # version 2 value longer than the blob
        b"\x01",  # header cut
        b"\x01\x01\x08",  # entry header cut
        b"\x01\x01\x08\x03user",  # key cut
        b"\x01\x01\x00\x01x",  # empty key
        b"\x01\x01\x03\x00a\x00b",  # NUL in key
        b"\x01\x00junk",  # trailing bytes
        b"\x01\x02\x01\x00a\x01\x00a",  # duplicate key
    ],
)
def test_malformed_xattr_blob_is_hostile(blob: bytes) -> None:
    with pytest.raises(HostileCatalog):
        parse_xattrs(blob, "t")


# ----- real fixtures ---------------------------------------------------------------------------


def test_manifest_names_the_readme_root_catalogs(real_fixtures: Path) -> None:
    assert manifest_root(real_fixtures / TOOLS) == TOOLS_ROOT
    assert manifest_root(real_fixtures / SHAKE) == SHAKE_ROOT


def test_real_root_catalog_properties_and_root_entry(real_fixtures: Path, tmp_path: Path) -> None:
    with open_real(real_fixtures, TOOLS, manifest_root(real_fixtures / TOOLS), tmp_path) as cat:
        assert (cat.schema, cat.schema_revision, cat.revision, cat.ttl) == (2.5, 7, 3, 240)
        assert cat.root_prefix == "" and cat.mountpoint == ""
        assert cat.previous_revision == ContentHash.from_hex("280cd917f5fb67cfa2dfb4e8f5262c4b6b66cc4d")
        assert cat.last_modified == 1795541170
        assert cat.volatile is False
        root = cat.lookup("")
        assert root is not None and cat.lookup("/") == root
        assert (root.path, root.name, root.flags, root.mode, root.mtime) == ("", "", 1, 0o40755, 1795541166)
        assert root.is_dir and root.file_type == "d" and root.content_hash is None
        assert cat.lookup("/no/such") is None
        stats = cat.statistics()
        assert stats["self_regular"] == 36 and stats["self_chunks"] == 22 and stats["subtree_nested"] == 1


def test_real_listdir_cases(real_fixtures: Path, tmp_path: Path) -> None:
    with open_real(real_fixtures, TOOLS, TOOLS_ROOT, tmp_path) as cat:
        names = [e.name for e in cat.listdir("/cases")]
        assert names == [
            "Grüße aus Köln – 日本語 ✓.txt",
            "abs-link",
            "broken-link",
            "dir-link",
            "empty.txt",
            "emptydir",
            "frozen-0444.txt",
            "rel-link",
            "runme-0755.sh",
            "secret-0600.key",
            "twin-a.dat",
            "twin-b.dat",
        ]
        by_name = {e.name: e for e in cat.listdir("/cases")}
        assert by_name["emptydir"].path == "/cases/emptydir" and by_name["emptydir"].is_dir
        assert by_name["frozen-0444.txt"].mode & 0o7777 == 0o444
        empty = by_name["empty.txt"]
        assert empty.content_hash == ContentHash.from_hex("e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78")
        assert empty.flags == 4 and empty.is_regular and empty.compression is Compression.ZLIB


def test_real_hardlink_pair(real_fixtures: Path, tmp_path: Path) -> None:
    with open_real(real_fixtures, TOOLS, TOOLS_ROOT, tmp_path) as cat:
        a, b = cat.lookup("/cases/twin-a.dat"), cat.lookup("/cases/twin-b.dat")
        assert a is not None and b is not None
        assert a.hardlinks == b.hardlinks == 0x100000002
        assert (a.nlink, a.hardlink_group) == (2, 1) and (b.nlink, b.hardlink_group) == (2, 1)
        assert a.content_hash == b.content_hash
        plain = cat.lookup("/cases/empty.txt")
        assert plain is not None and (plain.nlink, plain.hardlink_group) == (1, 0)


def test_real_variant_symlink_keeps_raw_target(real_fixtures: Path, tmp_path: Path) -> None:
    with open_real(real_fixtures, TOOLS, TOOLS_ROOT, tmp_path) as cat:
        link = cat.lookup("/flavors/current")
        assert link is not None
        assert link.is_symlink and link.file_type == "l" and link.flags == 12
        assert link.symlink == "$(TOOLS_FLAVOR:-generic)" and link.size == 24
        assert link.content_hash is None


def test_real_chunk_list_of_noise_file(real_fixtures: Path, tmp_path: Path) -> None:
    with open_real(real_fixtures, TOOLS, TOOLS_ROOT, tmp_path) as cat:
        entry = cat.lookup("/share/data/noise-1.5MiB.bin")
        assert entry is not None
        assert entry.is_chunked and entry.flags == 68 and entry.content_hash is None  # no bulk hash
        chunks = cat.chunks(entry)
        assert len(chunks) == 12
        assert chunks[0].offset == 0
        assert sum(c.size for c in chunks) == entry.size == 1573864
        for prev, nxt in zip(chunks, chunks[1:], strict=False):
            assert nxt.offset == prev.offset + prev.size
        for c in chunks:
            assert c.content_hash.algorithm is HashAlgorithm.SHA1
            assert (real_fixtures / TOOLS / c.content_hash.object_path(ObjectType.PARTIAL)).is_file()
        plain = cat.lookup("/etc/tools.conf")
        assert plain is not None and cat.chunks(plain) == []


def test_real_nested_catalogs_and_find_nested(real_fixtures: Path, tmp_path: Path) -> None:
    with open_real(real_fixtures, TOOLS, TOOLS_ROOT, tmp_path) as cat:
        toolkit = NestedRef("/lib/python/toolkit", ContentHash.from_hex(TOOLS_TOOLKIT_V2), 57344, False)
        assert cat.nested_catalogs() == [toolkit]
        mountpoint = cat.lookup("/lib/python/toolkit")
        assert mountpoint is not None and mountpoint.flags == 3 and mountpoint.is_nested_mountpoint
        assert cat.find_nested("/lib/python/toolkit") is None  # stat comes from the parent
        assert cat.find_nested("/lib/python/toolkit", for_listing=True) == toolkit
        assert cat.find_nested("/lib/python/toolkit/formats/x.py") == toolkit
        assert cat.find_nested("/lib/python/toolkitx") is None  # component boundary
        assert cat.find_nested("/lib/python", for_listing=True) is None
        assert cat.lookup("/lib/python/toolkit/__init__.py") is None  # lives in the child
    with open_real(real_fixtures, TOOLS, TOOLS_TOOLKIT_V2, tmp_path, "/lib/python/toolkit") as child:
        assert child.root_prefix == "/lib/python/toolkit" and child.revision == 2
        root = child.lookup("/lib/python/toolkit")
        assert root is not None and root.flags == 33 and root.is_nested_root and root.name == "toolkit"
        assert child.nested_catalogs() == [
            NestedRef("/lib/python/toolkit/formats", ContentHash.from_hex(TOOLS_FORMATS), 57344, False)
        ]
        assert ".cvmfscatalog" in [e.name for e in child.listdir("/lib/python/toolkit")]
        with pytest.raises(ValueError):
            child.lookup("/lib")  # outside this catalog
    with open_real(real_fixtures, TOOLS, TOOLS_FORMATS, tmp_path) as inner:
        # Mountpoint defaults to root_prefix; a first-ever nested catalog has no previous revision.
        assert inner.mountpoint == "/lib/python/toolkit/formats"
        assert inner.previous_revision is None and inner.nested_catalogs() == []
        assert "TTL" not in inner.properties and inner.ttl == 240


def test_real_shake128_flags_and_uncompressed_chunks(real_fixtures: Path, tmp_path: Path) -> None:
    with open_real(real_fixtures, SHAKE, manifest_root(real_fixtures / SHAKE), tmp_path) as cat:
        hello = cat.lookup("/hello.txt")
        assert hello is not None and hello.flags == 516
        assert hello.hash_algorithm is HashAlgorithm.SHAKE128 and hello.compression is Compression.ZLIB
        assert hello.content_hash is not None and hello.content_hash.hex.endswith("-shake128")
        raw = cat.lookup("/raw/zeros-24KiB.bin")
        assert raw is not None and raw.flags == 2564 and raw.compression is Compression.NONE
        blob = cat.lookup("/blob/chunked.bin")
        assert blob is not None and blob.flags == 2628 and blob.size == 399365
        chunks = cat.chunks(blob)
        assert len(chunks) == 7 and sum(c.size for c in chunks) == 399365
        for c in chunks:
            assert c.content_hash.algorithm is HashAlgorithm.SHAKE128
            stored = real_fixtures / SHAKE / c.content_hash.object_path(ObjectType.PARTIAL)
            assert stored.stat().st_size == c.size  # stored raw
        (sub,) = cat.nested_catalogs()
        assert sub.path == "/sub" and sub.content_hash is not None
        assert sub.content_hash.algorithm is HashAlgorithm.SHAKE128


@pytest.mark.parametrize(
    ("repo", "truth"),
    [(TOOLS, "tools.example.org.truth.tsv"), (SHAKE, "tiny-shake.example.org.truth.tsv")],
)
def test_real_tree_matches_truth(real_fixtures: Path, tmp_path: Path, repo: str, truth: str) -> None:
    """Walk every catalog as the spec's pseudo-code does and compare with the real client's view."""
    expected = read_truth(real_fixtures / truth)
    walker = Walker(real_fixtures, repo, manifest_root(real_fixtures / repo), tmp_path)
    try:
        entries = walker.walk()
        assert sorted(e.path for e in entries) == sorted(expected)
        for e in entries:
            cols = expected[e.path]
            assert e.file_type == cols[1], e.path
            assert e.mode & 0o7777 == int(cols[2], 8), e.path
            assert e.size == int(cols[3]), e.path
            assert e.symlink == cols[5], e.path
            if e.file_type == "f":
                assert hashlib.sha256(walker.content(e)).hexdigest() == cols[4], e.path
            assert e.mtime == int(cols[6]), e.path
            if cols[7]:
                assert e.nlink == int(cols[7]), e.path
    finally:
        walker.close()


def test_real_bind_mount_translates_paths(real_fixtures: Path, tmp_path: Path) -> None:
    """A root catalog mounted elsewhere (snapshot) is keyed by root_prefix + relative path."""
    old = "280cd917f5fb67cfa2dfb4e8f5262c4b6b66cc4d"  # revision 2
    with open_real(real_fixtures, TOOLS, old, tmp_path, mountpoint="/.cvmfs/snapshots/trunk-previous") as cat:
        link = cat.lookup("/.cvmfs/snapshots/trunk-previous/cases/rel-link")
        assert link is not None and link.symlink == "../bin/tput"
        assert link.path == "/.cvmfs/snapshots/trunk-previous/cases/rel-link"
        root = cat.lookup("/.cvmfs/snapshots/trunk-previous")
        assert root is not None and root.is_dir and root.name == "trunk-previous"
        names = [e.name for e in cat.listdir("/.cvmfs/snapshots/trunk-previous/etc")]
        assert "tools.conf" in names
        (ref,) = cat.nested_catalogs()
        assert ref.path == "/.cvmfs/snapshots/trunk-previous/lib/python/toolkit"
        assert cat.find_nested("/.cvmfs/snapshots/trunk-previous/lib/python/toolkit/a") == ref
        with pytest.raises(ValueError):
            cat.lookup("/cases")


def test_closed_catalog_refuses_queries(real_fixtures: Path, tmp_path: Path) -> None:
    cat = open_real(real_fixtures, TOOLS, TOOLS_ROOT, tmp_path)
    cat.close()
    with pytest.raises(CatalogError):
        cat.lookup("")


# ----- crafted catalogs ------------------------------------------------------------------------

SHA = HashAlgorithm.SHA1
HELLO = ContentHash.of(SHA, b"x")


def make_catalog(tmp_path: Path, name: str = "c.db") -> Path:
    """A small valid root catalog: /, /d, /d/f."""
    w = CatalogWriter(tmp_path / name, "", revision=1, last_modified=1, is_root=True)
    w.add_entry(DirEntry("", "", 0o40755, 4096, 1, make_flags("d"), hardlinks=3))
    w.add_entry(DirEntry("/d", "d", 0o40755, 4096, 1, make_flags("d"), hardlinks=2))
    w.add_entry(DirEntry("/d/f", "f", 0o100644, 1, 1, make_flags("f", algorithm=SHA), content_hash=HELLO))
    return w.close()


def raw_insert(
    db: Path,
    path: str,
    name: str,
    *,
    parent: str | None = None,
    flags: int = 4,
    mode: int = 0o100644,
    **cols: object,
) -> None:
    """Insert a row with sqlite3 directly, bypassing the writer's checks."""
    m = md5path(path)
    p = md5path(path.rpartition("/")[0] if parent is None else parent)
    row: dict[str, object] = {
        "md5path_1": m[0],
        "md5path_2": m[1],
        "parent_1": p[0],
        "parent_2": p[1],
        "hardlinks": 1,
        "hash": None,
        "size": 0,
        "mode": mode,
        "mtime": 0,
        "flags": flags,
        "name": name,
        "symlink": "",
        "uid": 0,
        "gid": 0,
    }
    row.update(cols)
    with sqlite3.connect(db) as conn:
        conn.execute(
            f"INSERT INTO catalog ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        )


def sql(db: Path, statement: str, *args: object) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(statement, args)


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "x\x00y", ""])
def test_hostile_names_in_listing_are_refused(tmp_path: Path, bad: str) -> None:
    db = make_catalog(tmp_path)
    raw_insert(db, f"/d/{bad}", bad, parent="/d")
    with Catalog(db, "crafted") as cat, pytest.raises(HostileCatalog) as info:
        cat.listdir("/d")
    assert info.value.source == "crafted" and repr(bad) in info.value.reason


def test_hostile_name_under_honest_md5_is_refused(tmp_path: Path) -> None:
    # The row sits at md5("/d/g") but calls itself "..": lookup must not trust it.
    db = make_catalog(tmp_path)
    raw_insert(db, "/d/g", "..")
    with Catalog(db, "crafted") as cat:
        with pytest.raises(HostileCatalog, match="last component"):
            cat.lookup("/d/g")
        with pytest.raises(HostileCatalog):
            cat.listdir("/d")


def test_listing_row_with_wrong_md5path_is_refused(tmp_path: Path) -> None:
    db = make_catalog(tmp_path)
    raw_insert(db, "/d/real", "real")
    sql(db, "UPDATE catalog SET name = 'fake' WHERE name = 'real'")
    with Catalog(db, "crafted") as cat, pytest.raises(HostileCatalog, match="md5path"):
        cat.listdir("/d")


@pytest.mark.parametrize("bad", ["/elsewhere", "/d/../x", "d/x", "/d/", "/d//x", "/", ""])
def test_hostile_nested_path_is_refused(tmp_path: Path, bad: str) -> None:
    w = CatalogWriter(tmp_path / "n.db", "/d", revision=1, last_modified=1, is_root=False)
    w.add_entry(DirEntry("/d", "d", 0o40755, 4096, 1, make_flags("d")))
    w.close()
    sql(tmp_path / "n.db", "INSERT INTO nested_catalogs VALUES (?, ?, 0)", bad, HELLO.hex)
    with Catalog(tmp_path / "n.db", "crafted") as cat, pytest.raises(HostileCatalog):
        cat.nested_catalogs()


def test_nested_path_equal_to_own_mountpoint_is_refused(tmp_path: Path) -> None:
    """A catalog naming itself as its own nested catalog would loop forever."""
    w = CatalogWriter(tmp_path / "n.db", "/d", revision=1, last_modified=1, is_root=False)
    w.add_entry(DirEntry("/d", "d", 0o40755, 4096, 1, make_flags("d")))
    w.close()
    sql(tmp_path / "n.db", "INSERT INTO nested_catalogs VALUES ('/d', ?, 0)", HELLO.hex)
    with Catalog(tmp_path / "n.db", "crafted") as cat, pytest.raises(HostileCatalog, match="strictly below"):
        cat.find_nested("/d/x")


def test_malformed_nested_hash_is_refused(tmp_path: Path) -> None:
    db = make_catalog(tmp_path)
    sql(db, "INSERT INTO nested_catalogs VALUES ('/d', 'ABCDEF', 0)")
    with Catalog(db, "crafted") as cat, pytest.raises(HostileCatalog):
        cat.nested_catalogs()


def test_malformed_xattr_row_is_refused(tmp_path: Path) -> None:
    db = make_catalog(tmp_path)
    raw_insert(db, "/d/x", "x", xattr=b"\x01\x05")
    with Catalog(db, "crafted") as cat, pytest.raises(HostileCatalog):
        cat.lookup("/d/x")


def test_flags_disagreeing_with_mode_are_refused(tmp_path: Path) -> None:
    db = make_catalog(tmp_path)
    raw_insert(db, "/d/x", "x", flags=1, mode=0o100644)  # "directory" with a file mode
    with Catalog(db, "crafted") as cat, pytest.raises(HostileCatalog, match="disagree"):
        cat.lookup("/d/x")


def test_bad_hash_blob_is_refused(tmp_path: Path) -> None:
    db = make_catalog(tmp_path)
    raw_insert(db, "/d/x", "x", hash=b"short")
    with Catalog(db, "crafted") as cat, pytest.raises(HostileCatalog):
        cat.lookup("/d/x")


def _chunked_catalog(tmp_path: Path, chunks: list[tuple[int, int]]) -> Path:
    db = make_catalog(tmp_path)
    raw_insert(db, "/d/big", "big", flags=make_flags("f", algorithm=SHA, chunked=True), size=100)
    m = md5path("/d/big")
    for offset, size in chunks:
        sql(db, "INSERT INTO chunks VALUES (?, ?, ?, ?, ?)", m[0], m[1], offset, size, HELLO.digest)
    return db


@pytest.mark.parametrize(
    "layout",
    [
        [(0, 40), (50, 50)],  # gap
        [(0, 60), (50, 50)],  # overlap
        [(0, 40), (40, 40)],  # short
        [(10, 90)],  # does not start at 0
        [(0, 100), (100, 0)],  # empty chunk
    ],
)
def test_chunks_not_covering_the_file_are_refused(tmp_path: Path, layout: list[tuple[int, int]]) -> None:
    with Catalog(_chunked_catalog(tmp_path, layout), "crafted") as cat:
        entry = cat.lookup("/d/big")
        assert entry is not None
        with pytest.raises(HostileCatalog):
            cat.chunks(entry)


def test_contiguous_chunks_are_returned_in_offset_order(tmp_path: Path) -> None:
    with Catalog(_chunked_catalog(tmp_path, [(60, 40), (0, 60)]), "crafted") as cat:
        entry = cat.lookup("/d/big")
        assert entry is not None
        assert cat.chunks(entry) == [Chunk(0, 60, HELLO), Chunk(60, 40, HELLO)]


def test_chunked_file_without_chunks_is_corrupt(tmp_path: Path) -> None:
    with Catalog(_chunked_catalog(tmp_path, []), "crafted") as cat:
        entry = cat.lookup("/d/big")
        assert entry is not None
        with pytest.raises(CorruptObject):
            cat.chunks(entry)


# ----- schema versions -------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.6", "3.0", "2.0", "2.3"])
def test_unsupported_schema_is_refused(tmp_path: Path, version: str) -> None:
    db = make_catalog(tmp_path)
    sql(db, "UPDATE properties SET value = ? WHERE key = 'schema'", version)
    with pytest.raises(CatalogError, match="unsupported"):
        Catalog(db, "crafted")


@pytest.mark.parametrize("version", ["2.4", "2.4999", "2.5001"])
def test_supported_schema_with_epsilon(tmp_path: Path, version: str) -> None:
    db = make_catalog(tmp_path)
    sql(db, "UPDATE properties SET value = ? WHERE key = 'schema'", version)
    with Catalog(db, "crafted") as cat:
        assert cat.lookup("/d/f") is not None


def test_not_a_database_is_a_catalog_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogError):
        Catalog(junk, "junk")
    with pytest.raises(CatalogError):
        Catalog(tmp_path / "missing", "missing")


def test_upgraded_column_order_and_old_revision(tmp_path: Path) -> None:
    """Rev 6 catalog whose xattr was appended by ALTER TABLE and which has no mtimens."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));
            CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, parent_2 INTEGER,
              hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, flags INTEGER,
              name TEXT, symlink TEXT, uid INTEGER, gid INTEGER,
              CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2));
            ALTER TABLE catalog ADD xattr BLOB;
            CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER);
            CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER);
            CREATE TABLE statistics (counter TEXT, value INTEGER);
            CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER,
              hash BLOB);
            INSERT INTO properties VALUES ('schema', '2.5'), ('schema_revision', '6'), ('revision', '9');
            """
        )
    raw_insert(db, "", "", flags=1, mode=0o40755, parent_1=0, parent_2=0)
    raw_insert(db, "/f", "f", xattr=encode_xattrs({"user.k": b"v"}), uid=7, gid=8)
    with Catalog(db, "old") as cat:
        assert cat.schema_revision == 6 and cat.revision == 9
        (f,) = cat.listdir("")
        assert f.xattrs == {"user.k": b"v"} and (f.uid, f.gid) == (7, 8) and f.mtime_ns is None


def test_legacy_schema_uses_inode_column(tmp_path: Path) -> None:
    """Schema < 2.1: no hardlinks/uid/gid/xattr columns; hashes are SHA-1 whatever the flags."""
    db = tmp_path / "legacy.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE properties (key TEXT, value TEXT);
            CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, parent_2 INTEGER,
              inode INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, flags INTEGER,
              name TEXT, symlink TEXT);
            CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT);
            INSERT INTO properties VALUES ('schema', '1.2');
            """
        )
    m, p = md5path("/f"), md5path("")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO catalog VALUES (?, ?, ?, ?, 77, ?, 1, ?, 5, 4, 'f', '')",
            (m[0], m[1], p[0], p[1], HELLO.digest, 0o100644),
        )
        conn.execute("INSERT INTO nested_catalogs VALUES ('/n', '')")
    with Catalog(db, "legacy") as cat:
        assert cat.schema == 1.2 and cat.statistics() == {}
        f = cat.lookup("/f")
        assert f is not None and f.content_hash == HELLO and f.nlink == 1 and f.hardlink_group == 0
        assert cat.nested_catalogs() == [NestedRef("/n", None, 0, False)]


def _all_rows(cat: Catalog) -> list[tuple[str, tuple[object, ...]]]:
    """(catalog path, raw row) of every entry reachable by listing from the catalog's root."""
    conn = cat._raw_connection()

    def row(path: str) -> tuple[str, tuple[object, ...]]:
        cpath = cat._to_catalog(path)
        return cpath, conn.execute(cat._lookup_sql, md5path(cpath)).fetchone()

    found, todo = [row(cat.mountpoint)], [cat.mountpoint]
    while todo:
        for e in cat.listdir(todo.pop()):
            found.append(row(e.path))
            if e.is_dir:
                todo.append(e.path)
    return found


@pytest.mark.parametrize(("repo", "root"), [(TOOLS, TOOLS_ROOT), (TOOLS, TOOLS_FORMATS), (SHAKE, SHAKE_ROOT)])
def test_fast_row_decoding_equals_the_general_one(
    real_fixtures: Path, tmp_path: Path, repo: str, root: str
) -> None:
    with open_real(real_fixtures, repo, root, tmp_path) as cat:
        rows = _all_rows(cat)
        assert len(rows) > 5
        for cpath, row in rows:
            general = cat._make_entry(dict(zip(cat._entry_columns, row, strict=True)), cpath)
            assert cat._decode_row(row, cpath) == general


@pytest.mark.parametrize(
    "cols",
    [
        {"size": -1},
        {"size": "twelve"},
        {"mode": 1 << 33},
        {"mtime": 1.5},
        {"uid": None},
        {"symlink": b"/target"},
        {"flags": make_flags("f", algorithm=SHA) | (6 << 8), "hash": HELLO.digest},  # unknown algorithm
        {"flags": 8, "mode": 0o100644},  # a "symlink" with a file mode
    ],
)
def test_hostile_row_fields_are_refused_by_lookup(tmp_path: Path, cols: dict[str, object]) -> None:
    db = make_catalog(tmp_path)
    raw_insert(db, "/d/x", "x", **cols)
    with Catalog(db, "crafted") as cat, pytest.raises((HostileCatalog, CatalogError, UnknownHashAlgorithm)):
        cat.lookup("/d/x")
