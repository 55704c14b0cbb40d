"""Fixtures for integration tests against real servers (nginx as a Stratum 1)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.nginx import NginxError, NginxServer, start_nginx


@pytest.fixture
def nginx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., NginxServer]]:
    """Factory: ``nginx_server(root)`` starts nginx serving ``root/<fqrn>/`` as ``/cvmfs/<fqrn>/``.

    Every server started is stopped at teardown. A missing or failing nginx fails the test with
    the reason (never skips), since a skipped integration suite looks like a passing one.
    """
    servers: list[NginxServer] = []

    def start(root: Path, *, workers: int = 1) -> NginxServer:
        try:
            server = start_nginx(root, tmp_path_factory.mktemp("nginx"), workers=workers)
        except NginxError as exc:
            pytest.fail(str(exc), pytrace=False)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
