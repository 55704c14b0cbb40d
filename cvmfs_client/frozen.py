"""Entry point of the one-file executable (``python -m cvmfs_client.build_executable``).

The bundle is ``cvmfs-client`` with every subcommand (the login-node proxy is
``cvmfs-client proxy``). Two things differ from an installed client, both handled here before
the command line is parsed:

- Site configuration beside the executable: when neither ``--config-dir`` nor
  ``$CVMFS_CLIENT_CONFIG_DIR`` is given and a directory ``cvmfs-config/`` sits in the directory
  that holds the executable file (symlinks resolved), it becomes the configuration directory
  (in place of ``/etc/cvmfs``; its ``keys/`` is the default ``CVMFS_KEYS_DIR``). It is passed on
  as ``$CVMFS_CLIENT_CONFIG_DIR``, so ``run`` and its jobs see the same configuration.
- The environment of jobs: the bootloader points ``LD_LIBRARY_PATH`` at the bundle's unpacked
  libraries; programs that ``run`` starts must get the caller's value back (PyInstaller keeps it
  in ``LD_LIBRARY_PATH_ORIG``), or they would load our OpenSSL and friends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

CONFIG_DIR_NAME = "cvmfs-config"
CONFIG_DIR_ENV = "CVMFS_CLIENT_CONFIG_DIR"
_BOOTLOADER_VARS = ("LD_LIBRARY_PATH",)


def is_frozen() -> bool:
    """True inside the PyInstaller executable."""
    return bool(getattr(sys, "frozen", False))


def bundled_config_dir(executable: str, argv: list[str], environ: Mapping[str, str]) -> Path | None:
    """The ``cvmfs-config/`` beside ``executable`` if it applies (see the module docstring)."""
    if environ.get(CONFIG_DIR_ENV):
        return None
    for arg in argv:  # global options only: they come before the subcommand
        if not arg.startswith("-"):
            break
        if arg == "--config-dir" or arg.startswith("--config-dir="):
            return None
    candidate = Path(os.path.realpath(executable)).parent / CONFIG_DIR_NAME
    return candidate if candidate.is_dir() else None


def restore_environment(environ: MutableMapping[str, str]) -> None:
    """Undo the bootloader's library path so that child processes see the caller's environment."""
    for name in _BOOTLOADER_VARS:
        original = environ.pop(f"{name}_ORIG", None)
        if original is not None:
            environ[name] = original
        else:
            environ.pop(name, None)


def main() -> None:
    import multiprocessing

    multiprocessing.freeze_support()
    if is_frozen():
        restore_environment(os.environ)
        found = bundled_config_dir(sys.executable, sys.argv[1:], os.environ)
        if found is not None:
            os.environ[CONFIG_DIR_ENV] = str(found)

    from cvmfs_client.entry import main as entry_main

    entry_main(prog_name="cvmfs-client")


if __name__ == "__main__":
    main()
