"""The configuration rules that need no configuration file: repository names, default cache base.

Apart from :mod:`.config` so that ``cvmfs-client run`` can check ``--repo`` names and find its
shadow trees before a job starts without importing the configuration model: its parameter table
and dataclasses cost ~3 ms at every start, and a warm job never reads a configuration file.
:mod:`.config` re-exports these names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from .errors import ConfigError

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)
if TYPE_CHECKING:
    from os import PathLike

_FQRN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)+")


# File systems the node cache refuses (its index is SQLite with file locks, made for one node).
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
# Where the default cache goes when the home directory is on one of them (HPC clusters).
LOCAL_FALLBACKS = ("/var/tmp", "/tmp")


def default_cache_base(
    environ: Mapping[str, str] | None = None, fallbacks: tuple[str, ...] = LOCAL_FALLBACKS
) -> str:
    """Unprivileged default: the real client's ``/var/lib/cvmfs`` is root's; use XDG instead.

    On a cluster the home directory is usually on NFS, GPFS, Lustre..., where the node cache
    cannot live, or read-only on compute nodes (or missing: a batch account's /nonexistent):
    then ``<fallback>/cvmfs-client-<uid>`` on the first node-local fallback where that
    directory is (or can be made) ours alone, rather than a failing default.
    """
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or _home(), ".cache")
    home = os.path.join(xdg, "cvmfs-client")
    if filesystem_type(home) not in NETWORK_FILESYSTEMS and _usable(home):
        return home
    # Programs from /cvmfs run from the cache: a fallback mounted noexec (/tmp often is on
    # compute nodes) only if no other will do.
    for allow_noexec in (False, True):
        for directory in fallbacks:
            candidate = os.path.join(directory, f"cvmfs-client-{os.getuid()}")
            if filesystem_type(candidate) in NETWORK_FILESYSTEMS:
                continue
            if not allow_noexec and _noexec(directory):
                continue
            if _private_dir(candidate):
                return candidate
    return home  # the node cache says what is wrong with it


def _home() -> str:
    """The home directory when ``$HOME`` is unset: the password database's, as ``Path.home()``
    finds it (and ``RuntimeError`` without one, as there)."""
    home = os.path.expanduser("~")
    if home == "~":
        raise RuntimeError("Could not determine home directory.")
    return home


def _noexec(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_NOEXEC)
    except OSError:
        return False


def _usable(path: str) -> bool:
    """Whether directory ``path`` could be made (if missing) and written in, by us: judged on
    its nearest existing ancestor, without making anything (reading settings makes no files)."""
    p = os.path.abspath(path)
    while True:
        if os.path.lexists(p):
            return os.path.isdir(p) and os.access(p, os.W_OK | os.X_OK)
        parent = os.path.dirname(p)
        if parent == p:
            return False
        p = parent


def _private_dir(path: str) -> bool:
    """Whether ``path`` is (now) a directory of ours that no one else can write to or replace."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_mode & 0o170000) == 0o040000 and st.st_uid == os.getuid() and not st.st_mode & 0o022


def foreign_directory(path: str | PathLike[str]) -> str | None:
    """Why another user could change what is in directory ``path``, or ``None`` if no one can.

    A cache's objects are verified when they are stored, not each time they are read or run:
    a directory that another user owns or may write, or whose parent lets another user
    replace it, would let that user hand our jobs altered programs (as a cache base pointed at
    a directory someone made in /tmp beforehand would). ``None`` too if it does not exist yet.
    """
    me = os.geteuid()
    parent_dir = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(path)
        parent = os.stat(parent_dir)
    except OSError:
        return None
    if st.st_uid != me:
        return f"it belongs to uid {st.st_uid}"
    if st.st_mode & 0o002:
        return "it is writable by everyone"
    if parent.st_uid not in (me, 0):
        return f"its parent {parent_dir} belongs to uid {parent.st_uid}"
    if parent.st_mode & 0o002 and not parent.st_mode & 0o1000:  # no sticky bit: others may rename
        return f"its parent {parent_dir} is writable by everyone"
    return None


def filesystem_type(path: str | PathLike[str]) -> str | None:
    """File system type of the mount holding ``path`` (longest mount point prefix), if known.

    ``path`` need not exist yet (the mount that would hold it).
    """
    try:
        with open("/proc/self/mountinfo") as f:
            text = f.read()
    except OSError:
        return None
    target = os.path.realpath(path)
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


def check_fqrn(fqrn: str) -> str:
    """A fully qualified repository name (the domain is everything after the first label)."""
    if not _FQRN.fullmatch(fqrn or ""):
        raise ConfigError(
            f"invalid repository name {fqrn!r}: expected a fully qualified name such as atlas.cern.ch"
        )
    return fqrn


def repository_domain(fqrn: str) -> str:
    """``atlas.cern.ch`` -> ``cern.ch`` (the fqrn without its first label, as the real client)."""
    return check_fqrn(fqrn).split(".", 1)[1]
