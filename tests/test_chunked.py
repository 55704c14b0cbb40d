"""ChunkedReader alone (chunks as in-memory files), then Repository.open of a chunked file."""

from __future__ import annotations

import io
import os
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cvmfs_client.cache import NodeCache
from cvmfs_client.chunked import ChunkedReader
from cvmfs_client.errors import CorruptObject, FetchError
from cvmfs_client.fetcher import Fetcher, file_url
from cvmfs_client.hashing import ObjectType
from cvmfs_client.keys import load_master_keys
from cvmfs_client.publisher import publish
from cvmfs_client.repository import Repository

FQRN = "chunked.example.org"
NOW = 1_780_000_000
KiB = 1024


def _reader(parts: list[bytes], opened: list[int] | None = None) -> ChunkedReader:
    spans, offset = [], 0
    for p in parts:
        spans.append((offset, len(p)))
        offset += len(p)

    def open_chunk(i: int) -> io.BytesIO:
        if opened is not None:
            opened.append(i)
        return io.BytesIO(parts[i])

    return ChunkedReader(spans, offset, open_chunk, "/cvmfs/x/file")


def test_reads_across_chunk_boundaries_opening_each_chunk_when_reached() -> None:
    parts = [b"abc", b"defgh", b"i", b"jklmnop"]
    opened: list[int] = []
    with io.BufferedReader(_reader(parts, opened), 4) as f:
        assert opened == []
        assert f.read(2) == b"ab"
        assert opened == [0]
        assert f.read(5) == b"cdefg"
        assert f.read() == b"hijklmnop"
        assert f.read() == b""
    assert opened == [0, 1, 2, 3]


def test_lines_seek_and_tell_behave_as_in_one_file() -> None:
    data = b"".join(f"line {i}\n".encode() for i in range(200))
    rng = random.Random(3)
    cuts = sorted(rng.sample(range(1, len(data)), 12))
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    with io.BufferedReader(_reader(parts), 64) as f:
        assert f.readlines() == io.BytesIO(data).readlines()
        for pos in (0, 5, len(data) - 3, cuts[4], cuts[4] - 1, len(data), len(data) + 9):
            assert f.seek(pos) == pos
            assert f.tell() == pos
            assert f.read(17) == data[pos : pos + 17]
        assert f.seek(-4, os.SEEK_END) == len(data) - 4
        assert f.read() == data[-4:]


def test_a_chunk_shorter_than_its_span_is_an_error_not_a_short_file() -> None:
    spans = [(0, 4), (4, 4)]
    files = [io.BytesIO(b"abcd"), io.BytesIO(b"ef")]  # the second lost two bytes on disk
    raw = ChunkedReader(spans, 8, lambda i: files[i], "/cvmfs/x/file")
    with io.BufferedReader(raw) as f, pytest.raises(CorruptObject, match="chunk 1 ends at byte 2 of 4"):
        f.read()


@pytest.mark.parametrize(
    ("spans", "size"),
    [([(0, 4), (5, 4)], 9), ([(0, 4)], 5), ([(1, 4)], 5), ([(0, 0)], 0)],
)
def test_spans_must_tile_the_file(spans: list[tuple[int, int]], size: int) -> None:
    with pytest.raises(CorruptObject, match="/cvmfs/x/file"):
        ChunkedReader(spans, size, lambda i: io.BytesIO(), "/cvmfs/x/file")


def test_close_closes_the_open_chunk_and_refuses_further_reads() -> None:
    chunk = io.BytesIO(b"abcd")
    raw = ChunkedReader([(0, 4)], 4, lambda i: chunk, "/cvmfs/x/file")
    assert raw.read(1) == b"a"
    raw.close()
    assert chunk.closed
    with pytest.raises(ValueError, match="closed"):
        raw.read(1)


def test_an_empty_file_without_chunks_reads_as_empty() -> None:
    assert ChunkedReader([], 0, lambda i: io.BytesIO(), "/cvmfs/x/empty").read() == b""


Mounted = tuple[Repository, bytes, Path]  # the repository, big.bin's content, its Stratum 0


@pytest.fixture
def chunked_repo(tmp_path: Path, keys_dir: Path) -> Mounted:
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(9).randbytes(300 * KiB)
    (src / "big.bin").write_bytes(data)
    s0 = tmp_path / "s0"
    publish(src, FQRN, s0, keys_dir, chunk_sizes=(16 * KiB, 32 * KiB, 64 * KiB), now=NOW)
    repo = Repository(
        FQRN,
        Fetcher.for_servers(file_url(s0)),
        load_master_keys(str(keys_dir / f"{FQRN}.pub"), None),
        NodeCache(tmp_path / "cache", None),
        now=datetime.fromtimestamp(NOW, UTC),
    )
    return repo, data, s0


@pytest.fixture
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


def test_open_streams_a_chunked_file_without_assembling_a_copy(chunked_repo: Mounted) -> None:
    repo, data, _ = chunked_repo
    with repo:
        entry = repo.stat("/big.bin")
        assert entry.is_chunked and len(repo.chunks(entry)) > 2
        with repo.open("/big.bin") as f:
            assert f.read(1000) == data[:1000]
            f.seek(200 * KiB)
            assert f.read() == data[200 * KiB :]
        assert not (repo.store.directory / "assembled").exists()
        assert repo.materialize("/big.bin").read_bytes() == data  # a path still needs a copy
        assert repo.store.fsck().clean


def test_open_of_a_chunked_file_fails_at_once_when_a_chunk_cannot_be_fetched(chunked_repo: Mounted) -> None:
    repo, _, s0 = chunked_repo
    with repo:
        chunks = repo.chunks(repo.stat("/big.bin"))
        (s0 / chunks[-1].content_hash.object_path(ObjectType.PARTIAL)).unlink()
        with pytest.raises(FetchError):
            repo.open("/big.bin")
