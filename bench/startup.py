"""Start-up cost of ``cvmfs-client run -- /bin/true``: one-file executable, installed client, native.

    python bench/startup.py [--executable dist/cvmfs-client] [--runs 20]

Rows: native ``/bin/true``; the installed console script ``cvmfs-client run -- /bin/true``
(CPython from the environment, modules from the checkout/site-packages); the one-file executable
(``python -m cvmfs_client.build_executable``; every start unpacks the bundle into a temporary
directory before the interpreter starts). No repository is touched: this is the fixed price of a
job. Uses hyperfine when it is on PATH, else a timing loop (median and min of ``--runs`` runs
after one warm-up run each). The configuration directory is an empty temporary one, so
/etc/cvmfs on the machine does not matter.

The project's modules are byte-compiled first, as ``pip install`` does for an installed package:
in a checkout with PYTHONDONTWRITEBYTECODE set, a module edited since its ``.pyc`` was written is
otherwise compiled again at every start (translate.py alone takes ~9 ms), which measures the
editing, not the client.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _installed_command() -> list[str]:
    script = shutil.which("cvmfs-client")
    return [script] if script else [sys.executable, "-m", "cvmfs_client"]


def compile_packages() -> None:
    """Write current bytecode for the packages ``cvmfs-client run`` imports, wherever installed."""
    for package in ("cvmfs_client", "interposer"):
        spec = importlib.util.find_spec(package)
        for directory in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(directory, quiet=1)


def _loop(cmd: list[str], runs: int, env: dict[str, str]) -> tuple[float, float]:
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)  # warm-up (page cache)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def _hyperfine(cmd: list[str], runs: int, env: dict[str, str]) -> tuple[float, float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [
                "hyperfine",
                "-N",
                "--warmup",
                "1",
                "--runs",
                str(runs),
                "--export-json",
                out.name,
                " ".join(cmd),
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        result = json.loads(Path(out.name).read_text())["results"][0]
    return result["median"], result["min"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--executable", type=Path, default=ROOT / "dist" / "cvmfs-client")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if not args.executable.is_file():
        print(f"{args.executable} is missing: python -m cvmfs_client.build_executable", file=sys.stderr)
        return 2
    compile_packages()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CVMFS_CLIENT_CONFIG_DIR": tmp, "CVMFS_CACHE_BASE": f"{tmp}/cache"}
        rows = [
            ("native /bin/true", ["/bin/true"]),
            ("installed cvmfs-client run -- /bin/true", [*_installed_command(), "run", "--", "/bin/true"]),
            (
                "one-file executable run -- /bin/true",
                [str(args.executable.absolute()), "run", "--", "/bin/true"],
            ),
        ]
        measure = _hyperfine if shutil.which("hyperfine") else _loop
        print(
            f"{'':44}{'median':>10}{'min':>10}   ({'hyperfine' if measure is _hyperfine else 'timing loop'},"
            f" {args.runs} runs)"
        )
        for label, cmd in rows:
            median, best = measure(cmd, args.runs, env)
            print(f"{label:44}{median * 1000:8.1f} ms{best * 1000:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
