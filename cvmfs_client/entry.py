"""The ``cvmfs-client`` command: ``run`` starts without click when it can, the rest is cli.py.

A job started by ``cvmfs-client run`` waits for this process's start-up; click and the
subcommands it builds are ~14 ms of it (see :mod:`cvmfs_client.run_args`).
"""

from __future__ import annotations

import gc
import os
import sys


def main(prog_name: str | None = None) -> None:
    args = sys.argv[1:]
    if args[:1] == ["run"] and not os.path.isfile(os.environ.get("CVMFS_CLIENT_CONFIG_DIR") or "/"):
        # Collections while the run path's modules load would scan their new objects again and
        # again: off until the job starts (run_job freezes what start-up made, turns them on).
        gc.disable()
        from .run_args import parse_run_args

        params = parse_run_args(args[1:])
        if params is not None:  # logging is configured when first needed (lazylog)
            from .run_job import run_job

            run_job(**params)
        gc.enable()
    from .cli import main as cli_main

    cli_main(prog_name=prog_name)


if __name__ == "__main__":
    main()
