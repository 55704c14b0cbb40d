"""``cvmfs-client run -n/--name-list`` and ``-e/--env-list`` with real programs: the paths the
job used in Parrot's ``path|fullcopy``/``path|metadatacopy`` form, as the job named them, and
its environment in a form ``env -i`` restores."""

from __future__ import annotations

import subprocess

from cvmfs_client.prewarm import parse_name_list
from tests.interposer.conftest import cvmfs_run, sh
from tests.interposer.trees import MOUNT


def _names(path) -> dict[str, str]:
    text = path.read_text()
    lines = text.splitlines()
    assert len(lines) == len(set(lines))
    out: dict[str, str] = {}
    for line in lines:
        p, how = line.rsplit("|", 1)
        assert p not in out, f"{p} listed twice"
        out[p] = how
    return out


def test_name_list_records_paths_as_the_job_named_them(job_env, tmp_path):
    names = tmp_path / "names.txt"
    script = (
        f"cat {MOUNT}/src/main.c >/dev/null; ls {MOUNT}/src/include >/dev/null;"
        f"stat {MOUNT}/src/a.c >/dev/null;"
        f"readlink {MOUNT}/bin/ash; cd {MOUNT}/src && cat ./b.c ../src/c.c >/dev/null;"
        f"{MOUNT}/bin/bbscript x; test -e {MOUNT}/no/such || echo absent"
    )
    r = sh(script, job_env, options=["-n", str(names)])
    assert r.stdout.decode().split("\n")[0] == "busybox"
    got = _names(names)
    assert got[f"{MOUNT}/src/main.c"] == "fullcopy"
    assert got[f"{MOUNT}/src/b.c"] == "fullcopy"  # relative to a cwd in /cvmfs
    assert got[f"{MOUNT}/src/c.c"] == "fullcopy"  # '..' folded
    assert got[f"{MOUNT}/src/a.c"] == "metadatacopy"
    assert got[f"{MOUNT}/bin/ash"] == "metadatacopy"
    assert got[f"{MOUNT}/bin/bbscript"] == "fullcopy"
    assert got[f"{MOUNT}/bin/busybox"] == "fullcopy"  # the #! interpreter, resolved by the tracer
    assert got[f"{MOUNT}/no/such"] == "metadatacopy"
    assert f"{MOUNT}/src/include" in got
    assert got["/bin/sh"] == "fullcopy"  # host paths too, as Parrot
    assert all(p.startswith("/") and "/interposer/" not in p for p in got)
    assert not any(p.startswith(job_env["CVMFS_CACHE_BASE"]) for p in got)
    # cvmfs-client prewarm reads it back: metadata-only entries fetch no content
    entries = {e.path: e for e in parse_name_list(names.read_text(), str(names))}
    assert entries[f"{MOUNT}/src/main.c"].needs_content
    assert not entries[f"{MOUNT}/src/a.c"].needs_content


def test_name_list_follows_symlinks_for_content_and_is_replaced_atomically(job_env, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("old\n")
    sh(f"{MOUNT}/bin/ash -c 'echo hi' >/dev/null", job_env, options=["--name-list", str(names)])
    got = _names(names)
    assert got[f"{MOUNT}/bin/ash"] == "fullcopy"  # the name the job executed
    assert got[f"{MOUNT}/bin/busybox"] == "fullcopy"  # and where it led
    assert "old" not in names.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["names.txt"]  # no temporary file left


def test_name_list_is_written_when_the_job_fails(job_env, tmp_path):
    names = tmp_path / "n"
    r = cvmfs_run(
        ["/bin/sh", "-c", f"cat {MOUNT}/src/a.c >/dev/null; exit 3"], job_env, options=["-n", str(names)]
    )
    assert r.returncode == 3
    assert _names(names)[f"{MOUNT}/src/a.c"] == "fullcopy"


def test_name_list_directory_must_exist(job_env, tmp_path):
    r = cvmfs_run(["/bin/true"], job_env, options=["-n", str(tmp_path / "missing" / "n")])
    assert r.returncode == 125
    assert b"not writable" in r.stderr


def test_env_list_restores_with_env_i(job_env, tmp_path):
    envf = tmp_path / "env"
    env = dict(job_env, ODD="two words\nand a line", EMPTY="")
    sh("true", env, options=["-e", str(envf)])
    raw = envf.read_bytes()
    assert raw.endswith(b"\0")
    got = dict(item.split("=", 1) for item in raw[:-1].decode().split("\0"))
    assert got == env
    out = subprocess.run(
        [
            "xargs",
            "-0",
            "-a",
            str(envf),
            "sh",
            "-c",
            'exec env -i "$@" sh -c \'printf "%s|%s" "$ODD" "$TZ"\'',
            "sh",
        ],
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert out == "two words\nand a line|UTC"
