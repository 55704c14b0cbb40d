"""The nginx harness serves repositories like a Stratum 1: right bytes, right cache headers, logged."""

from __future__ import annotations

import os
from pathlib import Path

import requests

from tests.integration.nginx import DATA_MAX_AGE, MANIFEST_MAX_AGE, render_config

FQRN = "tools.example.org"


def _some_object(repo: Path) -> Path:
    return next(p for p in sorted((repo / "data").rglob("*")) if p.is_file())


def test_serves_real_repository_with_stratum1_headers(nginx_server, real_fixtures: Path) -> None:
    server = nginx_server(real_fixtures)
    repo = real_fixtures / FQRN
    with requests.Session() as http:
        manifest = http.get(f"{server.repo_url(FQRN)}/.cvmfspublished", timeout=10)
        assert manifest.status_code == 200
        assert manifest.content == (repo / ".cvmfspublished").read_bytes()
        assert manifest.headers["Cache-Control"] == f"max-age={MANIFEST_MAX_AGE}"

        whitelist = http.get(f"{server.repo_url(FQRN)}/.cvmfswhitelist", timeout=10)
        assert whitelist.content == (repo / ".cvmfswhitelist").read_bytes()
        assert whitelist.headers["Cache-Control"] == f"max-age={MANIFEST_MAX_AGE}"

        obj = _some_object(repo)
        data = http.get(f"{server.repo_url(FQRN)}/{obj.relative_to(repo).as_posix()}", timeout=10)
        assert data.status_code == 200
        assert data.content == obj.read_bytes()
        assert data.headers["Cache-Control"] == f"max-age={DATA_MAX_AGE}"

        missing = http.get(f"{server.repo_url(FQRN)}/data/00/doesnotexist", timeout=10)
        assert missing.status_code == 404

    lines = server.wait_for_requests(4)
    assert len(lines) == 4
    assert '"GET /cvmfs/tools.example.org/.cvmfspublished HTTP/1.1" 200' in lines[0]
    assert " 404 " in lines[3]
    assert server.server_url.replace("@fqrn@", FQRN) == server.repo_url(FQRN)


def test_stop_frees_port_and_is_idempotent(nginx_server, real_fixtures: Path) -> None:
    server = nginx_server(real_fixtures)
    assert server.running()
    server.stop()
    server.stop()
    assert not server.running()
    try:
        requests.get(f"{server.url}/cvmfs/{FQRN}/.cvmfspublished", timeout=2)
    except requests.ConnectionError:
        pass
    else:
        raise AssertionError("nginx still answers after stop()")


def test_two_servers_and_awkward_paths(nginx_server, tmp_path: Path) -> None:
    """Paths with spaces and quotes must not break the generated config; servers are independent."""
    root = tmp_path / 'served "dir" with; spaces'
    (root / "a.example.org").mkdir(parents=True)
    (root / "a.example.org" / ".cvmfspublished").write_bytes(b"Cabc\n")
    (root / "a.example.org" / "file name.txt").write_bytes(b"x" * 1000)
    one = nginx_server(root)
    two = nginx_server(root)
    assert one.port != two.port
    got = requests.get(f"{one.repo_url('a.example.org')}/file%20name.txt", timeout=10)
    assert got.content == b"x" * 1000
    got = requests.get(f"{two.repo_url('a.example.org')}/.cvmfspublished", timeout=10)
    assert got.content == b"Cabc\n"
    assert len(one.wait_for_requests(1)) == 1
    assert len(two.wait_for_requests(1)) == 1


def test_config_runs_workers_as_root_only_when_root(tmp_path: Path) -> None:
    conf = render_config(tmp_path, tmp_path / "prefix", 8080)
    assert ("user root" in conf) == (os.geteuid() == 0)
    assert "daemon off;" in conf
