"""Fuzz Geo API reply parsing (``parse_geo_reply``) and mapping the order back (``apply_geo_order``)."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from cvmfs_client.errors import CvmfsError
from cvmfs_client.geoapi import apply_geo_order, geo_query, parse_geo_reply

from .common import FUZZ, Property

reply = st.one_of(
    st.binary(max_size=60),
    st.text("0123456789,\n", max_size=60).map(str.encode),
    st.permutations(list(range(1, 6))).map(lambda p: ",".join(map(str, p)).encode() + b"\n"),
    st.text("0123456789", min_size=4290, max_size=4400).map(str.encode),
)
servers = st.lists(
    st.sampled_from(["http://a.org/cvmfs/@fqrn@", "http://[::1]:80/x", "http://b.net", "bad"]), max_size=4
)
geo_input = st.tuples(
    reply, servers, st.lists(st.lists(st.just("http://p:3128"), min_size=1), max_size=3), st.booleans()
)


def check_geo(spec: tuple[Any, ...]) -> None:
    body, srv, fallback, has_proxies = spec
    query = geo_query(srv, fallback, has_proxies)
    n = len(query.names) if query is not None else 3
    try:
        order = parse_geo_reply(body, n, "fuzz")
    except CvmfsError:
        return
    assert sorted(order) == list(range(n))
    if query is not None:
        hosts, groups = apply_geo_order(query, order)
        assert sorted(hosts) == list(range(len(srv)))
        assert sorted(groups) == list(range(len(fallback)))


PROPERTIES: dict[str, Property] = {"geoapi.parse_geo_reply": (geo_input, check_geo)}


@FUZZ
@given(geo_input)
# Regression: a field of more than 4300 digits made int() raise ValueError.
@example((b"1" * 4301, [], [], False))
def test_geo_reply(spec: tuple[Any, ...]) -> None:
    check_geo(spec)
