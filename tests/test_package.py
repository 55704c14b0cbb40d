"""Packages (``interposer/package.py``: format and rules; ``interposer/packer.py``: building one).

Host sources are temporary trees; /cvmfs sources a repository published here and read through
``file://`` with the real client. The real runs are in ``tests/interposer/test_package.py``.
"""

from __future__ import annotations

import io
import json
import os
import random
import stat
from pathlib import Path

import pytest

from cvmfs_client.cache import NodeCache
from cvmfs_client.errors import ConfigError, FetchError, FormatError
from cvmfs_client.fetcher import Fetcher, file_url
from cvmfs_client.keys import load_master_keys
from cvmfs_client.publisher import publish
from cvmfs_client.repository import Repository
from interposer.mountlist import LOCAL, REDIRECT, MountTable
from interposer.namelist import env_bytes
from interposer.package import (
    FULL,
    META,
    Manifest,
    Package,
    PackageUsageError,
    SourceVanished,
    cwd_of,
    parse_env,
    plan,
    run_lines,
    run_options,
)
from interposer.packer import (
    Packer,
    Progress,
    ProgressPrinter,
    RepositoryUnavailable,
    Sources,
    create,
    format_progress,
    summary_lines,
)

FQRN = "pkg.example.org"
MTIME = 1_700_000_000


def no_repo(fqrn: str) -> Repository:
    raise ConfigError(f"{fqrn}: no server configured")


# -- format ------------------------------------------------------------------------------------


def test_env_list_round_trip_keeps_newlines_and_equals_signs():
    env = {"PATH": "/a:/b", "MULTI": "line1\nline2", "EQ": "a=b=c", "EMPTY": ""}
    assert parse_env(env_bytes(env), "e") == env
    assert parse_env(b"A=1\0B=2", "e") == {"A": "1", "B": "2"}  # the last NUL is optional
    assert parse_env(b"", "e") == {}


def test_env_list_entry_without_equals_is_refused_naming_it():
    with pytest.raises(PackageUsageError, match=r"env-x: entry 2 is not NAME=value: b'garbage'") as err:
        parse_env(b"A=1\0garbage\0", "env-x")
    assert err.value.exit_code == 2


def test_plan_lists_each_path_once_fullcopy_winning():
    got = plan(
        [("/a/b", META), ("/a//b/", FULL), ("/c", "metadatacopy"), ("/c", META), ("/d", ""), ("/e", "open")]
    )
    assert got == {"/a/b": FULL, "/c": META, "/d": FULL, "/e": FULL}
    assert list(plan([("/x/./y", META), ("/", FULL)])) == ["/x/y", "/"]


def test_manifest_round_trip_and_refusals():
    m = Manifest(cwd="/work", counts={"fullcopy": 3}, absent=["/x"], repositories={FQRN: "ab" * 20})
    assert Manifest.from_json(m.to_json(), "m") == m
    with pytest.raises(PackageUsageError, match="not a package manifest"):
        Manifest.from_json("[1, 2]", "m")
    with pytest.raises(PackageUsageError, match="format cvmfs-client-package/1"):
        Manifest.from_json(json.dumps({"format": "other/2"}), "m")
    with pytest.raises(PackageUsageError, match="not an absolute path"):
        Manifest.from_json(json.dumps({"format": m.format, "cwd": "rel"}), "m")


def test_cwd_comes_from_pwd_when_absolute():
    assert cwd_of({"PWD": "/home/u//w/"}) == "/home/u/w"
    assert cwd_of({"PWD": "relative"}) == "/"
    assert cwd_of({}) == "/"


def test_run_table_is_the_package_but_the_kernel_trees_and_allowed_host_paths():
    table = MountTable(run_lines("/pkg/root", ["/data/in", "/etc/resolv.conf"]))
    assert table.match("/usr/bin/python3").action == REDIRECT
    assert table.real("/usr/bin/python3", table.match("/usr/bin/python3")) == "/pkg/root/usr/bin/python3"
    assert table.real("/", table.match("/")) == "/pkg/root"
    for host in ("/proc/self/maps", "/dev/null", "/sys/devices", "/data/in/x", "/etc/resolv.conf"):
        assert table.match(host).action == LOCAL, host
    assert table.match("/data/other").action == REDIRECT
    assert table.match("/devices").action == REDIRECT  # a prefix is a whole component
    assert table.logical("/pkg/root/usr/lib") == "/usr/lib"


@pytest.mark.parametrize("bad", ["relative", "/a/../b", "/"])
def test_allow_host_must_be_an_absolute_path_below_the_root(bad):
    with pytest.raises(PackageUsageError) as err:
        run_lines("/pkg/root", [bad])
    assert err.value.exit_code == 2


# -- packing host paths ------------------------------------------------------------------------


def _tree(base: Path) -> Path:
    """A small host tree: files, a relative and an absolute symlink, a symlinked directory."""
    src = base / "src"
    (src / "bin").mkdir(parents=True)
    (src / "lib" / "sub").mkdir(parents=True)
    (src / "bin" / "tool").write_bytes(b"#!" + str(src / "bin" / "interp").encode() + b" -x\necho\n")
    os.chmod(src / "bin" / "tool", 0o750)
    (src / "bin" / "interp").write_bytes(b"\x00interpreter")
    os.chmod(src / "bin" / "interp", 0o755)
    (src / "lib" / "data.bin").write_bytes(b"D" * 10_000)
    os.chmod(src / "lib" / "data.bin", 0o640)
    (src / "lib" / "other.txt").write_text("other\n")
    (src / "lib" / "sub" / "deep.txt").write_text("deep\n")
    (src / "lib" / "rel").symlink_to("data.bin")
    (src / "lib" / "abs").symlink_to(src / "lib" / "other.txt")
    (src / "libdir").symlink_to("lib")
    for p in (src / "lib" / "data.bin", src / "lib"):
        os.utime(p, ns=(MTIME * 10**9 + 5, MTIME * 10**9 + 7))
    return src


def _packer(tmp_path: Path, **kw) -> Packer:
    root = tmp_path / "pkg" / "root"
    root.mkdir(parents=True)
    return Packer(Sources(no_repo), root, **kw)


def _in(packer: Packer, path: Path | str) -> Path:
    return Path(packer.root + str(path))


def test_fullcopy_file_keeps_content_mode_and_times(tmp_path):
    src = _tree(tmp_path)
    p = _packer(tmp_path)
    p.pack({str(src / "lib" / "data.bin"): FULL}, "/")
    got = _in(p, src / "lib" / "data.bin")
    st = got.stat()
    assert got.read_bytes() == b"D" * 10_000
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == MTIME * 10**9 + 7 and st.st_atime_ns == MTIME * 10**9 + 5
    lib = _in(p, src / "lib").stat()  # directories on the way: their own mode and times, set last
    assert lib.st_mtime_ns == MTIME * 10**9 + 7
    assert p.counts["fullcopy"] == 1 and p.counts["bytes"] == 10_000


def test_metadatacopy_file_is_a_hole_of_the_same_size(tmp_path):
    src = _tree(tmp_path)
    p = _packer(tmp_path)
    p.pack({str(src / "lib" / "data.bin"): META}, "/")
    got = _in(p, src / "lib" / "data.bin")
    st = got.stat()
    assert st.st_size == 10_000 and st.st_blocks == 0  # no content stored (sparse)
    assert got.read_bytes() == b"\0" * 10_000
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime_ns == MTIME * 10**9 + 7
    assert p.counts == {"fullcopy": 0, "metadatacopy": 1, "directories": p.counts["directories"],
                        "symlinks": 0, "bytes": 0}  # fmt: skip


def test_symlinks_are_recreated_and_their_targets_included(tmp_path):
    src = _tree(tmp_path)
    p = _packer(tmp_path)
    # through a symlinked directory, then a relative link; and an absolute link
    p.pack({str(src / "libdir" / "rel"): FULL, str(src / "lib" / "abs"): META}, "/")
    assert os.readlink(_in(p, src / "libdir")) == "lib"
    assert os.readlink(_in(p, src / "lib" / "rel")) == "data.bin"
    assert os.readlink(_in(p, src / "lib" / "abs")) == str(src / "lib" / "other.txt")  # as written
    assert _in(p, src / "lib" / "data.bin").read_bytes() == b"D" * 10_000  # the target, with content
    other = _in(p, src / "lib" / "other.txt")
    assert other.stat().st_size == 6 and other.stat().st_blocks == 0  # metadata, as its link
    assert not _in(p, src / "lib" / "sub").exists()  # nothing that was not used
    assert p.counts["symlinks"] == 3


def test_dotdot_is_taken_after_symlinks_as_the_kernel_does(tmp_path):
    src = _tree(tmp_path)
    (src / "deep").symlink_to("lib/sub")
    p = _packer(tmp_path)
    p.pack({str(src / "deep" / ".." / "other.txt"): FULL}, "/")  # deep/.. is lib, not src
    assert _in(p, src / "lib" / "other.txt").read_text() == "other\n"
    assert not p.manifest.absent


def test_listed_directory_gets_its_entries_as_metadata(tmp_path):
    src = _tree(tmp_path)
    p = _packer(tmp_path)
    p.pack({str(src / "lib"): FULL, str(src / "lib" / "other.txt"): FULL}, "/")
    lib = _in(p, src / "lib")
    assert sorted(os.listdir(lib)) == sorted(os.listdir(src / "lib"))
    assert (lib / "sub").is_dir() and not any((lib / "sub").iterdir())  # entries, not their trees
    assert (lib / "data.bin").stat().st_blocks == 0
    assert (lib / "other.txt").read_text() == "other\n"  # listed again with content: upgraded


def test_metadata_stub_is_upgraded_when_content_is_listed_later(tmp_path):
    src = _tree(tmp_path)
    p = _packer(tmp_path)
    p.pack({str(src / "lib" / "data.bin"): META, str(src / "lib" / "rel"): FULL}, "/")
    assert _in(p, src / "lib" / "data.bin").read_bytes() == b"D" * 10_000
    assert p.counts["fullcopy"] == 1 and p.counts["metadatacopy"] == 0


def test_absent_special_and_kernel_paths_are_left_out_and_said(tmp_path):
    src = _tree(tmp_path)
    os.mkfifo(src / "fifo")
    (src / "mtab").symlink_to("/proc/self/mounts")
    p = _packer(tmp_path)
    m = p.pack(
        {
            str(src / "nope" / "x.so"): FULL,
            str(src / "lib" / "other.txt" / "x"): META,  # through a file: ENOTDIR, absent
            str(src / "fifo"): FULL,
            "/proc/self/status": FULL,
            "/dev/null": META,
            str(src / "mtab"): FULL,
        },
        "/",
    )
    assert m.absent == [str(src / "nope" / "x.so"), str(src / "lib" / "other.txt" / "x")]
    assert m.special == [str(src / "fifo")]
    assert m.left_out == ["/proc", "/dev"]
    assert not _in(p, "/proc").exists() and not _in(p, "/dev").exists()
    assert os.readlink(_in(p, src / "mtab")) == "/proc/self/mounts"  # the link is the package's
    assert not _in(p, src / "fifo").exists()


def test_paths_this_user_may_not_look_up_are_left_out_and_said(tmp_path, monkeypatch):
    """A name list records failed lookups, such as another user's PATH entry (/root/.cargo/bin
    under su): EACCES there leaves the path out, as the job could not reach it either."""
    src = _tree(tmp_path)
    closed = src / "closed"
    closed.mkdir()
    lstat = os.lstat

    def refusing(path, *a, **kw):  # root is never refused: play another user
        if str(path).startswith(f"{closed}/"):
            raise PermissionError(13, "Permission denied", str(path))
        return lstat(path, *a, **kw)

    monkeypatch.setattr(os, "lstat", refusing)
    p = _packer(tmp_path)
    m = p.pack({str(closed / "bin" / "bash"): META, str(src / "lib" / "other.txt"): FULL}, "/")
    monkeypatch.undo()
    assert m.unreadable == [str(closed / "bin")] and m.absent == []
    assert _in(p, src / "lib" / "other.txt").read_text() == "other\n"
    assert any(str(closed / "bin") in line for line in summary_lines(m, tmp_path / "pkg"))


def test_script_and_elf_interpreters_are_added(tmp_path):
    src = _tree(tmp_path)
    p = _packer(tmp_path)
    m = p.pack({str(src / "bin" / "tool"): FULL}, "/")
    assert m.added == [str(src / "bin" / "interp")]
    assert _in(p, src / "bin" / "interp").read_bytes() == b"\x00interpreter"
    assert stat.S_IMODE(_in(p, src / "bin" / "tool").stat().st_mode) == 0o750
    # an ELF program: its PT_INTERP (the kernel opens it, no system call names it)
    p2 = Packer(Sources(no_repo), _in(p, "/").parent.parent / "pkg2")
    os.mkdir(p2.root)
    true = os.path.realpath("/bin/true")
    m2 = p2.pack({true: FULL}, "/")
    assert m2.added == ["/lib64/ld-linux-x86-64.so.2"]
    loader = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    assert Path(p2.root + loader).read_bytes() == Path(loader).read_bytes()


def test_a_file_removed_while_packing_is_named(tmp_path):
    src = _tree(tmp_path)
    p = _packer(tmp_path)
    victim = str(src / "lib" / "other.txt")
    p._walk(victim)  # looked up...
    os.unlink(victim)  # ...then gone before its content is read
    with pytest.raises(SourceVanished, match=f"{victim}: removed while it was being packaged") as err:
        p.place(victim, FULL)
    assert err.value.exit_code == 1 and err.value.path == victim


def test_cwd_is_made_in_the_package(tmp_path):
    src = _tree(tmp_path)
    p = _packer(tmp_path)
    m = p.pack({str(src / "lib" / "other.txt"): FULL}, str(src / "libdir" / "sub"))
    assert m.cwd == str(src / "lib" / "sub")  # the directory itself, not a symlink to it
    assert _in(p, src / "lib" / "sub").is_dir()
    assert stat.S_IMODE(_in(p, "/tmp").stat().st_mode) == 0o1777  # a /tmp the job can write to
    m2 = _packer(tmp_path / "2").pack({str(src / "lib" / "other.txt"): FULL}, str(src / "missing"))
    assert m2.cwd == "/"


# -- the whole command -------------------------------------------------------------------------


def _lists(tmp_path: Path, names: str, env: dict[str, str]) -> tuple[Path, Path]:
    n, e = tmp_path / "names", tmp_path / "env"
    n.write_text(names)
    e.write_bytes(env_bytes(env))
    return n, e


def test_create_writes_manifest_env_and_names_and_is_a_package(tmp_path):
    src = _tree(tmp_path)
    names, env = _lists(
        tmp_path, f"{src}/lib/rel|fullcopy\n{src}/nope|metadatacopy\n", {"PWD": str(src), "A": "1"}
    )
    out = tmp_path / "out"
    m = create(names, env, out, no_repo)
    assert sorted(os.listdir(out)) == ["env-list", "manifest.json", "name-list", "root"]
    assert not [n for n in os.listdir(tmp_path) if "partial" in n]
    pkg = Package.open(out)
    assert pkg.env == {"PWD": str(src), "A": "1"}
    assert pkg.manifest == m and m.cwd == str(src) and m.absent == [f"{src}/nope"]
    assert (out / "name-list").read_bytes() == names.read_bytes()
    assert (out / "root" / str(src).lstrip("/") / "lib" / "data.bin").read_bytes() == b"D" * 10_000
    assert pkg.host_dir(str(src)) == out / "root" / str(src).lstrip("/")
    lines = summary_lines(m, out)
    assert lines[0].startswith(f"package {out}: 1 files with content (0.0 MiB), 0 metadata only")
    assert any("1 listed paths do not exist" in line for line in lines)


def test_create_refuses_bad_input_with_usage_errors(tmp_path):
    src = _tree(tmp_path)
    names, env = _lists(tmp_path, f"{src}/lib/rel\n", {})
    with pytest.raises(PackageUsageError, match="name list .*missing: no such file") as err:
        create(tmp_path / "missing", env, tmp_path / "o1", no_repo)
    assert err.value.exit_code == 2
    with pytest.raises(PackageUsageError, match="environment list .*: no such file"):
        create(names, tmp_path / "missing-env", tmp_path / "o2", no_repo)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(PackageUsageError, match="exists and is not an empty directory"):
        create(names, env, busy, no_repo)
    bad = tmp_path / "bad-names"
    bad.write_text("relative/path|fullcopy\n")
    with pytest.raises(FormatError, match="bad-names:1"):
        create(bad, env, tmp_path / "o3", no_repo)
    with pytest.raises(PackageUsageError, match="--cwd work: must be an absolute path"):
        create(names, env, tmp_path / "o5", no_repo, cwd="work")
    empty = tmp_path / "empty-names"
    empty.write_text("# nothing\n")
    with pytest.raises(PackageUsageError, match="no paths in it"):
        create(empty, env, tmp_path / "o4", no_repo)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()


def test_a_failed_create_leaves_nothing_behind(tmp_path):
    names, env = _lists(tmp_path, f"/cvmfs/{FQRN}/file|fullcopy\n", {})
    empty_out = tmp_path / "out"
    empty_out.mkdir()  # an empty directory may be given, and stays as it was
    with pytest.raises(RepositoryUnavailable, match=f"/cvmfs/{FQRN}: cannot read the repository") as err:
        create(names, env, empty_out, no_repo)
    assert err.value.exit_code == 2  # the cause's (a configuration error)
    assert sorted(os.listdir(tmp_path)) == ["env", "names", "out"] and not any(empty_out.iterdir())


def test_the_package_itself_is_never_packed(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "input.txt").write_text("in\n")
    names, env = _lists(work, f"{work}|fullcopy\n", {"PWD": str(work)})  # the job listed its cwd
    out = work / "pkg"
    m = create(names, env, out, no_repo)
    listed = sorted(os.listdir(out / "root" / str(work).lstrip("/")))
    assert listed == ["env", "input.txt", "names"]
    assert [Path(p).name.startswith(".pkg.partial-") for p in m.left_out] == [True]  # built beside


def test_package_open_refuses_what_is_not_a_package(tmp_path):
    with pytest.raises(PackageUsageError, match="does not exist: not a package") as err:
        Package.open(tmp_path / "nothing")
    assert err.value.exit_code == 2
    with pytest.raises(PackageUsageError, match="has no manifest.json"):
        Package.open(tmp_path)


def test_package_dirs_are_never_reached_through_symlinks(tmp_path):
    src = _tree(tmp_path)
    names, env = _lists(tmp_path, f"{src}/libdir/rel|fullcopy\n", {})
    pkg = Package.open(_created(names, env, tmp_path / "out"))
    with pytest.raises(PackageUsageError, match="not a directory of the package"):
        pkg.host_dir(f"{src}/libdir")  # a symlink in the package (it may point anywhere)
    pkg.make_parents("/etc/ssl/certs/ca.pem")  # for --allow-host: empty directories
    assert (pkg.root / "etc" / "ssl" / "certs").is_dir() and not (
        pkg.root / "etc" / "ssl" / "certs" / "ca.pem"
    ).exists()
    pkg.make_parents(f"{src}/libdir/new/x")  # never through a link
    assert (
        not (src / "lib" / "new").exists() and not (pkg.root / str(src).lstrip("/") / "lib" / "new").exists()
    )


def test_run_options_are_the_recorded_environment_cwd_and_the_package_table(tmp_path):
    src = _tree(tmp_path)
    names, env = _lists(tmp_path, f"{src}/lib/rel|fullcopy\n", {"PWD": f"{src}/lib", "X": "1"})
    pkg = Package.open(_created(names, env, tmp_path / "out"))
    opts = run_options(pkg, ["/etc/resolv.conf"], cache_dir=tmp_path / "cache")
    assert opts.env == {"PWD": f"{src}/lib", "X": "1"}  # nothing of ours
    assert opts.cwd == pkg.root / str(src).lstrip("/") / "lib"
    kinds = [(line.prefix, line.action) for line in opts.mount_lines]
    assert kinds == [("/", "REDIRECT"), ("/proc", "LOCAL"), ("/dev", "LOCAL"), ("/sys", "LOCAL"),
                     ("/etc/resolv.conf", "LOCAL")]  # fmt: skip
    assert opts.mount_lines[0].target == str(pkg.root)
    assert (pkg.root / "etc").is_dir() and Path(opts.shadow_dir) == tmp_path / "cache" / "interposer"
    assert run_options(pkg, cwd="/").cwd == pkg.root
    with pytest.raises(PackageUsageError, match="/nope: not a directory of the package"):
        run_options(pkg, cwd="/nope")


def _created(names: Path, env: Path, out: Path) -> Path:
    create(names, env, out, no_repo)
    return out


def test_progress_line_and_printer_throttle():
    p = Progress(done=3, total=10, files=2, nbytes=3 << 20, started=100.0)
    assert format_progress(p, 112.4) == "3/10 paths, 2 files with content (3.0 MiB), 12 s"
    clock = iter([0.0, 5.0, 11.0, 12.0]).__next__
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=False, clock=clock)
    for _ in range(4):
        printer(p)
    printer.finish()
    assert out.getvalue().count("\n") == 1 and out.getvalue().startswith("package create: 3/10 paths")


# -- packing /cvmfs paths through the client ---------------------------------------------------


@pytest.fixture(scope="module")
def repo_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pkgrepo")
    src = base / "src"
    (src / "bin").mkdir(parents=True)
    (src / "lib").mkdir()
    (src / "bin" / "prog").write_bytes(b"#!/cvmfs/" + FQRN.encode() + b"/bin/sh-like\nrun\n")
    os.chmod(src / "bin" / "prog", 0o755)
    (src / "bin" / "sh-like").write_bytes(b"not really a shell")
    os.chmod(src / "bin" / "sh-like", 0o755)
    (src / "lib" / "big.dat").write_bytes(random.Random(5).randbytes(3 << 20))  # chunked
    (src / "lib" / "small.txt").write_text("small\n")
    (src / "lib" / "current").symlink_to("small.txt")
    (src / "abs").symlink_to(f"/cvmfs/{FQRN}/lib")
    publish(src, FQRN, base / "s0" / FQRN, base / "keys", chunk_sizes=(256 << 10, 512 << 10, 1 << 20))
    return base


def _open_repo(base: Path, cache: Path):
    def open_repo(fqrn: str) -> Repository:
        if fqrn != FQRN:
            raise ConfigError(f"{fqrn}: not configured")
        keys = load_master_keys(str(base / "keys" / f"{FQRN}.pub"), None)
        source = Fetcher.for_servers(file_url(base / "s0" / FQRN))
        return Repository(FQRN, source, keys, NodeCache(cache, None), owns_resources=True)

    return open_repo


def test_cvmfs_paths_are_read_through_the_client(repo_base, tmp_path):
    m = "/cvmfs/" + FQRN
    names, env = _lists(
        tmp_path,
        f"{m}/bin/prog|fullcopy\n{m}/abs/big.dat|fullcopy\n{m}/abs/current|metadatacopy\n"
        f"{m}/nope|fullcopy\n/cvmfs/other.org/x|metadatacopy\n/cvmfs/README|metadatacopy\n",
        {},
    )
    out = tmp_path / "out"
    man = create(names, env, out, _open_repo(repo_base, tmp_path / "cache"))
    root = out / "root" / "cvmfs" / FQRN
    src = repo_base / "src"
    assert (root / "lib" / "big.dat").read_bytes() == (src / "lib" / "big.dat").read_bytes()
    assert os.readlink(root / "abs") == f"/cvmfs/{FQRN}/lib"
    assert os.readlink(root / "lib" / "current") == "small.txt"
    assert (root / "lib" / "small.txt").stat().st_size == 6 and (
        root / "lib" / "small.txt"
    ).stat().st_blocks == 0
    assert (root / "bin" / "sh-like").read_bytes() == b"not really a shell"  # the #! interpreter
    assert stat.S_IMODE((root / "bin" / "prog").stat().st_mode) == 0o755
    assert (root / "bin" / "prog").stat().st_mtime == (src / "bin" / "prog").stat().st_mtime
    assert man.added == [f"{m}/bin/sh-like"]
    assert man.absent == [f"{m}/nope", "/cvmfs/other.org/x", "/cvmfs/README"]  # unopenable: only looked up
    assert list(man.repositories) == [FQRN] and len(man.repositories[FQRN]) == 40


def test_content_from_an_unreadable_repository_is_an_error(tmp_path):
    names, env = _lists(tmp_path, "/cvmfs/other.org/x|fullcopy\n", {})
    with pytest.raises(
        RepositoryUnavailable, match="/cvmfs/other.org: cannot read the repository: other.org"
    ):
        create(names, env, tmp_path / "out", no_repo)


def test_a_repository_no_server_has_is_absent_even_for_content(tmp_path):
    """node tries to open /cvmfs/package.json (listed as fullcopy): every server says 404, so
    there is no such repository and the path stays absent; other failures still stop."""

    def not_there(fqrn: str) -> Repository:
        raise FetchError(
            ".cvmfspublished", [f"http://s1/cvmfs/{fqrn}/.cvmfspublished: HTTP 404"], not_found=True
        )

    names, env = _lists(tmp_path, "/cvmfs/package.json|fullcopy\n", {})
    m = create(names, env, tmp_path / "out", not_there)
    assert m.absent == ["/cvmfs/package.json"]

    def down(fqrn: str) -> Repository:
        raise FetchError(".cvmfspublished", [f"http://s1/cvmfs/{fqrn}/.cvmfspublished: connection refused"])

    with pytest.raises(RepositoryUnavailable, match="connection refused"):
        create(names, env, tmp_path / "out2", down)
