"""``cvmfs-client run`` from parsed arguments to the job's exit status.

Shared by the click command (:mod:`cvmfs_client.cli`) and the console script's fast path
(:mod:`cvmfs_client.entry`), which parses ``run``'s arguments without importing click: every
job pays the start-up of this process before its command starts.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .errors import CvmfsError

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def run_job(
    command: Sequence[str],
    repos: Sequence[str] = (),
    cache_dir: Path | None = None,
    parrot_repos: str | None = None,
    mount_lists: Sequence[str] = (),
    mounts: Sequence[str] = (),
    private_tmp: str | None = None,
    clean_tmp: bool = False,
    deny: Sequence[str] = (),
    sandbox: bool = False,
    allow_write: Sequence[str] = (),
    name_list: Path | None = None,
    env_list: Path | None = None,
    verbose: int = 0,
    debug: bool = False,
    stats: bool = False,
    ptrace_only: bool = False,
) -> NoReturn:
    """Run ``command`` under the interposer and exit as it did (see ``cvmfs-client run --help``)."""
    import traceback

    from interposer.job import EX_SOFTWARE, RunError, exit_like, run
    from interposer.session import prepare

    level = logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose else None
    if level is not None:
        logging.getLogger().setLevel(level)
    try:
        options = prepare(
            repos,
            cache_dir,
            parrot_repos,
            debug or verbose > 1,
            mount_lists=mount_lists,
            mounts=mounts,
            private_tmp=private_tmp,
            clean_tmp=clean_tmp,
            deny=deny,
            sandbox=sandbox,
            allow_write=allow_write,
        )
        for given in (name_list, env_list):
            if given is not None and not os.access(given.absolute().parent, os.W_OK | os.X_OK):
                raise RunError(f"{given}: its directory is missing or not writable")
        options.name_list = name_list.absolute() if name_list is not None else None
        options.env_list = env_list.absolute() if env_list is not None else None
        options.notify = not ptrace_only
        try:
            status = run(list(command), options)
        finally:
            if options.private_tmp is not None:
                note = options.private_tmp.finish()
                if note:
                    _say(note)
    except RunError as exc:
        _say(str(exc))
        sys.exit(125)
    except CvmfsError as exc:
        _say(str(exc))
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - a tracer bug: say so, never hang or hide it
        _say(f"internal error: {exc!r} (the job was killed)")
        if level == logging.DEBUG:
            traceback.print_exc()
        sys.exit(EX_SOFTWARE)
    if stats:
        _say(f"stops {options.stats}")
    exit_like(status)


def _say(message: str) -> None:
    print(f"cvmfs-client run: {message}", file=sys.stderr, flush=True)
