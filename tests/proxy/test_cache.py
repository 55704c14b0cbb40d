"""The proxy's disk + memory cache: atomic entries, LRU eviction, restarts, damage, locking."""

from __future__ import annotations

import os
import time

import pytest

from proxy.cache import Cache, CacheLocked, DiskHit, MemoryHit, Meta


def store(cache: Cache, key: str, body: bytes, expires_at: float | None = None) -> bool:
    temp = cache.new_temp()
    temp.write(body)
    meta = Meta(key, 200, [("content-type", "x")], time.time(), expires_at, 0, len(body))
    try:
        return cache.commit(temp, meta)
    finally:
        temp.close()


def body_of(hit: MemoryHit | DiskHit | None) -> bytes:
    assert hit is not None
    if isinstance(hit, MemoryHit):
        return hit.body
    try:
        return os.pread(hit.fd, hit.meta.body_size, 0)
    finally:
        os.close(hit.fd)


@pytest.fixture
def cache(tmp_path):  # type: ignore[no-untyped-def]
    c = Cache(tmp_path / "c", max_bytes=1 << 20, memory_bytes=64 << 10, memory_max_object=16 << 10)
    c.open()
    yield c
    c.close()


def test_small_entries_are_served_from_memory_large_from_disk(cache):
    assert store(cache, "obj:a", b"a" * 1000) and store(cache, "obj:b", b"b" * 100_000)
    assert isinstance(cache.lookup("obj:a"), MemoryHit)
    big = cache.lookup("obj:b")
    assert isinstance(big, DiskHit) and body_of(big) == b"b" * 100_000
    assert cache.lookup("obj:missing") is None


def test_entries_survive_a_restart_and_temp_leftovers_do_not(tmp_path, cache):
    store(cache, "url:http://a/m", b"manifest", expires_at=time.time() + 61)
    store(cache, "obj:big", b"x" * 50_000)
    leftover = cache.new_temp()
    leftover.write(b"half a download")
    cache.close()
    again = Cache(tmp_path / "c", max_bytes=1 << 20)
    again.open()
    assert not leftover.path.exists()
    hit = again.lookup("url:http://a/m")
    assert body_of(hit) == b"manifest" and hit.meta.fresh(time.time()) and again.objects == 2
    assert body_of(again.lookup("obj:big")) == b"x" * 50_000
    again.close()


def test_lru_eviction_keeps_the_disk_under_its_limit(tmp_path):
    c = Cache(tmp_path / "c", max_bytes=300_000, memory_bytes=0, max_object=200_000)
    c.open()
    for name in "abc":
        store(c, f"obj:{name}", name.encode() * 90_000)
    c.lookup("obj:a")  # a is now the most recently used
    store(c, "obj:d", b"d" * 90_000)
    assert c.disk_used <= 300_000
    assert c.lookup("obj:b") is None  # the least recently used went first
    assert all(c.lookup(f"obj:{k}") is not None for k in "acd")
    assert c.evictions == 1
    c.close()


def test_lru_order_survives_restart(tmp_path):
    c = Cache(tmp_path / "c", max_bytes=300_000, memory_bytes=0, max_object=200_000)
    c.open()
    for i, name in enumerate("abc"):
        store(c, f"obj:{name}", name.encode() * 90_000)
        path = c._path(c.digest(f"obj:{name}"))
        os.utime(path, (1000 + i, 1000 + i))  # a < b < c in age
    os.utime(c._path(c.digest("obj:a")), (2000, 2000))  # a used last
    c.close()
    c = Cache(tmp_path / "c", max_bytes=300_000, memory_bytes=0, max_object=200_000)
    c.open()
    store(c, "obj:d", b"d" * 90_000)
    assert c.lookup("obj:b") is None and c.lookup("obj:a") is not None
    c.close()


def test_damaged_entry_is_deleted_on_first_use(tmp_path, cache):
    store(cache, "obj:a", b"a" * 50_000)
    path = cache._path(cache.digest("obj:a"))
    cache.close()
    with open(path, "r+b") as f:
        f.truncate(30_000)  # as a power loss after rename without fsync could leave it
    c = Cache(tmp_path / "c", max_bytes=1 << 20)
    c.open()
    assert c.lookup("obj:a") is None and not path.exists() and c.objects == 0
    c.close()


def test_too_large_objects_are_not_stored(tmp_path):
    c = Cache(tmp_path / "c", max_bytes=400_000, memory_bytes=0)
    c.open()
    assert not store(c, "obj:huge", b"h" * 200_000)  # over a quarter of the cache
    assert c.objects == 0
    c.close()


def test_memory_tier_is_bounded(cache):
    for i in range(10):
        store(cache, f"obj:{i}", bytes([i]) * 10_000)
    assert cache.memory_used <= 64 << 10 and cache.memory_objects == 6


def test_replacing_a_mutable_entry(cache):
    store(cache, "url:m", b"old", expires_at=time.time() - 1)
    assert not cache.lookup("url:m").meta.fresh(time.time())
    store(cache, "url:m", b"new", expires_at=time.time() + 60)
    hit = cache.lookup("url:m")
    assert body_of(hit) == b"new" and hit.meta.fresh(time.time()) and cache.objects == 1


def test_one_proxy_per_cache_directory(tmp_path, cache):
    other = Cache(tmp_path / "c", max_bytes=1 << 20)
    with pytest.raises(CacheLocked):
        other.open()
