"""cvmfs-proxy in a proxy hierarchy with a real Squid 5, in both directions."""

from __future__ import annotations

from tests.proxy.test_proxy_nginx import read_all


def test_real_squid_as_parent_of_cvmfs_proxy(real_fixtures, tmp_path, nginx_server, proxy, squid):
    server = nginx_server(real_fixtures)
    parent = squid()
    p = proxy("--parent", parent.url)
    read_all(real_fixtures, server.server_url, p.url, tmp_path / "c1")
    upstream = p.stats()["upstream_requests"]
    squid_lines = [line for line in parent.wait_for_access_lines(upstream + 1) if " GET " in line]
    assert len(squid_lines) == upstream == len(server.wait_for_requests(upstream))
    assert all(" GET http://127.0.0.1:" in line and "HIER_DIRECT/127.0.0.1" in line for line in squid_lines)
    ours = [line for line in p.access_lines() if "TCP_MISS/200" in line]
    assert ours and all("FIRSTUP_PARENT/127.0.0.1" in line for line in ours)

    read_all(real_fixtures, server.server_url, p.url, tmp_path / "c2")  # served by cvmfs-proxy itself
    again = p.stats()["upstream_requests"] - upstream
    assert again == 4  # only the revalidated manifests and whitelists
    # Our no-cache reached Squid, which went to the origin too instead of answering from its cache.
    assert len(server.wait_for_requests(upstream + again)) == upstream + again


def test_real_squid_uses_cvmfs_proxy_as_parent(real_fixtures, tmp_path, nginx_server, proxy, squid):
    server = nginx_server(real_fixtures)
    p = proxy()
    child = squid(parent=("127.0.0.1", p.port))
    read_all(real_fixtures, server.server_url, child.url, tmp_path / "c1")
    stats = p.stats()
    assert stats["upstream_requests"] == len(server.wait_for_requests(1)) > 0
    assert stats["requests"] >= stats["upstream_requests"]
    lines = child.wait_for_access_lines(stats["requests"])
    assert any(
        "FIRST_PARENT_MISS/127.0.0.1" in line or "FIRSTUP_PARENT/127.0.0.1" in line for line in lines
    ), lines[:3]
    ours = [line for line in p.access_lines() if "GET http://" in line]
    assert ours and all("/cvmfs/" in line for line in ours)
