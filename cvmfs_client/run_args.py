"""``cvmfs-client run``'s arguments parsed without click, or not at all.

Importing click and building every subcommand costs ~14 ms, which each job would pay before its
command starts. The usual command lines (options of ``run`` then the command, ``--`` or not) are
parsed here into exactly the parameters click would give ``run``; anything else (help, an
unknown or malformed option, an option value click would check and refuse, options before
``run``) returns ``None``, and click parses the line with its usual errors and help.
``tests/test_run_args.py`` holds the two to the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)
if TYPE_CHECKING:
    from typing import Any

# option -> (parameter, kind); kinds: "multi" (repeatable value), "value", "path" (a directory
# or nothing: click.Path(file_okay=False)), "file" (click.Path(dir_okay=False)), "flag", "count"
OPTIONS: dict[str, tuple[str, str]] = {
    "--repo": ("repos", "multi"),
    "--cache-dir": ("cache_dir", "path"),
    "-r": ("parrot_repos", "value"),
    "--cvmfs-repos": ("parrot_repos", "value"),
    "-m": ("mount_lists", "multi"),
    "--mount-list": ("mount_lists", "multi"),
    "-M": ("mounts", "multi"),
    "--mount": ("mounts", "multi"),
    "--clean-tmp": ("clean_tmp", "flag"),
    "--deny": ("deny", "multi"),
    "--sandbox": ("sandbox", "flag"),
    "--allow-write": ("allow_write", "multi"),
    "-n": ("name_list", "file"),
    "--name-list": ("name_list", "file"),
    "-e": ("env_list", "file"),
    "--env-list": ("env_list", "file"),
    "-v": ("verbose", "count"),
    "--verbose": ("verbose", "count"),
    "--debug": ("debug", "flag"),
    "--stats": ("stats", "flag"),
    "--ptrace-only": ("ptrace_only", "flag"),
}
PRIVATE_TMP = "--private-tmp"  # an optional value: "--private-tmp" or "--private-tmp=DIR"


def defaults() -> dict[str, Any]:
    """The parameters of ``run`` when no option is given."""
    return {
        "repos": (),
        "cache_dir": None,
        "parrot_repos": None,
        "mount_lists": (),
        "mounts": (),
        "private_tmp": None,
        "clean_tmp": False,
        "deny": (),
        "sandbox": False,
        "allow_write": (),
        "name_list": None,
        "env_list": None,
        "verbose": 0,
        "debug": False,
        "stats": False,
        "ptrace_only": False,
        "command": (),
    }


def parse_run_args(args: Sequence[str]) -> dict[str, Any] | None:
    """The parameters of ``run`` for ``args`` (what follows ``run``), or None: ask click."""
    params = defaults()
    multi: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break  # the command: options end at the first argument (no interspersed options)
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name == PRIVATE_TMP:
                if not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
                    return None  # click would take the next argument as DIR: let it decide
                params["private_tmp"] = value if eq else ""
                i += 1
                continue
            attached = value if eq else None
        elif set(arg[1:]) == {"v"}:
            params["verbose"] += len(arg) - 1  # -v, -vv...
            i += 1
            continue
        else:
            name, attached = arg[:2], (arg[2:] or None)
        spec = OPTIONS.get(name)
        if spec is None:
            return None  # --help, a typo, a global option: click's message
        param, kind = spec
        if kind in ("flag", "count"):
            if attached is not None:
                return None
            params[param] = params[param] + 1 if kind == "count" else True
            i += 1
            continue
        if attached is None:
            if i + 1 >= len(args):
                return None  # "requires an argument": click says so
            attached = args[i + 1]
            i += 2
        else:
            i += 1
        if kind == "multi":
            multi.setdefault(param, []).append(attached)
        elif kind in ("path", "file"):
            from pathlib import Path  # only with these options: ~5 ms of every job's start

            path = Path(attached)
            if not attached or (path.is_file() if kind == "path" else path.is_dir()):
                return None  # click.Path refuses it
            params[param] = path
        else:
            params[param] = attached
    command = tuple(args[i:])
    if not command:
        return None  # "Missing argument 'COMMAND...'"
    for param, values in multi.items():
        params[param] = tuple(values)
    params["command"] = command
    return params
