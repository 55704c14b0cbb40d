"""The real client's magic xattrs: names, values, where they are listed; then read by real
tools (getfattr, attr) in jobs, against the catalog of the real publisher's tools.example.org."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

import pytest

from cvmfs_client.catalog import (
    FLAG_CHUNKED,
    FLAG_DIR,
    FLAG_DIRECT_IO,
    FLAG_EXTERNAL,
    FLAG_FILE,
    FLAG_LINK,
    DirEntry,
)
from cvmfs_client.client import open_repository
from cvmfs_client.hashing import ContentHash
from cvmfs_client.objects import Compression
from interposer import magic_xattrs as mx
from tests.interposer.conftest import TOOLS, cvmfs_run

FACTS = mx.RepoFacts(
    fqrn="sw.example.org",
    revision=42,
    root_hash="ab" * 20,
    hosts=["http://s1/cvmfs/sw.example.org", "http://s2/cvmfs/sw.example.org"],
    proxy="http://squid:3128",
    timeout=5,
    timeout_direct=10,
    pid=1234,
    version="0.1.0",
    catalogs=3,
)
HASH = ContentHash.from_hex("12" * 20, "test")


def _entry(flags: int, **kw: object) -> DirEntry:
    return DirEntry(path="/x", name="x", mode=0o100644, size=300, mtime=0, flags=flags, **kw)  # type: ignore[arg-type]


def _value(
    name: str, entry: DirEntry | None, chunks: list[tuple[str, int, int]] | None = None
) -> bytes | None:
    return mx.value(name, lambda: FACTS, entry, lambda: chunks or [])


def test_repository_values():
    assert _value("user.fqrn", None) == b"sw.example.org"
    assert _value("user.revision", None) == b"42"
    assert _value("user.root_hash", None) == b"ab" * 20
    assert _value("user.host", None) == b"http://s1/cvmfs/sw.example.org"
    assert _value("user.host_list", None) == b"http://s1/cvmfs/sw.example.org;http://s2/cvmfs/sw.example.org"
    assert _value("user.proxy", None) == b"http://squid:3128"
    assert (_value("user.timeout", None), _value("user.timeout_direct", None)) == (b"5", b"10")
    assert (_value("user.pid", None), _value("user.nclg", None), _value("user.version", None)) == (
        b"1234",
        b"3",
        b"0.1.0",
    )
    assert _value("user.unknown", None) is None and _value("security.selinux", _entry(FLAG_FILE)) is None


def test_file_values():
    plain = _entry(FLAG_FILE, content_hash=HASH)
    assert _value("user.hash", plain) == b"12" * 20
    assert _value("user.chunks", plain) == b"1"
    assert _value("user.chunk_list", plain) == f"hash,offset,size\n{'12' * 20},0,300\n".encode()
    assert _value("user.compression", plain) == b"zlib"
    assert _value("user.external_file", plain) == b"0" and _value("user.direct_io", plain) == b"0"
    assert _value("user.rawlink", plain) is None
    raw = _entry(FLAG_FILE | FLAG_EXTERNAL | FLAG_DIRECT_IO | Compression.NONE.flag_bits, content_hash=HASH)
    assert _value("user.compression", raw) == b"none"
    assert _value("user.external_file", raw) == b"1" and _value("user.direct_io", raw) == b"1"
    chunked = _entry(FLAG_FILE | FLAG_CHUNKED)
    pieces = [("aa" * 20 + "P", 0, 200), ("bb" * 20 + "P", 200, 100)]
    assert _value("user.hash", chunked, pieces) is None  # no bulk hash
    assert _value("user.chunks", chunked, pieces) == b"2"
    assert _value("user.chunk_list", chunked, pieces) == (
        f"hash,offset,size\n{'aa' * 20}P,0,200\n{'bb' * 20}P,200,100\n".encode()
    )
    assert _value("user.chunks", chunked, []) is None  # marked chunked, no chunks: an error


def test_symlink_and_directory_values():
    link = _entry(FLAG_LINK, symlink="$(ARCH)/lib")
    assert _value("user.rawlink", link) == b"$(ARCH)/lib" == _value("xfsroot.rawlink", link)
    assert _value("user.hash", link) is None and _value("user.chunks", link) is None
    directory = _entry(FLAG_DIR)
    assert _value("user.hash", directory) is None and _value("user.compression", directory) is None
    assert _value("user.fqrn", directory) == b"sw.example.org"


def test_listing_follows_visibility():
    root_names = mx.listed("rootonly", True, None)
    assert root_names == sorted(mx.BASE) and mx.listed("rootonly", False, None) == []
    assert mx.listed("never", True, None) == []
    regular = mx.listed("always", False, _entry(FLAG_FILE, content_hash=HASH))
    assert regular == sorted(mx.BASE + mx.WITH_HASH + mx.REGULAR)
    assert mx.listed("always", False, _entry(FLAG_LINK, symlink="x")) == sorted(mx.BASE + mx.SYMLINK)


@pytest.mark.parametrize(
    ("params", "seen"),
    [
        ({}, "rootonly"),
        ({"CVMFS_HIDE_MAGIC_XATTRS": "yes"}, "never"),
        ({"CVMFS_HIDE_MAGIC_XATTRS": "no"}, "always"),
        ({"CVMFS_MAGIC_XATTRS_VISIBILITY": "Always"}, "always"),
        ({"CVMFS_HIDE_MAGIC_XATTRS": "yes", "CVMFS_MAGIC_XATTRS_VISIBILITY": "rootonly"}, "rootonly"),
        ({"CVMFS_MAGIC_XATTRS_VISIBILITY": "sometimes"}, "rootonly"),
    ],
)
def test_visibility_parameters(params, seen):
    assert mx.visibility(params) == seen


# -- in jobs --------------------------------------------------------------------------------

GETFATTR = shutil.which("getfattr")
needs_getfattr = pytest.mark.skipif(GETFATTR is None, reason="getfattr (Debian package attr) not installed")


def _getfattr(job_env: dict[str, str], *args: str, options: tuple[str, ...] = ()) -> str:
    r = cvmfs_run(["getfattr", *args], job_env, options=options)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


@needs_getfattr
def test_getfattr_reads_what_the_catalog_says(job_env, tmp_path):
    params = {**job_env, "CVMFS_CACHE_BASE": str(tmp_path / "cache")}
    with open_repository(TOOLS, params) as repo:
        revision, root_hash = repo.revision, str(repo.root_hash)
        plain = repo.lookup("/bin/clear")
        chunked = repo.lookup("/share/data/events-600KiB.log")
        pieces = repo.chunks(chunked)
    root = f"/cvmfs/{TOOLS}"
    dump = _getfattr(job_env, "--absolute-names", "-d", root)  # listxattr, then each value
    assert f'user.fqrn="{TOOLS}"' in dump and f'user.revision="{revision}"' in dump
    assert f'user.root_hash="{root_hash}"' in dump and 'user.proxy="DIRECT"' in dump
    assert f'user.host="{job_env["CVMFS_SERVER_URL"].replace("@fqrn@", TOOLS)}"' in dump
    assert _getfattr(job_env, "--absolute-names", "-d", f"{root}/bin/clear") == ""  # listed at the root only
    only = ("--only-values", "--absolute-names", "-n")
    assert _getfattr(job_env, *only, "user.hash", f"{root}/bin/clear") == str(plain.content_hash)
    assert _getfattr(job_env, *only, "user.chunks", f"{root}/share/data/events-600KiB.log") == str(
        len(pieces)
    )
    listing = _getfattr(job_env, *only, "user.chunk_list", f"{root}/share/data/events-600KiB.log")
    assert listing.splitlines() == ["hash,offset,size"] + [
        f"{c.content_hash},{c.offset},{c.size}" for c in pieces
    ]
    raw = _getfattr(job_env, *only, "user.rawlink", "-h", f"{root}/flavors/current")
    assert raw == "$(TOOLS_FLAVOR:-generic)"
    r = cvmfs_run(["getfattr", "-n", "user.hash", f"{root}/bin"], job_env)
    assert r.returncode != 0 and b"No such attribute" in r.stderr
    # attr(1), as admins ask: "user." is implied
    r = cvmfs_run(["attr", "-q", "-g", "revision", root], job_env)
    assert r.returncode == 0 and r.stdout.decode() == str(revision), r.stderr


@needs_getfattr
def test_visibility_is_configured_per_repository(job_env):
    root = f"/cvmfs/{TOOLS}"
    env = {**job_env, "CVMFS_MAGIC_XATTRS_VISIBILITY": "always"}
    listed = _getfattr(env, "--absolute-names", "-d", f"{root}/bin/clear")
    assert "user.hash=" in listed and "user.chunk_list=" in listed and "user.fqrn=" in listed
    env = {**job_env, "CVMFS_HIDE_MAGIC_XATTRS": "yes"}
    assert _getfattr(env, "--absolute-names", "-d", root) == ""
    only = ("--only-values", "--absolute-names", "-n")
    assert _getfattr(env, *only, "user.fqrn", root) == TOOLS  # hidden from listings, still there


def test_a_placeholders_own_xattrs_are_not_the_entrys(job_env):
    """Placeholders may get xattrs from the cache's file system (a default ACL): a /cvmfs entry
    has only the magic ones and the security module's label, as under the real client (the
    kernel labels a FUSE inode itself; this kernel has no SELinux, the label is set by hand)."""
    path = f"/cvmfs/{TOOLS}/etc/tools.conf"
    r = cvmfs_run(["cat", path], job_env)
    assert r.returncode == 0, r.stderr.decode()
    base = Path(job_env["CVMFS_CACHE_BASE"]) / "interposer" / "r" / TOOLS
    placeholders = [p for p in base.glob("*/m/etc/tools.conf")]
    assert placeholders
    try:
        for p in placeholders:
            os.setxattr(p, "user.leak", b"from the cache", follow_symlinks=False)
            os.setxattr(p, "security.selinux", b"label_t", follow_symlinks=False)  # as SELinux would
        probe = (
            "import os, sys; p = sys.argv[1]; print(os.listxattr(p))\n"
            "try:\n    os.getxattr(p, 'user.leak')\nexcept OSError as e:\n    print(e.errno)\n"
            "print(os.getxattr(p, 'security.selinux'))"
        )
        for options in ([], ["--ptrace-only"]):
            r = cvmfs_run(["python3", "-c", probe, path], job_env, options=options)
            assert r.returncode == 0, r.stderr.decode()
            lines = r.stdout.decode().split("\n")[:3]
            assert lines == ["[]", str(errno.ENODATA), "b'label_t'"], (options, r.stdout)
    finally:
        for p in placeholders:
            for name in ("user.leak", "security.selinux"):
                with contextlib.suppress(OSError):
                    os.removexattr(p, name, follow_symlinks=False)


PUBLISHED_PROBE = """
import errno, os, sys
m = sys.argv[1]
def get(path, name, follow=True):
    try:
        return os.getxattr(path, name, follow_symlinks=follow)
    except OSError as e:
        return errno.errorcode[e.errno]
print(os.listxattr(m + "/d/f"), os.listxattr(m + "/d"), os.listxattr(m + "/d/l", follow_symlinks=False))
print(get(m + "/d/f", "user.color"), len(get(m + "/d/f", "user.big")), get(m + "/d", "user.dir"))
print(get(m + "/d/l", "user.color"), get(m + "/d/l", "user.color", False), get(m + "/d/f", "user.none"))
print(get(m + "/d/f", "user.hash") != b"published, hidden by the magic one")
print(get(m + "/plain", "system.posix_acl_access"), os.listxattr(m + "/plain"))
"""


def test_published_xattrs_are_the_entries(job_env, tmp_path):
    """A repository published with its files' extended attributes (CVMFS_INCLUDE_XATTRS): a
    job reads them as on the real client's mount (values over 255 bytes too: format version
    2), a magic attribute hides a published one of the same name, a symlink has its own, and
    a later job, finding the shadow tree populated, answers the same."""
    from cvmfs_client.publisher import publish
    from tests.integration.nginx import start_nginx

    fqrn = "xattrs.example.org"
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("hi\n")
    (src / "plain").write_text("no attributes\n")
    os.symlink("f", src / "d" / "l")
    os.setxattr(src / "d" / "f", "user.color", b"blue")
    os.setxattr(src / "d" / "f", "user.big", b"x" * 1000)
    os.setxattr(src / "d" / "f", "user.hash", b"published, hidden by the magic one")
    os.setxattr(src / "d", "user.dir", b"yes")
    keys = tmp_path / "keys"
    publish(src, fqrn, tmp_path / "s1" / fqrn, keys, include_xattrs=True)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(keys / f"{fqrn}.pub", trusted)
    server = start_nginx(tmp_path / "s1", tmp_path / "nginx")
    env = dict(job_env, CVMFS_SERVER_URL=server.server_url, CVMFS_KEYS_DIR=str(trusted))
    env["CVMFS_CACHE_BASE"] = str(tmp_path / "cache")
    want = [
        "['user.big', 'user.color', 'user.hash'] ['user.dir'] []",
        "b'blue' 1000 b'yes'",
        "b'blue' ENODATA ENODATA",
        "True",
        "ENODATA []",
    ]
    try:
        for options in ([], [], ["--ptrace-only"]):  # the second and third find m/ populated
            r = cvmfs_run(["python3", "-c", PUBLISHED_PROBE, f"/cvmfs/{fqrn}"], env, options=options)
            assert r.returncode == 0, r.stderr.decode()
            assert r.stdout.decode().splitlines() == want, (options, r.stdout.decode())
    finally:
        server.stop()
