"""Parrot's repository list syntax (cctools pfs_service_cvmfs.cc) translated to CVMFS_* settings."""

from __future__ import annotations

import pytest

from cvmfs_client.errors import ConfigError
from interposer.parrot import ParrotConfig, parse
from tests.interposer.conftest import cvmfs_run
from tests.interposer.trees import FQRN, MOUNT


def test_plain_entry_maps_libcvmfs_options():
    cfg = ParrotConfig(
        "cms.cern.ch:pubkey=/keys/cern.ch.pub,url=http://s1.example.org/cvmfs/cms.cern.ch,proxies=http://p:3128",
        {},
    )
    assert cfg.params_for("cms.cern.ch") == {
        "CVMFS_PUBLIC_KEY": "/keys/cern.ch.pub",
        "CVMFS_SERVER_URL": "http://s1.example.org/cvmfs/cms.cern.ch",
        "CVMFS_HTTP_PROXY": "http://p:3128",
    }
    assert cfg.params_for("atlas.cern.ch") is None
    assert cfg.names() == ["cms.cern.ch"]


def test_wildcard_substitutes_the_matched_prefix_everywhere():
    cfg = ParrotConfig("*.cern.ch:pubkey=/k.pub,url=http://a/opt/*;http://b/cvmfs/*.cern.ch", {})
    p = cfg.params_for("atlas.cern.ch")
    assert p is not None
    assert p["CVMFS_SERVER_URL"] == "http://a/opt/atlas;http://b/cvmfs/atlas.cern.ch"
    assert cfg.params_for("cern.ch") is None  # '*' matches one or more characters
    assert cfg.names() == []


def test_later_entries_win_and_escapes_are_literal():
    cfg = ParrotConfig(r"*.org:url=http://generic/* sw.example.org:url=http://special/x\ y\*", {})
    assert cfg.params_for("sw.example.org") == {"CVMFS_SERVER_URL": "http://special/x y*"}
    assert cfg.params_for("other.example.org") == {"CVMFS_SERVER_URL": "http://generic/other.example"}


def test_http_proxy_environment_is_the_default_proxy():
    cfg = ParrotConfig("a.example.org:url=http://s/a", {"HTTP_PROXY": "http://squid:3128"})
    assert cfg.params_for("a.example.org")["CVMFS_HTTP_PROXY"] == "http://squid:3128"  # type: ignore[index]


def test_default_repositories_use_our_configuration_plus_given_options():
    cfg = ParrotConfig("<default-repositories>:proxies=http://site:3128 my.example.org:url=http://m/my", {})
    assert cfg.params_for("atlas.cern.ch") == {"CVMFS_HTTP_PROXY": "http://site:3128"}
    assert cfg.params_for("oasis.opensciencegrid.org") == {"CVMFS_HTTP_PROXY": "http://site:3128"}
    assert cfg.params_for("my.example.org") == {"CVMFS_SERVER_URL": "http://m/my"}
    assert [e.name for e in parse("<default-repositories>")] == [".opensciencegrid.org", ".cern.ch", ""]


def test_weakening_verification_is_refused_and_missing_url_is_an_error():
    with pytest.raises(ConfigError, match="refused"):
        ParrotConfig("a.example.org:url=http://s/a,ignore_signature", {}).params_for("a.example.org")
    with pytest.raises(ConfigError, match="no url="):
        ParrotConfig("a.example.org:pubkey=/k", {}).params_for("a.example.org")


def test_run_with_parrot_option_only(job_env):
    env = {k: v for k, v in job_env.items() if k not in ("CVMFS_SERVER_URL", "CVMFS_REPOSITORIES")}
    server = job_env["CVMFS_SERVER_URL"].replace("@fqrn@", "*")
    spec = f"*.example.org:url={server}.example.org"
    r = cvmfs_run(["sh", "-c", f"ls /cvmfs; cat {MOUNT}/README.txt"], env, options=["-r", spec])
    assert r.returncode == 0, r.stderr.decode()
    assert b"Example software tree" in r.stdout
    env["PARROT_CVMFS_REPO"] = f"{FQRN}:url={job_env['CVMFS_SERVER_URL'].replace('@fqrn@', FQRN)}"
    r = cvmfs_run(["sh", "-c", "ls /cvmfs; ls /cvmfs/tools.example.org"], env)
    assert r.stdout.decode().split() == [FQRN]
    assert r.returncode != 0  # not in the Parrot list: cannot be mounted
