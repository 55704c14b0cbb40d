"""Trees of hard links into a node cache, and their collection when objects leave the cache.

A process that needs paths of its own for cache objects (the interposer's ``d/`` trees, whose
paths ``/proc/PID/fd`` shows to a job) hardlinks them. Such a link keeps an object's bytes on
disk after the cache evicts it, where the quota no longer counts them. So a *linked tree*
registers with every cache it links into, and keeps this layout, which the collector relies on:

``<tree>/r/<a>/<b>/``
    *Units* (the interposer: one per repository revision). ``lock`` is held shared by every
    process using the unit, for its lifetime (:class:`UnitLock`); ``d/`` holds the links;
    ``collected`` is touched when a collection of the unit starts; ``retired`` (see
    :func:`retire_unit`) marks a unit that nothing will use again: it is removed whole once idle.
``<tree>/x/<name>``
    Private copies of objects (the interposer's executable copies), named by the object's cache
    name without the ``/``; a copy belongs to its object and goes when the object goes.
``<tree>/caches/<key>`` and ``<cache>/linked/<key>``
    Symlinks to the cache directories the tree links into, and to the trees linking into a cache.

``<cache>/evicted`` is touched whenever the cache removes objects. :func:`collect` then runs for
every tree registered there (the cache calls it after evicting and after ``cache wipe``). It
takes each unit's lock exclusively without waiting, so a unit in use is skipped and its
running jobs never lose a path they were given; the last user of a unit calls :func:`collect`
for it on its way out when :func:`needs_collection` says an eviction happened since the unit's
last collection. A link is garbage when its inode is no longer one of an object of a
registered cache (evicted, or replaced by a fresh copy after a failed check) nor of a live copy
in ``x/``. A link made as a copy (tree and cache on different file systems) is never one of the
cache's inodes: it goes at every collection of an idle unit, which is what keeps such copies
within the quota's reach too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator

from . import lazylog
from .namehash import sha1_hex
from .records import Record

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)
if TYPE_CHECKING:
    from os import PathLike

    StrPath = str | PathLike[str]  # a str or a pathlib.Path: pathlib is not imported at run's start

log = lazylog.get(__name__)

EVICTED_STAMP = "evicted"
LINKED_DIR = "linked"
CACHES_DIR = "caches"
UNITS_DIR = "r"
COPIES_DIR = "x"
_LOCK = "lock"
_LINKS = "d"
_COLLECTED = "collected"
_RETIRED = "retired"
# File times come from the kernel's coarse clock, which may lag time.time_ns() by a tick.
_CLOCK_SLACK_NS = 1_000_000_000
# Where a cache keeps objects: ``XX/rest`` and ``assembled/XX/rest`` (see cache.py's layout).
_OBJECT_PARENTS = ("", "assembled/")


class Collection(Record):
    """What one :func:`collect` did."""

    __slots__ = (
        "units_collected", "units_removed", "units_busy", "links_removed", "copies_removed", "bytes_freed",
    )  # fmt: skip

    def __init__(self) -> None:
        self.units_collected = 0
        self.units_removed = 0
        self.units_busy: list[str] = []
        self.links_removed = 0
        self.copies_removed = 0
        self.bytes_freed = 0  # sizes of files whose last name was removed


def _key(path: str) -> str:
    return sha1_hex(os.fsencode(path))[:16]


def _link_name(directory: str, target: str) -> None:
    """``directory/<key of target>`` -> ``target``, made atomically once."""
    name = _key(target)
    link = os.path.join(directory, name)
    if os.path.lexists(link):
        return
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def register(tree: StrPath, cache_dir: StrPath) -> None:
    """Record that ``tree`` hardlinks objects of ``cache_dir`` (both directions, idempotent)."""
    tree, cache_dir = os.path.abspath(tree), os.path.abspath(cache_dir)
    _link_name(os.path.join(tree, CACHES_DIR), cache_dir)
    _link_name(os.path.join(cache_dir, LINKED_DIR), tree)


def _targets(directory: str) -> list[str]:
    """Existing directories named by the symlinks in ``directory`` (dangling ones removed)."""
    found: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_symlink():
            continue
        target = os.readlink(entry.path)
        if os.path.isdir(target):
            found.append(target)
        else:  # the tree or cache was removed by hand
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    return found


def linked_trees(cache_dir: StrPath) -> list[str]:
    return _targets(os.path.join(cache_dir, LINKED_DIR))


def _touch(path: str) -> None:
    """Create ``path`` empty, or set its times to now."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    os.utime(path)


def note_removal(cache_dir: StrPath) -> None:
    """Called by the cache after removing objects: links to them may now hold stray bytes."""
    _touch(os.path.join(cache_dir, EVICTED_STAMP))


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


def needs_collection(tree: StrPath, unit: StrPath) -> bool:
    """Whether a cache of ``tree`` removed objects after ``unit`` was last collected."""
    last = _mtime_ns(os.path.join(unit, _COLLECTED))
    caches = _targets(os.path.join(tree, CACHES_DIR))
    return any(_mtime_ns(os.path.join(c, EVICTED_STAMP)) > last for c in caches)


def retire_unit(unit: StrPath) -> None:
    """Mark ``unit`` for removal: the next collection that finds it idle deletes all of it
    (the interposer: a revision that no mount state names any more)."""
    with contextlib.suppress(FileNotFoundError):  # the unit is gone already
        _touch(os.path.join(unit, _RETIRED))


def _remove_tree(top: str) -> None:
    """``rm -rf`` that also enters directories without write or search permission for us
    (a shadow tree copies the repository's directory modes) by opening them up first."""
    stack = [top]
    while stack:
        path = stack.pop()
        try:
            os.chmod(path, 0o700)
            with os.scandir(path) as entries:
                subdirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            continue
        stack += subdirs
    import shutil  # start-up time: its archive formats load bz2 and lzma

    shutil.rmtree(top, ignore_errors=True)


class UnitLock:
    """A shared hold on one unit for a process's lifetime: the collector leaves it alone.

    Taken before anything in the unit is created or used. The lock file is checked to still be
    the one in the directory after the lock is granted (a unit removed while we waited would
    otherwise be locked through a dead name).
    """

    def __init__(self, unit: StrPath) -> None:
        self.unit = unit
        path = os.path.join(unit, _LOCK)
        while True:
            os.makedirs(unit, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                st = os.fstat(fd)
                now = os.stat(path)
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                self._fd: int | None = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _live_objects(caches: list[str]) -> tuple[set[str], set[tuple[int, int]]]:
    """Names (``XXrest``) and (dev, inode) of every object of ``caches``, from directory
    listings alone (``d_ino``; one ``stat`` per subdirectory for its device)."""
    names: set[str] = set()
    inodes: set[tuple[int, int]] = set()
    for cache in caches:
        for parent in _OBJECT_PARENTS:
            top = os.path.join(cache, parent) if parent else cache
            try:
                subdirs = [e for e in os.scandir(top) if len(e.name) == 2 and e.is_dir(follow_symlinks=False)]
            except FileNotFoundError:
                continue
            for sub in subdirs:
                try:
                    dev = os.stat(sub.path).st_dev
                    with os.scandir(sub.path) as entries:
                        for e in entries:
                            names.add(sub.name + e.name)
                            inodes.add((dev, e.inode()))
                except FileNotFoundError:
                    continue
    return names, inodes


def _unlink_counted(path: str, result: Collection) -> bool:
    try:
        st = os.lstat(path)
        os.unlink(path)
    except FileNotFoundError:
        return False
    if st.st_nlink == 1 and stat.S_ISREG(st.st_mode):
        result.bytes_freed += st.st_size
    return True


def _collect_copies(
    tree: str, names: set[str], inodes: set[tuple[int, int]], since_ns: int, result: Collection
) -> None:
    """Remove copies of objects that are gone; a copy made since ``since_ns`` (when the objects
    were listed) may be of an object fetched since, and stays."""
    copies = os.path.join(tree, COPIES_DIR)
    try:
        dev = os.stat(copies).st_dev
        entries = list(os.scandir(copies))
    except FileNotFoundError:
        return
    for e in entries:
        if e.name in names:
            inodes.add((dev, e.inode()))
            continue
        try:
            young = e.stat(follow_symlinks=False).st_mtime_ns >= since_ns
        except FileNotFoundError:
            continue
        if young:
            inodes.add((dev, e.inode()))
        elif _unlink_counted(e.path, result):
            result.copies_removed += 1


def _non_directories(tops: list[str]) -> Iterator[os.DirEntry[str]]:
    """Every entry but directories below ``tops``, depth first, without recursion; a directory
    removed meanwhile (by a concurrent collector) is skipped."""
    stack = list(tops)
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    else:
                        yield e
        except FileNotFoundError:
            continue


def _collect_links(directory: str, dev: int, inodes: set[tuple[int, int]], result: Collection) -> None:
    """Remove the files under ``directory`` whose inode is not live."""
    for e in _non_directories([directory]):
        if (dev, e.inode()) not in inodes and _unlink_counted(e.path, result):
            result.links_removed += 1


def held_outside(cache_dir: StrPath) -> int:
    """Bytes that the trees linked to ``cache_dir`` keep on disk besides the caches' objects:
    links of running jobs to evicted objects, copies in ``x/`` (for ``cache stat``)."""
    held: dict[tuple[int, int], int] = {}
    for tree in linked_trees(cache_dir):
        _names, inodes = _live_objects(_targets(os.path.join(tree, CACHES_DIR)))
        tops = [os.path.join(tree, COPIES_DIR)] + [os.path.join(unit, _LINKS) for unit in _units(tree)]
        for e in _non_directories(tops):
            with contextlib.suppress(FileNotFoundError):
                st = e.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in inodes:
                    held[(st.st_dev, st.st_ino)] = st.st_size
    return sum(held.values())


def _units(tree: str) -> list[str]:
    units: list[str] = []
    try:
        for a in os.scandir(os.path.join(tree, UNITS_DIR)):
            if a.is_dir(follow_symlinks=False):
                units += [b.path for b in os.scandir(a.path) if b.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        pass
    return units


def collect(tree: StrPath, only: StrPath | None = None) -> Collection:
    """Remove links and copies in ``tree`` that hold objects no registered cache has any more.

    Every unit (or just ``only``) that no process holds is collected; busy ones are listed.
    Errors other than a file vanishing under a concurrent collector are logged, not raised: a
    collection is housekeeping and must never fail the eviction or job that triggered it.
    """
    tree = os.fspath(tree)
    only = None if only is None else os.fspath(only)
    result = Collection()
    caches = _targets(os.path.join(tree, CACHES_DIR))
    if not caches:
        return result
    try:
        inodes: set[tuple[int, int]] | None = None
        if only is None or not os.path.exists(os.path.join(only, _RETIRED)):  # else removed whole: no scan
            started = time.time_ns() - _CLOCK_SLACK_NS
            names, inodes = _live_objects(caches)
            _collect_copies(tree, names, inodes, started, result)
        for unit in [only] if only is not None else _units(tree):
            _collect_unit(unit, inodes, result)
    except OSError as exc:
        log.warning("cannot collect stray links in %s: %s", tree, exc)
    if result.links_removed or result.copies_removed or result.units_removed:
        log.info(
            "%s: removed %d links and %d copies of objects the cache evicted (%d bytes freed), "
            "%d retired units",
            tree,
            result.links_removed,
            result.copies_removed,
            result.bytes_freed,
            result.units_removed,
        )
    return result


def _collect_unit(unit: str, inodes: set[tuple[int, int]] | None, result: Collection) -> None:
    try:
        fd = os.open(os.path.join(unit, _LOCK), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:  # the unit is gone
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            result.units_busy.append(unit)
            return
        if os.path.exists(os.path.join(unit, _RETIRED)):
            _remove_tree(unit)  # a process waiting for the lock finds its file gone, and retries
            result.units_removed += 1
            return
        if inodes is None:  # it was retired when collect() looked, and made again since
            return
        _touch(os.path.join(unit, _COLLECTED))
        links = os.path.join(unit, _LINKS)
        try:
            dev = os.stat(links).st_dev
        except FileNotFoundError:
            return
        _collect_links(links, dev, inodes, result)
        result.units_collected += 1
    finally:
        os.close(fd)
