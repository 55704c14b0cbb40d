"""Hostile catalogs behind a valid signature: refused with a clear error, never an escape."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from cvmfs_client.cache import NodeCache
from cvmfs_client.catalog import DirEntry, md5path
from cvmfs_client.catalog_writer import make_flags
from cvmfs_client.errors import HostileCatalog, PathNotFound, SymlinkLoop
from cvmfs_client.fetcher import Fetcher, file_url
from cvmfs_client.keys import load_master_keys
from cvmfs_client.repository import Repository

from .forge import MTIME, build_catalog, dir_entry, file_entry, link_entry, sign_repository

FQRN = "hostile.example.org"


@pytest.fixture
def repo_dir(tmp_path) -> Path:
    d = tmp_path / "s0" / FQRN
    d.mkdir(parents=True)
    return d


def mount(repo_dir: Path, tmp_path: Path) -> Repository:
    keys = load_master_keys(str(tmp_path / "keys" / f"{FQRN}.pub"), None)
    return Repository(
        FQRN, Fetcher.for_servers(file_url(repo_dir)), keys, NodeCache(tmp_path / "cache", None)
    )


def publish_root(repo_dir, tmp_path, entries, nested=(), tamper=None):  # type: ignore[no-untyped-def]
    h, size = build_catalog(repo_dir, tmp_path, "", [dir_entry(""), *entries], list(nested), tamper)
    sign_repository(repo_dir, tmp_path / "keys", FQRN, h, size)


def rename_row(old_path: str, new_name: str):  # type: ignore[no-untyped-def]
    m1, m2 = md5path(old_path)

    def tamper(con: sqlite3.Connection) -> None:
        con.execute("UPDATE catalog SET name=? WHERE md5path_1=? AND md5path_2=?", (new_name, m1, m2))

    return tamper


@pytest.mark.parametrize("bad_name", ["..", ".", "a/b", "x\x00y", ""])
def test_bad_entry_names_are_refused(repo_dir, tmp_path, bad_name):
    publish_root(
        repo_dir, tmp_path, [file_entry(repo_dir, "/victim", b"data")], tamper=rename_row("/victim", bad_name)
    )
    with mount(repo_dir, tmp_path) as repo, pytest.raises(HostileCatalog, match="hostile"):
        repo.listdir("")


def test_traversal_name_does_not_reach_outside_files(repo_dir, tmp_path):
    publish_root(repo_dir, tmp_path, [file_entry(repo_dir, "/etc", b"x")], tamper=rename_row("/etc", ".."))
    with mount(repo_dir, tmp_path) as repo:
        with pytest.raises((HostileCatalog, PathNotFound)):
            repo.read_file("/../etc")
        with pytest.raises(HostileCatalog):
            list(repo.walk(""))


def test_symlink_loops_give_eloop(repo_dir, tmp_path):
    publish_root(
        repo_dir,
        tmp_path,
        [
            link_entry("/a", "b"),
            link_entry("/b", "a"),
            link_entry("/self", "/cvmfs/hostile.example.org/self"),
            link_entry("/deeper", "deeper/x"),
        ],
    )
    with mount(repo_dir, tmp_path) as repo:
        for path in ("/a", "/b", "/self", "/deeper"):
            with pytest.raises(SymlinkLoop) as info:
                repo.stat(path)
            assert info.value.errno == 40
        assert repo.readlink("/a") == "b"  # the link itself is still readable


def test_nested_catalog_outside_its_parent_is_refused(repo_dir, tmp_path):
    inner, size = build_catalog(repo_dir, tmp_path, "/sub", [dir_entry("/sub")])

    def move_nested_ref(con: sqlite3.Connection) -> None:
        con.execute("UPDATE nested_catalogs SET path='/../escape'")

    publish_root(
        repo_dir, tmp_path, [_mountpoint("/sub")], nested=[("/sub", inner, size)], tamper=move_nested_ref
    )
    with mount(repo_dir, tmp_path) as repo, pytest.raises(HostileCatalog):
        repo.listdir("/sub")


def test_nested_catalog_pointing_back_at_a_root_catalog_is_refused(repo_dir, tmp_path):
    # The nested reference names an earlier *root* catalog: mounting it below /sub would loop
    # the tree into itself. Its root prefix ("") does not match the mount point.
    older_root, size = build_catalog(repo_dir, tmp_path, "", [dir_entry(""), _mountpoint("/sub")])
    publish_root(repo_dir, tmp_path, [_mountpoint("/sub")], nested=[("/sub", older_root, size)])
    with mount(repo_dir, tmp_path) as repo, pytest.raises(HostileCatalog, match="root prefix|nested"):
        repo.listdir("/sub")


def test_mismatched_flags_and_mode_are_refused(repo_dir, tmp_path):
    def make_dir_a_file(con: sqlite3.Connection) -> None:
        m1, m2 = md5path("/d")
        con.execute(
            "UPDATE catalog SET mode=? WHERE md5path_1=? AND md5path_2=?", (stat.S_IFREG | 0o644, m1, m2)
        )

    publish_root(repo_dir, tmp_path, [dir_entry("/d")], tamper=make_dir_a_file)
    with mount(repo_dir, tmp_path) as repo, pytest.raises(HostileCatalog):
        repo.lookup("/d")


def _mountpoint(path: str) -> DirEntry:
    return DirEntry(
        path,
        path.rpartition("/")[2],
        stat.S_IFDIR | 0o755,
        4096,
        MTIME,
        make_flags("d", nested_mountpoint=True),
    )
