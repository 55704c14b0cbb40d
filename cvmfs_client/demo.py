"""``cvmfs-client demo``: the whole chain on one machine, checked end to end.

Builds the bundled example software tree, publishes it as a signed repository, serves it on
127.0.0.1 over HTTP, then mounts it through the client (full trust chain) and compares every
path with the source tree. Finally it runs an unmodified shell job under the interposer
(``cvmfs-client run``) that starts programs living in the repository. Exit status 0 only if all
of it worked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .client import open_repository
from .publisher import publish
from .repository import Repository
from .server import StratumServer

FQRN = "example.cvmfs.io"


def run_demo(workdir: Path | None, echo: Callable[[str], object]) -> int:
    from fixtures.example_tree import build_example_tree, describe_tree

    own = workdir is None
    base = Path(tempfile.mkdtemp(prefix="cvmfs-demo.")) if own else Path(workdir)  # type: ignore[arg-type]
    base.mkdir(parents=True, exist_ok=True)
    try:
        src = build_example_tree(base / "src", fqrn=FQRN)
        echo(f"1. built the example software tree in {src}")
        result = publish(
            src, FQRN, base / "stratum0" / FQRN, base / "keys", chunk_sizes=(64 << 10, 128 << 10, 256 << 10)
        )
        echo(f"2. published {FQRN}: revision {result.revision}, root catalog {result.root_hash}")
        with StratumServer(base / "stratum0") as server:
            params = {
                "CVMFS_SERVER_URL": f"{server.url}/cvmfs/@fqrn@",
                "CVMFS_PUBLIC_KEY": str(base / "keys" / f"{FQRN}.pub"),
                "CVMFS_HTTP_PROXY": "DIRECT",
                "CVMFS_CACHE_BASE": str(base / "cache"),
            }
            echo(f"3. serving it at {server.url}/cvmfs/{FQRN}")
            with open_repository(FQRN, params) as repo:
                info = repo.info()
                echo(f"4. mounted with the trust chain verified: certificate {info.certificate_fingerprint}")
                echo(f"   whitelist valid until {info.whitelist_expires:%Y-%m-%d %H:%M} UTC")
                echo(f"   $ ls /cvmfs/{FQRN}")
                echo("   " + "  ".join(e.name for e in repo.listdir("")))
                echo(f"   $ cat /cvmfs/{FQRN}/etc/example.conf")
                for line in repo.read_file("/etc/example.conf").decode().splitlines():
                    echo("   " + line)
                bad = compare_with_source(repo, describe_tree(src))
            if bad:
                for line in bad:
                    echo("MISMATCH " + line)
                return 1
            echo("5. every path read back through HTTP matches the source tree")
            echo("   (type, mode, size, mtime, link target and content)")
            return _run_job(params, echo)
    finally:
        if own:
            shutil.rmtree(base, ignore_errors=True)


# A job that uses the repository as a mounted /cvmfs: a #! script and a real ELF program with its
# shared library, both living in the repository, started by an unmodified shell.
_JOB = f"""
set -e
cd /cvmfs/{FQRN}
echo $(ls)
bin/exampkg --version
LD_LIBRARY_PATH=/cvmfs/{FQRN}/lib TERM=xterm-256color bin/tput colors 2>/dev/null || echo "(no tput here)"
"""


def _run_job(params: dict[str, str], echo: Callable[[str], object]) -> int:
    """Run ``_JOB`` under the interposer (``cvmfs-client run``) as a real, separate process."""
    env = {**os.environ, **params, "CVMFS_REPOSITORIES": FQRN}
    # In the one-file executable sys.executable is the bundle itself, which takes subcommands.
    me = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "cvmfs_client"]
    cmd = [*me, "run", "--", "/bin/sh", "-c", _JOB]
    echo(f"6. $ cvmfs-client run -- sh -c '...'   (an unmodified shell; /cvmfs/{FQRN} without FUSE or root)")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    for line in done.stdout.splitlines():
        echo("   " + line)
    if done.returncode != 0:
        echo(f"the job failed with exit status {done.returncode}: {done.stderr.strip()}")
        return 1
    echo("7. the job ran programs from the repository under the interposer; all done")
    return 0


def compare_with_source(repo: Repository, expected: dict[str, dict]) -> list[str]:
    """Differences between a mounted repository and ``describe_tree`` of its source, as lines.

    The root directory's mtime is not compared: the publisher keeps revision 0's entry for it,
    as the real one does.
    """
    bad: list[str] = []
    for rel, want in sorted(expected.items()):
        path = "" if rel == "." else "/" + rel
        e = repo.lookup(path)
        got_type = "d" if e.is_dir else "l" if e.is_symlink else "f"
        mtime_ok = rel == "." or e.mtime == want["mtime"]
        if got_type != want["type"] or (e.mode & 0o7777) != want["mode"] or not mtime_ok:
            bad.append(f"{rel}: metadata {got_type} {e.mode & 0o7777:o} {e.mtime} != {want}")
            continue
        if want["nlink"] is not None and e.nlink != want["nlink"]:
            bad.append(f"{rel}: nlink {e.nlink} != {want['nlink']}")
        if got_type == "f":
            digest = hashlib.sha256(repo.read_file(path)).hexdigest()
            if e.size != want["size"] or digest != want["sha256"]:
                bad.append(f"{rel}: content differs")
        elif got_type == "l" and e.symlink != want["target"]:
            bad.append(f"{rel}: link target {e.symlink!r} != {want['target']!r}")
    return bad
