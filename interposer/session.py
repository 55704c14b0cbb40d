"""From ``cvmfs-client run`` options to a :class:`~interposer.job.RunOptions`.

Where things come from:

- repository settings: the real client's CVMFS_* parameters (configuration files, then the
  environment), as ``client.open_repository`` reads them; ``--cache-dir`` sets CVMFS_CACHE_BASE;
  a Parrot repository list (``-r`` or ``$PARROT_CVMFS_REPO``) adds per-repository settings and
  limits what can be mounted to what it matches;
- what ``ls /cvmfs`` shows: ``--repo`` names if given, else CVMFS_REPOSITORIES plus the names a
  Parrot list spells out; any other configured repository still appears on first access;
- the shadow trees: ``<cache base>/interposer`` (same file system as the cache, so content can
  be hardlinked rather than copied).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cvmfs_client.errors import ConfigError

from .job import RunOptions
from .parrot import ParrotConfig

log = logging.getLogger(__name__)

PARROT_ENV = "PARROT_CVMFS_REPO"


def prepare(
    repos: Sequence[str] = (),
    cache_dir: Path | None = None,
    parrot_repos: str | None = None,
    debug: bool = False,
    environ: Mapping[str, str] | None = None,
) -> RunOptions:
    env = dict(os.environ if environ is None else environ)
    params = dict(env)
    if cache_dir is not None:
        params["CVMFS_CACHE_BASE"] = str(Path(cache_dir).absolute())
    base = Path(params.get("CVMFS_CACHE_BASE") or _default_cache_base(env))
    spec = parrot_repos if parrot_repos is not None else env.get(PARROT_ENV)
    parrot = ParrotConfig(spec, env) if spec else None
    for name in repos:
        _check_name(name)

    def listed() -> list[str]:
        names = list(repos) if repos else _configured(params) + (parrot.names() if parrot else [])
        return list(dict.fromkeys(names))

    return RunOptions(
        params=params,
        env=env,
        shadow_dir=base.absolute() / "interposer",
        repos=list(repos) or None,
        listed=listed,
        per_repo=parrot.params_for if parrot else None,
        debug=debug,
    )


def _check_name(name: str) -> None:
    from cvmfs_client.config import check_fqrn  # configuration code is imported only when needed

    check_fqrn(name)


def _default_cache_base(env: Mapping[str, str]) -> Path:
    from cvmfs_client.config import default_cache_base

    return default_cache_base(env)


def _configured(params: Mapping[str, str]) -> list[str]:
    """CVMFS_REPOSITORIES from the configuration files and environment (empty if unreadable)."""
    try:
        from cvmfs_client.config import load_configuration

        return load_configuration(None, environ=params).repositories()
    except ConfigError as exc:
        log.warning("CVMFS_REPOSITORIES: %s", exc)
    except Exception as exc:  # noqa: BLE001 - a listing must never stop the job from starting
        log.debug("cannot read the repository list: %s", exc)
    return []
