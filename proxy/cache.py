"""The proxy's cache: a disk tier with a size limit and LRU eviction, and a memory tier for
small hot objects. Kept across restarts; never holds a partial or unverified object.

How bytes are stored (:class:`Meta` and the trailer) is separate from how the cache is
managed (:class:`Cache`: index, LRU, eviction, memory tier), as diskcache separates ``Disk``
from ``Cache``.

Layout under the cache directory::

    lock                 flock'ed by the running proxy: one proxy per directory
    tmp/<pid>-<n>        downloads in progress (deleted at start-up: a crash leaves only these)
    objects/XX/<sha256>  one file per entry: body, then JSON metadata, then a 16-byte trailer

The body comes first so that a download in progress can be streamed to waiting clients from
offset 0 of the very file that later becomes the cache entry (and hits can be sent with
``sendfile`` from offset 0). The metadata goes after the body when the download is complete
and verified; then the file is renamed into place, which is atomic: an entry is either absent
or complete. A file whose trailer is missing or wrong (e.g. a crash during a power loss left
it short) is deleted on first use.

The index (entry -> size, last use) lives in memory, rebuilt at start-up from a directory scan
ordered by modification time; hits refresh the time at most every ``TOUCH_INTERVAL`` seconds,
so the LRU order survives restarts without a database (which would also be one more thing to
corrupt). Single-threaded by design: only the asyncio loop calls it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_MAGIC = b"CVMFSPX1"
_TRAILER = struct.Struct("<Q8s")  # metadata length, magic
MAX_META_BYTES = 1 << 20  # metadata is a few hundred bytes; a bigger claim means a broken file
TOUCH_INTERVAL = 300.0  # seconds between mtime updates of a hit entry (LRU order on disk)
DEFAULT_MEMORY_MAX_OBJECT = 1 << 20  # memory tier: small hot objects (catalog pages, manifests)
DEFAULT_MAX_OBJECT_FRACTION = 4  # an object larger than size/4 would flush too much of the cache


class CacheLocked(RuntimeError):
    """Another proxy uses this cache directory (two writers would corrupt the LRU accounting)."""


@dataclass(slots=True)
class Meta:
    """What is stored with a body: enough to answer a hit without the upstream."""

    key: str
    status: int
    headers: list[tuple[str, str]]  # end-to-end headers as the upstream sent them
    stored_at: float  # wall-clock time the response was received
    expires_at: float | None  # None: immutable verified object, never stale
    initial_age: int  # the upstream's Age at stored_at (a parent cache's copy may be old)
    body_size: int

    def fresh(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def age(self, now: float) -> int:
        return self.initial_age + max(0, int(now - self.stored_at))

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "key": self.key,
                "status": self.status,
                "headers": self.headers,
                "stored_at": self.stored_at,
                "expires_at": self.expires_at,
                "initial_age": self.initial_age,
                "body_size": self.body_size,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Meta:
        d = json.loads(raw)
        return cls(
            key=str(d["key"]),
            status=int(d["status"]),
            headers=[(str(k), str(v)) for k, v in d["headers"]],
            stored_at=float(d["stored_at"]),
            expires_at=None if d["expires_at"] is None else float(d["expires_at"]),
            initial_age=int(d["initial_age"]),
            body_size=int(d["body_size"]),
        )


@dataclass(slots=True)
class MemoryHit:
    """A small entry held in memory. ``heads`` caches rendered response heads of immutable
    entries (they never change), so a hot object costs one dict lookup and one write."""

    meta: Meta
    body: bytes
    digest: str
    heads: dict[object, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class DiskHit:
    """An open entry; the caller owns ``fd`` and must close it. The body is bytes [0, size)."""

    meta: Meta
    fd: int


class _Entry:
    __slots__ = ("size", "touched")

    def __init__(self, size: int, touched: float) -> None:
        self.size = size  # file size on disk (body + metadata + trailer)
        self.touched = touched


class TempFile:
    """A download in progress: body bytes are appended at the end; readers use ``fd`` + offset."""

    __slots__ = ("fd", "path", "size", "closed")

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.size = 0
        self.closed = False

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``. Page-cache writes take microseconds, so they run on the event loop:
        handing each piece to a thread would cost more than the write itself."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.size)
            self.size += n
            view = view[n:]

    def read_all(self) -> bytes:
        return os.pread(self.fd, self.size, 0)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class Cache:
    """Disk + memory tiers. ``open()`` before use, ``close()`` at shutdown."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        memory_bytes: int = 256 << 20,
        memory_max_object: int = DEFAULT_MEMORY_MAX_OBJECT,
        max_object: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes
        self.memory_max_object = min(memory_max_object, memory_bytes)
        self.max_object = max_object if max_object is not None else max_bytes // DEFAULT_MAX_OBJECT_FRACTION
        self._index: OrderedDict[str, _Entry] = OrderedDict()  # digest -> entry, LRU first
        self._memory: OrderedDict[str, MemoryHit] = OrderedDict()  # key -> hit, LRU first
        self.disk_used = 0
        self.memory_used = 0
        self.evictions = 0
        self._lock_fd: int | None = None
        self._tmp_counter = 0

    # ---- life cycle ----

    def open(self) -> None:
        """Lock the directory, delete leftovers of a crash, and index the entries on disk."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CacheLocked(f"{self.directory}: in use by another cvmfs-proxy") from None
        self._lock_fd = fd
        tmp = self.directory / "tmp"
        tmp.mkdir(exist_ok=True)
        for leftover in tmp.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
        objects = self.directory / "objects"
        found: list[tuple[float, str, int]] = []
        for i in range(256):
            sub = objects / f"{i:02x}"
            sub.mkdir(parents=True, exist_ok=True)
            with os.scandir(sub) as it:
                for e in it:
                    try:
                        st = e.stat()
                    except OSError:
                        continue
                    if st.st_size < _TRAILER.size:
                        with contextlib.suppress(OSError):
                            os.unlink(e.path)
                        continue
                    found.append((st.st_mtime, e.name, st.st_size))
        found.sort()
        for mtime, name, size in found:
            self._index[name] = _Entry(size, mtime)
            self.disk_used += size
        self._evict(0)
        log.info("cache %s: %d objects, %d bytes", self.directory, len(self._index), self.disk_used)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- lookup ----

    @staticmethod
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def _path(self, digest: str) -> Path:
        return self.directory / "objects" / digest[:2] / digest

    def lookup(self, key: str, now: float | None = None) -> MemoryHit | DiskHit | None:
        """The stored response for ``key`` (fresh or stale: the caller checks ``meta.fresh``)."""
        hit = self._memory.get(key)
        if hit is not None:
            self._memory.move_to_end(key)
            if hit.digest in self._index:
                self._index.move_to_end(hit.digest)
            return hit
        digest = self.digest(key)
        entry = self._index.get(digest)
        if entry is None:
            return None
        path = self._path(digest)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            self._drop(digest)
            return None
        try:
            meta = self._read_meta(fd, entry.size)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            os.close(fd)
            log.warning("cache entry %s is damaged (%s): deleted", path, exc)
            self._drop(digest, unlink=True)
            self._forget(key)
            return None
        if meta.key != key:  # a sha256 collision is not a concern; a renamed file might be
            os.close(fd)
            self._drop(digest, unlink=True)
            return None
        self._index.move_to_end(digest)
        now = time.time() if now is None else now
        if now - entry.touched > TOUCH_INTERVAL:
            entry.touched = now
            with contextlib.suppress(OSError):
                os.utime(fd)
        if meta.body_size <= self.memory_max_object:
            body = os.pread(fd, meta.body_size, 0)
            os.close(fd)
            if len(body) != meta.body_size:
                self._drop(digest, unlink=True)
                return None
            mem = MemoryHit(meta, body, digest)
            self._remember(mem)
            return mem
        return DiskHit(meta, fd)

    def has(self, key: str) -> bool:
        """Whether anything (fresh or stale) is stored for ``key``, without opening it."""
        return key in self._memory or self.digest(key) in self._index

    @staticmethod
    def _read_meta(fd: int, file_size: int) -> Meta:
        raw = os.pread(fd, _TRAILER.size, file_size - _TRAILER.size)
        if len(raw) != _TRAILER.size:
            raise ValueError("short file")
        meta_len, magic = _TRAILER.unpack(raw)
        if magic != _MAGIC or meta_len > MAX_META_BYTES or meta_len > file_size - _TRAILER.size:
            raise ValueError("no valid trailer")
        body_size = file_size - _TRAILER.size - meta_len
        meta = Meta.from_json(os.pread(fd, meta_len, body_size))
        if meta.body_size != body_size:
            raise ValueError(f"body is {body_size} bytes, metadata says {meta.body_size}")
        return meta

    # ---- storing ----

    def new_temp(self) -> TempFile:
        self._tmp_counter += 1
        path = self.directory / "tmp" / f"{os.getpid()}-{self._tmp_counter}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        return TempFile(fd, path)

    def storable_size(self, size: int) -> bool:
        return size <= self.max_object

    def reserve(self, size: int) -> None:
        """Make room before a download of known size, so the disk does not overshoot."""
        self._evict(size)

    def commit(self, temp: TempFile, meta: Meta) -> bool:
        """Append the metadata and rename the finished download into place (atomic).

        The temp file's descriptor stays open (readers may still be streaming from it); the
        caller closes it. Returns False (and leaves the temp file for ``discard``) when the
        object is too large or the disk refused the write.
        """
        if meta.body_size != temp.size or not self.storable_size(temp.size):
            return False
        digest = self.digest(meta.key)
        raw = meta.to_json()
        try:
            os.pwrite(temp.fd, raw + _TRAILER.pack(len(raw), _MAGIC), temp.size)
            size = temp.size + len(raw) + _TRAILER.size
            self._evict(size, keep=digest)
            os.rename(temp.path, self._path(digest))
        except OSError as exc:
            log.warning("cannot store %s in the cache: %s", meta.key, exc)
            return False
        old = self._index.pop(digest, None)
        if old is not None:
            self.disk_used -= old.size
        self._index[digest] = _Entry(size, time.time())
        self.disk_used += size
        self._forget(meta.key)
        if meta.body_size <= self.memory_max_object:
            body = os.pread(temp.fd, meta.body_size, 0)
            self._remember(MemoryHit(meta, body, digest))
        self._evict(0)
        return True

    def discard(self, temp: TempFile) -> None:
        """Delete an unfinished or refused download (its fd stays valid until closed)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp.path)

    def remove(self, key: str) -> None:
        self._drop(self.digest(key), unlink=True)
        self._forget(key)

    # ---- accounting ----

    def _remember(self, hit: MemoryHit) -> None:
        key = hit.meta.key
        self._forget(key)
        size = len(hit.body)
        if size > self.memory_max_object:
            return
        self._memory[key] = hit
        self.memory_used += size
        while self.memory_used > self.memory_bytes and self._memory:
            _, old = self._memory.popitem(last=False)
            self.memory_used -= len(old.body)

    def _forget(self, key: str) -> None:
        old = self._memory.pop(key, None)
        if old is not None:
            self.memory_used -= len(old.body)

    def _drop(self, digest: str, unlink: bool = False) -> None:
        # The memory copy (if any) stays: it is complete and has its own LRU bound.
        entry = self._index.pop(digest, None)
        if entry is not None:
            self.disk_used -= entry.size
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(digest))

    def _evict(self, incoming: int, keep: str | None = None) -> None:
        """Delete least recently used entries until ``incoming`` more bytes fit.

        Unlinking a file that a client is still being sent is fine on POSIX: the open
        descriptor keeps the data until the transfer ends.
        """
        while self.disk_used + incoming > self.max_bytes and self._index:
            digest = next(iter(self._index))
            if digest == keep:
                if len(self._index) == 1:
                    break
                self._index.move_to_end(digest)
                continue
            self._drop(digest, unlink=True)
            self.evictions += 1

    @property
    def objects(self) -> int:
        return len(self._index)

    @property
    def memory_objects(self) -> int:
        return len(self._memory)
