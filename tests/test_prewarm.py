"""Pre-warming: name lists, planning (pure), output formatting, and a small end-to-end run
against a locally published repository read through ``file://`` (no server needed)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from cvmfs_client import prewarm
from cvmfs_client.cache import AlienCache, NodeCache
from cvmfs_client.catalog import FLAG_CHUNKED, FLAG_DIR, FLAG_EXTERNAL, FLAG_FILE, Chunk, DirEntry
from cvmfs_client.errors import FetchError, FormatError
from cvmfs_client.fetcher import Fetcher, file_url
from cvmfs_client.hashing import ContentHash, HashAlgorithm, ObjectType
from cvmfs_client.keys import load_master_keys
from cvmfs_client.objects import Compression
from cvmfs_client.prewarm import NameListEntry, PlanBuilder, PlannedObject
from cvmfs_client.publisher import publish
from cvmfs_client.repository import Repository
from cvmfs_client.trust import Breadcrumbs

FQRN = "warm.example.org"


def h(n: int) -> ContentHash:
    return ContentHash(HashAlgorithm.SHA1, n.to_bytes(20, "big"))


def regular(path: str, size: int, content: ContentHash | None, flags: int = FLAG_FILE) -> DirEntry:
    return DirEntry(path, path.rsplit("/", 1)[-1], 0o100644, size, 0, flags, content_hash=content)


# -- name lists ---------------------------------------------------------------------------------


def test_name_list_accepts_parrot_lines_and_bare_paths():
    text = "/cvmfs/a.org/bin/x|open\n\n# comment\n/cvmfs/a.org/lib/y\n  /etc/passwd|stat  \n"
    entries = prewarm.parse_name_list(text, "names.txt")
    assert entries == [
        NameListEntry("/cvmfs/a.org/bin/x", "open", 1),
        NameListEntry("/cvmfs/a.org/lib/y", "", 4),
        NameListEntry("/etc/passwd", "stat", 5),
    ]


def test_name_list_path_may_contain_a_bar():
    (entry,) = prewarm.parse_name_list("/cvmfs/a.org/odd|name/file\n", "n")
    assert entry.path == "/cvmfs/a.org/odd|name/file" and entry.how == ""


def test_relative_path_in_name_list_is_a_format_error_naming_the_line():
    with pytest.raises(FormatError, match=r"names.txt:2: .*relative"):
        prewarm.parse_name_list("/cvmfs/a.org/x\nrelative|open\n", "names.txt")


@pytest.mark.parametrize(
    ("how", "needed"),
    [("open", True), ("", True), ("exec", True), ("mmap", True), ("stat", False), ("LSTAT", False)],
)
def test_content_is_fetched_unless_the_path_was_only_looked_at(how, needed):
    assert NameListEntry("/cvmfs/a.org/x", how, 1).needs_content is needed


@pytest.mark.parametrize(
    ("path", "split"),
    [
        ("/cvmfs/a.org", ("a.org", "")),
        ("/cvmfs/a.org/", ("a.org", "")),
        ("/cvmfs//a.org/./b//c", ("a.org", "/b/c")),
        ("/cvmfs/a.org/b/../c", ("a.org", "/b/../c")),  # left to resolve(): symlinks come first
        ("/cvmfs/../cvmfs/b.org/x", ("b.org", "/x")),
        ("/cvmfs", None),
        ("/etc/passwd", None),
    ],
)
def test_repository_paths_are_split_like_the_mount_point(path, split):
    assert prewarm.split_repository_path(path) == split


def test_targets_are_grouped_by_repository_in_order_of_first_mention():
    names = prewarm.parse_name_list("/cvmfs/b.org/x|open\n/tmp/y|open\n/cvmfs/a.org/z|stat\n", "n")
    groups = prewarm.group_targets(["/cvmfs/a.org/sub"], names)
    assert list(groups) == ["a.org", "b.org"]
    assert groups["a.org"][0] == ["/sub"] and [e.path for e in groups["a.org"][1]] == ["/cvmfs/a.org/z"]
    assert groups["b.org"][0] == []


def test_positional_path_outside_cvmfs_is_refused():
    with pytest.raises(FormatError, match="/cvmfs/REPOSITORY"):
        prewarm.group_targets(["/usr/lib"], [])


# -- planning -----------------------------------------------------------------------------------


def test_plan_deduplicates_objects_shared_by_files():
    b = PlanBuilder(FQRN)
    b.add_file("/cvmfs/w/a", regular("/a", 10, h(1)))
    b.add_file("/cvmfs/w/b", regular("/b", 10, h(1)))  # same content (a hardlink or a copy)
    b.add_file("/cvmfs/w/c", regular("/c", 20, h(2)))
    plan = b.build([h(100)], h(101))
    assert [o.content_hash for o in plan.objects] == [h(1), h(2)]
    assert plan.objects[0].path == "/cvmfs/w/a"
    assert plan.files == 3 and plan.total_bytes == 30
    assert plan.catalogs == [h(100)] and plan.certificate == h(101)


def test_chunked_file_is_planned_chunk_by_chunk_with_the_file_compression():
    b = PlanBuilder(FQRN)
    entry = regular("/big", 30, None, FLAG_FILE | FLAG_CHUNKED | Compression.NONE.flag_bits)
    b.add_file("/cvmfs/w/big", entry, [Chunk(0, 10, h(5)), Chunk(10, 20, h(6))])
    plan = b.build()
    assert [(o.content_hash, o.kind, o.compression, o.size) for o in plan.objects] == [
        (h(5), ObjectType.PARTIAL, Compression.NONE, 10),
        (h(6), ObjectType.PARTIAL, Compression.NONE, 20),
    ]
    assert plan.chunked_files == 1 and plan.files == 1


def test_empty_files_need_nothing_and_odd_files_are_reported():
    b = PlanBuilder(FQRN)
    b.add_file("/cvmfs/w/empty", regular("/empty", 0, None))
    b.add_file("/cvmfs/w/ext", regular("/ext", 5, h(1), FLAG_FILE | FLAG_EXTERNAL))
    b.add_file("/cvmfs/w/nohash", regular("/nohash", 5, None))
    b.add_file("/cvmfs/w/chunkless", regular("/chunkless", 5, None, FLAG_FILE | FLAG_CHUNKED))
    b.add_file("/cvmfs/w/dir", DirEntry("/dir", "dir", 0o40755, 4096, 0, FLAG_DIR))
    plan = b.build()
    assert plan.objects == [] and plan.files == 1
    assert [p for p, _ in plan.unsupported] == ["/cvmfs/w/ext", "/cvmfs/w/nohash", "/cvmfs/w/chunkless"]


def test_schedule_puts_large_objects_first_and_batches_stay_small():
    objs = [
        (0, PlannedObject(h(i), ObjectType.FILE, Compression.ZLIB, size, "/p"))
        for i, size in enumerate([5, 3 << 20, 7, 1 << 20])
    ]
    jobs = prewarm.schedule(objs)
    assert [j.obj.size for j in jobs] == [3 << 20, 1 << 20, 7, 5]
    groups = list(prewarm.batches(jobs))
    assert [len(g) for g in groups] == [1, 1, 2]  # a large object is a batch of its own
    many = prewarm.schedule(
        [(0, PlannedObject(h(i), ObjectType.FILE, Compression.ZLIB, 10, "/p")) for i in range(40)]
    )
    assert [len(g) for g in prewarm.batches(many)] == [32, 8]
    assert [i for g in prewarm.batches(many) for i, _ in g] == list(range(40))


def test_report_exit_code_prefers_network_then_integrity():
    r = prewarm.Report()
    assert r.exit_code == 0
    obj = PlannedObject(h(1), ObjectType.FILE, Compression.ZLIB, 1, "/p")
    r.failures.append((obj, "x"))
    r.exit_codes.update({3, 4})
    assert r.exit_code == 4
    r.interrupted = True
    assert r.exit_code == 130


# -- output -------------------------------------------------------------------------------------


def test_progress_line_shows_objects_bytes_rate_and_eta():
    line = prewarm.format_progress(50, 100, 10 << 20, 40 << 20, 0, 2.0)
    assert line == "50/100 objects  10.0 MiB/40.0 MiB  5.0 MiB/s  ETA 0:06"
    bar = prewarm.format_progress(50, 100, 10 << 20, 40 << 20, 2, 2.0, width=8)
    assert bar.startswith("[##......] ") and bar.endswith("2 failed")


def test_progress_printer_redraws_on_a_terminal_and_logs_lines_otherwise():
    now = [0.0]
    tty = io.StringIO()
    p = prewarm.ProgressPrinter(tty, True, interval=0.1, clock=lambda: now[0])
    p.start(2, 100)
    now[0] = 1.0
    p.advance(1, 50, 0)
    p.finish()
    assert tty.getvalue().count("\r") == 3 and tty.getvalue().endswith("\n")
    log = io.StringIO()
    p = prewarm.ProgressPrinter(log, False, interval=10, clock=lambda: now[0])
    p.start(3, 30)
    for t in (1.0, 2.0, 12.0):
        now[0] = t
        p.advance(1, 10, 0)
    p.finish()
    assert log.getvalue().splitlines() == ["prewarm: 3/3 objects  0.0 MiB/0.0 MiB  0.0 MiB/s  ETA 0:00"]


def test_summary_lists_every_failure():
    r = prewarm.Report(fetched=2, fetched_bytes=2 << 20, skipped=1, elapsed=1.0)
    r.failures.append(
        (PlannedObject(h(1), ObjectType.FILE, Compression.ZLIB, 1, "/p"), "cannot fetch x: boom")
    )
    lines = prewarm.summary_lines(r)
    assert "fetched 2 objects (2.0 MiB)" in lines[0] and "skipped 1" in lines[0] and "1 failed" in lines[0]
    assert lines[1] == "failed: cannot fetch x: boom"


# -- a real repository through file:// ----------------------------------------------------------


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("warm")
    src = base / "src"
    rng = random.Random(3)
    for i in range(30):
        d = src / f"d{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(rng.randbytes(rng.randrange(100, 5000)))
    (src / "d0" / "same").write_bytes((src / "d0" / "f0").read_bytes())
    (src / "empty").write_bytes(b"")
    (src / "big").write_bytes(rng.randbytes(3 << 20))
    (src / "link").symlink_to("d1")
    publish(src, FQRN, base / "s0" / FQRN, base / "keys", chunk_sizes=(256 << 10, 512 << 10, 1 << 20))
    return base, src


def mount(base: Path, cache: Path, alien: AlienCache | None = None) -> Repository:
    keys = load_master_keys(str(base / "keys" / f"{FQRN}.pub"), None)
    source = Fetcher.for_servers(file_url(base / "s0" / FQRN))
    return Repository(FQRN, source, keys, NodeCache(cache, None, alien), owns_resources=True)


def test_subtree_plan_covers_every_file_once(published, tmp_path):
    base, src = published
    with mount(base, tmp_path / "c") as repo:
        b = PlanBuilder(FQRN)
        prewarm.plan_subtree(repo, "", b)
        plan = b.build(repo.catalog_hashes, repo.manifest.certificate)
    files = [p for p in src.rglob("*") if p.is_file() and not p.is_symlink()]
    assert plan.files == len(files)
    assert plan.chunked_files == 1
    chunks = [o for o in plan.objects if o.kind is ObjectType.PARTIAL]
    assert len(chunks) >= 3 and sum(o.size for o in chunks) == 3 << 20
    # "same" shares f0's object; the publisher stores "empty" as an object too (compressed b"").
    assert len(plan.objects) == 31 + len(chunks)


def test_symlinked_subtree_is_followed_at_the_top(published, tmp_path):
    base, _ = published
    with mount(base, tmp_path / "c") as repo:
        b = PlanBuilder(FQRN)
        prewarm.plan_subtree(repo, "/link", b)
        assert {o.path.rsplit("/", 2)[-2] for o in b.build().objects} == {"d1"}


def test_name_list_plan_follows_symlinks_and_skips_metadata_only_and_absent_paths(published, tmp_path):
    base, _ = published
    names = prewarm.parse_name_list(
        f"/cvmfs/{FQRN}/link/f1|open\n/cvmfs/{FQRN}/d0/f3|stat\n/cvmfs/{FQRN}/nope|open\n"
        f"/cvmfs/{FQRN}/d2|opendir\n/cvmfs/other.org/x|open\n",
        "n",
    )
    with mount(base, tmp_path / "c") as repo:
        b = PlanBuilder(FQRN)
        prewarm.plan_names(repo, names, b)
        plan = b.build()
    assert [o.path for o in plan.objects] == [f"/cvmfs/{FQRN}/d1/f1"]
    assert plan.not_found == [f"/cvmfs/{FQRN}/nope"]


def test_execute_fills_a_node_cache_and_a_second_run_skips_everything(published, tmp_path):
    base, src = published
    cache = tmp_path / "cache"
    with mount(base, cache) as repo:
        b = PlanBuilder(FQRN)
        prewarm.plan_subtree(repo, "", b)
        plan = b.build()
        spec = prewarm.DestinationSpec(cache_dir=cache)
        settings = [repo.source.settings]  # type: ignore[attr-defined]
        dest = spec.open()
        missing, present = prewarm.split_present(plan.objects, dest)
        dest.close()
        assert present == [] and len(missing) == len(plan.objects)
        jobs = prewarm.schedule([(0, o) for o in missing])
        report = prewarm.execute(jobs, settings, spec, prewarm.ExecutionSettings(jobs=3, processes=1))
        assert report.fetched == len(missing) and not report.failures
        assert report.fetched_bytes == plan.total_bytes
        dest = spec.open()
        missing, present = prewarm.split_present(plan.objects, dest)
        dest.close()
        assert missing == [] and len(present) == len(plan.objects)
    with NodeCache(cache, None) as c:
        assert c.fsck().clean


def test_execute_in_worker_processes_fills_an_alien_directory(published, tmp_path):
    base, src = published
    alien_dir = tmp_path / "alien"
    with mount(base, tmp_path / "c") as repo:
        b = PlanBuilder(FQRN)
        prewarm.plan_subtree(repo, "", b)
        plan = b.build(repo.catalog_hashes, repo.manifest.certificate)
        spec = prewarm.DestinationSpec(alien_dir=alien_dir, into_alien=True)
        jobs = prewarm.schedule([(0, o) for o in plan.objects])
        report = prewarm.execute(
            jobs,
            [repo.source.settings],
            spec,
            prewarm.ExecutionSettings(jobs=4, processes=2),  # type: ignore[attr-defined]
        )
        assert report.processes == 2 and report.fetched == len(plan.objects) and not report.failures
        prewarm.publish_metadata(repo, plan, alien_dir)
    alien = AlienCache(alien_dir)
    for obj in plan.objects:
        assert alien.lookup(obj.content_hash, obj.size) is not None
    for cat in plan.catalogs:
        assert alien.lookup(cat) is not None
    assert Breadcrumbs(alien_dir).load(FQRN) is not None
    assert list((alien_dir / "txn").iterdir()) == []


def test_failures_are_collected_not_fatal(published, tmp_path):
    base, _ = published
    spec = prewarm.DestinationSpec(cache_dir=tmp_path / "cache")
    with mount(base, tmp_path / "c") as repo:
        settings = repo.source.settings  # type: ignore[attr-defined]
    bogus = PlannedObject(h(7), ObjectType.FILE, Compression.ZLIB, 10, f"/cvmfs/{FQRN}/ghost")
    report = prewarm.execute(
        [prewarm.Job(0, bogus)], [settings], spec, prewarm.ExecutionSettings(jobs=2, processes=1)
    )
    assert report.fetched == 0 and len(report.failures) == 1
    assert report.exit_code == FetchError.exit_code
    assert "cannot fetch data/00/" in report.failures[0][1]


def test_alien_breadcrumbs_let_a_node_with_an_empty_cache_mount(published, tmp_path):
    """The loader also looks for verified manifests in the alien tier (newest copy wins)."""
    base, _ = published
    alien_dir = tmp_path / "alien"
    with mount(base, tmp_path / "login") as repo:
        b = PlanBuilder(FQRN)
        prewarm.plan_subtree(repo, "", b)
        prewarm.publish_metadata(repo, b.build(repo.catalog_hashes, repo.manifest.certificate), alien_dir)
    keys = load_master_keys(str(base / "keys" / f"{FQRN}.pub"), None)
    gone = Fetcher.for_servers(file_url(tmp_path / "no-such-server"))
    with Repository(FQRN, gone, keys, NodeCache(tmp_path / "node", None, AlienCache(alien_dir))) as repo:
        assert [e.name for e in repo.listdir("/d0")][:2] == ["f0", "f12"]


# -- the caches' batch paths (what execution uses) ----------------------------------------------


class _Objects:
    """A source serving stored objects from memory, counting requests."""

    def __init__(self, stored: dict[str, bytes]) -> None:
        self.stored = stored
        self.asked: list[str] = []

    def fetch(self, name, consume):  # type: ignore[no-untyped-def]
        self.asked.append(name)
        if name not in self.stored:
            raise FetchError(name, ["no such object"])
        return consume(iter([self.stored[name]]), name)


def _stored(n: int) -> tuple[list, _Objects]:
    import zlib

    from cvmfs_client.cache import Wanted

    wanted, stored = [], {}
    for i in range(n):
        data = f"object {i}\n".encode() * (i + 1)
        packed = zlib.compress(data)
        digest = ContentHash.of(HashAlgorithm.SHA1, packed)
        stored[digest.object_path(ObjectType.FILE)] = packed
        wanted.append(Wanted(digest, ObjectType.FILE, Compression.ZLIB, len(data)))
    return wanted, _Objects(stored)


def test_node_batch_stores_verified_objects_with_an_exact_index_and_isolates_failures(tmp_path):
    from cvmfs_client.cache import Wanted

    wanted, source = _stored(5)
    ghost = Wanted(h(9), ObjectType.FILE, Compression.ZLIB, 3)
    bad = Wanted(wanted[0].content_hash, ObjectType.FILE, Compression.ZLIB, 999)  # wrong size
    with NodeCache(tmp_path / "c", None) as cache:
        results = cache.get_many([*wanted[1:], ghost], source)
        assert [isinstance(r, Path) for r in results] == [True] * 4 + [False]
        assert isinstance(results[-1], FetchError)
        assert [r.read_bytes() for r in results[:4]] == [  # type: ignore[union-attr]
            f"object {i}\n".encode() * (i + 1) for i in range(1, 5)
        ]
        assert cache.get_many([bad], source)[0].__class__.__name__ == "CorruptObject"
        st = cache.stat()
        assert st.objects == 4 and st.size_bytes == sum(w.expected_size for w in wanted[1:])
        assert cache.fsck().clean
        assert list((tmp_path / "c" / "txn").iterdir()) == []
        source.asked.clear()
        assert all(isinstance(r, Path) for r in cache.get_many(wanted[1:], source))
        assert source.asked == [], "present objects are hits"


def test_node_batch_leaves_an_object_being_downloaded_elsewhere_to_a_plain_get(tmp_path):
    import threading
    import time

    wanted, source = _stored(3)
    with NodeCache(tmp_path / "c", None) as cache:
        # "Another process" is downloading it: holds the object's lock (through a descriptor of
        # its own, which excludes this thread as another process would be excluded).
        held, release = threading.Event(), threading.Event()

        def downloader() -> None:
            with cache._locks.hold(wanted[1].content_hash.cache_name()):
                held.set()
                release.wait(5)

        threading.Thread(target=downloader).start()
        held.wait(5)
        threading.Timer(0.3, release.set).start()
        start = time.monotonic()
        results = cache.get_many(wanted, source)
        assert time.monotonic() - start >= 0.25, "the busy object was waited for, not fetched twice"
        assert all(isinstance(r, Path) for r in results)
        assert [r.read_bytes() for r in results] == [  # type: ignore[union-attr]
            f"object {i}\n".encode() * (i + 1) for i in range(3)
        ]
        assert cache.fsck().clean


def test_alien_batch_writes_only_verified_complete_files(tmp_path):
    from cvmfs_client.cache import Wanted

    wanted, source = _stored(4)
    corrupt = dict(source.stored)
    first = wanted[0].content_hash.object_path(ObjectType.FILE)
    corrupt[first] = corrupt[first][:-1] + bytes([corrupt[first][-1] ^ 1])
    alien = AlienCache(tmp_path / "alien", writable=True)
    results = alien.fill_many([*wanted, Wanted(h(8))], _Objects(corrupt))
    assert results[0].__class__.__name__ == "HashMismatch" and isinstance(results[-1], FetchError)
    assert [alien.lookup(w.content_hash, w.expected_size) is not None for w in wanted] == [
        False,
        True,
        True,
        True,
    ]
    assert list((tmp_path / "alien" / "txn").iterdir()) == []
    assert all(oct(p.stat().st_mode)[-3:] == "555" for p in (tmp_path / "alien").glob("??/*"))


def test_breadcrumbs_take_the_most_recently_fetched_copy_among_cache_and_alien(tmp_path):
    Breadcrumbs(tmp_path / "node").save(FQRN, b"old manifest", b"old whitelist", 100.0)
    Breadcrumbs(tmp_path / "alien").save(FQRN, b"new manifest", b"new whitelist", 200.0)
    both = Breadcrumbs(tmp_path / "node", [tmp_path / "alien"])
    assert both.load(FQRN) == (b"new manifest", b"new whitelist", 200.0)
    assert Breadcrumbs(tmp_path / "empty", [tmp_path / "alien"]).load(FQRN)[2] == 200.0  # type: ignore[index]
    assert Breadcrumbs(tmp_path / "node").load(FQRN)[2] == 100.0  # type: ignore[index]


def test_quota_warning_when_the_set_cannot_stay_in_the_cache():
    obj = PlannedObject(h(1), ObjectType.FILE, Compression.ZLIB, 3 << 20, "/p")
    small = prewarm.Prepared([], [], [], prewarm.DestinationSpec(cache_dir=Path("/c"), quota_bytes=2 << 20))
    small.missing, small.present = [[obj]], [[]]
    assert "exceeds the cache quota" in (prewarm.quota_warning(small) or "")
    roomy = prewarm.Prepared([], [], [], prewarm.DestinationSpec(cache_dir=Path("/c"), quota_bytes=4 << 20))
    roomy.missing, roomy.present = [[obj]], [[]]
    assert prewarm.quota_warning(roomy) is None


def test_default_processes_one_per_download_up_to_two_per_core(monkeypatch):
    monkeypatch.setattr(prewarm.os, "cpu_count", lambda: 2)
    many = 100 * prewarm.MIN_OBJECTS_PER_PROCESS
    assert prewarm.default_processes(4, many) == 4  # -j 4 (the default on 2 cores): 4 x 1 thread
    assert prewarm.default_processes(2, many) == 2
    assert prewarm.default_processes(16, many) == 4  # then threads: 4 x 4
    assert prewarm.default_processes(4, 2 * prewarm.MIN_OBJECTS_PER_PROCESS) == 2
    assert prewarm.default_processes(4, 10) == 1  # too little work to start processes for
