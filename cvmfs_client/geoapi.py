"""The Geo API of Stratum 1 servers (spec 1.4): request names and reply validation, no I/O.

A client asks one of its servers ``<base>/api/v1.0/geo/<proxy-name>/<n1>,<n2>,...`` and gets the
1-based indices of those names, nearest first. The names are the servers' host names followed
by the first member of each fallback proxy group (so fallback proxies get sorted too); when the
client has no regular proxy, ``+PXYSEP+`` between them asks the service to sort the servers by
distance from the nearest fallback proxy instead of from the client.

The host names are sent in sorted order (as the real client does, ``SortTeam``): clients that
list the same servers in a different order then send the same URL, which a proxy can answer
from its cache for an hour.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import FormatError

GEO_PATH = "api/v1.0/geo"
PROXY_SEPARATOR = "+PXYSEP+"
MAX_SERVERS_ASKED = 3  # spec 1.4: at most 3 different random servers are asked
MAX_REPLY = 4096  # a reply is a short list of small numbers


def host_name(url: str) -> str:
    """The host part of a server or proxy URL (no scheme, port or path); IPv6 keeps its brackets."""
    host = urllib.parse.urlsplit(url).hostname or ""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class GeoQuery:
    """The names to sort and how to map the answer back.

    ``host_slots[k]`` is the index in the client's server list of the k-th name;
    the fallback group names follow from ``first_fallback`` on.
    """

    names: tuple[str, ...]
    host_slots: tuple[int, ...]
    first_fallback: int

    def path(self, proxy_name: str) -> str:
        """Request path relative to a server's base URL."""
        return f"{GEO_PATH}/{proxy_name}/{','.join(self.names)}"


def geo_query(
    servers: Sequence[str], fallback_groups: Sequence[Sequence[str]], has_regular_proxies: bool
) -> GeoQuery | None:
    """The query to send, or ``None`` when there is nothing to sort (spec 1.4)."""
    if len(servers) < 2 and len(fallback_groups) < 2:
        return None
    slots = sorted(range(len(servers)), key=lambda i: host_name(servers[i]))
    names = [host_name(servers[i]) for i in slots]
    if not has_regular_proxies and len(servers) > 1 and fallback_groups:
        names.append(PROXY_SEPARATOR)
    first_fallback = len(names)
    names.extend(host_name(group[0]) for group in fallback_groups)
    return GeoQuery(tuple(names), tuple(slots), first_fallback)


def parse_geo_reply(body: bytes, expected: int, source: str) -> list[int]:
    """0-based order from a reply such as ``b"2,3,1\\n"``, validated as the real client does.

    Only digits, commas and newlines; no empty field; exactly ``expected`` numbers forming a
    permutation of 1..expected. Anything else is refused as a whole (a partial order could
    drop a server).
    """
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(source, "Geo API reply is not ASCII") from None
    if not text or any(c not in "0123456789,\n" for c in text):
        raise FormatError(source, f"Geo API reply has unexpected characters: {text[:80]!r}")
    fields = text.replace("\n", "").split(",")
    if any(not f for f in fields):
        raise FormatError(source, f"Geo API reply has an empty field: {text[:80]!r}")
    # No index can have more digits than ``expected``; checked before int(), which raises
    # ValueError beyond 4300 digits.
    if any(len(f.lstrip("0")) > len(str(expected)) for f in fields):
        raise FormatError(source, f"Geo API reply has an index out of range: {text[:80]!r}")
    values = [int(f) for f in fields]
    if len(values) != expected:
        raise FormatError(source, f"Geo API reply has {len(values)} entries, expected {expected}")
    if sorted(values) != list(range(1, expected + 1)):
        raise FormatError(source, f"Geo API reply is not a permutation of 1..{expected}: {text[:80]!r}")
    return [v - 1 for v in values]


def apply_geo_order(query: GeoQuery, order: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(server order, fallback group order)`` from a validated 0-based reply.

    Server order lists indices into the client's server list; fallback order indices among the
    fallback groups. The separator, if any, is skipped.
    """
    n_hosts = len(query.host_slots)
    hosts = [query.host_slots[v] for v in order if v < n_hosts]
    fallback = [v - query.first_fallback for v in order if v >= query.first_fallback]
    return hosts, fallback
