"""Wiring: settings -> source, store, keys -> a verified :class:`Repository`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .cache import AlienCache, NodeCache
from .config import RepositorySettings, settings_for
from .errors import ConfigError
from .fetcher import Fetcher
from .keys import load_master_keys
from .repository import Repository


def split_cvmfs_path(path: str) -> tuple[str, str]:
    """``/cvmfs/FQRN/a/b`` -> (``FQRN``, ``/a/b``)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2 or parts[0] != "cvmfs":
        raise ConfigError(f"{path}: expected a path of the form /cvmfs/REPOSITORY[/PATH]")
    rest = "/".join(parts[2:])
    return parts[1], "/" + rest if rest else ""


def open_repository(
    fqrn: str,
    params: Mapping[str, str] | None = None,
    settings: RepositorySettings | None = None,
    *,
    config_dir: Path | None = None,
) -> Repository:
    """Mount ``fqrn`` as configured by files in ``config_dir`` and ``params`` (default: the environment)."""
    env = dict(os.environ if params is None else params)
    s = settings or settings_for(fqrn, env, config_dir=config_dir)
    keys = load_master_keys(s.public_key, s.keys_dir)
    source = Fetcher(s.fetcher_settings())
    alien = AlienCache(s.alien_cache, s.alien_cache_writable) if s.alien_cache else None
    store = NodeCache(s.cache_dir, s.quota_limit_bytes, alien)
    try:
        return Repository(
            fqrn,
            source,
            keys,
            store,
            root_hash=s.root_hash,
            tag=s.repository_tag,
            env=env,
            max_ttl_minutes=s.max_ttl_minutes,
            owns_resources=True,
            parameters=s.parameters,
        )
    except BaseException:
        source.close()
        store.close()
        raise
