"""File-system policy for a job: a mount list (``-m``/``-M``/``--private-tmp``) and denials.

:class:`Policy` walks a *logical* absolute path (what the job wrote, made absolute with its
logical cwd or directory fd) the way the kernel would, but in the job's namespace: at every
component the mount table (:mod:`.mountlist`) says which host path stands for it; symlinks are
read on the host and their targets interpreted in the job's namespace again (so a link in /tmp
pointing to /home/x is denied like /home/x itself); ``..`` is taken on the logical path (``..``
from a redirected /tmp leads to the logical /, not to the host parent of the target). The
outcome is the host path to hand to the kernel, an errno, or the rest of a /cvmfs path for the
repository namespace.

Costs: matching is a dictionary lookup per component; each component that must be followed is
``lstat``-ed once, and the answer is remembered for entries of directories only root can change
(``/usr/lib/...``), so a warm walk of a system path makes no syscall at all; a whole walk made
only of such answers is remembered too (``find -ls`` stats ``/etc/localtime``, a symlink to
``/usr/share/zoneinfo/...``, once per entry: one dictionary lookup after the first). A job
running as root can change those directories itself: every write it makes (a walk for writing,
``fchmod``...) forgets what was remembered. Changes made meanwhile by root *outside* the job
are not seen, for any user. Without a policy none of this runs.

Denials report EACCES (like Parrot's ``DENY``; the job can still see the name in its parent's
listing, and "Permission denied" says why it cannot go further); ``ENOENT`` entries report ENOENT.
A denied directory that has allowed entries below it (``/dev`` with ``/dev/null``) can be walked
through to them but not listed or opened itself.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cvmfs_client import lazylog

from .mountlist import DENY, ENOENT, LOCAL, REDIRECT, RWX, W_OK, Line, MountTable, _norm, prefixes
from .ptrace_api import status_field
from .syscalls import MOVE, O_ACCMODE, O_PATH, O_RDONLY, O_RDWR, R_OK
from .vfs import names_directory

log = lazylog.get(__name__)

MAX_SYMLINKS = 40
_CACHE_LIMIT = 50_000

SANDBOX_DENY = ("/home", "/root", "/sys", "/proc", "/dev")
SANDBOX_DEV = ("null", "zero", "random", "urandom", "tty", "fd", "pts", "shm", "stdin", "stdout", "stderr")
SANDBOX_PROC = ("self", "thread-self")
# always writable under --allow-write: devices every program may write to
WRITABLE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/pts")  # + own /proc/PID/fd


def sandbox_lines() -> list[Line]:
    """The ``--sandbox`` preset as mount-list entries (later ones win, as in a file)."""
    lines = [Line(p, DENY, "", 0o7, False, "--sandbox") for p in SANDBOX_DENY]
    lines += [Line(f"/dev/{name}", LOCAL, "", 0o7, False, "--sandbox") for name in SANDBOX_DEV]
    lines += [Line(f"/proc/{name}", LOCAL, "", 0o7, False, "--sandbox") for name in SANDBOX_PROC]
    return lines


def deny_line(path: str) -> Line:
    from .mountlist import _check_path

    origin = f"--deny {path}"
    return Line(_norm(_check_path(path, "--deny PATH", origin)), DENY, "", 0o7, False, origin)


@dataclass
class Walk:
    """Outcome of :meth:`Policy.walk`: exactly one of ``err``, ``cvmfs`` or ``real`` is set."""

    err: int = 0
    real: str = ""  # host path for the kernel
    logical: str = ""  # canonical logical path (what was checked)
    changed: bool = False  # the kernel, given the job's own path, would reach something else
    cvmfs: str = ""  # a /cvmfs path (rest unresolved) for the repository namespace


class Policy:
    """The job's mount table plus the sandbox's own-/proc rule; see the module docstring."""

    def __init__(
        self, table: MountTable, own_proc: bool = False, writable: Sequence[str] | None = None
    ) -> None:
        self.table = table
        self.own_proc = own_proc  # /proc DENY except the job's own /proc/PID entries
        # --allow-write: logical prefixes where writes are allowed (None: no restriction)
        self.writable = None if writable is None else {_norm(p) for p in (*writable, *WRITABLE_DEVICES)}
        self._write_denied: set[str] = set()
        self.tracer_pid = os.getpid()
        self._tracer_s = str(self.tracer_pid)
        self.cvmfs_free = table.match("/cvmfs") is None or table.match("/cvmfs").action == LOCAL  # type: ignore[union-attr]
        self.redirects = any(e.action == REDIRECT for e in table.entries)  # host paths renamed
        self._static_ok = True
        self._job_is_root = os.geteuid() == 0  # its writes may change "static" directories
        self._cache: dict[str, tuple[bool, str, bool]] = {}  # real path -> see _lstat
        self._walks: dict[tuple[str, bool, int, bool], Walk] = {}  # whole walks of static paths
        try:
            st = os.stat(table.real("/", table.match("/")))  # the job's / (a package's root...)
            self._root_static = self._static_ok and st.st_uid == 0 and not st.st_mode & 0o022
        except OSError:
            self._root_static = False

    # -- mapping ----------------------------------------------------------------------------------

    def logical(self, real: str) -> str | None:
        """The job's name for the host path ``real``; ``None`` if the job cannot name it.

        That is the case of a host path hidden by a redirect (the host's /tmp/x under
        ``--private-tmp``), reached through a cwd or fd the job brought along from outside.
        """
        table = self.table
        found = table.logical(real)
        if table.real(found, table.match(found)) != real:
            return None
        return found

    def check(self, logical: str, need: int, tgid: int = 0, tid: int = 0) -> int:
        """0 if ``logical`` may be accessed with the access bits ``need``, else an errno.

        ``need`` may hold :data:`~.syscalls.MOVE` (a rename): then a directory holding a denied
        path is refused too, since under its new name the denial would no longer match.
        """
        entry = self.table.match(logical)
        if need & W_OK and self.writable is not None and not self.may_write(logical, tgid, tid):
            return errno.EACCES
        if need & MOVE and self._holds_denial(logical):
            return errno.EACCES
        if logical.startswith("/proc/") and self._is_tracer(logical[6:].split("/", 1)[0], tgid, tid):
            return errno.EACCES
        if entry is None:
            return 0
        if entry.action in (DENY, ENOENT):
            if self._own_proc(entry.prefix, logical, tgid, tid):
                return 0
            return errno.EACCES if entry.action == DENY else errno.ENOENT
        if need & RWX & ~entry.mode:
            return errno.EACCES
        return 0

    def _holds_denial(self, logical: str) -> bool:
        below = logical.rstrip("/") + "/"
        return any(e.action in (DENY, ENOENT) and e.prefix.startswith(below) for e in self.table.entries)

    def _is_tracer(self, pid: str, tgid: int, tid: int) -> bool:
        """Whether ``/proc/<pid>`` is the tracer (or one of its threads), not the caller: never
        the job's to see, whatever the policy (its ``mem`` would let the job rewrite the tracer)."""
        if not pid.isdigit() or int(pid) in (tgid, tid):
            return False
        if pid == self._tracer_s:
            return True
        return status_field(pid, b"Tgid:") == self.tracer_pid

    def may_write(self, logical: str, tgid: int = 0, tid: int = 0) -> bool:
        """--allow-write: whether ``logical`` lies under an allowed prefix (logs refusals)."""
        writable = self.writable
        if writable is None or any(p in writable for p in prefixes(logical)):
            return True
        if logical.startswith("/proc/"):
            pid = logical[6:].split("/", 1)[0]
            if pid in (str(tgid), str(tid)):  # the job's own fds: /dev/stdout and the like
                return True
        if len(self._write_denied) < 1000 and logical not in self._write_denied:
            self._write_denied.add(logical)
            log.warning("write refused (not under --allow-write): %s", logical)
        return False

    def _own_proc(self, prefix: str, logical: str, tgid: int, tid: int) -> bool:
        if not self.own_proc or prefix != "/proc" or not logical.startswith("/proc/"):
            return False
        pid = logical[6:].split("/", 1)[0]
        if not pid.isdigit():
            return False
        if int(pid) in (tgid, tid):
            return True
        return status_field(pid, b"TracerPid:") == self.tracer_pid

    # -- the walk ---------------------------------------------------------------------------------

    def written(self) -> None:
        """The job is about to change the file system: under root, forget what was remembered."""
        if self._job_is_root and (self._cache or self._walks):
            self._cache.clear()
            self._walks.clear()

    def _lstat(self, real: str, static: bool) -> tuple[bool, str, bool] | None:
        """(is a symlink, its target, is a directory only root can change) for a host path.

        ``None`` if it cannot be looked up. Remembered when its parent is such a directory.
        """
        found = self._cache.get(real)
        if found is not None:
            return found
        try:
            st = os.lstat(real)
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                found = (True, os.readlink(real), False)
            else:
                fixed = stat.S_ISDIR(mode) and st.st_uid == 0 and not mode & 0o022
                found = (False, "", fixed and self._static_ok and not real.startswith("/proc"))
        except OSError:
            return None
        if static and self._static_ok and not real.startswith("/proc"):
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[real] = found
        return found

    def walk(
        self,
        path: str,
        follow: bool,
        need: int = 0,
        tgid: int = 0,
        tid: int = 0,
        reverse: Callable[[str], str | None] | None = None,
        mapped: bool = True,
    ) -> Walk:
        """Resolve the logical absolute ``path``; ``follow`` applies to its last component.

        ``mapped=False``: ``path`` is a host path outside the job's namespace (see
        :meth:`logical`): denials are checked, redirects not applied.
        """
        key = (path, follow, need, mapped)
        if need & W_OK:
            self.written()
        else:
            found = self._walks.get(key)
            if found is not None:
                return found
        steady = not need & W_OK  # every answer on the way is one that cannot change: remember
        table = self.table
        real_of = table.real if mapped else _same
        trailing = names_directory(path) and path != "/"
        follow = follow or trailing
        todo = [c for c in path.split("/") if c and c != "."]
        todo.reverse()
        done: list[str] = []
        changed = False
        links = 0
        parent_static = self._root_static
        rest = ""
        while todo:
            c = todo.pop()
            if c == "..":
                if done:
                    done.pop()
                    parent_static = False  # not known without a lookup: only the cache is lost
                continue
            last = not todo
            if len(done) == 1 and done[0] == "proc" and c in ("self", "thread-self") and (follow or not last):
                todo.extend([str(tgid)] if c == "self" else [str(tid), "task", str(tgid)])
                continue
            if not done and c == "cvmfs" and self.cvmfs_free:
                tail = "/".join(reversed(todo))
                tail = "/cvmfs" + ("/" + tail if tail else "") + ("/" if trailing else "")
                return Walk(cvmfs=tail, changed=True)
            done.append(c)
            if last and not follow:
                break
            logical = "/" + "/".join(done)
            if len(done) == 2 and done[0] == "proc" and self._is_tracer(c, tgid, tid):
                return Walk(err=errno.EACCES)
            entry = table.match(logical)
            if (
                entry is not None
                and entry.action in (DENY, ENOENT)
                and not self._own_proc(entry.prefix, logical, tgid, tid)
                and (last or not table.passable(entry))
            ):
                denied = Walk(err=errno.EACCES if entry.action == DENY else errno.ENOENT)
                return self._remember(key, denied) if steady else denied
            real = real_of(logical, entry)
            if real != logical:
                changed = True
            static = parent_static and (entry is None or entry.prefix != logical)
            steady = steady and static and not real.startswith("/proc")
            found = self._lstat(real, static)
            if found is None:
                steady = False  # missing now, maybe created later
                rest = "/".join(reversed(todo))  # missing or unreadable: the kernel reports it
                break
            if not found[0]:
                parent_static = found[2]
                continue
            target = found[1]
            if len(done) >= 3 and done[0] == "proc" and done[1].isdigit():  # a magic link
                # The last component: the kernel reaches the open object itself (it may have no
                # name in the job's namespace: pipe:[..], a file opened before the job started).
                if last or not target.startswith("/") or target.endswith(" (deleted)"):
                    if last and need and target.startswith("/") and not target.endswith(" (deleted)"):
                        # Reopening through the link: what the fd does not already allow (writing
                        # through a read-only fd, anything through an O_PATH fd) is checked on the
                        # file's own name.
                        missing = need & ~_fd_grants(real)
                        name = reverse(target) if reverse is not None else self.logical(target)
                        err = self.check(name or target, missing, tgid, tid) if missing else 0
                        if err:
                            return Walk(err=err)
                    rest = "/".join(reversed(todo))
                    break
                name = reverse(target) if reverse is not None else self.logical(target)
                if name is None:  # a directory outside the job's namespace
                    tail = "/".join(reversed(todo)) + ("/" if trailing else "")
                    found_w = self.walk(target + "/" + tail, follow, need, tgid, tid, reverse, False)
                    return Walk(found_w.err, found_w.real, found_w.logical, True, found_w.cvmfs)
                target = name
                changed = True
            links += 1
            if links > MAX_SYMLINKS:
                return Walk(err=errno.ELOOP)
            done.pop()
            if target.startswith("/"):
                done = []
                parent_static = self._root_static
            todo.extend(reversed([p for p in target.split("/") if p and p != "."]))
        logical = "/" + "/".join(done)
        err = self.check(logical, need, tgid, tid)
        if err:
            return self._remember(key, Walk(err=err)) if steady else Walk(err=err)
        entry = table.match(logical)
        real = real_of(logical, entry)
        if real != logical:
            changed = True
        if rest:
            real = real.rstrip("/") + "/" + rest
        if trailing:
            real = real.rstrip("/") + "/"
        done_w = Walk(real=real, logical=logical, changed=changed)
        return self._remember(key, done_w) if steady else done_w

    def _remember(self, key: tuple[str, bool, int, bool], found: Walk) -> Walk:
        """Keep a walk that only met answers that cannot change (never for /proc, writes,
        missing components). Callers must not change a :class:`Walk` they are given."""
        if len(self._walks) >= _CACHE_LIMIT:
            self._walks.clear()
        self._walks[key] = found
        return found


__all__ = ["Policy", "Walk", "sandbox_lines", "deny_line", "REDIRECT"]


def _same(path: str, entry: object) -> str:
    return path


def _fd_grants(link: str) -> int:
    """The access bits an open fd already gives, for the magic link ``/proc/PID/fd/N``.

    Read from ``/proc/PID/fdinfo/N`` (``flags:`` in octal); 0 for other magic links (``exe``,
    ``cwd``...) and O_PATH fds, which give no access to content.
    """
    head, sep, n = link.rpartition("/fd/")
    if not sep or not n.isdigit():
        return 0
    try:
        with open(f"{head}/fdinfo/{n}", "rb") as f:
            for line in f:
                if line.startswith(b"flags:"):
                    flags = int(line.split()[1], 8)
                    break
            else:
                return 0
    except (OSError, ValueError, IndexError):
        return 0
    if flags & O_PATH:
        return 0
    acc = flags & O_ACCMODE
    return R_OK if acc == O_RDONLY else W_OK if acc != O_RDWR else R_OK | W_OK
