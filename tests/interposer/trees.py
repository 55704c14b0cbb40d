"""The software tree the interposer tests (and ``bench/interposer.py``) publish and run from.

``sw.example.org`` = the bundled example tree (``bin/tput`` with its ``libtinfo`` in ``lib/``, a
Python package, every edge case) plus what a job needs to prove the interposer:

- ``python/``: the host's Debian CPython 3.11 (``/usr/bin/python3.11`` and its standard library
  with byte-code caches), so that an interpreter living in /cvmfs must find its prefix from its
  own path;
- ``bin/busybox``: a static binary (Debian's busybox-static), and ``bin/ash -> busybox``;
- ``bin/pyscript``, ``bin/bbscript``: ``#!`` scripts whose interpreter is in /cvmfs;
- ``src/``: C sources, a header and a Makefile for ``make -j2``;
- ``bin/rpath-cols``: compiled here, finds ``lib/libtinfo.so.6`` through ``RUNPATH=$ORIGIN/../lib``;
- ``bin/own-interp``: compiled here with its ELF interpreter at ``lib64/ld-linux-x86-64.so.2``
  in /cvmfs (as EESSI and Gentoo Prefix stacks are built).

Host files are copied with their mtimes, so two builds on one host publish the same content.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from fixtures.example_tree import build_example_tree

FQRN = "sw.example.org"
MOUNT = f"/cvmfs/{FQRN}"
HOST_PYTHON = Path("/usr/bin/python3.11")
HOST_STDLIB = Path("/usr/lib/python3.11")
HOST_BUSYBOX = Path("/bin/busybox")
HOST_LOADER = Path("/lib64/ld-linux-x86-64.so.2")
# Standard-library parts no test or benchmark imports: left out to keep publishing fast.
STDLIB_SKIP = {
    "test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data",
    "config-3.11-x86_64-linux-gnu", "distutils", "site-packages", "dist-packages",
}  # fmt: skip

PYSCRIPT = f"""#!{MOUNT}/python/bin/python3
import os, sys
print("executable", sys.executable)
print("prefix", sys.prefix)
print("argv0", sys.argv[0])
print("exe", os.readlink("/proc/self/exe"))
print("os", os.__file__)
print("args", " ".join(sys.argv[1:]))
"""
BBSCRIPT = f"""#!{MOUNT}/bin/busybox sh
echo "busybox script $0 $*"
"""
HEADER = """#ifndef COMMON_H
#define COMMON_H
int part_a(void);
int part_b(void);
int part_c(void);
#endif
"""
MAIN_C = """#include <stdio.h>
#include "common.h"
int main(void) {
    printf("sum=%d\\n", part_a() + part_b() + part_c());
    return 0;
}
"""
PART_C = """#include "common.h"
int part_%s(void) { return %d; }
"""
RPATH_C = """#include <stdio.h>
int setupterm(const char *term, int fd, int *err);
int tigetnum(const char *cap);
int main(void) {
    int err = 0;
    if (setupterm("xterm", 1, &err) != 0) return 2;
    printf("cols=%d\\n", tigetnum("cols"));
    return 0;
}
"""
MAKEFILE = """# Built out of tree: make -f $(SRC)/Makefile SRC=/cvmfs/.../src
SRC ?= .
CFLAGS ?= -O0
OBJS = main.o a.o b.o c.o
prog: $(OBJS)
\t$(CC) -o $@ $(OBJS)
%.o: $(SRC)/%.c $(SRC)/include/common.h
\t$(CC) $(CFLAGS) -I$(SRC)/include -c -o $@ $<
"""


class MissingHostTool(RuntimeError):
    """A host file the tree needs is absent: the message says which Debian package provides it."""


def _need(path: Path, package: str) -> Path:
    if not path.exists():
        raise MissingHostTool(f"{path} not found: install it with `apt-get install -y {package}`")
    return path


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def copy_python(dest: Path) -> None:
    """The host's CPython and its standard library (with __pycache__) under ``dest``."""
    _need(HOST_PYTHON, "python3.11-minimal")
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(HOST_PYTHON, dest / "bin" / "python3.11")
    os.symlink("python3.11", dest / "bin" / "python3")

    def skip(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n in STDLIB_SKIP} if Path(directory) == HOST_STDLIB else set()

    shutil.copytree(HOST_STDLIB, dest / "lib" / "python3.11", symlinks=True, ignore=skip)


def _compile_programs(root: Path) -> None:
    """``bin/rpath-cols`` (RUNPATH=$ORIGIN/../lib) and ``bin/own-interp`` (PT_INTERP in /cvmfs)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise MissingHostTool("gcc not found: install it with `apt-get install -y gcc`")
    source = root / "src" / "rpath.c"
    _write(source, RPATH_C)
    subprocess.run(
        [gcc, "-O1", "-o", str(root / "bin" / "rpath-cols"), str(source), f"-L{root / 'lib'}",
         "-l:libtinfo.so.6", "-Wl,-rpath,$ORIGIN/../lib"],
        check=True, capture_output=True,
    )  # fmt: skip
    os.utime(root / "bin" / "rpath-cols", (1_750_000_000, 1_750_000_000))
    # A program whose ELF interpreter (PT_INTERP) is the dynamic loader copied into the tree.
    (root / "lib64").mkdir()
    shutil.copy2(HOST_LOADER.resolve(), root / "lib64" / HOST_LOADER.name)
    subprocess.run(
        [gcc, "-O1", "-o", str(root / "bin" / "own-interp"), str(root / "src" / "main.c"),
         *(str(root / "src" / f"{n}.c") for n in "abc"), f"-I{root / 'src' / 'include'}",
         f"-Wl,--dynamic-linker={MOUNT}/lib64/{HOST_LOADER.name}"],
        check=True, capture_output=True,
    )  # fmt: skip
    os.utime(root / "bin" / "own-interp", (1_750_000_000, 1_750_000_000))


def build_sw_tree(dest: Path, with_python: bool = True) -> Path:
    """Build the tree in ``dest`` (absent or empty) and return it."""
    root = build_example_tree(dest, fqrn=FQRN)
    bb = _need(HOST_BUSYBOX, "busybox-static")
    shutil.copy2(bb, root / "bin" / "busybox")
    os.symlink("busybox", root / "bin" / "ash")
    _write(root / "bin" / "pyscript", PYSCRIPT, 0o755)
    _write(root / "bin" / "bbscript", BBSCRIPT, 0o755)
    _write(root / "src" / "include" / "common.h", HEADER)
    _write(root / "src" / "main.c", MAIN_C)
    for i, name in enumerate("abc", start=1):
        _write(root / "src" / f"{name}.c", PART_C % (name, i * 10))
    _write(root / "src" / "Makefile", MAKEFILE)
    _compile_programs(root)
    if with_python:
        copy_python(root / "python")
    return root


if __name__ == "__main__":  # pragma: no cover - manual use: python -m tests.interposer.trees DEST
    print(build_sw_tree(Path(sys.argv[1])))
