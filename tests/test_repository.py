"""Repository against the real CernVM-FS 2.12 fixtures, read straight from the files (file://)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cvmfs_client.cache import NodeCache
from cvmfs_client.errors import (
    CertificateNotWhitelisted,
    CorruptObject,
    HashMismatch,
    IntegrityError,
    NotADirectory,
    PathNotFound,
    SignatureError,
    TagNotFound,
    WhitelistExpired,
)
from cvmfs_client.fetcher import Fetcher, file_url
from cvmfs_client.hashing import ContentHash, HashAlgorithm, ObjectType
from cvmfs_client.keys import ensure_repository_keys, load_master_keys
from cvmfs_client.repository import OutsideRepository, Repository
from cvmfs_client.whitelist import render_whitelist, sign_whitelist

from .truth import REVISIONS, ROOT_HASHES, compare_with_truth, load_truth

TOOLS = "tools.example.org"
SHAKE = "tiny-shake.example.org"


def mount(root: Path, fqrn: str, store_dir: Path, **kw) -> Repository:  # type: ignore[no-untyped-def]
    keys = load_master_keys(str(root / fqrn / f"{fqrn}.pub"), None)
    source = Fetcher.for_servers(file_url(root / fqrn))
    return Repository(fqrn, source, keys, NodeCache(store_dir, None), **kw)


CASES = [(fqrn, rev) for fqrn, revs in REVISIONS.items() for rev in revs]


@pytest.mark.parametrize(("fqrn", "revision"), CASES)
def test_every_path_of_every_revision_matches_truth_by_tag(real_fixtures, tmp_path, fqrn, revision):
    suffix, tag = REVISIONS[fqrn][revision]
    with mount(real_fixtures, fqrn, tmp_path, tag=tag) as repo:
        assert repo.revision == revision
        assert repo.root_hash.hex == ROOT_HASHES[fqrn][revision]
        assert compare_with_truth(repo, load_truth(real_fixtures / f"{fqrn}.{suffix}")) == []


@pytest.mark.parametrize(("fqrn", "revision"), CASES)
def test_pinning_root_hash_gives_that_revision(real_fixtures, tmp_path, fqrn, revision):
    suffix, _ = REVISIONS[fqrn][revision]
    with mount(real_fixtures, fqrn, tmp_path, root_hash=ROOT_HASHES[fqrn][revision]) as repo:
        assert repo.revision == revision
        assert compare_with_truth(repo, load_truth(real_fixtures / f"{fqrn}.{suffix}")) == []


def test_unknown_tag_is_a_clear_error(real_fixtures, tmp_path):
    with pytest.raises(TagNotFound, match="no-such-tag"):
        mount(real_fixtures, TOOLS, tmp_path, tag="no-such-tag")


def test_info_reports_the_trust_chain(real_fixtures, tmp_path):
    with mount(real_fixtures, SHAKE, tmp_path) as repo:
        info = repo.info()
    assert info.revision == 3
    assert info.hash_algorithm == "shake128"
    assert info.certificate_fingerprint.endswith("-SHAKE128")
    assert "tiny-shake.example.org CernVM-FS Release Managers" in info.certificate_subject
    assert info.whitelist_expires.year == 2036
    assert info.ttl == 240


def test_variant_symlink_expands_from_environment(real_fixtures, tmp_path):
    with mount(real_fixtures, TOOLS, tmp_path / "a", env={}) as repo:
        assert repo.readlink("/flavors/current") == "generic"
        assert repo.lookup("/flavors/current").symlink == "$(TOOLS_FLAVOR:-generic)"
        assert b"generic" in repo.read_file("/flavors/current/flavor.txt")
    with mount(real_fixtures, TOOLS, tmp_path / "b", env={"TOOLS_FLAVOR": "debug"}) as repo:
        assert repo.readlink("/flavors/current") == "debug"
        assert repo.stat("/flavors/current").path == "/flavors/debug"


def test_symlinks_resolve_inside_the_repository(real_fixtures, tmp_path):
    with mount(real_fixtures, TOOLS, tmp_path) as repo:
        assert repo.stat("/cases/rel-link").path == "/bin/clear"
        assert repo.stat("/cvmfs/tools.example.org/cases/abs-link").path == "/etc/tools.conf"
        assert repo.stat("/cases/dir-link/formats").is_dir
        assert repo.stat("/cases/dir-link/../../../etc/tools.conf").path == "/etc/tools.conf"
        with pytest.raises(PathNotFound):
            repo.stat("/cases/broken-link")
        assert repo.lookup("/cases/broken-link").is_symlink
        with pytest.raises(NotADirectory):
            repo.listdir("/etc/tools.conf")
        with pytest.raises(PathNotFound):
            repo.lookup("/no/such/path")
        # /cases is known now: the one-lookup path must give the same answers
        assert repo.stat("/cases/./rel-link").path == "/bin/clear"
        assert repo.lookup("/cases/rel-link").is_symlink
        with pytest.raises(PathNotFound, match="tools.example.org/cases/missing"):
            repo.stat("/cases/missing")
        with pytest.raises(NotADirectory):
            repo.stat("/etc/tools.conf/x")


def test_nested_catalog_mountpoint_lists_from_child(real_fixtures, tmp_path):
    with mount(real_fixtures, TOOLS, tmp_path) as repo:
        names = {e.name for e in repo.listdir("/lib/python/toolkit")}
        assert {".cvmfscatalog", "formats", "compat.py"} <= names
        assert {e.name for e in repo.listdir("/lib/python/toolkit/formats")} >= {".cvmfscatalog"}


def test_hardlink_pair_shares_link_count(real_fixtures, tmp_path):
    with mount(real_fixtures, TOOLS, tmp_path) as repo:
        a, b = repo.lookup("/cases/twin-a.dat"), repo.lookup("/cases/twin-b.dat")
        assert a.nlink == b.nlink == 2
        assert a.hardlink_group == b.hardlink_group != 0


def test_symlink_outside_repository_is_reported(tmp_path, real_fixtures):
    with mount(real_fixtures, TOOLS, tmp_path) as repo:
        for e in repo.walk(""):
            if (
                e.is_symlink
                and repo.readlink(e.path).startswith("/")
                and not repo.readlink(e.path).startswith("/cvmfs/tools.example.org")
            ):
                with pytest.raises(OutsideRepository):
                    repo.stat(e.path)


# -- tampering: every link of the chain is checked ---------------------------------------


@pytest.fixture
def tools_copy(real_fixtures, tmp_path) -> Path:
    root = tmp_path / "s0"
    shutil.copytree(real_fixtures / TOOLS, root / TOOLS)
    return root


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def _manifest_field(root: Path, key: str) -> str:
    for line in (root / TOOLS / ".cvmfspublished").read_bytes().split(b"\n"):
        if line.startswith(key.encode()):
            return line[1:].decode()
    raise AssertionError(key)


@pytest.mark.parametrize("offset", [1, 60])
def test_flipped_byte_in_manifest_body_is_refused(tools_copy, tmp_path, offset):
    _flip(tools_copy / TOOLS / ".cvmfspublished", offset)
    with pytest.raises(IntegrityError):
        mount(tools_copy, TOOLS, tmp_path / "c")


def test_flipped_byte_in_manifest_signature_is_refused(tools_copy, tmp_path):
    _flip(tools_copy / TOOLS / ".cvmfspublished", -5)
    with pytest.raises(SignatureError):
        mount(tools_copy, TOOLS, tmp_path / "c")


def test_flipped_byte_in_whitelist_is_refused(tools_copy, tmp_path):
    _flip(tools_copy / TOOLS / ".cvmfswhitelist", 20)
    with pytest.raises(IntegrityError):
        mount(tools_copy, TOOLS, tmp_path / "c")


def test_flipped_byte_in_certificate_object_is_refused(tools_copy, tmp_path):
    cert = ContentHash.from_hex(_manifest_field(tools_copy, "X"))
    _flip(tools_copy / TOOLS / cert.object_path(ObjectType.CERTIFICATE), 30)
    with pytest.raises(IntegrityError):
        mount(tools_copy, TOOLS, tmp_path / "c")
    assert not any((tmp_path / "c").glob("??/*")), "a bad object must not enter the store"


def test_flipped_byte_in_root_catalog_is_refused(tools_copy, tmp_path):
    root = ContentHash.from_hex(_manifest_field(tools_copy, "C"))
    _flip(tools_copy / TOOLS / root.object_path(ObjectType.CATALOG), 100)
    with pytest.raises(HashMismatch):
        mount(tools_copy, TOOLS, tmp_path / "c")


def test_flipped_byte_in_data_object_returns_no_data(tools_copy, tmp_path):
    with mount(tools_copy, TOOLS, tmp_path / "c") as repo:
        entry = repo.lookup("/etc/motd.txt")
        assert entry.content_hash is not None
        _flip(tools_copy / TOOLS / entry.content_hash.object_path(), 12)
        with pytest.raises((HashMismatch, CorruptObject)):
            repo.read_file("/etc/motd.txt")
        assert not repo.store.path_for(entry.content_hash).exists()


def test_expired_whitelist_is_refused(real_fixtures, tmp_path):
    with pytest.raises(WhitelistExpired, match="2036"):
        mount(real_fixtures, TOOLS, tmp_path, now=datetime(2036, 11, 21, 17, 0, tzinfo=UTC))
    # still valid one hour earlier: expiry has hour granularity
    mount(real_fixtures, TOOLS, tmp_path, now=datetime(2036, 11, 21, 16, 59, tzinfo=UTC)).close()


def test_wrong_public_key_is_refused(real_fixtures, tmp_path):
    keys = load_master_keys(str(real_fixtures / SHAKE / f"{SHAKE}.pub"), None)
    source = Fetcher.for_servers(file_url(real_fixtures / TOOLS))
    with pytest.raises(SignatureError):
        Repository(TOOLS, source, keys, NodeCache(tmp_path, None))


def test_certificate_missing_from_whitelist_is_refused(real_fixtures, tmp_path):
    # A whitelist correctly signed by a trusted master key, but listing another certificate.
    other = ensure_repository_keys(tmp_path / "keys", TOOLS)
    copy = tmp_path / "s0" / TOOLS
    shutil.copytree(real_fixtures / TOOLS, copy)
    now = datetime.now(UTC)
    body = render_whitelist(TOOLS, other.certificate, HashAlgorithm.SHA1, now, now + timedelta(days=30))
    (copy / ".cvmfswhitelist").write_bytes(sign_whitelist(body, other.master_key, HashAlgorithm.SHA1))
    keys = load_master_keys(str(tmp_path / "keys" / f"{TOOLS}.pub"), None)
    with pytest.raises(CertificateNotWhitelisted):
        Repository(TOOLS, Fetcher.for_servers(file_url(copy)), keys, NodeCache(tmp_path / "c", None))


def test_parent_directories_are_looked_up_once_per_repository(real_fixtures, tmp_path, monkeypatch):
    from cvmfs_client.catalog import Catalog

    with mount(real_fixtures, TOOLS, tmp_path) as repo:
        files = [e.path for e in repo.walk("") if e.is_regular and e.path.count("/") > 2]
        assert len(files) > 10
        looked_up: list[str] = []
        lookup = Catalog.lookup
        monkeypatch.setattr(Catalog, "lookup", lambda cat, path: looked_up.append(path) or lookup(cat, path))
        for path in files:
            repo.stat(path)
        assert len(looked_up) == len(set(looked_up)), "each directory looked up once"
        looked_up.clear()
        for path in files:
            repo.stat(path)
        assert looked_up == files, "only the files' own rows: their directories were remembered"
