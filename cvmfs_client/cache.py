"""Shared node cache: verified, decoded objects as plain files for every job on a node.

Keeps the simple object store's ``get`` / ``path_for`` /
``temporary`` / ``directory`` interface, for a directory that many processes (jobs) on one node
use at once, with no daemon. What it relies on, and why:

Layout (the real client's POSIX cache, spec 7.9): ``<dir>/XX/rest`` named by the hex id without
the type char, content **decompressed** and verified before it gets that name; ``txn/`` downloads
in flight; ``quarantaine/`` (the real spelling) objects that failed :meth:`NodeCache.fsck`;
``assembled/XX/rest`` files built by :meth:`NodeCache.get_derived` (chunked files); ``locks/``
lock files; ``index/`` the diskcache index.

Crash safety: a file reaches a final name only by ``rename`` after verification and ``fsync``, so
``kill -9`` at any moment leaves at worst a stray ``txn/`` file, or a final file the index does not
know yet (adopted on the next hit or by a rescan). Every ``txn/`` file is ``flock``-ed by its writer
for its whole life; the kernel drops that lock when the writer dies, so "unlocked and (owner pid
dead or older than TXN_GRACE_SECONDS)" identifies garbage without trusting pids alone (pids are
recycled and differ across pid namespaces of containers).

One download per object across threads and processes: an exclusive ``flock`` on
``locks/XX/rest.lock`` (locks on separately opened descriptors exclude threads of one process
too); after acquiring it the file is checked again, so waiters end as hits. Hits take the same lock
shared for the few microseconds of the index update, which is what lets eviction (exclusive,
non-blocking) and hits never interleave. Lock files are removed with their object by the holder of
the exclusive lock; every locker re-checks after ``flock`` that the path still names the inode it
locked, so removing lock files is safe.

The index (diskcache, node-local disk only: SQLite locking is unreliable on NFS/GPFS/Lustre, so a
cache directory on such a file system is refused) is advisory: it holds size, kind, LRU sequence
and the decoded sha256 of each object, the byte total, pins and hit/miss counters. Files are the
truth: objects work without the index, a lost or corrupt index is rebuilt by scanning, and every
index failure is logged and tolerated. The quota (``CVMFS_QUOTA_LIMIT``) is enforced as the real
client does: when an insert pushes the total over the limit, least recently used unpinned objects
are removed down to half the limit, under a cache-wide ``flock`` so that concurrent inserters do
not evict twice. Removing a file a job has open is harmless on POSIX: the inode lives until the
last descriptor closes.

Lock order: object locks may be held while waiting for the cache-wide lock (a chunk fetched
inside ``get_derived`` may trigger eviction), but the cache-wide lock's holder only try-locks
objects (busy ones are skipped), so there is no cycle. Multi-user nodes need a shared group and
umask 002 on the cache directory; lock files are opened read-only so any reader can lock them.

Alien tier (``CVMFS_ALIEN_CACHE``): see :class:`AlienCache`. Unlike the real client (where an
alien cache replaces the local one and requires an unmanaged quota), it is a second tier behind
the quota-managed node cache. A hit there is returned **in place**
(the alien path, read-only) rather than copied: the tier exists so that many nodes share one copy
of a large software stack instead of filling small node-local disks (often RAM-backed ``/tmp`` on
HPC nodes), cluster file systems are built for many concurrent readers, and the real client reads
alien-cache objects in place as well. Such a path is not quota-accounted and is not re-verified on
each use (the alien tier stores decoded content, which cannot be checked against the content hash
without re-compressing); it was verified by whichever node published it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import sqlite3
import stat as stat_mode
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple, ParamSpec, Protocol, TypeVar

import diskcache

from .errors import ConfigError, CvmfsError, FetchError, FormatError
from .hashing import ContentHash, ObjectType
from .objects import Compression, ObjectDecoder

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")

# An unlocked txn file whose owner still seems alive is garbage after this long: the only
# legitimate unlocked moments are microseconds after mkstemp and the gap between a
# ``temporary()`` caller closing its file and renaming it.
TXN_GRACE_SECONDS = 600.0
# An alien txn file belongs to some node we cannot ask about; one day is far beyond any copy.
ALIEN_TXN_GRACE_SECONDS = 86400.0
# A hit rewrites an object's LRU position only once it has drifted out of the newest 1/N of the
# cache (by access sequence). A SQLite write per hit would serialize every job of the node on the
# index; two reads do not. Eviction keeps the newest half, so the newest 1/8 is never at risk
# unless object sizes are very skewed. (A time-based throttle is not safe: during a cold start
# more than half the quota can be inserted within seconds, evicting a "recently" used object.)
LRU_SLACK_FRACTION = 8
# Hit/miss counters are batched in memory and written every this many events or seconds.
_COUNTS_FLUSH_EVENTS = 256
_COUNTS_FLUSH_SECONDS = 2.0
_READ_PIECE = 1 << 20
# NodeCache.open: a file evicted between download and open this often means the cache thrashes.
_OPEN_ATTEMPTS = 3
# CVMFS_QUOTA_LIMIT is in MB meaning MiB (the real client multiplies by 1024 * 1024).
_MB = 1024 * 1024

# File systems on which SQLite/flock are unsafe: the node-local index must not live there.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "fuse.ceph",
        "fuse.cephfs",
        "glusterfs",
        "fuse.glusterfs",
        "beegfs",
        "panfs",
        "afs",
        "fuse.sshfs",
    }
)

_OBJECT_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{38}(?:-rmd160|-shake128)?")
_DERIVED_KEY = re.compile(r"[0-9A-Za-z_-]{3,200}")
_DERIVED_NAME = re.compile(r"assembled/[0-9A-Za-z_-]{2}/[0-9A-Za-z_-]+")
_DERIVED_KIND = "derived"
_UNKNOWN_KIND = "?"

# Index keys. Text keys are stored natively by diskcache and SQLite sorts them, so iterkeys()
# walks "a:<seq>:<name>" in LRU order without loading every record.
_LRU = "a:"
_OBJ = "o:"
_SEQ = "c:seq"
_TOTAL = "c:total"
_COUNT = "c:count"
_BUILT = "c:built"
_PINS = "p:pins"
_COUNTERS = ("hits", "misses", "alien_hits")
_INDEX_SETTINGS = {
    "eviction_policy": "none",  # the cache evicts object files itself; diskcache must never cull
    "statistics": 0,
    "sqlite_synchronous": 1,  # NORMAL with WAL: crash-safe, no fsync per commit (index is advisory)
}
_INDEX_TIMEOUT = 60.0
_INDEX_ERRORS = (sqlite3.Error, diskcache.Timeout, OSError)


class ObjectFetcher(Protocol):
    """What :meth:`NodeCache.get` needs from a source (``fetch.ObjectSource`` fits)."""

    def fetch(self, name: str, consume: Callable[[Iterator[bytes], str], T]) -> T: ...


@dataclass(frozen=True)
class CacheStats:
    """What ``cvmfs-client cache stat`` prints; counts come from the (advisory) index."""

    size_bytes: int
    quota_bytes: int | None
    objects: int
    pinned: int
    hits: int
    misses: int
    alien_hits: int


@dataclass
class FsckReport:
    """Outcome of :meth:`NodeCache.fsck`; ``removed`` lists (name, reason) of quarantined files."""

    checked: int = 0
    removed: list[tuple[str, str]] = field(default_factory=list)
    adopted: int = 0
    index_dropped: int = 0
    stray_txn_removed: int = 0

    @property
    def clean(self) -> bool:
        return not self.removed


def quota_bytes_from_limit(limit_mb: int | None) -> int | None:
    """``CVMFS_QUOTA_LIMIT`` (MB, <= 0 = unmanaged) as the ``quota_bytes`` of :class:`NodeCache`."""
    if limit_mb is None or limit_mb <= 0:
        return None
    return limit_mb * _MB


# -- small OS helpers ---------------------------------------------------------------------------


def _process_start(pid: int) -> int | None:
    """Start time of ``pid`` (``/proc/<pid>/stat`` field 22), or None if it is gone or a zombie.

    Pins record it next to the pid so a recycled pid cannot keep a dead job's pins alive.
    """
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    except OSError:  # no procfs: fall back to existence only
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0
        return 0
    fields = data.rsplit(b")", 1)[-1].split()  # the command name may contain spaces and ')'
    if not fields or fields[0] == b"Z":  # killed but not reaped yet: dead for our purposes
        return None
    return int(fields[19])  # fields[0] is field 3 (state), so field 22 is fields[19]


def _pid_alive(pid: int) -> bool:
    return _process_start(pid) is not None


def _filesystem_type(path: Path) -> str | None:
    """File system type of the mount holding ``path`` (longest mount point prefix), if known."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    target = str(path.resolve())
    best_mount, best_type = "", None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best_mount):
            best_mount, best_type = mount, right.split()[0]
    return best_type


def _hash_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_PIECE):
            sha.update(block)
    return sha.hexdigest()


@dataclass(frozen=True, slots=True)
class Wanted:
    """One object asked of :meth:`NodeCache.get_many` / :meth:`AlienCache.fill_many`."""

    content_hash: ContentHash
    kind: ObjectType = ObjectType.FILE
    compression: Compression = Compression.ZLIB
    expected_size: int | None = None


def _make_durable(fds: Sequence[int]) -> None:
    """Flush the files behind ``fds`` to stable storage: one ``syncfs(2)`` of their file system.

    Why not one ``fsync`` per file: on ext4/XFS each one is a journal commit and a disk cache
    flush (~0.3 ms here, and a round trip to the server on NFS/GPFS/Lustre), which dominates
    writing a small object. ``syncfs`` commits once for the whole batch. It also flushes other
    processes' dirty data on that file system, which can make it slower on a busy disk, but
    never less safe. Falls back to ``fsync`` per file where ``syncfs`` is unavailable.
    """
    if not fds:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fds[0]) == 0:
            return
        log.debug("syncfs failed (%s); falling back to fsync", os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError):
        pass
    for fd in fds:
        os.fsync(fd)


@contextlib.contextmanager
def _flocked(path: Path, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
    """Hold ``flock`` on the lock file ``path``; yields False if non-blocking and busy.

    The lock file may be unlinked (with its object) by another holder between our ``open`` and
    our ``flock``: we would then hold a lock on an orphan inode nobody else can find. So after
    locking, the path must still name the locked inode, otherwise start over.
    """
    op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
    while True:
        try:
            # O_RDONLY is enough for flock and works for users who cannot write the file.
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, op)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:
            now = os.stat(path)
            held = os.fstat(fd)
            same = (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield True
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


# -- the advisory index -------------------------------------------------------------------------


class _Record(NamedTuple):
    size: int
    kind: str
    sha256: str | None
    seq: int


def _lru_key(seq: int, name: str) -> str:
    return f"{_LRU}{seq:020d}:{name}"


def _advisory(default: R) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Index operations never fail the caller: the files are the truth, the index a hint."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except _INDEX_ERRORS as exc:
                log.warning("cache index: %s failed (%s); continuing without it", fn.__name__, exc)
                return default

        return guarded

    return wrap


class _Index:
    """Per-object records, LRU order, byte total, pins and counters in a diskcache ``Cache``.

    Every change that touches the total runs in one ``transact()`` (SQLite ``BEGIN IMMEDIATE``),
    so the total always equals the sum of the records, whatever process is killed when.
    """

    def __init__(self, directory: Path, recovery_lock: Path) -> None:
        self.directory = directory
        self._db = self._open(recovery_lock)

    def _open(self, recovery_lock: Path) -> diskcache.Cache:
        try:
            return diskcache.Cache(str(self.directory), timeout=_INDEX_TIMEOUT, **_INDEX_SETTINGS)
        except sqlite3.DatabaseError as first:
            # Only one process may move the broken index aside; the others retry after it.
            with _flocked(recovery_lock):
                try:
                    return diskcache.Cache(str(self.directory), timeout=_INDEX_TIMEOUT, **_INDEX_SETTINGS)
                except sqlite3.DatabaseError:
                    aside = self.directory.with_name(f"index.broken.{os.getpid()}.{time.time_ns()}")
                    log.warning("cache index %s is unusable (%s): rebuilding it", self.directory, first)
                    os.replace(self.directory, aside)
                    shutil.rmtree(aside, ignore_errors=True)
                    return diskcache.Cache(str(self.directory), timeout=_INDEX_TIMEOUT, **_INDEX_SETTINGS)

    def close(self) -> None:
        self._db.close()

    # records

    def _get(self, name: str) -> _Record | None:
        value = self._db.get(_OBJ + name)
        return _Record(*value) if value is not None else None

    def _drop(self, name: str) -> _Record | None:
        """Delete ``name``'s record inside the caller's transaction."""
        rec = self._get(name)
        if rec is not None:
            self._db.delete(_lru_key(rec.seq, name))
            self._db.delete(_OBJ + name)
            self._db.incr(_TOTAL, -rec.size)
            self._db.incr(_COUNT, -1)
        return rec

    def _put(self, name: str, size: int, kind: str, sha256: str | None) -> None:
        seq = self._db.incr(_SEQ)
        self._db.set(_OBJ + name, (size, kind, sha256, seq))
        self._db.set(_lru_key(seq, name), 0)
        self._db.incr(_TOTAL, size)
        self._db.incr(_COUNT, 1)

    @_advisory(None)
    def get(self, name: str) -> _Record | None:
        return self._get(name)

    @_advisory(None)
    def insert(self, name: str, size: int, kind: str, sha256: str | None) -> None:
        with self._db.transact():
            self._drop(name)
            self._put(name, size, kind, sha256)

    @_advisory(None)
    def insert_many(self, records: Sequence[tuple[str, int, str, str | None]]) -> None:
        """(name, size, kind, sha256) records in one transaction (one commit for a batch)."""
        if not records:
            return
        with self._db.transact():
            for name, _, _, _ in records:
                self._drop(name)
            # _put per record would be five counter updates each; one of each for the batch.
            first = self._db.incr(_SEQ, len(records)) - len(records) + 1
            for seq, (name, size, kind, sha256) in enumerate(records, first):
                self._db.set(_OBJ + name, (size, kind, sha256, seq))
                self._db.set(_lru_key(seq, name), 0)
            self._db.incr(_TOTAL, sum(r[1] for r in records))
            self._db.incr(_COUNT, len(records))

    @_advisory(None)
    def touch(self, name: str, size_on_disk: int) -> None:
        """Move ``name`` to the most recently used end; adopt it if it has no record.

        Skipped (reads only, no write lock) while the object is still among the newest
        1/LRU_SLACK_FRACTION of the cache.
        """
        rec = self._get(name)
        if rec is not None:
            newest = int(self._db.get(_SEQ, 0))
            if newest - rec.seq <= int(self._db.get(_COUNT, 0)) // LRU_SLACK_FRACTION:
                return
        with self._db.transact():
            rec = self._get(name)
            if rec is None:  # renamed into place by a process killed before its insert, or index lost
                self._put(name, size_on_disk, _UNKNOWN_KIND, None)
                return
            seq = self._db.incr(_SEQ)
            self._db.delete(_lru_key(rec.seq, name))
            self._db.set(_OBJ + name, tuple(rec._replace(seq=seq)))
            self._db.set(_lru_key(seq, name), 0)

    @_advisory(False)
    def adopt(self, name: str, size: int, sha256: str | None = None) -> bool:
        """Record a file found on disk; fill in a missing checksum. True if a record was created."""
        with self._db.transact():
            rec = self._get(name)
            if rec is None:
                kind = _DERIVED_KIND if name.startswith("assembled/") else _UNKNOWN_KIND
                self._put(name, size, kind, sha256)
                return True
            if sha256 is not None and rec.sha256 is None and rec.size == size:
                self._db.set(_OBJ + name, tuple(rec._replace(sha256=sha256)))
            return False

    @_advisory(None)
    def remove(self, name: str, seq: int | None = None) -> _Record | None:
        """Drop the record; with ``seq``, only if it was not touched since (None otherwise)."""
        with self._db.transact():
            rec = self._get(name)
            if rec is None or (seq is not None and rec.seq != seq):
                return None
            return self._drop(name)

    def _keys(self, prefix: str) -> Iterator[str]:
        for key in self._db.iterkeys():
            if isinstance(key, str) and key.startswith(prefix):
                yield key
            elif isinstance(key, str) and key > prefix:
                return

    def lru(self) -> Iterator[tuple[int, str]]:
        """(seq, name) from least to most recently used; stops quietly if the index fails."""
        try:
            for key in self._keys(_LRU):
                seq, name = key[len(_LRU) :].split(":", 1)
                yield int(seq), name
        except _INDEX_ERRORS as exc:
            log.warning("cache index: listing failed (%s)", exc)

    @_advisory(0)
    def total(self) -> int:
        return int(self._db.get(_TOTAL, 0))

    @_advisory(0)
    def count(self) -> int:
        return int(self._db.get(_COUNT, 0))

    @_advisory(None)
    def recount(self) -> None:
        """Make total, count and LRU keys agree with the records (after crashes or rebuilds)."""
        with self._db.transact():
            total = count = 0
            for key in list(self._keys(_OBJ)):
                name = key[len(_OBJ) :]
                rec = self._get(name)
                if rec is None:
                    continue
                total += rec.size
                count += 1
                if _lru_key(rec.seq, name) not in self._db:
                    self._db.set(_lru_key(rec.seq, name), 0)
            for key in list(self._keys(_LRU)):
                seq, name = key[len(_LRU) :].split(":", 1)
                rec = self._get(name)
                if rec is None or rec.seq != int(seq):
                    self._db.delete(key)
            self._db.set(_TOTAL, total)
            self._db.set(_COUNT, count)

    @_advisory(True)
    def built(self) -> bool:
        return bool(self._db.get(_BUILT, False))

    @_advisory(None)
    def mark_built(self) -> None:
        self._db.set(_BUILT, True)

    # counters

    @_advisory(None)
    def add_counts(self, counts: dict[str, int]) -> None:
        with self._db.transact():
            for which, n in counts.items():
                if n:
                    self._db.incr(f"c:{which}", n)

    @_advisory({})
    def counts(self) -> dict[str, int]:
        return {which: int(self._db.get(f"c:{which}", 0)) for which in _COUNTERS}

    # pins: one small dict (catalogs of mounted revisions: tens to hundreds of entries)

    @_advisory(None)
    def pin(self, name: str, pid: int, start: int) -> None:
        with self._db.transact():
            pins: dict[str, list[tuple[int, int]]] = self._db.get(_PINS, {})
            owners = pins.setdefault(name, [])
            if (pid, start) not in owners:
                owners.append((pid, start))
            self._db.set(_PINS, pins)

    @_advisory(None)
    def unpin(self, name: str, pid: int) -> None:
        with self._db.transact():
            pins: dict[str, list[tuple[int, int]]] = self._db.get(_PINS, {})
            owners = [o for o in pins.get(name, []) if o[0] != pid]
            if owners:
                pins[name] = owners
            else:
                pins.pop(name, None)
            self._db.set(_PINS, pins)

    @_advisory(frozenset())
    def pinned(self) -> frozenset[str]:
        """Names pinned by live processes; pins of dead processes are dropped on the way."""
        pins: dict[str, list[tuple[int, int]]] = self._db.get(_PINS, {})

        def live(owner: tuple[int, int]) -> bool:
            return _process_start(owner[0]) == owner[1]

        alive = {name: [o for o in owners if live(o)] for name, owners in pins.items()}
        alive = {name: owners for name, owners in alive.items() if owners}
        if alive != pins:
            with self._db.transact():  # re-read: another process may have pinned meanwhile
                current: dict[str, list[tuple[int, int]]] = self._db.get(_PINS, {})
                cleaned = {n: [o for o in ow if live(o)] for n, ow in current.items()}
                self._db.set(_PINS, {n: ow for n, ow in cleaned.items() if ow})
        return frozenset(alive)


class _Tally:
    """Hit/miss counts batched in memory (thread-safe); flushed to the index now and then."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._events = 0
        self._last = time.monotonic()

    def add(self, which: str) -> bool:
        """Count one event; True when it is time to flush."""
        with self._lock:
            self._counts[which] += 1
            self._events += 1
            return (
                self._events >= _COUNTS_FLUSH_EVENTS or time.monotonic() - self._last >= _COUNTS_FLUSH_SECONDS
            )

    def take(self) -> dict[str, int]:
        with self._lock:
            out = self._counts
            self._counts = dict.fromkeys(_COUNTERS, 0)
            self._events = 0
            self._last = time.monotonic()
            return out


def _decode_into_new_file(pieces: Iterator[bytes], url: str, w: Wanted, tmp: Path) -> tuple[int, Path]:
    """Verify and decode into the new file ``tmp``; return (open descriptor, tmp), not yet durable.

    On any error the file is removed. The caller makes it durable, renames it and closes it.
    """
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    try:
        dec = ObjectDecoder(
            w.content_hash, w.compression, functools.partial(_write_all, fd), url, w.expected_size
        )
        for piece in pieces:
            dec.feed(piece)
        dec.finish()
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return fd, tmp


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the alien (shared) tier --------------------------------------------------------------------


class AlienCache:
    """Objects on a cluster file system (``CVMFS_ALIEN_CACHE``), shared by many nodes.

    Plain decoded files named ``XX/rest`` like the node cache, written to ``txn/`` under a name
    unique across nodes (host, pid, random) and renamed into place: rename is atomic on NFS, GPFS
    and Lustre, so readers on any node see a whole file or none, and two nodes publishing the same
    object just replace identical content. No database and no ``flock``: both are unreliable on
    such file systems. Read-only unless ``writable``.
    """

    def __init__(self, directory: Path, writable: bool = False) -> None:
        self.directory = Path(directory)
        self.writable = writable
        self.txn = self.directory / "txn"
        if writable:
            self.txn.mkdir(parents=True, exist_ok=True)

    def path_for(self, content_hash: ContentHash) -> Path:
        return self.directory / content_hash.cache_name()

    def lookup(self, content_hash: ContentHash, expected_size: int | None = None) -> Path | None:
        """The object's path if present (and of the expected decoded size), else None."""
        path = self.path_for(content_hash)
        try:
            st = path.stat()
        except OSError:  # missing, or a stale NFS handle: fall back to the network
            return None
        if not stat_mode.S_ISREG(st.st_mode) or (expected_size is not None and st.st_size != expected_size):
            return None
        return path

    def publish(self, content_hash: ContentHash, verified: Path) -> Path | None:
        """Copy an already verified, decoded file into the tier; None if read-only or it failed.

        Failures are logged, never raised: the shared tier is an optimisation for other nodes.
        """
        if not self.writable:
            return None
        final = self.path_for(content_hash)
        if final.exists():
            return final
        tmp = self.txn / f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(8)}"
        try:
            with open(verified, "rb") as src, open(tmp, "xb") as out:
                shutil.copyfileobj(src, out, _READ_PIECE)
                out.flush()
                os.fsync(out.fileno())  # on NFS also forces the data to the server before the rename
                os.fchmod(out.fileno(), 0o444)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        except OSError as exc:
            log.warning("cannot publish %s to the alien cache %s: %s", content_hash.hex, self.directory, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return None
        return final

    def _txn_name(self) -> Path:
        """A temp name unique across nodes sharing the directory (host, pid, random)."""
        return self.txn / f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(8)}"

    def fill_many(self, wanted: Sequence[Wanted], source: ObjectFetcher) -> list[Path | CvmfsError | OSError]:
        """:meth:`fill` for a batch, made durable by one flush (see :func:`_make_durable`).

        Returns, per item, its path or the error that stopped it (other items go on).
        """
        if not self.writable:
            raise ConfigError(f"{self.directory}: alien cache is read-only (CVMFS_ALIEN_CACHE_WRITABLE=no)")
        results: list[Path | CvmfsError | OSError] = []
        staged: list[tuple[int, int, Path, Path]] = []  # (result index, fd, tmp, final)
        try:
            for w in wanted:
                found = self.lookup(w.content_hash, w.expected_size)
                if found is not None:
                    results.append(found)
                    continue
                final = self.path_for(w.content_hash)
                try:
                    fd, tmp = source.fetch(
                        w.content_hash.object_path(w.kind),
                        lambda pieces, url, w=w: _decode_into_new_file(pieces, url, w, self._txn_name()),
                    )
                except (CvmfsError, OSError) as exc:
                    results.append(exc)
                    continue
                staged.append((len(results), fd, tmp, final))
                results.append(final)
            _make_durable([fd for _, fd, _, _ in staged])
            while staged:
                index, fd, tmp, final = staged[0]
                try:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, final)
                except OSError as exc:
                    results[index] = exc
                    with contextlib.suppress(OSError):
                        tmp.unlink()
                os.close(fd)
                staged.pop(0)
        finally:
            for _, fd, tmp, _ in staged:  # an exception above: nothing half-done keeps a name
                os.close(fd)
                with contextlib.suppress(OSError):
                    tmp.unlink()
        return results

    def clean_stale_txn(self, max_age: float = ALIEN_TXN_GRACE_SECONDS) -> int:
        """Remove ``txn/`` files older than ``max_age``: owners on other nodes cannot be asked."""
        removed = 0
        cutoff = time.time() - max_age
        with contextlib.suppress(FileNotFoundError), os.scandir(self.txn) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
        return removed


# -- the node cache -----------------------------------------------------------------------------


class NodeCache:
    """The node's shared cache of verified, decoded objects (see the module docstring).

    ``quota_bytes`` None or <= 0 means unlimited.
    """

    def __init__(
        self,
        directory: Path,
        quota_bytes: int | None,
        alien: AlienCache | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.quota_bytes = quota_bytes if quota_bytes is not None and quota_bytes > 0 else None
        self.alien = alien
        self.txn = self.directory / "txn"
        self.quarantine = self.directory / "quarantaine"
        self.locks = self.directory / "locks"
        for d in (self.txn, self.quarantine, self.locks):
            d.mkdir(parents=True, exist_ok=True)
        fstype = _filesystem_type(self.directory)
        if fstype in NETWORK_FILESYSTEMS:
            raise ConfigError(
                f"{self.directory}: the node cache must be on node-local disk, not {fstype} "
                "(its index uses SQLite and flock); use CVMFS_ALIEN_CACHE for a shared tier"
            )
        # Cache-wide lock: eviction, wipe and index rebuilds exclude each other through it.
        self._evict_lock = self.locks / "evict.lock"
        self._tally = _Tally()
        self._pid = os.getpid()
        self._index = _Index(self.directory / "index", self._evict_lock)
        if not self._index.built():  # a new cache, or the index was lost or corrupt
            self._rebuild(only_if_needed=True)
        self._clean_txn()

    # -- the object store interface ------------------------------------------------------

    def path_for(self, content_hash: ContentHash) -> Path:
        return self.directory / content_hash.cache_name()

    def temporary(self, prefix: str) -> tuple[int, str]:
        """A temp file in ``txn/`` (same file system, so rename is atomic), flock-ed as "alive".

        The pid in the name is for diagnostics and the cleaner's grace rule; the lock is what
        tells the cleaner the owner is alive (it vanishes when the process dies).
        """
        fd, path = tempfile.mkstemp(dir=self.txn, prefix=f"{os.getpid()}.{prefix}")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fresh inode: cannot be busy
        return fd, path

    def get(
        self,
        content_hash: ContentHash,
        source: ObjectFetcher,
        kind: ObjectType = ObjectType.FILE,
        compression: Compression = Compression.ZLIB,
        expected_size: int | None = None,
    ) -> Path:
        """Local path of the verified, decoded object, downloading it first if needed.

        Order: node cache, alien tier (returned in place), network. Raises what the source
        raises (``HashMismatch``, ``CorruptObject``, ``FetchError``); nothing unverified is kept.
        Open the path promptly: the object is at the most recently used end now, but a later
        eviction removes the name (an open descriptor keeps working).
        """
        self._check_fork()
        name = content_hash.cache_name()
        final = self.directory / name
        if self._hit(name, final):
            return final
        if self.alien is not None:
            found = self.alien.lookup(content_hash, expected_size)
            if found is not None:
                self._count("alien_hits")
                return found
        # Exclusive per-object lock: one download per object on the node; others wait here.
        with _flocked(self._lock_path(name)):
            if final.exists():  # fetched by whoever held the lock before us: a hit
                self._touch(name, final.stat().st_size)
                self._count("hits")
                return final
            self._count("misses")
            size, digest = source.fetch(
                content_hash.object_path(kind),
                lambda pieces, url: self._write_verified(
                    pieces, url, content_hash, compression, expected_size, final
                ),
            )
            self._index.insert(name, size, kind.value, digest)
        # Outside the object lock, so hits of the new object do not wait for publishing or an
        # eviction pass. (Waiting for the cache-wide lock while holding object locks would still
        # be deadlock-free: its holder only ever try-locks objects.)
        if self.alien is not None and self.alien.writable:
            self.alien.publish(content_hash, final)
        self._maybe_evict(protect=name)
        return final

    def open(
        self,
        content_hash: ContentHash,
        source: ObjectFetcher,
        kind: ObjectType = ObjectType.FILE,
        compression: Compression = Compression.ZLIB,
        expected_size: int | None = None,
    ) -> BinaryIO:
        """The verified object opened for reading: :meth:`get` without its eviction window.

        A path from ``get`` can in principle be evicted before the caller opens it (it takes more
        than half the quota of newer accesses in between: a cache far too small for its working
        set). Here a vanished file is simply fetched again; once open, eviction cannot hurt it.
        """
        attempts = []
        for _ in range(_OPEN_ATTEMPTS):
            path = self.get(content_hash, source, kind, compression, expected_size)
            try:
                return open(path, "rb")
            except FileNotFoundError:
                attempts.append(f"{path}: evicted before it could be opened")
        raise FetchError(
            content_hash.object_path(kind), attempts + ["cache quota too small for the working set"]
        )

    def get_many(self, wanted: Sequence[Wanted], source: ObjectFetcher) -> list[Path | CvmfsError | OSError]:
        """:meth:`get` for a batch of objects (pre-warming); per item its path or its error.

        The same guarantees at a lower cost per object: downloads of the batch are verified into
        ``txn/`` files, made durable together by one flush (:func:`_make_durable`) instead of an
        ``fsync`` each, renamed, and recorded in one index transaction instead of one each.
        Locks: each object's lock is only *tried*; an object another process is downloading
        right now is fetched afterwards with :meth:`get`, once this batch holds no lock, so a
        batch never waits for a lock while holding others (two batches cannot deadlock).
        """
        self._check_fork()
        results: list[Path | CvmfsError | OSError | None] = [None] * len(wanted)
        later: list[int] = []
        staged: list[tuple[int, str, int, str, int, str]] = []  # (index, name, fd, tmp, size, sha256)
        with contextlib.ExitStack() as held_locks:
            try:
                for i, w in enumerate(wanted):
                    name = w.content_hash.cache_name()
                    final = self.directory / name
                    if self._hit(name, final):
                        results[i] = final
                        continue
                    if self.alien is not None:
                        found = self.alien.lookup(w.content_hash, w.expected_size)
                        if found is not None:
                            self._count("alien_hits")
                            results[i] = found
                            continue
                    if not held_locks.enter_context(_flocked(self._lock_path(name), blocking=False)):
                        later.append(i)
                        continue
                    if final.exists():  # fetched by whoever held the lock just before us
                        self._touch(name, final.stat().st_size)
                        self._count("hits")
                        results[i] = final
                        continue
                    self._count("misses")
                    try:
                        fd, tmp, size, digest = source.fetch(
                            w.content_hash.object_path(w.kind),
                            lambda pieces, url, w=w: self._write_unsynced(pieces, url, w),
                        )
                    except (CvmfsError, OSError) as exc:
                        results[i] = exc
                        continue
                    staged.append((i, name, fd, tmp, size, digest))
                _make_durable([fd for _, _, fd, _, _, _ in staged])
                records = []
                while staged:
                    i, name, fd, tmp, size, digest = staged[0]
                    final = self.directory / name
                    try:
                        final.parent.mkdir(exist_ok=True)
                        os.replace(tmp, final)  # still holding the txn and object locks
                        results[i] = final
                        records.append((name, size, wanted[i].kind.value, digest))
                    except OSError as exc:
                        results[i] = exc
                        Path(tmp).unlink(missing_ok=True)
                    os.close(fd)
                    staged.pop(0)
                self._index.insert_many(records)
            finally:
                for _, _, fd, tmp, _, _ in staged:  # an exception above: no half-done object keeps a name
                    os.close(fd)
                    Path(tmp).unlink(missing_ok=True)
        for i in later:
            w = wanted[i]
            try:
                results[i] = self.get(w.content_hash, source, w.kind, w.compression, w.expected_size)
            except (CvmfsError, OSError) as exc:
                results[i] = exc
        if self.alien is not None and self.alien.writable:
            for w, r in zip(wanted, results, strict=True):
                if isinstance(r, Path) and r.parent.parent == self.directory:
                    self.alien.publish(w.content_hash, r)
        self._maybe_evict(protect="")
        done = [r for r in results if r is not None]
        assert len(done) == len(wanted)  # every item got a path or an error above
        return done

    def _write_unsynced(self, pieces: Iterator[bytes], url: str, w: Wanted) -> tuple[int, str, int, str]:
        """Verify and decode into a new ``txn/`` file; return (fd, tmp, size, sha256), fd still open.

        The open descriptor keeps the txn flock (the cleaner's "writer alive" sign) until the
        caller has made the file durable and renamed it; on any error the file is removed.
        """
        fd, tmp = self.temporary(w.content_hash.hex[:12] + ".")
        sha = hashlib.sha256()
        try:

            def sink(data: bytes) -> None:
                sha.update(data)
                _write_all(fd, data)

            dec = ObjectDecoder(w.content_hash, w.compression, sink, url, w.expected_size)
            for piece in pieces:
                dec.feed(piece)
            size = dec.finish()
            os.fchmod(fd, 0o444)
        except BaseException:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
        return fd, tmp, size, sha.hexdigest()

    # -- derived files ------------------------------------------------------------------

    def get_derived(self, key: str, build: Callable[[BinaryIO], None]) -> Path:
        """``assembled/XX/rest`` for ``key``, built once by ``build(file)`` and quota-accounted.

        ``key`` must identify the content (e.g. a hash of the chunk list); ``build`` writes the
        whole content into the given file. Built under the key's lock, renamed atomically; if
        ``build`` raises, nothing is kept.
        """
        self._check_fork()
        if not _DERIVED_KEY.fullmatch(key):
            raise FormatError("derived cache key", f"{key!r} is not 3-200 characters of [0-9A-Za-z_-]")
        name = f"assembled/{key[:2]}/{key[2:]}"
        final = self.directory / name
        if self._hit(name, final):
            return final
        with _flocked(self._lock_path(name)):
            if final.exists():
                self._touch(name, final.stat().st_size)
                self._count("hits")
                return final
            self._count("misses")
            fd, tmp = self.temporary("derived.")
            try:
                with os.fdopen(fd, "w+b") as out:
                    build(out)
                    out.flush()
                    os.fsync(out.fileno())
                    out.seek(0)
                    sha = hashlib.sha256()
                    size = 0
                    while block := out.read(_READ_PIECE):  # in the page cache: cheap next to building
                        sha.update(block)
                        size += len(block)
                    os.fchmod(out.fileno(), 0o444)
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, final)  # still holding the txn lock
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._index.insert(name, size, _DERIVED_KIND, sha.hexdigest())
        self._maybe_evict(protect=name)
        return final

    # -- pins ---------------------------------------------------------------------------

    def pin(self, content_hash: ContentHash, owner_pid: int | None = None) -> None:
        """Keep the object from eviction while ``owner_pid`` (default: this process) lives.

        The default is resolved at call time, not at import, so a forked child pins as itself.
        """
        pid = os.getpid() if owner_pid is None else owner_pid
        start = _process_start(pid)
        if start is None:
            log.debug("not pinning %s for pid %d: no such process", content_hash.hex, pid)
            return
        self._index.pin(content_hash.cache_name(), pid, start)

    def unpin(self, content_hash: ContentHash, owner_pid: int | None = None) -> None:
        pid = os.getpid() if owner_pid is None else owner_pid
        self._index.unpin(content_hash.cache_name(), pid)

    # -- maintenance --------------------------------------------------------------------

    def stat(self) -> CacheStats:
        """Size, quota, objects and counters from the index (advisory; ``fsck`` reconciles it).

        Counters are batched per process and written every few seconds or hundred events and
        on ``close()``: counts of a process killed since its last flush are lost.
        """
        self._check_fork()
        self._flush_counts()
        counts = self._index.counts()
        return CacheStats(
            size_bytes=self._index.total(),
            quota_bytes=self.quota_bytes,
            objects=self._index.count(),
            pinned=len(self._index.pinned()),
            hits=counts.get("hits", 0),
            misses=counts.get("misses", 0),
            alien_hits=counts.get("alien_hits", 0),
        )

    def fsck(self, progress: Callable[[int, int], None] | None = None) -> FsckReport:
        """Re-verify every object; quarantine bad ones; clean ``txn/``; reconcile the index.

        An object with a recorded sha256 (of the decoded content, taken when it was verified at
        insert) is checked against it. One without (adopted after a crash or an index loss) is
        checked against its name: the raw content hashed (``Compression.NONE`` objects), or the
        content re-compressed with zlib at the default level and hashed (how publishers store
        it); either match is accepted and its sha256 recorded. zlib output is not guaranteed
        identical across zlib builds (spec 4.2), so a mismatch there may be a false alarm: it is
        still removed, because a wrongly removed object costs one download and a wrongly kept one
        serves bad data. Derived files without a record cannot be checked and are removed too.
        """
        self._check_fork()
        report = FsckReport(stray_txn_removed=self._clean_txn())
        names = list(self._scan())
        for i, name in enumerate(names, 1):
            self._fsck_one(name, report)
            if progress is not None:
                progress(i, len(names))
        report.index_dropped = self._drop_orphan_records()
        self._index.recount()
        self._maybe_evict(protect="")  # adopted files may have pushed the total over the quota
        return report

    def rebuild_index(self) -> None:
        """Make the index match the files: adopt unknown files, drop records without a file."""
        self._rebuild(only_if_needed=False)

    def _rebuild(self, only_if_needed: bool) -> None:
        with _flocked(self._evict_lock):  # one rebuilder at a time, and no eviction meanwhile
            if only_if_needed and self._index.built():  # another process rebuilt while we waited
                return
            for name in self._scan():
                # Shared try-lock: skip objects being removed right now (their owner updates the index).
                with _flocked(self._lock_path(name), shared=True, blocking=False) as held:
                    if held:
                        with contextlib.suppress(FileNotFoundError):
                            self._index.adopt(name, (self.directory / name).stat().st_size)
            self._drop_orphan_records()
            self._index.recount()
            self._index.mark_built()
        self._maybe_evict(protect="")

    def wipe(self) -> int:
        """Remove every object, pinned or not, as ``cvmfs_config wipecache``; return the count.

        Runs under the eviction lock and try-locks each object: one being downloaded or read
        right now is skipped (its download completes normally). Open descriptors keep working.
        """
        self._check_fork()
        removed = 0
        with _flocked(self._evict_lock):
            for name in list(self._scan()):
                if self._remove_object(name) is not None:
                    removed += 1
            self._drop_orphan_records()
            self._index.recount()
            with contextlib.suppress(FileNotFoundError), os.scandir(self.quarantine) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
        self._clean_txn()
        return removed

    def close(self) -> None:
        self._check_fork()
        self._flush_counts()
        self._index.close()

    def __enter__(self) -> NodeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _lock_path(self, name: str) -> Path:
        return self.locks / f"{name}.lock"

    def _check_fork(self) -> None:
        """A forked child must not flush the parent's pending counts (diskcache reconnects itself)."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._tally = _Tally()

    def _hit(self, name: str, final: Path) -> bool:
        if not final.exists():  # plain stat first: a miss takes no lock here
            return False
        # Shared lock: excludes an evictor/fsck removing it while we record the hit.
        with _flocked(self._lock_path(name), shared=True):
            try:
                size = final.stat().st_size
            except FileNotFoundError:  # evicted between the stat and the lock
                return False
            self._touch(name, size)
        self._count("hits")
        return True

    def _touch(self, name: str, size: int) -> None:
        self._index.touch(name, size)

    def _count(self, which: str) -> None:
        if self._tally.add(which):
            self._flush_counts()

    def _flush_counts(self) -> None:
        counts = self._tally.take()
        if any(counts.values()):
            self._index.add_counts(counts)

    def _write_verified(
        self,
        pieces: Iterator[bytes],
        url: str,
        content_hash: ContentHash,
        compression: Compression,
        expected_size: int | None,
        final: Path,
    ) -> tuple[int, str]:
        """Verify and decode into ``txn/``, then rename to ``final``; return (size, sha256).

        Called once per attempt by the source (a rejected attempt leaves nothing behind).
        """
        fd, tmp = self.temporary(content_hash.hex[:12] + ".")
        sha = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:

                def sink(data: bytes) -> None:
                    sha.update(data)
                    out.write(data)

                dec = ObjectDecoder(content_hash, compression, sink, url, expected_size)
                for piece in pieces:
                    dec.feed(piece)
                size = dec.finish()
                out.flush()
                # Durable before visible: otherwise a power cut can leave an empty or short file
                # under a final name, which every later reader would trust.
                os.fsync(out.fileno())
                os.fchmod(out.fileno(), 0o444)
                final.parent.mkdir(exist_ok=True)
                # Renamed while our txn flock is still held: the cleaner never sees it unlocked.
                os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size, sha.hexdigest()

    def _maybe_evict(self, protect: str) -> None:
        if self.quota_bytes is None or self._index.total() <= self.quota_bytes:
            return
        self._evict(self.quota_bytes, self.quota_bytes // 2, protect)

    def _evict(self, threshold: int, target: int, protect: str) -> None:
        """Remove LRU unpinned objects until the total is <= ``target`` (real client: limit/2)."""
        with _flocked(self._evict_lock):
            total = self._index.total()
            if total <= threshold:  # someone evicted while we waited for the lock
                return
            pinned = self._index.pinned()
            for seq, name in self._index.lru():
                if total <= target:
                    break
                if name in pinned or name == protect:
                    continue
                removed = self._remove_object(name, seq)
                if removed:
                    total -= removed
            if total > threshold:
                log.warning(
                    "cache %s stays over its quota (%d > %d bytes): the rest is pinned or in use",
                    self.directory,
                    total,
                    threshold,
                )

    def _remove_object(self, name: str, seq: int | None = None) -> int | None:
        """Remove one object and its record; None if it is busy (or, with ``seq``, touched since).

        Returns the recorded size (0 if it had no record). Try-lock only: the caller may hold the
        cache-wide lock, and object-lock holders may be waiting for it.
        """
        lock = self._lock_path(name)
        with _flocked(lock, blocking=False) as held:
            if not held:
                return None
            rec = self._index.remove(name, seq)
            if rec is None and seq is not None:
                return None  # touched after we listed it: recently used after all
            # Unlink is safe for jobs that have it open: the inode lives until they close it.
            (self.directory / name).unlink(missing_ok=True)
            lock.unlink(missing_ok=True)  # while held: lockers re-check the inode and retry
            return rec.size if rec is not None else 0

    def _drop_orphan_records(self) -> int:
        """Remove index records whose file is gone (deleted by hand, or a crash mid-eviction)."""
        dropped = 0
        for _seq, name in list(self._index.lru()):
            if (self.directory / name).exists():
                continue
            with _flocked(self._lock_path(name), blocking=False) as held:
                if held and not (self.directory / name).exists() and self._index.remove(name):
                    dropped += 1
        return dropped

    def _scan(self) -> Iterator[str]:
        """Names of all object and derived files present (other files are left alone)."""
        for top, pattern in ((self.directory, _OBJECT_NAME), (self.directory / "assembled", _DERIVED_NAME)):
            prefix = "" if top == self.directory else "assembled/"
            try:
                subdirs = sorted(os.listdir(top))
            except FileNotFoundError:
                continue
            for sub in subdirs:
                if len(sub) != 2:
                    continue
                with contextlib.suppress(NotADirectoryError, FileNotFoundError), os.scandir(top / sub) as it:
                    for entry in it:
                        name = f"{prefix}{sub}/{entry.name}"
                        if pattern.fullmatch(name) and entry.is_file(follow_symlinks=False):
                            yield name

    def _fsck_one(self, name: str, report: FsckReport) -> None:
        path = self.directory / name
        lock = self._lock_path(name)
        # Shared: concurrent hits continue; removal and replacement wait until we have looked.
        with _flocked(lock, shared=True):
            try:
                st = path.stat()
            except FileNotFoundError:
                return
            rec = self._index.get(name)
            problem, digest = self._verify(name, path, rec, st.st_size)
        report.checked += 1
        if problem is None:
            if (rec is None or rec.sha256 is None) and self._index.adopt(name, st.st_size, digest):
                report.adopted += 1
            return
        # flock cannot be upgraded atomically: take it exclusively and make sure the file we
        # judged is still the one under that name.
        with _flocked(lock):
            try:
                now = path.stat()
            except FileNotFoundError:
                return
            if (now.st_ino, now.st_mtime_ns) != (st.st_ino, st.st_mtime_ns):
                return
            dest = self.quarantine / f"{name.replace('/', '_')}.{time.time_ns()}"
            os.replace(path, dest)
            self._index.remove(name)
            lock.unlink(missing_ok=True)
        log.warning("cache fsck: %s quarantined: %s", name, problem)
        report.removed.append((name, problem))

    def _verify(self, name: str, path: Path, rec: _Record | None, size: int) -> tuple[str | None, str]:
        """(problem or None, sha256 of the file) — see :meth:`fsck` for the rules."""
        if rec is not None and rec.size != size:
            return f"size is {size} bytes, {rec.size} were recorded", ""
        if rec is not None and rec.sha256 is not None:
            digest = _hash_file(path)
            if digest != rec.sha256:
                return "content changed since it was verified (sha256 mismatch)", digest
            return None, digest
        if name.startswith("assembled/"):
            return "derived file without a recorded checksum cannot be verified", ""
        expected = ContentHash.from_hex(name.replace("/", "", 1), str(path))
        sha = hashlib.sha256()
        raw = expected.algorithm.new()
        zipped = expected.algorithm.new()
        deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION)  # = objects.encode (zlib.compress)
        with open(path, "rb") as f:
            while block := f.read(_READ_PIECE):
                sha.update(block)
                raw.update(block)
                zipped.update(deflate.compress(block))
        zipped.update(deflate.flush())
        if expected in (raw.content_hash(), zipped.content_hash()):
            return None, sha.hexdigest()
        return "content matches its name neither raw nor re-compressed with zlib", sha.hexdigest()

    def _clean_txn(self) -> int:
        """Remove ``txn/`` files whose writer is gone; return how many.

        Garbage = nobody holds its flock (the writer locks it for its whole life and the kernel
        releases that at death) AND (its pid is dead OR it is older than TXN_GRACE_SECONDS).
        The pid rule alone would be wrong across pid namespaces and after pid reuse.
        """
        removed = 0
        cutoff = time.time() - TXN_GRACE_SECONDS
        try:
            entries = list(os.scandir(self.txn))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:  # renamed into place or removed meanwhile
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer
                owner = entry.name.split(".", 1)[0]
                dead = not owner.isdigit() or not _pid_alive(int(owner))
                if dead or os.fstat(fd).st_mtime < cutoff:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
            finally:
                os.close(fd)
        return removed
