"""Shared node cache: verified, decoded objects as plain files for every job on a node.

Keeps the simple object store's ``get`` / ``path_for`` /
``temporary`` / ``directory`` interface, for a directory that many processes (jobs) on one node
use at once, with no daemon. What it relies on, and why:

Layout (the real client's POSIX cache, spec 7.9): ``<dir>/XX/rest`` named by the hex id without
the type char, content **decompressed** and verified before it gets that name; ``txn/`` downloads
in flight; ``quarantaine/`` (the real spelling) objects that failed a check; ``assembled/XX/rest``
files built by :meth:`NodeCache.get_derived` (chunked files); ``locks/`` the lock files;
``index/`` the diskcache index.

Crash safety: a file gets its final name only after it was written completely and verified: it
is written as an anonymous file (``O_TMPFILE``, which the kernel frees if its writer dies) and
linked into place, or, where the file system lacks that, written under a ``txn/`` name and
renamed. So ``kill -9`` at any moment leaves at worst a final file the index does not know yet
(adopted on the next hit or by a rescan), or a stray ``txn/`` file: every named ``txn/`` file is
``flock``-ed by its writer for its whole life; the kernel drops that lock when the writer dies,
so "unlocked and (owner pid dead or older than TXN_GRACE_SECONDS)" identifies garbage without
trusting pids alone (pids are recycled and differ across pid namespaces of containers).

Durability: objects are not ``fsync``-ed, as in the real client (``PosixCacheManager::CommitTxn``
writes, closes and renames). A process crash cannot expose partial data (the page cache outlives
the process); what a power cut or kernel crash can do is bring a recently linked file back empty
or short (ext4 with delayed allocation, XFS and btrfs commit a file's size with or after its
data, never garbage under the right size). So every use checks the size, for free (the ``stat``
is needed anyway): against the catalog's size when the caller knows it and against the index
record; a file without a record and without an expected size is verified by its name before it
is adopted. A failed check quarantines the file and fetches it again. The cost that was avoided:
an ``fsync`` per object is a disk flush (a journal commit) that dominates writing a small object;
even one ``syncfs`` per batch of 32 made pre-warming wait on the disk. File systems that do not
order data before size (ext4 ``data=writeback`` or without a journal) need ``cache fsck`` after a
crash, as they need ``e2fsck``.

One download per object across threads and processes: an exclusive lock per object (see
:class:`_ObjectLocks`: byte-range locks in one lock file, so no lock file per object); after
acquiring it the file is checked again, so waiters end as hits. Hits take the same lock shared for
the few microseconds of the index update, which is what lets eviction (exclusive, non-blocking)
and hits never interleave.

The index (diskcache, node-local disk only: SQLite locking is unreliable on NFS/GPFS/Lustre, so a
cache directory on such a file system is refused) is advisory: it holds size, kind, LRU sequence
and a checksum of each decoded object, the byte total, pins and hit/miss counters. Files are the
truth: objects work without the index, a lost or corrupt index is rebuilt by scanning, and every
index failure is logged and tolerated. The quota (``CVMFS_QUOTA_LIMIT``) is enforced as the real
client does: when an insert pushes the total over the limit, least recently used unpinned objects
are removed down to half the limit, under a cache-wide ``flock`` so that concurrent inserters do
not evict twice. Removing a file a job has open is harmless on POSIX: the inode lives until the
last descriptor closes.

Lock order: object locks may be held while waiting for the cache-wide lock (a chunk fetched
inside ``get_derived`` may trigger eviction), but the cache-wide lock's holder only try-locks
objects (busy ones are skipped), so there is no cycle. Multi-user nodes need a shared group and
umask 002 on the cache directory (downloaders take exclusive locks, which need write access to
the lock file); readers only take shared locks, which need read access.

Index records of objects fetched one by one (:meth:`NodeCache.get`, the cold-read path) are
written in batches (:class:`_Pending`), as the real client's quota manager commits its
commands in bunches: until then another process that finds such an object adopts it after the
size check, and a process killed with records pending leaves objects that are adopted when next
used (or by ``cache fsck``), so the quota total can lag by that many objects meanwhile.

Alien tier (``CVMFS_ALIEN_CACHE``): see :class:`AlienCache`. Unlike the real client (where an
alien cache replaces the local one and requires an unmanaged quota), it is a second tier behind
the quota-managed node cache. A hit there is returned **in place**
(the alien path, read-only) rather than copied: the tier exists so that many nodes share one copy
of a large software stack instead of filling small node-local disks (often RAM-backed ``/tmp`` on
HPC nodes), cluster file systems are built for many concurrent readers, and the real client reads
alien-cache objects in place as well. Such a path is not quota-accounted and is not re-verified on
each use (the alien tier stores decoded content, which cannot be checked against the content hash
without re-compressing); it was verified by whichever node published it. Only its size is
checked against the catalog's: a crash of the publishing node can leave a short file behind.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import functools
import hashlib
import io
import logging
import os
import re
import secrets
import shutil
import socket
import sqlite3
import stat as stat_mode
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple, ParamSpec, Protocol, TypeVar

import diskcache

from .cache_links import collect, held_outside, linked_trees, note_removal
from .config_basics import NETWORK_FILESYSTEMS, foreign_directory
from .config_basics import filesystem_type as _filesystem_type
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
# Index records of objects fetched by ``get`` are written in batches of this many, or after this
# long (the real client's quota manager commits its commands in bunches of 32).
_RECORDS_BATCH = 32
_RECORDS_FLUSH_SECONDS = 1.0
_READ_PIECE = 1 << 20
# NodeCache.open: a file evicted between download and open this often means the cache thrashes.
_OPEN_ATTEMPTS = 3
# NodeCache.open hands out a just-downloaded object up to this size from memory.
KEPT_CONTENT_MAX = 64 << 10
# Objects are read-only; executable too, so that the interposer can run (execve) a program
# through a hard link to its object instead of a copy outside the quota (older caches hold
# 0444 objects; the interposer copes with both).
OBJECT_MODE = 0o555
# CVMFS_QUOTA_LIMIT is in MB meaning MiB (the real client multiplies by 1024 * 1024).
_MB = 1024 * 1024

_OBJECT_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{38}(?:-rmd160|-shake128)?")
_DERIVED_KEY = re.compile(r"[0-9A-Za-z_-]{3,200}")
_DERIVED_NAME = re.compile(r"assembled/[0-9A-Za-z_-]{2}/[0-9A-Za-z_-]+")
_DERIVED_KIND = "derived"
_UNKNOWN_KIND = "?"

# Index keys. Text keys are stored natively by diskcache and SQLite sorts them, so iterkeys()
# walks "a:<seq>" in LRU order without loading every record. One "a:<seq>" entry lists the
# names that got that access sequence number: a batch of inserts shares one (a key per object
# was half the cost of recording it). Entries are not rewritten when a name moves on (a touch,
# a removal): readers check the record's own seq, and eviction drops entries left stale.
_LRU = "a:"
_OBJ = "o:"
_SEQ = "c:seq"
_TOTAL = "c:total"
_COUNT = "c:count"
_BUILT = "c:built"
_FORMAT = "c:format"
_FORMAT_VERSION = 2  # 1 (no key): one "a:<seq>:<name>" key per object
_PINS = "p:pins"
_COUNTERS = ("hits", "misses", "alien_hits")
_INDEX_SETTINGS = {
    "eviction_policy": "none",  # the cache evicts object files itself; diskcache must never cull
    "statistics": 0,
    "sqlite_synchronous": 1,  # NORMAL with WAL: crash-safe, no fsync per commit (index is advisory)
    "cull_limit": 0,  # no expiry query on every set (nothing here expires)
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
    # Held by the interposer's trees of links besides the objects (cache_links.held_outside).
    outside_bytes: int = 0


class WipeReport(NamedTuple):
    """Outcome of :meth:`NodeCache.wipe`."""

    objects: int  # removed
    revisions_in_use: int  # shadow trees of running `cvmfs-client run` jobs, left to them


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


# Checksums of decoded files in the index, for ``cache fsck``: "adler32:<8 hex>" (the zlib
# stream's own check of the content: free when the object is inflated) or, in indexes written
# before, a bare sha256 hex digest (still honoured).
_ADLER32 = "adler32:"


def _adler32_text(value: int) -> str:
    return f"{_ADLER32}{value:08x}"


def _adler32_of(f: BinaryIO) -> tuple[int, int]:
    """(Adler-32, size) of what is left to read in ``f``."""
    adler = 1
    size = 0
    while block := f.read(_READ_PIECE):
        adler = zlib.adler32(block, adler)
        size += len(block)
    return adler, size


def _file_checksum(path: Path, like: str) -> str:
    """The checksum of the file at ``path`` in the form of the recorded ``like``."""
    with open(path, "rb") as f:
        if like.startswith(_ADLER32):
            return _adler32_text(_adler32_of(f)[0])
        sha = hashlib.sha256()
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


# ``struct flock`` on 64-bit Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid (int).
_FLOCK = struct.Struct("hhqqi4x")
# Linux's values, for Pythons built against a C library too old to name them (glibc < 2.20).
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)


class _ObjectLocks:
    """One lock per object without a file per object: byte-range locks in one lock file.

    Each name locks one byte of ``locks/objects.lock`` at an offset taken from a hash of the
    name. The locks are Linux "open file description" locks (``F_OFD_SETLK``, Linux 3.15): like
    ``flock``, they belong to the descriptor, so separately opened descriptors exclude each other
    (threads of one process included), and they vanish when the descriptor is closed or its
    process dies. Unlike per-object lock files, taking a lock creates no inode (creating a file
    costs as much as writing a small object, and there were two per object) and nothing has to
    be removed on eviction. Two names share a lock with probability 2**-62: harmless (one waits
    for the other), except that a thread holding one and taking the other would wait for itself.

    Each ``hold`` opens its own descriptor: shared locks only need read access (jobs of users
    who cannot write the cache take those), exclusive ones need write access. Kernels without
    OFD locks (before 3.15) get :class:`_LockFiles` instead (see :meth:`usable`).
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        with contextlib.suppress(PermissionError):  # a read-only user: created by a writer
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666))

    def usable(self) -> bool:
        """Whether this kernel has OFD locks (64-bit offsets assumed: 64-bit Linux)."""
        if struct.calcsize("l") != 8:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.fcntl(fd, _F_OFD_GETLK, _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 1, 0))
        except OSError:  # EINVAL: an older kernel
            return False
        finally:
            os.close(fd)
        return True

    def discard(self, name: str) -> None:
        """Nothing to remove with an object (see :class:`_LockFiles`)."""

    @staticmethod
    def offset(name: str) -> int:
        return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 2

    @contextlib.contextmanager
    def hold(self, name: str, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
        """Hold ``name``'s lock; yields False (and holds nothing) if non-blocking and busy."""
        fd = os.open(self.path, (os.O_RDONLY if shared else os.O_RDWR) | os.O_CLOEXEC)
        try:
            request = _FLOCK.pack(
                fcntl.F_RDLCK if shared else fcntl.F_WRLCK, os.SEEK_SET, self.offset(name), 1, 0
            )
            try:
                fcntl.fcntl(fd, _F_OFD_SETLKW if blocking else _F_OFD_SETLK, request)
            except OSError as exc:
                if blocking or exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing the descriptor releases its locks

    @contextlib.contextmanager
    def batch(self) -> Iterator[Callable[[str], bool]]:
        """Try-lock names exclusively through one descriptor, all released together at the end.

        One descriptor for a batch saves an ``open`` and a ``close`` per object. Locks of one
        descriptor never conflict with each other: a name tried twice is simply held.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)

        def try_lock(name: str) -> bool:
            request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, self.offset(name), 1, 0)
            try:
                fcntl.fcntl(fd, _F_OFD_SETLK, request)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return False
                raise
            return True

        try:
            yield try_lock
        finally:
            os.close(fd)


class _LockFiles:
    """:class:`_ObjectLocks` for kernels without OFD locks: a ``flock``-ed file per object.

    ``locks/XX/rest.lock``, created on first use and removed with its object by the holder of
    the exclusive lock (:meth:`discard`); every locker re-checks after ``flock`` that the path
    still names the inode it locked (:func:`_flocked`), so removing lock files is safe. Opened
    read-only: ``flock`` needs no write access.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.lock"

    def hold(
        self, name: str, shared: bool = False, blocking: bool = True
    ) -> contextlib.AbstractContextManager[bool]:
        return _flocked(self._path(name), shared, blocking)

    @contextlib.contextmanager
    def batch(self) -> Iterator[Callable[[str], bool]]:
        with contextlib.ExitStack() as held:
            yield lambda name: held.enter_context(_flocked(self._path(name), blocking=False))

    def discard(self, name: str) -> None:
        """Remove the lock file of an object just removed; the caller holds it exclusively."""
        self._path(name).unlink(missing_ok=True)


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


class _Seen(enum.Enum):
    """What the index says about a file found under a final name."""

    OK = "recorded with this size (or adopted)"
    AGING = "recorded with this size, and due to move to the most recently used end"
    WRONG_SIZE = "its size differs from the recorded one"
    UNRECORDED = "no record"


class _Record(NamedTuple):
    size: int
    kind: str
    checksum: str | None  # of the decoded file (see _ADLER32)
    seq: int


def _lru_key(seq: int) -> str:
    return f"{_LRU}{seq:020d}"


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
        self._view: tuple[float, int] | None = None  # see _count_view
        if self.built() and self._db.get(_FORMAT) != _FORMAT_VERSION:
            self.recount()  # an index written by an earlier version: LRU entries rewritten

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
        if rec is not None:  # its LRU entry goes stale (see _LRU)
            self._db.delete(_OBJ + name)
            self._db.incr(_TOTAL, -rec.size)
            self._db.incr(_COUNT, -1)
        return rec

    def _put(self, name: str, size: int, kind: str, checksum: str | None) -> None:
        seq = self._db.incr(_SEQ)
        self._db.set(_OBJ + name, (size, kind, checksum, seq))
        self._db.set(_lru_key(seq), (name,))
        self._db.incr(_TOTAL, size)
        self._db.incr(_COUNT, 1)

    @_advisory(None)
    def get(self, name: str) -> _Record | None:
        return self._get(name)

    @_advisory(None)
    def insert(self, name: str, size: int, kind: str, checksum: str | None) -> None:
        with self._db.transact():
            self._drop(name)
            self._put(name, size, kind, checksum)

    @_advisory(None)
    def write_batch(
        self, records: Sequence[tuple[str, int, str, str | None]], used: Mapping[str, int]
    ) -> None:
        """New records (see :meth:`insert_many`) and objects used again (name -> size on disk,
        moved to the most recently used end if their record still agrees), in one transaction."""
        with self._db.transact():
            self.insert_many(records)
            moved = []
            for name, size in used.items():
                rec = self._get(name)
                if rec is not None and rec.size == size:  # else replaced or removed meanwhile
                    moved.append((name, rec))
            if moved:
                seq = self._db.incr(_SEQ, len(moved)) - len(moved) + 1  # one seq per batch, as inserts
                for name, rec in moved:
                    self._db.set(_OBJ + name, tuple(rec._replace(seq=seq)))
                self._db.set(_lru_key(seq), tuple(name for name, _ in moved))  # old entries go stale
        self._view = None

    @_advisory(None)
    def insert_many(self, records: Sequence[tuple[str, int, str, str | None]]) -> None:
        """(name, size, kind, checksum) records in one transaction (one commit for a batch)."""
        if not records:
            return
        with self._db.transact():
            # _put per record would be five counter updates each; one of each for the batch.
            # The batch shares one seq (and one LRU entry), but the counter still advances by
            # its size, so seq distances count objects (as the LRU slack rule in touch() wants).
            seq = self._db.incr(_SEQ, len(records)) - len(records) + 1
            total, count = 0, 0
            for name, size, kind, checksum in records:
                value = (size, kind, checksum, seq)
                # add() is one SELECT and one INSERT; a get() first would be another SELECT for
                # every object, when only those adopted or replaced meanwhile have a record.
                if not self._db.add(_OBJ + name, value):
                    self._drop(name)  # its counters included
                    self._db.set(_OBJ + name, value)
                total += size
                count += 1
            self._db.set(_lru_key(seq), tuple(r[0] for r in records))
            self._db.incr(_TOTAL, total)
            self._db.incr(_COUNT, count)

    @_advisory(_Seen.OK)
    def touch(self, name: str, size_on_disk: int, adopt: bool = True) -> _Seen:
        """Check ``name``'s record against ``size_on_disk``; AGING if it should now move to the
        most recently used end (the caller queues that for :meth:`write_batch`).

        Without a record it is adopted when ``adopt`` (linked into place by a process killed
        before its insert, or the index was lost). Reads only while the object is still among
        the newest 1/LRU_SLACK_FRACTION of the cache. The newest sequence number is read every
        time (other processes advance it by thousands a second); the object count at most once
        per _RECORDS_FLUSH_SECONDS: even right after an eviction halved it, the slack it gives
        stays within the newest half, which eviction keeps.
        """
        rec = self._get(name)
        if rec is not None:
            if rec.size != size_on_disk:
                return _Seen.WRONG_SIZE
            newest = int(self._db.get(_SEQ, 0))
            return _Seen.OK if newest - rec.seq <= self._count_view() // LRU_SLACK_FRACTION else _Seen.AGING
        if not adopt:
            return _Seen.UNRECORDED
        with self._db.transact():
            rec = self._get(name)
            if rec is None:
                self._put(name, size_on_disk, _UNKNOWN_KIND, None)
                return _Seen.OK
            return _Seen.OK if rec.size == size_on_disk else _Seen.WRONG_SIZE

    def _count_view(self) -> int:
        """The object count, re-read when older than a flush interval."""
        now = time.monotonic()
        if self._view is None or now - self._view[0] > _RECORDS_FLUSH_SECONDS:
            self._view = (now, int(self._db.get(_COUNT, 0)))
        return self._view[1]

    @_advisory(False)
    def adopt(self, name: str, size: int, checksum: str | None = None) -> bool:
        """Record a file found on disk; fill in a missing checksum. True if a record was created."""
        with self._db.transact():
            rec = self._get(name)
            if rec is None:
                kind = _DERIVED_KIND if name.startswith("assembled/") else _UNKNOWN_KIND
                self._put(name, size, kind, checksum)
                return True
            if checksum is not None and rec.checksum is None and rec.size == size:
                self._db.set(_OBJ + name, tuple(rec._replace(checksum=checksum)))
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
        """(seq, name) from least to most recently used; stops quietly if the index fails.

        A name may come with a seq its record has moved on from (stale, see ``_LRU``): callers
        act through :meth:`remove` with that seq, which then does nothing.
        """
        try:
            for key in self._keys(_LRU):
                seq, _, name = key[len(_LRU) :].partition(":")  # "a:<seq>:<name>": format 1
                for each in (name,) if name else self._db.get(key, ()):
                    yield int(seq), each
        except _INDEX_ERRORS as exc:
            log.warning("cache index: listing failed (%s)", exc)

    @_advisory(None)
    def prune(self, seqs: Iterable[int]) -> None:
        """Drop the LRU entries of ``seqs`` that no record has that seq any more.

        No transaction needed: a seq is given out once, so a stale entry stays stale.
        """
        for seq in seqs:
            names = self._db.get(_lru_key(seq))
            if names is None:
                continue
            if not any((rec := self._get(n)) is not None and rec.seq == seq for n in names):
                self._db.delete(_lru_key(seq))

    @_advisory(0)
    def total(self) -> int:
        return int(self._db.get(_TOTAL, 0))

    @_advisory(0)
    def count(self) -> int:
        return int(self._db.get(_COUNT, 0))

    @_advisory(None)
    def recount(self) -> None:
        """Make total, count and LRU entries agree with the records (after crashes, rebuilds,
        or an index of an earlier format): the LRU entries are written anew."""
        with self._db.transact():
            total = count = 0
            by_seq: dict[int, list[str]] = {}
            for key in list(self._keys(_OBJ)):
                name = key[len(_OBJ) :]
                rec = self._get(name)
                if rec is None:
                    continue
                total += rec.size
                count += 1
                by_seq.setdefault(rec.seq, []).append(name)
            for key in list(self._keys(_LRU)):
                self._db.delete(key)
            for seq, names in by_seq.items():
                self._db.set(_lru_key(seq), tuple(names))
            self._db.set(_TOTAL, total)
            self._db.set(_COUNT, count)
            self._db.set(_FORMAT, _FORMAT_VERSION)

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


_IndexRecord = tuple[str, int, str, str | None]  # name, size, kind, checksum


class _Pending:
    """Index records of objects already in place, and objects used again, written in batches
    (thread-safe).

    One index transaction per object was the largest part of the CPU cost of a cold read, and
    of a hit on an object that has to move to the most recently used end. Until its record is
    written, another process that finds such an object adopts it after checking its size
    (:meth:`_Index.insert_many` then replaces that record with the full one); a process killed
    with records pending leaves objects that are adopted like that when next used, or by
    ``cache fsck``. Only objects whose size the caller knows are deferred (adopting the others
    means verifying them). A use not yet written leaves the object where it was in the LRU
    order for up to _RECORDS_FLUSH_SECONDS (this process flushes before it evicts; another one
    may evict it meanwhile, which costs a download), as the real client's quota manager, which
    also takes LRU updates in batches.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, _IndexRecord] = {}
        self._used: dict[str, int] = {}
        self._first = 0.0
        self.nbytes = 0

    def _note(self) -> bool:
        """Called under the lock after adding: True when it is time to write."""
        return (
            len(self._records) + len(self._used) >= _RECORDS_BATCH
            or time.monotonic() - self._first >= _RECORDS_FLUSH_SECONDS
        )

    def add(self, record: _IndexRecord) -> bool:
        """Remember one record; True when it is time to write them."""
        with self._lock:
            if not self._records and not self._used:
                self._first = time.monotonic()
            self._records[record[0]] = record
            self.nbytes += record[1]
            return self._note()

    def use(self, name: str, size: int) -> bool:
        """Remember that ``name`` (of ``size`` bytes on disk) was used; True when it is time to write."""
        with self._lock:
            if not self._records and not self._used:
                self._first = time.monotonic()
            self._used[name] = size
            return self._note()

    def due(self) -> bool:
        """Records have waited long enough (checked on every cache use, not by a timer)."""
        return bool(self._records or self._used) and time.monotonic() - self._first >= _RECORDS_FLUSH_SECONDS

    def size_of(self, name: str) -> int | None:
        record = self._records.get(name)
        return record[1] if record is not None else None

    def take(self) -> tuple[list[_IndexRecord], dict[str, int]]:
        with self._lock:
            out = list(self._records.values()), self._used
            self._records, self._used = {}, {}
            self.nbytes = 0
            return out


def _store_new_file(pieces: Iterator[bytes], url: str, w: Wanted, tmp: Path, final: Path) -> Path:
    """Verify and decode into the new file ``tmp``, then rename it to ``final``; return ``final``.

    On any error the file is removed, so nothing unverified ever has a final name.
    """
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, OBJECT_MODE)
    try:
        try:
            dec = ObjectDecoder(
                w.content_hash, w.compression, functools.partial(_write_all, fd), url, w.expected_size
            )
            for piece in pieces:
                dec.feed(piece)
            dec.finish()
        finally:
            os.close(fd)
        _replace_making_parent(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return final


def _replace_making_parent(src: Path | str, final: Path) -> None:
    """``rename`` into ``final``, creating its fan-out directory only the first time it is missing
    (a ``mkdir`` per object would cost a system call each)."""
    try:
        os.replace(src, final)
    except FileNotFoundError:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, final)


def _write_and_keep(fd: int, kept: list[bytes], data: bytes) -> None:
    _write_all(fd, data)
    kept.append(data)


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
                os.fchmod(out.fileno(), OBJECT_MODE)
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
        """Fetch each object not present (or of the wrong size) into the tier.

        Returns, per item, its path or the error that stopped it (other items go on). Not synced
        to stable storage (see the module docstring, "Durability"): a crash of this node can
        leave a short file, which :meth:`lookup` rejects by its size and the next fill replaces.
        """
        if not self.writable:
            raise ConfigError(f"{self.directory}: alien cache is read-only (CVMFS_ALIEN_CACHE_WRITABLE=no)")
        results: list[Path | CvmfsError | OSError] = []
        for w in wanted:
            found = self.lookup(w.content_hash, w.expected_size)
            if found is not None:
                results.append(found)
                continue
            final = self.path_for(w.content_hash)
            try:
                results.append(
                    source.fetch(
                        w.content_hash.object_path(w.kind),
                        lambda pieces, url, w=w, final=final: _store_new_file(
                            pieces, url, w, self._txn_name(), final
                        ),
                    )
                )
            except (CvmfsError, OSError) as exc:
                results.append(exc)
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

    ``quota_bytes`` None or <= 0 means unlimited. A directory another user could change is
    refused (:func:`.config_basics.foreign_directory`).
    """

    def __init__(
        self,
        directory: Path,
        quota_bytes: int | None,
        alien: AlienCache | None = None,
        *,
        check_owner: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.quota_bytes = quota_bytes if quota_bytes is not None and quota_bytes > 0 else None
        self.alien = alien
        self.txn = self.directory / "txn"
        self.quarantine = self.directory / "quarantaine"
        self.locks = self.directory / "locks"
        # check_owner=False: only to look at (cache stat/fsck/wipe by its owner or an admin).
        if check_owner:
            self._check_owner()  # before writing anything into someone else's directory
        try:
            for d in (self.txn, self.quarantine, self.locks):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only home on compute nodes, a typo under a file...
            raise ConfigError(
                f"{self.directory}: cannot be used as the node cache: {exc.strerror} ({exc.filename}); "
                "set CVMFS_CACHE_BASE (or --cache-dir) to a writable directory on node-local disk"
            ) from None
        if check_owner:
            self._check_owner()  # made just now: in whose directory?
        fstype = _filesystem_type(self.directory)
        if fstype in NETWORK_FILESYSTEMS:
            raise ConfigError(
                f"{self.directory}: the node cache must be on node-local disk, not {fstype} "
                "(its index uses SQLite and file locks); use CVMFS_ALIEN_CACHE for a shared tier"
            )
        # Cache-wide lock: eviction, wipe and index rebuilds exclude each other through it.
        self._evict_lock = self.locks / "evict.lock"
        ranges = _ObjectLocks(self.locks / "objects.lock")
        self._locks: _ObjectLocks | _LockFiles = ranges if ranges.usable() else _LockFiles(self.locks)
        # Anonymous files need O_TMPFILE (file system) and /proc/self/fd (to link them).
        self._anonymous = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self._dir_fd: int | None = None
        self._tally = _Tally()
        self._pending = _Pending()
        self._pid = os.getpid()
        self._index = _Index(self.directory / "index", self._evict_lock)
        if not self._index.built():  # a new cache, or the index was lost or corrupt
            self._rebuild(only_if_needed=True)
        self._clean_txn()

    def _check_owner(self) -> None:
        why = foreign_directory(self.directory)
        if why is not None:
            raise ConfigError(
                f"{self.directory}: not used as the node cache: {why}, so another user could change "
                "the programs and files your jobs read from it; use a directory of your own "
                "(CVMFS_CACHE_BASE or --cache-dir)"
            )

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
        *,
        local: bool = False,
    ) -> Path:
        """Local path of the verified, decoded object, downloading it first if needed.

        Order: node cache, alien tier (returned in place), network. Raises what the source
        raises (``HashMismatch``, ``CorruptObject``, ``FetchError``); nothing unverified is kept.
        ``expected_size`` (decoded bytes, the catalog's) is checked on every hit as well.
        Open the path promptly: the object is at the most recently used end now, but a later
        eviction removes the name (an open descriptor keeps working).

        ``local``: the path must be on the node cache's file system (the interposer hardlinks
        it): an alien object on another file system is copied into the node cache first, where
        the quota counts it, rather than returned in place.
        """
        return self._get(content_hash, source, kind, compression, expected_size, keep=False, local=local)[0]

    def _get(
        self,
        content_hash: ContentHash,
        source: ObjectFetcher,
        kind: ObjectType,
        compression: Compression,
        expected_size: int | None,
        keep: bool,
        local: bool = False,
    ) -> tuple[Path, bytes | None]:
        """:meth:`get`; with ``keep``, also the decoded content of a small object that was just
        downloaded (None otherwise), which :meth:`open` hands out instead of reading it back."""
        self._check_fork()
        name = content_hash.cache_name()
        final = self.directory / name
        if self._hit(name, final, expected_size):
            return final, None
        if self.alien is not None:
            found = self.alien.lookup(content_hash, expected_size)
            if found is not None:
                self._count("alien_hits")
                if local and os.stat(found).st_dev != os.stat(self.directory).st_dev:
                    return self._copy_in(name, final, found, kind), None
                return found, None
        keep = keep and expected_size is not None and expected_size <= KEPT_CONTENT_MAX
        # Exclusive per-object lock: one download per object on the node; others wait here.
        with self._locks.hold(name):
            if self._claim(name, final, expected_size):  # fetched by whoever held the lock before us
                self._count("hits")
                return final, None
            self._count("misses")
            size, digest, kept = source.fetch(
                content_hash.object_path(kind),
                lambda pieces, url: self._write_object(
                    pieces, url, content_hash, compression, expected_size, name, keep
                ),
            )
            if expected_size is None:  # catalogs and the like: other processes want the record now
                self._index.insert(name, size, kind.value, digest)
                flush = False
            else:
                flush = self._pending.add((name, size, kind.value, digest)) or (
                    self.quota_bytes is not None and self._pending.nbytes > self.quota_bytes // 16
                )
        # Outside the object lock, so hits of the new object do not wait for the index,
        # publishing or an eviction pass. (Waiting for the cache-wide lock while holding object
        # locks would still be deadlock-free: its holder only ever try-locks objects.)
        if flush:
            self._flush_records()
        if self.alien is not None and self.alien.writable:
            self.alien.publish(content_hash, final)
        if flush or expected_size is None:  # the total only grew if records were written
            self._maybe_evict(protect=name)
        return final, kept

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
        A small object (up to KEPT_CONTENT_MAX, size known) that was just downloaded comes from
        memory, the same verified bytes that were written (a cold read saves reading them back:
        ~11 us per object, 7 system calls).
        """
        attempts = []
        for _ in range(_OPEN_ATTEMPTS):
            path, kept = self._get(content_hash, source, kind, compression, expected_size, keep=True)
            if kept is not None:
                return io.BytesIO(kept)
            try:
                return open(path, "rb")
            except FileNotFoundError:
                attempts.append(f"{path}: evicted before it could be opened")
        raise FetchError(
            content_hash.object_path(kind), attempts + ["cache quota too small for the working set"]
        )

    def get_many(self, wanted: Sequence[Wanted], source: ObjectFetcher) -> list[Path | CvmfsError | OSError]:
        """:meth:`get` for a batch of objects (pre-warming); per item its path or its error.

        The same guarantees at a lower cost per object: the batch is recorded in one index
        transaction instead of one each. Locks: each object's lock is only *tried* (first:
        pre-warming asks for objects that were missing a moment ago, so the usual shared-lock
        hit check would be a wasted step) and held until its record is in; an object another
        process is using right now is handled afterwards with :meth:`get`, once this batch holds
        no lock, so a batch never waits for a lock while holding others (no deadlock).
        """
        self._check_fork()
        results: list[Path | CvmfsError | OSError | None] = [None] * len(wanted)
        later: list[int] = []
        records: list[tuple[str, int, str, str | None]] = []
        with self._locks.batch() as try_lock:
            for i, w in enumerate(wanted):
                name = w.content_hash.cache_name()
                if not try_lock(name):
                    later.append(i)
                    continue
                final = self.directory / name
                if self._claim(name, final, w.expected_size):  # fetched already
                    self._count("hits")
                    results[i] = final
                    continue
                if self.alien is not None:
                    found = self.alien.lookup(w.content_hash, w.expected_size)
                    if found is not None:
                        self._count("alien_hits")
                        results[i] = found
                        continue
                self._count("misses")
                try:
                    size, digest, _ = source.fetch(
                        w.content_hash.object_path(w.kind),
                        lambda pieces, url, w=w, name=name: self._write_object(
                            pieces, url, w.content_hash, w.compression, w.expected_size, name
                        ),
                    )
                except (CvmfsError, OSError) as exc:
                    results[i] = exc
                    continue
                results[i] = final
                records.append((name, size, w.kind.value, digest))
            # Still holding the object locks: nobody sees these objects without their records.
            self._index.insert_many(records)
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

    def _write_object(
        self,
        pieces: Iterator[bytes],
        url: str,
        content_hash: ContentHash,
        compression: Compression,
        expected_size: int | None,
        name: str,
        keep: bool = False,
    ) -> tuple[int, str, bytes | None]:
        """Verify and decode into a new file, then give it the name ``name``; return (size,
        checksum of the decoded file, the decoded content if ``keep``).

        Called once per attempt by the source (a rejected attempt leaves nothing behind). The
        caller holds the object's lock exclusively.
        """
        fd, tmp = self._new_file(content_hash)
        pieces_kept: list[bytes] = []
        try:
            sink: Callable[[bytes], object] = functools.partial(_write_all, fd)
            if keep:
                sink = functools.partial(_write_and_keep, fd, pieces_kept)
            dec = ObjectDecoder(content_hash, compression, sink, url, expected_size)
            for piece in pieces:
                dec.feed(piece)
            size = dec.finish()
            self._publish(fd, tmp, name)
        except BaseException:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        assert dec.adler32 is not None  # set by finish()
        return size, _adler32_text(dec.adler32), b"".join(pieces_kept) if keep else None

    @contextlib.contextmanager
    def _writing(self, name: str) -> Iterator[int]:
        """A new file (its descriptor) that gets the final name ``name`` when the block ends
        normally; if it raises, nothing is kept. The caller holds ``name``'s lock exclusively.
        (:meth:`_write_object` does the same inline: it runs once per object of a cold read.)"""
        fd, tmp = self._new_file(None)
        try:
            yield fd
            self._publish(fd, tmp, name)
        except BaseException:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)

    def _new_file(self, content_hash: ContentHash | None) -> tuple[int, str | None]:
        """A new read-write file for an object being written: (descriptor, its txn name or None).

        Anonymous where possible (``O_TMPFILE``): it has no name until :meth:`_publish` links it,
        and the kernel frees it if this process dies, so nothing is ever left to clean up (and
        there is no name to make up, no ``flock``, no ``chmod``). Otherwise a named, flock-ed
        ``txn/`` file (:meth:`temporary`), renamed by :meth:`_publish`.
        """
        if self._anonymous:
            try:
                return os.open(self.txn, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, OBJECT_MODE), None
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                log.debug("%s: no O_TMPFILE here (%s); using named temporary files", self.txn, exc)
                self._anonymous = False
        fd, tmp = self.temporary(content_hash.hex[:12] + "." if content_hash is not None else "derived.")
        os.fchmod(fd, OBJECT_MODE)
        return fd, tmp

    def _publish(self, fd: int, tmp: str | None, name: str) -> None:
        """Give the complete, verified file ``fd`` (txn name ``tmp``, or None if anonymous) the
        final name ``name`` (relative to the cache directory). The caller holds the object's lock
        exclusively, so a file already there is a stale one it decided to replace."""
        if tmp is not None:
            _replace_making_parent(tmp, self.directory / name)  # our txn flock still held
            return
        if self._dir_fd is None:
            self._dir_fd = os.open(self.directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for _ in range(3):
            try:
                # A directory fd makes os.link use linkat(AT_SYMLINK_FOLLOW): the magic link is
                # followed to the anonymous inode rather than linked itself.
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=self._dir_fd)
                return
            except FileNotFoundError:
                (self.directory / name).parent.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                (self.directory / name).unlink(missing_ok=True)
        raise FetchError(
            str(self.directory / name), ["cannot link the verified file into place (it keeps reappearing)"]
        )

    # -- derived files ------------------------------------------------------------------

    def _copy_in(self, name: str, final: Path, verified: Path, kind: ObjectType) -> Path:
        """``verified`` (an alien object: verified when it was published) copied into the node
        cache as object ``name``, recorded and quota-accounted like a download."""
        with self._locks.hold(name):
            if self._claim(name, final, os.stat(verified).st_size):
                return final
            adler, size = 1, 0
            with self._writing(name) as fd, open(verified, "rb") as src:
                while piece := src.read(_READ_PIECE):
                    adler, size = zlib.adler32(piece, adler), size + len(piece)
                    _write_all(fd, piece)
            self._index.insert(name, size, kind.value, _adler32_text(adler))
        self._maybe_evict(protect=name)
        return final

    def get_derived(self, key: str, build: Callable[[BinaryIO], None]) -> Path:
        """``assembled/XX/rest`` for ``key``, built once by ``build(file)`` and quota-accounted.

        ``key`` must identify the content (e.g. a hash of the chunk list); ``build`` writes the
        whole content into the given file. Built under the key's lock, linked or renamed into
        place when complete; if ``build`` raises, nothing is kept.
        """
        self._check_fork()
        if not _DERIVED_KEY.fullmatch(key):
            raise FormatError("derived cache key", f"{key!r} is not 3-200 characters of [0-9A-Za-z_-]")
        name = f"assembled/{key[:2]}/{key[2:]}"
        final = self.directory / name
        if self._hit(name, final):
            return final
        with self._locks.hold(name):
            if self._claim(name, final, None):
                self._count("hits")
                return final
            self._count("misses")
            with self._writing(name) as fd, os.fdopen(fd, "w+b", closefd=False) as out:
                build(out)
                out.flush()
                out.seek(0)
                adler, size = _adler32_of(out)  # in the page cache: cheap next to building
            self._index.insert(name, size, _DERIVED_KIND, _adler32_text(adler))
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

    def usage(self) -> tuple[int, int | None]:
        """Bytes of objects the index counts and the quota (``None``: unmanaged): what a
        mounted repository's ``statfs`` reports under the real client."""
        self._check_fork()
        self._flush_records()
        return self._index.total(), self.quota_bytes

    def stat(self) -> CacheStats:
        """Size, quota, objects and counters from the index (advisory; ``fsck`` reconciles it).

        Counters are batched per process and written every few seconds or hundred events and
        on ``close()``: counts of a process killed since its last flush are lost.
        """
        self._check_fork()
        self._flush_counts()
        self._flush_records()
        counts = self._index.counts()
        return CacheStats(
            size_bytes=self._index.total(),
            quota_bytes=self.quota_bytes,
            objects=self._index.count(),
            pinned=len(self._index.pinned()),
            hits=counts.get("hits", 0),
            misses=counts.get("misses", 0),
            alien_hits=counts.get("alien_hits", 0),
            outside_bytes=held_outside(self.directory),
        )

    def fsck(self, progress: Callable[[int, int], None] | None = None) -> FsckReport:
        """Re-verify every object; quarantine bad ones; clean ``txn/``; reconcile the index.

        An object with a recorded checksum (of the decoded content, taken when it was verified
        at insert: the zlib stream's Adler-32, or a sha256 in indexes of earlier versions) is
        checked against it. One without (adopted after a crash or an index loss) is
        checked against its name: the raw content hashed (``Compression.NONE`` objects), or the
        content re-compressed with zlib at the default level and hashed (how publishers store
        it); either match is accepted and its checksum recorded. zlib output is not guaranteed
        identical across zlib builds (spec 4.2), so a mismatch there may be a false alarm: it is
        still removed, because a wrongly removed object costs one download and a wrongly kept one
        serves bad data. Derived files without a record cannot be checked and are removed too.
        """
        self._check_fork()
        self._flush_records()
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
        self._flush_records()
        self._rebuild(only_if_needed=False)

    def _rebuild(self, only_if_needed: bool) -> None:
        with _flocked(self._evict_lock):  # one rebuilder at a time, and no eviction meanwhile
            if only_if_needed and self._index.built():  # another process rebuilt while we waited
                return
            for name in self._scan():
                size = None
                # Shared try-lock: skip objects being removed right now (their owner updates the index).
                with self._locks.hold(name, shared=True, blocking=False) as held:
                    if held:
                        with contextlib.suppress(FileNotFoundError):
                            size = (self.directory / name).stat().st_size
                if size == 0 and not name.startswith("assembled/"):
                    # What a power cut leaves of a file linked just before (see "Durability");
                    # removed, as the real client's cache database rebuild does.
                    self._remove_object(name)
                elif size is not None:
                    self._index.adopt(name, size)
            self._drop_orphan_records()
            self._index.recount()
            self._index.mark_built()
        self._maybe_evict(protect="")

    def wipe(self) -> WipeReport:
        """Remove every object, pinned or not, as ``cvmfs_config wipecache``.

        Runs under the eviction lock and try-locks each object: one being downloaded or read
        right now is skipped (its download completes normally). Open descriptors keep working,
        and so do running jobs of ``cvmfs-client run``: the links of the revisions they hold are
        removed when they end (counted in the report).
        """
        self._check_fork()
        self._flush_records()
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
        busy = self._collect_linked_trees()
        return WipeReport(removed, busy)

    def close(self) -> None:
        self._check_fork()
        self._flush_counts()
        if self._flush_records():
            self._maybe_evict(protect="")
        self._index.close()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def __enter__(self) -> NodeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _check_fork(self) -> None:
        """A forked child must not flush the parent's pending counts or records (diskcache
        reconnects itself)."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._tally = _Tally()
            self._pending = _Pending()

    def _hit(self, name: str, final: Path, expected_size: int | None = None) -> bool:
        """True if a good copy is under ``final`` (counted as a hit); False if it is absent or
        failed its check (the caller then takes the exclusive lock, see :meth:`_claim`)."""
        if self._pending.due():
            self._flush_records()
        if not os.path.exists(final):  # plain stat first: a miss takes no lock here
            return False
        # Shared lock: excludes an evictor/fsck removing it while we record the hit.
        with self._locks.hold(name, shared=True):
            if not self._good(name, final, expected_size):
                return False
        self._count("hits")
        return True

    def _claim(self, name: str, final: Path, expected_size: int | None) -> bool:
        """Under the exclusive lock: True if a good copy is there; else False, with any bad copy
        moved to the quarantine, so the caller downloads it."""
        good = self._good(name, final, expected_size)
        if good is False:
            self._quarantine(name, final, "it failed the size check (cut short by a crash?)")
        return bool(good)

    def _good(self, name: str, final: Path, expected_size: int | None) -> bool | None:
        """Is the file under ``final`` usable (None: there is none)? Its use is recorded if so.
        The caller holds the object's lock.

        The checks cost nothing but the ``stat``: the size against the catalog's and against
        the index record (see "Durability" in the module docstring). A file with neither a
        record nor an expected size (a catalog linked by a process killed before its insert, or
        after a power cut) is verified by its name before it is adopted.
        """
        try:
            size = os.stat(final).st_size
        except FileNotFoundError:  # absent, or evicted between the caller's stat and the lock
            return None
        if expected_size is not None and size != expected_size:
            return False
        if self._pending.size_of(name) == size:  # fetched by this process, its record comes soon
            return True
        seen = self._index.touch(name, size, adopt=expected_size is not None)
        if seen is _Seen.WRONG_SIZE:
            return False
        if seen is _Seen.AGING and self._pending.use(name, size):
            self._flush_records()
        if seen is _Seen.UNRECORDED:
            problem, digest = self._verify(name, final, None, size)
            if problem is not None:
                log.warning("cache %s: %s has no record and %s", self.directory, name, problem)
                return False
            self._index.adopt(name, size, digest)
        return True

    def _quarantine(self, name: str, path: Path, reason: str) -> None:
        """Move a bad file out of the way (kept for inspection) and drop its record. Caller
        holds the object's lock exclusively."""
        dest = self.quarantine / f"{name.replace('/', '_')}.{time.time_ns()}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, dest)
        self._index.remove(name)
        log.warning("cache %s: %s quarantined: %s", self.directory, name, reason)

    def _count(self, which: str) -> None:
        if self._tally.add(which):
            self._flush_counts()

    def _flush_counts(self) -> None:
        counts = self._tally.take()
        if any(counts.values()):
            self._index.add_counts(counts)

    def _flush_records(self) -> bool:
        """Write the records of this process's new objects and the uses of old ones; True if
        there were new records (the total grew)."""
        records, used = self._pending.take()
        if records or used:
            self._index.write_batch(records, used)
        return bool(records)

    def _maybe_evict(self, protect: str) -> None:
        if self.quota_bytes is None or self._index.total() + self._pending.nbytes <= self.quota_bytes:
            return
        self._flush_records()
        if self._evict(self.quota_bytes, self.quota_bytes // 2, protect):
            self._collect_linked_trees()

    def _collect_linked_trees(self) -> int:
        """Objects left: free the bytes that trees of links to them still hold (cache_links).
        Returns how many units (revisions) were in use and left for their holders to collect."""
        note_removal(self.directory)
        return sum(len(collect(tree).units_busy) for tree in linked_trees(self.directory))

    def _evict(self, threshold: int, target: int, protect: str) -> bool:
        """Remove LRU unpinned objects until the total is <= ``target`` (real client: limit/2).

        Returns whether anything was removed."""
        removed_any = False
        with _flocked(self._evict_lock):
            total = self._index.total()
            if total <= threshold:  # someone evicted while we waited for the lock
                return False
            pinned = self._index.pinned()
            walked: set[int] = set()
            for seq, name in self._index.lru():
                if total <= target:
                    break
                walked.add(seq)
                if name in pinned or name == protect:
                    continue
                removed = self._remove_object(name, seq)
                if removed is not None:
                    removed_any = True
                    total -= removed
            self._index.prune(walked)  # entries whose names are all gone or moved on
            if total > threshold:
                log.warning(
                    "cache %s stays over its quota (%d > %d bytes): the rest is pinned or in use",
                    self.directory,
                    total,
                    threshold,
                )
        return removed_any

    def _remove_object(self, name: str, seq: int | None = None) -> int | None:
        """Remove one object and its record; None if it is busy (or, with ``seq``, touched since).

        Returns the recorded size (0 if it had no record). Try-lock only: the caller may hold the
        cache-wide lock, and object-lock holders may be waiting for it.
        """
        with self._locks.hold(name, blocking=False) as held:
            if not held:
                return None
            rec = self._index.remove(name, seq)
            if rec is None and seq is not None:
                return None  # touched after we listed it: recently used after all
            # Unlink is safe for jobs that have it open: the inode lives until they close it.
            (self.directory / name).unlink(missing_ok=True)
            self._locks.discard(name)
            return rec.size if rec is not None else 0

    def _drop_orphan_records(self) -> int:
        """Remove index records whose file is gone (deleted by hand, or a crash mid-eviction)."""
        dropped = 0
        for _seq, name in list(self._index.lru()):
            if (self.directory / name).exists():
                continue
            with self._locks.hold(name, blocking=False) as held:
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
        # Shared: concurrent hits continue; removal and replacement wait until we have looked.
        with self._locks.hold(name, shared=True):
            try:
                st = path.stat()
            except FileNotFoundError:
                return
            rec = self._index.get(name)
            problem, digest = self._verify(name, path, rec, st.st_size)
        report.checked += 1
        if problem is None:
            if (rec is None or rec.checksum is None) and self._index.adopt(name, st.st_size, digest):
                report.adopted += 1
            return
        # The lock cannot be upgraded atomically: take it exclusively and make sure the file we
        # judged is still the one under that name.
        with self._locks.hold(name):
            try:
                now = path.stat()
            except FileNotFoundError:
                return
            if (now.st_ino, now.st_mtime_ns) != (st.st_ino, st.st_mtime_ns):
                return
            self._quarantine(name, path, f"fsck: {problem}")
            self._locks.discard(name)  # no download follows (a _claim keeps its lock file)
        report.removed.append((name, problem))

    def _verify(self, name: str, path: Path, rec: _Record | None, size: int) -> tuple[str | None, str]:
        """(problem or None, checksum of the file) — see :meth:`fsck` for the rules."""
        if rec is not None and rec.size != size:
            return f"size is {size} bytes, {rec.size} were recorded", ""
        if rec is not None and rec.checksum is not None:
            digest = _file_checksum(path, rec.checksum)
            if digest != rec.checksum:
                kind = "adler32" if rec.checksum.startswith(_ADLER32) else "sha256"
                return f"content changed since it was verified ({kind} mismatch)", digest
            return None, digest
        if name.startswith("assembled/"):
            return "derived file without a recorded checksum cannot be verified", ""
        expected = ContentHash.from_hex(name.replace("/", "", 1), str(path))
        adler = 1
        raw = expected.algorithm.new()
        zipped = expected.algorithm.new()
        deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION)  # = objects.encode (zlib.compress)
        with open(path, "rb") as f:
            while block := f.read(_READ_PIECE):
                adler = zlib.adler32(block, adler)
                raw.update(block)
                zipped.update(deflate.compress(block))
        zipped.update(deflate.flush())
        if expected in (raw.content_hash(), zipped.content_hash()):
            return None, _adler32_text(adler)
        return "content matches its name neither raw nor re-compressed with zlib", _adler32_text(adler)

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
