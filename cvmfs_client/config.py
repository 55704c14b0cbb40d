"""Client settings from ``CVMFS_*`` parameters, with the real client's templates and defaults.

Values come from a mapping of parameters (the environment here; configuration files layer on
top of the same mapping). ``@fqrn@`` and ``@org@`` are substituted as the real option parser
does (spec 8.3).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

DEFAULT_KEYS_DIR = "/etc/cvmfs/keys"


def expand_templates(value: str, fqrn: str) -> str:
    """``@fqrn@`` -> the repository name, ``@org@`` -> its first label; others left as they are."""
    return value.replace("@fqrn@", fqrn).replace("@org@", fqrn.split(".", 1)[0])


def default_cache_base() -> Path:
    """Unprivileged default: the real client's ``/var/lib/cvmfs`` is root's; use XDG instead."""
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "cvmfs-client"


@dataclass(frozen=True)
class RepositorySettings:
    fqrn: str
    server_urls: list[str]
    http_proxy: str
    public_key: str | None
    keys_dir: str | None
    cache_base: Path
    repository_tag: str | None
    root_hash: str | None
    timeout: float
    parameters: dict[str, str]

    @property
    def cache_dir(self) -> Path:
        return self.cache_base / "shared"


def settings_for(fqrn: str, params: Mapping[str, str] | None = None) -> RepositorySettings:
    """Settings of ``fqrn`` from ``params`` (default: the process environment)."""
    if not fqrn or "/" in fqrn or fqrn.startswith("."):
        raise ConfigError(f"invalid repository name {fqrn!r}")
    p = dict(os.environ if params is None else params)
    servers = [
        expand_templates(u.strip(), fqrn) for u in p.get("CVMFS_SERVER_URL", "").split(";") if u.strip()
    ]
    if not servers:
        raise ConfigError(
            f"{fqrn}: no server configured; set CVMFS_SERVER_URL (e.g. http://host/cvmfs/@fqrn@)"
        )
    public_key = p.get("CVMFS_PUBLIC_KEY") or None
    keys_dir = p.get("CVMFS_KEYS_DIR") or None
    if public_key is None and keys_dir is None:
        keys_dir = DEFAULT_KEYS_DIR
    try:
        timeout = float(p.get("CVMFS_TIMEOUT_DIRECT") or p.get("CVMFS_TIMEOUT") or 10)
    except ValueError:
        raise ConfigError(f"CVMFS_TIMEOUT: not a number: {p.get('CVMFS_TIMEOUT')!r}") from None
    cache_base = Path(p["CVMFS_CACHE_BASE"]) if p.get("CVMFS_CACHE_BASE") else default_cache_base()
    return RepositorySettings(
        fqrn=fqrn,
        server_urls=servers,
        http_proxy=p.get("CVMFS_HTTP_PROXY", "DIRECT") or "DIRECT",
        public_key=expand_templates(public_key, fqrn) if public_key else None,
        keys_dir=expand_templates(keys_dir, fqrn) if keys_dir else None,
        cache_base=cache_base,
        repository_tag=p.get("CVMFS_REPOSITORY_TAG") or None,
        root_hash=p.get("CVMFS_ROOT_HASH") or None,
        timeout=timeout,
        parameters={k: v for k, v in p.items() if k.startswith("CVMFS_")},
    )
