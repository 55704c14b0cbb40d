"""NodeCache / AlienCache: verified inserts, one download per object, quota, crashes, fsck."""

from __future__ import annotations

import collections
import hashlib
import multiprocessing
import os
import random
import shutil
import signal
import stat
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import cvmfs_client.cache as cache_mod
from cvmfs_client.cache import AlienCache, NodeCache, Wanted, quota_bytes_from_limit
from cvmfs_client.errors import ConfigError, FetchError, FormatError, HashMismatch
from cvmfs_client.hashing import ContentHash, HashAlgorithm, ObjectType
from cvmfs_client.objects import Compression, encode

# fork: children start in milliseconds and inherit the fake source; each builds its own NodeCache.
FORK = multiprocessing.get_context("fork")


class FakeSource:
    """Serves stored objects from a dict, counting fetches (in memory and, optionally, in a file)."""

    def __init__(
        self,
        stored: dict[str, bytes],
        *,
        delay: float = 0.0,
        piece: int = 4096,
        counter: Path | None = None,
    ) -> None:
        self.stored = stored
        self.delay = delay
        self.piece = piece
        self.counter = counter
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def fetch(self, name: str, consume: Callable[[Iterator[bytes], str], object]) -> object:
        with self._lock:
            self.calls[name] += 1
        if self.counter is not None:
            # O_APPEND writes of one short line are atomic: a process-safe fetch counter.
            fd = os.open(self.counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, name.encode() + b"\n")
            os.close(fd)
        data = self.stored.get(name)
        if data is None:
            raise FetchError(name, ["fake: no such object"])

        def pieces() -> Iterator[bytes]:
            for i in range(0, len(data), self.piece):
                if self.delay:
                    time.sleep(self.delay)
                yield data[i : i + self.piece]

        return consume(pieces(), f"fake://{name}")


def make_objects(
    n: int,
    size: int,
    seed: int = 0,
    compression: Compression = Compression.ZLIB,
    kind: ObjectType = ObjectType.FILE,
) -> tuple[dict[ContentHash, bytes], dict[str, bytes]]:
    """(hash -> decoded content, object path -> stored bytes) for ``n`` random objects."""
    rng = random.Random(seed)
    content: dict[ContentHash, bytes] = {}
    stored: dict[str, bytes] = {}
    for _ in range(n):
        data = rng.randbytes(size)
        blob = encode(data, compression)
        h = ContentHash.of(HashAlgorithm.SHA1, blob)
        content[h] = data
        stored[h.object_path(kind)] = blob
    return content, stored


@pytest.fixture(params=["ranges", "files"])
def locks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both per-object locks: OFD byte ranges, and the lock files used without OFD locks."""
    if request.param == "files":
        monkeypatch.setattr(cache_mod._ObjectLocks, "usable", lambda self: False)
    return request.param


def files_under_final_names(directory: Path) -> dict[str, Path]:
    out = {}
    for sub in directory.iterdir():
        if len(sub.name) == 2 and sub.is_dir():
            for f in sub.iterdir():
                out[sub.name + f.name] = f
    return out


def test_insert_is_verified_decoded_and_read_only(tmp_path: Path) -> None:
    content, stored = make_objects(1, 50_000)
    (h, data), src = next(iter(content.items())), FakeSource(stored)
    with NodeCache(tmp_path, None) as cache:
        path = cache.get(h, src)
        assert path == cache.path_for(h) == tmp_path / h.hex[:2] / h.hex[2:]
        assert path.read_bytes() == data  # decompressed
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        assert stat.S_IMODE(path.stat().st_mode) == 0o555  # the interposer runs programs from it
        assert cache.get(h, src) == path
        with cache.open(h, src) as f:
            assert f.read() == data
        assert src.calls[h.object_path()] == 1
        assert list(cache.txn.iterdir()) == []


def test_corrupted_download_raises_and_leaves_nothing(tmp_path: Path) -> None:
    content, stored = make_objects(1, 50_000)
    h = next(iter(content))
    blob = bytearray(stored[h.object_path()])
    blob[len(blob) // 2] ^= 0xFF
    src = FakeSource({h.object_path(): bytes(blob)})
    with NodeCache(tmp_path, None) as cache:
        with pytest.raises(HashMismatch):
            cache.get(h, src)
        assert not cache.path_for(h).exists()
        assert list(cache.txn.iterdir()) == []
        assert cache._index.get(h.cache_name()) is None
        assert cache.stat().objects == 0 and cache.stat().size_bytes == 0


def test_eight_threads_asking_for_one_object_cause_one_download(tmp_path: Path, locks: str) -> None:
    content, stored = make_objects(1, 40_000)
    h, data = next(iter(content.items()))
    src = FakeSource(stored, delay=0.002)
    barrier = threading.Barrier(8)
    results: list[Path] = []
    with NodeCache(tmp_path, None) as cache:
        assert isinstance(cache._locks, cache_mod._ObjectLocks if locks == "ranges" else cache_mod._LockFiles)

        def worker() -> None:
            barrier.wait()
            results.append(cache.get(h, src))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert src.calls[h.object_path()] == 1
        assert len(results) == 8 and len(set(results)) == 1
        assert results[0].read_bytes() == data
        s = cache.stat()
        assert (s.misses, s.hits) == (1, 7)


def _process_worker(
    directory: Path,
    content: dict[ContentHash, bytes],
    stored: dict[str, bytes],
    counter: Path,
    seed: int,
    barrier,
) -> None:
    cache = NodeCache(directory, None)
    src = FakeSource(stored, delay=0.0005, counter=counter)
    order = list(content)
    random.Random(seed).shuffle(order)
    barrier.wait()
    for h in order:
        if cache.get(h, src).read_bytes() != content[h]:
            os._exit(3)
    cache.close()


def test_eight_processes_fetch_each_object_once(tmp_path: Path, locks: str) -> None:
    content, stored = make_objects(50, 8_000, seed=1)
    counter = tmp_path / "fetches"
    barrier = FORK.Barrier(8)
    procs = [
        FORK.Process(target=_process_worker, args=(tmp_path / "c", content, stored, counter, i, barrier))
        for i in range(8)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 8
    fetched = collections.Counter(counter.read_text().split())
    assert set(fetched) == set(stored) and set(fetched.values()) == {1}
    with NodeCache(tmp_path / "c", None) as cache:
        s = cache.stat()
        assert (s.objects, s.misses, s.hits) == (50, 50, 350)


def _quota_worker(
    directory: Path, content: dict[ContentHash, bytes], stored: dict[str, bytes], seed: int
) -> None:
    cache = NodeCache(directory, 120_000)
    src = FakeSource(stored)
    rng = random.Random(seed)
    for _ in range(3):
        order = list(content)
        rng.shuffle(order)
        for h in order:
            with cache.open(h, src) as f:  # get() + open() could lose the race with eviction here
                if f.read() != content[h]:
                    os._exit(3)


def test_quota_holds_with_concurrent_processes(tmp_path: Path, locks: str) -> None:
    content, stored = make_objects(40, 8_000, seed=14)
    procs = [FORK.Process(target=_quota_worker, args=(tmp_path, content, stored, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 4
    with NodeCache(tmp_path, 120_000) as cache:
        on_disk = sum(p.stat().st_size for p in files_under_final_names(tmp_path).values())
        assert cache.stat().size_bytes == on_disk <= 120_000
        assert cache.fsck().removed == []
        on_disk = sum(p.stat().st_size for p in files_under_final_names(tmp_path).values())
        assert cache.stat().size_bytes == on_disk


def test_quota_keeps_total_under_limit_and_recently_used_objects(tmp_path: Path) -> None:
    content, stored = make_objects(30, 10_000, seed=2)
    src = FakeSource(stored)
    hashes = list(content)
    hot = hashes[:3]
    quota = 100_000
    with NodeCache(tmp_path, quota) as cache:
        for h in hashes:
            cache.get(h, src)
            for k in hot:
                cache.get(k, src)
            assert cache.stat().size_bytes <= quota
        on_disk = sum(p.stat().st_size for p in files_under_final_names(tmp_path).values())
        assert on_disk == cache.stat().size_bytes <= quota
        assert all(cache.path_for(k).exists() for k in hot)
        assert all(src.calls[k.object_path()] == 1 for k in hot)
        assert not cache.path_for(hashes[5]).exists()  # cold ones went


def test_uses_of_aging_objects_are_written_in_one_batch(tmp_path: Path) -> None:
    """A hit on an object outside the newest 1/8 moves it to the most recently used end, but
    not in a write transaction of its own: uses are written with the next batch."""
    content, stored = make_objects(40, 1_000, seed=12)
    src = FakeSource(stored)
    hashes = list(content)
    with NodeCache(tmp_path, None) as cache:
        for h in hashes:
            cache.get(h, src, expected_size=1_000)
    transactions = []
    with NodeCache(tmp_path, None) as cache:
        seq_of = {h: cache._index.get(h.cache_name()).seq for h in hashes}
        real = cache._index._db.transact

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            transactions.append(1)
            return real(*args, **kwargs)

        cache._index._db.transact = counted
        oldest = hashes[:10]
        for h in oldest:
            assert cache.get(h, src, expected_size=1_000) == cache.path_for(h)
        assert transactions == [] and all(cache._index.get(h.cache_name()).seq == seq_of[h] for h in oldest)
    assert len(transactions) == 2  # at close: the ten uses in one, the hit counters in the other
    with NodeCache(tmp_path, None) as cache:
        newest = max(seq_of.values())
        assert all(cache._index.get(h.cache_name()).seq > newest for h in oldest)
        assert [seq for seq, _ in cache._index.lru()][-1] > newest
    assert all(src.calls[h.object_path()] == 1 for h in hashes)


def test_an_evicting_process_writes_its_pending_uses_first(tmp_path: Path) -> None:
    content, stored = make_objects(30, 10_000, seed=13)
    src = FakeSource(stored)
    hashes = list(content)
    hot = hashes[:3]
    with NodeCache(tmp_path, 100_000) as cache:
        for h in hashes:
            cache.get(h, src, expected_size=10_000)
            for k in hot:
                cache.get(k, src, expected_size=10_000)
        assert cache.stat().size_bytes <= 100_000
    assert all(src.calls[k.object_path()] == 1 for k in hot)


def _pin_and_exit(directory: Path, h: ContentHash) -> None:
    NodeCache(directory, None).pin(h)


def test_pinned_objects_are_never_evicted_and_dead_owners_pins_are_ignored(tmp_path: Path) -> None:
    content, stored = make_objects(20, 10_000, seed=3, kind=ObjectType.CATALOG)
    src = FakeSource(stored)
    hashes = list(content)
    mine, orphan = hashes[0], hashes[1]
    with NodeCache(tmp_path, 50_000) as cache:
        cache.get(mine, src, ObjectType.CATALOG)
        cache.get(orphan, src, ObjectType.CATALOG)
        cache.pin(mine)
        child = FORK.Process(target=_pin_and_exit, args=(tmp_path, orphan))
        child.start()
        child.join()
        assert cache.stat().pinned == 1  # the child's pin died with it
        for h in hashes[2:]:
            cache.get(h, src, ObjectType.CATALOG)
        assert cache.path_for(mine).exists()
        assert not cache.path_for(orphan).exists()
        assert cache.stat().size_bytes <= 50_000
        cache.unpin(mine)
        assert cache.stat().pinned == 0


def test_open_descriptor_survives_eviction(tmp_path: Path) -> None:
    content, stored = make_objects(10, 10_000, seed=4)
    src = FakeSource(stored)
    first, *rest = content
    with NodeCache(tmp_path, 30_000) as cache:
        path = cache.get(first, src)
        with open(path, "rb") as job_file:
            for h in rest:
                cache.get(h, src)
            assert not path.exists()  # evicted while open
            assert job_file.read() == content[first]


def test_open_of_a_fresh_small_object_reads_what_was_stored(tmp_path: Path) -> None:
    """A cold read gets a just-downloaded small object from memory; the cache has its file."""
    small, small_stored = make_objects(3, 5_000, seed=6)
    (big,), big_stored = make_objects(1, cache_mod.KEPT_CONTENT_MAX + 1, seed=7)
    raw, raw_stored = make_objects(1, 3_000, seed=8, compression=Compression.NONE)
    src = FakeSource({**small_stored, **big_stored, **raw_stored}, piece=700)
    with NodeCache(tmp_path, None) as cache:
        for h, data in small.items():
            with cache.open(h, src, expected_size=len(data)) as f:
                assert f.read() == data
                assert not hasattr(f, "name")  # from memory, not the file
            assert cache.path_for(h).read_bytes() == data
            with cache.open(h, src, expected_size=len(data)) as f:  # a hit: the file
                assert f.name == str(cache.path_for(h)) and f.read() == data
        (h_raw,) = raw
        with cache.open(h_raw, src, compression=Compression.NONE, expected_size=3_000) as f:
            assert f.read() == raw[h_raw]
        with cache.open(big, src, expected_size=cache_mod.KEPT_CONTENT_MAX + 1) as f:
            assert f.name == str(cache.path_for(big))
    assert all(src.calls[k.object_path()] == 1 for k in small)


def test_a_corrupted_download_opened_from_memory_leaves_nothing(tmp_path: Path) -> None:
    content, stored = make_objects(1, 5_000, seed=10)
    (h,) = content
    bad = bytearray(stored[h.object_path()])
    bad[100] ^= 1
    with NodeCache(tmp_path, None) as cache, pytest.raises((HashMismatch, FormatError)):
        cache.open(h, FakeSource({h.object_path(): bytes(bad)}), expected_size=5_000)
    assert files_under_final_names(tmp_path) == {}


def _slow_worker(
    directory: Path, content: dict[ContentHash, bytes], stored: dict[str, bytes], seed: int
) -> None:
    cache = NodeCache(directory, 200_000)
    src = FakeSource(stored, delay=0.002, piece=4096)
    order = list(content)
    random.Random(seed).shuffle(order)
    for h in order:
        cache.get(h, src)


def test_kill_9_during_downloads_leaves_cache_consistent(tmp_path: Path) -> None:
    content, stored = make_objects(16, 32_000, seed=5)
    directory = tmp_path / "c"
    rng = random.Random(6)
    for round_ in range(20):
        procs = [
            FORK.Process(target=_slow_worker, args=(directory, content, stored, round_ * 2 + i))
            for i in range(2)
        ]
        for p in procs:
            p.start()
        time.sleep(rng.uniform(0.01, 0.3))
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            p.join()
    by_hex = {h.hex: data for h, data in content.items()}
    for hexid, path in files_under_final_names(directory).items():
        assert path.read_bytes() == by_hex[hexid], f"partial or wrong file {path}"
    with NodeCache(directory, 200_000) as cache:
        report = cache.fsck()
        assert report.removed == []
        assert list(cache.txn.iterdir()) == []
        on_disk = sum(p.stat().st_size for p in files_under_final_names(directory).values())
        assert cache.stat().size_bytes == on_disk <= 200_000
        src = FakeSource(stored)
        for h, data in content.items():  # no lock was left held by the dead
            assert cache.get(h, src).read_bytes() == data


def test_fsck_quarantines_a_file_modified_on_disk(tmp_path: Path, locks: str) -> None:
    content, stored = make_objects(3, 20_000, seed=7)
    src = FakeSource(stored)
    h = next(iter(content))
    with NodeCache(tmp_path, None) as cache:
        for k in content:
            cache.get(k, src)
        path = cache.path_for(h)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.seek(100)
            f.write(b"X")
        seen: list[tuple[int, int]] = []
        report = cache.fsck(progress=lambda done, total: seen.append((done, total)))
        assert [name for name, _ in report.removed] == [h.cache_name()]
        assert "adler32 mismatch" in report.removed[0][1]
        assert report.checked == 3 and seen[-1] == (3, 3)
        assert not path.exists() and len(list(cache.quarantine.iterdir())) == 1
        assert cache.stat().objects == 2
        assert cache.get(h, src).read_bytes() == content[h]
        assert src.calls[h.object_path()] == 2


def test_recorded_checksum_is_the_adler32_of_the_decoded_file(tmp_path: Path) -> None:
    zipped, stored = make_objects(2, 20_000, seed=30)
    raw, stored_raw = make_objects(2, 20_000, seed=31, compression=Compression.NONE)
    src = FakeSource({**stored, **stored_raw})
    with NodeCache(tmp_path, None) as cache:
        for h in zipped:
            cache.get(h, src)
        cache.get_many([Wanted(h, compression=Compression.NONE) for h in raw], src)
        derived = cache.get_derived("abc123", lambda f: f.write(b"assembled bytes"))
        for h, data in {**zipped, **raw}.items():
            rec = cache._index.get(h.cache_name())
            assert rec.checksum == f"adler32:{zlib.adler32(data):08x}"
        rec = cache._index.get("assembled/ab/c123")
        assert derived.read_bytes() == b"assembled bytes"
        assert rec.checksum == f"adler32:{zlib.adler32(b'assembled bytes'):08x}"


def test_fsck_honours_sha256_records_of_earlier_indexes(tmp_path: Path) -> None:
    content, stored = make_objects(2, 20_000, seed=32)
    src = FakeSource(stored)
    good, bad = content
    with NodeCache(tmp_path, None) as cache:
        for h, data in content.items():
            cache.get(h, src)
            rec = cache._index.get(h.cache_name())
            cache._index.remove(h.cache_name())  # as an earlier version recorded it
            cache._index.insert(h.cache_name(), rec.size, rec.kind, hashlib.sha256(data).hexdigest())
        path = cache.path_for(bad)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.write(b"X")
        report = cache.fsck()
        problem = "content changed since it was verified (sha256 mismatch)"
        assert report.removed == [(bad.cache_name(), problem)]
        assert cache.path_for(good).read_bytes() == content[good]


def test_lost_or_corrupt_index_is_rebuilt_and_fsck_verifies_by_name(tmp_path: Path) -> None:
    zipped, stored = make_objects(3, 20_000, seed=8)
    raw, stored_raw = make_objects(2, 20_000, seed=9, compression=Compression.NONE)
    src = FakeSource({**stored, **stored_raw})
    with NodeCache(tmp_path, None) as cache:
        for h in zipped:
            cache.get(h, src)
        for h in raw:
            cache.get(h, src, compression=Compression.NONE)
    shutil.rmtree(tmp_path / "index")
    with NodeCache(tmp_path, None) as cache:
        assert cache.stat().objects == 5
        assert cache.stat().size_bytes == 5 * 20_000
        report = cache.fsck()  # no checksum recorded: checked against the names
        assert report.removed == [] and report.checked == 5
        assert cache._index.get(next(iter(raw)).cache_name()).checksum is not None
    (tmp_path / "index" / "cache.db").write_bytes(b"this is not a database" * 100)
    with NodeCache(tmp_path, None) as cache:
        assert cache.stat().objects == 5
        for h, data in zipped.items():
            assert cache.get(h, src).read_bytes() == data
        assert sum(src.calls.values()) == 5  # nothing downloaded again


def test_objects_are_read_only_and_executable_however_written(tmp_path: Path) -> None:
    """Named temporaries (no O_TMPFILE) and the alien tier give objects the same mode."""
    content, stored = make_objects(1, 10_000, seed=12)
    ((h, data),) = content.items()
    with NodeCache(tmp_path / "node", None) as cache:
        cache._anonymous = False
        assert stat.S_IMODE(cache.get(h, FakeSource(stored)).stat().st_mode) == 0o555
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    alien = AlienCache(tmp_path / "alien", writable=True)
    alien.publish(h, plain)
    assert stat.S_IMODE(alien.path_for(h).stat().st_mode) == 0o555


def test_alien_read_only_hit_is_returned_in_place(tmp_path: Path) -> None:
    content, stored = make_objects(2, 10_000, seed=10)
    (h, data), (other, _) = list(content.items())
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    AlienCache(tmp_path / "alien", writable=True).publish(h, plain)
    alien = AlienCache(tmp_path / "alien")
    src = FakeSource(stored)
    with NodeCache(tmp_path / "node", None, alien=alien) as cache:
        path = cache.get(h, src)
        assert path == alien.path_for(h) and path.read_bytes() == data
        assert src.calls[h.object_path()] == 0 and not cache.path_for(h).exists()
        cache.get(other, src)  # not in the tier: network, and no publishing when read-only
        assert src.calls[other.object_path()] == 1 and not alien.path_for(other).exists()
        assert cache.stat().alien_hits == 1


def test_alien_object_on_another_file_system_is_copied_in_when_a_local_path_is_needed(
    tmp_path: Path,
) -> None:
    """The interposer hardlinks what it gets: an alien object on a cluster file system would
    be copied outside the quota, so it is copied into the node cache instead (no network)."""
    content, stored = make_objects(1, 10_000, seed=11)
    ((h, data),) = content.items()
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    elsewhere = Path(tempfile.mkdtemp(prefix="alien-", dir="/dev/shm"))
    try:
        assert os.stat(elsewhere).st_dev != os.stat(tmp_path).st_dev, "needs two file systems"
        AlienCache(elsewhere, writable=True).publish(h, plain)
        src = FakeSource(stored)
        with NodeCache(tmp_path / "node", 1 << 20, alien=AlienCache(elsewhere)) as cache:
            assert cache.get(h, src) == AlienCache(elsewhere).path_for(h)  # in place by default
            path = cache.get(h, src, local=True)
            assert path == cache.path_for(h) and path.read_bytes() == data
            assert cache.get(h, src, local=True) == path  # now a node cache hit
            st = cache.stat()
            assert (st.objects, st.size_bytes, src.calls[h.object_path()]) == (1, 10_000, 0)
            assert cache.fsck().clean  # recorded with a checksum that fsck accepts
        same = AlienCache(tmp_path / "alien", writable=True)  # same file system: in place still
        same.publish(h, plain)
        with NodeCache(tmp_path / "node2", None, alien=AlienCache(tmp_path / "alien")) as cache:
            assert cache.get(h, src, local=True) == same.path_for(h)
    finally:
        shutil.rmtree(elsewhere)


def test_alien_writable_publishes_and_holds_no_database(tmp_path: Path) -> None:
    content, stored = make_objects(3, 10_000, seed=11)
    src = FakeSource(stored)
    with NodeCache(tmp_path / "node1", None, alien=AlienCache(tmp_path / "alien", writable=True)) as cache:
        for h in content:
            cache.get(h, src)
    files = [p for p in (tmp_path / "alien").rglob("*") if p.is_file()]
    assert sorted(p.relative_to(tmp_path / "alien").as_posix() for p in files) == sorted(
        h.cache_name() for h in content
    )
    assert all(not p.stat().st_mode & stat.S_IWUSR for p in files)
    src2 = FakeSource(stored)
    with NodeCache(tmp_path / "node2", None, alien=AlienCache(tmp_path / "alien")) as cache:
        for h, data in content.items():
            assert cache.get(h, src2).read_bytes() == data
    assert sum(src2.calls.values()) == 0


def test_stat_counts_hits_misses_and_size(tmp_path: Path) -> None:
    content, stored = make_objects(2, 10_000, seed=12)
    a, b = content
    src = FakeSource(stored)
    with NodeCache(tmp_path, quota_bytes_from_limit(4000)) as cache:
        cache.get(a, src)
        cache.get(a, src)
        cache.get(a, src)
        cache.get(b, src)
        s = cache.stat()
        assert (s.hits, s.misses, s.alien_hits) == (2, 2, 0)
        assert (s.objects, s.size_bytes, s.quota_bytes, s.pinned) == (2, 20_000, 4000 * 1024 * 1024, 0)
    assert quota_bytes_from_limit(0) is None and quota_bytes_from_limit(-1) is None


def test_get_derived_builds_once_atomically_and_counts_against_quota(tmp_path: Path) -> None:
    built: list[int] = []

    def build(f) -> None:
        built.append(1)
        f.write(b"abc" * 1000)

    with NodeCache(tmp_path, None) as cache:
        path = cache.get_derived("deadbeef01", build)
        assert path == tmp_path / "assembled" / "de" / "adbeef01"
        assert cache.get_derived("deadbeef01", build).read_bytes() == b"abc" * 1000
        assert built == [1] and cache.stat().size_bytes == 3000

        def failing(f) -> None:
            f.write(b"half")
            raise RuntimeError("chunk missing")

        with pytest.raises(RuntimeError):
            cache.get_derived("cafe02", failing)
        assert not (tmp_path / "assembled" / "ca" / "fe02").exists()
        assert list(cache.txn.iterdir()) == []
        with pytest.raises(FormatError):
            cache.get_derived("../../etc", build)
        assert cache.fsck().removed == []


def test_wipe_removes_everything_and_objects_come_back(tmp_path: Path) -> None:
    content, stored = make_objects(5, 10_000, seed=13)
    src = FakeSource(stored)
    with NodeCache(tmp_path, None) as cache:
        for h in content:
            cache.get(h, src)
        cache.pin(next(iter(content)))
        assert cache.wipe() == (5, 0)
        assert files_under_final_names(tmp_path) == {}
        s = cache.stat()
        assert (s.objects, s.size_bytes) == (0, 0)
        h = next(iter(content))
        assert cache.get(h, src).read_bytes() == content[h]


def test_txn_file_of_a_live_writer_is_kept(tmp_path: Path) -> None:
    with NodeCache(tmp_path, None) as cache:
        fd, live = cache.temporary("x.")
        dead = cache.txn / "999999999.y.abc"  # no such pid, nobody holds its lock
        dead.write_bytes(b"partial")
        assert cache._clean_txn() == 1
        assert Path(live).exists() and not dead.exists()
        os.close(fd)


def test_node_cache_on_a_network_file_system_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cache_mod, "_filesystem_type", lambda path: "nfs4")
    with pytest.raises(ConfigError, match="node-local"):
        NodeCache(tmp_path, None)


def test_a_node_cache_another_user_could_change_is_refused_but_can_be_inspected(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the suite runs as root (.ci/run): chown needs it"
    base = tmp_path / "base"
    base.mkdir()
    os.chown(base, 65534, 65534)  # made beforehand by someone else, as in a shared /tmp
    with pytest.raises(
        ConfigError, match=r"base/shared: not used as the node cache: its parent .* uid 65534"
    ):
        NodeCache(base / "shared", None)
    with NodeCache(base / "shared", None, check_owner=False) as cache:  # cache stat/fsck
        assert cache.stat().objects == 0


def test_a_node_cache_that_cannot_be_made_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"file/c: cannot be used as the node cache: Not a directory"):
        NodeCache(tmp_path / "file" / "c", None)


def _cut_short(path: Path, size: int) -> None:
    """What a power cut can leave of a file linked shortly before it: the name, not all the data."""
    os.chmod(path, 0o644)
    os.truncate(path, size)
    os.chmod(path, 0o444)


def test_files_cut_short_by_a_crash_are_quarantined_and_fetched_again(tmp_path: Path) -> None:
    content, stored = make_objects(5, 20_000, seed=15)
    a, b, c, d, e = content
    src = FakeSource(stored)
    with NodeCache(tmp_path, None) as cache:
        cache.get(a, src, expected_size=20_000)  # a file: the catalog gives its size
        for h in (b, c, d):  # catalogs and the like: no size known in advance
            cache.get(h, src)
        cache.get_many([Wanted(e, expected_size=20_000)], src)
        cache.stat()  # writes the records this process deferred
        _cut_short(cache.path_for(a), 0)  # checked against the catalog's size (and the record)
        _cut_short(cache.path_for(b), 7_000)  # checked against the record
        _cut_short(cache.path_for(c), 7_000)  # no record, no size: checked against its name
        cache._index.remove(c.cache_name())
        cache._index.remove(d.cache_name())  # intact, but unrecorded: verified, then adopted
        _cut_short(cache.path_for(e), 100)  # pre-warming again replaces it as well
        assert cache.get(a, src, expected_size=20_000).read_bytes() == content[a]
        for h in (b, c, d):
            assert cache.get(h, src).read_bytes() == content[h]
        assert isinstance(cache.get_many([Wanted(e, expected_size=20_000)], src)[0], Path)
        assert cache.path_for(e).read_bytes() == content[e]
        assert {h: src.calls[h.object_path()] for h in content} == {a: 2, b: 2, c: 2, d: 1, e: 2}
        assert len(list(cache.quarantine.iterdir())) == 4
        assert cache._index.get(d.cache_name()).checksum is not None
        assert cache.stat().size_bytes == 5 * 20_000 and cache.fsck().clean


def test_rebuilding_a_lost_index_drops_empty_objects(tmp_path: Path) -> None:
    content, stored = make_objects(3, 10_000, seed=16)
    src = FakeSource(stored)
    with NodeCache(tmp_path, None) as cache:
        for h in content:
            cache.get(h, src)
    empty = next(iter(content))
    _cut_short(tmp_path / empty.cache_name(), 0)
    shutil.rmtree(tmp_path / "index")
    with NodeCache(tmp_path, None) as cache:  # the real client's rebuild does the same
        assert not cache.path_for(empty).exists()
        assert (cache.stat().objects, cache.stat().size_bytes) == (2, 20_000)
        assert cache.get(empty, src).read_bytes() == content[empty]


def test_records_deferred_by_one_process_are_counted_once(tmp_path: Path) -> None:
    content, stored = make_objects(3, 10_000, seed=17)
    src = FakeSource(stored)
    first, second = NodeCache(tmp_path, None), NodeCache(tmp_path, None)
    for h in content:
        first.get(h, src, expected_size=10_000)  # records deferred (written in batches)
    for h in content:  # another job finds them unrecorded: adopted after the size check
        assert second.get(h, src, expected_size=10_000).read_bytes() == content[h]
    assert sum(src.calls.values()) == 3
    first.close()  # the deferred records replace the adopted ones
    assert (second.stat().objects, second.stat().size_bytes) == (3, 30_000)
    assert all(second._index.get(h.cache_name()).checksum for h in content)
    second.close()


def test_alien_lookup_rejects_a_file_cut_short_and_filling_replaces_it(tmp_path: Path) -> None:
    content, stored = make_objects(1, 10_000, seed=18)
    h, data = next(iter(content.items()))
    alien = AlienCache(tmp_path, writable=True)
    src = FakeSource(stored)
    assert alien.fill_many([Wanted(h, expected_size=10_000)], src) == [alien.path_for(h)]
    _cut_short(alien.path_for(h), 3_000)
    assert alien.lookup(h, 10_000) is None
    assert alien.fill_many([Wanted(h, expected_size=10_000)], src) == [alien.path_for(h)]
    assert alien.path_for(h).read_bytes() == data and src.calls[h.object_path()] == 2
    assert list(alien.txn.iterdir()) == []


def test_an_index_of_the_earlier_format_is_converted_and_keeps_its_lru_order(tmp_path: Path) -> None:
    content, stored = make_objects(6, 10_000, seed=19)
    src = FakeSource(stored)
    order = list(content)
    with NodeCache(tmp_path, None) as cache:
        for h in order:
            cache.get(h, src)
        db = cache._index._db
        for seq, name in list(cache._index.lru()):  # format 1: one "a:<seq>:<name>" key per object
            db.delete(cache_mod._lru_key(seq))
            db.set(f"a:{seq:020d}:{name}", 0)
        db.delete("c:format")
    with NodeCache(tmp_path, 45_000) as cache:
        lru_keys = [k for k in cache._index._db.iterkeys() if isinstance(k, str) and k.startswith("a:")]
        assert len(lru_keys) == 6 and all(k.count(":") == 1 for k in lru_keys)
        assert [name for _, name in cache._index.lru()] == [h.cache_name() for h in order]
        cache.get(order[0], src)  # a hit: the oldest becomes the newest
        extra, extra_stored = make_objects(1, 10_000, seed=20)
        src.stored.update(extra_stored)
        cache.get(next(iter(extra)), src)  # over the quota: evicted down to half of it (2 objects)
        assert [cache.path_for(h).exists() for h in order] == [True, False, False, False, False, False]
        assert cache.stat().size_bytes == 20_000 and cache.fsck().clean
