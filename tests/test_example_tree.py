"""The example tree has every edge case the publisher and client tests rely on, reproducibly."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from fixtures.example_tree import (
    BIG_SIZE,
    DEEP_LEVELS,
    EXAMPKG_VERSION,
    UNICODE_NAME,
    VARIANT2_CHANGES,
    VARIANT2_MTIME,
    build_example_tree,
    describe_tree,
)

FQRN = "example.cvmfs.io"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_example_tree(tmp_path_factory.mktemp("example") / "src")


@pytest.fixture(scope="module")
def desc(tree: Path) -> dict[str, dict]:
    return describe_tree(tree)


def test_every_edge_case_has_the_right_type_and_mode(desc: dict[str, dict]) -> None:
    expected = {
        ".": ("d", 0o755),
        "bin/example-env.sh": ("f", 0o755),
        "bin/exampkg": ("f", 0o755),
        "lib/python/exampkg/.cvmfscatalog": ("f", 0o644),
        "lib/python/exampkg/plugins/.cvmfscatalog": ("f", 0o644),
        "lib/python/exampkg/__init__.py": ("f", 0o644),
        "share/data/big.bin": ("f", 0o644),
        "share/data/events.log": ("f", 0o644),
        "flavors/generic": ("d", 0o755),
        "flavors/debug": ("d", 0o755),
        "flavors/current": ("l", 0o777),
        "cases/empty.txt": ("f", 0o644),
        "cases/emptydir": ("d", 0o755),
        "cases/abs-link": ("l", 0o777),
        "cases/rel-link": ("l", 0o777),
        "cases/broken-link": ("l", 0o777),
        "cases/dir-link": ("l", 0o777),
        "cases/twin-a.dat": ("f", 0o644),
        "cases/twin-b.dat": ("f", 0o644),
        f"cases/{UNICODE_NAME}": ("f", 0o644),
        "cases/runme-0755.sh": ("f", 0o755),
        "cases/secret-0600.key": ("f", 0o600),
        "cases/frozen-0444.txt": ("f", 0o444),
        "cases/obsolete.txt": ("f", 0o644),
        "/".join(["deep", *(f"d{i}" for i in range(1, DEEP_LEVELS + 1)), "bottom.txt"]): ("f", 0o644),
    }
    for path, (kind, mode) in expected.items():
        assert path in desc, path
        assert (desc[path]["type"], desc[path]["mode"]) == (kind, mode), path
    # Nothing else is special: all other files 0644 (or 0755 programs under bin/), all dirs 0755.
    for path, entry in desc.items():
        if entry["type"] == "d":
            assert entry["mode"] == 0o755, path
        elif entry["type"] == "f" and path not in expected and not path.startswith("bin/"):
            assert entry["mode"] == 0o644, path


def test_symlink_targets(desc: dict[str, dict]) -> None:
    targets = {
        "cases/abs-link": f"/cvmfs/{FQRN}/etc/example.conf",
        "cases/rel-link": "../etc/example.conf",
        "cases/broken-link": "../no/such/file",
        "cases/dir-link": "../lib/python/exampkg",
        "flavors/current": "$(EXAMPLE_FLAVOR:-generic)",
    }
    for path, target in targets.items():
        assert desc[path]["target"] == target
        assert desc[path]["size"] == len(target.encode())


def test_symlinks_resolve_as_intended(tree: Path) -> None:
    assert (tree / "cases" / "rel-link").resolve() == (tree / "etc" / "example.conf").resolve()
    assert (tree / "cases" / "dir-link").is_dir()
    assert not (tree / "cases" / "broken-link").exists()


def test_contents(tree: Path, desc: dict[str, dict]) -> None:
    assert desc["cases/empty.txt"]["size"] == 0
    assert not any((tree / "cases" / "emptydir").iterdir())
    assert desc["share/data/big.bin"]["size"] == BIG_SIZE
    log = (tree / "share" / "data" / "events.log").read_bytes()
    assert 900 * 1024 <= len(log) <= 1100 * 1024
    assert len(zlib.compress(log)) < len(log) // 4, "the log must compress well"
    assert len(zlib.compress((tree / "share/data/big.bin").read_bytes()[: 1 << 20])) > 1_000_000
    for script in ("bin/example-env.sh", "bin/exampkg", "cases/runme-0755.sh"):
        assert (tree / script).read_bytes().startswith(b"#!/bin/sh\n")


def test_hardlink_pair(tree: Path, desc: dict[str, dict]) -> None:
    a, b = (tree / "cases" / "twin-a.dat").stat(), (tree / "cases" / "twin-b.dat").stat()
    assert (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    assert desc["cases/twin-a.dat"]["nlink"] == desc["cases/twin-b.dat"]["nlink"] == 2
    assert all(e["nlink"] == 1 for p, e in desc.items() if e["type"] == "f" and "twin" not in p)


def test_mtimes_are_fixed_and_distinct(tree: Path, desc: dict[str, dict]) -> None:
    mtimes = [e["mtime"] for e in desc.values()]
    assert all(1_750_000_000 <= t < 1_750_100_000 for t in mtimes)
    assert len(set(mtimes)) > len(mtimes) // 2
    # Symlinks carry their own mtime (lutime), not their target's.
    link = (tree / "cases" / "abs-link").lstat()
    assert int(link.st_mtime) == desc["cases/abs-link"]["mtime"]


def test_exampkg_runs(tree: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree / "lib" / "python"), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "exampkg"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[0] == f"exampkg {EXAMPKG_VERSION}"


def test_real_programs_run_from_the_tree(tree: Path) -> None:
    programs = [p for p in (tree / "bin").iterdir() if p.read_bytes()[:4] == b"\x7fELF"]
    if shutil.which("tput") or shutil.which("gcc"):
        assert programs, "a host program or a compiled one was expected in bin/"
    env = {**os.environ, "LD_LIBRARY_PATH": str(tree / "lib"), "TERM": "xterm"}
    for program in programs:
        args = [str(program), "cols"] if program.name == "tput" else [str(program)]
        subprocess.run(args, env=env, capture_output=True, check=True)
    if (tree / "bin" / "tput").exists() and (tree / "lib" / "libtinfo.so.6").is_symlink():
        target = (tree / "lib" / "libtinfo.so.6").resolve()
        assert target.parent == (tree / "lib").resolve(), "SONAME link must stay inside lib/"


def test_gcc_fallback_builds_hello(tmp_path: Path) -> None:
    if not shutil.which("gcc"):
        pytest.fail("gcc is required by the test suite (bash .ci/run installs it)")
    root = build_example_tree(tmp_path / "t", host_programs=())
    out = subprocess.run([str(root / "bin" / "hello")], capture_output=True, text=True, check=True).stdout
    assert out.startswith("hello from")
    again = build_example_tree(tmp_path / "u", host_programs=())
    assert describe_tree(root) == describe_tree(again)


def test_builds_without_gcc_or_host_programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    root = build_example_tree(tmp_path / "t", host_programs=())
    desc = describe_tree(root)
    assert not any(p.startswith("bin/") and p.endswith(("hello", "tput")) for p in desc)
    assert "cases/twin-a.dat" in desc


def test_deterministic(tmp_path: Path, desc: dict[str, dict]) -> None:
    again = describe_tree(build_example_tree(tmp_path / "again"))
    assert again == desc


def test_refuses_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("mine")
    with pytest.raises(FileExistsError):
        build_example_tree(tmp_path / "x")
    with pytest.raises(ValueError):
        build_example_tree(tmp_path / "y", variant=3)


def test_variant2_changes_exactly_four_things(tmp_path: Path, desc: dict[str, dict]) -> None:
    v2 = describe_tree(build_example_tree(tmp_path / "v2", variant=2))
    assert set(desc) - set(v2) == {"cases/obsolete.txt"}
    assert set(v2) - set(desc) == {"lib/python/exampkg/compat.py"}
    changed_content = {
        p
        for p in desc.keys() & v2.keys()
        if (desc[p]["sha256"], desc[p]["target"]) != (v2[p]["sha256"], v2[p]["target"])
    }
    assert changed_content == {"etc/example.conf", "cases/rel-link"}
    assert v2["cases/rel-link"]["target"] == "../share/doc/README"
    for path, what in VARIANT2_CHANGES.items():
        if what != "deleted":
            assert v2[path]["mtime"] == VARIANT2_MTIME, path
    # The nested catalog markers stay; the inner catalog is untouched.
    plugins = [p for p in desc if p.startswith("lib/python/exampkg/plugins")]
    assert all(desc[p] == v2[p] for p in plugins)


def test_custom_fqrn(tmp_path: Path) -> None:
    root = build_example_tree(tmp_path / "t", fqrn="sw.example.org")
    assert os.readlink(root / "cases" / "abs-link") == "/cvmfs/sw.example.org/etc/example.conf"


def test_command_line(tmp_path: Path) -> None:
    dest = tmp_path / "cli"
    repo_root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "fixtures.example_tree", str(dest), "--variant", "2"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "variant 2" in out
    assert (dest / "lib" / "python" / "exampkg" / "compat.py").is_file()
    assert stat.S_ISLNK((dest / "flavors" / "current").lstat().st_mode)
