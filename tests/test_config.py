"""Configuration layering, provenance, typed access, shipped domain configuration and keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cvmfs_client.config import (
    BUILTIN,
    COMMAND_LINE,
    ENVIRONMENT,
    PARAMETERS,
    SHIPPED_DIR,
    SUPPORTED,
    load_configuration,
    parameter_table_markdown,
    parse_repository_list,
    render_configuration,
    repository_domain,
    settings_for,
    shipped_domains,
)
from cvmfs_client.config_parser import interpret
from cvmfs_client.errors import ConfigError
from cvmfs_client.keys import load_master_keys, load_public_key

FQRN = "sw.example.org"
URL = "CVMFS_SERVER_URL=http://s1.example.org/cvmfs/@fqrn@\n"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

# The real master keys (github.com/cvmfs/cvmfs mount/keys, github.com/cvmfs-contrib/config-repo
# etc/cvmfs/keys): pinned so that an accidental edit of package data cannot go unnoticed.
KEY_SHA256 = {
    "cern.ch/cern-it1.cern.ch.pub": "a442363ae4f64227b77f97abaaf05d37483a45ea839be08320c1e723b22dafc0",
    "cern.ch/cern-it4.cern.ch.pub": "72038bd29142a1be71de7c5493468328c1659a371570e0e06c4c8a23f0305e3c",
    "cern.ch/cern-it5.cern.ch.pub": "1d2f063c6feab52fc05ccabaf9bd2c95f758d2b696a8b1b3d0e05d6debee600b",
    "cern.ch/cern.ch.pub": "42ed9b686c597fe505e02b55b6e7e6aaa7c297e56dd41e3432037c3ffe017f95",
    "egi.eu/egi.eu.pub": "1214f2edad83e8547fb6619bdbedc4bf0bb10b3a1f4ca0e6c2dd33482249b4d8",
    "opensciencegrid.org/opensciencegrid.org.pub": (
        "9da621d08f673c06000affdb8b8fa76cddc7b1d8716bf5b077a02926dc442c6b"
    ),
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def layered_dir(root: Path) -> Path:
    """A configuration directory with every layer, each setting LAYER and a parameter of its own."""
    files = {
        "default.conf": "CVMFS_LAYER=default.conf\nCVMFS_A=default.conf\n",
        "default.d/20-b.conf": "CVMFS_LAYER=default.d/20\nCVMFS_D20=yes\n",
        "default.d/10-a.conf": "CVMFS_LAYER=default.d/10\nCVMFS_D10=yes\nCVMFS_D20=no\n",
        "default.d/README": "this is not read\n",
        "default.local": "# site\nCVMFS_LAYER=default.local\n",
        "domain.d/example.org.conf": URL + "CVMFS_LAYER=domain.conf\n",
        "domain.d/example.org.local": "CVMFS_LAYER=domain.local\n",
        f"config.d/{FQRN}.conf": "CVMFS_LAYER=config.conf\n",
        f"config.d/{FQRN}.local": "\nCVMFS_LAYER=config.local\n",
        "domain.d/other.org.conf": "CVMFS_LAYER=wrong-domain\n",
    }
    for name, text in files.items():
        write(root / name, text)
    return root


def test_layers_apply_in_the_real_clients_order_with_provenance(tmp_path: Path) -> None:
    d = layered_dir(tmp_path)
    cfg = load_configuration(FQRN, config_dir=d, environ={})
    assert cfg.values["CVMFS_LAYER"] == "config.local"
    assert cfg.origin("CVMFS_LAYER") == f"{d}/config.d/{FQRN}.local:2"
    assert [v for v, _ in cfg.history["CVMFS_LAYER"]] == [
        "default.conf",
        "default.d/10",
        "default.d/20",
        "default.local",
        "domain.conf",
        "domain.local",
        "config.conf",
        "config.local",
    ]
    assert cfg.values["CVMFS_D20"] == "yes"  # 20-b.conf is read after 10-a.conf
    assert cfg.origin("CVMFS_A") == f"{d}/default.conf:2"
    assert cfg.origin("CVMFS_TIMEOUT") == f"{SHIPPED_DIR}/default.conf:14"
    assert cfg.origin("CVMFS_MAX_TTL") == BUILTIN
    assert cfg.origin("CVMFS_NOT_SET") == "unset"
    assert f"{d}/default.d/README" not in cfg.files


def test_without_a_repository_only_default_layers_are_read(tmp_path: Path) -> None:
    cfg = load_configuration(None, config_dir=layered_dir(tmp_path), environ={})
    assert cfg.values["CVMFS_LAYER"] == "default.local"
    assert "CVMFS_SERVER_URL" not in cfg.values


def test_environment_overrides_files_and_command_line_overrides_environment(tmp_path: Path) -> None:
    d = layered_dir(tmp_path)
    env = {"CVMFS_LAYER": "env", "CVMFS_A": "env-a", "OTHER": "not a parameter"}
    cfg = load_configuration(FQRN, config_dir=d, environ=env, overrides={"CVMFS_A": "cli"})
    assert (cfg.values["CVMFS_LAYER"], cfg.origin("CVMFS_LAYER")) == ("env", ENVIRONMENT)
    assert (cfg.values["CVMFS_A"], cfg.origin("CVMFS_A")) == ("cli", COMMAND_LINE)
    assert "OTHER" not in cfg.values


def test_files_see_earlier_layers_and_the_final_environment(tmp_path: Path) -> None:
    write(tmp_path / "default.local", "CVMFS_BASE=/site\n")
    write(
        tmp_path / "domain.d/example.org.conf",
        URL
        + 'CVMFS_X=$CVMFS_BASE/x\nif [ "$CVMFS_MODE" = fast ]; then CVMFS_Y=fast; else CVMFS_Y=slow; fi\n',
    )
    assert load_configuration(FQRN, config_dir=tmp_path, environ={}).values["CVMFS_X"] == "/site/x"
    slow = load_configuration(FQRN, config_dir=tmp_path, environ={})
    fast = load_configuration(FQRN, config_dir=tmp_path, environ={}, overrides={"CVMFS_MODE": "fast"})
    assert (slow.values["CVMFS_Y"], fast.values["CVMFS_Y"]) == ("slow", "fast")


def test_templates_are_applied_after_all_layers(tmp_path: Path) -> None:
    write(tmp_path / "default.local", "CVMFS_SERVER_URL='http://a/cvmfs/@fqrn@;http://b/@org@/x'\n")
    cfg = load_configuration("atlas.example.org", config_dir=tmp_path, environ={"CVMFS_NOTE": "@org@ @x@"})
    assert cfg.values["CVMFS_SERVER_URL"] == "http://a/cvmfs/atlas.example.org;http://b/atlas/x"
    assert cfg.values["CVMFS_NOTE"] == "atlas @x@"
    assert cfg.history["CVMFS_SERVER_URL"][-1][0] == "http://a/cvmfs/@fqrn@;http://b/@org@/x"


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "default.local", "CVMFS_A=1\n# ok\nFOO bar\n")
    with pytest.raises(ConfigError, match=rf"^{bad}:3: unsupported command 'FOO'"):
        load_configuration(None, config_dir=tmp_path, environ={})
    write(tmp_path / "default.local", "CVMFS_A='unterminated\n")
    with pytest.raises(ConfigError, match=rf"^{bad}:1: unterminated single quote"):
        load_configuration(None, config_dir=tmp_path, environ={})


def test_unknown_repository_is_a_one_line_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_configuration("nothing.example.net", config_dir=tmp_path, environ={})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("nothing.example.net: unknown repository: no CVMFS_SERVER_URL")
    assert f"{tmp_path}/config.d/nothing.example.net.conf" in message
    assert "cern.ch" in message


def test_unknown_repository_can_still_be_shown(tmp_path: Path) -> None:
    cfg = load_configuration("nothing.example.net", config_dir=tmp_path, environ={}, require_server=False)
    assert cfg.get("CVMFS_SERVER_URL") is None


@pytest.mark.parametrize("name", ["atlas", "", "a/b.cern.ch", ".cern.ch", "atlas..cern.ch", "x y.org"])
def test_invalid_repository_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid repository name"):
        load_configuration(name, config_dir=tmp_path, environ={})


def test_config_dir_from_environment_and_explicit_missing_dir(tmp_path: Path) -> None:
    write(tmp_path / "default.local", "CVMFS_A=from-env-dir\n")
    cfg = load_configuration(None, environ={"CVMFS_CLIENT_CONFIG_DIR": str(tmp_path)})
    assert cfg.values["CVMFS_A"] == "from-env-dir"
    assert "CVMFS_CLIENT_CONFIG_DIR" not in cfg.values
    with pytest.raises(ConfigError, match="does not exist"):
        load_configuration(None, config_dir=tmp_path / "missing", environ={})


def test_overrides_must_be_parameter_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a parameter"):
        load_configuration(None, config_dir=tmp_path, environ={}, overrides={"BAD NAME": "1"})


@pytest.mark.parametrize(
    ("word", "expected"),
    [("yes", True), ("ON", True), ("1", True), ("True", True)]
    + [("no", False), ("Off", False), ("0", False), ("FALSE", False)],
)
def test_booleans(tmp_path: Path, word: str, expected: bool) -> None:
    cfg = load_configuration(None, config_dir=tmp_path, environ={"CVMFS_FLAG": word})
    assert cfg.get_bool("CVMFS_FLAG") is expected
    assert cfg.get_bool("CVMFS_UNSET_FLAG", default=True) is True


def test_typed_getters_name_parameter_and_source(tmp_path: Path) -> None:
    f = write(tmp_path / "default.local", "CVMFS_FLAG=maybe\nCVMFS_TIMEOUT=soon\nCVMFS_MAX_RETRIES=-1\n")
    cfg = load_configuration(None, config_dir=tmp_path, environ={"CVMFS_QUOTA_LIMIT": "4G"})
    with pytest.raises(ConfigError, match=rf"^CVMFS_FLAG='maybe' \(from {f}:1\): not a boolean"):
        cfg.get_bool("CVMFS_FLAG")
    with pytest.raises(ConfigError, match=rf"^CVMFS_TIMEOUT='soon' \(from {f}:2\): not a number"):
        cfg.get_float("CVMFS_TIMEOUT", 5.0)
    with pytest.raises(ConfigError, match=r"^CVMFS_QUOTA_LIMIT='4G' \(from environment\): not an integer"):
        cfg.get_int("CVMFS_QUOTA_LIMIT", 4000)
    with pytest.raises(ConfigError, match=rf"CVMFS_MAX_RETRIES='-1' \(from {f}:3\): must be at least 0"):
        cfg.get_int("CVMFS_MAX_RETRIES", 1, minimum=0)
    assert cfg.get_int("CVMFS_HOST_RESET_AFTER", 0) == 1800


def test_empty_value_counts_as_unset(tmp_path: Path) -> None:
    cfg = load_configuration(None, config_dir=tmp_path, environ={"CVMFS_ROOT_HASH": ""})
    assert cfg.get("CVMFS_ROOT_HASH") is None
    assert cfg.origin("CVMFS_ROOT_HASH") == ENVIRONMENT


def test_repository_list_parsing() -> None:
    assert parse_repository_list(" atlas, cms.cern.ch ,,sw.example.org,atlas", "cern.ch") == [
        "atlas.cern.ch",
        "cms.cern.ch",
        "sw.example.org",
    ]
    assert parse_repository_list(None) == []
    with pytest.raises(ConfigError, match="CVMFS_DEFAULT_DOMAIN"):
        parse_repository_list("atlas")


def test_repositories_use_the_shipped_default_domain(tmp_path: Path) -> None:
    cfg = load_configuration(
        None, config_dir=tmp_path, environ={"CVMFS_REPOSITORIES": "atlas,oasis.opensciencegrid.org"}
    )
    assert cfg.repositories() == ["atlas.cern.ch", "oasis.opensciencegrid.org"]


def test_strict_mount_refuses_unlisted_repositories(tmp_path: Path) -> None:
    env = {"CVMFS_STRICT_MOUNT": "yes", "CVMFS_REPOSITORIES": "cms"}
    with pytest.raises(ConfigError, match="atlas.cern.ch: not in CVMFS_REPOSITORIES"):
        settings_for("atlas.cern.ch", env, config_dir=tmp_path)
    assert settings_for("cms.cern.ch", env, config_dir=tmp_path).fqrn == "cms.cern.ch"


# --- shipped configuration --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fqrn", "domain", "key_names"),
    [
        ("atlas.cern.ch", "cern.ch", [f"cern-it{i}.cern.ch.pub" for i in (1, 4, 5)] + ["cern.ch.pub"]),
        ("oasis.opensciencegrid.org", "opensciencegrid.org", ["opensciencegrid.org.pub"]),
        ("biomed.egi.eu", "egi.eu", ["egi.eu.pub"]),
    ],
)
def test_shipped_domains_configure_servers_and_real_keys(
    tmp_path: Path, fqrn: str, domain: str, key_names: list[str]
) -> None:
    s = settings_for(fqrn, {}, config_dir=tmp_path)
    assert repository_domain(fqrn) == domain
    assert len(s.server_urls) >= 4
    assert all(u.startswith("http://") and u.endswith(f"/cvmfs/{fqrn}") for u in s.server_urls)
    assert s.fetcher_settings().use_geoapi is True
    assert s.keys_dir == str(SHIPPED_DIR / "keys" / domain)
    assert s.configuration is not None
    assert s.configuration.origin("CVMFS_SERVER_URL").startswith(f"{SHIPPED_DIR}/domain.d/{domain}.conf:")
    keys = load_master_keys(s.public_key, s.keys_dir)
    assert [Path(p).name for p, _ in keys] == key_names
    for path, key in keys:
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
        assert isinstance(load_public_key(path), rsa.RSAPublicKey)


def test_shipped_keys_are_the_published_ones() -> None:
    found = {str(p.relative_to(SHIPPED_DIR / "keys")) for p in (SHIPPED_DIR / "keys").rglob("*.pub")}
    assert found == set(KEY_SHA256)
    for name, digest in KEY_SHA256.items():
        assert hashlib.sha256((SHIPPED_DIR / "keys" / name).read_bytes()).hexdigest() == digest


def test_direct_clients_use_the_cdn_and_proxied_clients_the_stratum_ones(tmp_path: Path) -> None:
    direct = settings_for("atlas.cern.ch", {}, config_dir=tmp_path)
    proxied = settings_for("atlas.cern.ch", {"CVMFS_HTTP_PROXY": "http://squid:3128"}, config_dir=tmp_path)
    forced = settings_for("atlas.cern.ch", {}, config_dir=tmp_path, overrides={"CVMFS_USE_CDN": "no"})
    assert direct.http_proxy == "DIRECT"
    assert all(".openhtc.io" in u for u in direct.server_urls)
    assert direct.server_urls[0] == "http://s1cern-cvmfs.openhtc.io/cvmfs/atlas.cern.ch"
    assert proxied.server_urls[0] == "http://cvmfs-stratum-one.cern.ch:8000/cvmfs/atlas.cern.ch"
    assert forced.server_urls == proxied.server_urls
    assert not any(".openhtc.io" in u for u in proxied.server_urls)


def test_site_files_override_shipped_domain_files(tmp_path: Path) -> None:
    local = write(tmp_path / "domain.d/cern.ch.local", "CVMFS_SERVER_URL=http://local-s1/cvmfs/@fqrn@\n")
    cfg = load_configuration("atlas.cern.ch", config_dir=tmp_path, environ={})
    assert cfg.values["CVMFS_SERVER_URL"] == "http://local-s1/cvmfs/atlas.cern.ch"
    assert cfg.origin("CVMFS_SERVER_URL") == f"{local}:1"


def test_shipped_default_conf_agrees_with_the_parameter_table() -> None:
    text = (SHIPPED_DIR / "default.conf").read_text()
    for a in interpret(text, "default.conf", None):
        p = PARAMETERS[a.name]
        if p.default is not None:
            assert p.default == a.value, a.name
    assert {"CVMFS_CACHE_BASE", "CVMFS_HTTP_PROXY"}.isdisjoint(a.name for a in interpret(text, "d", None))


def test_every_shipped_domain_file_parses() -> None:
    assert shipped_domains() == ["cern.ch", "egi.eu", "opensciencegrid.org"]


# --- settings ---------------------------------------------------------------------------


def test_demo_style_parameters_still_work(tmp_path: Path) -> None:
    key = write(tmp_path / "keys" / "k.pub", "x")
    params = {
        "CVMFS_SERVER_URL": "http://127.0.0.1:1/cvmfs/@fqrn@",
        "CVMFS_PUBLIC_KEY": str(key),
        "CVMFS_HTTP_PROXY": "DIRECT",
        "CVMFS_CACHE_BASE": str(tmp_path / "cache"),
    }
    s = settings_for(FQRN, params, config_dir=tmp_path)
    assert s.server_urls == [f"http://127.0.0.1:1/cvmfs/{FQRN}"]
    assert (s.public_key, s.keys_dir) == (str(key), None)
    assert s.cache_dir == tmp_path / "cache" / "shared"
    assert (s.fetcher_settings().timeout, s.fetcher_settings().timeout_direct) == (5.0, 10.0)
    assert (s.cache.quota_limit_mb, s.quota_limit_bytes) == (4000, 4000 << 20)
    assert s.parameters["CVMFS_SERVER_URL"] == f"http://127.0.0.1:1/cvmfs/{FQRN}"


def test_cache_locations(tmp_path: Path) -> None:
    write(tmp_path / "domain.d/example.org.conf", URL)
    s = settings_for(
        FQRN,
        {"XDG_CACHE_HOME": "/xdg", "CVMFS_KEYS_DIR": str(SHIPPED_DIR / "keys/egi.eu")},
        config_dir=tmp_path,
    )
    assert s.cache_dir == Path("/xdg/cvmfs-client/shared")
    assert s.configuration is not None and s.configuration.origin("CVMFS_CACHE_BASE") == BUILTIN
    env = {
        "HOME": "/home/u",
        "CVMFS_SHARED_CACHE": "no",
        "CVMFS_PUBLIC_KEY": str(SHIPPED_DIR / "keys/egi.eu/egi.eu.pub"),
    }
    assert settings_for(FQRN, env, config_dir=tmp_path).cache_dir == Path(
        f"/home/u/.cache/cvmfs-client/{FQRN}"
    )
    over = {"CVMFS_CACHE_DIR": "/scratch/c", "CVMFS_ALIEN_CACHE": "/shared/alien", "CVMFS_QUOTA_LIMIT": "-1"}
    s = settings_for(FQRN, env, config_dir=tmp_path, overrides=over)
    assert (s.cache_dir, s.alien_cache, s.alien_cache_writable) == (
        Path("/scratch/c"),
        Path("/shared/alien"),
        False,
    )
    assert s.quota_limit_bytes is None


def test_missing_keys_are_errors_naming_the_path(tmp_path: Path) -> None:
    write(tmp_path / "domain.d/example.org.conf", URL)
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/keys: master key directory not found"):
        settings_for(FQRN, {}, config_dir=tmp_path)
    (tmp_path / "keys").mkdir()
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/keys: no \*.pub master public key"):
        settings_for(FQRN, {}, config_dir=tmp_path)
    missing = tmp_path / "nowhere.pub"
    with pytest.raises(
        ConfigError, match=rf"^{missing}: master public key not found \(CVMFS_PUBLIC_KEY from environment\)"
    ):
        settings_for(FQRN, {"CVMFS_PUBLIC_KEY": str(missing)}, config_dir=tmp_path)


def test_proxy_settings(tmp_path: Path) -> None:
    env = {"CVMFS_HTTP_PROXY": "auto;DIRECT", "http_proxy": "http://site:3128"}
    s = settings_for("atlas.cern.ch", env, config_dir=tmp_path)
    assert s.http_proxy == "http://site:3128;DIRECT"
    assert (
        settings_for("atlas.cern.ch", {"CVMFS_HTTP_PROXY": "auto;DIRECT"}, config_dir=tmp_path).http_proxy
        == "DIRECT"
    )
    with pytest.raises(ConfigError, match="no proxy left"):
        settings_for("atlas.cern.ch", {"CVMFS_HTTP_PROXY": "auto"}, config_dir=tmp_path)
    with pytest.raises(ConfigError, match="DIRECT is not allowed"):
        settings_for("atlas.cern.ch", {"CVMFS_FALLBACK_PROXY": "http://f:3128;DIRECT"}, config_dir=tmp_path)


# --- output -----------------------------------------------------------------------------


def test_render_configuration_names_sources_and_reads_back(tmp_path: Path) -> None:
    f = write(tmp_path / "default.local", "CVMFS_NFILES=5\nCVMFS_NOTE='two words'\n")
    cfg = load_configuration(
        "atlas.cern.ch", config_dir=tmp_path, environ={"CVMFS_HTTP_PROXY": "http://a|http://b"}
    )
    lines = render_configuration(cfg)
    assert lines == sorted(lines)
    by_key = {line.split("=", 1)[0]: line for line in lines}
    assert by_key["CVMFS_NFILES"].endswith(f"# from {f}:1; ignored here")
    assert by_key["CVMFS_HTTP_PROXY"].startswith("CVMFS_HTTP_PROXY='http://a|http://b'")
    assert by_key["CVMFS_HTTP_PROXY"].endswith("# from environment")
    assert by_key["CVMFS_MAX_TTL"].endswith("# from built-in default")
    reread = {a.name: a.value for a in interpret("\n".join(lines) + "\n", "rendered", None)}
    assert reread == cfg.values


def test_docs_list_every_parameter() -> None:
    text = DOCS.read_text()
    for line in parameter_table_markdown():
        assert line in text, line
    assert all(p.status in (SUPPORTED, "ignored", "unsupported") for p in PARAMETERS.values())
