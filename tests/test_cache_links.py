from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from cvmfs_client import cache_links
from cvmfs_client.cache import NodeCache
from cvmfs_client.cache_links import (
    UnitLock,
    collect,
    linked_trees,
    needs_collection,
    note_removal,
    register,
    retire_unit,
)
from tests.test_cache import FakeSource, make_objects


def _object(cache: Path, name: str, size: int, assembled: bool = False) -> Path:
    path = cache / ("assembled" if assembled else "") / name[:2] / name[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A cache directory and a registered tree with one unit; (cache, tree, unit)."""
    cache, tree = tmp_path / "cache", tmp_path / "tree"
    cache.mkdir()
    register(tree, cache)
    unit = tree / "r" / "repo.example.org" / "abc"
    (unit / "d").mkdir(parents=True)
    return cache, tree, unit


def _link(obj: Path, unit: Path, inner: str) -> Path:
    path = unit / "d" / inner
    path.parent.mkdir(parents=True, exist_ok=True)
    os.link(obj, path)
    return path


def test_links_to_evicted_objects_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    cache, tree, unit = _setup(tmp_path)
    gone = _object(cache, "aa" + "1" * 38, 5000)
    kept = _object(cache, "bb" + "2" * 38, 300)
    built = _object(cache, "cc" + "3" * 38, 700, assembled=True)
    links = [_link(gone, unit, "lib/a.so"), _link(gone, unit, "lib/a-again.so")]
    live = [_link(kept, unit, "bin/tool"), _link(built, unit, "data/big")]
    gone.unlink()
    note_removal(cache)
    assert needs_collection(tree, unit)
    result = collect(tree)
    assert not any(p.exists() for p in links)
    assert all(p.exists() for p in live)
    assert (result.units_collected, result.links_removed, result.bytes_freed) == (1, 2, 5000)
    assert not needs_collection(tree, unit)


def test_a_unit_in_use_is_skipped_until_its_holder_lets_go(tmp_path: Path) -> None:
    cache, tree, unit = _setup(tmp_path)
    hold = UnitLock(unit)
    obj = _object(cache, "aa" + "1" * 38, 100)
    link = _link(obj, unit, "f")
    obj.unlink()
    note_removal(cache)
    result = collect(tree)
    assert result.units_busy == [str(unit)] and link.exists()
    hold.release()
    assert needs_collection(tree, unit)
    assert collect(tree, only=unit).links_removed == 1
    assert not link.exists()


def test_copies_go_with_their_object_unless_made_since_the_listing(tmp_path: Path) -> None:
    cache, tree, unit = _setup(tmp_path)
    live = _object(cache, "aa" + "1" * 38, 10)
    copies = tree / "x"
    copies.mkdir()
    for name in ("aa" + "1" * 38, "dd" + "4" * 38, "ee" + "5" * 38):
        (copies / name).write_bytes(b"#!/bin/sh\n")
    old = time.time() - 60
    for name in ("aa" + "1" * 38, "dd" + "4" * 38):
        os.utime(copies / name, (old, old))
    used = _link(copies / ("dd" + "4" * 38), unit, "bin/run")
    assert live.exists()
    result = collect(tree)
    assert sorted(p.name for p in copies.iterdir()) == ["aa" + "1" * 38, "ee" + "5" * 38]
    assert result.copies_removed == 1 and not used.exists()


def test_registrations_of_removed_trees_are_dropped(tmp_path: Path) -> None:
    cache, tree, _unit = _setup(tmp_path)
    register(tree, cache)  # again: nothing changes
    assert linked_trees(cache) == [str(tree)]
    assert len(list((cache / cache_links.LINKED_DIR).iterdir())) == 1
    shutil.rmtree(tree)
    assert linked_trees(cache) == []
    assert list((cache / cache_links.LINKED_DIR).iterdir()) == []


def test_cache_eviction_and_wipe_collect_linked_trees(tmp_path: Path) -> None:
    content, stored = make_objects(20, 10_000, seed=5)
    src = FakeSource(stored)
    tree = tmp_path / "tree"
    unit = tree / "r" / "repo.example.org" / "abc"
    with NodeCache(tmp_path / "cache", 60_000) as cache:
        register(tree, cache.directory)
        links = [_link(cache.get(h, src), unit, f"f{i}") for i, h in enumerate(content)]
        held = {(p.stat().st_ino) for p in links if p.exists()}
        objects = {p.stat().st_ino for p in (tmp_path / "cache").glob("??/*")}
        assert held == objects  # every link left is one of the cache's objects
        assert sum(p.exists() for p in links) < len(links)
        cache.wipe()
    assert not any(p.exists() for p in links)


def test_wipe_reports_revisions_in_use_and_leaves_their_links(tmp_path: Path) -> None:
    content, stored = make_objects(3, 1_000, seed=6)
    src = FakeSource(stored)
    tree = tmp_path / "tree"
    held, idle = tree / "r" / "repo.example.org" / "held", tree / "r" / "repo.example.org" / "idle"
    with NodeCache(tmp_path / "cache", None) as cache:
        register(tree, cache.directory)
        paths = [cache.get(h, src) for h in content]
        kept = [_link(p, held, f"f{i}") for i, p in enumerate(paths)]
        gone = [_link(p, idle, f"f{i}") for i, p in enumerate(paths)]
        hold = UnitLock(held)
        assert cache.wipe() == (3, 1)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in gone)
    hold.release()
    assert needs_collection(tree, held) and collect(tree, only=held).links_removed == 3


def test_unit_lock_taken_through_a_removed_unit_is_taken_again(tmp_path: Path) -> None:
    unit = tmp_path / "r" / "a" / "b"
    unit.mkdir(parents=True)
    fd = os.open(unit / "lock", os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a collector at work
    got: list[UnitLock] = []
    waiter = threading.Thread(target=lambda: got.append(UnitLock(unit)))
    waiter.start()
    time.sleep(0.2)
    shutil.rmtree(unit)  # the collector removes the whole unit
    os.close(fd)
    waiter.join(5)
    assert got, "UnitLock did not return"
    lock = got[0]
    st = os.fstat(lock._fd)  # type: ignore[arg-type]
    assert (st.st_dev, st.st_ino) == (os.stat(unit / "lock").st_dev, os.stat(unit / "lock").st_ino)
    lock.release()


def test_a_retired_unit_goes_whole_once_idle(tmp_path: Path) -> None:
    cache, tree, unit = _setup(tmp_path)
    (unit / "m" / "ro").mkdir(parents=True)
    _link(_object(cache, "aa" + "1" * 38, 10), unit, "f")
    hold = UnitLock(unit)
    retire_unit(unit)
    assert collect(tree).units_busy == [str(unit)] and unit.exists()
    hold.release()
    assert collect(tree).units_removed == 1
    assert not unit.exists()
    assert (cache / "aa" / ("1" * 38)).exists()  # the cache's object stays


def _remove_as(uid: int, top: Path) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            if os.getuid() != uid:
                os.setgid(uid)
                os.setuid(uid)
            cache_links._remove_tree(str(top))
            os._exit(0 if not top.exists() else 1)
        except BaseException:
            os._exit(2)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_removal_enters_directories_without_write_permission() -> None:
    """A shadow tree copies the repository's directory modes (0555 and the like); its owner,
    not root, must still be able to remove it."""
    uid = 65534 if os.getuid() == 0 else os.getuid()
    top = Path(tempfile.mkdtemp(prefix="cache-links-"))
    try:
        os.chmod(top, 0o755)
        (top / "m" / "a" / "b").mkdir(parents=True)
        (top / "m" / "a" / "b" / "f").write_bytes(b"")
        if os.getuid() == 0:  # the tree belongs to the user who removes it
            for dirpath, _dirs, files in os.walk(top):
                for path in (dirpath, *(os.path.join(dirpath, f) for f in files)):
                    os.chown(path, uid, uid)
        for d in (top / "m" / "a" / "b", top / "m" / "a", top / "m"):
            d.chmod(0o555)
        (top / "m" / "a" / "b").chmod(0o111)  # not even readable
        assert _remove_as(uid, top / "m") == 0
    finally:
        for dirpath, _dirs, _files in os.walk(top):
            os.chmod(dirpath, 0o700)
        shutil.rmtree(top)
