"""Variant symlinks: ``$(VAR)`` and ``$(VAR:-default)`` expanded as the real client does (spec 5.8).

The rules differ from the shell on purpose (``cvmfs/cvmfs:cvmfs/catalog_sql.cc`` ExpandSymlink):
- a reference ends at the FIRST ``)``; no nesting, no escaping;
- the FIRST ``:-`` inside splits name and default;
- a variable that is set but empty is used as is (the shell would take the default);
- an unset variable without default expands to the empty string;
- an unterminated ``$(`` is copied literally.
"""

from __future__ import annotations

from collections.abc import Mapping

_OPEN = "$("
_DEFAULT_SEP = ":-"


def expand_symlink(target: str, env: Mapping[str, str]) -> str:
    """Expand the variable references of a raw symlink target using ``env``."""
    out: list[str] = []
    pos = 0
    while True:
        start = target.find(_OPEN, pos)
        if start < 0:
            out.append(target[pos:])
            break
        end = target.find(")", start + len(_OPEN))
        if end < 0:
            # Unterminated: no ')' follows anywhere, so the rest is literal.
            out.append(target[pos:])
            break
        out.append(target[pos:start])
        out.append(_resolve(target[start + len(_OPEN) : end], env))
        pos = end + 1
    return "".join(out)


def _resolve(reference: str, env: Mapping[str, str]) -> str:
    name, sep, default = reference.partition(_DEFAULT_SEP)
    if name in env:  # set, even if empty, wins over the default
        return env[name]
    return default if sep else ""
