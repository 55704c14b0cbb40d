"""Default cache base and file-system detection (``cvmfs_client/config_basics.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cvmfs_client.config_basics as basics
from cvmfs_client.config_basics import default_cache_base, filesystem_type


def test_the_default_cache_is_under_the_xdg_cache_home(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "home")}
    assert Path(default_cache_base(env)) == tmp_path / "home" / ".cache" / "cvmfs-client"
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    assert Path(default_cache_base(env)) == tmp_path / "xdg" / "cvmfs-client"
    assert sorted(os.listdir(tmp_path)) == []  # deciding makes nothing


def _network_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    real = basics.filesystem_type
    monkeypatch.setattr(
        basics, "filesystem_type", lambda p: "nfs4" if str(p).startswith(str(home)) else real(p)
    )


def test_a_home_on_a_network_file_system_falls_back_to_a_private_local_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster the home is on NFS/GPFS/Lustre, where the node cache refuses to live."""
    home, local = tmp_path / "home", tmp_path / "local"
    local.mkdir()
    _network_home(monkeypatch, home)
    base = Path(default_cache_base({"HOME": str(home)}, fallbacks=(str(tmp_path / "missing"), str(local))))
    assert base == local / f"cvmfs-client-{os.getuid()}"
    st = base.stat()
    assert st.st_uid == os.getuid() and st.st_mode & 0o777 == 0o700


def test_a_home_that_cannot_hold_the_cache_falls_back_too(tmp_path: Path) -> None:
    """A batch account's HOME=/nonexistent (or a read-only home): a cache elsewhere, not an error."""
    (tmp_path / "file").write_text("")
    local = tmp_path / "local"
    local.mkdir()
    base = Path(default_cache_base({"HOME": str(tmp_path / "file")}, fallbacks=(str(local),)))
    assert base == local / f"cvmfs-client-{os.getuid()}" and base.is_dir()


def test_a_noexec_fallback_is_the_last_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Programs from /cvmfs run from the cache: /tmp mounted noexec (as on many compute nodes)
    is taken only when no other fallback will do."""
    home, noexec, other = tmp_path / "home", tmp_path / "noexec", tmp_path / "other"
    noexec.mkdir()
    other.mkdir()
    _network_home(monkeypatch, home)
    monkeypatch.setattr(basics, "_noexec", lambda p: Path(p) == noexec)
    env = {"HOME": str(home)}
    assert Path(default_cache_base(env, fallbacks=(str(noexec), str(other)))).parent == other
    assert Path(default_cache_base(env, fallbacks=(str(noexec),))).parent == noexec


def test_a_fallback_someone_else_could_write_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, shared, other = tmp_path / "home", tmp_path / "shared", tmp_path / "other"
    trap = shared / f"cvmfs-client-{os.getuid()}"
    trap.mkdir(parents=True)
    trap.chmod(0o777)  # made by someone else in a world-writable /tmp, say
    (other / f"cvmfs-client-{os.getuid()}").mkdir(parents=True)
    (other / f"cvmfs-client-{os.getuid()}").rename(other / "x")
    (other / f"cvmfs-client-{os.getuid()}").symlink_to(other / "x")  # a symlink is not a directory
    _network_home(monkeypatch, home)
    # Nothing usable: the home's path, whose node cache then says what is wrong with it.
    assert Path(default_cache_base({"HOME": str(home)}, fallbacks=(str(shared), str(other)))) == (
        home / ".cache" / "cvmfs-client"
    )


def test_file_system_type_of_existing_and_future_paths(tmp_path: Path) -> None:
    assert filesystem_type(Path("/proc/self")) == "proc"
    assert filesystem_type(tmp_path / "not" / "yet") == filesystem_type(tmp_path)
    assert filesystem_type(Path("/dev/shm/x")) == "tmpfs"


def test_a_directory_another_user_could_change_is_named(tmp_path: Path) -> None:
    """A cache's objects are trusted once stored: whoever may write or replace its directory
    could hand our jobs altered programs (a cache base someone made in /tmp beforehand)."""
    from cvmfs_client.config_basics import foreign_directory

    assert os.geteuid() == 0, "the suite runs as root (.ci/run): chown needs it"
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    assert foreign_directory(mine) is None and foreign_directory(tmp_path / "missing") is None
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    assert foreign_directory(theirs) == "it belongs to uid 65534"
    (theirs / "c").mkdir()  # ours, in their directory: they may rename it and put theirs
    assert foreign_directory(theirs / "c") == f"its parent {theirs} belongs to uid 65534"
    open_ = tmp_path / "open"
    open_.mkdir()
    open_.chmod(0o777)
    assert foreign_directory(open_) == "it is writable by everyone"
    (open_ / "c").mkdir()
    assert foreign_directory(open_ / "c") == f"its parent {open_} is writable by everyone"
    open_.chmod(0o1777)  # /tmp: others cannot rename what is ours
    assert foreign_directory(open_ / "c") is None
