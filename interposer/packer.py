"""``cvmfs-client package create``: copy what a recorded job used into a package (:mod:`.package`).

Every name-list path is walked component by component the way the kernel would walk it in the
job's namespace: ``/cvmfs/FQRN/...`` in the repository (through the client, verified, with
the configuration ``cvmfs-client run`` uses), everything else on the host. Each directory on
the way is made in the package with its mode and times, each symlink is made as a symlink with
the target the job saw (variant symlinks expanded) and its target is walked in turn (as the
kernel follows it), and ``..`` is taken after symlinks. Then the entry itself, as Parrot's
``parrot_package_create`` does:

- ``fullcopy`` regular file: its content, mode and times;
- ``metadatacopy`` regular file: an empty file of the same size (sparse: ``truncate``), mode and
  times, so ``stat`` answers as before and no content is stored;
- directory: itself; a ``fullcopy`` directory (the job listed or opened it) also gets each of its
  entries as ``metadatacopy``, so a listing shows what it showed;
- devices, fifos and sockets: not packaged, listed in the manifest (``special``).

Paths that do not exist are left absent (a name list also records failed lookups: library and
module search paths; the package must reproduce those failures). ``/proc``, ``/dev``, ``/sys``
are never packaged (``package run`` shows the host's), nor the package itself.

A job's programs need files no system call of it names, so the name list cannot hold them: the
ELF interpreter (PT_INTERP, opened by the kernel at ``execve``) and the ``#!`` interpreter of a
script the kernel ran. They are read from each packaged executable and added as ``fullcopy``.

Modes: permission bits as on the source, without set-user/group-ID (meaningless under ptrace's
no_new_privs); directories get ``u+rwx`` as well, so the package can be extended and removed.
Times: atime and mtime (a repository has mtime only). Owners: the packing user's.

The package is built beside its destination under a temporary name and renamed into place at
the end: an interrupted run leaves no half package.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

from cvmfs_client.errors import CvmfsError, FetchError, LookupFailure

from . import elf
from .namelist import env_bytes, write_atomic
from .package import (
    ENV_LIST,
    FULL,
    MANIFEST,
    META,
    NAME_LIST,
    ROOT,
    Manifest,
    PackageError,
    PackageUsageError,
    SourceVanished,
    cwd_of,
    in_tree,
    is_kernel_path,
    parse_env,
    plan,
)
from .translate import BINPRM_BUF_SIZE, _parse_shebang

if TYPE_CHECKING:
    from cvmfs_client.repository import Repository

log = logging.getLogger(__name__)

MAX_SYMLINKS = 40  # as the kernel
_COPY_BLOCK = 1 << 24
_DROP_BITS = stat.S_ISUID | stat.S_ISGID
ABSENT, LEFT_OUT = "absent", "left out"


class _NoPermission(Exception):
    """A host path this user may not look up (EACCES on the way)."""


@dataclass(frozen=True, slots=True)
class Node:
    """What packaging needs to know of an entry."""

    kind: str  # "d" directory, "l" symlink, "f" regular file, "o" other (device, fifo, socket)
    mode: int  # permission bits
    size: int
    mtime_ns: int
    atime_ns: int


class RepositoryUnavailable(PackageError):
    """A repository named by the name list cannot be opened (the cause's exit code is kept)."""

    def __init__(self, fqrn: str, cause: CvmfsError) -> None:
        super().__init__(f"/cvmfs/{fqrn}: cannot read the repository: {cause}")
        self.fqrn = fqrn
        self.exit_code = cause.exit_code
        # No server has it (HTTP 404 everywhere): no such repository, as the job found too
        # (node looks for /cvmfs/package.json).
        self.missing = isinstance(cause, FetchError) and cause.not_found


_CVMFS_ROOT = Node("d", 0o755, 0, 0, 0)


def _host_node(st: os.stat_result) -> Node:
    mode = st.st_mode
    kind = "d" if stat.S_ISDIR(mode) else "l" if stat.S_ISLNK(mode) else "f" if stat.S_ISREG(mode) else "o"
    return Node(kind, stat.S_IMODE(mode), st.st_size, st.st_mtime_ns, st.st_atime_ns)


class Sources:
    """Reads the job's paths: ``/cvmfs`` through the client, anything else on the host."""

    def __init__(self, open_repo: Callable[[str], Repository]) -> None:
        self._open_repo = open_repo
        self._repos: dict[str, Repository | RepositoryUnavailable] = {}

    def close(self) -> None:
        for repo in self._repos.values():
            if not isinstance(repo, RepositoryUnavailable):
                repo.close()

    @property
    def root_hashes(self) -> dict[str, str]:
        return {
            name: r.root_hash.hex
            for name, r in self._repos.items()
            if not isinstance(r, RepositoryUnavailable)
        }

    def _repo(self, fqrn: str) -> Repository:
        found = self._repos.get(fqrn)
        if found is None:
            try:
                found = self._open_repo(fqrn)
            except CvmfsError as exc:
                found = RepositoryUnavailable(fqrn, exc)
            self._repos[fqrn] = found
        if isinstance(found, RepositoryUnavailable):
            raise found
        return found

    @staticmethod
    def _split(path: str) -> tuple[str, str] | None:
        """``/cvmfs/FQRN/a`` -> (FQRN, ``/a``); ``None`` for host paths and ``/cvmfs`` itself."""
        if not path.startswith("/cvmfs/"):
            return None
        fqrn, _, inner = path[7:].partition("/")
        return fqrn, "/" + inner if inner else ""

    def lstat(self, path: str) -> Node | None:
        """The entry itself (not a symlink's target); ``None`` if there is none."""
        if path == "/cvmfs":
            return _CVMFS_ROOT  # the client's namespace, whatever the host has there
        where = self._split(path)
        if where is None:
            try:
                return _host_node(os.lstat(path))
            except (FileNotFoundError, NotADirectoryError):
                return None
            except PermissionError:
                raise _NoPermission(path) from None
            except OSError as exc:
                raise PackageError(f"{path}: cannot look it up: {exc.strerror}") from None
        fqrn, inner = where
        if "." not in fqrn:
            return None  # not a repository name: nothing there under the interposer either
        try:
            repo = self._repo(fqrn)
        except RepositoryUnavailable as exc:
            if exc.missing:
                return None
            raise
        try:
            e = repo.lookup(inner)
        except LookupFailure as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        kind = "d" if e.is_dir else "l" if e.is_symlink else "f" if e.is_regular else "o"
        mtime = e.mtime * 1_000_000_000 + (e.mtime_ns or 0)
        return Node(kind, stat.S_IMODE(e.mode), e.size, mtime, mtime)

    def readlink(self, path: str) -> str:
        where = self._split(path)
        if where is None:
            try:
                return os.readlink(path)
            except OSError as exc:
                raise SourceVanished(path, f"symlink unreadable ({exc.strerror})") from None
        return self._repo(where[0]).readlink(where[1])  # $(VAR) expanded, as the job saw it

    def listdir(self, path: str) -> list[str]:
        if path == "/cvmfs":
            return []  # which repositories exist is configuration, not content
        where = self._split(path)
        if where is None:
            try:
                return sorted(os.listdir(path))
            except (FileNotFoundError, NotADirectoryError):
                raise SourceVanished(path, "removed") from None
            except OSError as exc:
                raise PackageError(f"{path}: cannot list it: {exc.strerror}") from None
        return sorted(e.name for e in self._repo(where[0]).listdir(where[1]))

    def copy(self, path: str, dest: str) -> int:
        """Write the content of regular file ``path`` to the new file ``dest``; bytes written."""
        where = self._split(path)
        if where is not None:
            with self._repo(where[0]).open(where[1]) as src:
                return _write_from(src, dest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise SourceVanished(path, "removed") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SourceVanished(path, "replaced by a symlink") from None
            raise PackageError(f"{path}: cannot read it: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SourceVanished(path, "no longer a regular file")
            return _copy_fd(fd, path, dest)
        finally:
            os.close(fd)


def _new_file(dest: str) -> int:
    return os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _copy_fd(fd: int, path: str, dest: str) -> int:
    out = _new_file(dest)
    total = 0
    try:
        while True:
            try:
                n = os.sendfile(out, fd, None, _COPY_BLOCK)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS) and total == 0:
                    with os.fdopen(os.dup(fd), "rb") as src:
                        os.close(out)
                        os.unlink(dest)
                        return _write_from(src, dest)
                raise PackageError(f"{path}: cannot copy it: {exc.strerror}") from None
            if n == 0:
                return total
            total += n
    finally:
        with contextlib.suppress(OSError):
            os.close(out)


def _write_from(src: BinaryIO, dest: str) -> int:
    with os.fdopen(_new_file(dest), "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
        return out.tell()


@dataclass
class Progress:
    """Counters for the progress line (``total``: name-list entries)."""

    done: int = 0
    total: int = 0
    files: int = 0  # regular files with content
    nbytes: int = 0
    started: float = field(default_factory=time.monotonic)


def format_progress(p: Progress, now: float) -> str:
    elapsed = max(now - p.started, 0.0)
    return (
        f"{p.done}/{p.total} paths, {p.files} files with content ({p.nbytes / 2**20:.1f} MiB), "
        f"{elapsed:.0f} s"
    )


class Packer:
    """Builds one package tree under ``root`` (a new directory); see the module docstring."""

    def __init__(
        self,
        sources: Sources,
        root: Path,
        excluded: Iterable[str] = (),
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.src = sources
        self.root = str(root)
        self.excluded = [os.path.normpath(p) for p in excluded]
        self.progress = progress
        self.stats = Progress()
        self.manifest = Manifest()
        self.counts = {"fullcopy": 0, "metadatacopy": 0, "directories": 0, "symlinks": 0, "bytes": 0}
        self._nodes: dict[str, Node | None] = {}
        self._dirs: dict[str, Node] = {}  # made in the package; their metadata is set at the end
        self._files: dict[str, str] = {}  # regular file -> FULL/META as packaged
        self._listed: set[str] = set()  # directories whose entries were added
        self._links: set[str] = set()
        self._wanted: set[str] = set()
        self._extra: list[str] = []  # interpreters found in packaged programs, to place
        self._queued: set[bytes] = set()

    # -- the package side ---------------------------------------------------------------------

    def _pkg(self, path: str) -> str:
        return self.root if path == "/" else self.root + path

    def _mkdir(self, path: str, node: Node) -> None:
        if path in self._dirs:
            return
        if path != "/":
            with contextlib.suppress(FileExistsError):
                os.mkdir(self._pkg(path), 0o700)
        self._dirs[path] = node
        self.counts["directories"] += 1

    def _symlink(self, path: str, target: str, node: Node) -> None:
        if path in self._links:
            return
        dest = self._pkg(path)
        os.symlink(target, dest)
        os.utime(dest, ns=(node.atime_ns, node.mtime_ns), follow_symlinks=False)
        self._links.add(path)
        self.counts["symlinks"] += 1

    def _file(self, path: str, node: Node, how: str) -> None:
        had = self._files.get(path)
        if had == FULL or (had == META and how == META):
            return
        dest = self._pkg(path)
        if had is not None:
            os.unlink(dest)  # a metadata-only copy, now wanted with content
            self.counts["metadatacopy"] -= 1
        if how == FULL:
            n = self.src.copy(path, dest)
            self.counts["bytes"] += n
        else:
            os.close(_new_file(dest))
            os.truncate(dest, node.size)  # a hole: the size without the content
        os.utime(dest, ns=(node.atime_ns, node.mtime_ns))
        os.chmod(dest, node.mode & ~_DROP_BITS)
        self._files[path] = how
        self.counts[how] += 1
        if how == FULL and node.mode & 0o111:
            self._interpreter_of(dest)

    def _interpreter_of(self, local: str) -> None:
        """Queue what the kernel opens to run this file: a ``#!`` or ELF interpreter."""
        head = elf.read_at(os.fsencode(local))
        if head is None:
            return
        found: bytes | None = None
        if head.startswith(b"#!"):
            found, _ = _parse_shebang(head[:BINPRM_BUF_SIZE])
        elif elf.elf_class(head) is not None:
            interp = elf.read_interp(os.fsencode(local), head)
            found = interp.path if interp is not None else None
        if found and found.startswith(b"/") and found not in self._queued:
            self._queued.add(found)
            self._extra.append(os.fsdecode(found))

    def finish(self) -> None:
        """Directory modes and times, deepest first (adding entries changed their mtimes)."""
        for path in sorted(self._dirs, key=lambda p: p.count("/"), reverse=True):
            node = self._dirs[path]
            dest = self._pkg(path)
            os.utime(dest, ns=(node.atime_ns, node.mtime_ns))
            os.chmod(dest, (node.mode & ~_DROP_BITS) | stat.S_IRWXU)

    # -- the source side ----------------------------------------------------------------------

    def _lstat(self, path: str) -> Node | None:
        if path in self._nodes:
            return self._nodes[path]
        found = self.src.lstat(path)
        self._nodes[path] = found
        return found

    def _left_out(self, path: str) -> bool:
        if is_kernel_path(path) or any(in_tree(path, p) for p in self.excluded):
            if path not in self.manifest.left_out and len(self.manifest.left_out) < 10_000:
                self.manifest.left_out.append(path)
            return True
        return False

    def _walk(self, path: str) -> tuple[str, Node] | str:
        """Make every directory and symlink on the way to ``path``; where it leads and what it is.

        Or why it leads nowhere: ABSENT (missing, not a directory, too many links) or LEFT_OUT.
        """
        todo = [c for c in path.split("/") if c and c != "."]
        todo.reverse()
        done: list[str] = []
        links = 0
        node = self._lstat("/")
        if node is None or node.kind != "d":
            raise PackageError("/: not a directory")
        self._mkdir("/", node)
        while todo:
            c = todo.pop()
            if c == "..":
                if done:
                    done.pop()
                    node = self._lstat("/" + "/".join(done)) or node  # a directory walked before
                continue
            here = "/" + "/".join([*done, c])
            if self._left_out(here):
                return LEFT_OUT
            try:
                found = self._lstat(here)
            except _NoPermission:
                # Another user's directory (a PATH entry such as /root/.cargo/bin that the
                # job's shell searched): the job could not look there either.
                if here not in self.manifest.unreadable:
                    self.manifest.unreadable.append(here)
                return LEFT_OUT
            if found is None:
                return ABSENT
            if found.kind == "l":
                target = self.src.readlink(here)
                self._symlink(here, target, found)
                links += 1
                if links > MAX_SYMLINKS:
                    return ABSENT
                if target.startswith("/"):
                    done = []
                todo.extend(reversed([p for p in target.split("/") if p and p != "."]))
                continue
            if todo and found.kind != "d":
                return ABSENT
            if found.kind == "d":
                self._mkdir(here, found)
            done.append(c)
            node = found
        return "/" + "/".join(done), node

    def place(self, path: str, how: str, listed: bool = True) -> None:
        """Put ``path`` (as the job named it) into the package, as ``how`` says."""
        try:
            found = self._walk(path)
        except RepositoryUnavailable as exc:
            if how == FULL:
                raise
            log.warning("%s (only looked up by the job: left out)", exc)
            found = ABSENT
        if isinstance(found, str):
            if found == ABSENT and listed and path not in self.manifest.absent:
                self.manifest.absent.append(path)
            return
        real, node = found
        if node.kind == "d":
            if how == FULL and real not in self._listed:
                self._listed.add(real)
                for name in self.src.listdir(real):
                    self.place(f"{real.rstrip('/')}/{name}", META, listed=False)
        elif node.kind == "f":
            self._file(real, node, how)
        elif real not in self.manifest.special:
            self.manifest.special.append(real)

    def pack(self, entries: dict[str, str], cwd: str) -> Manifest:
        """Every entry, then interpreters the programs need, then the working directory."""
        self._wanted = set(entries)
        self.stats.total = len(entries)
        for path, how in entries.items():
            self.place(path, how)
            self.stats.done += 1
            if self.progress is not None:
                self.stats.files, self.stats.nbytes = self.counts["fullcopy"], self.counts["bytes"]
                self.progress(self.stats)
        while self._extra:
            interp = self._extra.pop()
            if interp not in self._wanted:
                self._wanted.add(interp)
                self.manifest.added.append(interp)
            self.place(interp, FULL)
        self.place(cwd, META, listed=False)
        found = self._walk(cwd)
        self.manifest.cwd = found[0] if not isinstance(found, str) and found[1].kind == "d" else "/"
        if self.manifest.cwd != cwd:
            log.warning("the job's working directory %s is not a directory: the package starts in /", cwd)
        tmp = self._pkg("/tmp")
        if not os.path.lexists(tmp):  # a job may need a /tmp it never named when recorded
            os.mkdir(tmp, 0o700)
            os.chmod(tmp, 0o1777)
        self.finish()
        self.manifest.counts = dict(self.counts)
        return self.manifest


# -- the whole command ----------------------------------------------------------------------------


def read_inputs(name_list: Path, env_list: Path) -> tuple[dict[str, str], bytes, dict[str, str]]:
    """The plan (path -> how), the name list's bytes and the environment, checked."""
    from cvmfs_client.prewarm import parse_name_list

    try:
        names = name_list.read_bytes()
    except FileNotFoundError:
        raise PackageUsageError(f"name list {name_list}: no such file (write one with cvmfs-client run -n)")
    except OSError as exc:
        raise PackageUsageError(f"name list {name_list}: {exc.strerror}") from None
    try:
        env_data = env_list.read_bytes()
    except FileNotFoundError:
        raise PackageUsageError(
            f"environment list {env_list}: no such file (write one with cvmfs-client run -e)"
        )
    except OSError as exc:
        raise PackageUsageError(f"environment list {env_list}: {exc.strerror}") from None
    text = names.decode("utf-8", "surrogateescape")
    entries = plan((e.path, e.how) for e in parse_name_list(text, str(name_list)))
    if not entries:
        raise PackageUsageError(f"name list {name_list}: no paths in it")
    return entries, names, parse_env(env_data, str(env_list))


def create(
    name_list: Path,
    env_list: Path,
    out: Path,
    open_repo: Callable[[str], Repository],
    cwd: str | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Manifest:
    """Make the package ``out`` (missing or an empty directory) from a name and an environment list."""
    entries, names, env = read_inputs(name_list, env_list)
    out = Path(os.path.abspath(out))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PackageUsageError(f"{out}: exists and is not an empty directory")
    if not out.parent.is_dir():
        raise PackageUsageError(f"{out.parent}: no such directory")
    if cwd is not None and not cwd.startswith("/"):
        raise PackageUsageError(f"--cwd {cwd}: must be an absolute path (the job's name for it)")
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    real_out = os.path.realpath(out)
    sources = Sources(open_repo)
    try:
        os.mkdir(work, 0o700)
        (work / ROOT).mkdir(0o700)
        excluded = (str(out), real_out, str(work), os.path.realpath(work))
        packer = Packer(sources, work / ROOT, excluded, progress)
        manifest = packer.pack(entries, cwd or cwd_of(env))
        manifest.repositories = sources.root_hashes
        manifest.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_atomic(work / NAME_LIST, names)
        write_atomic(work / ENV_LIST, env_bytes(env))
        write_atomic(work / MANIFEST, manifest.to_json().encode())
        os.chmod(work, 0o755)
        if out.exists():
            out.rmdir()
        os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        sources.close()
    return manifest


def opener(cache_dir: Path | None = None, parrot_repos: str | None = None) -> Callable[[str], Repository]:
    """Opens repositories as ``cvmfs-client run`` does (its CVMFS_* settings, ``--cache-dir``,
    a Parrot ``-r`` list), at their current revision (or the pinned one)."""
    from .job import _opener
    from .session import prepare

    open_at = _opener(prepare((), cache_dir, parrot_repos))
    return lambda fqrn: open_at(fqrn, None)  # type: ignore[return-value]


class ProgressPrinter:
    """A redrawn line on a terminal, a plain line every ``interval`` seconds otherwise (logs)."""

    def __init__(
        self,
        stream: TextIO,
        tty: bool,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = tty
        self.interval = interval if interval is not None else (0.1 if tty else 10.0)
        self._clock = clock
        self._last: float | None = None
        self._drawn = False

    def __call__(self, p: Progress) -> None:
        now = self._clock()
        if self._last is None:
            self._last = now  # the first line after one interval: short runs print nothing
            return
        if now - self._last < self.interval:
            return
        self._last = now
        line = format_progress(p, now)
        self.stream.write(f"\r{line}\x1b[K" if self.tty else f"package create: {line}\n")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def summary_lines(manifest: Manifest, out: Path) -> list[str]:
    """What ``package create`` prints when done."""
    c = manifest.counts
    lines = [
        f"package {out}: {c.get('fullcopy', 0)} files with content ({c.get('bytes', 0) / 2**20:.1f} MiB), "
        f"{c.get('metadatacopy', 0)} metadata only, {c.get('directories', 0)} directories, "
        f"{c.get('symlinks', 0)} symlinks; the job starts in {manifest.cwd}"
    ]
    if manifest.added:
        lines.append(
            f"added {len(manifest.added)} interpreter(s) the programs need: {', '.join(manifest.added)}"
        )
    if manifest.absent:
        lines.append(
            f"{len(manifest.absent)} listed paths do not exist (lookups that failed when the job ran, "
            "or files removed since): left absent, see manifest.json"
        )
    if manifest.unreadable:
        lines.append(
            "left out, this user may not look there (nor could the job): "
            + ", ".join(manifest.unreadable[:10])
        )
    if manifest.special:
        lines.append(f"not packaged (devices, fifos, sockets): {', '.join(manifest.special[:10])}")
    for fqrn, root_hash in sorted(manifest.repositories.items()):
        lines.append(f"read /cvmfs/{fqrn} at revision {root_hash}")
    lines.append(f"run it with: cvmfs-client package run {out} -- COMMAND...")
    return lines


__all__ = [
    "Node",
    "Packer",
    "Progress",
    "ProgressPrinter",
    "RepositoryUnavailable",
    "Sources",
    "create",
    "opener",
    "summary_lines",
]
