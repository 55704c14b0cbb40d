"""Settings, config files and the access policy of cvmfs-proxy."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.cli import main
from proxy.config import ConfigError, build_config, load_config_file, parse_listen, parse_size
from proxy.http import parse_target


def test_sizes_and_listen_addresses():
    assert parse_size("10G") == 10 << 30 and parse_size("512m") == 512 << 20 and parse_size("4096") == 4096
    assert parse_size("1.5KiB") == 1536
    with pytest.raises(ConfigError):
        parse_size("lots")
    assert parse_listen("0.0.0.0:3128") == ("0.0.0.0", 3128)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    assert parse_listen("3129") == ("127.0.0.1", 3129)
    with pytest.raises(ConfigError):
        parse_listen("localhost")


def test_defaults_make_a_working_local_proxy(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    c = build_config()
    assert (c.listen_host, c.listen_port, c.cache_size) == ("127.0.0.1", 3128, 10 << 30)
    assert c.cache_dir == tmp_path / "cvmfs-proxy"
    assert c.policy.client_allowed("127.0.0.1") and c.policy.client_allowed("::1")
    assert not c.policy.client_allowed("10.1.2.3")


def test_policy_limits_clients_upstreams_and_paths():
    c = build_config(allow_client=["10.0.0.0/8"], allow_upstream=["*.cern.ch", "s1.example.org:8000"])
    assert c.policy.client_allowed("10.2.3.4") and c.policy.client_allowed("::ffff:10.2.3.4")
    assert not c.policy.client_allowed("127.0.0.1")
    assert c.policy.upstream_denied(parse_target("http://cvmfs-stratum-one.cern.ch/cvmfs/a/x")) is None
    assert c.policy.upstream_denied(parse_target("http://s1.example.org:8000/cvmfs/a/x")) is None
    assert c.policy.upstream_denied(parse_target("http://s1.example.org/cvmfs/a/x"))
    assert c.policy.upstream_denied(parse_target("http://evil.org/cvmfs/a/x"))
    assert c.policy.upstream_denied(parse_target("http://x.cern.ch/etc/passwd"))


def test_toml_config_file(tmp_path):
    f = tmp_path / "proxy.toml"
    f.write_text(
        'listen = "0.0.0.0:3130"\ncache-size = "1G"\nallow-client = ["10.0.0.0/8"]\nparent = "squid:3128"\n'
    )
    values = load_config_file(f)
    c = build_config(**values)
    assert c.listen_port == 3130 and c.cache_size == 1 << 30 and c.parent == ("squid", 3128)
    f.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config_file(f)


def test_cli_reports_bad_settings_in_one_line(tmp_path):
    r = CliRunner().invoke(main, ["--cache-size", "huge", "--cache-dir", str(tmp_path)])
    assert r.exit_code == 2 and "cache-size" in r.output
    bad = Path(tmp_path / "bad.toml")
    bad.write_text("listen = [1, 2]\n")
    r = CliRunner().invoke(main, ["--config", str(bad)])
    assert r.exit_code == 2 and "listen" in r.output
