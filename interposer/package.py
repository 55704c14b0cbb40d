"""Portable application packages: what ``cvmfs-client package create`` writes and ``package run``
reads (Parrot's ``parrot_package_create``/``parrot_package_run``, done with this interposer).

A package is a directory::

    DIR/manifest.json   what the package holds: format, the job's working directory, counts,
                        and what was left out (absent paths, special files, kernel trees)
    DIR/env-list        the job's environment: ``NAME=value`` entries each ended by a NUL byte,
                        as ``cvmfs-client run -e`` (and Parrot's ``--env-list``) writes it
    DIR/name-list       the name list it was made from (Parrot's ``path|how``), for reference
    DIR/root/           the job's ``/``: every listed path under its own name

Why ``root/`` (Parrot puts its files beside the tree): the job's ``/`` then holds only what the
job used, and nothing the job writes can overwrite the manifest or its environment.

``package run`` gives the job a mount table (:mod:`.mountlist`) whose first entry is
``/ DIR/root``: every path the job names is walked inside the package (:mod:`.policy`), so a
host file that is not in the package does not exist for it. Then, as later entries (the last
matching entry wins), the kernel's own trees ``/proc``, ``/dev`` and ``/sys`` (they describe the
machine the job runs on, Parrot maps them through too; they are never packaged) and each
``--allow-host PATH`` are the host's. This module is the format and those rules; building a
package is :mod:`.packer`.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cvmfs_client.errors import CvmfsError

from .job import RunOptions
from .mountlist import LOCAL, REDIRECT, RWX, Line, MountListError, _check_path, _norm

FORMAT = "cvmfs-client-package/1"
MANIFEST = "manifest.json"
ENV_LIST = "env-list"
NAME_LIST = "name-list"
ROOT = "root"
FULL, META = "fullcopy", "metadatacopy"
# Trees of the running kernel: never packaged, always the host's in `package run` (Parrot's
# parrot_package_create skips /proc, /sys, /dev and more; its run script maps them through).
KERNEL_TREES = ("/proc", "/dev", "/sys")


class PackageError(CvmfsError):
    """A package cannot be made or used; the message names the file and the reason."""


class PackageUsageError(PackageError):
    """Wrong input: a missing name list, an output directory in the way, not a package."""

    exit_code = 2


class SourceVanished(PackageError):
    """A listed file disappeared or changed type while it was being packaged."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason} while it was being packaged; run package create again")
        self.path = path


@dataclass
class Manifest:
    """``manifest.json``: what ``package run`` needs (``cwd``) and what a reader wants to know."""

    cwd: str = "/"  # the job's working directory (a directory in the package)
    created: str = ""  # UTC, ISO 8601
    counts: dict[str, int] = field(default_factory=dict)  # fullcopy, metadatacopy, directories...
    absent: list[str] = field(default_factory=list)  # listed, not found: failed lookups, kept absent
    special: list[str] = field(default_factory=list)  # devices, fifos, sockets: not packaged
    left_out: list[str] = field(default_factory=list)  # kernel trees, the package itself
    unreadable: list[str] = field(default_factory=list)  # this user may not look there (EACCES)
    added: list[str] = field(default_factory=list)  # #! and ELF interpreters the list could not name
    repositories: dict[str, str] = field(default_factory=dict)  # fqrn -> root hash read
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> Manifest:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PackageUsageError(f"{source}: not a package manifest: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise PackageUsageError(f"{source}: not a package manifest of format {FORMAT} (found {found!r})")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            manifest = cls(**known)
        except TypeError as exc:
            raise PackageUsageError(f"{source}: malformed manifest: {exc}") from None
        if not isinstance(manifest.cwd, str) or not manifest.cwd.startswith("/"):
            raise PackageUsageError(f"{source}: cwd {manifest.cwd!r} is not an absolute path")
        return manifest


def parse_env(data: bytes, source: str) -> dict[str, str]:
    """An environment list: ``NAME=value`` entries each ended by NUL (the last NUL optional).

    Values may hold newlines and any byte but NUL (decoded as the OS does, surrogateescape).
    """
    env: dict[str, str] = {}
    items = data.split(b"\0")
    if items and items[-1] == b"":
        items.pop()
    for number, item in enumerate(items, 1):
        name, sep, value = item.partition(b"=")
        if not sep or not name:
            raise PackageUsageError(
                f"{source}: entry {number} is not NAME=value: {item[:60]!r} "
                "(an environment list holds NUL-terminated entries, as `cvmfs-client run -e` writes)"
            )
        env[os.fsdecode(name)] = os.fsdecode(value)
    return env


def plan(entries: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Name-list entries (path, how) -> path -> ``fullcopy``/``metadatacopy``, first-use order.

    A path listed twice is packaged once, ``fullcopy`` winning; an unknown or empty HOW means
    content, as in Parrot (only ``metadatacopy`` is metadata-only). Paths are kept as written
    apart from repeated and trailing slashes: ``..`` is taken after symlinks, when walking.
    """
    out: dict[str, str] = {}
    for path, how in entries:
        path = "/" + "/".join(p for p in path.split("/") if p and p != ".")
        how = META if how.strip().lower() == META else FULL
        if how == FULL or path not in out:
            out[path] = how
    return out


def in_tree(path: str, tree: str) -> bool:
    """Whether the normalised absolute ``path`` is ``tree`` or below it."""
    return tree == "/" or path == tree or path.startswith(tree + "/")


def is_kernel_path(path: str) -> bool:
    return any(in_tree(path, t) for t in KERNEL_TREES)


def cwd_of(env: dict[str, str]) -> str:
    """The working directory a recorded job most likely had: its ``PWD`` when absolute, else /.

    Shells keep ``PWD`` right; a name list has no record of the cwd itself.
    """
    pwd = env.get("PWD", "")
    if pwd.startswith("/") and "\0" not in pwd:
        return posixpath.normpath(pwd).replace("//", "/")
    return "/"


def run_lines(root: str, allow_host: Sequence[str]) -> list[Line]:
    """The mount table of ``package run``: the package as ``/``, then the kernel's trees, then
    each ``--allow-host`` path as the host's (later entries win)."""
    lines = [Line("/", REDIRECT, _norm(root), RWX, False, "package")]
    lines += [Line(t, LOCAL, "", RWX, False, "package (kernel)") for t in KERNEL_TREES]
    for path in allow_host:
        origin = f"--allow-host {path}"
        try:
            checked = _norm(_check_path(path, "PATH", origin))
        except MountListError as exc:
            raise PackageUsageError(str(exc)) from None
        if checked == "/":
            raise PackageUsageError(f"{origin}: the whole host is not a package (use cvmfs-client run)")
        lines.append(Line(checked, LOCAL, "", RWX, False, origin))
    return lines


@dataclass(frozen=True)
class Package:
    """An existing package directory, checked."""

    path: Path
    manifest: Manifest
    env: dict[str, str]

    @property
    def root(self) -> Path:
        return self.path / ROOT

    @classmethod
    def open(cls, path: Path) -> Package:
        path = Path(os.path.realpath(path))
        manifest_file = path / MANIFEST
        try:
            text = manifest_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            what = "does not exist" if not path.exists() else f"has no {MANIFEST}"
            raise PackageUsageError(f"{path}: {what}: not a package (made by cvmfs-client package create)")
        except OSError as exc:
            raise PackageUsageError(f"{manifest_file}: {exc.strerror}") from None
        manifest = Manifest.from_json(text, str(manifest_file))
        env_file = path / ENV_LIST
        try:
            env = parse_env(env_file.read_bytes(), str(env_file))
        except OSError as exc:
            raise PackageUsageError(f"{env_file}: {exc.strerror}") from None
        if not (path / ROOT).is_dir():
            raise PackageUsageError(f"{path / ROOT}: missing: not a complete package")
        return cls(path, manifest, env)

    def host_dir(self, logical: str) -> Path:
        """The directory of the package that the job sees as ``logical`` (no symlink on the way:
        a link in the package may point anywhere on the host)."""
        found = self.root / _norm(logical).lstrip("/")
        if os.path.realpath(found) != str(found) or not found.is_dir():
            raise PackageUsageError(f"{logical}: not a directory of the package {self.path}")
        return found

    def make_parents(self, path: str) -> None:
        """Create the missing parent directories of ``path`` in the package (empty), so that an
        ``--allow-host`` entry below them can be reached; never through a symlink."""
        here = self.root
        for part in _norm(path).split("/")[1:-1]:
            here = here / part
            if os.path.islink(here):
                return  # followed in the job's view at run time; nothing to create here
            if not here.exists():
                here.mkdir(0o755)
            elif not here.is_dir():
                return


def run_options(
    package: Package,
    allow_host: Sequence[str] = (),
    cwd: str | None = None,
    cache_dir: Path | None = None,
    debug: bool = False,
) -> RunOptions:
    """What ``package run`` runs with: the package's environment only (``env -i`` and the
    recorded list), its working directory, and :func:`run_lines`. The cache base (configured as
    for ``run``, or ``cache_dir``) holds copies of programs whose ELF interpreter is moved."""
    from .session import prepare

    lines = run_lines(str(package.root), allow_host)
    host_cwd = package.host_dir(cwd or package.manifest.cwd)
    for path in allow_host:
        package.make_parents(path)
    options = prepare((), cache_dir, None, debug)
    options.mount_lines = lines
    options.env = dict(package.env)
    options.cwd = host_cwd
    return options


__all__ = [
    "FULL",
    "META",
    "Manifest",
    "Package",
    "PackageError",
    "PackageUsageError",
    "SourceVanished",
    "cwd_of",
    "is_kernel_path",
    "parse_env",
    "plan",
    "run_lines",
    "run_options",
]
