"""The real client's "magic" extended attributes: what a repository and its entries say about themselves.

Administrators ask a mounted repository which revision it serves, from which server and proxy
(``attr -g revision /cvmfs/REPO``, ``getfattr -n user.host``, ``cvmfs_config stat``), and users
ask a file for its content hash or chunks. The real client answers ``getxattr`` of these names
on every entry and lists them in ``listxattr`` of the repository's root only (its default
``CVMFS_MAGIC_XATTRS_VISIBILITY=rootonly``; ``always``, ``never``, and the older
``CVMFS_HIDE_MAGIC_XATTRS=yes|no``). Names and values follow cvmfs/magic_xattr.cc; the ones
about the real client's own counters (open files, downloads, hit rate, cleanup rate, the log
buffer...) have no counterpart here and are not offered.

Pure: the facts come in as a :class:`RepoFacts` and the entry's catalog row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)

if TYPE_CHECKING:  # imported with the repository, when an entry is asked about
    from cvmfs_client.catalog import DirEntry

# Offered on every entry...
BASE = (
    "user.fqrn",
    "user.host",
    "user.host_list",
    "user.nclg",
    "user.pid",
    "user.proxy",
    "user.revision",
    "user.root_hash",
    "user.timeout",
    "user.timeout_direct",
    "user.version",
)
WITH_HASH = ("user.hash",)  # ...on entries with a content hash
REGULAR = ("user.chunk_list", "user.chunks", "user.compression", "user.direct_io", "user.external_file")
SYMLINK = ("user.rawlink", "xfsroot.rawlink")
ALL = frozenset(BASE + WITH_HASH + REGULAR + SYMLINK)
VISIBILITIES = ("rootonly", "always", "never")


class RepoFacts:
    """What the mounted revision and its fetcher say now (made per question). A plain class:
    this module is imported at every job's start, a dataclass costs a millisecond there."""

    __slots__ = ("fqrn", "revision", "root_hash", "hosts", "proxy", "timeout", "timeout_direct", "pid",
                 "version", "catalogs")  # fmt: skip

    def __init__(
        self,
        *,
        fqrn: str,
        revision: int,
        root_hash: str,
        hosts: Sequence[str],
        proxy: str,
        timeout: int,
        timeout_direct: int,
        pid: int,
        version: str,
        catalogs: int,
    ) -> None:
        self.fqrn = fqrn
        self.revision = revision
        self.root_hash = root_hash  # hex id with suffix
        self.hosts = hosts  # the current server first, then the others in failover order
        self.proxy = proxy  # the current proxy, "DIRECT" without one
        self.timeout = timeout  # seconds, through a proxy
        self.timeout_direct = timeout_direct
        self.pid = pid  # the process serving the mount (the tracer)
        self.version = version
        self.catalogs = catalogs  # catalogs loaded so far


def visibility(parameters: Mapping[str, str]) -> str:
    """Where names are listed, from the parameters as the real client reads them: the older
    switch first, then ``CVMFS_MAGIC_XATTRS_VISIBILITY`` (case-insensitive; unknown values
    keep what was there)."""
    seen = "rootonly"
    hide = parameters.get("CVMFS_HIDE_MAGIC_XATTRS", "").strip().lower()
    if hide in ("yes", "on", "1", "true"):
        seen = "never"
    elif hide in ("no", "off", "0", "false"):
        seen = "always"
    wanted = parameters.get("CVMFS_MAGIC_XATTRS_VISIBILITY", "").strip().lower()
    return wanted if wanted in VISIBILITIES else seen


def listed(seen: str, is_root: bool, entry: DirEntry | None) -> list[str]:
    """The names ``listxattr`` shows for an entry (``entry`` is needed unless only the root
    lists them), in the real client's order (bytewise)."""
    if seen == "never" or (seen == "rootonly" and not is_root):
        return []
    names = list(BASE)
    if entry is not None:
        if entry.content_hash is not None:
            names += WITH_HASH
        if entry.is_regular:
            names += REGULAR
        if entry.is_symlink:
            names += SYMLINK
    return sorted(names)


def needs_entry(name: str) -> bool:
    """Whether the value of ``name`` depends on the entry's catalog row."""
    return name in ALL and name not in BASE


def value(
    name: str,
    facts: Callable[[], RepoFacts],
    entry: DirEntry | None,
    chunks: Callable[[], list[tuple[str, int, int]]],
) -> bytes | None:
    """The value of magic attribute ``name`` (``None``: the entry has no such attribute, the
    call fails with ENODATA). ``chunks()`` lists a chunked file's (hash, offset, size)."""
    if name in BASE:
        f = facts()
        text = {
            "user.fqrn": f.fqrn,
            "user.host": f.hosts[0],
            "user.host_list": ";".join(f.hosts),
            "user.nclg": str(f.catalogs),
            "user.pid": str(f.pid),
            "user.proxy": f.proxy,
            "user.revision": str(f.revision),
            "user.root_hash": f.root_hash,
            "user.timeout": str(f.timeout),
            "user.timeout_direct": str(f.timeout_direct),
            "user.version": f.version,
        }[name]
        return text.encode()
    if entry is None or name not in ALL:
        return None
    if name in SYMLINK:
        return entry.symlink.encode("utf-8", "surrogateescape") if entry.is_symlink else None
    if name == "user.hash":
        return str(entry.content_hash).encode() if entry.content_hash is not None else None
    if not entry.is_regular:
        return None
    if name == "user.compression":
        from cvmfs_client.objects import Compression

        return b"none" if entry.compression is Compression.NONE else b"zlib"
    if name == "user.direct_io":
        return b"1" if entry.is_direct_io else b"0"
    if name == "user.external_file":
        return b"1" if entry.is_external else b"0"
    if not entry.is_chunked:
        if name == "user.chunks":
            return b"1"
        if entry.content_hash is None:
            return None
        pieces = [(str(entry.content_hash), 0, entry.size)]
    else:
        pieces = chunks()
        if not pieces:
            return None  # marked chunked, no chunks: the real client logs it and fails too
        if name == "user.chunks":
            return str(len(pieces)).encode()
    lines = ["hash,offset,size"] + [f"{h},{offset},{size}" for h, offset, size in pieces]
    return ("\n".join(lines) + "\n").encode()
