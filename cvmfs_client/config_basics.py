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
from pathlib import Path

from .errors import ConfigError

_FQRN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)+")


def default_cache_base(environ: Mapping[str, str] | None = None) -> Path:
    """Unprivileged default: the real client's ``/var/lib/cvmfs`` is root's; use XDG instead."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(xdg) / "cvmfs-client"


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
