"""cvmfs-proxy against a real Squid 5, in one run, same nginx origin, same warm object set.

Usage (from the repository root; needs nginx, squid and wrk: ``apt-get install nginx-light
squid wrk``)::

    python bench/proxy.py [--seconds 10] [--small 1000] [--large 4]

What is measured, for each proxy:

1. **small**: requests/s for 4 KiB content objects, 64 concurrent keep-alive clients (wrk,
   2 threads), cycling through ``--small`` distinct objects, all warm in the proxy's cache.
2. **large**: MB/s for 50 MiB content objects, 8 concurrent keep-alive clients (wrk), cycling
   through ``--large`` objects, all warm.
3. **collapse**: upstream requests (counted in the origin's access log) for 100 concurrent
   misses of one 50 MiB object from an origin limited to 100 MB/s, so that all 100 requests
   certainly arrive while the first download runs; every client must get the whole object.

How Squid is configured (as a CVMFS site proxy, the way the CVMFS documentation and
frontier-squid set one up; see ``squid_config`` in tests/proxy/procs.py for the exact file):
``cache_mem 256 MB``, ``maximum_object_size_in_memory 128 KB`` (small hot objects in memory),
``cache_dir ufs ... 4000 MB``, ``maximum_object_size 1 GB`` (large objects on disk),
``collapsed_forwarding on``, ``negative_ttl 0``, no ICP/HTCP/pinger, native access log. It
runs as ``squid -N`` (one worker, as sites run it); as root it switches to the ``proxy`` user.
cvmfs-proxy runs with its defaults (256 MiB memory tier for objects up to 1 MiB, sendfile for
disk hits) and its access log on, as Squid's.

Both proxies run on the same machine as wrk and nginx; ratios are cvmfs-proxy / Squid.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.nginx import NginxServer, start_nginx  # noqa: E402
from tests.proxy.procs import ProxyProcess, SquidProcess, start_proxy, start_slow_nginx, start_squid  # noqa: E402

FQRN = "bench.example.org"
SMALL = 4096
LARGE = 50 << 20
COLLAPSE_CLIENTS = 100

WRK_SCRIPT = """
local urls = {}
for line in io.lines(os.getenv("BENCH_URLS")) do urls[#urls + 1] = line end
local i = math.random(#urls)
request = function()
  i = i % #urls + 1
  return wrk.format("GET", urls[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d bytes=%d duration_us=%d errors=%d\\n", summary.requests,
    summary.bytes, summary.duration, e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def put_object(root: Path, data: bytes) -> str:
    """Store ``data`` as a content object named by its SHA-1; return its URL path."""
    h = hashlib.sha1(data).hexdigest()
    path = root / FQRN / "data" / h[:2] / h[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"/cvmfs/{FQRN}/data/{h[:2]}/{h[2:]}"


def warm(proxy_url: str, urls: list[str], rounds: int = 2) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy_url}))
    for _ in range(rounds):
        for url in urls:
            with opener.open(url, timeout=60) as resp:
                while resp.read(1 << 20):
                    pass


def wrk(proxy_url: str, urls: list[str], connections: int, seconds: int, workdir: Path) -> dict[str, float]:
    url_file = workdir / f"urls-{len(urls)}.txt"
    url_file.write_text("\n".join(urls) + "\n")
    script = workdir / "bench.lua"
    script.write_text(WRK_SCRIPT)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script), proxy_url],
        env={**os.environ, "BENCH_URLS": str(url_file)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"BENCH requests=(\d+) bytes=(\d+) duration_us=(\d+) errors=(\d+)", out)
    if not m:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    requests, size, duration_us, errors = (int(g) for g in m.groups())
    seconds_run = duration_us / 1e6
    return {"rps": requests / seconds_run, "mbps": size / seconds_run / 1e6, "errors": errors}


def collapse(proxy_port: int, url: str, expected_sha1: bytes) -> int:
    """100 concurrent GETs of ``url``; returns how many clients got the exact object."""
    ok: list[bool] = []
    barrier = threading.Barrier(COLLAPSE_CLIENTS)

    def one() -> None:
        good = False
        try:
            with socket.create_connection(("127.0.0.1", proxy_port), timeout=120) as s:
                barrier.wait()
                s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                buf = bytearray()
                while chunk := s.recv(1 << 20):
                    buf += chunk
                _, _, body = bytes(buf).partition(b"\r\n\r\n")
                good = hashlib.sha1(body).digest() == expected_sha1
        finally:
            ok.append(good)

    threads = [threading.Thread(target=one) for _ in range(COLLAPSE_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(ok)


def upstream_count(server: NginxServer, path: str) -> int:
    time.sleep(0.5)  # nginx logs after the response went out
    return sum(path in line for line in server.access_lines())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--small", type=int, default=1000, help="number of distinct 4 KiB objects")
    ap.add_argument("--large", type=int, default=4, help="number of distinct 50 MiB objects")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    origin = work / "origin"
    small = [put_object(origin, os.urandom(SMALL)) for _ in range(args.small)]
    large = [put_object(origin, os.urandom(LARGE)) for _ in range(args.large)]
    miss_data = {name: os.urandom(LARGE) for name in ("cvmfs-proxy", "squid")}
    miss = {name: put_object(origin, data) for name, data in miss_data.items()}

    nginx = start_nginx(origin, work / "nginx", workers=2)
    slow = start_slow_nginx(origin, work / "slow-nginx", rate="100m")
    ours: ProxyProcess | None = None
    squid: SquidProcess | None = None
    results: dict[str, dict[str, float]] = {}
    try:
        ours = start_proxy(work / "cvmfs-proxy")
        squid = start_squid()
        proxies = {"cvmfs-proxy": ours.url, "squid": squid.url}
        small_urls = [nginx.url + p for p in small]
        large_urls = [nginx.url + p for p in large]
        for url in proxies.values():
            warm(url, small_urls + large_urls)
        for name, url in proxies.items():
            r = results.setdefault(name, {})
            s = wrk(url, small_urls, 64, args.seconds, work)
            r["small_rps"], r["small_errors"] = s["rps"], s["errors"]
            big = wrk(url, large_urls, 8, args.seconds, work)
            r["large_mbps"], r["large_errors"] = big["mbps"], big["errors"]
            port = int(url.rsplit(":", 1)[1])
            r["collapse_ok"] = collapse(port, slow.url + miss[name], hashlib.sha1(miss_data[name]).digest())
            r["collapse_upstream"] = upstream_count(slow, miss[name])
    finally:
        for p in (ours, squid):
            if p is not None:
                p.stop()
        nginx.stop()
        slow.stop()
        shutil.rmtree(work, ignore_errors=True)

    a, b = results["cvmfs-proxy"], results["squid"]
    print(f"{'':34}{'cvmfs-proxy':>14}{'squid 5.7':>14}{'ratio':>9}{'target':>10}")
    print(
        f"{'4 KiB hits, 64 clients (req/s)':34}{a['small_rps']:14.0f}{b['small_rps']:14.0f}"
        f"{a['small_rps'] / b['small_rps']:9.2f}{'>= 0.7':>10}"
    )
    print(
        f"{'50 MiB hits, 8 clients (MB/s)':34}{a['large_mbps']:14.0f}{b['large_mbps']:14.0f}"
        f"{a['large_mbps'] / b['large_mbps']:9.2f}{'>= 1.0':>10}"
    )
    print(
        f"{'100 misses of one object: upstream':34}{a['collapse_upstream']:14d}{b['collapse_upstream']:14d}"
        f"{'':9}{'1':>10}"
    )
    print(f"{'  ... clients with correct bytes':34}{a['collapse_ok']:14d}{b['collapse_ok']:14d}")
    errors = a["small_errors"] + a["large_errors"] + b["small_errors"] + b["large_errors"]
    print(f"wrk errors: {errors:.0f}")


if __name__ == "__main__":
    main()
