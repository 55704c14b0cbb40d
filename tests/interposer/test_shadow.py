from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cvmfs_client.catalog import FLAG_DIR, FLAG_FILE, FLAG_SPECIAL, DirEntry
from interposer.shadow import ShadowTree


def _tree(tmp_path: Path) -> ShadowTree:
    shadow = ShadowTree(tmp_path / "tree", "repo.example.org", "abc", lambda inner: {}, lambda entry: "")
    os.mkdir(shadow.meta)
    (Path(shadow.meta) / "f").write_bytes(b"")
    return shadow


def test_content_is_linked_again_when_the_object_went_before_its_link(tmp_path: Path) -> None:
    """Another process may evict the object (or collect its copy) between materialize and link."""
    shadow = _tree(tmp_path)
    obj = tmp_path / "obj"
    obj.write_bytes(b"content")
    given = [tmp_path / "evicted", obj]
    path = shadow.content("/f", lambda: given.pop(0))
    assert Path(path).read_bytes() == b"content" and not given
    shadow.close()


def test_content_gives_up_when_the_object_keeps_vanishing(tmp_path: Path) -> None:
    shadow = _tree(tmp_path)
    with pytest.raises(FileNotFoundError):
        shadow.content("/f", lambda: tmp_path / "evicted")
    shadow.close()


def test_the_revision_is_held_until_close(tmp_path: Path) -> None:
    from cvmfs_client.cache_links import collect, register

    shadow = _tree(tmp_path)
    (tmp_path / "cache").mkdir()
    register(shadow.tree, tmp_path / "cache")
    assert collect(shadow.tree).units_busy == [shadow.root]
    shadow.close()
    assert collect(shadow.tree).units_busy == []


def _executable_tree(tmp_path: Path) -> tuple[ShadowTree, Path]:
    shadow = _tree(tmp_path)
    (Path(shadow.meta) / "f").chmod(0o755)  # the catalog says: a program
    obj = tmp_path / "cache" / "ab" / ("c" * 38)
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b"#!/bin/sh\necho hi\n")
    return shadow, obj


@pytest.mark.parametrize("mode", [0o555, 0o444])
def test_a_program_links_to_its_object_without_a_copy(tmp_path: Path, mode: int) -> None:
    """Cache objects are 0555; a 0444 one of an older cache of ours is made so, not copied."""
    shadow, obj = _executable_tree(tmp_path)
    obj.chmod(mode)
    path = shadow.content("/f", lambda: obj)
    assert os.stat(path).st_ino == obj.stat().st_ino and os.access(path, os.X_OK)
    assert list(Path(shadow.tree, "x").iterdir()) == []
    shadow.close()


def test_a_program_whose_object_cannot_be_made_executable_runs_from_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user's 0444 object (chmod refused) is linked through a 0555 copy in ``x/``."""
    shadow, obj = _executable_tree(tmp_path)
    obj.chmod(0o444)

    chmod = os.chmod

    def refused(path: object, mode: int, **kw: object) -> None:
        if Path(str(path)) == obj:
            raise PermissionError(1, "Operation not permitted", str(path))
        chmod(path, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "chmod", refused)
    path = shadow.content("/f", lambda: obj)
    monkeypatch.undo()
    copies = list(Path(shadow.tree, "x").iterdir())
    assert len(copies) == 1 and os.stat(path).st_ino == copies[0].stat().st_ino
    assert os.stat(path).st_mode & 0o777 == 0o555 and Path(path).read_bytes() == obj.read_bytes()
    assert obj.stat().st_mode & 0o777 == 0o444
    shadow.close()


MTIME = 1_700_000_000


def _entry(path: str, mode: int, size: int, flags: int = FLAG_FILE, **kw: object) -> DirEntry:
    name = path.rpartition("/")[2]
    return DirEntry(path=path, name=name, mode=mode, size=size, mtime=MTIME, flags=flags, **kw)  # type: ignore[arg-type]


def _populated_root(tmp_path: Path, listing: dict[str, dict[str, DirEntry]]) -> ShadowTree:
    shadow = ShadowTree(tmp_path / "tree", "repo.example.org", "abc", listing.__getitem__, lambda e: "")
    shadow.ensure_root(_entry("", 0o40755, 4096, FLAG_DIR))
    shadow.ensure_populated("")
    return shadow


def _listing() -> dict[str, dict[str, DirEntry]]:
    def entry(name: str, mode: int, size: int, flags: int = FLAG_FILE, **kw: object) -> DirEntry:
        return _entry(f"/d/{name}", mode, size, flags, **kw)

    group = (7 << 32) | 2
    return {
        "": {"d": _entry("/d", 0o40755, 4096, FLAG_DIR)},
        "/d": {
            "big": entry("big", 0o100640, 5_000_000),
            "empty": entry("empty", 0o100444, 0),
            "prog": entry("prog", 0o100755, 123),
            "twin-a": entry("twin-a", 0o100644, 10, hardlinks=group),
            "twin-b": entry("twin-b", 0o100644, 10, hardlinks=group),
            "fifo": entry("fifo", 0o10600, 0, flags=FLAG_SPECIAL),
            "kept": entry("kept", 0o100644, 99),
        },
    }


@pytest.mark.parametrize("anonymous", [True, False], ids=["O_TMPFILE", "named-temporary"])
def test_placeholders_have_size_mode_mtime_and_no_blocks(tmp_path: Path, anonymous: bool) -> None:
    """Placeholders are made whole before they get their name, as anonymous (O_TMPFILE) files
    where the file system has them, else under a temporary name: the same result either way,
    a placeholder another job made first is kept, and nothing is left in tmp/."""
    listing = _listing()
    shadow = _populated_root(tmp_path, listing)
    shadow._anonymous = anonymous
    named: list[str] = []
    tmp_name = shadow._tmp_name
    shadow._tmp_name = lambda: named.append("x") or tmp_name()  # type: ignore[method-assign]
    d = Path(shadow.meta) / "d"
    (d / "kept").write_bytes(b"another job's")  # made by a concurrent job meanwhile
    shadow.ensure_populated("/d")
    # anonymous: only the FIFO (and the directory's marker) has a temporary name
    assert len(named) == (2 if anonymous else 6)
    got = {p.name: os.lstat(p) for p in d.iterdir()}
    assert set(got) == set(listing["/d"])
    for name, e in listing["/d"].items():
        if name == "kept":
            continue
        st = got[name]
        assert (st.st_mode, st.st_mtime_ns) == (e.mode, MTIME * 10**9), name
        assert st.st_size == (e.size if e.is_regular else 0) and st.st_blocks == 0, name
    assert got["twin-a"].st_ino == got["twin-b"].st_ino and got["twin-a"].st_nlink == 2
    assert (d / "kept").read_bytes() == b"another job's"
    assert list(Path(shadow.root, "tmp").iterdir()) == []
    shadow.close()


def test_placeholders_without_anonymous_files_fall_back_to_named_ones(tmp_path: Path, monkeypatch) -> None:
    """A file system without O_TMPFILE (EOPNOTSUPP): the first placeholder finds out, every
    placeholder is still made."""
    real_open = os.open

    def no_tmpfile(path, flags, *a, **k):  # type: ignore[no-untyped-def]
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "no O_TMPFILE here")
        return real_open(path, flags, *a, **k)

    listing = _listing()
    shadow = _populated_root(tmp_path, listing)
    monkeypatch.setattr(os, "open", no_tmpfile)
    shadow.ensure_populated("/d")
    assert shadow._anonymous is False
    assert os.stat(Path(shadow.meta) / "d" / "big").st_size == 5_000_000
    assert sorted(p.name for p in (Path(shadow.meta) / "d").iterdir()) == sorted(listing["/d"])
    shadow.close()


def test_a_directorys_marker_names_its_entries_with_xattrs(tmp_path: Path) -> None:
    """ls -l asks for an ACL of every entry: the marker of a populated directory says which
    entries have published xattrs, so the others are answered without the catalog. A marker
    of an older version (empty) is unknown until rewritten."""
    listing = _listing()
    listing["/d"]["big"] = _entry("/d/big", 0o100640, 5_000_000, xattrs={"user.a": b"1"})
    shadow = _populated_root(tmp_path, listing)
    assert shadow.xattr_names("") == frozenset()
    shadow.ensure_populated("/d")
    assert shadow.xattr_names("/d") == {"big"}
    assert shadow.xattr_names("/d/never-populated") is None
    shadow.close()
    Path(shadow._marker("/d")).write_bytes(b"")  # as markers were before they named any
    again = _populated_root(tmp_path, listing)
    assert again.is_populated("/d") and again.xattr_names("/d") is None
    assert again.note_xattr_names("/d", ["big"]) == {"big"}
    again.close()
    third = _populated_root(tmp_path, listing)
    assert third.xattr_names("/d") == {"big"}  # the rewritten marker, read by a later job
    third.close()
