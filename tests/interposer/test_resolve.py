"""Path resolution in the job's /cvmfs: the shortcut through a memoised parent directory
(``Namespace._via_parent``) answers exactly what a walk from ``/`` answers.

Every entry of the published tree is resolved both ways, following and not following the last
component, together with names that do not exist, names below regular files, ``..``, trailing
slashes and the tree's symlinks (relative, absolute into the repository, to a directory,
dangling, a variant symlink).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from interposer.vfs import ENTRY, ERROR, Namespace, Resolved
from tests.interposer.trees import FQRN, MOUNT

SKIP = {"python"}  # CPython's standard library: thousands more of the same kinds of entries


def _paths(src: Path) -> tuple[list[tuple[str, bool]], list[str]]:
    """The tree's entries as (logical path, is a symlink), parents first; the odd names around."""
    entries: list[tuple[str, bool]] = []
    odd = [MOUNT]
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        base = MOUNT if rel == "." else f"{MOUNT}/{rel}"
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d not in SKIP]
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            entries.append((f"{base}/{name}", os.path.islink(os.path.join(dirpath, name))))
            odd += [f"{base}/{name}/", f"{base}/{name}/missing", f"{base}/{name}/.."]
        odd += [f"{base}/no-such-entry", f"{base}/no-such-dir/child", f"{base}/./x"]
    odd += [f"{MOUNT}/cases/dir-link/__init__.py", f"{MOUNT}/cases/rel-link/x", f"{MOUNT}/flavors/current/x"]
    return entries, odd


def _shape(r: Resolved) -> tuple[object, ...]:
    if r.kind == ENTRY:
        assert r.mount is not None and r.entry is not None
        return (ENTRY, r.mount.fqrn, r.inner, r.entry.kind)
    if r.kind == ERROR:
        return (ERROR, r.errno)
    return (r.kind, r.host, r.touched)


def test_resolving_through_the_parent_matches_a_full_walk(namespace: Namespace, sw_src: Path):
    ns = namespace
    entries, odd = _paths(sw_src)
    answered = expected = 0
    for path, is_link in [(p, False) for p in odd[:1]] + entries + [(p, False) for p in odd[1:]]:
        for follow in (True, False):
            try:
                walked = _shape(ns._walk(path, follow))
            except OSError as exc:  # LookupFailure: resolve() turns it into the same errno
                walked = (ERROR, exc.errno)
            shortcut = ns._via_parent(path, follow)
            if shortcut is not None:
                answered += 1
                assert _shape(shortcut) == walked, (path, follow)
            assert _shape(ns.resolve(path, follow)) == walked, (path, follow)
            expected += (path, is_link) in entries and not (is_link and follow)
    assert answered >= expected > 100  # every plain name of a known directory took the shortcut


def test_shortcut_leaves_symlinks_to_follow_and_odd_names_to_the_walk(namespace: Namespace):
    ns = namespace
    ns.resolve(f"{MOUNT}/cases", True)
    assert ns._via_parent(f"{MOUNT}/cases/rel-link", True) is None  # followed: walked
    link = ns._via_parent(f"{MOUNT}/cases/rel-link", False)
    assert link is not None and link.entry is not None and link.entry.is_symlink
    assert ns._via_parent(f"{MOUNT}/cases/..", True) is None
    assert ns._via_parent(f"{MOUNT}/cases/", True) is None
    assert ns._via_parent(f"{MOUNT}/cases//twin-a.dat", True) is None
    ns.resolve(f"{MOUNT}/etc", False)  # a directory opened with O_NOFOLLOW (tar): good as parent
    conf = ns._via_parent(f"{MOUNT}/etc/example.conf", True)
    assert conf is not None and conf.inner == "/etc/example.conf" and (f"{MOUNT}/etc", True) not in ns._cache
    missing = ns._via_parent(f"{MOUNT}/cases/missing", True)
    assert missing is not None and missing.kind == ERROR and missing.errno == errno.ENOENT
    assert ns._via_parent("/cvmfs/unlisted.example.org/x", True) is None  # no repository mounted for it
    assert FQRN in ns.mounts and "unlisted.example.org" not in ns.mounts


def test_listings_beyond_the_limit_are_dropped_and_read_again(
    namespace: Namespace, sw_src: Path, monkeypatch: pytest.MonkeyPatch
):
    """A walk over a large tree keeps at most LISTED_LIMIT entries of directory listings (plus
    the directory just read); a dropped one is read again, from the shadow tree or the
    catalog, with the same answers."""
    import stat as st

    from interposer import vfs

    monkeypatch.setattr(vfs, "LISTED_LIMIT", 20)
    ns = namespace
    entries, _ = _paths(sw_src)
    kinds = {st.S_IFDIR: "d", st.S_IFLNK: "l", st.S_IFREG: "f"}
    largest = max(len(os.listdir(d)) for d, _, _ in os.walk(sw_src))
    for _ in range(2):  # the second round finds most listings dropped
        for path, _is_link in entries:
            r = ns.resolve(path, False)
            want = kinds[st.S_IFMT(os.lstat(sw_src / path[len(MOUNT) + 1 :]).st_mode)]
            assert r.kind == ENTRY and r.entry is not None and r.entry.kind == want, path
            mount = r.mount
            assert mount is not None
            assert mount._nodes.held() <= 20 + largest and mount._catalog.held() <= 20 + largest
            if want == "f":
                assert mount.catalog_entry(r.inner).size == os.lstat(sw_src / r.inner[1:]).st_size
        ns._cache.clear()  # resolve again through the listings, not the memo
    directories = sum(1 for _ in os.walk(sw_src)) - 1  # python/ not walked
    assert len(entries) > 50 and len(mount._nodes._by_dir) < directories / 2  # some were dropped


def _kernel(path: str, follow: bool) -> tuple[object, ...]:
    import stat as st

    try:
        mode = (os.stat if follow else os.lstat)(path).st_mode
    except OSError as exc:
        return (ERROR, exc.errno)
    return (ENTRY, {st.S_IFDIR: "d", st.S_IFLNK: "l", st.S_IFREG: "f"}[st.S_IFMT(mode)])


def test_dot_and_dot_dot_after_any_entry_resolve_as_the_kernel_resolves_them(
    namespace: Namespace, sw_src: Path
):
    """A "file/." or "file/.." is ENOTDIR, a symlink before "/." or "/.." is followed, and
    "dir/." is the directory (readlink of "dirlink/." finds no symlink): the walk agrees with
    the kernel on the unpublished tree for every entry (absolute and variant symlinks aside,
    whose targets differ there by design)."""
    ns = namespace
    entries, _ = _paths(sw_src)
    checked = 0
    for path, _is_link in entries:
        rel = path[len(MOUNT) + 1 :]
        if rel.startswith("flavors") or "abs-link" in rel:
            continue
        for suffix in ("/.", "/..", "/./", "/../", "/./x", "/../README.txt", "/./.."):
            for follow in (True, False):
                got = ns.resolve(path + suffix, follow)
                want = _kernel(f"{sw_src}/{rel}{suffix}", follow)  # a str: pathlib drops "."
                kind = got.entry.kind if got.entry is not None else "d"
                shape = (ERROR, got.errno) if got.kind == ERROR else (ENTRY, kind)
                assert shape == want, (path + suffix, follow)
                checked += 1
    assert checked > 500
