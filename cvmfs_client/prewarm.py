"""Cache pre-warming: fetch everything a subtree or a job's name list needs, before the job runs.

An HPC site warms a node cache, or a shared directory that compute nodes read as their alien
tier, from a login node; the jobs then start without touching the network. Two steps, kept apart
so that the first is unit-tested without a server:

1. **Planning** (:class:`PlanBuilder`, pure; :func:`plan_subtree` / :func:`plan_names` feed it
   from a :class:`~.repository.Repository`): targets -> unique objects with their kind,
   compression and decoded size. Walking needs the catalogs, so they are downloaded here; they
   are the only downloads of ``--dry-run``.
2. **Execution** (:func:`execute`): the objects missing from the destination are fetched by a
   pool. One Python process tops out near 700 requests/s (``requests`` costs ~1.2 ms of CPU per
   request under the GIL, DESIGN.md "Measured here"), so the pool is several worker
   *processes* (one per download up to two per core, :func:`default_processes`), each with its
   own :class:`~.fetcher.Fetcher` (keep-alive sessions, the configured proxies and failover),
   and threads beyond that to hide latency.

Crash safety comes from the caches: an object gets its final name only by an atomic link or
rename after verification, so an interrupted run (Ctrl-C, ``kill -9``) leaves no corrupt object,
and a second run skips what is present (present = of the catalog's size: verified when it was
written, and not cut short by a crash of the machine since; ``cache fsck`` re-hashes).

Name lists use Parrot's format, one ``path|how`` per line (``how`` is how the job touched the
path: ``open``, ``stat``...) or a bare path. Content is fetched for every regular file unless
*every* line naming it says it was only looked at (:data:`METADATA_ONLY`); catalogs are fetched
for every path, so metadata questions work offline too.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import posixpath
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol, TextIO

from .cache import AlienCache, NodeCache, ObjectFetcher, Wanted
from .catalog import Chunk, DirEntry
from .errors import ConfigError, CvmfsError, FetchError, FormatError, LookupFailure
from .hashing import ContentHash, ObjectType
from .objects import Compression

if TYPE_CHECKING:
    from .fetcher import FetcherSettings
    from .repository import Repository

# Access kinds (the ``how`` of a name-list line) that never read a file's content. Anything else
# (open, exec, mmap, read, an unknown word, or no word at all) fetches the content: an extra
# object costs a download, a missing one fails an offline job.
METADATA_ONLY = frozenset(
    {
        "stat",
        "lstat",
        "access",
        "readlink",
        "lookup",
        "opendir",
        "readdir",
        "getdents",
        "chdir",
        "statfs",
        "metadatacopy",  # Parrot's -n word (and `cvmfs-client run -n`) for a path only looked at
    }
)
# Jobs per batch handed to a worker thread: amortizes queue traffic (a pickle and a pipe write
# per batch) without letting one thread sit on many large objects.
BATCH_OBJECTS = 32
BATCH_BYTES = 1 << 20
# Below this many objects a worker process costs more to start than it saves.
MIN_OBJECTS_PER_PROCESS = 64
# After Ctrl-C, downloads in flight get this long to finish before workers are killed (the
# caches are crash-safe either way; finishing just avoids re-downloading them).
STOP_GRACE_SECONDS = 10.0
# How often a non-terminal progress line is written, and how often a terminal one is redrawn.
LOG_INTERVAL_SECONDS = 10.0
REDRAW_INTERVAL_SECONDS = 0.1
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def default_jobs() -> int:
    """Parallel downloads by default: two per core (one waits on the network, one computes)."""
    return 2 * (os.cpu_count() or 1)


def default_processes(jobs: int, objects: int) -> int:
    """Worker processes for ``jobs`` parallel downloads of ``objects``: one per download up to
    two per core, threads beyond that (``execute`` gives each process ``jobs / processes``).

    Why processes first: threads of one process take turns at the GIL, and each turn is a
    hand-off through the kernel; separate processes just run. Measured with ``-j 4`` on 2 cores
    (bench/fetch.py, tmpfs, 10 interleaved rounds): 4 processes x 1 thread took 2-4% less time
    than 2 x 2 for the same work. Past two per core, more processes only add memory and
    switches, while threads still hide network latency. Below MIN_OBJECTS_PER_PROCESS objects
    per process, starting one costs more than it saves.
    """
    cores = os.cpu_count() or 1
    return max(1, min(jobs, 2 * cores, objects // MIN_OBJECTS_PER_PROCESS))


# -- name lists -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NameListEntry:
    """One line of a name list: an absolute path and how the job touched it (``""`` if unsaid)."""

    path: str
    how: str
    line: int

    @property
    def needs_content(self) -> bool:
        return self.how.lower() not in METADATA_ONLY


def parse_name_list(text: str, source: str) -> list[NameListEntry]:
    """Lines of ``path|how`` or ``path``; blank lines and ``#`` comments are skipped.

    The ``how`` is what follows the last ``|`` if it has no ``/`` (a path may contain ``|``).
    A relative path is a :class:`FormatError` naming the line: a name list records absolute
    paths, so anything else means a wrong file was given.
    """
    out: list[NameListEntry] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path, sep, how = line.rpartition("|")
        if not sep or "/" in how:
            path, how = line, ""
        path = path.strip()
        if not path.startswith("/"):
            raise FormatError(
                source, f"expected an absolute path (optionally followed by |how): {raw!r}", number
            )
        out.append(NameListEntry(path, how.strip(), number))
    return out


def split_repository_path(path: str) -> tuple[str, str] | None:
    """``/cvmfs/FQRN/a/b`` -> (``FQRN``, ``/a/b``); None for a path outside ``/cvmfs/<repository>``.

    Only ``..`` within the first two components is resolved lexically (it can leave the
    repository); later ones are left to :meth:`Repository.resolve`, which follows symlinks
    first, as the kernel does.
    """
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts[:2]:
        parts = [p for p in posixpath.normpath("/" + "/".join(parts)).split("/") if p]
    if len(parts) < 2 or parts[0] != "cvmfs" or parts[1] == "..":
        return None
    rest = parts[2:]
    return parts[1], "/" + "/".join(rest) if rest else ""


# -- planning (pure) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedObject:
    """One object to have in the cache; ``size`` is decoded bytes (the catalog's figure)."""

    content_hash: ContentHash
    kind: ObjectType
    compression: Compression
    size: int | None
    path: str  # the first file that needs it, for messages

    def describe(self) -> str:
        what = "chunk of " if self.kind is ObjectType.PARTIAL else ""
        return f"{what}{self.path} ({self.content_hash.object_path(self.kind)})"


@dataclass
class Plan:
    """What one repository needs for the requested targets."""

    fqrn: str
    objects: list[PlannedObject]
    files: int = 0  # regular files whose content is planned (empty files included)
    chunked_files: int = 0
    catalogs: list[ContentHash] = field(default_factory=list)
    certificate: ContentHash | None = None
    not_found: list[str] = field(default_factory=list)  # name-list paths absent from the repository
    unsupported: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    @property
    def total_bytes(self) -> int:
        return sum(o.size or 0 for o in self.objects)


class PlanBuilder:
    """Collects files into unique objects: a hash needed by many files (hardlinks, duplicates,
    shared chunks) is planned once, under the first path that needs it."""

    def __init__(self, fqrn: str) -> None:
        self.fqrn = fqrn
        self._objects: dict[str, PlannedObject] = {}
        self._paths: set[str] = set()
        self._chunked = 0
        self._not_found: list[str] = []
        self._unsupported: list[tuple[str, str]] = []

    def add_file(self, path: str, entry: DirEntry, chunks: Sequence[Chunk] = ()) -> None:
        """Plan the content of the regular file ``entry`` (named ``path``); other kinds are ignored."""
        if not entry.is_regular or path in self._paths:
            return
        if entry.is_external:
            self._unsupported.append((path, "external data files are not supported"))
            return
        if entry.is_chunked:
            if not chunks:
                self._unsupported.append((path, "chunked file without chunk rows"))
                return
            self._paths.add(path)
            self._chunked += 1
            for c in chunks:
                self._add(PlannedObject(c.content_hash, ObjectType.PARTIAL, entry.compression, c.size, path))
            return
        if entry.content_hash is None:
            if entry.size == 0:
                self._paths.add(path)  # the empty file is made locally, nothing to fetch
            else:
                self._unsupported.append((path, "regular file without a content hash"))
            return
        self._paths.add(path)
        self._add(PlannedObject(entry.content_hash, ObjectType.FILE, entry.compression, entry.size, path))

    def not_found(self, path: str) -> None:
        self._not_found.append(path)

    def _add(self, obj: PlannedObject) -> None:
        self._objects.setdefault(obj.content_hash.cache_name(), obj)

    def build(self, catalogs: Sequence[ContentHash] = (), certificate: ContentHash | None = None) -> Plan:
        return Plan(
            fqrn=self.fqrn,
            objects=list(self._objects.values()),
            files=len(self._paths),
            chunked_files=self._chunked,
            catalogs=list(catalogs),
            certificate=certificate,
            not_found=list(self._not_found),
            unsupported=list(self._unsupported),
        )


# -- planning from a repository (catalog I/O) -------------------------------------------------


def plan_subtree(repo: Repository, path: str, builder: PlanBuilder) -> None:
    """Every regular file below ``path`` (the start followed if it is a symlink, symlinks inside
    the subtree are not: their targets may be anywhere). Raises ``LookupFailure`` if absent."""
    start = repo.stat(path)
    for entry in repo.walk(start.path):
        if entry.is_regular:
            chunks = repo.chunks(entry) if entry.is_chunked else []
            builder.add_file(repo.mount_prefix + entry.path, entry, chunks)


def plan_names(repo: Repository, entries: Iterable[NameListEntry], builder: PlanBuilder) -> None:
    """Resolve each name (loading the catalogs on its way) and plan the content it needs.

    Paths absent from the repository are recorded, not raised: jobs probe many paths that do
    not exist (search paths), and their name lists say so.
    """
    for ne in entries:
        split = split_repository_path(ne.path)
        if split is None or split[0] != repo.fqrn:
            continue
        inner = split[1]
        try:
            entry = repo.stat(inner)
        except LookupFailure:
            try:  # a dangling or outward symlink: its own row is what the job saw
                repo.lookup(inner)
            except LookupFailure:
                builder.not_found(ne.path)
            continue
        if entry.is_dir:
            repo.listdir(entry.path)  # loads the catalog that lists it (a nested one, maybe)
        elif entry.is_regular and ne.needs_content:
            chunks = repo.chunks(entry) if entry.is_chunked else []
            builder.add_file(repo.mount_prefix + entry.path, entry, chunks)


def group_targets(
    paths: Sequence[str], names: Sequence[NameListEntry]
) -> dict[str, tuple[list[str], list[NameListEntry]]]:
    """Repository -> (subtrees, name-list entries), in order of first mention.

    A positional path outside ``/cvmfs/<repository>`` is a usage error (``FormatError``);
    name-list lines outside ``/cvmfs`` are skipped (a job touches ``/etc``, ``/tmp``...).
    """
    out: dict[str, tuple[list[str], list[NameListEntry]]] = {}
    for p in paths:
        split = split_repository_path(p)
        if split is None:
            raise FormatError(p, "expected a path of the form /cvmfs/REPOSITORY[/PATH]")
        out.setdefault(split[0], ([], []))[0].append(split[1])
    for ne in names:
        split = split_repository_path(ne.path)
        if split is not None:
            out.setdefault(split[0], ([], []))[1].append(ne)
    return out


# -- destinations -----------------------------------------------------------------------------


def _wanted(obj: PlannedObject) -> Wanted:
    return Wanted(obj.content_hash, obj.kind, obj.compression, obj.size)


class Destination(Protocol):
    """Where objects go: the node cache or a shared (alien) directory."""

    def present(self, obj: PlannedObject) -> bool: ...

    def store_many(
        self, objs: Sequence[PlannedObject], source: ObjectFetcher
    ) -> list[Path | CvmfsError | OSError]: ...

    def close(self) -> None: ...


class NodeDestination:
    """A node cache; an object in its (read-only) alien tier counts as present as well."""

    def __init__(self, cache: NodeCache) -> None:
        self.cache = cache

    def present(self, obj: PlannedObject) -> bool:
        try:
            size = self.cache.path_for(obj.content_hash).stat().st_size
        except FileNotFoundError:
            size = None
        # A file of another size was cut short by a crash: missing (the fetch replaces it).
        if size is not None and (obj.size is None or size == obj.size):
            return True
        alien = self.cache.alien
        return alien is not None and alien.lookup(obj.content_hash, obj.size) is not None

    def store_many(
        self, objs: Sequence[PlannedObject], source: ObjectFetcher
    ) -> list[Path | CvmfsError | OSError]:
        return self.cache.get_many([_wanted(o) for o in objs], source)

    def close(self) -> None:
        self.cache.close()


class AlienDestination:
    """A shared directory written directly (no node copy), plain files named by hash."""

    def __init__(self, alien: AlienCache) -> None:
        self.alien = alien

    def present(self, obj: PlannedObject) -> bool:
        return self.alien.lookup(obj.content_hash, obj.size) is not None

    def store_many(
        self, objs: Sequence[PlannedObject], source: ObjectFetcher
    ) -> list[Path | CvmfsError | OSError]:
        return self.alien.fill_many([_wanted(o) for o in objs], source)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class DestinationSpec:
    """How to open the destination again in a worker process (picklable)."""

    cache_dir: Path | None = None
    quota_bytes: int | None = None
    alien_dir: Path | None = None  # node mode: the node's read-only tier; alien mode: the target
    into_alien: bool = False

    def open(self) -> Destination:
        if self.into_alien:
            assert self.alien_dir is not None
            return AlienDestination(AlienCache(self.alien_dir, writable=True))
        assert self.cache_dir is not None
        alien = AlienCache(self.alien_dir) if self.alien_dir else None
        return NodeDestination(NodeCache(self.cache_dir, self.quota_bytes, alien))


# -- execution --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One object to fetch; ``source`` indexes the fetcher settings (one per repository)."""

    source: int
    obj: PlannedObject


class Outcome(NamedTuple):
    """What became of one job; sent back from worker processes in lists, so a tuple (a pickle
    and an unpickle cost ~1 us here, a frozen dataclass's ~3 us)."""

    index: int
    size: int
    error: str | None = None
    exit_code: int = 0


@dataclass
class Report:
    """What a run did; ``failures`` are (object, reason)."""

    fetched: int = 0
    fetched_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    failures: list[tuple[PlannedObject, str]] = field(default_factory=list)
    exit_codes: set[int] = field(default_factory=set)
    elapsed: float = 0.0
    interrupted: bool = False
    processes: int = 1
    threads: int = 1

    @property
    def exit_code(self) -> int:
        """0 ok; 130 interrupted; else the most specific code of the failures (4 network, 3 integrity)."""
        if self.interrupted:
            return 130
        if not self.failures:
            return 0
        for code in (4, 3):
            if code in self.exit_codes:
                return code
        return max(self.exit_codes or {1})


class EventLike(Protocol):
    """``threading.Event`` or ``multiprocessing.Event``: what workers check between batches."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


class Progress(Protocol):
    def start(self, objects: int, nbytes: int) -> None: ...

    def advance(self, objects: int, nbytes: int, failed: int) -> None: ...

    def finish(self) -> None: ...


def split_present(
    objects: Iterable[PlannedObject], destination: Destination
) -> tuple[list[PlannedObject], list[PlannedObject]]:
    """(missing, present): one ``stat`` per object; present objects were verified when written."""
    missing: list[PlannedObject] = []
    present: list[PlannedObject] = []
    for obj in objects:
        (present if destination.present(obj) else missing).append(obj)
    return missing, present


def batches(jobs: Sequence[Job]) -> Iterator[list[tuple[int, Job]]]:
    """(index, job) groups of at most BATCH_OBJECTS objects or about BATCH_BYTES bytes."""
    batch: list[tuple[int, Job]] = []
    nbytes = 0
    for index, job in enumerate(jobs):
        batch.append((index, job))
        nbytes += job.obj.size or 0
        if len(batch) >= BATCH_OBJECTS or nbytes >= BATCH_BYTES:
            yield batch
            batch, nbytes = [], 0
    if batch:
        yield batch


def schedule(objects: Sequence[tuple[int, PlannedObject]]) -> list[Job]:
    """Largest first: big objects start early and small ones fill the gaps, so the run does not
    end waiting on one large download that started last (longest-processing-time rule)."""
    ordered = sorted(objects, key=lambda item: -(item[1].size or 0))
    return [Job(source, obj) for source, obj in ordered]


def _fetch_batch(
    batch: Sequence[tuple[int, Job]], destination: Destination, sources: Sequence[ObjectFetcher]
) -> list[Outcome]:
    """Fetch a batch (grouped by repository: one source each) through the destination's batch
    path, which makes the whole batch durable with one flush; one outcome per job."""
    out: list[Outcome] = []
    by_source: dict[int, list[tuple[int, Job]]] = {}
    for item in batch:
        by_source.setdefault(item[1].source, []).append(item)
    for source, items in by_source.items():
        try:
            results: Sequence[Path | CvmfsError | OSError] = destination.store_many(
                [job.obj for _, job in items], sources[source]
            )
        except (CvmfsError, OSError) as exc:  # the destination itself failed (read-only, vanished)
            results = [exc] * len(items)
        for (index, job), result in zip(items, results, strict=True):
            if isinstance(result, CvmfsError):
                out.append(Outcome(index, 0, str(result), result.exit_code))
            elif isinstance(result, OSError):
                out.append(Outcome(index, 0, f"{job.obj.describe()}: {result.strerror or result}", 1))
            else:
                size = job.obj.size if job.obj.size is not None else result.stat().st_size
                out.append(Outcome(index, size))
    return out


def _work(
    work: Sequence[list[tuple[int, Job]]],
    destination: Destination,
    sources: Sequence[ObjectFetcher],
    take: Callable[[], int | None],
    give: Callable[[list[Outcome]], None],
    stop: Callable[[], bool],
    threads: int,
) -> None:
    """Run ``threads`` threads that fetch the batches ``work[i]`` for the numbers ``take``
    gives, until it says None (or stop).

    Batches travel as numbers: worker processes are forked with ``work`` in their memory, so
    no object description is pickled (a pickle and an unpickle of a job cost ~10 us of CPU,
    as much as 3% of fetching a small object).
    """

    def loop() -> None:
        while not stop():
            number = take()
            if number is None:
                return
            give(_fetch_batch(work[number], destination, sources))

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prewarm") as pool:
        for f in [pool.submit(loop) for _ in range(threads)]:
            f.result()


def _die_with_parent() -> None:
    """Ask the kernel to kill this worker when the prewarm process dies (``kill -9`` included)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _process_main(
    work: Sequence[list[tuple[int, Job]]],
    spec: DestinationSpec,
    settings: list[FetcherSettings],
    threads: int,
    tasks: multiprocessing.Queue,
    results: multiprocessing.Queue,
    stop: EventLike,
    parent: int,
) -> None:
    """Body of one worker process: its own destination handle, fetchers and threads."""
    from .fetcher import Fetcher

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return
    destination = spec.open()
    sources = [Fetcher(s) for s in settings]

    def take() -> int | None:
        while True:
            try:
                return tasks.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent or stop.is_set():
                    return None

    try:
        _work(work, destination, sources, take, results.put, stop.is_set, threads)
    finally:
        for s in sources:
            s.close()
        destination.close()


@dataclass(frozen=True)
class ExecutionSettings:
    jobs: int
    processes: int | None = None  # None: default_processes()


def execute(
    jobs: Sequence[Job],
    settings: Sequence[FetcherSettings],
    spec: DestinationSpec,
    options: ExecutionSettings,
    progress: Progress | None = None,
) -> Report:
    """Fetch ``jobs`` into the destination; a failed object is reported, never fatal to the run.

    KeyboardInterrupt stops handing out work, lets downloads in flight finish (up to
    STOP_GRACE_SECONDS) and returns a report with ``interrupted`` set.
    """
    report = Report()
    total = len(jobs)
    nproc = options.processes or default_processes(options.jobs, total)
    nproc = max(1, min(nproc, options.jobs, max(total, 1)))
    threads = max(1, math.ceil(options.jobs / nproc))
    report.processes, report.threads = nproc, threads
    if progress is not None:
        progress.start(total, sum(j.obj.size or 0 for j in jobs))
    start = time.monotonic()
    collector = _Collector(jobs, report, progress)
    if total:
        work = list(batches(jobs))
        if nproc == 1:
            _run_in_process(work, settings, spec, threads, collector)
        else:
            _run_in_processes(work, settings, spec, nproc, threads, collector)
        collector.finish()
    report.elapsed = time.monotonic() - start
    if progress is not None:
        progress.finish()
    return report


class _Collector:
    """Turns outcomes into the report and the progress display; remembers what is still out."""

    def __init__(self, jobs: Sequence[Job], report: Report, progress: Progress | None) -> None:
        self.jobs = jobs
        self.report = report
        self.progress = progress
        self.pending = set(range(len(jobs)))

    def add(self, done: list[Outcome]) -> None:
        failed = nbytes = 0
        for o in done:
            self.pending.discard(o.index)
            if o.error is None:
                self.report.fetched += 1
                self.report.fetched_bytes += o.size
                nbytes += o.size
            else:
                failed += 1
                self.report.failures.append((self.jobs[o.index].obj, o.error))
                self.report.exit_codes.add(o.exit_code)
        if self.progress is not None:
            self.progress.advance(len(done), nbytes, failed)

    def drain(self, get: Callable[[float], list[Outcome]], alive: Callable[[], bool]) -> None:
        """Collect until nothing is pending, or the workers are gone and their results read."""
        while self.pending:
            try:
                self.add(get(0.2))
            except queue.Empty:
                if not alive():
                    with contextlib.suppress(queue.Empty):
                        while True:  # results written just before the workers ended
                            self.add(get(0.05))
                    return

    def finish(self) -> None:
        """Objects no worker reported on, when not interrupted: their worker died."""
        if self.report.interrupted:
            return
        for index in sorted(self.pending):
            obj = self.jobs[index].obj
            self.report.failures.append((obj, f"{obj.describe()}: not fetched, its worker process died"))
            self.report.exit_codes.add(1)


def _run_in_process(
    work: Sequence[list[tuple[int, Job]]],
    settings: Sequence[FetcherSettings],
    spec: DestinationSpec,
    threads: int,
    collector: _Collector,
) -> None:
    from .fetcher import Fetcher

    tasks: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    results: queue.Queue[list[Outcome]] = queue.Queue()
    for number in range(len(work)):
        tasks.put(number)
    for _ in range(threads):
        tasks.put(None)
    stop = threading.Event()
    destination = spec.open()
    sources = [Fetcher(s) for s in settings]
    args = (work, destination, sources, tasks.get, results.put, stop.is_set, threads)
    worker = threading.Thread(target=_work, args=args, daemon=True)
    worker.start()
    try:
        try:
            collector.drain(lambda t: results.get(timeout=t), worker.is_alive)
        except KeyboardInterrupt:
            collector.report.interrupted = True
            stop.set()
            worker.join(STOP_GRACE_SECONDS)
            collector.drain(lambda t: results.get(timeout=t), worker.is_alive)
    finally:
        worker.join(STOP_GRACE_SECONDS)
        for s in sources:
            s.close()
        destination.close()


def _run_in_processes(
    work: Sequence[list[tuple[int, Job]]],
    settings: Sequence[FetcherSettings],
    spec: DestinationSpec,
    nproc: int,
    threads: int,
    collector: _Collector,
) -> None:
    # fork: a worker is ready in milliseconds (spawn would re-import everything, ~0.3 s each).
    # It is safe here because no thread of ours runs yet and the children touch none of the
    # parent's objects (SQLite connections, sessions): they open their own from ``spec``.
    # The batches are in the workers' memory from the fork on (see _work).
    ctx = multiprocessing.get_context("fork")
    tasks: multiprocessing.Queue = ctx.Queue()
    results: multiprocessing.Queue = ctx.Queue()
    stop = ctx.Event()
    workers = [
        ctx.Process(
            target=_process_main,
            args=(work, spec, list(settings), threads, tasks, results, stop, os.getpid()),
            name=f"prewarm-{i}",
            daemon=True,
        )
        for i in range(nproc)
    ]
    for w in workers:
        w.start()
    for number in range(len(work)):
        tasks.put(number)
    for _ in range(nproc * threads):
        tasks.put(None)

    def alive() -> bool:
        return any(w.is_alive() for w in workers)

    def get(timeout: float) -> list[Outcome]:
        return results.get(timeout=timeout)

    try:
        try:
            collector.drain(get, alive)
        except KeyboardInterrupt:
            collector.report.interrupted = True
            stop.set()
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            # Keep reading: a worker cannot exit while its results sit unread in the pipe.
            while alive() and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    collector.add(get(0.1))
            with contextlib.suppress(queue.Empty):
                while True:
                    collector.add(results.get_nowait())
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
            w.join(1.0)
        tasks.cancel_join_thread()


# -- the whole operation ----------------------------------------------------------------------


@dataclass
class Prepared:
    """Repositories opened, plans made, and what execution needs; close it when done."""

    plans: list[Plan]
    repositories: list[Repository]
    fetcher_settings: list[FetcherSettings]
    destination: DestinationSpec
    missing: list[list[PlannedObject]] = field(default_factory=list)  # per plan
    present: list[list[PlannedObject]] = field(default_factory=list)

    def close(self) -> None:
        for repo in self.repositories:
            repo.close()
        self.repositories.clear()

    def __enter__(self) -> Prepared:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def jobs(self) -> list[Job]:
        return schedule([(i, obj) for i, objs in enumerate(self.missing) for obj in objs])

    def report_skips(self, report: Report) -> None:
        report.skipped = sum(len(p) for p in self.present)
        report.skipped_bytes = sum(o.size or 0 for p in self.present for o in p)


def prepare(
    paths: Sequence[str],
    names: Sequence[NameListEntry],
    *,
    config_dir: Path | None = None,
    cache_dir: Path | None = None,
    alien_dir: Path | None = None,
    dry_run: bool = False,
) -> Prepared:
    """Open each repository named, plan its targets and sort objects into missing and present.

    ``alien_dir``: the destination is that shared directory (written directly); the catalogs,
    certificate and a copy of the verified manifest/whitelist (breadcrumbs) are put there too
    (unless ``dry_run``), so a node with an empty cache, that tier and no network can mount.
    Otherwise the destination is the node cache (``cache_dir`` or the configured one).
    """
    from .client import open_repository
    from .config import settings_for
    from .fetcher import FetcherSettings

    if cache_dir is not None and alien_dir is not None:
        raise FormatError("prewarm", "--cache-dir and --alien-cache exclude each other")
    targets = group_targets(paths, names)
    if not targets:
        raise FormatError("prewarm", "nothing to pre-warm: give /cvmfs/... paths or a name list with some")
    overrides: dict[str, str] = {}
    if cache_dir is not None:
        overrides["CVMFS_CACHE_DIR"] = str(cache_dir)
    if alien_dir is not None:
        overrides["CVMFS_ALIEN_CACHE"] = str(alien_dir)
        overrides["CVMFS_ALIEN_CACHE_WRITABLE"] = "yes"
    prepared = Prepared([], [], [], DestinationSpec())
    try:
        for fqrn, (subtrees, entries) in targets.items():
            s = settings_for(fqrn, config_dir=config_dir, overrides=overrides)
            fetcher_settings = FetcherSettings.from_parameters(
                {**s.parameters, "CVMFS_HTTP_PROXY": s.http_proxy}, fqrn
            )
            repo = open_repository(fqrn, settings=s)
            prepared.repositories.append(repo)
            prepared.fetcher_settings.append(fetcher_settings)
            builder = PlanBuilder(fqrn)
            for inner in subtrees:
                plan_subtree(repo, inner, builder)
            plan_names(repo, entries, builder)
            plan = builder.build(repo.catalog_hashes, repo.manifest.certificate)
            prepared.plans.append(plan)
            if alien_dir is not None:
                prepared.destination = DestinationSpec(alien_dir=Path(alien_dir), into_alien=True)
                if not dry_run:
                    publish_metadata(repo, plan, Path(alien_dir))
            else:
                spec = DestinationSpec(
                    cache_dir=repo.store.directory,
                    quota_bytes=repo.store.quota_bytes,
                    alien_dir=repo.store.alien.directory if repo.store.alien else None,
                )
                if len(prepared.plans) > 1 and spec != prepared.destination:
                    raise ConfigError(
                        f"{fqrn}: its cache {spec.cache_dir} differs from {prepared.destination.cache_dir} "
                        "(CVMFS_SHARED_CACHE=no?); pre-warm one repository at a time, or give --cache-dir"
                    )
                prepared.destination = spec
        destination = prepared.destination.open()
        try:
            for plan in prepared.plans:
                missing, present = split_present(plan.objects, destination)
                prepared.missing.append(missing)
                prepared.present.append(present)
        finally:
            destination.close()
    except BaseException:
        prepared.close()
        raise
    return prepared


def quota_warning(prepared: Prepared) -> str | None:
    """A warning when the objects to fetch cannot all stay in the node cache's quota.

    Past the quota the cache evicts least recently used objects down to half of it, so the
    first objects of this very run would be gone before any job reads them.
    """
    spec = prepared.destination
    if spec.into_alien or spec.quota_bytes is None:
        return None
    need = sum(o.size or 0 for objs in prepared.missing for o in objs)
    need += sum(o.size or 0 for objs in prepared.present for o in objs)
    if need <= spec.quota_bytes:
        return None
    return (
        f"warning: the pre-warmed set ({_mib(need)}) exceeds the cache quota ({_mib(spec.quota_bytes)}, "
        "CVMFS_QUOTA_LIMIT): part of it will be evicted again; raise the quota or use --alien-cache"
    )


def publish_metadata(repo: Repository, plan: Plan, alien_dir: Path) -> None:
    """Catalogs, certificate (and the tag database if a tag pins the revision) and breadcrumbs
    into the alien directory: what mounting needs besides file content.

    They sit in the prewarming node's own cache already (walking needed them); an object that
    was a hit there was never published to the tier, hence the explicit copies.
    """
    from .trust import Breadcrumbs

    alien = AlienCache(alien_dir, writable=True)
    wanted = [(h, ObjectType.CATALOG) for h in plan.catalogs]
    if plan.certificate is not None:
        wanted.append((plan.certificate, ObjectType.CERTIFICATE))
    if repo.pinned_by and repo.pinned_by.startswith("tag") and repo.manifest.history is not None:
        wanted.append((repo.manifest.history, ObjectType.HISTORY))
    for h, kind in wanted:
        if alien.lookup(h) is not None:
            continue
        local = repo.store.get(h, repo.source, kind)
        if alien.publish(h, local) is None:
            raise FetchError(h.object_path(kind), [f"cannot copy into the alien cache {alien_dir}"])
    t = repo.trusted
    Breadcrumbs(alien_dir).save(repo.fqrn, t.raw_manifest, t.raw_whitelist, t.fetched_at)


# -- output -----------------------------------------------------------------------------------


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02}:{s:02}" if h else f"{m}:{s:02}"


def format_progress(
    done: int, total: int, nbytes: int, total_bytes: int, failed: int, elapsed: float, width: int = 0
) -> str:
    """One progress line: objects, bytes, rate, ETA, and a bar when ``width`` > 0.

    The ETA is the larger of the byte-based and the object-based estimate: large objects go
    first (:func:`schedule`), so bytes race ahead while thousands of small objects, whose cost is
    per request, are still to come; the object count catches that.
    """
    rate = nbytes / elapsed if elapsed > 0 else 0.0
    left_bytes, left_objects = total_bytes - nbytes, total - done
    estimates = []
    if left_bytes > 0 and rate > 0:
        estimates.append(left_bytes / rate)
    if left_objects > 0 and done > 0 and elapsed > 0:
        estimates.append(left_objects / (done / elapsed))
    if estimates:
        eta = _duration(max(estimates))
    else:
        eta = "0:00" if left_bytes <= 0 and left_objects <= 0 else "--:--"
    text = f"{done}/{total} objects  {_mib(nbytes)}/{_mib(total_bytes)}  {_mib(rate)}/s  ETA {eta}" + (
        f"  {failed} failed" if failed else ""
    )
    if width > 0:
        frac = nbytes / total_bytes if total_bytes else (done / total if total else 1.0)
        filled = int(width * min(1.0, frac))
        text = f"[{'#' * filled}{'.' * (width - filled)}] {text}"
    return text


class ProgressPrinter:
    """A redrawn line on a terminal; a plain line every LOG_INTERVAL_SECONDS otherwise (logs)."""

    def __init__(
        self,
        stream: TextIO,
        tty: bool,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = tty
        self.interval = (
            interval if interval is not None else (REDRAW_INTERVAL_SECONDS if tty else LOG_INTERVAL_SECONDS)
        )
        self._clock = clock
        self._start = self._last = 0.0
        self.total = self.total_bytes = self.done = self.nbytes = self.failed = 0

    def start(self, objects: int, nbytes: int) -> None:
        self.total, self.total_bytes = objects, nbytes
        self._start = self._last = self._clock()
        if self.tty:
            self._draw()

    def advance(self, objects: int, nbytes: int, failed: int) -> None:
        self.done += objects
        self.nbytes += nbytes
        self.failed += failed
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._draw()

    def finish(self) -> None:
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        elapsed = self._clock() - self._start
        line = format_progress(
            self.done, self.total, self.nbytes, self.total_bytes, self.failed, elapsed, 30 if self.tty else 0
        )
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
        else:
            self.stream.write(f"prewarm: {line}\n")
        self.stream.flush()


def summary_lines(report: Report) -> list[str]:
    """The final summary, then one line per failure."""
    t = report.elapsed
    rate = f"{_mib(report.fetched_bytes / t)}/s, {report.fetched / t:.0f} objects/s" if t > 0 else "-"
    state = "interrupted" if report.interrupted else "done"
    lines = [
        f"prewarm {state}: fetched {report.fetched} objects ({_mib(report.fetched_bytes)}) in {t:.1f} s "
        f"({rate}); skipped {report.skipped} already present ({_mib(report.skipped_bytes)}); "
        f"{len(report.failures)} failed"
    ]
    lines += [f"failed: {reason}" for _, reason in report.failures]
    return lines


def plan_lines(prepared: Prepared, list_objects: bool = True) -> list[str]:
    """``--dry-run`` output: each object that would be fetched (decoded size, first file), then
    a summary per repository. Catalogs were downloaded to know this (the walk needs them)."""
    lines: list[str] = []
    for plan, missing, present in zip(prepared.plans, prepared.missing, prepared.present, strict=True):
        if list_objects:
            for obj in missing:
                chunk = " (chunk)" if obj.kind is ObjectType.PARTIAL else ""
                lines.append(f"{obj.size or 0:>12}  {obj.path}{chunk}")
        size = sum(o.size or 0 for o in missing)
        lines.append(
            f"{plan.fqrn}: {plan.files} files ({plan.chunked_files} chunked), {len(plan.objects)} objects "
            f"({_mib(plan.total_bytes)}); would fetch {len(missing)} objects ({_mib(size)}), "
            f"{len(present)} already present; {len(plan.catalogs)} catalog(s) downloaded to walk the tree"
        )
        if plan.not_found:
            lines.append(
                f"{plan.fqrn}: {len(plan.not_found)} name-list paths are not in the repository (ignored)"
            )
        lines += [f"{plan.fqrn}: cannot pre-warm {p}: {why}" for p, why in plan.unsupported]
    return lines
