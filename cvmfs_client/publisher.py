"""Publish a directory as the next revision of a repository: an unprivileged ``cvmfs_server publish``.

The output is a static Stratum-0 tree with the layout and formats the real 2.12 publisher writes
(compare ``shared/fixtures/real-cvmfs``):

- ``data/00`` .. ``data/ff`` and ``data/txn``; content-addressed objects named by the hash of the
  bytes as stored (spec 1.3, 4.2). Every object is written to ``data/txn`` and renamed into place,
  so a reader never sees a partial object; an object that already exists is not written again.
- File and chunk objects are zlib or raw (``compression``); catalogs, certificate ``X``, history
  ``H`` and meta-info ``M`` are always zlib. Files larger than the minimum chunk size are cut
  with the real xor32 chunker (:mod:`.chunking`); a single piece stays an ordinary object.
- One catalog per directory holding a ``.cvmfscatalog`` marker (the marker is an entry too), the
  root catalog for the rest. A nested catalog whose content did not change is reused as is.
- The first publish makes revision 0 (the empty root catalog ``mkfs`` creates, whose root entry
  metadata the real publisher never changes again) and revision 1 from ``src``; every later one
  makes revision N+1 after verifying the previous signed manifest.
- History ``H`` with ``generic-<UTC time>``, ``trunk``, ``trunk-previous`` (and an optional user
  tag), chained through ``previous_revision``; ``.cvmfsreflog`` (hash in manifest ``Y``);
  meta-info skeleton; whitelist created or re-signed when close to expiry;
  ``.cvmfs_master_replica``; and ``.cvmfspublished`` written last, atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import logging
import os
import re
import stat
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa

from . import chunking
from .catalog import MAX_XATTRS, XATTR_BIG_VALUE_MAX, Catalog, Chunk, DirEntry, NestedRef
from .catalog_schema import COUNTER_NAMES
from .catalog_writer import CatalogWriter, make_flags, make_hardlinks
from .errors import ConfigError, CvmfsError, FormatError, HashMismatch
from .hashing import ContentHash, HashAlgorithm, ObjectType
from .history import History, Tag, write_history
from .keys import RepositoryKeys, ensure_repository_keys, load_certificate
from .manifest import (
    EMPTY_PATH_MD5,
    Manifest,
    check_manifest,
    parse_manifest,
    render_manifest,
    sign_manifest,
    verify_manifest_signature,
)
from .objects import Compression, ObjectDecoder, decode_bytes
from .signing import check_letter_hash, split_signed
from .whitelist import check_certificate, render_whitelist, sign_whitelist, verify_whitelist

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZES: tuple[int, int, int] = chunking.DEFAULT_CHUNK_SIZES
CATALOG_MARKER = ".cvmfscatalog"  # a regular file with this name makes its directory a catalog
DIRECTORY_SIZE = 4096  # what the publisher stores as a directory's size
# The root of a new repository, as CreateRepository makes it (cvmfs/cvmfs:cvmfs/catalog_mgr_rw.cc).
ROOT_MODE = stat.S_IFDIR | 0o755
# Names the real publisher reserves at the repository root (hidden snapshot directory).
RESERVED_ROOT_NAMES = frozenset({".cvmfs"})
# Re-sign the whitelist once it has less than this left (bounded by half its lifetime).
WHITELIST_RENEW_BEFORE = timedelta(days=7)
# Streaming: files are hashed and compressed in pieces of this size, never held whole.
READ_PIECE = 1 << 20
# Reflog ref types (cvmfs/cvmfs:cvmfs/reflog.h): root catalog, certificate, history, meta-info.
REF_CATALOG, REF_CERTIFICATE, REF_HISTORY, REF_METAINFO = 0, 1, 2, 3

TAG_TRUNK = "trunk"
TAG_TRUNK_PREVIOUS = "trunk-previous"
_TAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+@-]*")
_FQRN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# create_repometa_skeleton in cvmfs_server_common.sh: the text every new repository gets.
METAINFO_SKELETON = (
    b"{\n"
    b'  "administrator" : "Your Name",\n'
    b'  "email"         : "you@organisation.org",\n'
    b'  "organisation"  : "Your Organisation",\n'
    b'  "description"   : "Repository content",\n'
    b'  "url"           : "Project website",\n'
    b'  "recommended-stratum0":  "stratum 0 url",\n'
    b'  "recommended-stratum1s" : [ "stratum1 url", "stratum1 url" ],\n'
    b"\n"
    b'  "custom" : {\n'
    b'    "_comment" : "Put arbitrary structured data here"\n'
    b"  }\n"
    b"}\n"
)
MASTER_REPLICA_TEXT = b"This file marks the repository as replicatable to stratum 1 servers\n"


@dataclass(frozen=True)
class PublishResult:
    """What one publish produced; ``manifest`` is the signed one now in ``.cvmfspublished``."""

    revision: int
    root_hash: ContentHash
    objects_written: int
    objects_reused: int
    manifest: Manifest


# ----- object store ------------------------------------------------------------------------


class _ObjectWriter:
    """Writes content-addressed objects into ``<stratum0>/data``: temp file in ``txn``, then rename.

    Counting is per publish: an object already present (from an earlier revision or an earlier
    file of this one) is "reused" and its new copy dropped.
    """

    def __init__(self, stratum0: Path, algorithm: HashAlgorithm) -> None:
        self.root = stratum0
        self.txn = stratum0 / "data" / "txn"
        self.algorithm = algorithm
        self.written = 0
        self.reused = 0

    def _commit(self, tmp: str, content_hash: ContentHash, kind: ObjectType) -> ContentHash:
        final = self.root / content_hash.object_path(kind)
        if final.exists():
            os.unlink(tmp)
            self.reused += 1
        else:
            os.chmod(tmp, 0o644)  # served by a web server running as another user
            # Same bytes under the same name: a concurrent writer of the same object is harmless.
            os.replace(tmp, final)
            self.written += 1
        return content_hash

    def put_bytes(
        self, data: bytes, kind: ObjectType, compression: Compression = Compression.ZLIB
    ) -> ContentHash:
        return self.put_stream(_BytesReader(data), len(data), kind, compression, "object")

    def put_stream(
        self, f: BinaryIO, length: int, kind: ObjectType, compression: Compression, source: str
    ) -> ContentHash:
        """Store exactly ``length`` bytes read from ``f``: compressed and hashed piece by piece."""
        hasher = self.algorithm.new()
        packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION) if compression is Compression.ZLIB else None
        fd, tmp = tempfile.mkstemp(prefix="object.", dir=self.txn)
        try:
            with os.fdopen(fd, "wb") as out:
                remaining = length
                while remaining > 0:
                    piece = f.read(min(READ_PIECE, remaining))
                    if not piece:
                        raise ConfigError(f"{source}: file shrank while it was being published")
                    remaining -= len(piece)
                    stored = packer.compress(piece) if packer is not None else piece
                    hasher.update(stored)
                    out.write(stored)
                if packer is not None:
                    stored = packer.flush()
                    hasher.update(stored)
                    out.write(stored)
            return self._commit(tmp, hasher.content_hash(), kind)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_file(self, path: Path, kind: ObjectType) -> tuple[ContentHash, int]:
        """Store a whole local file zlib-compressed (catalogs, history); returns hash and size."""
        size = path.stat().st_size
        with path.open("rb") as f:
            return self.put_stream(f, size, kind, Compression.ZLIB, str(path)), size

    def read_verified(self, content_hash: ContentHash, kind: ObjectType, out: Path) -> int:
        """Decode an existing zlib object into ``out`` after checking its hash; returns the size."""
        src = self.root / content_hash.object_path(kind)
        try:
            with src.open("rb") as f, out.open("wb") as sink:
                decoder = ObjectDecoder(content_hash, Compression.ZLIB, sink.write, str(src))
                while piece := f.read(READ_PIECE):
                    decoder.feed(piece)
                return decoder.finish()
        except FileNotFoundError:
            raise FormatError(str(src), "object named by the previous revision is missing") from None


class _BytesReader:
    """The ``read`` half of a file over bytes, without copying slices of a big buffer twice."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, n: int) -> bytes:
        piece = self._view[self._pos : self._pos + n]
        self._pos += len(piece)
        return bytes(piece)


def _atomic_write(stratum0: Path, name: str, data: bytes) -> None:
    """Replace ``stratum0/name`` in one rename (temp file in ``data/txn``, same file system)."""
    fd, tmp = tempfile.mkstemp(prefix=f"{name}.", dir=stratum0 / "data" / "txn")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, stratum0 / name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _create_skeleton(stratum0: Path) -> None:
    """``create_repository_skeleton``: ``data/00`` .. ``data/ff`` and ``data/txn``."""
    data = stratum0 / "data"
    for i in range(256):
        (data / f"{i:02x}").mkdir(parents=True, exist_ok=True)
    (data / "txn").mkdir(exist_ok=True)


@contextlib.contextmanager
def _publish_lock(stratum0: Path) -> Iterator[None]:
    """One publisher per Stratum-0 tree at a time (two would race on the next revision number)."""
    lock_path = stratum0 / "data" / "txn" / "publish.lock"
    with lock_path.open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{stratum0}: another publish is running on this repository") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ----- the source tree -----------------------------------------------------------------------


@dataclass
class _Node:
    """One source entry; ``kind`` is ``d``/``f``/``l``/``s`` as in catalog flags."""

    name: str
    path: str  # repository path, "" for the root
    fs_path: Path
    st: os.stat_result
    kind: str
    target: str = ""  # symlink target
    children: list[_Node] = field(default_factory=list)
    is_catalog_root: bool = False  # directory holding a .cvmfscatalog marker


def _kind(mode: int) -> str | None:
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISLNK(mode):
        return "l"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "s"  # special files are published by default (CVMFS_IGNORE_SPECIAL_FILES=false)
    return None


def _representable(text: str) -> bool:
    """Catalog names and link targets are UTF-8 TEXT: undecodable file-system bytes cannot go in."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(path: Path) -> str:
    """path for a message, its undecodable bytes as ``\\xNN``: a lone surrogate cannot be
    written to a UTF-8 log file (or sent by a test runner's workers)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _scan(src: Path) -> _Node:
    """Read the whole source tree's metadata (never file contents), children sorted by name bytes."""
    try:
        st = os.stat(src)
    except OSError as exc:
        raise ConfigError(f"{src}: cannot read the source directory: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{src}: the source to publish is not a directory")
    root = _Node("", "", src, st, "d")
    _scan_dir(root)
    return root


def _scan_dir(node: _Node) -> None:
    try:
        with os.scandir(node.fs_path) as it:
            dirents = sorted(it, key=lambda e: os.fsencode(e.name))
    except OSError as exc:
        raise ConfigError(f"{node.fs_path}: cannot list directory: {exc.strerror}") from None
    for d in dirents:
        name = d.name
        fs_path = Path(d.path)
        if not _representable(name):
            log.warning("%s: skipped: the name is not valid UTF-8", _shown(fs_path))
            continue
        if not node.path and name in RESERVED_ROOT_NAMES:
            log.warning("%s: skipped: /%s is reserved by CernVM-FS", fs_path, name)
            continue
        try:
            st = d.stat(follow_symlinks=False)
        except OSError as exc:
            raise ConfigError(f"{fs_path}: cannot stat: {exc.strerror}") from None
        kind = _kind(st.st_mode)
        if kind is None:
            log.warning("%s: skipped: unsupported file type (mode %o)", fs_path, st.st_mode)
            continue
        child = _Node(name, f"{node.path}/{name}", fs_path, st, kind)
        if kind == "l":
            try:
                child.target = os.readlink(fs_path)
            except OSError as exc:
                raise ConfigError(f"{fs_path}: cannot read symlink: {exc.strerror}") from None
            if not _representable(child.target):
                log.warning("%s: skipped: the symlink target is not valid UTF-8", _shown(fs_path))
                continue
        elif kind == "d":
            _scan_dir(child)
        elif kind == "f" and name == CATALOG_MARKER and node.path:
            node.is_catalog_root = True
        node.children.append(child)


# ----- previous revision ---------------------------------------------------------------------


@dataclass
class _Previous:
    """What a publish needs to know about the revision it follows."""

    revision: int
    root_hash: ContentHash
    root_entry: DirEntry  # keeps revision 0's metadata (spec fixtures README, root mtime)
    manifest: Manifest | None = None  # None when following the fresh revision 0
    tags: list[Tag] = field(default_factory=list)
    reflog: bytes | None = None


def _load_previous(
    stratum0: Path, fqrn: str, objects: _ObjectWriter, work: Path
) -> tuple[_Previous, Catalog] | None:
    """Verify and read the current revision; ``None`` if the tree has never been published."""
    manifest_path = stratum0 / ".cvmfspublished"
    source = str(manifest_path)
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        return None
    # An altered body is an integrity failure, not a format error: check the hash line first.
    check_letter_hash(split_signed(raw, source), source)
    m = parse_manifest(raw, source)
    check_manifest(m, fqrn, source)
    if m.certificate is None:
        raise FormatError(source, "the previous manifest names no certificate (X)")
    cert_path = stratum0 / m.certificate.object_path(ObjectType.CERTIFICATE)
    try:
        cert_stored = cert_path.read_bytes()
    except FileNotFoundError:
        raise FormatError(str(cert_path), "certificate of the previous revision is missing") from None
    cert = load_certificate(
        decode_bytes(cert_stored, m.certificate, Compression.ZLIB, str(cert_path)), str(cert_path)
    )
    verify_manifest_signature(raw, cert, source)

    tags: list[Tag] = []
    if m.history is not None:
        history_db = work / "previous-history.db"
        objects.read_verified(m.history, ObjectType.HISTORY, history_db)
        with History(history_db, f"{fqrn} history {m.history}") as h:
            tags = h.tags()

    reflog: bytes | None = None
    reflog_path = stratum0 / ".cvmfsreflog"
    if reflog_path.exists():
        reflog = reflog_path.read_bytes()
        if m.reflog is not None:
            actual = ContentHash.of(m.reflog.algorithm, reflog)
            if actual != m.reflog:
                raise HashMismatch(str(reflog_path), m.reflog.hex, actual.hex)
    else:
        log.warning("%s: missing, starting a new reflog", reflog_path)

    root_db = work / "previous-root.db"
    objects.read_verified(m.root_catalog, ObjectType.CATALOG, root_db)
    root = Catalog(root_db, f"{fqrn} root catalog {m.root_catalog}", mountpoint="")
    root_entry = root.lookup("")
    if root_entry is None:
        root.close()
        raise FormatError(f"{fqrn} root catalog {m.root_catalog}", "has no root directory entry")
    prev = _Previous(m.revision, m.root_catalog, root_entry, m, tags, reflog)
    return prev, root


def _make_revision_zero(objects: _ObjectWriter, work: Path, ttl: int, now: int) -> tuple[_Previous, Catalog]:
    """The empty root catalog ``mkfs`` creates first: revision 0, one root entry, no tag."""
    entry = DirEntry(
        path="",
        name="",
        mode=ROOT_MODE,
        size=DIRECTORY_SIZE,
        mtime=now,
        flags=make_flags("d"),
        uid=os.getuid(),
        gid=os.getgid(),
        hardlinks=make_hardlinks(0, 2),
    )
    db = work / "revision-0.db"
    with CatalogWriter(db, "", revision=0, ttl=ttl, last_modified=now, is_root=True) as w:
        w.add_entry(entry)
    root_hash, _ = objects.put_file(db, ObjectType.CATALOG)
    catalog = Catalog(db, "revision 0 root catalog", mountpoint="")
    return _Previous(0, root_hash, entry), catalog


# ----- catalogs --------------------------------------------------------------------------------


@dataclass
class _Built:
    """A finished catalog: its object, uncompressed size and counters (self + subtree)."""

    content_hash: ContentHash
    size: int
    totals: dict[str, int]


@dataclass
class _Settings:
    algorithm: HashAlgorithm
    compression: Compression
    chunk_sizes: tuple[int, int, int] | None
    ttl: int
    now: int
    revision: int
    include_xattrs: bool = False


def _read_xattrs(path: Path) -> dict[str, bytes]:
    """A source file's extended attributes, as the real publisher takes them with
    CVMFS_INCLUDE_XATTRS (cvmfs/xattr.cc CreateFromFile: the entry's own, not a link target's;
    names over 255 bytes, values of 64 KiB or more and any beyond the 255th are left out)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # a file system without xattrs
        return {}
    found: dict[str, bytes] = {}
    for name in sorted(names, key=os.fsencode):
        if len(found) == MAX_XATTRS - 1 or not 0 < len(os.fsencode(name)) <= 255:
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile, or not readable
        if len(value) <= XATTR_BIG_VALUE_MAX:
            found[name] = value
    return found


class _CatalogBuilder:
    """Turns the scanned tree into catalogs, bottom-up, ingesting file contents on the way."""

    def __init__(self, objects: _ObjectWriter, work: Path, settings: _Settings) -> None:
        self.objects = objects
        self.work = work
        self.s = settings
        self._ingested: dict[tuple[int, int, int, int], tuple[int, ContentHash | None, list[Chunk]]] = {}
        self._seq = 0

    def _tmp(self, stem: str) -> Path:
        self._seq += 1
        return self.work / f"{stem}-{self._seq}.db"

    # -- file contents --

    def _ingest(self, node: _Node) -> tuple[int, ContentHash | None, list[Chunk]]:
        """Store a regular file; returns its size and either a content hash or its chunks."""
        st = node.st
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in self._ingested:  # hardlinks and repeated inodes: read once
            return self._ingested[key]
        try:
            with node.fs_path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                result = self._ingest_open(f, size, str(node.fs_path))
        except OSError as exc:
            raise ConfigError(f"{node.fs_path}: cannot read: {exc.strerror}") from None
        self._ingested[key] = result
        return result

    def _ingest_open(
        self, f: BinaryIO, size: int, source: str
    ) -> tuple[int, ContentHash | None, list[Chunk]]:
        put = self.objects.put_stream
        sizes = self.s.chunk_sizes
        if sizes is not None and size > sizes[0]:
            pieces = list(chunking.cut_points(f, *sizes))
            if len(pieces) > 1:
                chunks = []
                for offset, length in pieces:
                    f.seek(offset)
                    h = put(f, length, ObjectType.PARTIAL, self.s.compression, source)
                    chunks.append(Chunk(offset, length, h))
                return size, None, chunks
            f.seek(0)  # a sole piece is an ordinary object (IsSolePiece)
        return size, put(f, size, ObjectType.FILE, self.s.compression, source), []

    # -- entries --

    def _entry(
        self, node: _Node, flags: int, size: int, hardlinks: int, content_hash: ContentHash | None
    ) -> DirEntry:
        st = node.st
        seconds, nanos = divmod(st.st_mtime_ns, 1_000_000_000)
        return DirEntry(
            path=node.path,
            name=node.name,
            mode=st.st_mode,
            size=size,
            mtime=seconds,
            flags=flags,
            mtime_ns=nanos,
            uid=st.st_uid,
            gid=st.st_gid,
            hardlinks=hardlinks,
            content_hash=content_hash,
            symlink=node.target,
            xattrs=_read_xattrs(node.fs_path) if self.s.include_xattrs else {},
        )

    def _dir_entry(self, node: _Node, nested: bool) -> DirEntry:
        subdirs = sum(1 for c in node.children if c.kind == "d")
        flags = make_flags("d", nested_mountpoint=nested)
        return self._entry(node, flags, DIRECTORY_SIZE, make_hardlinks(0, 2 + subdirs), None)

    def _rows_of_directory(self, node: _Node, group_ids: Iterator[int]) -> list[tuple[DirEntry, list[Chunk]]]:
        """Rows of the non-directory children of ``node``; hardlink groups are per directory."""
        members: dict[tuple[int, int], list[_Node]] = {}
        for c in node.children:
            if c.kind != "d" and c.st.st_nlink > 1:
                members.setdefault((c.st.st_dev, c.st.st_ino), []).append(c)
        groups: dict[tuple[int, int], int] = {}
        rows: list[tuple[DirEntry, list[Chunk]]] = []
        for c in node.children:
            if c.kind == "d":
                continue
            inode = (c.st.st_dev, c.st.st_ino)
            linked = members.get(inode, [])
            if len(linked) > 1:
                if inode not in groups:
                    groups[inode] = next(group_ids)
                hardlinks = make_hardlinks(groups[inode], len(linked))
            else:
                hardlinks = make_hardlinks(0, 1)
            if c.kind == "l":
                size = len(c.target.encode("utf-8"))
                rows.append((self._entry(c, make_flags("l"), size, hardlinks, None), []))
            elif c.kind == "s":
                is_device = stat.S_ISCHR(c.st.st_mode) or stat.S_ISBLK(c.st.st_mode)
                size = c.st.st_rdev if is_device else 0  # devices keep st_rdev in size (spec 5.7)
                rows.append((self._entry(c, make_flags("s"), size, hardlinks, None), []))
            else:
                size, content_hash, chunks = self._ingest(c)
                flags = make_flags(
                    "f", algorithm=self.s.algorithm, compression=self.s.compression, chunked=bool(chunks)
                )
                rows.append((self._entry(c, flags, size, hardlinks, content_hash), chunks))
        return rows

    # -- catalogs --

    def _collect(self, top: _Node, top_entry: DirEntry, previous: Catalog | None) -> _Content:
        """Rows of the catalog rooted at ``top``; nested catalogs below are built on the way.

        Order is deterministic (top, its files, then each subdirectory depth-first, children by
        name bytes), so the same content always gives the same catalog bytes.
        """
        content = _Content(rows=[(top_entry, [])])
        group_ids = iter(range(1, 1 << 32))  # hardlink group ids are unique per catalog
        previous_refs = {r.path: r for r in previous.nested_catalogs()} if previous is not None else {}

        def walk(node: _Node) -> None:
            content.rows.extend(self._rows_of_directory(node, group_ids))
            for c in node.children:
                if c.kind != "d":
                    continue
                if c.is_catalog_root:
                    content.rows.append((self._dir_entry(c, nested=True), []))
                    content.nested.append((c.path, self._build_nested(c, previous_refs.get(c.path))))
                else:
                    content.rows.append((self._dir_entry(c, nested=False), []))
                    walk(c)

        walk(top)
        for _, child in content.nested:
            for name, value in child.totals.items():
                content.subtree[name] += value
        return content

    def _write(
        self,
        prefix: str,
        content: _Content,
        revision: int,
        previous: ContentHash | None,
        last_modified: int,
    ) -> tuple[Path, dict[str, int]]:
        """Write one catalog file; returns it and its counters (self + subtree)."""
        path = self._tmp("catalog")
        with CatalogWriter(
            path,
            prefix,
            revision=revision,
            ttl=self.s.ttl,
            previous_revision=previous,
            last_modified=last_modified,
            is_root=prefix == "",
        ) as w:
            for entry, chunks in content.rows:
                w.add_entry(entry, chunks)
            for nested_path, built in content.nested:
                w.add_nested(nested_path, built.content_hash, built.size)
            w.set_subtree_statistics(content.subtree)
            own = w.self_statistics()
        return path, {k: own[k] + content.subtree[k] for k in own}

    def build_root(
        self, top: _Node, previous: Catalog, previous_hash: ContentHash, root_entry: DirEntry
    ) -> _Built:
        """The root catalog of the new revision; the root entry keeps revision 0's metadata."""
        subdirs = sum(1 for c in top.children if c.kind == "d")
        entry = DirEntry(
            path="",
            name="",
            mode=root_entry.mode,
            size=root_entry.size,
            mtime=root_entry.mtime,
            flags=make_flags("d"),
            mtime_ns=root_entry.mtime_ns,
            uid=root_entry.uid,
            gid=root_entry.gid,
            hardlinks=make_hardlinks(0, 2 + subdirs),
        )
        content = self._collect(top, entry, previous)
        path, totals = self._write("", content, self.s.revision, previous_hash, self.s.now)
        content_hash, size = self.objects.put_file(path, ObjectType.CATALOG)
        return _Built(content_hash, size, totals)

    def _build_nested(self, top: _Node, ref: NestedRef | None) -> _Built:
        """A nested catalog; reused unchanged when its content equals the previous revision's."""
        previous: Catalog | None = None
        previous_db: Path | None = None
        if ref is not None and ref.content_hash is not None:
            previous_db = self._tmp("previous")
            self.objects.read_verified(ref.content_hash, ObjectType.CATALOG, previous_db)
            previous = Catalog(previous_db, f"previous catalog {ref.content_hash} at {top.path}", top.path)
        try:
            content = self._collect(top, self._dir_entry(top, nested=True), previous)
            if previous is not None and previous_db is not None and ref is not None:
                assert ref.content_hash is not None
                if previous.last_modified is not None:
                    # Same rows + the old properties = the old bytes iff nothing changed.
                    candidate, totals = self._write(
                        top.path,
                        content,
                        previous.revision,
                        previous.previous_revision,
                        previous.last_modified,
                    )
                    if filecmp.cmp(candidate, previous_db, shallow=False):
                        self.objects.reused += 1
                        return _Built(ref.content_hash, candidate.stat().st_size, totals)
                path, totals = self._write(
                    top.path, content, previous.revision + 1, ref.content_hash, self.s.now
                )
            else:
                path, totals = self._write(top.path, content, 1, None, self.s.now)
        finally:
            if previous is not None:
                previous.close()
        content_hash, size = self.objects.put_file(path, ObjectType.CATALOG)
        return _Built(content_hash, size, totals)


@dataclass
class _Content:
    """The rows of one catalog before writing, and what its nested catalogs add up to."""

    rows: list[tuple[DirEntry, list[Chunk]]]
    nested: list[tuple[str, _Built]] = field(default_factory=list)
    subtree: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))


# ----- history, reflog, whitelist ---------------------------------------------------------------


def _next_tags(previous: list[Tag], root: _Built, revision: int, now: int, user_tag: str | None) -> list[Tag]:
    """Tags of the new history: old ones kept, ``trunk`` moved on, ``trunk-previous`` = old trunk."""
    by_name = {t.name: t for t in previous}
    kept = [t for t in previous if t.name not in (TAG_TRUNK, TAG_TRUNK_PREVIOUS)]
    generic = "generic-" + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    name, n = generic, 0
    while name in by_name:  # two publishes within one second
        n += 1
        name = f"{generic}.{n}"
    new = [Tag(name, root.content_hash, revision, now, size=root.size)]
    if user_tag is not None:
        new.append(Tag(user_tag, root.content_hash, revision, now, size=root.size))
    old_trunk = by_name.get(TAG_TRUNK)
    if old_trunk is not None:
        new.append(
            Tag(
                TAG_TRUNK_PREVIOUS,
                old_trunk.root_hash,
                old_trunk.revision,
                old_trunk.timestamp,
                old_trunk.channel,
                "default undo target",
                old_trunk.size,
            )
        )
    new.append(Tag(TAG_TRUNK, root.content_hash, revision, now, description="current HEAD", size=root.size))
    return kept + new


_reflog_metadata = sa.MetaData()
_reflog_properties = sa.Table(
    "properties",
    _reflog_metadata,
    sa.Column("key", sa.Text, quote=False),
    sa.Column("value", sa.Text),
)
_reflog_refs = sa.Table(
    "refs",
    _reflog_metadata,
    sa.Column("hash", sa.Text),
    sa.Column("type", sa.Integer),
    sa.Column("timestamp", sa.Integer),
)
# The DDL of cvmfs/cvmfs:cvmfs/reflog_sql.cc, as found in the fixtures' .cvmfsreflog.
_REFLOG_DDL = (
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key))",
    "CREATE TABLE refs (hash TEXT, type INTEGER, timestamp INTEGER, CONSTRAINT pk_refs PRIMARY KEY (hash))",
)


def _write_reflog(
    path: Path, previous: bytes | None, fqrn: str, refs: list[tuple[ContentHash, int]], now: int
) -> bytes:
    """The new ``.cvmfsreflog``: the previous one plus ``refs`` (re-added refs get ``now``)."""
    if previous is not None:
        path.write_bytes(previous)
    engine = sa.create_engine(sa.URL.create("sqlite+pysqlite", database=str(path)))
    try:
        with engine.begin() as conn:
            if previous is None:
                for ddl in _REFLOG_DDL:
                    conn.exec_driver_sql(ddl)
                conn.execute(
                    _reflog_properties.insert(),
                    [
                        {"key": "schema", "value": "1.0"},
                        {"key": "schema_revision", "value": "0"},
                        {"key": "fqrn", "value": fqrn},
                    ],
                )
            conn.execute(
                _reflog_refs.insert().prefix_with("OR REPLACE"),
                [{"hash": h.hex, "type": kind, "timestamp": now} for h, kind in refs],
            )
    finally:
        engine.dispose()
    return path.read_bytes()


def _ensure_whitelist(
    stratum0: Path, fqrn: str, keys: RepositoryKeys, algorithm: HashAlgorithm, now: datetime, days: int
) -> bool:
    """Keep a valid whitelist listing our certificate; re-sign near expiry. True if (re)written."""
    path = stratum0 / ".cvmfswhitelist"
    margin = min(WHITELIST_RENEW_BEFORE, timedelta(days=days) / 2)
    if path.exists():
        try:
            wl = verify_whitelist(path.read_bytes(), [keys.master_public_key], fqrn, now, str(path))
            check_certificate(wl, keys.certificate, str(path))
            if wl.expires - now > margin:
                return False
            log.info("%s: expires %s, re-signing", path, wl.expires)
        except CvmfsError as exc:
            log.info("%s: re-signing: %s", path, exc)
    body = render_whitelist(fqrn, keys.certificate, algorithm, now, now + timedelta(days=days))
    _atomic_write(stratum0, ".cvmfswhitelist", sign_whitelist(body, keys.master_key, algorithm))
    return True


# ----- publish ---------------------------------------------------------------------------------


def _check_arguments(
    fqrn: str, chunk_sizes: tuple[int, int, int] | None, ttl: int, whitelist_days: int, tag: str | None
) -> None:
    if not _FQRN.fullmatch(fqrn):
        raise ConfigError(f"repository name {fqrn!r}: use letters, digits, '.', '_' and '-'")
    if chunk_sizes is not None:
        chunking.validate_chunk_sizes(*chunk_sizes)
    if not isinstance(ttl, int) or ttl <= 0:
        raise ConfigError(f"TTL {ttl!r}: must be a positive number of seconds")
    if not isinstance(whitelist_days, int) or whitelist_days <= 0:
        raise ConfigError(f"whitelist lifetime {whitelist_days!r}: must be a positive number of days")
    if tag is not None:
        if not _TAG_NAME.fullmatch(tag):
            raise ConfigError(f"tag {tag!r}: use letters, digits and . _ : + @ -, starting alphanumeric")
        if tag in (TAG_TRUNK, TAG_TRUNK_PREVIOUS) or tag.startswith("generic-"):
            raise ConfigError(f"tag {tag!r}: the publisher sets this name itself")


def publish(
    src: Path,
    fqrn: str,
    stratum0: Path,
    keys_dir: Path,
    hash_algorithm: HashAlgorithm = HashAlgorithm.SHA1,
    compression: Compression = Compression.ZLIB,
    chunk_sizes: tuple[int, int, int] | None = DEFAULT_CHUNK_SIZES,
    ttl: int = 240,
    whitelist_days: int = 30,
    now: int | None = None,
    tag: str | None = None,
    include_xattrs: bool = False,
) -> PublishResult:
    """Publish ``src`` as the next revision of ``fqrn`` in the Stratum-0 tree ``stratum0``.

    Keys are taken from (or created in) ``keys_dir``. ``chunk_sizes`` is (min, avg, max) bytes
    or ``None`` to store every file whole. ``now`` (Unix seconds) fixes every timestamp written.
    ``include_xattrs``: store each entry's extended attributes (CVMFS_INCLUDE_XATTRS).
    Readers of ``stratum0`` see either the previous revision or the new one, never a mixture:
    ``.cvmfspublished`` is replaced last, after every object it reaches exists.
    """
    src, stratum0 = Path(src), Path(stratum0)
    _check_arguments(fqrn, chunk_sizes, ttl, whitelist_days, tag)
    now = int(time.time()) if now is None else int(now)
    keys = ensure_repository_keys(Path(keys_dir), fqrn)
    stratum0.mkdir(parents=True, exist_ok=True)
    _create_skeleton(stratum0)
    objects = _ObjectWriter(stratum0, hash_algorithm)

    with (
        _publish_lock(stratum0),
        tempfile.TemporaryDirectory(prefix="publish.", dir=stratum0 / "data" / "txn") as w,
    ):
        work = Path(w)
        refs: list[tuple[ContentHash, int]] = []
        loaded = _load_previous(stratum0, fqrn, objects, work)
        if loaded is None:
            prev, prev_root = _make_revision_zero(objects, work, ttl, now)
            refs.append((prev.root_hash, REF_CATALOG))
        else:
            prev, prev_root = loaded
        try:
            if tag is not None and any(t.name == tag for t in prev.tags):
                raise ConfigError(f"{fqrn}: tag {tag!r} already exists")
            tree = _scan(src)
            revision = prev.revision + 1
            settings = _Settings(hash_algorithm, compression, chunk_sizes, ttl, now, revision, include_xattrs)
            root = _CatalogBuilder(objects, work, settings).build_root(
                tree, prev_root, prev.root_hash, prev.root_entry
            )
        finally:
            prev_root.close()

        history_db = work / "history.db"
        previous_history = prev.manifest.history if prev.manifest is not None else None
        write_history(
            history_db, _next_tags(prev.tags, root, revision, now, tag), previous_history, fqrn=fqrn
        )
        history_hash, _ = objects.put_file(history_db, ObjectType.HISTORY)
        cert_hash = objects.put_bytes(keys.certificate_pem, ObjectType.CERTIFICATE)
        meta_hash = objects.put_bytes(METAINFO_SKELETON, ObjectType.METAINFO)
        refs += [
            (root.content_hash, REF_CATALOG),
            (cert_hash, REF_CERTIFICATE),
            (history_hash, REF_HISTORY),
            (meta_hash, REF_METAINFO),
        ]
        reflog = _write_reflog(work / "reflog.db", prev.reflog, fqrn, refs, now)

        manifest = Manifest(
            root_catalog=root.content_hash,
            root_path_md5=EMPTY_PATH_MD5,
            ttl=ttl,
            revision=revision,
            root_catalog_size=root.size,
            garbage_collectable=False,
            alt_paths=False,
            fqrn=fqrn,
            certificate=cert_hash,
            history=history_hash,
            timestamp=now,
            metainfo=meta_hash,
            reflog=ContentHash.of(hash_algorithm, reflog),
        )
        signed = sign_manifest(render_manifest(manifest), keys.repository_key, hash_algorithm)
        verify_manifest_signature(signed, keys.certificate, "new .cvmfspublished")  # never publish a bad one

        _ensure_whitelist(
            stratum0, fqrn, keys, hash_algorithm, datetime.fromtimestamp(now, UTC), whitelist_days
        )
        if not (stratum0 / ".cvmfs_master_replica").exists():
            _atomic_write(stratum0, ".cvmfs_master_replica", MASTER_REPLICA_TEXT)
        _atomic_write(stratum0, ".cvmfsreflog", reflog)
        _atomic_write(stratum0, ".cvmfspublished", signed)  # last: the revision becomes visible

    log.info(
        "%s: revision %d, root catalog %s, %d objects written, %d reused",
        fqrn,
        revision,
        root.content_hash,
        objects.written,
        objects.reused,
    )
    return PublishResult(revision, root.content_hash, objects.written, objects.reused, manifest)
