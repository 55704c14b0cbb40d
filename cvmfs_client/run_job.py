"""``cvmfs-client run`` from parsed arguments to the job's exit status.

Shared by the click command (:mod:`cvmfs_client.cli`) and the console script's fast path
(:mod:`cvmfs_client.entry`), which parses ``run``'s arguments without importing click: every
job pays the start-up of this process before its command starts.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence

from . import lazylog
from .errors import CvmfsError

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import NoReturn

LOG_FORMAT = lazylog.FORMAT


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
    from interposer.job import EX_SOFTWARE, RunError, exit_like, outer_interposer, run
    from interposer.session import prepare

    # What start-up made lives as long as the job: out of every later collection's way (and
    # collections back on, after entry.py's start-up without them).
    gc.freeze()
    gc.enable()

    level = lazylog.DEBUG if debug or verbose > 1 else lazylog.INFO if verbose else None
    if level is not None:  # else logging is not even imported until something is worth saying
        lazylog.configure(level)
    outer = outer_interposer()
    if outer is not None:
        given = {
            "--repo": repos,
            "-r": parrot_repos,
            "--cache-dir": cache_dir,
            "-m": mount_lists,
            "-M": mounts,
            "--private-tmp": private_tmp is not None,
            "--deny": deny,
            "--sandbox": sandbox,
            "--allow-write": allow_write,
            "-n": name_list,
            "-e": env_list,
        }
        _run_nested(outer, command, [name for name, value in given.items() if value])
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
        if level == lazylog.DEBUG:
            import traceback

            traceback.print_exc()
        sys.exit(EX_SOFTWARE)
    if stats:
        _say(f"stops {options.stats}")
    exit_like(status)


def _run_nested(outer: int, command: Sequence[str], options: list[str]) -> NoReturn:
    """A run inside a job of ``cvmfs-client run`` (a wrapper script calling it again): the job
    already sees /cvmfs through the outer run, and ptrace cannot nest, so ``command`` simply
    runs; options that need a run of their own are refused rather than ignored."""
    if options:
        _say(
            f"already inside the job of cvmfs-client run (process {outer}), whose /cvmfs this "
            f"command sees; a nested run cannot apply {', '.join(options)}: start it outside"
        )
        sys.exit(125)
    lazylog.get(__name__).info("inside cvmfs-client run %d: running %s directly", outer, command[0])
    try:
        os.execvp(command[0], list(command))
    except OSError as exc:  # as the run itself reports them
        _say(f"{command[0]}: {exc.strerror}")
        sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)


def _say(message: str) -> None:
    print(f"cvmfs-client run: {message}", file=sys.stderr, flush=True)
