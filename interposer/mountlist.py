"""Parrot mount lists: parse them, and decide which entry applies to a path.

Format (what Parrot's ``-m FILE`` reads, so existing lists work unchanged), one entry a line::

    # a comment (a line whose first non-blank character is '#'); blank lines are ignored
    PREFIX TARGET           the tree at PREFIX is the host tree at TARGET (access rwx)
    PREFIX TARGET ACL       the same, limited to the ACL letters (from r, w, x; any case)
    PREFIX ACL              PREFIX itself, limited to ACL
    PREFIX DENY             every access fails with EACCES
    PREFIX ENOENT           PREFIX and everything below it do not exist
    PREFIX LOCAL            PREFIX itself (an exception carved out of an earlier entry)

``-M PREFIX=TARGET`` adds one ``PREFIX TARGET`` entry. As in Parrot a second field made only of
ACL letters is an ACL, not a target; a PREFIX ending in ``/`` matches only what lies below it.

Which entry applies: Parrot adds each entry in front of the earlier ones and takes the first
one that matches, so **the last matching line wins** (not the longest prefix): ``/ DENY``
followed by ``/usr LOCAL`` opens /usr, the other order denies everything. A TARGET is itself
resolved through the entries before it, as Parrot does.

Not accepted (rejected with the file and line number): relative prefixes or targets, glob
patterns in PREFIX (Parrot's ``fnmatch`` form), Parrot service targets (``resolver:``,
``lcache:``, ``/chirp/...`` are taken literally as host paths only when absolute), more than
three fields, unknown ACL letters.

Matching is O(path length): entries are kept in a dictionary by prefix, and the winner for a
path is the highest-numbered entry among the (at most one per component) prefixes of the path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

R_OK, W_OK, X_OK = os.R_OK, os.W_OK, os.X_OK
RWX = R_OK | W_OK | X_OK
DENY, ENOENT, LOCAL, REDIRECT = "DENY", "ENOENT", "LOCAL", "REDIRECT"
_GLOB = set("*?[")


class MountListError(ValueError):
    """A mount list entry that cannot be used; the message names its file and line."""


@dataclass(frozen=True)
class Entry:
    prefix: str  # normalised, no trailing slash ("/" for the root)
    action: str  # DENY, ENOENT, LOCAL or REDIRECT
    target: str = ""  # REDIRECT: host path (already resolved through earlier entries)
    mode: int = RWX
    below_only: bool = False  # PREFIX was written with a trailing '/'
    origin: str = ""  # "FILE:LINE" or the option, for messages
    index: int = 0  # position in the table: higher wins

    def matches(self, path: str) -> bool:
        p = self.prefix
        if p == "/":
            return True
        if path == p:
            return not self.below_only
        return path.startswith(p) and path[len(p)] == "/"


def parse_mode(text: str) -> int | None:
    """ACL letters (r, w, x in any case) to an access mask; ``None`` if not an ACL."""
    mode = 0
    for ch in text:
        bit = {"r": R_OK, "w": W_OK, "x": X_OK}.get(ch.lower())
        if bit is None:
            return None
        mode |= bit
    return mode if text else None


def _norm(path: str) -> str:
    parts = [p for p in path.split("/") if p and p != "."]
    return "/" + "/".join(parts)


def _check_path(text: str, what: str, where: str) -> str:
    if not text.startswith("/"):
        raise MountListError(f"{where}: {what} {text!r} must be an absolute path")
    if "\0" in text:
        raise MountListError(f"{where}: {what} contains a NUL byte")
    if any(p == ".." for p in text.split("/")):
        raise MountListError(f"{where}: {what} {text!r} must not contain '..'")
    return text


@dataclass(frozen=True)
class Line:
    """One parsed entry before it is placed in a table."""

    prefix: str
    action: str
    target: str
    mode: int
    below_only: bool
    origin: str
    # TARGET is a host path as it stands, not resolved through earlier entries: the directory
    # --private-tmp made (or was given) on the host, which a --sandbox denial of /home must
    # not turn away when the cache, and so the private /tmp, lives in the user's home.
    host_target: bool = False


def parse_line(text: str, origin: str) -> Line | None:
    """One line of a mount list; ``None`` for blank and comment lines."""
    fields = text.split()
    if not fields or fields[0].startswith("#"):
        return None
    if len(fields) == 1:
        raise MountListError(f"{origin}: expected 'PREFIX TARGET [ACL]' or 'PREFIX ACL': {text.strip()!r}")
    if len(fields) > 3:
        raise MountListError(f"{origin}: too many fields in {text.strip()!r} (PREFIX TARGET [ACL])")
    prefix = fields[0]
    if _GLOB & set(prefix):
        raise MountListError(f"{origin}: glob patterns in PREFIX are not supported: {prefix!r}")
    _check_path(prefix, "PREFIX", origin)
    below_only = len(prefix) > 1 and prefix.endswith("/")
    second = fields[1]
    mode = RWX
    if len(fields) == 3:
        found = parse_mode(fields[2])
        if found is None:
            raise MountListError(f"{origin}: invalid ACL {fields[2]!r} (letters from r, w, x)")
        mode = found
    elif parse_mode(second) is not None:
        mode = parse_mode(second) or 0
        return Line(_norm(prefix), LOCAL, "", mode, below_only, origin)
    if second in (DENY, ENOENT, LOCAL):
        return Line(_norm(prefix), second, "", mode, below_only, origin)
    _check_path(second, "TARGET", origin)
    return Line(_norm(prefix), REDIRECT, _norm(second), mode, below_only, origin)


def parse_text(text: str, name: str) -> list[Line]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        found = parse_line(line, f"{name}:{number}")
        if found is not None:
            out.append(found)
    return out


def parse_file(path: str) -> list[Line]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as exc:
        raise MountListError(f"cannot read mount list {path}: {exc.strerror}") from None
    return parse_text(text, path)


def parse_option(text: str) -> Line:
    """``-M /virtual=/real``."""
    prefix, sep, target = text.partition("=")
    if not sep or not prefix or not target:
        raise MountListError(f"-M {text}: expected /VIRTUAL=/REAL")
    return Line(
        _norm(_check_path(prefix, "PREFIX", f"-M {text}")),
        REDIRECT,
        _norm(_check_path(target, "TARGET", f"-M {text}")),
        RWX,
        False,
        f"-M {text}",
    )


def prefixes(path: str) -> Iterator[str]:
    """``/``, ``/a``, ``/a/b`` ... of a normalised absolute path, shortest first."""
    yield "/"
    pos = 1
    while pos < len(path):
        cut = path.find("/", pos)
        if cut < 0:
            yield path
            return
        yield path[:cut]
        pos = cut + 1


class MountTable:
    """Entries by prefix; the last added matching entry applies to a path."""

    def __init__(self, lines: Iterable[Line] = ()) -> None:
        self.entries: list[Entry] = []
        self._exact: dict[str, Entry] = {}  # prefix -> latest entry matching prefix and below
        self._below: dict[str, Entry] = {}  # prefix -> latest entry matching only below
        self._targets: dict[str, Entry] = {}  # REDIRECT target -> latest entry (reverse map)
        self._passable: dict[int, bool] = {}  # entry index -> has a later exception below
        for line in lines:
            self.add(line)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def add(self, line: Line) -> Entry:
        target = line.target
        if line.action == REDIRECT and not line.host_target:
            before = self.match(target)  # as Parrot: the target is resolved by earlier entries
            if before is not None:
                if before.action in (DENY, ENOENT):
                    raise MountListError(f"{line.origin}: TARGET {target} is itself {before.action}")
                target = self.real(target, before)
        entry = Entry(
            line.prefix, line.action, target, line.mode, line.below_only, line.origin, len(self.entries)
        )
        self.entries.append(entry)
        (self._below if entry.below_only else self._exact)[entry.prefix] = entry
        if entry.action == REDIRECT:
            self._targets[entry.target] = entry
        self._passable.clear()
        return entry

    def match(self, path: str) -> Entry | None:
        """The entry that applies to the normalised absolute ``path``, or ``None``."""
        best: Entry | None = None
        exact, below = self._exact, self._below
        for p in prefixes(path):
            e = exact.get(p)
            if e is not None and (best is None or e.index > best.index):
                best = e
            if p != path:
                e = below.get(p)
                if e is not None and (best is None or e.index > best.index):
                    best = e
        return best

    @staticmethod
    def real(path: str, entry: Entry | None) -> str:
        """The host path of ``path`` under ``entry`` (from :meth:`match`)."""
        if entry is None or entry.action != REDIRECT:
            return path
        rest = path if entry.prefix == "/" else path[len(entry.prefix) :]
        if not rest or rest == "/":
            return entry.target
        return (entry.target.rstrip("/") or "") + rest

    def passable(self, entry: Entry) -> bool:
        """Whether a DENY/ENOENT directory may be walked through, to reach a later exception."""
        found = self._passable.get(entry.index)
        if found is None:
            below = entry.prefix.rstrip("/") + "/"
            found = any(
                e.index > entry.index and e.action not in (DENY, ENOENT) and e.prefix.startswith(below)
                for e in self.entries
            )
            self._passable[entry.index] = found
        return found

    def logical(self, real: str) -> str:
        """The path a job would use for the host path ``real`` (the reverse of a redirect)."""
        best: Entry | None = None
        for p in prefixes(real):
            e = self._targets.get(p)
            if e is not None and (best is None or e.index > best.index):
                best = e
        if best is None:
            return real
        rest = real[len(best.target) :] if best.target != "/" else real
        if best.prefix == "/":
            return rest or "/"
        return best.prefix + rest if rest != "/" else best.prefix
