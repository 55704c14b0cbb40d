from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    assert list((shadow.tree / "x").iterdir()) == []
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
    copies = list((shadow.tree / "x").iterdir())
    assert len(copies) == 1 and os.stat(path).st_ino == copies[0].stat().st_ino
    assert os.stat(path).st_mode & 0o777 == 0o555 and Path(path).read_bytes() == obj.read_bytes()
    assert obj.stat().st_mode & 0o777 == 0o444
    shadow.close()
