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
