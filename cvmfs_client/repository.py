"""A mounted revision of a repository: the verified trust chain and its catalog tree.

Loading follows the real client (spec 2.5, 9): manifest -> certificate (by hash) -> manifest
signature -> whitelist (master key, name, expiry) -> certificate fingerprint in the whitelist ->
root catalog (by hash, or pinned by ``root_hash`` / a history ``tag``). Path questions are then
answered from catalogs, descending into nested catalogs on demand (spec 5.9); every object is
verified by its hash before it is used.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import platform
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from .cache import NodeCache
from .catalog import Catalog, Chunk, DirEntry, NestedRef
from .chunked import ChunkedReader
from .errors import (
    CatalogError,
    FormatError,
    HostileCatalog,
    IsADirectory,
    LookupFailure,
    NotADirectory,
    NotASymlink,
    PathNotFound,
    SymlinkLoop,
)
from .fetcher import ObjectSource
from .hashing import ContentHash, ObjectType
from .history import History
from .manifest import Manifest
from .symlinks import expand_symlink
from .trust import Breadcrumbs, TrustedManifest, check_signed_file, load_manifest
from .whitelist import Whitelist, certificate_fingerprint

log = logging.getLogger(__name__)

# Key of the derived empty file (a chunked-free regular file without content hash).
_EMPTY_KEY = hashlib.sha1(b"").hexdigest()
# Linux's limit on symlinks followed while resolving one path (MAXSYMLINKS).
MAX_SYMLINKS = 40
# Nested catalogs deeper than this are refused: real repositories stay far below.
MAX_CATALOG_DEPTH = 64
# Directory entries remembered by a Repository (a few hundred bytes each).
DIR_MEMO_ENTRIES = 4096
# Buffer of a chunked file opened for reading: large reads bypass it, small ones (lines) use it.
_CHUNKED_BUFFER = 1 << 16


class OutsideRepository(LookupFailure):
    """A symlink leads out of the repository (an absolute target elsewhere)."""

    def __init__(self, path: str, target: str) -> None:
        super().__init__(path, f"symlink leads outside the repository to {target}")
        self.target = target


@dataclass(frozen=True)
class RepositoryInfo:
    """What ``cvmfs-client info`` prints."""

    fqrn: str
    revision: int
    root_hash: str
    published: int | None
    ttl: int
    hash_algorithm: str
    certificate_subject: str
    certificate_fingerprint: str
    whitelist_expires: datetime
    pinned_by: str | None


class Repository:
    """One verified revision of ``fqrn``; the revision stays fixed for the object's lifetime."""

    def __init__(
        self,
        fqrn: str,
        source: ObjectSource,
        master_keys: list[tuple[str, RSAPublicKey]],
        store: NodeCache,
        *,
        root_hash: str | None = None,
        tag: str | None = None,
        env: Mapping[str, str] | None = None,
        now: datetime | None = None,
        max_ttl_minutes: int = 0,
        use_breadcrumbs: bool = True,
        owns_resources: bool = False,
        parameters: Mapping[str, str] | None = None,
    ) -> None:
        self.fqrn = fqrn
        # the configuration it was opened with, for what reports on it (magic xattrs)
        self.parameters: Mapping[str, str] = dict(parameters or {})
        self.source = source
        self.store = store
        self.mount_prefix = f"/cvmfs/{fqrn}"
        base_env = dict(os.environ if env is None else env)
        base_env.setdefault("CVMFS_FQRN", fqrn)
        base_env.setdefault("CVMFS_ARCH", platform.machine())
        self.env = base_env
        self._catalogs: dict[tuple[str, str], Catalog] = {}
        self._dir_entries: dict[str, DirEntry] = {}  # see _entry
        self._pinned: list[ContentHash] = []
        self._owns_resources = owns_resources  # close source and store with the repository

        def cert_bytes(m: Manifest) -> bytes:
            assert m.certificate is not None
            return store.get(m.certificate, source, ObjectType.CERTIFICATE).read_bytes()

        keys = [k for _, k in master_keys]

        def fetch_signed(name: str) -> bytes:
            # Each answer is checked on arrival, so that a damaged or stale copy fails over.
            def check(raw: bytes, url: str) -> None:
                check_signed_file(fqrn, name, raw, cert_bytes, keys, now or datetime.now(UTC), url)

            return source.fetch_bytes(name, check=check)

        self.trusted: TrustedManifest = load_manifest(
            fqrn,
            fetch_signed,
            cert_bytes,
            keys,
            # A pre-warmed alien tier may hold the only copy of the manifest a node has.
            Breadcrumbs(store.directory, [store.alien.directory] if store.alien else [])
            if use_breadcrumbs
            else None,
            now=now,
            max_ttl_minutes=max_ttl_minutes,
        )
        self.manifest: Manifest = self.trusted.manifest
        self.certificate: x509.Certificate = self.trusted.certificate
        self.whitelist: Whitelist = self.trusted.whitelist
        self.offline = self.trusted.offline

        self.pinned_by: str | None = None
        if root_hash:
            self.root_hash = ContentHash.from_hex(root_hash, "CVMFS_ROOT_HASH")
            self.pinned_by = "root hash"
        elif tag:
            self.root_hash = self.history().tag(tag).root_hash
            self.pinned_by = f"tag {tag}"
        else:
            self.root_hash = self.manifest.root_catalog
        self.root = self._open_catalog(NestedRef("", self.root_hash, 0, False), [])
        self.revision = self.root.revision

    # -- trust chain and metadata -------------------------------------------------------

    def history(self) -> History:
        if self.manifest.history is None:
            raise FormatError(f"{self.fqrn}/.cvmfspublished", "repository has no history database (H)")
        path = self.store.get(self.manifest.history, self.source, ObjectType.HISTORY)
        return History(path, f"{self.fqrn} history {self.manifest.history.hex}")

    def info(self) -> RepositoryInfo:
        algo = self.root_hash.algorithm
        return RepositoryInfo(
            fqrn=self.fqrn,
            revision=self.revision,
            root_hash=self.root_hash.hex,
            published=self.manifest.timestamp,
            ttl=self.root.ttl,
            hash_algorithm=algo.option_name,
            certificate_subject=self.certificate.subject.rfc4514_string(),
            certificate_fingerprint=certificate_fingerprint(self.certificate, algo),
            whitelist_expires=self.whitelist.expires,
            pinned_by=self.pinned_by,
        )

    def close(self) -> None:
        for cat in self._catalogs.values():
            cat.close()
        self._catalogs.clear()
        for h in self._pinned:
            self.store.unpin(h)
        self._pinned.clear()
        if self._owns_resources:
            self.source.close()
            self.store.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- catalogs -----------------------------------------------------------------------

    def _open_catalog(self, ref: NestedRef, chain: list[ContentHash]) -> Catalog:
        if ref.content_hash is None:
            raise CatalogError(f"{self.fqrn} nested catalog at {ref.path}", "catalog row has no usable hash")
        key = (ref.content_hash.hex, ref.path)
        cat = self._catalogs.get(key)
        if cat is not None:
            return cat
        label = f"{self.fqrn} catalog {ref.content_hash.hex} at {ref.path or '/'}"
        if ref.content_hash in chain:
            raise HostileCatalog(label, "nested catalog cycle (a catalog contains itself)")
        if len(chain) >= MAX_CATALOG_DEPTH:
            raise HostileCatalog(label, f"nested catalogs deeper than {MAX_CATALOG_DEPTH}")
        path = self.store.get(ref.content_hash, self.source, ObjectType.CATALOG)
        # Catalogs of the mounted revision stay in the cache while this process uses them
        # (the real client pins them too); the pin dies with the process.
        self.store.pin(ref.content_hash)
        self._pinned.append(ref.content_hash)
        cat = Catalog(path, label, mountpoint=ref.path)
        if not ref.is_bind and cat.root_prefix != ref.path:
            cat.close()
            raise HostileCatalog(
                label, f"root prefix {cat.root_prefix!r} does not match mount point {ref.path!r}"
            )
        self._catalogs[key] = cat
        return cat

    def _catalog_for(self, path: str, for_listing: bool) -> Catalog:
        """The catalog holding ``path``'s row (or, for listings, its children)."""
        cat = self.root
        chain = [self.root_hash]
        while True:
            ref = cat.find_nested(path, for_listing=for_listing)
            if ref is None:
                return cat
            cat = self._open_catalog(ref, chain)
            chain.append(ref.content_hash)

    @property
    def catalog_hashes(self) -> list[ContentHash]:
        """Catalogs opened so far (root first): what a pre-warmed cache must hold besides data."""
        return list(self._pinned)

    def chunks(self, entry: DirEntry) -> list[Chunk]:
        """Chunks of a chunked regular file in offset order (``[]`` for unchunked files)."""
        return self._catalog_for(entry.path, False).chunks(entry)

    def _entry(self, path: str) -> DirEntry | None:
        """``path``'s row. Directories are remembered: resolving a path looks up every parent,
        and finding each one's catalog (the nested-catalog walk) and row cost more than the
        file's own lookup. The revision never changes, so neither do they."""
        entry = self._dir_entries.get(path)
        if entry is None:
            entry = self._catalog_for(path, False).lookup(path)
            if entry is not None and entry.is_dir:
                if len(self._dir_entries) >= DIR_MEMO_ENTRIES:
                    self._dir_entries.clear()
                self._dir_entries[path] = entry
        return entry

    # -- paths --------------------------------------------------------------------------

    def normalize(self, path: str) -> str:
        """Repository-internal form: ``""`` for the root, ``/a/b`` otherwise.

        Accepts ``/cvmfs/FQRN/a/b``, ``/a/b`` and ``a/b``. ``.`` and ``..`` are kept for
        :meth:`resolve`, which interprets them after following symlinks, as the kernel would.
        """
        if path == self.mount_prefix or path.startswith(self.mount_prefix + "/"):
            path = path[len(self.mount_prefix) :]
        parts = [p for p in path.split("/") if p]
        return "/" + "/".join(parts) if parts else ""

    def resolve(self, path: str, follow: bool = True) -> DirEntry:
        """The entry ``path`` names, following symlinks inside the repository.

        ``follow=False`` gives ``lstat`` semantics for the last component. Raises
        :class:`PathNotFound`, :class:`NotADirectory`, :class:`SymlinkLoop` (more than
        40 links) or :class:`OutsideRepository`.
        """
        normalized = self.normalize(path)
        parent = normalized.rpartition("/")[0]
        if "/." not in normalized and normalized and parent in self._dir_entries:
            # Fast path (every file of a cold read): the parent was resolved to a real directory
            # before, and no component is "." or "..": one lookup of the path itself.
            found = self._entry(normalized)
            if found is None:
                raise PathNotFound(self.mount_prefix + normalized)
            if not (found.is_symlink and follow):
                return found
        todo = [p for p in normalized.split("/") if p][::-1]  # a stack, next on top
        current: list[str] = []
        entry = self._entry("")
        if entry is None:
            raise PathNotFound(self.mount_prefix)
        links = 0
        while todo:
            comp = todo.pop()
            if comp == ".":
                continue
            if comp == "..":
                if current:
                    current.pop()
                entry = self._entry(_join(current))
                continue
            if not entry or not entry.is_dir:
                raise NotADirectory(self.mount_prefix + _join(current))
            here = _join([*current, comp])
            found = self._entry(here)
            if found is None:
                raise PathNotFound(self.mount_prefix + here)
            if found.is_symlink and (todo or follow):
                links += 1
                if links > MAX_SYMLINKS:
                    raise SymlinkLoop(self.mount_prefix + self.normalize(path))
                target = expand_symlink(found.symlink, self.env)
                if target.startswith("/"):
                    inside = self._inside(target)
                    if inside is None:
                        raise OutsideRepository(self.mount_prefix + here, target)
                    current = []
                    entry = self._entry("")
                    todo.extend(reversed([p for p in inside.split("/") if p]))
                else:
                    entry = self._entry(_join(current))
                    todo.extend(reversed([p for p in target.split("/") if p]))
                continue
            current.append(comp)
            entry = found
        assert entry is not None
        return entry

    def _inside(self, absolute: str) -> str | None:
        if absolute == self.mount_prefix or absolute.startswith(self.mount_prefix + "/"):
            return absolute[len(self.mount_prefix) :]
        return None

    def lookup(self, path: str) -> DirEntry:
        """``lstat``: the entry itself, not a symlink's target."""
        return self.resolve(path, follow=False)

    def stat(self, path: str) -> DirEntry:
        return self.resolve(path, follow=True)

    def listdir(self, path: str) -> list[DirEntry]:
        entry = self.resolve(path, follow=True)
        if not entry.is_dir:
            raise NotADirectory(self.mount_prefix + entry.path)
        return self._catalog_for(entry.path, True).listdir(entry.path)

    def readlink(self, path: str) -> str:
        """The symlink target with ``$(VAR)`` variables expanded, as the real client shows it."""
        entry = self.lookup(path)
        if not entry.is_symlink:
            raise NotASymlink(self.mount_prefix + entry.path)
        return expand_symlink(entry.symlink, self.env)

    # -- content ------------------------------------------------------------------------

    def materialize(self, path: str) -> Path:
        """A local, verified file holding the content of the regular file ``path``."""
        entry = self.stat(path)
        return self.materialize_entry(entry)

    def materialize_entry(self, entry: DirEntry, *, local: bool = False) -> Path:
        """:meth:`materialize` of a row; ``local``: on the node cache's file system (see
        :meth:`NodeCache.get`), for callers that hardlink the file."""
        if entry.is_dir:
            raise IsADirectory(self.mount_prefix + entry.path)
        if not entry.is_regular:
            raise LookupFailure(self.mount_prefix + entry.path, "not a regular file")
        if entry.is_external:
            raise LookupFailure(self.mount_prefix + entry.path, "external data files are not supported")
        if entry.is_chunked:
            return self._assemble(entry)
        if entry.content_hash is None:
            if entry.size == 0:
                return self._empty_file()
            raise LookupFailure(self.mount_prefix + entry.path, "regular file without a content hash")
        return self.store.get(
            entry.content_hash, self.source, ObjectType.FILE, entry.compression, entry.size, local=local
        )

    def _assemble(self, entry: DirEntry) -> Path:
        """Concatenate verified chunks into one local file, named by the chunk list."""
        chunks = self.chunks(entry)
        key = hashlib.sha1(b"".join(c.content_hash.hex.encode() + b"\n" for c in chunks)).hexdigest()

        def build(out: BinaryIO) -> None:
            for chunk in chunks:
                with self.store.open(
                    chunk.content_hash, self.source, ObjectType.PARTIAL, entry.compression, chunk.size
                ) as part:
                    shutil.copyfileobj(part, out, 1 << 20)

        return self.store.get_derived(key, build)

    def _empty_file(self) -> Path:
        return self.store.get_derived(_EMPTY_KEY, lambda out: None)

    def open(self, path: str) -> BinaryIO:
        """The verified content of ``path``, opened (no window for eviction to slip in).

        A chunked file is read through its chunks (:class:`~.chunked.ChunkedReader`), all of
        them fetched here, so that a download failure is raised by ``open`` as before; nothing
        is assembled (:meth:`materialize` does that, for callers that need one file).
        """
        entry = self.stat(path)
        if entry.is_regular and not entry.is_external:
            if entry.is_chunked:
                return self._open_chunked(entry)
            if entry.content_hash is not None:
                return self.store.open(
                    entry.content_hash, self.source, ObjectType.FILE, entry.compression, entry.size
                )
        return open(self.materialize_entry(entry), "rb")

    def _open_chunked(self, entry: DirEntry) -> BinaryIO:
        chunks = self.chunks(entry)
        for chunk in chunks:  # fetched now; opened (fetched again if evicted meanwhile) when read
            self.store.get(chunk.content_hash, self.source, ObjectType.PARTIAL, entry.compression, chunk.size)

        def open_chunk(index: int) -> BinaryIO:
            c = chunks[index]
            return self.store.open(c.content_hash, self.source, ObjectType.PARTIAL, entry.compression, c.size)

        spans = [(c.offset, c.size) for c in chunks]
        raw = ChunkedReader(spans, entry.size, open_chunk, self.mount_prefix + entry.path)
        return io.BufferedReader(raw, _CHUNKED_BUFFER)

    def read_file(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read()

    def walk(self, path: str = "") -> Iterator[DirEntry]:
        """Every entry below ``path`` (depth first, not following symlinks), the start included."""
        start = self.lookup(path)
        yield start
        if not start.is_dir:
            return
        stack = [start.path]
        while stack:
            here = stack.pop()
            for child in self._catalog_for(here, True).listdir(here):
                yield child
                if child.is_dir:
                    stack.append(child.path)


def _join(parts: list[str]) -> str:
    return "/" + "/".join(parts) if parts else ""
