"""Fuzz chunking arguments (the CLI's ``--chunk-size`` text, ``validate_chunk_sizes``) and cut points."""

from __future__ import annotations

import io
from typing import Any

import click
from hypothesis import given
from hypothesis import strategies as st

from cvmfs_client.chunking import cut_points, validate_chunk_sizes
from cvmfs_client.cli import _chunk_sizes
from cvmfs_client.errors import CvmfsError

from .common import FUZZ, Property, hostile_number_text

size_text = st.one_of(
    hostile_number_text, hostile_number_text.map(lambda t: t + "K"), st.sampled_from(["M", "1G"])
)
chunk_arg = st.one_of(
    st.text(max_size=30),
    st.lists(size_text, min_size=1, max_size=4).map(",".join),
    st.sampled_from(["off", "OFF", "none", "32,64,128", "4M,8M,16M"]),
)
raw_sizes = st.tuples(*[st.one_of(st.integers(-100, 300), st.integers(), st.booleans(), st.none())] * 3)
chunk_input = st.tuples(chunk_arg, raw_sizes, st.binary(max_size=3000))


def check_chunking(spec: tuple[Any, ...]) -> None:
    arg, sizes, data = spec
    try:
        parsed = _chunk_sizes(arg)
        if parsed is not None:
            validate_chunk_sizes(*parsed)
    except (click.BadParameter, CvmfsError):
        pass
    try:
        pieces = list(cut_points(io.BytesIO(data), *sizes))
    except CvmfsError:
        return
    # A valid configuration: the pieces tile the file, none longer than the maximum.
    pos = 0
    for offset, size in pieces:
        assert offset == pos and size <= sizes[2]
        pos += size
    assert pos == len(data)


PROPERTIES: dict[str, Property] = {"chunking.args+cut_points": (chunk_input, check_chunking)}


@FUZZ
@given(chunk_input)
def test_chunking(spec: tuple[Any, ...]) -> None:
    check_chunking(spec)
