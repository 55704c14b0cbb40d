"""The ``/cvmfs`` namespace a job sees: repositories mounted on first access, paths resolved.

:meth:`Namespace.resolve` walks a logical absolute path the way the kernel would walk a real
``/cvmfs`` mount: ``..`` crosses the mount point back into the host tree, symlinks inside a
repository are followed with Linux's limit of 40, an absolute symlink target restarts the walk
at ``/`` (so it may lead to another repository or out to the host), ``$(VAR)`` targets are
expanded as the real client does. Host components are left to the kernel, which alone knows
the host's symlinks: the walker only notes whether the path passed through ``/cvmfs`` and must
therefore be rewritten.

Answers come from memory after the first visit of a directory (one catalog query lists it), and
whole resolutions are memoised: the revision is fixed for the job, so nothing ever goes stale.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping

from cvmfs_client import lazylog
from cvmfs_client.errors import CvmfsError, FetchError, LookupFailure
from cvmfs_client.namehash import sha1_hex

from . import elf
from .magic_xattrs import RepoFacts, visibility
from .shadow import ShadowError, ShadowTree

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)
if TYPE_CHECKING:  # heavy (SQLAlchemy, cryptography): imported when the first repository mounts
    from os import PathLike
    from typing import Any

    from cvmfs_client.catalog import DirEntry
    from cvmfs_client.repository import Repository

log = lazylog.get(__name__)

MAX_SYMLINKS = 40  # MAXSYMLINKS in the kernel
_CACHE_LIMIT = 200_000  # memoised resolutions kept before the memo is dropped and rebuilt
LISTED_LIMIT = 200_000  # directory entries a mount keeps listed (catalog rows, nodes), in all
_MAX_VIA_PARENT = 64  # deeper paths are walked, not resolved parent by parent (recursion depth)
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)+")

HOST, ROOT, ENTRY, ERROR = 0, 1, 2, 3


class Node:
    """What path resolution needs to know about an entry: its type, and its catalog row if read.

    Nodes come from the catalog the first time a directory is visited (and the shadow ``m/`` is
    populated from the same rows); later, in this or another job, from scanning ``m/`` alone, so
    a warm job resolves paths without a single catalog query.
    """

    __slots__ = ("kind", "entry")

    def __init__(self, kind: str, entry: DirEntry | None = None) -> None:
        self.kind = kind  # "d" directory, "l" symlink, "f" regular file, "o" other (fifo, device)
        self.entry = entry

    @property
    def is_dir(self) -> bool:
        return self.kind == "d"

    @property
    def is_symlink(self) -> bool:
        return self.kind == "l"

    @property
    def is_regular(self) -> bool:
        return self.kind == "f"


# Nodes of a scanned m/ directory hold no catalog row: one of each kind serves every entry.
_SCANNED = {kind: Node(kind) for kind in "dlfo"}


def _node_of(entry: DirEntry) -> Node:
    kind = "d" if entry.is_dir else "l" if entry.is_symlink else "f" if entry.is_regular else "o"
    return Node(kind, entry)


class Resolved:
    """The outcome of a walk: a host path, the ``/cvmfs`` root, a repository entry or an errno."""

    __slots__ = (
        "kind", "host", "touched", "mount", "inner", "entry", "errno",
        "meta_b", "data_b", "stat_b", "statx_b",
    )  # fmt: skip

    def __init__(
        self,
        kind: int,
        *,
        host: str = "",
        touched: bool = False,
        mount: Mount | None = None,
        inner: str = "",
        entry: Node | None = None,
        err: int = 0,
    ) -> None:
        self.kind = kind
        self.host = host
        self.touched = touched  # HOST only: the walk went through /cvmfs, so rewrite the path
        self.mount = mount
        self.inner = inner
        self.entry = entry
        self.errno = err
        self.meta_b: bytes | None = None  # encoded shadow paths, filled in by the translator
        self.data_b: bytes | None = None
        self.stat_b: bytes | None = None  # a file's or symlink's packed struct stat (translator)
        self.statx_b: bytes | None = None  # the same as a struct statx

    def __repr__(self) -> str:
        if self.kind == HOST:
            return f"Resolved(host={self.host!r}, touched={self.touched})"
        if self.kind == ROOT:
            return "Resolved(/cvmfs)"
        if self.kind == ENTRY:
            assert self.mount is not None
            return f"Resolved(/cvmfs/{self.mount.fqrn}{self.inner})"
        return f"Resolved(errno={errno.errorcode.get(self.errno, self.errno)})"

    @property
    def logical(self) -> str:
        """The path a program would print for this entry (``/cvmfs/FQRN/...``)."""
        if self.kind == ENTRY:
            assert self.mount is not None
            return f"/cvmfs/{self.mount.fqrn}{self.inner}"
        if self.kind == ROOT:
            return "/cvmfs"
        return self.host


def _error(err: int) -> Resolved:
    return Resolved(ERROR, err=err)


class _Listings:
    """Directory listings (of :class:`Node` or :class:`DirEntry`) a mount keeps for a job, the
    oldest dropped once they hold more than ``limit`` entries in all: a first walk of a large
    tree must not keep every row it met (~0.6 KB each: a million-entry ``find`` held a
    gigabyte). A dropped listing is read again when next needed, from the shadow tree (names
    and types) or the catalog (rows)."""

    __slots__ = ("_by_dir", "_held", "limit")

    def __init__(self, limit: int) -> None:
        self._by_dir: dict[str, dict[str, Any]] = {}
        self._held = 0
        self.limit = limit

    def get(self, inner: str) -> dict[str, Any] | None:
        return self._by_dir.get(inner)

    def put(self, inner: str, listing: dict[str, Any]) -> None:
        by_dir = self._by_dir
        old = by_dir.pop(inner, None)
        if old is not None:
            self._held -= len(old)
        by_dir[inner] = listing
        self._held += len(listing)
        while self._held > self.limit and len(by_dir) > 1:
            self._held -= len(by_dir.pop(next(iter(by_dir))))

    def held(self) -> int:
        return self._held


class Mount:
    """One mounted repository revision: its directory tree, memoised, and its shadow trees.

    The repository object (catalogs, cache, network) is opened only when something is not in
    the shadow trees yet: a warm job resolves and opens files without importing any of it.
    """

    def __init__(
        self,
        fqrn: str,
        root_hash: str,
        shadow_base: str,
        open_repo: Callable[[], Repository],
        repo: Repository | None = None,
    ) -> None:
        self.fqrn = fqrn
        self.root_hash = root_hash
        self._open_repo = open_repo
        self._repo: Repository | None = None  # set by _adopt(), when opened
        self._nodes: _Listings = _Listings(LISTED_LIMIT)
        self._catalog: _Listings = _Listings(LISTED_LIMIT)
        self.root_node = Node("d")
        self._visibility: str | None = None  # of magic xattrs, once asked
        self.shadow = ShadowTree(shadow_base, fqrn, root_hash, self.catalog_children, self._expanded_target)
        try:
            if repo is not None:
                self._adopt(repo)
            if not os.path.isdir(self.shadow.meta):
                self.shadow.ensure_root(self.catalog_entry(""))
            else:
                self.shadow.ensure_root_known(lambda: self.catalog_entry(""))
        except BaseException:
            self.shadow.close()
            raise

    @property
    def repo(self) -> Repository:
        if self._repo is None:
            repo = self._open_repo()
            if repo.root_hash.hex != self.root_hash:
                got = repo.root_hash.hex
                repo.close()
                raise CvmfsError(f"/cvmfs/{self.fqrn}: opened revision {got}, expected {self.root_hash}")
            self._adopt(repo)
        assert self._repo is not None
        return self._repo

    def _adopt(self, repo: Repository) -> None:
        """Use ``repo``; its cache learns that the ``d/`` tree links its objects."""
        from cvmfs_client.cache_links import register

        directory = getattr(repo.store, "directory", None)
        if directory is not None:
            register(self.shadow.tree, directory)
        self._repo = repo

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
        # A revision no mount state names any more (a newer one was mounted meanwhile) is
        # never used again: its trees go once the last job on it ends.
        self.shadow.close(retire=self.root_hash not in remembered_roots(os.path.dirname(self.shadow.root)))

    def catalog_children(self, inner: str) -> dict[str, DirEntry]:
        """Catalog rows of directory ``inner`` by name (one query per directory and job)."""
        found = self._catalog.get(inner)
        if found is None:
            found = {e.name: e for e in self.repo.listdir(inner)}
            self._catalog.put(inner, found)
        return found

    def children(self, inner: str) -> dict[str, Node]:
        """Entries of directory ``inner``; populates ``m/<inner>`` on its first visit ever."""
        found = self._nodes.get(inner)
        if found is not None:
            return found
        if self.shadow.is_populated(inner):
            found = {}
            with os.scandir(self.shadow.meta + inner) as it:
                for d in it:
                    kind = (
                        "d"
                        if d.is_dir(follow_symlinks=False)
                        else "l"
                        if d.is_symlink()
                        else "f"
                        if d.is_file(follow_symlinks=False)
                        else "o"
                    )
                    found[d.name] = _SCANNED[kind]
        else:
            self.shadow.ensure_populated(inner)
            found = {name: _node_of(e) for name, e in self.catalog_children(inner).items()}
        self._nodes.put(inner, found)
        return found

    def node(self, inner: str) -> Node | None:
        if not inner:
            return self.root_node
        parent, _, name = inner.rpartition("/")
        return self.children(parent).get(name)

    def catalog_entry(self, inner: str) -> DirEntry:
        """The catalog row of ``inner`` (a cold path: content not yet linked into ``d/``)."""
        if not inner:
            if self.root_node.entry is None:
                self.root_node.entry = self.repo.lookup("")
            return self.root_node.entry
        parent, _, name = inner.rpartition("/")
        entry = self.catalog_children(parent).get(name)
        if entry is None:
            raise LookupFailure(f"/cvmfs/{self.fqrn}{inner}", "vanished from the catalog")
        return entry

    def entry_xattrs(self, inner: str) -> Mapping[str, bytes]:
        """The extended attributes the catalog stores for ``inner`` (CVMFS_INCLUDE_XATTRS).
        The catalog is read only for an entry its directory's marker names (or one of a
        directory populated before markers named them)."""
        parent, _, name = inner.rpartition("/")
        known = self.shadow.xattr_names(parent)
        if known is None:  # one catalog listing, then the marker knows (for later jobs too)
            names = [n for n, e in self.catalog_children(parent).items() if e.xattrs]
            if not parent and self.catalog_entry("").xattrs:
                names.append(".")
            known = self.shadow.note_xattr_names(parent, names)
        if (name if inner else ".") not in known:
            return {}
        return self.catalog_entry(inner).xattrs

    def magic_facts(self) -> RepoFacts:
        """The mounted revision and where its fetcher goes now, for the magic xattrs."""
        from cvmfs_client import __version__

        repo = self.repo
        hosts: list[str] = []
        proxy, timeout, timeout_direct = "DIRECT", 0, 0
        failover = getattr(repo.source, "failover", None)
        if failover is not None:
            route = failover.route()
            chain = list(failover.hosts.hosts)
            hosts = chain[route.host_index :] + chain[: route.host_index]
            proxy = route.proxy
        settings = getattr(repo.source, "settings", None)
        if settings is not None:
            timeout, timeout_direct = int(settings.timeout), int(settings.timeout_direct)
        return RepoFacts(
            fqrn=self.fqrn,
            revision=repo.revision,
            root_hash=str(repo.root_hash),
            hosts=hosts or ["internal error: no hosts defined"],
            proxy=proxy,
            timeout=timeout,
            timeout_direct=timeout_direct,
            pid=os.getpid(),
            version=__version__,
            catalogs=len(repo.catalog_hashes),
        )

    def cache_usage(self) -> tuple[int, int | None] | None:
        """Bytes in the node cache and its quota (None: unmanaged), if the store counts them."""
        usage = getattr(self.repo.store, "usage", None)
        return usage() if usage is not None else None

    def magic_visibility(self) -> str:
        """Where magic xattrs are listed (the repository's configuration)."""
        if self._visibility is None:
            self._visibility = visibility(self.repo.parameters)
        return self._visibility

    def chunk_list(self, entry: DirEntry) -> list[tuple[str, int, int]]:
        """(hash, offset, size) of each chunk of a chunked file."""
        return [(str(c.content_hash), c.offset, c.size) for c in self.repo.chunks(entry)]

    def _expanded_target(self, entry: DirEntry) -> str:
        return self.repo.readlink(entry.path)

    def link_target(self, inner: str) -> str:
        """A symlink's target with ``$(VAR)`` expanded: what ``m/`` holds."""
        return os.readlink(self.shadow.meta + inner)

    def mode(self, inner: str) -> int:
        return os.lstat(self.shadow.meta + inner).st_mode

    def meta_path(self, inner: str) -> str:
        return self.shadow.meta + inner

    def content(self, inner: str) -> str:
        # local: d/ hardlinks the file, so an alien object on a cluster file system is copied
        # into the node cache (within its quota) rather than into d/ (outside it).
        return self.shadow.content(
            inner, lambda: self.repo.materialize_entry(self.catalog_entry(inner), local=True)
        )


def names_directory(path: str) -> bool:
    """Whether ``path`` ends in "/", "/." or "/..": then it names a directory, whatever its last
    name is (ENOTDIR otherwise, and a symlink there is followed), as the kernel resolves it."""
    return path.endswith(("/", "/.", "/.."))


def host_link_into_cvmfs(path: str, max_links: int = 40) -> str | None:
    """The /cvmfs path that host ``path`` (absolute) reaches through host symlinks, if any.

    ``~/venv/bin/python -> /cvmfs/.../bin/python3`` (``python -m venv`` with a Python from
    /cvmfs), ``~/bin/root -> /cvmfs/...``: the kernel follows such a link and finds no /cvmfs.
    The walk is the kernel's (``..`` after symlinks, 40 links at most), on the host, until the
    path enters /cvmfs; ``None`` if it never does (or cannot be walked).
    """
    slash = "/" if names_directory(path) else ""  # the /cvmfs path names a directory too
    todo = [c for c in path.split("/") if c and c != "."]
    todo.reverse()
    done = ""
    links = 0
    while todo:
        c = todo.pop()
        if c == "..":
            done = done.rsplit("/", 1)[0]
            continue
        here = f"{done}/{c}"
        if here == "/cvmfs":
            return "/".join([here, *reversed(todo)]) + slash
        try:
            target = os.readlink(here)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: not a symlink, walk on
                return None
            done = here
            continue
        links += 1
        if links > max_links:
            return None
        if target.startswith("/"):
            done = ""
        todo.extend(reversed([p for p in target.split("/") if p and p != "."]))
    return None


def short_link(uid: int, target: bytes, room: int) -> str:
    """The symlink standing for ELF interpreter ``target`` in a PT_INTERP of ``room`` bytes.

    ``/tmp/.c<uid>/<name>``: the name is a digest of the target cut to what fits, at most 8
    characters, so that any uid (up to 10 digits) fits the 27 bytes of
    ``/lib64/ld-linux-x86-64.so.2`` with 8 and musl's 24 with at least 5. (Two interpreters of
    one user whose digests share those characters, one chance in 2**32 with 8, would take the
    link from each other's running jobs.)
    """
    link_dir = f"/tmp/.c{uid}"
    fits = min(8, room - len(link_dir) - 1)
    if fits < 1:
        raise ValueError(f"no symlink for {target!r} fits in {room} bytes")
    return f"{link_dir}/{sha1_hex(target)[:fits]}"


class Namespace:
    """All of ``/cvmfs`` for one job: which repositories exist, and where each path leads.

    ``opener(fqrn, root_hash)`` opens a repository, at ``root_hash`` if given (or raises a
    :class:`CvmfsError` saying why not); ``listed()`` gives the names ``ls /cvmfs`` shows before
    they are mounted (called when /cvmfs is first looked at, and when one of them cannot be
    mounted: a warning for those, quiet ENOENT for other names); ``allowed(name)`` says whether
    a name may be mounted at all (``--repo``, a Parrot list).

    Revisions: the first mount of a repository verifies its manifest and remembers the root
    hash in ``r/<fqrn>/<key>.mounted`` until the catalog's TTL (capped by ``CVMFS_MAX_TTL``)
    expires, as the real client keeps a mounted revision; jobs starting within the TTL use that
    revision without any network access. Every job sees one revision from start to end.
    """

    def __init__(
        self,
        base: str | PathLike[str],
        opener: Callable[[str, str | None], Repository],
        listed: Callable[[], Iterable[str]] = lambda: (),
        allowed: Callable[[str], bool] = lambda name: True,
        params: Mapping[str, str] | None = None,
    ) -> None:
        # The kernel names fds, cwds and /proc/self/exe by their real path; shadow paths must
        # be compared in the same terms (a base through a symlink read placeholders as content).
        self.base = base = os.path.realpath(base)
        self.base_prefix = base + "/"
        self._opener = opener
        self._listed: Callable[[], Iterable[str]] | None = listed
        self._configured = listed
        self._allowed = allowed
        self._params = dict(params or {})
        self.mounts: dict[str, Mount | None] = {}
        self._cache: dict[tuple[str, bool], Resolved] = {}
        self._roots: dict[str, str] = {}  # shadow tree prefix -> logical prefix
        self.jobroot = f"{base}/j/{os.getpid()}"
        os.makedirs(self.jobroot, exist_ok=True)
        os.chmod(self.jobroot, 0o755)
        self._roots[self.jobroot] = "/cvmfs"
        self._snapshots = 0
        self._aliases: dict[str, str] = {}  # programs run from a patched copy -> their /cvmfs path

    def with_interpreter(self, program: bytes, interp: elf.Interp, target: bytes, logical: str) -> str:
        """A copy of ``program`` whose PT_INTERP leads to ``target`` (see :mod:`.elf`).

        The string must fit where the old one was, so it names a short symlink
        (:func:`short_link`) in a private directory ``/tmp/.c<uid>`` (refused unless owned by us
        and closed to others: whoever can replace the link chooses the code our job runs).
        Copies live in ``p/``, keyed by program (name and identity) and interpreter, and
        ``/proc/PID/exe`` of the job shows ``logical``.
        """
        short = short_link(os.getuid(), target, interp.size - 1)
        link_dir = os.path.dirname(short)
        with contextlib.suppress(FileExistsError):
            os.mkdir(link_dir, 0o700)
        st = os.lstat(link_dir)
        if st.st_uid != os.getuid() or st.st_mode & 0o077 or not os.path.isdir(link_dir):
            raise OSError(errno.EPERM, f"{link_dir} is not a private directory of uid {os.getuid()}")
        try:
            current = os.readlink(short)
        except OSError:
            current = None
        if current != os.fsdecode(target):
            tmp = f"{short}.{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(target, tmp)
            os.replace(tmp, short)
        # Keyed by the file's identity too: a host program (``package run``) may be replaced
        # under the same name, where a /cvmfs content path names one content for good.
        st_p = os.stat(program)
        ident = f"{st_p.st_dev}:{st_p.st_ino}:{st_p.st_size}:{st_p.st_mtime_ns}".encode()
        key = sha1_hex(program + b"\0" + short.encode() + b"\0" + ident)[:24]
        patched = f"{self.base}/p/{key}"
        if not os.path.exists(patched):
            with open(program, "rb") as f:
                data = bytearray(f.read())
            elf.patch_interp(data, interp, short.encode())
            os.makedirs(os.path.dirname(patched), exist_ok=True)
            tmp_path = f"{patched}.{os.getpid()}"
            with open(tmp_path, "wb") as f:
                f.write(data)
            os.chmod(tmp_path, 0o555)
            os.replace(tmp_path, patched)
        self._aliases[patched] = logical
        return patched

    def snapshot(self, data: bytes) -> str:
        """A private file holding ``data`` (translated ``/proc`` files), removed at job end."""
        self._snapshots += 1
        path = f"{self.jobroot}.tmp/{self._snapshots}"
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o444)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return path

    def close(self) -> None:
        """Remove this job's ``/cvmfs`` directory (the shadow trees stay for the next job)."""
        for m in self.mounts.values():
            if m is not None:
                m.close()
        if os.path.lexists(f"{self.jobroot}.tmp"):
            import shutil  # start-up time: its archive formats load bz2 and lzma

            shutil.rmtree(f"{self.jobroot}.tmp", ignore_errors=True)
        try:
            for name in os.listdir(self.jobroot):
                os.rmdir(os.path.join(self.jobroot, name))
            os.rmdir(self.jobroot)
        except OSError:
            pass

    def ensure_listed(self) -> None:
        """Create the entries ``ls /cvmfs`` shows (configured repositories), once."""
        listed, self._listed = self._listed, None
        if listed is None:
            return
        for name in listed():
            if self._allowed(name):
                self._list(name)

    def _list(self, name: str) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.join(self.jobroot, name), 0o755)

    # -- mounting -------------------------------------------------------------------------

    def mount(self, name: str) -> Mount | None:
        """The repository ``/cvmfs/<name>``, mounted now if this is its first access."""
        if name in self.mounts:
            return self.mounts[name]
        m: Mount | None = None
        if _REPO_NAME.fullmatch(name) and self._allowed(name):
            try:
                m = self._mount(name)
                self._roots[m.shadow.meta] = f"/cvmfs/{name}"
                self._roots[m.shadow.data] = f"/cvmfs/{name}"
                self._list(name)
            except FetchError as exc:
                # Every server says it has no such repository: what a job probing names such as
                # /cvmfs/package.json meets (ENOENT, as under autofs), not worth a warning; but
                # a repository the user named (--repo, CVMFS_REPOSITORIES) is, a wrong
                # CVMFS_SERVER_URL then shows only as "No such file or directory" in the job.
                quiet = exc.not_found and name not in self._configured()
                log.log(lazylog.INFO if quiet else lazylog.WARNING, "cannot mount /cvmfs/%s: %s", name, exc)
            except CvmfsError as exc:
                log.warning("cannot mount /cvmfs/%s: %s", name, exc)
            except OSError as exc:
                log.warning("cannot mount /cvmfs/%s: shadow tree: %s", name, exc)
        self.mounts[name] = m
        return m

    def _state_file(self, name: str) -> str:
        pins = "|".join(self._params.get(k, "") for k in ("CVMFS_ROOT_HASH", "CVMFS_REPOSITORY_TAG"))
        key = sha1_hex(pins.encode())[:12]
        return f"{self.base}/r/{name}/{key}.mounted"

    def _mount(self, name: str) -> Mount:
        state = self._state_file(name)
        previous = _state(state)
        if previous is not None and time.time() < previous[1]:
            root_hash = previous[0]
            if os.path.isdir(f"{self.base}/r/{name}/{root_hash}/m"):
                log.info("mounted /cvmfs/%s at %s (verified revision still within its TTL)", name, root_hash)
                return Mount(name, root_hash, self.base, lambda: self._opener(name, root_hash))
        repo = self._opener(name, None)
        root_hash = repo.root_hash.hex
        m = Mount(name, root_hash, self.base, lambda: self._opener(name, root_hash), repo)
        ttl = repo.info().ttl
        cap = _int(self._params.get("CVMFS_MAX_TTL")) * 60
        _write_state(state, root_hash, time.time() + (min(ttl, cap) if cap > 0 else ttl))
        log.info("mounted /cvmfs/%s revision %d (%s)", name, repo.revision, root_hash)
        if previous is not None and previous[0] != root_hash:
            self._retire(name, previous[0])
        return m

    def _retire(self, name: str, root_hash: str) -> None:
        """The trees of a revision that no mount state names any more go (now if idle)."""
        from cvmfs_client.cache_links import collect, retire_unit

        unit = f"{self.base}/r/{name}/{root_hash}"
        if os.path.isdir(unit) and root_hash not in remembered_roots(os.path.dirname(unit)):
            retire_unit(unit)
            collect(self.base, only=unit)

    # -- mapping host paths back --------------------------------------------------------------

    def logical(self, real: str) -> str | None:
        """``/cvmfs/...`` for a path inside a shadow tree or the job root, else ``None``."""
        if not real.startswith(self.base_prefix):
            return None
        alias = self._aliases.get(real)
        if alias is not None:
            return alias
        for prefix, logical in self._roots.items():
            if real == prefix:
                return logical
            if real.startswith(prefix) and real[len(prefix)] == "/":
                return logical + real[len(prefix) :]
        return None

    def is_ours(self, real: str) -> bool:
        return real.startswith(self.base_prefix)

    # -- resolution -----------------------------------------------------------------------------

    def resolve(self, path: str, follow: bool) -> Resolved:
        """Where the absolute logical ``path`` leads; ``follow`` applies to its last component."""
        key = (path, follow)
        found = self._cache.get(key)
        if found is not None:
            return found
        try:
            found = self._via_parent(path, follow) or self._walk(path, follow)
        except LookupFailure as exc:
            found = _error(exc.errno)
        except CvmfsError as exc:
            log.warning("%s: %s", path, exc)
            return _error(errno.EIO)  # not memoised: a network failure may be transient
        except ShadowError as exc:
            log.warning("%s: %s", path, exc)
            return _error(errno.EIO)
        if found.kind == ROOT and self._listed is not None:
            self.ensure_listed()
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _via_parent(self, path: str, follow: bool) -> Resolved | None:
        """``path`` as one entry of its (memoised) parent directory, or ``None``: walk it all.

        Jobs name many files of the same directories (imports, ``tar``, ``find``): each new name
        then costs one lookup in its directory instead of a walk from ``/``. The answer is the
        walk's: the walk reaches exactly ``resolve(parent, follow=True)`` before the last
        component, which is then looked up the same way. Symlinks to follow, ``.``, ``..``,
        empty components and anything outside a repository are left to the walk.
        """
        head, _, name = path.rpartition("/")
        if not head or head.endswith("/") or name in ("", ".", ".."):
            return None
        parent = self._cache.get((head, True)) or self._cache.get((head, False))
        if parent is None:
            # Resolved in turn, inside a repository only: never /cvmfs itself (listing it reads
            # the configuration; so no ``..`` either), nor host paths, nor deeper than the
            # recursion should go.
            if not head.startswith("/cvmfs/") or "/.." in head or not 3 <= head.count("/") <= _MAX_VIA_PARENT:
                return None
            parent = self.resolve(head, True)
        if parent.kind != ENTRY:
            return None
        entry, mount = parent.entry, parent.mount
        assert entry is not None and mount is not None
        if not entry.is_dir:  # a symlink resolved without following, or ENOTDIR: the walk says
            return None
        child = mount.children(parent.inner).get(name)
        if child is None:
            return _error(errno.ENOENT)
        if child.is_symlink and follow:
            return None
        return Resolved(ENTRY, mount=mount, inner=f"{parent.inner}/{name}", entry=child)

    def _walk(self, path: str, follow: bool) -> Resolved:
        trailing = names_directory(path)
        todo = [c for c in path.split("/") if c and c != "."]
        todo.reverse()
        host: list[str] = []
        where = HOST
        touched = False
        mount: Mount | None = None
        parts: list[str] = []
        entry: Node | None = None
        links = 0
        while todo:
            c = todo.pop()
            if c == "." or not c:
                continue
            if where == HOST:
                if c == "..":
                    if host:
                        host.pop()
                elif not host and c == "cvmfs":
                    where = ROOT
                    touched = True
                else:
                    host.append(c)
                continue
            if where == ROOT:
                if c == "..":
                    where = HOST
                    host = []
                    continue
                mount = self.mount(c)
                if mount is None:
                    return _error(errno.ENOENT)
                where, parts, entry = ENTRY, [], mount.root_node
                continue
            assert mount is not None and entry is not None
            if c == "..":
                if not entry.is_dir:  # "file/..": the kernel looks ".." up in a directory only
                    return _error(errno.ENOTDIR)
                if parts:
                    parts.pop()
                    entry = mount.node("/" + "/".join(parts) if parts else "")
                else:
                    where, mount = ROOT, None
                continue
            if not entry.is_dir:
                return _error(errno.ENOTDIR)
            inner = "/" + "/".join(parts) if parts else ""
            child = mount.children(inner).get(c)
            if child is None:
                return _error(errno.ENOENT)
            if child.is_symlink and (todo or follow or trailing):
                links += 1
                if links > MAX_SYMLINKS:
                    return _error(errno.ELOOP)
                target = mount.link_target(f"{inner}/{c}")
                if target.startswith("/"):
                    where, host, mount, entry = HOST, [], None, None
                todo.extend(reversed([p for p in target.split("/") if p and p != "."]))
                continue
            parts.append(c)
            entry = child
        if where == HOST:
            text = "/" + "/".join(host)
            return Resolved(HOST, host=text + "/" if trailing and host else text, touched=touched)
        if where == ROOT:
            return Resolved(ROOT)
        assert mount is not None and entry is not None
        if trailing and not entry.is_dir:
            return _error(errno.ENOTDIR)
        return Resolved(ENTRY, mount=mount, inner="/" + "/".join(parts) if parts else "", entry=entry)


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _state(path: str) -> tuple[str, float] | None:
    """(root hash, expiry time) remembered in ``path``, expired or not; None if unreadable.

    One line "ROOT_HASH EXPIRES" (no json: 1.6 ms of start-up for every job; a state file in
    an older format reads as none, and costs one remount)."""
    try:
        with open(path, encoding="utf-8") as f:
            root_hash, expires = f.read().split()
        if re.fullmatch(r"[0-9a-f]{40,}(-[a-z0-9]+)?", root_hash):
            return root_hash, float(expires)
    except (OSError, ValueError):
        pass
    return None


def remembered_roots(repo_dir: str | PathLike[str]) -> set[str]:
    """Root hashes named by the mount states of one repository (``r/FQRN/*.mounted``)."""
    roots: set[str] = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(repo_dir):
            if entry.name.endswith(".mounted"):
                found = _state(entry.path)
                if found is not None:
                    roots.add(found[0])
    return roots


def _write_state(path: str, root_hash: str, expires: float) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{root_hash} {expires!r}\n")
    os.replace(tmp, path)
