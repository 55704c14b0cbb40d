"""Fixtures for cvmfs-proxy tests: real proxy, Squid and nginx processes, stopped at teardown."""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import nginx_server  # noqa: F401  (re-exported fixture)
from tests.integration.nginx import NginxServer
from tests.proxy.procs import ProxyProcess, SquidProcess, start_proxy, start_slow_nginx, start_squid


@pytest.fixture
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ProxyProcess]]:
    """Factory: ``proxy(*args, cache_dir=None)`` starts a cvmfs-proxy with extra CLI args."""
    started: list[ProxyProcess] = []

    def start(*args: str, cache_dir: Path | None = None) -> ProxyProcess:
        p = start_proxy(tmp_path_factory.mktemp("proxy"), *args, cache_dir=cache_dir)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def squid() -> Iterator[Callable[..., SquidProcess]]:
    started: list[SquidProcess] = []

    def start(parent: tuple[str, int] | None = None) -> SquidProcess:
        try:
            s = start_squid(parent)
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def slow_nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., NginxServer]]:
    started: list[NginxServer] = []

    def start(root: Path, rate: str = "50m") -> NginxServer:
        s = start_slow_nginx(root, tmp_path_factory.mktemp("slow-nginx"), rate)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def get(
    proxy_port: int, url: str, headers: dict[str, str] | None = None, method: str = "GET", timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """One request through a proxy: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=timeout)
    try:
        conn.request(method, url, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()
