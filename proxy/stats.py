"""Counters and the Squid-format access log line.

Counters are plain integer attributes of one :class:`Stats` object owned by the server (no
module-level state): incrementing an attribute is the cheapest thing the hot path can do.
``snapshot()`` is what ``GET /cvmfs-proxy/stats`` returns and what SIGUSR1 writes to the log.

The access log uses Squid's native format (``logformat squid``), so the tools sites already
run on Squid logs (awstats, calamaris, frontier-squid's own scripts) read ours unchanged::

    %ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt
    time.ms elapsed-ms client code/status bytes method URL user hierarchy/peer content-type
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields


@dataclass
class Stats:
    """Monotonic counters since start-up; gauges are filled in by the server at snapshot time."""

    requests: int = 0  # every request answered, including errors and denials
    hits: int = 0  # answered from the cache (memory or disk)
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0  # needed the upstream (incl. collapsed followers and revalidations)
    collapsed: int = 0  # misses that joined a download already in progress
    revalidations: int = 0  # client no-cache or stale mutable entry
    upstream_requests: int = 0
    upstream_errors: int = 0  # connect/timeout/protocol failures and truncated bodies
    hash_mismatches: int = 0  # immutable objects whose bytes did not match their name
    denied: int = 0
    bad_requests: int = 0
    client_timeouts: int = 0
    bytes_to_clients: int = 0  # response bodies sent (heads not counted)
    bytes_from_upstream: int = 0
    stored_objects: int = 0
    started: float = field(default_factory=time.time)

    def snapshot(self, **gauges: float | int) -> dict[str, float | int]:
        out: dict[str, float | int] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["uptime"] = round(time.time() - self.started, 3)
        out.update(gauges)
        return out


def squid_log_line(
    *,
    start: float,
    end: float,
    client: str,
    code: str,
    status: int,
    size: int,
    method: str,
    url: str,
    hierarchy: str,
    peer: str,
    content_type: str,
) -> str:
    """One access log line in Squid's native format (``logformat squid``), with newline."""
    elapsed_ms = int((end - start) * 1000)
    return (
        f"{end:.3f} {elapsed_ms:6d} {client} {code}/{status:03d} {size} {method} "
        f"{_field(url)} - {hierarchy}/{peer or '-'} {_field(content_type) or '-'}\n"
    )


def _field(value: str) -> str:
    """Squid escapes whitespace in logged fields so every line splits into the same columns."""
    if not value:
        return ""
    return value.replace("%", "%25").replace(" ", "%20").replace("\t", "%09").replace("\n", "%0A")
