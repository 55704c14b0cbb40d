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

import os
from collections.abc import Mapping, Sequence

from cvmfs_client import lazylog
from cvmfs_client.config_basics import check_fqrn, default_cache_base
from cvmfs_client.errors import ConfigError

from .job import PrivateTmp, RunOptions

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)

if TYPE_CHECKING:  # mount lists, policies and Parrot lists: imported when given (start-up time)
    from os import PathLike
    from pathlib import Path

    from .mountlist import Line

log = lazylog.get(__name__)

PARROT_ENV = "PARROT_CVMFS_REPO"


def prepare(
    repos: Sequence[str] = (),
    cache_dir: Path | None = None,
    parrot_repos: str | None = None,
    debug: bool = False,
    environ: Mapping[str, str] | None = None,
    mount_lists: Sequence[str] = (),
    mounts: Sequence[str] = (),
    private_tmp: str | None = None,
    clean_tmp: bool = False,
    deny: Sequence[str] = (),
    sandbox: bool = False,
    allow_write: Sequence[str] = (),
) -> RunOptions:
    env = dict(os.environ if environ is None else environ)
    params = dict(env)
    if cache_dir is not None:
        params["CVMFS_CACHE_BASE"] = _absolute(cache_dir)
    base = _absolute(params.get("CVMFS_CACHE_BASE") or default_cache_base(env))
    spec = parrot_repos if parrot_repos is not None else env.get(PARROT_ENV)
    parrot = None
    if spec:
        from .parrot import ParrotConfig

        parrot = ParrotConfig(spec, env)
    for name in repos:
        check_fqrn(name)

    def listed() -> list[str]:
        names = list(repos) if repos else _configured(params) + (parrot.names() if parrot else [])
        return list(dict.fromkeys(names))

    tmp = _private_tmp(private_tmp, clean_tmp, base) if private_tmp is not None else None
    lines: list[Line] = []
    if mount_lists or mounts or tmp is not None or deny or sandbox:
        from .mountlist import MountListError, MountTable

        try:
            lines = _mount_lines(mount_lists, mounts, tmp, deny, sandbox)
            MountTable(lines)  # every error now, before the job starts
        except MountListError as exc:
            if tmp is not None and tmp.created:
                tmp.path.rmdir()
            raise ConfigError(str(exc)) from None
    writable: list[str] | None = None
    if allow_write:
        writable = []
        for p in allow_write:
            if not p.startswith("/"):
                raise ConfigError(f"--allow-write {p}: must be an absolute path")
            writable.append(p)
        if tmp is not None:
            writable.append("/tmp")
    return RunOptions(
        allow_write=writable,
        mount_lines=lines,
        own_proc=sandbox,
        private_tmp=tmp,
        params=params,
        env=env,
        shadow_dir=os.path.join(base, "interposer"),
        repos=list(repos) or None,
        listed=listed,
        per_repo=parrot.params_for if parrot else None,
        debug=debug,
    )


def _configured(params: Mapping[str, str]) -> list[str]:
    """CVMFS_REPOSITORIES from the configuration files and environment (empty if unreadable)."""
    try:
        from cvmfs_client.config import load_configuration  # only when `ls /cvmfs` asks

        return load_configuration(None, environ=params).repositories()
    except ConfigError as exc:
        log.warning("CVMFS_REPOSITORIES: %s", exc)
    except Exception as exc:  # noqa: BLE001 - a listing must never stop the job from starting
        log.debug("cannot read the repository list: %s", exc)
    return []


def _mount_lines(
    mount_lists: Sequence[str],
    mounts: Sequence[str],
    tmp: PrivateTmp | None,
    deny: Sequence[str],
    sandbox: bool,
) -> list[Line]:
    """All entries in order of precedence, lowest first (the last matching entry wins):
    the --sandbox preset, -m files, -M options, --private-tmp, --deny."""
    from .mountlist import Line, parse_file, parse_option
    from .policy import deny_line, sandbox_lines

    lines: list[Line] = sandbox_lines() if sandbox else []
    for name in mount_lists:
        lines += parse_file(name)
    lines += [parse_option(m) for m in mounts]
    if tmp is not None:
        lines.append(Line("/tmp", "REDIRECT", str(tmp.path), 0o7, False, "--private-tmp", host_target=True))
    lines += [deny_line(p) for p in deny]
    return lines


def _absolute(path: str | PathLike[str]) -> str:
    """``path`` made absolute as ``Path(path).absolute()`` does: from the cwd, ``.`` and empty
    parts dropped, ``..`` kept (``os.path.abspath`` would fold it, wrong past a symlink)."""
    path = os.fspath(path)
    if not path.startswith("/"):
        path = f"{os.getcwd()}/{path}"
    return "/" + "/".join(p for p in path.split("/") if p and p != ".")


def _private_tmp(given: str, clean: bool, base: str) -> PrivateTmp:
    """The job's /tmp: ``given`` (missing or empty) or a new directory beside the shadow trees."""
    import tempfile
    from pathlib import Path  # only here: ~5 ms of every job's start otherwise

    if given:
        if "/" not in given and not os.path.isdir(given):
            raise ConfigError(
                f"--private-tmp {given}: write --private-tmp=./{given} for a directory, or put '--' "
                "before the command"
            )
        path = Path(given).absolute()
        created = not path.exists()
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--private-tmp {given}: {exc.strerror}") from None
        if any(path.iterdir()):
            raise ConfigError(f"--private-tmp {given}: not empty (the job's /tmp starts empty)")
        return PrivateTmp(Path(os.path.realpath(path)), created, clean)
    where = Path(base, "interposer-tmp")  # not in interposer/: that tree is read-only to jobs
    try:
        where.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="job-", dir=where))
    except OSError as exc:
        raise ConfigError(f"cannot create a private /tmp in {where}: {exc.strerror}") from None
    return PrivateTmp(Path(os.path.realpath(path)), True, clean)
