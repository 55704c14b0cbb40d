"""``python -m cvmfs_client.build_executable [--out DIR]``: one self-contained ``cvmfs-client``.

PyInstaller (the ``build`` extra) bundles the interpreter, every dependency and the package data
into a single Linux x86-64 file, ``DIR/cvmfs-client`` (default ``dist/``). A worker node then
needs nothing but a kernel that allows ptrace. The entry point is :mod:`cvmfs_client.frozen`;
``cvmfs-client proxy`` is the login-node proxy. Build on the oldest glibc you target: the bundle
needs a glibc at least as new as the build machine's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = "cvmfs-client"
PACKAGES = ("cvmfs_client", "interposer", "proxy", "fixtures")
# (source relative to ROOT, destination inside the bundle): the same files as pyproject's package-data
DATA = (
    ("cvmfs_client/etc", "cvmfs_client/etc"),  # shipped domain configuration and master keys
    ("fixtures/README.md", "fixtures"),
)


def pyinstaller_command(out: Path, work: Path) -> list[str]:
    sep = os.pathsep
    cmd = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--onefile",
        "--noconfirm",
        "--clean",
        "--strip",  # symbols off libpython & co: a smaller bundle unpacks faster at every start
        "--log-level",
        "WARN",
        "--name",
        NAME,
        "--distpath",
        str(out),
        "--workpath",
        str(work / "build"),
        "--specpath",
        str(work),
        "--paths",
        str(ROOT),
    ]
    for package in PACKAGES:
        cmd += ["--collect-submodules", package]
    for src, dest in DATA:
        cmd += ["--add-data", f"{ROOT / src}{sep}{dest}"]
    cmd.append(str(ROOT / "cvmfs_client" / "frozen.py"))
    return cmd


def build(out: Path) -> Path:
    """Build ``out/cvmfs-client``; returns its path. Raises CalledProcessError if PyInstaller fails."""
    out = out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cvmfs-client-build-") as work:
        subprocess.run(pyinstaller_command(out, Path(work)), check=True, cwd=work)
    return out / NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvmfs_client.build_executable", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("dist"), help="output directory (default: dist)")
    args = parser.parse_args(argv)
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        print("PyInstaller is missing: pip install -e '.[build]'", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        path = build(args.out)
    except subprocess.CalledProcessError as exc:
        print(f"build failed: PyInstaller exited with {exc.returncode}", file=sys.stderr)
        return 1
    print(f"{path} ({path.stat().st_size >> 20} MiB) built in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
