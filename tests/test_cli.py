"""The ``cvmfs-client`` command line: output, one-line errors and exit codes scripts can use."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cvmfs_client.fetcher import file_url

TOOLS = "tools.example.org"


def run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "cvmfs_client.cli", *args], env=env, capture_output=True, cwd=cwd, timeout=120
    )


@pytest.fixture
def env(real_fixtures, tmp_path) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CVMFS_SERVER_URL": file_url(real_fixtures) + "/@fqrn@",
        "CVMFS_KEYS_DIR": str(real_fixtures / TOOLS),
        "CVMFS_CACHE_BASE": str(tmp_path / "cache"),
    }


def test_ls_lists_a_directory(env):
    r = run(["ls", f"/cvmfs/{TOOLS}/cases"], env)
    assert r.returncode == 0, r.stderr
    names = r.stdout.decode().split("\n")
    assert "twin-a.dat" in names and "Grüße aus Köln – 日本語 ✓.txt" in names


def test_ls_long_shows_modes_links_and_targets(env):
    out = run(["ls", "-l", f"/cvmfs/{TOOLS}/cases"], env).stdout.decode()
    assert any(
        line.startswith("-r--r--r--") and line.endswith("frozen-0444.txt") for line in out.splitlines()
    )
    assert any("twin-a.dat" in line and line.split()[1] == "2" for line in out.splitlines())
    assert "rel-link -> ../bin/clear" in out


def test_cat_prints_exact_bytes_of_chunked_file(env, real_fixtures):
    r = run(["cat", f"/cvmfs/{TOOLS}/lib/libtinfo.so.6.4"], env)
    assert r.returncode == 0
    assert len(r.stdout) == 204088 and r.stdout[:4] == b"\x7fELF"


def test_info_shows_revision_and_trust_chain(env):
    out = run(["info", TOOLS], env).stdout.decode()
    assert "revision:          3" in out
    assert "f916797dd4979fc3eb28e82e93f26aa3995edb2b" in out
    assert "whitelist expires: 2036-11-21 17:26:06 UTC" in out


def test_tag_pins_a_revision(env):
    out = run(["info", TOOLS], {**env, "CVMFS_REPOSITORY_TAG": "trunk-previous"}).stdout.decode()
    assert "revision:          2" in out and "pinned by tag trunk-previous" in out


def test_missing_path_exits_1_with_one_line(env):
    r = run(["cat", f"/cvmfs/{TOOLS}/no/such/file"], env)
    assert r.returncode == 1
    assert r.stderr.decode().strip().count("\n") == 0
    assert "no such file or directory" in r.stderr.decode()


def test_unconfigured_server_exits_2(env):
    env.pop("CVMFS_SERVER_URL")
    r = run(["ls", f"/cvmfs/{TOOLS}"], env)
    assert r.returncode == 2
    assert "CVMFS_SERVER_URL" in r.stderr.decode()


def test_tampered_manifest_exits_3_and_reads_nothing(env, real_fixtures, tmp_path):
    copy = tmp_path / "s0"
    shutil.copytree(real_fixtures / TOOLS, copy / TOOLS)
    raw = bytearray((copy / TOOLS / ".cvmfspublished").read_bytes())
    raw[-3] ^= 0xFF
    (copy / TOOLS / ".cvmfspublished").write_bytes(bytes(raw))
    r = run(["cat", f"/cvmfs/{TOOLS}/etc/motd.txt"], {**env, "CVMFS_SERVER_URL": file_url(copy) + "/@fqrn@"})
    assert r.returncode == 3
    assert r.stdout == b""
    assert "bad signature" in r.stderr.decode()


def test_unreachable_server_exits_4_naming_the_url(env):
    r = run(["ls", f"/cvmfs/{TOOLS}"], {**env, "CVMFS_SERVER_URL": "http://127.0.0.1:9/cvmfs/@fqrn@"})
    assert r.returncode == 4
    assert "http://127.0.0.1:9/cvmfs/tools.example.org/.cvmfspublished" in r.stderr.decode()


def test_publish_then_read_through_cli(tmp_path, env):
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "hello.sh").write_text("#!/bin/sh\necho hello\n")
    r = run(
        [
            "publish",
            str(src),
            "--fqrn",
            "cli.example.org",
            "--stratum0",
            str(tmp_path / "s0" / "cli.example.org"),
            "--keys",
            str(tmp_path / "keys"),
            "--hash-algorithm",
            "rmd160",
        ],
        env,
    )
    assert r.returncode == 0, r.stderr
    assert b"revision 1" in r.stdout
    env = {
        **env,
        "CVMFS_SERVER_URL": file_url(tmp_path / "s0") + "/@fqrn@",
        "CVMFS_KEYS_DIR": str(tmp_path / "keys"),
    }
    out = run(["cat", "/cvmfs/cli.example.org/bin/hello.sh"], env)
    assert out.stdout == b"#!/bin/sh\necho hello\n", out.stderr


def test_help_explains_commands():
    r = subprocess.run([sys.executable, "-m", "cvmfs_client.cli", "--help"], capture_output=True, timeout=60)
    text = r.stdout.decode()
    for word in ("ls", "cat", "info", "publish", "serve", "demo", "CVMFS_SERVER_URL", "Exit codes"):
        assert word in text


def test_config_shows_values_and_where_they_came_from(env, tmp_path):
    conf = tmp_path / "etc"
    (conf / "config.d").mkdir(parents=True)
    (conf / "default.local").write_text("CVMFS_QUOTA_LIMIT=2000\n")
    (conf / "config.d" / f"{TOOLS}.local").write_text("CVMFS_QUOTA_LIMIT=3000  # this repository only\n")
    r = run(["--config-dir", str(conf), "config", TOOLS], env)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.decode().splitlines() if x.startswith("CVMFS_QUOTA_LIMIT="))
    assert "3000" in line and f"config.d/{TOOLS}.local:1" in line
    assert any(
        x.startswith("CVMFS_CACHE_BASE=") and "environment" in x for x in r.stdout.decode().splitlines()
    )


def test_malformed_config_line_is_named(env, tmp_path):
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "default.local").write_text("CVMFS_QUOTA_LIMIT=1\nthis is not a setting\n")
    r = run(["--config-dir", str(conf), "ls", f"/cvmfs/{TOOLS}"], env)
    assert r.returncode == 2
    assert f"{conf}/default.local:2" in r.stderr.decode()
    assert r.stderr.decode().count("\n") == 1


def test_probe_reports_each_server(env, real_fixtures):
    servers = "http://127.0.0.1:9/cvmfs/@fqrn@;" + file_url(real_fixtures) + "/@fqrn@"
    r = run(["probe", TOOLS], {**env, "CVMFS_SERVER_URL": servers})
    assert r.returncode == 0
    lines = r.stdout.decode().splitlines()
    assert any("FAILED" in x and "127.0.0.1:9" in x for x in lines)
    assert any(x.strip().startswith("OK") and "file://" in x for x in lines)
    bad = run(["probe", TOOLS], {**env, "CVMFS_SERVER_URL": "http://127.0.0.1:9/cvmfs/@fqrn@"})
    assert bad.returncode == 4


def test_cache_stat_fsck_wipe(env, tmp_path):
    assert run(["cat", f"/cvmfs/{TOOLS}/lib/libtinfo.so.6.4"], env).returncode == 0
    stat_out = run(["cache", "stat"], env).stdout.decode()
    assert "objects:" in stat_out and "misses:" in stat_out
    assert run(["cache", "fsck"], env).returncode == 0
    victim = next(p for p in (tmp_path / "cache" / "shared").glob("??/*") if p.is_file())
    victim.chmod(0o644)
    victim.write_bytes(b"not what was verified")
    r = run(["cache", "fsck"], env)
    assert r.returncode == 3 and "1 bad" in r.stdout.decode()
    assert not victim.exists()
    assert "removed" in run(["cache", "wipe"], env).stdout.decode()
    assert "objects:   0" in run(["cache", "stat"], env).stdout.decode()


def test_cache_commands_refuse_a_cache_dir_that_does_not_exist(env, tmp_path):
    for command in ("stat", "fsck", "wipe"):
        r = run(["cache", command, "--cache-dir", str(tmp_path / "typo")], env)
        assert r.returncode == 2 and b"does not exist" in r.stderr
    assert not (tmp_path / "typo").exists()


def test_an_unusable_cache_base_is_a_one_line_error(env, tmp_path):
    """A cache base that cannot be written (here: under a regular file; a read-only home on
    compute nodes alike) names the directory and the fix, exit 2, no traceback."""
    (tmp_path / "file").write_text("")
    base = tmp_path / "file" / "cache"
    for args in (["ls", f"/cvmfs/{TOOLS}"], ["prewarm", f"/cvmfs/{TOOLS}"]):
        r = run(args, {**env, "CVMFS_CACHE_BASE": str(base)})
        err = r.stderr.decode()
        assert r.returncode == 2 and err.count("\n") == 1, err
        assert err.startswith(f"cvmfs-client: {base}/") and "cannot be used as the node cache" in err
        assert "CVMFS_CACHE_BASE" in err


def test_a_file_system_error_is_one_line_naming_the_file(env, tmp_path):
    """OSErrors from the machine (read-only, no space, not a directory...) are reported like our
    own errors: the file and the reason, exit 1, no traceback."""
    (tmp_path / "file").write_text("")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a\n")
    stratum0 = tmp_path / "file" / "s0"
    r = run(["publish", str(src), "--fqrn", "x.example.org", "--stratum0", str(stratum0), "--keys",
             str(tmp_path / "keys")], env)  # fmt: skip
    assert r.returncode == 1 and r.stderr.decode() == f"cvmfs-client: {stratum0}: Not a directory\n"
    r = run(["demo", "--workdir", str(tmp_path / "file" / "demo")], env)
    assert r.returncode == 1 and r.stderr.decode().endswith("demo: Not a directory\n"), r.stderr


def test_missing_public_key_is_named(env, tmp_path):
    env.pop("CVMFS_KEYS_DIR")
    missing = tmp_path / "nowhere" / "key.pub"
    r = run(["ls", f"/cvmfs/{TOOLS}"], {**env, "CVMFS_PUBLIC_KEY": str(missing)})
    assert r.returncode == 2
    assert str(missing) in r.stderr.decode() and r.stderr.decode().count("\n") == 1


def test_unknown_repository_is_a_one_line_error(env, tmp_path):
    env.pop("CVMFS_SERVER_URL")
    r = run(["--config-dir", str(tmp_path), "info", "nosuch.example.net"], env)
    assert r.returncode == 2
    assert "nosuch.example.net" in r.stderr.decode() and r.stderr.decode().count("\n") == 1
