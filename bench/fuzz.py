"""Long-run fuzzing of every parser that reads network or disk data, with the test properties.

Usage (from the repository root)::

    python bench/fuzz.py --minutes N [--only SUBSTRING[,...]] [--batch 500]

Runs the very same (strategy, check) pairs as ``tests/fuzz/test_fuzz_*.py`` (their ``PROPERTIES``),
but with a time budget instead of ~200 inputs: the budget is split evenly between the parsers,
each parser runs hypothesis batches of ``--batch`` fresh random inputs until its share is used.
The property is the same everywhere: hostile input may raise the module's own typed errors and
nothing else. Prints per parser the inputs tried (including shrinking of failures), the failures
found (distinct exception type + raising line) and the smallest failing input hypothesis found.
Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Verbosity, given, settings  # noqa: E402

MODULES = [
    "manifest",
    "whitelist",
    "keys",
    "catalog",
    "config_parser",
    "history",
    "objects",
    "proxy_http",
    "geoapi",
    "chunking",
    "http1",
]


def load_properties(only: str | None) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name in MODULES:
        module = importlib.import_module(f"tests.fuzz.test_fuzz_{name}")
        props.update(module.PROPERTIES)
    wanted = None if only is None else only.split(",")
    return {k: v for k, v in props.items() if wanted is None or any(w in k for w in wanted)}


def fuzz_one(
    strategy: Any, check: Any, seconds: float, batch: int
) -> tuple[int, Counter[str], dict[str, str]]:
    tried = 0
    failures: Counter[str] = Counter()
    examples: dict[str, str] = {}
    smallest: list[Any] = []

    def counted(value: Any) -> None:
        nonlocal tried
        tried += 1
        smallest[:] = [value]
        check(value)

    run = settings(
        max_examples=batch,
        deadline=None,
        database=None,
        verbosity=Verbosity.quiet,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )(given(strategy)(counted))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - every escape is a finding
            where = exc.__traceback__
            while where is not None and where.tb_next is not None:
                where = where.tb_next
            site = f"{Path(where.tb_frame.f_code.co_filename).name}:{where.tb_lineno}" if where else "?"
            key = f"{type(exc).__name__} at {site}"  # one bug, whatever the message's details
            failures[key] += 1
            message = str(exc).splitlines()[0][:100] if str(exc) else ""
            shown = repr(smallest[0])[:300] if smallest else "?"
            examples.setdefault(key, f"{message}\n      smallest input: {shown}")
    return tried, failures, examples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, required=True, help="total budget, split between the parsers")
    ap.add_argument("--only", help="run only the parsers whose name contains one of these (comma-separated)")
    ap.add_argument("--batch", type=int, default=500, help="inputs per hypothesis run (default 500)")
    args = ap.parse_args()

    props = load_properties(args.only)
    if not props:
        print(f"no parser matches {args.only!r}", file=sys.stderr)
        return 2
    share = args.minutes * 60 / len(props)
    print(f"fuzzing {len(props)} parsers, {share:.0f} s each")
    print(f"{'parser':32} {'inputs':>9} {'inputs/s':>9} {'failures':>8}")
    total_failures = 0
    rows = []
    for name, (strategy, check) in props.items():
        start = time.monotonic()
        tried, failures, examples = fuzz_one(strategy, check, share, args.batch)
        elapsed = time.monotonic() - start
        total_failures += len(failures)
        rows.append((name, tried, failures, examples))
        print(f"{name:32} {tried:>9} {tried / elapsed:>9.0f} {len(failures):>8}", flush=True)
        for key, count in failures.items():
            print(f"    {count} x {key}: {examples[key]}", flush=True)
    print(f"total: {sum(r[1] for r in rows)} inputs, {total_failures} distinct failures")
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
