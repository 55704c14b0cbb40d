"""Soak: parallel jobs under the interposer against a Stratum 1 that fails at random, through
cvmfs-proxy, every byte checked.

Usage (from the repository root; needs nginx, like the integration tests)::

    python bench/soak.py [--minutes 10] [--jobs 8] [--rate 0.1] [--seed 1]

What runs:

- a published repository (``soak.example.org``, built here from a seed): ``--small`` files of
  128 B-256 KiB (half random, half text) and ``--large`` random files of ``--large-mib`` MiB,
  chunked by the publisher into 1-4 MiB chunks; the sha256 of every file is known;
- the fault origin (tests/faultorigin.py) serving it in random mode: a fraction ``--rate`` of
  the requests get a random fault of any kind (wrong bytes, truncation, reset, stall of
  ``--stall`` seconds, slow drip, 5xx, wrong Content-Length, redirect loops), and a real nginx
  serving the same tree as the second server (``--no-failover``: the fault origin alone);
- cvmfs-proxy in front of both (``CVMFS_HTTP_PROXY``), with a 16 MiB cache (objects up to 4 MiB;
  4 MiB of it in memory) that the large files' chunks keep churning, so that most requests go
  upstream in every round and keep meeting faults;
- ``--jobs`` workers, each running ``cvmfs-client run -- sha256sum FILE...`` (10 random small
  files and, one time in three, a large one) again and again, all with one node cache
  (``CVMFS_CACHE_BASE``); every printed checksum is compared with the known one.

The run is cut into rounds of ``--round-seconds``: at the end of each, the workers finish their
job, ``cvmfs-client cache fsck`` checks the node cache, and the cache (objects and the
interposer's shadow trees) is removed, so that the next round reads cold again and the faults
keep being met (a warm shadow tree needs no network at all).

Invariants (exit status 1 if any fails): no wrong byte, no hung job (``--job-deadline``), every
fsck clean, jobs see only clean errors (EIO), no tracer error (traceback, internal error, exit
status other than the job's), faults were injected, the proxy is alive at the end. Peak RSS and
open descriptors of the tracers (``cvmfs-client run`` processes) and of the proxy are sampled
from /proc and printed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvmfs_client.publisher import publish  # noqa: E402
from tests.disk_usage import held_bytes  # noqa: E402
from tests.faultorigin import ALL_FAULTS, FaultOrigin  # noqa: E402
from tests.integration.nginx import NginxServer, start_nginx  # noqa: E402
from tests.proxy.procs import ProxyProcess, start_proxy  # noqa: E402

FQRN = "soak.example.org"
MOUNT = f"/cvmfs/{FQRN}"
CHUNKS = (1 << 20, 2 << 20, 4 << 20)
FILES_PER_JOB = 10
LARGE_EVERY = 3  # one job in three also reads a large (chunked) file
CLEAN_ERRORS = frozenset({"Input/output error"})  # what a job may see when every server failed
JOB_EXIT_CODES = frozenset({0, 1})  # sha256sum: all read / some failed
SAMPLE_INTERVAL = 0.2
WORDS = ("cvmfs", "catalog", "object", "chunk", "proxy", "stratum", "manifest", "whitelist", "tracer")

Truth = dict[str, tuple[int, str]]  # relative path -> (size, sha256)


# -- the tree -------------------------------------------------------------------------------------


def build_tree(src: Path, seed: int, small: int, large: int, large_mib: int) -> Truth:
    """Write the soak tree under ``src``; returns the size and sha256 of every file."""
    rng = random.Random(seed)
    truth: Truth = {}
    for i in range(small):
        size = int(2 ** rng.uniform(7, 18))
        if i % 2:  # incompressible
            rel, data = f"d{i % 20:02d}/f{i:04d}.bin", rng.randbytes(size)
        else:  # text: compresses well
            words = " ".join(f"{rng.choice(WORDS)}-{rng.randrange(10**6)}" for _ in range(size // 12 + 1))
            rel, data = f"d{i % 20:02d}/f{i:04d}.txt", words.encode()[:size]
        truth[rel] = _write(src / rel, data)
    for i in range(large):
        rel = f"big/large-{i}.bin"
        truth[rel] = _write(src / rel, rng.randbytes(large_mib * (1 << 20) + rng.randrange(1 << 20)))
    return truth


def _write(path: Path, data: bytes) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return len(data), hashlib.sha256(data).hexdigest()


# -- judging one job (pure) -----------------------------------------------------------------------


@dataclass
class JobResult:
    """What one job's output says about the files it was asked to read."""

    files_ok: int = 0
    bytes_ok: int = 0
    wrong: list[str] = field(default_factory=list)
    wrong_bytes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    unexplained: list[str] = field(default_factory=list)
    unclean: str | None = None  # why this run of the tracer itself is suspect


_ERROR_LINE = re.compile(r"^sha256sum: (/cvmfs/\S+): (.+)$")


def judge(returncode: int | None, stdout: str, stderr: str, paths: Sequence[str], truth: Truth) -> JobResult:
    """Compare a ``sha256sum`` job's output with the known checksums of ``paths`` (relative)."""
    result = JobResult()
    sums: dict[str, str] = {}
    for line in stdout.splitlines():
        digest, _, path = line.partition("  ")
        sums[path] = digest
    failed = {m.group(1): m.group(2) for m in map(_ERROR_LINE.match, stderr.splitlines()) if m}
    for rel in paths:
        size, sha = truth[rel]
        path = f"{MOUNT}/{rel}"
        if path in sums:
            if sums[path] == sha:
                result.files_ok += 1
                result.bytes_ok += size
            else:
                result.wrong.append(rel)
                result.wrong_bytes += size
        elif path in failed:
            result.errors[failed[path]] += 1
        elif returncode is not None:  # a job killed at its deadline is counted as hung instead
            result.unexplained.append(rel)
    if "Traceback" in stderr or "internal error" in stderr:
        result.unclean = "tracer error: " + stderr.strip().splitlines()[-1][:300]
    elif returncode is not None and returncode not in JOB_EXIT_CODES:
        result.unclean = f"exit status {returncode}: " + (stderr.strip().splitlines() or [""])[-1][:300]
    return result


# -- sampling /proc -------------------------------------------------------------------------------


@dataclass
class Peak:
    """Largest RSS / fd count seen for one kind of process, and the first and last samples."""

    rss_kb: int = 0
    fds: int = 0
    samples: int = 0
    first: tuple[int, int] | None = None
    last: tuple[int, int] | None = None

    def add(self, rss_kb: int, fds: int) -> None:
        self.rss_kb = max(self.rss_kb, rss_kb)
        self.fds = max(self.fds, fds)
        self.samples += 1
        self.first = self.first or (rss_kb, fds)
        self.last = (rss_kb, fds)


def read_proc(pid: int) -> tuple[int, int] | None:
    """(peak RSS in kB (VmHWM), open fds) of a live process, None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return (int(m.group(1)) if m else 0), fds


class Sampler(threading.Thread):
    """Samples registered processes every ``SAMPLE_INTERVAL`` until stopped."""

    def __init__(self) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.peaks: dict[str, Peak] = {"tracer": Peak(), "proxy": Peak()}
        self._pids: dict[int, str] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()

    def watch(self, pid: int, kind: str) -> None:
        with self._lock:
            self._pids[pid] = kind

    def forget(self, pid: int) -> None:
        with self._lock:
            self._pids.pop(pid, None)

    def run(self) -> None:
        while not self._done.wait(SAMPLE_INTERVAL):
            with self._lock:
                pids = list(self._pids.items())
            for pid, kind in pids:
                got = read_proc(pid)
                if got is not None:
                    with self._lock:
                        self.peaks[kind].add(*got)

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join()


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Totals:
    jobs: int = 0
    exits: Counter[str] = field(default_factory=Counter)
    files_ok: int = 0
    bytes_ok: int = 0
    wrong: list[str] = field(default_factory=list)
    wrong_bytes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    unexplained: list[str] = field(default_factory=list)
    unclean: list[str] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)
    fsck: list[tuple[int, str]] = field(default_factory=list)  # (exit status, last line) per round
    over_quota: list[str] = field(default_factory=list)  # rounds that ended with the disk over --quota
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, returncode: int | None, result: JobResult) -> None:
        with self.lock:
            self.jobs += 1
            self.exits["hung" if returncode is None else str(returncode)] += 1
            self.files_ok += result.files_ok
            self.bytes_ok += result.bytes_ok
            self.wrong += result.wrong
            self.wrong_bytes += result.wrong_bytes
            self.errors.update(result.errors)
            self.unexplained += result.unexplained
            if result.unclean:
                self.unclean.append(result.unclean)


@dataclass(frozen=True)
class Setup:
    env: dict[str, str]
    truth: Truth
    small: list[str]
    large: list[str]
    deadline: float


def run_job(setup: Setup, paths: list[str], sampler: Sampler) -> tuple[int | None, str, str]:
    """One ``cvmfs-client run -- sha256sum ...``; killed (returncode None) past the deadline."""
    cmd = [
        sys.executable,
        "-m",
        "cvmfs_client",
        "run",
        "--",
        "sha256sum",
        *(f"{MOUNT}/{p}" for p in paths),
    ]
    proc = subprocess.Popen(
        cmd,
        env=setup.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the deadline kills the tracer and the job together
    )
    sampler.watch(proc.pid, "tracer")
    try:
        out, err = proc.communicate(timeout=setup.deadline)
        returncode: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        returncode = None
    finally:
        sampler.forget(proc.pid)
    return returncode, out.decode(errors="replace"), err.decode(errors="replace")


def worker(index: int, seed: int, setup: Setup, until: float, totals: Totals, sampler: Sampler) -> None:
    rng = random.Random(seed * 1000 + index)
    while time.monotonic() < until:
        paths = rng.sample(setup.small, min(FILES_PER_JOB, len(setup.small)))
        if setup.large and rng.randrange(LARGE_EVERY) == 0:
            paths.append(rng.choice(setup.large))
        returncode, out, err = run_job(setup, paths, sampler)
        result = judge(returncode, out, err, paths, setup.truth)
        totals.add(returncode, result)
        if returncode is None:
            with totals.lock:
                totals.hung.append(" ".join(paths))


def fsck_and_wipe(cache_base: Path, env: dict[str, str]) -> tuple[int, str]:
    """``cvmfs-client cache fsck`` of the node cache, then remove the whole cache base."""
    shared = cache_base / "shared"
    if not shared.exists():
        return 0, "no cache yet"
    r = subprocess.run(
        [sys.executable, "-m", "cvmfs_client.cli", "cache", "fsck", "--cache-dir", str(shared)],
        env=env,
        capture_output=True,
        timeout=600,
    )
    lines = (r.stdout.decode() + r.stderr.decode()).strip().splitlines()
    shutil.rmtree(cache_base, ignore_errors=True)
    return r.returncode, lines[-1] if lines else ""


# -- report (pure) --------------------------------------------------------------------------------


def mib(kb_or_bytes: float, kb: bool = False) -> str:
    return f"{kb_or_bytes / (1024 if kb else 1 << 20):.1f} MiB"


def failures(totals: Totals, faults_injected: int, proxy_alive: bool) -> list[str]:
    """The invariants that did not hold (empty: the soak passed)."""
    bad = []
    if totals.wrong_bytes or totals.wrong:
        bad.append(f"{totals.wrong_bytes} wrong bytes in {len(totals.wrong)} files: {totals.wrong[:5]}")
    if totals.hung:
        bad.append(f"{len(totals.hung)} hung jobs")
    unclean_errors = {k: v for k, v in totals.errors.items() if k not in CLEAN_ERRORS}
    if unclean_errors:
        bad.append(f"jobs saw errors other than EIO: {unclean_errors}")
    if totals.unexplained:
        bad.append(f"{len(totals.unexplained)} files neither read nor reported failed")
    if totals.unclean:
        bad.append(f"{len(totals.unclean)} tracer runs ended badly, e.g. {totals.unclean[0]}")
    if totals.over_quota:
        bad.append(f"disk over the quota once every job had ended: {totals.over_quota}")
    if any(code != 0 for code, _ in totals.fsck):
        bad.append(f"cache fsck found damage: {[line for code, line in totals.fsck if code]}")
    if not totals.jobs or not totals.bytes_ok:
        bad.append("no job read anything")
    if not faults_injected:
        bad.append("no fault was injected")
    if not proxy_alive:
        bad.append("the proxy died")
    return bad


def round_line(n: int, seconds: float, totals: Totals, faults: int, requests: int) -> str:
    return (
        f"round {n}: {seconds:5.0f} s, jobs {totals.jobs}, files {totals.files_ok} ({mib(totals.bytes_ok)}), "
        f"wrong {totals.wrong_bytes}, errors {sum(totals.errors.values())}, hung {len(totals.hung)}, "
        f"faults {faults}/{requests}, fsck: {totals.fsck[-1][1] if totals.fsck else '-'}"
    )


def _usage(peak: Peak) -> str:
    text = f"RSS peak {mib(peak.rss_kb, kb=True)}, open fds peak {peak.fds}"
    if peak.first and peak.last:
        text += (
            f" (first sample {mib(peak.first[0], kb=True)}, {peak.first[1]} fds;"
            f" last {mib(peak.last[0], kb=True)}, {peak.last[1]} fds)"
        )
    return text + f", {peak.samples} samples"


PROXY_COUNTERS = ("requests", "hits", "misses", "upstream_requests", "upstream_errors", "hash_mismatches")


def report_lines(
    args: argparse.Namespace,
    totals: Totals,
    origin: dict[str, object],
    peaks: dict[str, Peak],
    proxy_stats: dict[str, float],
    elapsed: float,
    bad: list[str],
) -> list[str]:
    faults = origin["faults"]
    assert isinstance(faults, dict)
    exits = ", ".join(f"{k}: {v}" for k, v in sorted(totals.exits.items()))
    errors = ", ".join(f"{k}: {v}" for k, v in totals.errors.most_common()) or "none"
    by_kind = ", ".join(f"{f.value} {faults.get(f.value, 0)}" for f in ALL_FAULTS)
    clean_rounds = sum(1 for code, _ in totals.fsck if code == 0)
    servers = "the fault origin alone" if args.no_failover else "the fault origin, then nginx"
    lines = [
        f"soak: {elapsed / 60:.1f} min, {args.jobs} parallel jobs under cvmfs-client run, {servers},"
        f" through cvmfs-proxy; {args.rate:.0%} of requests faulted, every kind (stalls {args.stall:g} s)",
        f"jobs run:            {totals.jobs} (exit status {exits})",
        f"bytes verified:      {totals.bytes_ok} ({mib(totals.bytes_ok)}) in {totals.files_ok} files",
        f"wrong bytes:         {totals.wrong_bytes} ({len(totals.wrong)} files)",
        f"hung jobs:           {len(totals.hung)} (deadline {args.job_deadline:g} s)",
        f"errors seen by jobs: {errors}"
        + (f"; unexplained: {len(totals.unexplained)}" if totals.unexplained else ""),
        f"faults injected:     {sum(faults.values())} of {origin['requests']} requests: {by_kind}",
        f"cache fsck:          {clean_rounds} of {len(totals.fsck)} rounds clean",
        f"tracers:             {_usage(peaks['tracer'])}",
        f"proxy:               {_usage(peaks['proxy'])}",
        "proxy counters:      " + ", ".join(f"{k} {int(proxy_stats.get(k, 0))}" for k in PROXY_COUNTERS),
        f"fault origin:        {origin['open_connections']} connections open at the end",
        "result:              " + ("PASS" if not bad else "FAIL"),
    ]
    return lines + [f"  - {b}" for b in bad]


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=10.0, help="how long jobs keep starting (default 10)")
    ap.add_argument("--jobs", type=int, default=8, help="parallel jobs (default 8)")
    ap.add_argument("--rate", type=float, default=0.1, help="fraction of requests faulted (default 0.1)")
    ap.add_argument("--stall", type=float, default=3.0, help="seconds a stall lasts (default 3)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--small", type=int, default=400, help="small files in the tree (default 400)")
    ap.add_argument("--large", type=int, default=4, help="large chunked files (default 4)")
    ap.add_argument("--large-mib", type=int, default=12, help="size of a large file (default 12 MiB)")
    ap.add_argument(
        "--round-seconds", type=float, default=30.0, help="cache wiped after each round (default 30)"
    )
    ap.add_argument(
        "--job-deadline", type=float, default=120.0, help="a job running longer is hung (default 120)"
    )
    ap.add_argument("--no-failover", action="store_true", help="the fault origin is the only server")
    ap.add_argument(
        "--quota",
        type=int,
        default=None,
        help="CVMFS_QUOTA_LIMIT in MiB: jobs evict while others read, and each round must end "
        "with the cache and the interposer's links within it (default: unlimited)",
    )
    ap.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    return ap.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cvmfs-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    truth = build_tree(work / "src", args.seed, args.small, args.large, args.large_mib)
    root = work / "stratum1"
    publish(work / "src", FQRN, root / FQRN, work / "keys", chunk_sizes=CHUNKS)
    trusted = work / "trusted"
    trusted.mkdir(exist_ok=True)
    shutil.copy(work / "keys" / f"{FQRN}.pub", trusted)
    (work / "etc").mkdir(exist_ok=True)
    size = mib(sum(s for s, _ in truth.values()))
    print(f"tree: {len(truth)} files, {size}, published in {time.monotonic() - t0:.1f} s", flush=True)

    nginx: NginxServer | None = None
    proxy: ProxyProcess | None = None
    sampler = Sampler()
    origin = FaultOrigin(root, stall_seconds=args.stall, drip_bytes=16, drip_interval=0.1).start()
    try:
        origin.random_faults(args.rate, ALL_FAULTS, seed=args.seed)
        servers = [origin.url]
        if not args.no_failover:
            nginx = start_nginx(root, work / "nginx")
            servers.append(nginx.server_url)
        # A small proxy cache: it keeps storing and evicting, and most misses go upstream every
        # round (a cache holding the tree would hide the faulty server after the first round).
        proxy = start_proxy(
            work / "proxy", "--upstream-timeout", "2", "--cache-size", "16M", "--memory-cache", "4M"
        )
        sampler.watch(proxy.process.pid, "proxy")
        sampler.start()
        cache_base = work / "cache"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "LANG": "C.UTF-8",
            "CVMFS_CLIENT_CONFIG_DIR": str(work / "etc"),
            "CVMFS_REPOSITORIES": FQRN,
            "CVMFS_SERVER_URL": ";".join(servers),
            "CVMFS_HTTP_PROXY": proxy.url,
            "CVMFS_KEYS_DIR": str(trusted),
            "CVMFS_CACHE_BASE": str(cache_base),
            **({"CVMFS_QUOTA_LIMIT": str(args.quota)} if args.quota is not None else {}),
            "CVMFS_TIMEOUT": "3",
            "CVMFS_TIMEOUT_DIRECT": "3",
            "CVMFS_BACKOFF_INIT": "0.1",
            "CVMFS_BACKOFF_MAX": "0.5",
            "CVMFS_HOST_RESET_AFTER": "5",  # back to the fault origin soon after each failover
        }
        small = sorted(p for p in truth if not p.startswith("big/"))
        large = sorted(p for p in truth if p.startswith("big/"))
        setup = Setup(env, truth, small, large, args.job_deadline)
        totals = Totals()
        start = time.monotonic()
        end = start + args.minutes * 60
        round_no = 0
        while time.monotonic() < end:
            round_no += 1
            until = min(end, time.monotonic() + args.round_seconds)
            threads = [
                # Daemons: Ctrl-C ends the run without waiting for the jobs under way.
                threading.Thread(
                    target=worker, args=(i, args.seed, setup, until, totals, sampler), daemon=True
                )
                for i in range(args.jobs)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if args.quota is not None and (held := held_bytes(cache_base)) > args.quota << 20:
                totals.over_quota.append(f"round {round_no}: {mib(held)} on disk, quota {args.quota} MiB")
            totals.fsck.append(fsck_and_wipe(cache_base, env))
            stats = origin.stats
            line = round_line(round_no, time.monotonic() - start, totals, stats.total_faults, stats.requests)
            print(line, flush=True)
        elapsed = time.monotonic() - start
        proxy_alive = proxy.process.poll() is None
        proxy_stats = proxy.stats() if proxy_alive else {}
        sampler.stop()
        stats = origin.stats
        origin_view: dict[str, object] = {
            "faults": stats.faults,
            "requests": stats.requests,
            "open_connections": origin.open_connections,
        }
        bad = failures(totals, stats.total_faults, proxy_alive)
        for line in report_lines(args, totals, origin_view, sampler.peaks, proxy_stats, elapsed, bad):
            print(line)
        return 1 if bad else 0
    finally:
        sampler.stop()
        if proxy is not None:
            proxy.stop()
        if nginx is not None:
            nginx.stop()
        origin.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
