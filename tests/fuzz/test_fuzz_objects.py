"""Fuzz object decoding: random stored bytes against random or matching hashes, any split."""

from __future__ import annotations

import zlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cvmfs_client.errors import CvmfsError
from cvmfs_client.hashing import ContentHash, HashAlgorithm
from cvmfs_client.objects import Compression, ObjectDecoder

from .common import FUZZ, Property, mutated

stored = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(zlib.compress),
    st.binary(max_size=300).map(zlib.compress).flatmap(mutated),
    st.binary(max_size=200).map(lambda b: zlib.compress(b) + zlib.compress(b)),
    st.builds(lambda n: zlib.compress(bytes(n)), st.integers(0, 3_000_000)),  # bomb-ish
)
object_input = st.tuples(
    stored,
    st.sampled_from(list(HashAlgorithm)),
    st.one_of(st.just(None), st.binary(min_size=20, max_size=20)),  # None: the true hash
    st.sampled_from(list(Compression)),
    st.one_of(st.none(), st.integers(-5, 4_000_000)),
    st.lists(st.integers(1, 64), max_size=8),
)


def check_object(spec: tuple[Any, ...]) -> None:
    data, algo, digest, compression, expected_size, cuts = spec
    expected = ContentHash.of(algo, data) if digest is None else ContentHash(algo, digest)
    dec = ObjectDecoder(expected, compression, lambda _b: None, "fuzz", expected_size)
    try:
        pos = 0
        for n in cuts:
            dec.feed(data[pos : pos + n])
            pos += n
        dec.feed(data[pos:])
        size = dec.finish()
    except CvmfsError:
        return
    assert expected == ContentHash.of(algo, data), "finish() accepted bytes with the wrong hash"
    if expected_size is not None:
        assert size == expected_size


PROPERTIES: dict[str, Property] = {"objects.ObjectDecoder": (object_input, check_object)}


@FUZZ
@given(object_input)
def test_object_decoder(spec: tuple[Any, ...]) -> None:
    check_object(spec)
