"""Publisher: the Stratum-0 tree it writes has the real publisher's layout, formats and objects."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cvmfs_client import publisher as publisher_module
from cvmfs_client.catalog import Catalog, DirEntry
from cvmfs_client.errors import ConfigError, IntegrityError, RepositoryNameMismatch
from cvmfs_client.hashing import ContentHash, HashAlgorithm, ObjectType
from cvmfs_client.history import History
from cvmfs_client.keys import RepositoryKeys, ensure_repository_keys, load_certificate
from cvmfs_client.manifest import parse_manifest, verify_manifest_signature
from cvmfs_client.objects import Compression, decode_bytes
from cvmfs_client.publisher import METAINFO_SKELETON, PublishResult, publish
from cvmfs_client.whitelist import check_certificate, parse_whitelist, verify_whitelist

FQRN = "test.example.org"
KiB = 1024
SMALL_CHUNKS = (16 * KiB, 32 * KiB, 64 * KiB)
NOW = 1_780_000_000  # 2026-05-28
FILE_MTIME = 1_750_000_000
UNICODE = "Grüße aus Köln – 日本語 ✓.txt"
TYPE_CHARS = {"C", "P", "X", "H", "M"}


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One key set for all tests: RSA key generation is slow."""
    d = tmp_path_factory.mktemp("keys")
    ensure_repository_keys(d, FQRN)
    return d


@pytest.fixture
def keys(keys_dir: Path) -> RepositoryKeys:
    return ensure_repository_keys(keys_dir, FQRN)


def _write(path: Path, data: bytes, mode: int = 0o644, mtime: int = FILE_MTIME) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime * 10**9, mtime * 10**9 + 123))


def build_tree(root: Path) -> Path:
    """Every kind of entry the publisher handles, with fixed mtimes."""
    _write(root / "README", b"hello\n")
    _write(root / "bin" / "run.sh", b"#!/bin/sh\necho run\n", 0o755)
    _write(root / "cases" / "empty.txt", b"")
    _write(root / "cases" / "secret.key", b"s3cret\n", 0o600)
    _write(root / "cases" / UNICODE, b"unicode\n")
    _write(root / "cases" / "twin-a.dat", b"twins share an inode\n")
    os.link(root / "cases" / "twin-a.dat", root / "cases" / "twin-b.dat")
    os.symlink("../README", root / "cases" / "rel-link")
    os.symlink("$(FLAVOR:-generic)", root / "cases" / "variant")
    os.mkfifo(root / "cases" / "pipe")
    (root / "cases" / "emptydir").mkdir()
    rng = random.Random(5)
    _write(root / "data" / "noise.bin", rng.randbytes(200 * KiB))
    _write(root / "data" / "small.bin", rng.randbytes(10 * KiB))  # below the minimum: never chunked
    _write(root / "sw" / ".cvmfscatalog", b"")
    _write(root / "sw" / "v1" / "lib.py", b"print('v1')\n")
    _write(root / "sw" / "inner" / ".cvmfscatalog", b"")
    _write(root / "sw" / "inner" / "deep" / "leaf.txt", b"leaf\n")
    _write(root / "other" / ".cvmfscatalog", b"")
    _write(root / "other" / "x.txt", b"x\n")
    for d in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        os.utime(d, (FILE_MTIME + 7, FILE_MTIME + 7))
    return root


def do_publish(src: Path, stratum0: Path, keys_dir: Path, **kw: object) -> PublishResult:
    kw.setdefault("chunk_sizes", SMALL_CHUNKS)
    kw.setdefault("now", NOW)
    return publish(src, FQRN, stratum0, keys_dir, **kw)  # type: ignore[arg-type]


def objects_in(stratum0: Path) -> dict[str, Path]:
    out = {}
    for p in (stratum0 / "data").glob("??/*"):
        out[p.parent.name + p.name] = p
    return out


def split_name(name: str) -> tuple[str, str]:
    """``hexid`` (with algorithm suffix) and type char of an object file name."""
    if name[-1] in TYPE_CHARS:
        return name[:-1], name[-1]
    return name, ""


def open_catalog(stratum0: Path, h: ContentHash, mountpoint: str, tmp_path: Path) -> Catalog:
    stored = (stratum0 / h.object_path(ObjectType.CATALOG)).read_bytes()
    db = tmp_path / f"{h.hex}.db"
    db.write_bytes(decode_bytes(stored, h, Compression.ZLIB, "catalog"))
    return Catalog(db, f"catalog {h.hex}", mountpoint)


@pytest.fixture
def published(tmp_path: Path, keys_dir: Path) -> tuple[Path, Path, PublishResult]:
    src = build_tree(tmp_path / "src")
    stratum0 = tmp_path / "s0"
    return src, stratum0, do_publish(src, stratum0, keys_dir)


# ----- layout and object names ------------------------------------------------------------------


def test_layout_of_a_stratum0(published: tuple[Path, Path, PublishResult]) -> None:
    _, s0, result = published
    for i in range(256):
        assert (s0 / "data" / f"{i:02x}").is_dir()
    assert (s0 / "data" / "txn").is_dir()
    assert [p.name for p in (s0 / "data" / "txn").iterdir()] == ["publish.lock"]  # no leftovers
    for name in (".cvmfspublished", ".cvmfswhitelist", ".cvmfsreflog", ".cvmfs_master_replica"):
        assert (s0 / name).is_file()
    assert result.revision == 1


@pytest.mark.parametrize("algorithm", list(HashAlgorithm))
@pytest.mark.parametrize("compression", list(Compression))
def test_every_object_is_named_by_the_hash_of_its_bytes(
    tmp_path: Path, keys_dir: Path, algorithm: HashAlgorithm, compression: Compression
) -> None:
    src = build_tree(tmp_path / "src")
    s0 = tmp_path / "s0"
    result = do_publish(src, s0, keys_dir, hash_algorithm=algorithm, compression=compression)
    objects = objects_in(s0)
    assert result.objects_written == len(objects)
    kinds = set()
    for name, path in objects.items():
        hexid, kind = split_name(name)
        kinds.add(kind)
        assert hexid.endswith(algorithm.suffix)
        assert ContentHash.of(algorithm, path.read_bytes()) == ContentHash.from_hex(hexid), name
        if kind in ("C", "X", "H", "M") or compression is Compression.ZLIB:
            zlib.decompress(path.read_bytes())  # always zlib, whatever the file compression
    assert kinds == {"", "C", "P", "X", "H", "M"}
    assert result.manifest.root_catalog.algorithm is algorithm


def test_uncompressed_objects_hold_the_file_bytes(tmp_path: Path, keys_dir: Path) -> None:
    src = build_tree(tmp_path / "src")
    s0 = tmp_path / "s0"
    result = do_publish(src, s0, keys_dir, compression=Compression.NONE)
    with open_catalog(s0, result.root_hash, "", tmp_path) as cat:
        readme = cat.lookup("/README")
        assert readme is not None and readme.content_hash is not None
        assert readme.flags == 4 | 2048
        assert (s0 / readme.content_hash.object_path()).read_bytes() == b"hello\n"


# ----- manifest, certificate, whitelist, meta-info, reflog ---------------------------------------


def test_manifest_verifies_with_the_certificate_and_whitelist_with_master_key(
    published: tuple[Path, Path, PublishResult], keys: RepositoryKeys
) -> None:
    _, s0, result = published
    raw = (s0 / ".cvmfspublished").read_bytes()
    m = parse_manifest(raw)
    assert m == result.manifest
    assert raw.split(b"\n--\n")[0].decode().split("\n")[:1] == [f"C{m.root_catalog.hex}"]
    keys_in_order = [line[:1] for line in raw.split(b"\n--\n")[0].decode().split("\n")]
    assert keys_in_order == list("CBRDSGANXHTMY")
    assert m.certificate is not None and m.history and m.metainfo and m.reflog
    cert_stored = (s0 / m.certificate.object_path(ObjectType.CERTIFICATE)).read_bytes()
    cert = load_certificate(decode_bytes(cert_stored, m.certificate, Compression.ZLIB, "X"), "X")
    verify_manifest_signature(raw, cert)
    now = datetime.fromtimestamp(NOW, UTC)
    wl = verify_whitelist((s0 / ".cvmfswhitelist").read_bytes(), [keys.master_public_key], FQRN, now)
    check_certificate(wl, cert)
    assert wl.expires == now + timedelta(days=30)
    assert m.fqrn == FQRN and m.ttl == 240 and m.timestamp == NOW and m.revision == 1
    assert not m.garbage_collectable and not m.alt_paths
    assert m.reflog == ContentHash.of(HashAlgorithm.SHA1, (s0 / ".cvmfsreflog").read_bytes())
    meta = (s0 / m.metainfo.object_path(ObjectType.METAINFO)).read_bytes()
    assert zlib.decompress(meta) == METAINFO_SKELETON
    root_stored = (s0 / m.root_catalog.object_path(ObjectType.CATALOG)).read_bytes()
    assert m.root_catalog_size == len(zlib.decompress(root_stored))


def test_metainfo_is_the_real_skeleton(real_fixtures: Path) -> None:
    fixture = real_fixtures / "tools.example.org" / "data" / "85" / "e4f386da0d5d77c7f66cf2f58e10951f24b653M"
    assert zlib.decompress(fixture.read_bytes()) == METAINFO_SKELETON


def test_reflog_has_the_real_schema(published: tuple[Path, Path, PublishResult], real_fixtures: Path) -> None:
    _, s0, result = published

    def schema(p: Path) -> list[str]:
        with sqlite3.connect(f"file:{p}?mode=ro&immutable=1", uri=True) as c:
            return [r[0] for r in c.execute("SELECT sql FROM sqlite_master ORDER BY rowid")]

    assert schema(s0 / ".cvmfsreflog") == schema(real_fixtures / "tools.example.org" / ".cvmfsreflog")
    with sqlite3.connect(f"file:{s0 / '.cvmfsreflog'}?mode=ro&immutable=1", uri=True) as c:
        props = dict(c.execute("SELECT key, value FROM properties"))
        refs = c.execute("SELECT hash, type FROM refs").fetchall()
    assert props == {"schema": "1.0", "schema_revision": "0", "fqrn": FQRN}
    m = result.manifest
    assert m.certificate and m.history and m.metainfo
    assert refs[1:] == [
        (m.root_catalog.hex, 0),
        (m.certificate.hex, 1),
        (m.history.hex, 2),
        (m.metainfo.hex, 3),
    ]
    assert refs[0][1] == 0  # revision 0, the empty catalog mkfs makes


# ----- catalogs --------------------------------------------------------------------------------


def test_first_publish_makes_revision_zero_then_one(
    published: tuple[Path, Path, PublishResult], tmp_path: Path
) -> None:
    _, s0, result = published
    with open_catalog(s0, result.root_hash, "", tmp_path) as root:
        assert root.revision == 1
        assert root.ttl == 240
        assert root.last_modified == NOW
        rev0_hash = root.previous_revision
        assert rev0_hash is not None
        root_entry = root.lookup("")
    with open_catalog(s0, rev0_hash, "", tmp_path) as rev0:
        assert rev0.revision == 0
        assert rev0.previous_revision is None
        assert [e.name for e in rev0.listdir("")] == []
        rev0_root = rev0.lookup("")
    assert root_entry is not None and rev0_root is not None
    assert root_entry.mtime == rev0_root.mtime == NOW  # the root entry keeps revision 0's values
    assert root_entry.mode == stat.S_IFDIR | 0o755
    assert root_entry.nlink == 2 + 5  # bin, cases, data, sw, other


def test_catalog_rows_match_the_source(published: tuple[Path, Path, PublishResult], tmp_path: Path) -> None:
    src, s0, result = published
    with open_catalog(s0, result.root_hash, "", tmp_path) as root:

        def entry(path: str) -> DirEntry:
            e = root.lookup(path)
            assert e is not None, path
            return e

        readme = entry("/README")
        st = os.lstat(src / "README")
        assert (readme.mode, readme.size, readme.uid, readme.gid) == (st.st_mode, 6, st.st_uid, st.st_gid)
        assert (readme.mtime, readme.mtime_ns) == (FILE_MTIME, 123)
        assert readme.flags == 4
        assert readme.content_hash == ContentHash.of(HashAlgorithm.SHA1, zlib.compress(b"hello\n"))
        assert entry("/bin/run.sh").mode == stat.S_IFREG | 0o755
        assert entry("/cases/secret.key").mode == stat.S_IFREG | 0o600
        assert entry(f"/cases/{UNICODE}").size == len(b"unicode\n")
        empty = entry("/cases/empty.txt")
        assert (
            empty.content_hash is not None
            and empty.content_hash.hex == "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"
        )

        link = entry("/cases/rel-link")
        assert (link.flags, link.symlink, link.size, link.content_hash) == (12, "../README", 9, None)
        assert entry("/cases/variant").symlink == "$(FLAVOR:-generic)"

        pipe = entry("/cases/pipe")
        assert pipe.flags == 4 | 16 and stat.S_ISFIFO(pipe.mode) and pipe.size == 0

        a, b = entry("/cases/twin-a.dat"), entry("/cases/twin-b.dat")
        assert a.hardlinks == b.hardlinks == (1 << 32) | 2
        assert a.content_hash == b.content_hash
        assert entry("/README").hardlinks == 1

        cases = entry("/cases")
        assert (cases.size, cases.flags, cases.nlink, cases.mtime) == (4096, 1, 3, FILE_MTIME + 7)
        assert entry("/cases/emptydir").nlink == 2

        noise = entry("/data/noise.bin")
        assert noise.flags == 4 | 64 and noise.content_hash is None
        chunks = root.chunks(noise)
        assert len(chunks) > 1 and sum(c.size for c in chunks) == 200 * KiB
        data = (src / "data" / "noise.bin").read_bytes()
        for c in chunks:
            stored = (s0 / c.content_hash.object_path(ObjectType.PARTIAL)).read_bytes()
            assert zlib.decompress(stored) == data[c.offset : c.offset + c.size]
        small = entry("/data/small.bin")
        assert small.flags == 4 and small.content_hash is not None

        sw = entry("/sw")
        assert sw.flags == 1 | 2
        assert root.lookup("/sw/v1") is None  # lives in the nested catalog
        refs = {r.path: r for r in root.nested_catalogs()}
        assert set(refs) == {"/sw", "/other"}
        stats = root.statistics()
    assert stats["self_nested"] == 2
    assert stats["self_chunked"] == 1 and stats["self_chunks"] == len(chunks)
    assert stats["self_special"] == 1 and stats["self_symlink"] == 2

    sw_ref = refs["/sw"]
    assert sw_ref.content_hash is not None
    raw = zlib.decompress((s0 / sw_ref.content_hash.object_path(ObjectType.CATALOG)).read_bytes())
    assert sw_ref.size == len(raw)
    with open_catalog(s0, sw_ref.content_hash, "/sw", tmp_path) as sw_cat:
        assert sw_cat.root_prefix == "/sw"
        assert sw_cat.revision == 1 and sw_cat.previous_revision is None
        top = sw_cat.lookup("/sw")
        assert top is not None and top.flags == 1 | 32 and top.nlink == sw.nlink
        marker = sw_cat.lookup("/sw/.cvmfscatalog")
        assert marker is not None and marker.size == 0 and marker.is_regular
        assert [r.path for r in sw_cat.nested_catalogs()] == ["/sw/inner"]
        sw_stats = sw_cat.statistics()
    assert sw_stats["subtree_regular"] == 2  # inner: marker + leaf.txt
    assert stats["subtree_regular"] == sw_stats["self_regular"] + 2 + 2  # sw, inner, other


def test_same_tree_gives_the_same_catalogs(tmp_path: Path, keys_dir: Path) -> None:
    """Determinism is what lets unchanged nested catalogs be recognised and reused."""
    src = build_tree(tmp_path / "src")
    first = do_publish(src, tmp_path / "a", keys_dir)
    second = do_publish(src, tmp_path / "b", keys_dir)
    assert first.root_hash == second.root_hash
    assert first.manifest.history == second.manifest.history


# ----- republishing ----------------------------------------------------------------------------


def test_republish_makes_next_revision_writing_only_new_objects(
    published: tuple[Path, Path, PublishResult], keys_dir: Path, tmp_path: Path
) -> None:
    src, s0, first = published
    before = set(objects_in(s0))
    (src / "README").write_bytes(b"hello again\n")
    (src / "cases" / "empty.txt").unlink()
    _write(src / "sw" / "v1" / "new.py", b"print('new')\n")
    second = do_publish(src, s0, keys_dir, now=NOW + 60, tag="release-2")
    after = set(objects_in(s0))
    new = after - before
    assert second.revision == 2
    assert second.objects_written == len(new)
    # New: README content, the /sw catalog, new.py, root catalog, history. Nothing else.
    kinds = sorted(split_name(n)[1] for n in new)
    assert kinds == ["", "", "C", "C", "H"]
    assert second.objects_reused > 0

    with open_catalog(s0, second.root_hash, "", tmp_path) as root:
        assert root.revision == 2 and root.previous_revision == first.root_hash
        assert root.last_modified == NOW + 60
        root_entry = root.lookup("")
        refs = {r.path: r for r in root.nested_catalogs()}
        assert root.lookup("/cases/empty.txt") is None
    assert root_entry is not None and root_entry.mtime == NOW  # still revision 0's
    with open_catalog(s0, first.root_hash, "", tmp_path) as old_root:
        old_refs = {r.path: r for r in old_root.nested_catalogs()}
    assert refs["/other"] == old_refs["/other"]  # unchanged: reused
    assert refs["/sw"].content_hash != old_refs["/sw"].content_hash
    sw_hash = refs["/sw"].content_hash
    assert sw_hash is not None
    with open_catalog(s0, sw_hash, "/sw", tmp_path) as sw:
        assert sw.revision == 2 and sw.previous_revision == old_refs["/sw"].content_hash
        inner = {r.path: r for r in sw.nested_catalogs()}
    with open_catalog(s0, old_refs["/sw"].content_hash, "/sw", tmp_path) as old_sw:  # type: ignore[arg-type]
        assert inner == {r.path: r for r in old_sw.nested_catalogs()}  # nested in nested: reused


def test_history_tags_follow_the_real_publisher(
    published: tuple[Path, Path, PublishResult], keys_dir: Path, tmp_path: Path
) -> None:
    src, s0, first = published
    second = do_publish(src, s0, keys_dir, now=NOW + 60, tag="v2")
    h = second.manifest.history
    assert h is not None and first.manifest.history is not None
    db = tmp_path / "history.db"
    db.write_bytes(zlib.decompress((s0 / h.object_path(ObjectType.HISTORY)).read_bytes()))
    with History(db, "history") as hist:
        tags = {t.name: t for t in hist.tags()}
        assert hist.fqrn == FQRN
        assert hist.previous_revision == first.manifest.history
    assert set(tags) == {
        "generic-2026-05-28T20:26:40Z",
        "generic-2026-05-28T20:27:40Z",
        "v2",
        "trunk",
        "trunk-previous",
    }
    assert (tags["trunk"].root_hash, tags["trunk"].revision) == (second.root_hash, 2)
    assert tags["trunk"].description == "current HEAD"
    assert (tags["trunk-previous"].root_hash, tags["trunk-previous"].revision) == (first.root_hash, 1)
    assert tags["trunk-previous"].description == "default undo target"
    assert tags["trunk"].size == second.manifest.root_catalog_size
    assert tags["v2"].root_hash == second.root_hash


def test_existing_tag_is_refused(published: tuple[Path, Path, PublishResult], keys_dir: Path) -> None:
    src, s0, _ = published
    do_publish(src, s0, keys_dir, now=NOW + 1, tag="stable")
    with pytest.raises(ConfigError, match="already exists"):
        do_publish(src, s0, keys_dir, now=NOW + 2, tag="stable")


def test_tampered_previous_manifest_is_refused(
    published: tuple[Path, Path, PublishResult], keys_dir: Path
) -> None:
    src, s0, _ = published
    raw = bytearray((s0 / ".cvmfspublished").read_bytes())
    raw[raw.index(b"\nD240") + 2] = ord("9")
    (s0 / ".cvmfspublished").write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        do_publish(src, s0, keys_dir, now=NOW + 1)


def test_other_repository_in_the_same_tree_is_refused(
    published: tuple[Path, Path, PublishResult], tmp_path: Path
) -> None:
    src, s0, _ = published
    with pytest.raises(RepositoryNameMismatch):
        publish(src, "other.example.org", s0, tmp_path / "other-keys", chunk_sizes=None, now=NOW + 1)


def test_failed_publish_leaves_the_previous_revision_visible(
    published: tuple[Path, Path, PublishResult], keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, s0, first = published
    manifest = (s0 / ".cvmfspublished").read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(publisher_module, "write_history", boom)
    (src / "README").write_bytes(b"changed\n")
    with pytest.raises(RuntimeError):
        do_publish(src, s0, keys_dir, now=NOW + 1)
    assert (s0 / ".cvmfspublished").read_bytes() == manifest
    assert [p.name for p in (s0 / "data" / "txn").iterdir()] == ["publish.lock"]


def test_whitelist_is_resigned_only_near_expiry(
    published: tuple[Path, Path, PublishResult], keys_dir: Path
) -> None:
    src, s0, _ = published
    original = (s0 / ".cvmfswhitelist").read_bytes()
    do_publish(src, s0, keys_dir, now=NOW + 86400)
    assert (s0 / ".cvmfswhitelist").read_bytes() == original
    later = NOW + 25 * 86400
    do_publish(src, s0, keys_dir, now=later)
    renewed = parse_whitelist((s0 / ".cvmfswhitelist").read_bytes())
    assert renewed.expires == datetime.fromtimestamp(later, UTC) + timedelta(days=30)


# ----- fidelity to the real publisher ----------------------------------------------------------


def _fixture_files(fixture: Path, tmp_path: Path) -> Iterator[tuple[str, DirEntry, Catalog]]:
    """Regular files of the tools fixture's root catalog (revision 3), with that catalog."""
    root_hash = ContentHash.from_hex("f916797dd4979fc3eb28e82e93f26aa3995edb2b")
    cat = open_catalog(fixture, root_hash, "", tmp_path)
    stack = [""]
    while stack:
        here = stack.pop()
        for e in cat.listdir(here):
            if e.is_dir and not e.is_nested_mountpoint:
                stack.append(e.path)
            elif e.is_regular:
                yield e.path, e, cat


def test_objects_equal_the_real_publishers(real_fixtures: Path, tmp_path: Path, keys_dir: Path) -> None:
    """Same content, same chunk sizes: the very same file and chunk objects as CernVM-FS 2.12."""
    fixture = real_fixtures / "tools.example.org"
    src = tmp_path / "src"
    expected: dict[str, tuple[ContentHash | None, list[tuple[int, int, ContentHash]]]] = {}
    for path, e, cat in _fixture_files(fixture, tmp_path):
        if e.is_chunked:
            chunks = cat.chunks(e)
            data = b"".join(
                zlib.decompress((fixture / c.content_hash.object_path(ObjectType.PARTIAL)).read_bytes())
                for c in chunks
            )
            expected[path] = (None, [(c.offset, c.size, c.content_hash) for c in chunks])
        else:
            assert e.content_hash is not None
            data = zlib.decompress((fixture / e.content_hash.object_path()).read_bytes())
            expected[path] = (e.content_hash, [])
        _write(src / path.lstrip("/"), data)
    assert sum(1 for v in expected.values() if v[1]) == 3

    result = do_publish(src, tmp_path / "s0", keys_dir, chunk_sizes=(64 * KiB, 128 * KiB, 256 * KiB))
    with open_catalog(tmp_path / "s0", result.root_hash, "", tmp_path) as ours:
        for path, (content_hash, chunks) in expected.items():
            e = ours.lookup(path)
            assert e is not None, path
            assert e.content_hash == content_hash, path
            assert [(c.offset, c.size, c.content_hash) for c in ours.chunks(e)] == chunks, path


def test_round_trip_through_the_reader(
    published: tuple[Path, Path, PublishResult], keys_dir: Path, tmp_path: Path
) -> None:
    from cvmfs_client.cache import NodeCache
    from cvmfs_client.fetcher import Fetcher, file_url
    from cvmfs_client.keys import load_master_keys
    from cvmfs_client.repository import Repository

    src, s0, result = published
    repo = Repository(
        FQRN,
        Fetcher.for_servers(file_url(s0)),
        load_master_keys(str(keys_dir / f"{FQRN}.pub"), None),
        NodeCache(tmp_path / "store", None),
        now=datetime.fromtimestamp(NOW, UTC),
    )
    try:
        assert repo.revision == result.revision
        seen = 0
        for entry in repo.walk(""):
            disk = src / entry.path.lstrip("/")
            if entry.is_regular:
                assert repo.read_file(entry.path) == disk.read_bytes(), entry.path
                seen += 1
            elif entry.is_symlink:
                assert entry.symlink == os.readlink(disk)
        assert seen == 15
    finally:
        repo.close()


# ----- arguments and odd names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"chunk_sizes": (100, 50, 200)}, "chunk sizes"),
        ({"chunk_sizes": (0, 50, 200)}, "chunk sizes"),
        ({"ttl": 0}, "TTL"),
        ({"whitelist_days": 0}, "whitelist"),
        ({"tag": "trunk"}, "sets this name"),
        ({"tag": "has space"}, "tag"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, keys_dir: Path, kw: dict[str, object], match: str) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(ConfigError, match=match):
        do_publish(tmp_path / "src", tmp_path / "s0", keys_dir, **kw)
    assert not (tmp_path / "s0" / ".cvmfspublished").exists()


def test_bad_repository_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="repository name"):
        publish(tmp_path, "bad/name", tmp_path / "s0", tmp_path / "keys")


def test_undecodable_name_is_skipped_with_a_warning(
    tmp_path: Path, keys_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "ok.txt", b"ok\n")
    with open(os.path.join(os.fsencode(src), b"bad-\xff.txt"), "wb") as f:
        f.write(b"x")
    result = do_publish(src, tmp_path / "s0", keys_dir)
    with open_catalog(tmp_path / "s0", result.root_hash, "", tmp_path) as cat:
        assert [e.name for e in cat.listdir("")] == ["ok.txt"]
    assert "not valid UTF-8" in caplog.text
    assert "bad-\\xff.txt: skipped" in caplog.text  # the byte shown; a UTF-8 log can hold the line
    caplog.text.encode("utf-8")


def test_source_must_be_a_directory(tmp_path: Path, keys_dir: Path) -> None:
    _write(tmp_path / "file", b"x")
    with pytest.raises(ConfigError, match="not a directory"):
        do_publish(tmp_path / "file", tmp_path / "s0", keys_dir)


def test_extended_attributes_are_published_only_when_asked(tmp_path: Path, keys_dir: Path) -> None:
    """``include_xattrs`` (CVMFS_INCLUDE_XATTRS) stores every entry's own extended attributes,
    a value over 255 bytes in the format's version 2; without it none are stored."""
    from cvmfs_client.cache import NodeCache
    from cvmfs_client.fetcher import Fetcher, file_url
    from cvmfs_client.keys import load_master_keys
    from cvmfs_client.repository import Repository

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("x")
    os.symlink("f", src / "d" / "l")
    os.setxattr(src / "d" / "f", "user.small", b"s")
    os.setxattr(src / "d" / "f", "user.big", b"b" * 300)
    os.setxattr(src / "d", "user.dir", b"")
    for include, want in ((False, {}), (True, {"/d/f": {"user.big": b"b" * 300, "user.small": b"s"}})):
        s0 = tmp_path / f"s0-{include}"
        publish(src, FQRN, s0, keys_dir, now=NOW, include_xattrs=include)
        repo = Repository(
            FQRN,
            Fetcher.for_servers(file_url(s0)),
            load_master_keys(str(keys_dir / f"{FQRN}.pub"), None),
            NodeCache(tmp_path / f"store-{include}", None),
            now=datetime.fromtimestamp(NOW, UTC),
        )
        try:
            got = {e.path: dict(e.xattrs) for e in repo.walk("") if e.xattrs}
            if include:
                want = {**want, "/d": {"user.dir": b""}}
            assert got == want
            assert not repo.lookup("/d/l").xattrs  # a symlink's own, not its target's
        finally:
            repo.close()
