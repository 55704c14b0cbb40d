"""Which URLs are verifiable CVMFS objects, and the hash they must have."""

from __future__ import annotations

import pytest

from cvmfs_client.hashing import HashAlgorithm
from proxy.cvmfs_urls import classify

SHA1 = "5798f7f4ca7585d850eea64610a1f73d8f8de7a3"


@pytest.mark.parametrize(
    ("path", "hex_id", "type_char"),
    [
        (f"/cvmfs/a.org/data/57/{SHA1[2:]}", SHA1, ""),
        (f"/cvmfs/a.org/data/57/{SHA1[2:]}C", SHA1, "C"),
        (f"/cvmfs/a.org/data/57/{SHA1[2:]}-rmd160P", SHA1 + "-rmd160", "P"),
        (f"/data/57/{SHA1[2:]}-shake128X", SHA1 + "-shake128", "X"),
        (f"/cvmfs/a.org/.cvmfsalt-{SHA1}", SHA1, ""),
    ],
)
def test_content_addressed_objects_are_immutable_with_their_hash(path, hex_id, type_char):
    obj = classify(path)
    assert obj is not None and obj.expected.hex == hex_id and obj.type_char == type_char
    assert obj.cache_key == "obj:" + hex_id


def test_same_hash_on_two_hosts_or_types_is_one_cache_entry():
    a = classify(f"/cvmfs/a.org/data/57/{SHA1[2:]}")
    b = classify(f"/cvmfs/b.org/data/57/{SHA1[2:]}C")
    assert a is not None and b is not None and a.cache_key == b.cache_key
    assert a.expected.algorithm is HashAlgorithm.SHA1


@pytest.mark.parametrize(
    "path",
    [
        "/cvmfs/a.org/.cvmfspublished",
        "/cvmfs/a.org/.cvmfswhitelist",
        "/cvmfs/info/v1/repositories.json",
        "/cvmfs/a.org/api/v1.0/geo/x/a,b",
        f"/cvmfs/a.org/data/57/{SHA1[2:]}?x=1",  # a query could change the answer
        f"/cvmfs/a.org/data/57/{SHA1[2:].upper()}",  # uppercase is not a CVMFS name
        f"/cvmfs/a.org/data/57/{SHA1[2:]}T",  # temporary type never served
        f"/cvmfs/a.org/data/58/{SHA1[3:]}",  # wrong length
        f"/cvmfs/a.org/data/57/{SHA1[2:]}/x",
        "/cvmfs/a.org/software/data/57/readme",
    ],
)
def test_everything_else_is_mutable(path):
    assert classify(path) is None
