"""Publish with our publisher, serve with a real nginx, read back through the client over HTTP."""

from __future__ import annotations

import pytest

from cvmfs_client.client import open_repository
from cvmfs_client.demo import compare_with_source
from cvmfs_client.hashing import HashAlgorithm
from cvmfs_client.objects import Compression
from cvmfs_client.publisher import publish
from fixtures.example_tree import build_example_tree, describe_tree
from tests.truth import REVISIONS, compare_with_truth, load_truth

FQRN = "example.cvmfs.io"
SMALL_CHUNKS = (64 << 10, 128 << 10, 256 << 10)


def params(server, keys_dir, cache, fqrn=FQRN, **extra):  # type: ignore[no-untyped-def]
    return {
        "CVMFS_SERVER_URL": server.server_url,
        "CVMFS_PUBLIC_KEY": str(keys_dir / f"{fqrn}.pub"),
        "CVMFS_HTTP_PROXY": "DIRECT",
        "CVMFS_CACHE_BASE": str(cache),
        **extra,
    }


@pytest.mark.parametrize("algorithm", list(HashAlgorithm))
@pytest.mark.parametrize("compression", list(Compression))
def test_every_edge_case_reads_back_byte_exact(tmp_path, nginx_server, algorithm, compression):
    src = build_example_tree(tmp_path / "src", fqrn=FQRN)
    publish(
        src,
        FQRN,
        tmp_path / "s0" / FQRN,
        tmp_path / "keys",
        hash_algorithm=algorithm,
        compression=compression,
        chunk_sizes=SMALL_CHUNKS,
    )
    server = nginx_server(tmp_path / "s0")
    with open_repository(FQRN, params(server, tmp_path / "keys", tmp_path / "cache")) as repo:
        assert repo.root_hash.algorithm is algorithm
        assert compare_with_source(repo, describe_tree(src)) == []
        big = repo.lookup("/share/data/big.bin")
        assert big.is_chunked, "the large file must be stored in chunks"
        assert repo.readlink("/flavors/current") in ("generic", "debug")


def test_republish_keeps_old_revision_readable_by_root_hash(tmp_path, nginx_server):
    s0, keys = tmp_path / "s0" / FQRN, tmp_path / "keys"
    v1 = build_example_tree(tmp_path / "v1", fqrn=FQRN)
    first = publish(v1, FQRN, s0, keys, chunk_sizes=SMALL_CHUNKS)
    v2 = build_example_tree(tmp_path / "v2", fqrn=FQRN, variant=2)
    second = publish(v2, FQRN, s0, keys, chunk_sizes=SMALL_CHUNKS)
    assert second.revision == first.revision + 1
    assert 0 < second.objects_written < first.objects_written

    server = nginx_server(tmp_path / "s0")
    with open_repository(FQRN, params(server, keys, tmp_path / "c1")) as repo:
        assert repo.revision == second.revision
        assert compare_with_source(repo, describe_tree(v2)) == []
    pinned = params(server, keys, tmp_path / "c2", CVMFS_ROOT_HASH=first.root_hash.hex)
    with open_repository(FQRN, pinned) as repo:
        assert repo.revision == first.revision
        assert compare_with_source(repo, describe_tree(v1)) == []
    tagged = params(server, keys, tmp_path / "c3", CVMFS_REPOSITORY_TAG="trunk-previous")
    with open_repository(FQRN, tagged) as repo:
        assert repo.root_hash == first.root_hash


@pytest.mark.parametrize("fqrn", sorted(REVISIONS))
def test_real_publisher_repositories_over_nginx(real_fixtures, tmp_path, nginx_server, fqrn):
    server = nginx_server(real_fixtures)
    for revision, (suffix, tag) in REVISIONS[fqrn].items():
        p = {
            "CVMFS_SERVER_URL": server.server_url,
            "CVMFS_PUBLIC_KEY": str(real_fixtures / fqrn / f"{fqrn}.pub"),
            "CVMFS_CACHE_BASE": str(tmp_path / "cache"),
        }
        if tag:
            p["CVMFS_REPOSITORY_TAG"] = tag
        with open_repository(fqrn, p) as repo:
            assert repo.revision == revision
            assert compare_with_truth(repo, load_truth(real_fixtures / f"{fqrn}.{suffix}")) == []
