"""Pure parts of ``interposer/vfs.py`` (the namespace itself is exercised by test_resolve)."""

from __future__ import annotations

import pytest

from interposer.vfs import short_link

GLIBC = b"/lib64/ld-linux-x86-64.so.2"  # 27 bytes: the room a patched PT_INTERP has
MUSL = b"/lib/ld-musl-x86_64.so.1"  # 24


@pytest.mark.parametrize("uid", [0, 1001, 123456789, 4294967294])
def test_the_interpreter_link_fits_any_uid(uid: int) -> None:
    """A user's uid made the link too long for the loader's path (uid 1001: 30 bytes in 27),
    so programs with an interpreter in /cvmfs, and every package run, failed for users."""
    link = short_link(uid, b"/cvmfs/sw.example.org/lib/ld.so", len(GLIBC))
    assert link.startswith(f"/tmp/.c{uid}/") and len(link) <= len(GLIBC)
    assert len(link.rsplit("/", 1)[1]) == 8
    musl = short_link(uid, b"/cvmfs/sw.example.org/lib/ld.so", len(MUSL))
    assert len(musl) <= len(MUSL) and len(musl.rsplit("/", 1)[1]) >= 5


def test_links_differ_by_target_and_a_room_too_small_is_refused() -> None:
    assert short_link(1001, b"/a", 27) != short_link(1001, b"/b", 27)
    assert short_link(1001, b"/a", 27) == short_link(1001, b"/a", 27)
    with pytest.raises(ValueError, match="fits in 12 bytes"):
        short_link(1001, b"/a", 12)


def test_host_links_into_cvmfs_are_followed_as_the_kernel_would(tmp_path) -> None:
    from interposer.vfs import host_link_into_cvmfs

    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to("/cvmfs/sw.example.org/python/bin/python3")
    (tmp_path / "alias").symlink_to("venv/bin/python")  # a chain, relative
    (tmp_path / "up").symlink_to("venv/bin")  # `..` is taken after the link: venv/
    (tmp_path / "plain").write_text("")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "elsewhere").symlink_to("/usr/bin/env")
    assert host_link_into_cvmfs(f"{tmp_path}/venv/bin/python") == "/cvmfs/sw.example.org/python/bin/python3"
    assert host_link_into_cvmfs(f"{tmp_path}/alias") == "/cvmfs/sw.example.org/python/bin/python3"
    assert (
        host_link_into_cvmfs(f"{tmp_path}/up/../bin/./python") == "/cvmfs/sw.example.org/python/bin/python3"
    )
    link_dir = tmp_path / "repo"
    link_dir.symlink_to("/cvmfs/sw.example.org")
    assert host_link_into_cvmfs(f"{link_dir}/bin/../lib/x") == "/cvmfs/sw.example.org/bin/../lib/x"
    # a last "/", "/." or "/..": a directory is named, which the /cvmfs path must still say
    assert host_link_into_cvmfs(f"{link_dir}/README.txt/") == "/cvmfs/sw.example.org/README.txt/"
    assert host_link_into_cvmfs(f"{link_dir}/README.txt/.") == "/cvmfs/sw.example.org/README.txt/"
    assert host_link_into_cvmfs(f"{link_dir}/bin/..") == "/cvmfs/sw.example.org/bin/../"
    assert host_link_into_cvmfs(f"{link_dir}/") == "/cvmfs/sw.example.org/"
    for nowhere in ("plain", "loop", "elsewhere", "missing/x"):
        assert host_link_into_cvmfs(f"{tmp_path}/{nowhere}") is None
