"""A local shadow of one repository revision: what the kernel sees instead of ``/cvmfs/FQRN``.

Two trees per revision, under ``<base>/r/<fqrn>/<root hash>/``:

``m/`` (metadata)
    Real directories, symlinks (with ``$(VAR)`` already expanded) and *placeholders*: sparse
    regular files with the catalog's size, mode and mtime, hardlinked where the catalog groups
    hardlinks. ``stat``, ``getdents``, ``readlink`` and ``access`` on it run natively and agree
    with each other (same dev/ino from every route, which ``fts`` and ``tar`` check). A
    placeholder holds zeros: nothing may ever open one for content (the translator guarantees
    it: content opens go to ``d/``).

``d/`` (data)
    The same relative paths, created on first open, as hardlinks to verified objects of the
    cache (or copies when a hardlink is impossible). ``execve`` needs an x bit: cache objects
    have it (0555); a 0444 object of another user (a cache shared between users and written
    by an older version) is linked through a mode-0555 copy of it (``<base>/x/``).
    Because every path has its own name here, ``/proc/PID/fd/N``, ``/proc/PID/exe`` and
    ``/proc/PID/maps`` name ``d/<path>`` and map back to ``/cvmfs/FQRN/<path>`` exactly.

Directories are populated lazily, one level at a time, when a path through them is first
resolved; each child directory also gets its own subdirectories created (empty), so that its
link count (2 + subdirectories) is right before it is itself populated. A marker file in
``done/`` records a directory as complete, for later jobs. The trees persist
between jobs (a revision never changes) and are shared by concurrent jobs: every entry is
made under a temporary name and linked into place, so another job sees it complete or not at
all, and "already exists" is success.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterable, Mapping

from cvmfs_client.namehash import md5_hex

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)

if TYPE_CHECKING:  # the catalog module pulls in SQLAlchemy: import it only when mounting
    from cvmfs_client.cache_links import StrPath
    from cvmfs_client.catalog import DirEntry

# A Listing answers "the entries of directory <inner path>" from memory (see vfs.Mount).
Listing = Callable[[str], Mapping[str, "DirEntry"]]
Readlink = Callable[["DirEntry"], str]


class ShadowError(OSError):
    """The shadow tree cannot be written (disk full, permissions): the call gets EIO."""


class ShadowTree:
    """The ``m/`` and ``d/`` trees of one repository revision.

    ``<tree>/r/<fqrn>/<root hash>`` is a unit of a linked tree (:mod:`cvmfs_client.cache_links`):
    it is held shared from here to :meth:`close`, so collecting the links of evicted objects
    never takes a ``d/`` path from under a running job.
    """

    def __init__(
        self, tree: StrPath, fqrn: str, root_hash: str, listing: Listing, readlink: Readlink
    ) -> None:
        from cvmfs_client.cache_links import COPIES_DIR, UNITS_DIR, UnitLock

        self.tree = tree = os.fspath(tree)
        self.root = root = os.path.join(tree, UNITS_DIR, fqrn, root_hash)
        self._hold = UnitLock(root)  # before anything in the unit is made or used
        self.meta = root + "/m"
        self.data = root + "/d"
        self._tmp = root + "/tmp"
        self.markers = root + "/done"  # one file per fully populated directory (_marker)
        self._exec_dir = os.path.join(tree, COPIES_DIR)
        self._listing = listing
        self._readlink = readlink
        self._populated: set[str] = set()
        self._content: dict[str, str] = {}
        self._xattr_names: dict[str, frozenset[str] | None] = {}
        self._counter = 0
        # Placeholders are made as anonymous files and linked into place where the file
        # system has O_TMPFILE (and /proc to link them from): no name to make up and remove.
        self._anonymous = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self._tmp_fd: int | None = None
        self._root_entry: DirEntry | None = None
        self._root_entry_loader: Callable[[], DirEntry] | None = None
        for d in (root, self._tmp, self._exec_dir, self.data, self.markers):
            os.makedirs(d, exist_ok=True)

    def close(self, retire: bool = False) -> None:
        """Let the unit go; collect it if the cache evicted objects while it was held, remove
        it (once no other job holds it) with ``retire``."""
        from cvmfs_client.cache_links import collect, needs_collection, retire_unit

        if self._tmp_fd is not None:
            os.close(self._tmp_fd)
            self._tmp_fd = None
        self._hold.release()
        if retire:
            retire_unit(self.root)
        if retire or needs_collection(self.tree, self.root):
            collect(self.tree, only=self.root)

    # -- metadata tree --------------------------------------------------------------------

    def meta_path(self, inner: str) -> str:
        return self.meta + inner

    def ensure_root_known(self, root_entry: Callable[[], DirEntry]) -> None:
        """``m/`` exists already; its catalog row is fetched only if a populate needs it."""
        self._root_entry_loader = root_entry

    def ensure_root(self, root_entry: DirEntry) -> None:
        """Create ``m/`` itself with the repository root's mode and mtime."""
        self._root_entry = root_entry
        try:
            os.mkdir(self.meta, 0o700)
        except FileExistsError:
            return
        _set_meta(self.meta, root_entry)

    def _marker(self, inner: str) -> str:
        return f"{self.markers}/{md5_hex(inner.encode('utf-8', 'surrogateescape'))}"

    def is_populated(self, inner: str) -> bool:
        """Whether ``m/<inner>`` is complete (this job or an earlier one populated it)."""
        if inner in self._populated:
            return True
        if os.path.exists(self._marker(inner)):
            self._populated.add(inner)
            return True
        return False

    def ensure_populated(self, inner: str) -> None:
        """Every entry of directory ``inner`` exists under ``m/`` (its ancestors must already)."""
        if self.is_populated(inner):
            return
        path = self.meta + inner
        try:
            existing = set(os.listdir(path))
        except FileNotFoundError:
            raise ShadowError(errno.ENOENT, f"shadow directory {path} is missing (parent not populated)")
        entries = self._listing(inner)
        self._populate(inner, path, entries, existing)
        # The marker names the entries that have extended attributes in the catalog ("." for
        # the repository root itself), so that a later job answers the others without opening
        # the catalog (ls -l asks for an ACL of every entry). Written whole, then renamed.
        with_xattrs = [name for name, e in entries.items() if e.xattrs]
        this = self._listing_entry(inner) if not inner else None
        if this is not None and this.xattrs:
            with_xattrs.append(".")
        self._write_marker(inner, with_xattrs)
        self._populated.add(inner)

    def note_xattr_names(self, inner: str, names: Iterable[str]) -> frozenset[str]:
        """Record which entries of ``inner`` have extended attributes, found in the catalog
        for a directory populated before markers named them: its marker is rewritten in the
        current format, so that later jobs need not ask the catalog again."""
        known = frozenset(names)
        if self.is_populated(inner):
            self._write_marker(inner, sorted(known))
        self._xattr_names[inner] = known
        return known

    def _write_marker(self, inner: str, with_xattrs: Iterable[str]) -> None:
        tmp = self._tmp_name()
        with open(tmp, "wb") as f:
            f.write(_MARKER_FORMAT + b"\0".join(n.encode("utf-8", "surrogateescape") for n in with_xattrs))
        os.replace(tmp, self._marker(inner))  # whole or not at all, for a concurrent job

    def xattr_names(self, inner: str) -> frozenset[str] | None:
        """Names of the entries of populated directory ``inner`` that have extended attributes
        in the catalog ("." for the repository root itself); None if not known (a directory
        populated before markers recorded them, or not populated)."""
        known = self._xattr_names.get(inner)
        if known is None and inner not in self._xattr_names:
            try:
                with open(self._marker(inner), "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
            if data.startswith(_MARKER_FORMAT):
                rest = data[len(_MARKER_FORMAT) :]
                known = frozenset(n.decode("utf-8", "surrogateescape") for n in rest.split(b"\0") if n)
            self._xattr_names[inner] = known
        return known

    def _populate(self, inner: str, path: str, entries: Mapping[str, DirEntry], existing: set[str]) -> None:
        st = os.lstat(path)
        writable = stat.S_IMODE(st.st_mode) | 0o700
        if stat.S_IMODE(st.st_mode) != writable:
            os.chmod(path, writable)
        first_of_group: dict[int, str] = {}
        try:
            for name, entry in entries.items():
                target = f"{path}/{name}"
                group = entry.hardlink_group if entry.is_regular else 0
                if name in existing:
                    if group:
                        first_of_group.setdefault(group, target)
                    continue
                if entry.is_dir:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(target, 0o700)
                    _set_meta(target, entry)
                elif entry.is_symlink:
                    self._make_symlink(target, entry)
                elif group and group in first_of_group:
                    _link_noreplace(first_of_group[group], target)
                else:
                    self._make_file(target, entry)
                    if group:
                        first_of_group[group] = target
            for name, entry in entries.items():
                if entry.is_dir:
                    self._make_subdirs(f"{inner}/{name}", f"{path}/{name}", entry)
        finally:
            this = self._listing_entry(inner)
            _set_meta(path, this) if this is not None else os.chmod(path, stat.S_IMODE(st.st_mode))

    def _listing_entry(self, inner: str) -> DirEntry | None:
        if not inner:
            if self._root_entry is None and self._root_entry_loader is not None:
                self._root_entry = self._root_entry_loader()
            return self._root_entry
        parent, _, name = inner.rpartition("/")
        return self._listing(parent).get(name)

    def _make_subdirs(self, inner: str, path: str, entry: DirEntry) -> None:
        """Create the subdirectories of ``inner`` (empty), so that its link count is right."""
        made = False
        for name, child in self._listing(inner).items():
            if child.is_dir:
                sub = f"{path}/{name}"
                try:
                    os.mkdir(sub, 0o700)
                except FileExistsError:
                    continue
                made = True
                _set_meta(sub, child)
        if made:
            _set_meta(path, entry)

    def _tmp_name(self) -> str:
        self._counter += 1
        return f"{self._tmp}/{os.getpid()}.{self._counter}"

    def _make_symlink(self, path: str, entry: DirEntry) -> None:
        tmp = self._tmp_name()
        os.symlink(self._readlink(entry), tmp)
        os.utime(tmp, ns=(_mtime_ns(entry), _mtime_ns(entry)), follow_symlinks=False)
        _link_noreplace(tmp, path)
        os.unlink(tmp)

    def _make_file(self, path: str, entry: DirEntry) -> None:
        """A placeholder: the entry's size (sparse), mode and mtime, complete before it has
        its name (a concurrent job never sees a half-made one)."""
        mode = stat.S_IMODE(entry.mode)
        fmt = stat.S_IFMT(entry.mode)
        if self._anonymous and not entry.is_special and self._make_anonymous(path, entry, mode):
            return
        tmp = self._tmp_name()
        if entry.is_special and fmt in (stat.S_IFIFO, stat.S_IFSOCK):
            os.mknod(tmp, fmt | 0o600)
        else:
            # Devices cannot be made unprivileged: they become empty placeholders.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                if entry.is_regular and entry.size:
                    os.ftruncate(fd, entry.size)  # sparse: no blocks are written
            finally:
                os.close(fd)
        os.chmod(tmp, mode)
        os.utime(tmp, ns=(_mtime_ns(entry), _mtime_ns(entry)))
        _link_noreplace(tmp, path)
        os.unlink(tmp)

    def _make_anonymous(self, path: str, entry: DirEntry, mode: int) -> bool:
        """:meth:`_make_file` with an ``O_TMPFILE`` file: one path lookup for the link instead
        of five for a named temporary (on ext4 a 90,000-entry first walk 25% less time making
        files); False where the file system has no anonymous files."""
        try:
            fd = os.open(self._tmp, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self._anonymous = False
            return False
        try:
            if entry.is_regular and entry.size:
                os.ftruncate(fd, entry.size)  # sparse: no blocks are written
            os.fchmod(fd, mode)
            os.utime(fd, ns=(_mtime_ns(entry), _mtime_ns(entry)))
            if self._tmp_fd is None:
                self._tmp_fd = os.open(self._tmp, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            with contextlib.suppress(FileExistsError):  # another job made it: kept
                # A directory fd makes os.link use linkat(AT_SYMLINK_FOLLOW) (plain link() would
                # link the magic link itself: EXDEV); the paths are absolute, so it is unused.
                os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=self._tmp_fd)
        finally:
            os.close(fd)
        return True

    # -- data tree ------------------------------------------------------------------------

    def data_path(self, inner: str) -> str:
        return self.data + inner

    def content(self, inner: str, materialize: Callable[[], StrPath]) -> str:
        """A path under ``d/`` holding the verified bytes of regular file ``inner``.

        ``materialize`` (the catalog and the cache) is only called the first time, by any job:
        later the ``d/`` link alone answers.
        """
        known = self._content.get(inner)
        if known is not None:
            return known
        path = self.data + inner
        attempts = _LINK_ATTEMPTS
        while not os.path.exists(path):
            source = materialize()
            try:
                if os.lstat(self.meta + inner).st_mode & 0o111:
                    source = self._executable(source)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                _link_or_copy(str(source), path, self._tmp_name)
            except FileNotFoundError:
                # Evicted (or its copy collected) by another process between materialize()
                # and the link: materialize again.
                attempts -= 1
                if attempts == 0:
                    raise
        self._content[inner] = path
        return path

    def _executable(self, obj: StrPath) -> StrPath:
        """The object itself if it can be run: cache objects are 0555 (``OBJECT_MODE``), those
        of an older cache are made so; another user's 0444 object gets a copy of ours."""
        if os.stat(obj).st_mode & 0o111 == 0o111:
            return obj
        try:
            os.chmod(obj, 0o555)
        except OSError:  # not ours (EPERM), or a read-only file system
            return self._executable_copy(obj)
        return obj

    def _executable_copy(self, obj: StrPath) -> str:
        """A mode-0555 copy of a 0444 cache object, shared by every path and revision using it."""
        parent, name = os.path.split(os.fspath(obj))
        final = os.path.join(self._exec_dir, os.path.basename(parent) + name)
        if not os.path.exists(final):
            tmp = self._tmp_name()
            _copyfile(obj, tmp)
            os.chmod(tmp, 0o555)
            _link_noreplace(tmp, final)
            os.unlink(tmp)
        return final


_LINK_ATTEMPTS = 3  # a busy cache may evict an object again before it is linked


def _mtime_ns(entry: DirEntry) -> int:
    return entry.mtime * 1_000_000_000 + (entry.mtime_ns or 0)


_MARKER_FORMAT = b"xattrs:"  # a marker's first bytes; markers of older versions are empty


def _set_meta(path: str, entry: DirEntry) -> None:
    os.chmod(path, stat.S_IMODE(entry.mode))
    os.utime(path, ns=(_mtime_ns(entry), _mtime_ns(entry)), follow_symlinks=False)


def _link_noreplace(src: str, dst: str) -> None:
    """``dst`` becomes another name of ``src``, unless ``dst`` exists (then it is kept)."""
    with contextlib.suppress(FileExistsError):
        os.link(src, dst, follow_symlinks=False)


def _link_or_copy(src: str, dst: str, tmp_name: Callable[[], str]) -> None:
    try:
        _link_noreplace(src, dst)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
            raise
    tmp = tmp_name()
    _copyfile(src, tmp)
    os.chmod(tmp, stat.S_IMODE(os.stat(src).st_mode))
    _link_noreplace(tmp, dst)
    os.unlink(tmp)


def _copyfile(src: StrPath, dst: str) -> None:
    import shutil  # start-up time: its archive formats load bz2 and lzma

    shutil.copyfile(src, dst)
