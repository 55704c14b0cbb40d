"""Geo API request names and reply validation (spec 1.4), without a server."""

from __future__ import annotations

import pytest

from cvmfs_client.errors import FormatError
from cvmfs_client.geoapi import PROXY_SEPARATOR, apply_geo_order, geo_query, host_name, parse_geo_reply


def test_host_name_strips_scheme_port_and_path():
    assert host_name("http://cvmfs.example.org:8000/cvmfs/x.org") == "cvmfs.example.org"
    assert host_name("http://[2001:db8::1]:3128") == "[2001:db8::1]"


def test_nothing_to_sort_with_one_server_and_at_most_one_fallback_group():
    assert geo_query(["http://a/cvmfs/r"], [["http://f:3128"]], True) is None


def test_query_sends_sorted_server_names_and_maps_the_answer_back():
    servers = ["http://s2.org/cvmfs/r", "http://s1.org/cvmfs/r", "http://s3.org:8000/cvmfs/r"]
    query = geo_query(servers, [], True)
    assert query is not None
    assert query.names == ("s1.org", "s2.org", "s3.org")
    assert query.path("squid.site.org") == "api/v1.0/geo/squid.site.org/s1.org,s2.org,s3.org"
    # nearest first: s3, s1, s2
    hosts, fallback = apply_geo_order(query, parse_geo_reply(b"3,1,2\n", 3, "geo"))
    assert [servers[i] for i in hosts] == [servers[2], servers[1], servers[0]]
    assert fallback == []


def test_fallback_proxies_are_sorted_too_and_separated_without_regular_proxies():
    servers = ["http://a.org/cvmfs/r", "http://b.org/cvmfs/r"]
    fallback = [["http://f1.org:3128", "http://f1b.org:3128"], ["http://f2.org:3128"]]
    query = geo_query(servers, fallback, False)
    assert query is not None
    assert query.names == ("a.org", "b.org", PROXY_SEPARATOR, "f1.org", "f2.org")
    # service answer: hosts b, a; proxies f2, f1; then the separator's own index last
    hosts, fb = apply_geo_order(query, parse_geo_reply(b"2,1,5,4,3\n", 5, "geo"))
    assert hosts == [1, 0]
    assert fb == [1, 0]


def test_no_separator_when_regular_proxies_exist():
    query = geo_query(["http://a.org/r", "http://b.org/r"], [["http://f.org"]], True)
    assert query is not None
    assert PROXY_SEPARATOR not in query.names


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"1,2",
        b"1,2,3,4",
        b"1,,3",
        b"1,2,2",
        b"0,1,2",
        b"2,3,4",
        b"1;2;3",
        b"1, 2, 3",
        b"-1,2,3",
        b"\xff",
    ],
)
def test_malformed_replies_are_refused(body):
    with pytest.raises(FormatError):
        parse_geo_reply(body, 3, "geo")


def test_reply_without_newline_is_accepted():
    assert parse_geo_reply(b"2,3,1", 3, "geo") == [1, 2, 0]
