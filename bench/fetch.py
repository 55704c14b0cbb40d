"""Cold-read / pre-warm throughput against the plain-HTTP limit, in one run.

Usage (from the repository root; needs nginx, and curl for the native row)::

    python bench/fetch.py [--files 3000] [--large 4] [--large-mib 20] [-j N] [--rounds 5]

Builds a repository of many small files (1-16 KiB) and a few large chunked ones with the
project's publisher, serves it with a real nginx (the integration-test harness), then measures
on the very same object URLs and with the same number of parallel workers:

1. the limit: a plain parallel download (``curl --parallel`` when curl exists, and threaded
   Python downloaders: ``http.client`` with one persistent connection per thread, and
   ``requests`` with one session per thread), bodies discarded;
2. the client: a cold read (``-j`` processes, jobs sharing one empty node cache, each opening
   and reading every file of its share through ``Repository.open``: path lookup, fetch,
   verify, inflate, write, index), and ``prewarm`` into an empty node cache and into an empty
   alien directory;

and prints objects/s, MB/s (stored bytes on the wire) and the ratio of each client run to the
limit, taken within each round. Catalogs are fetched before the timed part (the walk needs
them) and are not in the object list of either side.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvmfs_client import prewarm  # noqa: E402
from cvmfs_client.client import open_repository  # noqa: E402
from cvmfs_client.publisher import publish  # noqa: E402
from tests.integration.nginx import start_nginx  # noqa: E402

FQRN = "bench.example.org"
CURL = "curl --parallel"
LIMIT = "python http.client threads"  # the reference of the targets (see bench/README.md)
# Paths per task handed to a cold-read job (a queue round trip per batch, not per file).
COLD_READ_BATCH = 16


@dataclass
class Result:
    name: str
    workers: str
    objects: int
    stored_bytes: int
    seconds: float  # median over the rounds
    vs: dict[str, float]  # reference row -> median over the rounds of (its time / this time)

    @property
    def rate(self) -> float:
        return self.objects / self.seconds

    @property
    def mbps(self) -> float:
        return self.stored_bytes / self.seconds / 1e6


def build_tree(src: Path, files: int, large: int, large_mib: int, seed: int = 1) -> None:
    """``files`` small files (1-16 KiB, half compressible text, half random) in 50 directories,
    and ``large`` random files of ``large_mib`` MiB (chunked by the publisher)."""
    rng = random.Random(seed)
    words = [rng.randbytes(6).hex().encode() for _ in range(500)]
    for i in range(files):
        d = src / f"pkg{i % 50:02}" / f"sub{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.randrange(1024, 16 * 1024)
        if i % 2:
            data = rng.randbytes(size)
        else:
            data = b" ".join(rng.choice(words) for _ in range(size // 13 + 1))[:size]
        (d / f"f{i:05}.dat").write_bytes(data)
    for i in range(large):
        (src / f"large{i}.bin").write_bytes(rng.randbytes(large_mib << 20))


def object_urls(prepared: prewarm.Prepared, base: str) -> list[str]:
    return [f"{base}/{job.obj.content_hash.object_path(job.obj.kind)}" for job in prepared.jobs()]


def stored_size(s0: Path, prepared: prewarm.Prepared) -> int:
    return sum(
        (s0 / FQRN / job.obj.content_hash.object_path(job.obj.kind)).stat().st_size for job in prepared.jobs()
    )


def run_curl(urls: list[str], workers: int, workdir: Path) -> float | None:
    curl = shutil.which("curl")
    if curl is None:
        return None
    config = workdir / "curl.conf"
    config.write_text("".join(f'url = "{u}"\noutput = "/dev/null"\n' for u in urls))
    start = time.perf_counter()
    subprocess.run(
        [
            curl,
            "--parallel",
            "--parallel-max",
            str(workers),
            "-sS",
            "-f",
            "--no-progress-meter",
            "-K",
            str(config),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def _threaded(urls: list[str], workers: int, make: Callable[[], Callable[[str], int]]) -> float:
    lock = threading.Lock()
    todo = list(reversed(urls))
    errors: list[str] = []

    def worker() -> None:
        get = make()
        while True:
            with lock:
                if not todo:
                    return
                url = todo.pop()
            try:
                get(url)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"{url}: {exc}")

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} downloads failed, e.g. {errors[0]}")
    return time.perf_counter() - start


def run_http_client(urls: list[str], workers: int, store: Path | None = None) -> float:
    """One persistent HTTP/1.1 connection per thread, body read in 64 KiB pieces and dropped.

    With ``store``, each body goes to a new temp file renamed to ``store/XX/name`` instead (no
    verification, no fsync, no index): the least file-system work any cache that keeps objects as
    files must do, to show how much of the gap to the plain download that alone explains.
    """

    def make() -> Callable[[str], int]:
        parts = urllib.parse.urlsplit(urls[0])
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)

        def get(url: str) -> int:
            path = urllib.parse.urlsplit(url).path
            conn.request("GET", path)
            resp = conn.getresponse()
            n = 0
            if store is None:
                while piece := resp.read(1 << 16):
                    n += len(piece)
            else:
                fd, tmp = tempfile.mkstemp(dir=store / "txn")
                with os.fdopen(fd, "wb") as out:
                    while piece := resp.read(1 << 16):
                        n += len(piece)
                        out.write(piece)
                name = path.rsplit("/", 2)
                os.replace(tmp, store / name[-2] / name[-1])
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            return n

        return get

    if store is not None:
        (store / "txn").mkdir(parents=True)
        for i in range(256):
            (store / f"{i:02x}").mkdir()
    return _threaded(urls, workers, make)


def run_requests(urls: list[str], workers: int) -> float:
    def make() -> Callable[[str], int]:
        session = requests.Session()

        def get(url: str) -> int:
            with session.get(url, stream=True, timeout=10) as resp:
                resp.raise_for_status()
                return sum(len(p) for p in resp.iter_content(1 << 16))

        return get

    return _threaded(urls, workers, make)


def _cold_reader(
    env: dict[str, str],
    tasks: multiprocessing.Queue,
    results: multiprocessing.Queue,
    barrier: threading.Barrier,
) -> None:
    """One job of the cold read: its own Repository (catalogs fetched before the clock starts),
    then every file of the batches it takes opened and read to its end."""
    os.environ.update(env)
    with open_repository(FQRN) as repo:
        repo.listdir("")
        barrier.wait()
        nbytes = 0
        while (batch := tasks.get()) is not None:
            for path in batch:
                with repo.open(path) as f:
                    while piece := f.read(1 << 20):
                        nbytes += len(piece)
    results.put(nbytes)


def run_cold_read(env: dict[str, str], cache_base: Path, paths: list[str], jobs: int) -> tuple[float, int]:
    """``jobs`` processes (jobs on a node sharing one empty node cache) read ``paths`` through
    ``Repository.open`` (NodeCache.get: lookup, fetch, verify, inflate, write, index); returns
    (seconds from the start signal to the last file read, bytes read)."""
    ctx = multiprocessing.get_context("fork")
    tasks: multiprocessing.Queue = ctx.Queue()
    results: multiprocessing.Queue = ctx.Queue()
    barrier = ctx.Barrier(jobs + 1)
    env = {**env, "CVMFS_CACHE_BASE": str(cache_base)}
    for i in range(0, len(paths), COLD_READ_BATCH):
        tasks.put(paths[i : i + COLD_READ_BATCH])
    for _ in range(jobs):
        tasks.put(None)
    workers = [ctx.Process(target=_cold_reader, args=(env, tasks, results, barrier)) for _ in range(jobs)]
    for w in workers:
        w.start()
    try:
        barrier.wait(timeout=60)
        start = time.perf_counter()
        nbytes = sum(results.get(timeout=600) for _ in workers)
        elapsed = time.perf_counter() - start
    finally:
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
    if any(w.exitcode for w in workers):
        raise RuntimeError(f"cold read failed: worker exit codes {[w.exitcode for w in workers]}")
    return elapsed, nbytes


def regular_files(env: dict[str, str]) -> tuple[list[str], int]:
    """Every regular file of the repository (largest first, as pre-warming orders its work) and
    their total decoded size."""
    old = dict(os.environ)
    os.environ.update(env)
    try:
        with open_repository(FQRN) as repo:
            entries = [e for e in repo.walk("") if e.is_regular]
    finally:
        os.environ.clear()
        os.environ.update(old)
    entries.sort(key=lambda e: -e.size)
    return [e.path for e in entries], sum(e.size for e in entries)


def run_client(
    env: dict[str, str], destination: str, target: Path, jobs: int, processes: int | None
) -> tuple[prewarm.Prepared, prewarm.Report]:
    """Plan (catalogs fetched, not timed), then time the execution into an empty destination."""
    old = dict(os.environ)
    os.environ.update(env)
    try:
        kwargs = {"alien_dir": target} if destination == "alien" else {"cache_dir": target}
        with prewarm.prepare([f"/cvmfs/{FQRN}"], [], **kwargs) as prepared:  # type: ignore[arg-type]
            report = prewarm.execute(
                prepared.jobs(),
                prepared.fetcher_settings,
                prepared.destination,
                prewarm.ExecutionSettings(jobs=jobs, processes=processes),
            )
        if report.failures:
            raise RuntimeError(f"client run failed: {report.failures[:3]}")
        return prepared, report
    finally:
        os.environ.clear()
        os.environ.update(old)


def _spin(loops: int) -> None:
    x = 0
    for i in range(loops):
        x += i


def effective_cores(loops: int = 3_000_000) -> float:
    """How many cores the machine gives right now: two busy processes against one.

    On a shared VM the second core may be busy elsewhere; the client's worker processes need
    it and the single-process Python limit does not, so the ratios depend on it.
    """
    ctx = multiprocessing.get_context("fork")
    start = time.perf_counter()
    _spin(loops)
    one = time.perf_counter() - start
    procs = [ctx.Process(target=_spin, args=(loops,)) for _ in range(2)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return 2 * one / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--large", type=int, default=4)
    ap.add_argument("--large-mib", type=int, default=20)
    ap.add_argument("-j", "--jobs", type=int, default=prewarm.default_jobs(), help="workers on both sides")
    ap.add_argument("--processes", type=int, default=None, help="client worker processes (default: auto)")
    ap.add_argument("--rounds", type=int, default=5, help="repetitions; the median is reported")
    ap.add_argument("--nginx-workers", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-fetch-"))
    work.mkdir(parents=True, exist_ok=True)
    src, s0, keys = work / "src", work / "s0", work / "keys"
    if not (s0 / FQRN / ".cvmfspublished").exists():
        shutil.rmtree(src, ignore_errors=True)
        build_tree(src, args.files, args.large, args.large_mib)
        publish(src, FQRN, s0 / FQRN, keys)
    server = start_nginx(s0, work / "nginx", workers=args.nginx_workers)
    conf = work / "etc"
    conf.mkdir(exist_ok=True)
    env = {
        "CVMFS_SERVER_URL": server.server_url,
        "CVMFS_HTTP_PROXY": "DIRECT",
        "CVMFS_PUBLIC_KEY": str(keys / f"{FQRN}.pub"),
        "CVMFS_CACHE_BASE": str(work / "cache-base"),
        "CVMFS_CLIENT_CONFIG_DIR": str(conf),
    }
    rows: list[Result] = []
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    counter = iter(range(1 << 30))

    def fresh(name: str) -> Path:
        # A new directory per run, all removed at the end: on ext4 without a journal, creating
        # a file gets slow for minutes after many files were deleted (bench/README.md).
        return runs / f"{name}-{next(counter)}"

    cores = [effective_cores()]

    try:
        j = args.jobs
        prepared, _ = run_client(env, "node", fresh("plan"), j, args.processes)
        urls = object_urls(prepared, server.repo_url(FQRN))
        nbytes = stored_size(s0, prepared)
        n = len(urls)
        measures: dict[str, tuple[str, Callable[[], float]]] = {}
        if shutil.which("curl"):
            measures[CURL] = (str(j), lambda: run_curl(urls, j, work) or 0.0)
        measures[LIMIT] = (str(j), lambda: run_http_client(urls, j))
        measures["python requests threads"] = (str(j), lambda: run_requests(urls, j))
        measures["python http.client -> files"] = (str(j), lambda: run_http_client(urls, j, fresh("files")))
        shapes: dict[str, str] = {}

        def client(dest: str) -> Callable[[], float]:
            def measure() -> float:
                _, report = run_client(env, dest, fresh(dest), j, args.processes)
                assert report.fetched == n, (report.fetched, n)
                shapes[dest] = f"{j} ({report.processes}p x {report.threads}t)"
                return report.elapsed

            return measure

        files, file_bytes = regular_files({**env, "CVMFS_CACHE_BASE": str(fresh("walk"))})

        def cold_read() -> float:
            elapsed, read = run_cold_read(env, fresh("cold"), files, j)
            assert read == file_bytes, (read, file_bytes)
            return elapsed

        measures["client cold read -> node cache"] = (f"{j} processes", cold_read)
        measures["client prewarm -> node cache"] = ("node", client("node"))
        measures["client prewarm -> alien dir"] = ("alien", client("alien"))
        # Rounds interleave every measurement, so that load from elsewhere on the machine
        # spreads over all of them instead of skewing one. Ratios are taken within each round
        # (against the references measured moments before), then the median of each is reported.
        times: dict[str, list[float]] = {name: [] for name in measures}
        for _ in range(args.rounds):
            for name, (_, measure) in measures.items():
                times[name].append(measure())
        references = [name for name in (CURL, LIMIT) if name in times]
        for name, (workers, _) in measures.items():
            vs = {
                ref: _median([r / t for r, t in zip(times[ref], times[name], strict=True)])
                for ref in references
            }
            rows.append(Result(name, shapes.get(workers, workers), n, nbytes, _median(times[name]), vs))
        cores.append(effective_cores())
    finally:
        server.stop()
        shutil.rmtree(runs, ignore_errors=True)
    print_table(rows, args, cores)
    return 0


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def print_table(rows: list[Result], args: argparse.Namespace, cores: list[float]) -> None:
    print(
        f"\n{rows[0].objects} objects, {rows[0].stored_bytes / 1e6:.1f} MB stored, "
        f"{os.cpu_count()} cores ({cores[0]:.2f} effective before the rounds, {cores[1]:.2f} after), "
        f"nginx workers {args.nginx_workers}, median of {args.rounds}"
    )
    head = f"{'what':<32} {'workers':<14} {'seconds':>8} {'obj/s':>8} {'MB/s':>8} {'vs curl':>8} {'vs py':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        vs_curl = f"{r.vs[CURL]:.2f}" if CURL in r.vs else "-"
        print(
            f"{r.name:<32} {r.workers:<14} {r.seconds:8.2f} {r.rate:8.0f} {r.mbps:8.1f} "
            f"{vs_curl:>8} {r.vs[LIMIT]:8.2f}"
        )
    print(
        "\nratio used for the targets: 'vs py' = the plain Python http.client download of the same URLs\n"
        "with the same workers (bodies discarded), taken within each round, median over the rounds.\n"
        "'vs curl' is the distance to a native client. 'http.client -> files' is that download\n"
        "writing each body to its own file (temp + rename, no verification, no index).\n"
        "'effective' cores: two busy processes against one; the client's worker processes need the\n"
        "second core, the single-process limit does not."
    )


if __name__ == "__main__":
    sys.exit(main())
