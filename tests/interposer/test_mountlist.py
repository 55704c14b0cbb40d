"""Parrot mount lists without ptrace: the parser, the matcher, and the policy's path walk on a
real temporary tree (symlinks, ``..``, redirects, denials, /proc/self)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from interposer.mountlist import (
    DENY,
    ENOENT,
    LOCAL,
    REDIRECT,
    RWX,
    Line,
    MountListError,
    MountTable,
    parse_file,
    parse_option,
    parse_text,
)
from interposer.policy import Policy, deny_line, sandbox_lines

R, W, X = os.R_OK, os.W_OK, os.X_OK


def table(text: str) -> MountTable:
    return MountTable(parse_text(text, "list"))


def test_parses_parrot_forms():
    lines = parse_text(
        "# comment\n\n  # indented comment\n/tmp /scratch/task42/tmp\n/data rx\n/data/in /s/in r\n"
        "/secret DENY\n/gone ENOENT\n/usr LOCAL\n/etc/ RW\n",
        "m",
    )
    got = [(x.prefix, x.action, x.target, x.mode, x.below_only) for x in lines]
    assert got == [
        ("/tmp", REDIRECT, "/scratch/task42/tmp", RWX, False),
        ("/data", LOCAL, "", R | X, False),
        ("/data/in", REDIRECT, "/s/in", R, False),
        ("/secret", DENY, "", RWX, False),
        ("/gone", ENOENT, "", RWX, False),
        ("/usr", LOCAL, "", RWX, False),
        ("/etc", LOCAL, "", R | W, True),
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("/tmp\n", "expected"),
        ("tmp /x\n", "absolute"),
        ("/tmp y\n", "absolute"),
        ("/tmp /x rwq\n", "invalid ACL"),
        ("/tmp /x r extra\n", "too many"),
        ("/t* /x\n", "glob"),
        ("/tmp resolver:/bin/foo\n", "absolute"),
        ("/a/../b /x\n", "'..'"),
        ("/a /x\n/b /a\n/a DENY\n/c /a/z\n", "itself DENY"),
    ],
)
def test_rejects_with_file_and_line(tmp_path, text, why):
    f = tmp_path / "mounts"
    f.write_text("# ok\n" + text)
    with pytest.raises(MountListError) as exc:
        MountTable(parse_file(str(f)))
    assert f"{f}:" in str(exc.value) and why in str(exc.value)
    if why != "itself DENY":
        assert f"{f}:2:" in str(exc.value)


def test_missing_file_and_bad_option():
    with pytest.raises(MountListError, match="cannot read"):
        parse_file("/nonexistent/mounts")
    with pytest.raises(MountListError, match="VIRTUAL=/REAL"):
        parse_option("/tmp")
    assert parse_option("/tmp=/x/y/").target == "/x/y"


def test_later_lines_win_not_longest_prefix():
    t = table("/ DENY\n/usr LOCAL\n")
    assert t.match("/usr/bin/ls").action == LOCAL
    assert t.match("/etc/passwd").action == DENY
    t = table("/usr LOCAL\n/ DENY\n")  # the other order: '/' comes later and wins
    assert t.match("/usr/bin/ls").action == DENY
    t = table("/a /x\n/a/b /y\n")
    assert t.real("/a/b/c", t.match("/a/b/c")) == "/y/c"
    assert t.real("/a/bc", t.match("/a/bc")) == "/x/bc"  # prefixes end at a '/'
    assert t.match("/ab") is None


def test_trailing_slash_prefix_matches_only_below():
    t = table("/etc/ DENY\n")
    assert t.match("/etc") is None and t.match("/etc/passwd").action == DENY


def test_targets_resolve_through_earlier_entries_and_reverse():
    t = table("/scratch /big/scratch\n/tmp /scratch/t42\n")
    assert t.match("/tmp/f").target == "/big/scratch/t42"
    assert t.real("/tmp/f", t.match("/tmp/f")) == "/big/scratch/t42/f"
    assert t.logical("/big/scratch/t42/f") == "/tmp/f"
    assert t.logical("/big/scratch/t42") == "/tmp"
    assert t.logical("/big/scratch/other") == "/scratch/other"
    assert t.logical("/usr/bin") == "/usr/bin"
    root = table("/ /chroot\n")
    assert root.real("/etc/x", root.match("/etc/x")) == "/chroot/etc/x"
    assert root.logical("/chroot/etc/x") == "/etc/x" and root.logical("/chroot") == "/"


# -- the walk ------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """host/: secret/key, pub/file, links into secret, a redirect target."""
    (tmp_path / "secret" / "sub").mkdir(parents=True)
    (tmp_path / "secret" / "key").write_text("k")
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / "file").write_text("f")
    (tmp_path / "pub" / "to-secret").symlink_to(tmp_path / "secret")
    (tmp_path / "pub" / "rel-secret").symlink_to("../secret/key")
    (tmp_path / "pub" / "to-virt").symlink_to("/virt/x")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x").write_text("x")
    (tmp_path / "real" / "up").symlink_to("..")
    return tmp_path


def policy(tree: Path, extra: str = "") -> Policy:
    return Policy(table(f"/virt {tree}/real\n{tree}/secret DENY\n{tree}/gone ENOENT\n{extra}"))


def test_walk_denies_through_every_route(tree):
    p = policy(tree)
    for path in (
        f"{tree}/secret/key",
        f"{tree}/secret",
        f"{tree}/pub/to-secret/key",
        f"{tree}/pub/rel-secret",
        f"{tree}/pub/../secret/key",
        f"{tree}/secret/sub/../../pub/file",  # walking through the denied tree is denied
        f"{tree}//pub/./to-secret/",
    ):
        assert p.walk(path, True).err == errno.EACCES, path
    assert p.walk(f"{tree}/gone/x", True).err == errno.ENOENT
    # not following the last link: the link itself is not in the denied tree
    w = p.walk(f"{tree}/pub/to-secret", False)
    assert not w.err and w.real == f"{tree}/pub/to-secret" and not w.changed
    assert not p.walk(f"{tree}/pub/file", True).err


def test_walk_redirects_and_dotdot_is_logical(tree):
    p = policy(tree)
    w = p.walk("/virt/x", True)
    assert (w.real, w.logical, w.changed) == (f"{tree}/real/x", "/virt/x", True)
    w = p.walk(f"{tree}/pub/to-virt", True)  # a host link into the virtual tree
    assert w.real == f"{tree}/real/x"
    assert p.walk("/virt/..", True).real == "/"  # not the host parent of the target
    assert p.walk("/virt/up", True).real == "/"  # a relative link '..' in the target, logically
    w = p.walk("/virt/missing/../x", True)  # the kernel reports the missing component
    assert w.real == f"{tree}/real/missing/../x"
    assert p.logical(f"{tree}/real/x") == "/virt/x"
    w = p.walk("/virt/", True)
    assert w.real == f"{tree}/real/"


def test_walk_acl_and_exceptions(tree):
    p = policy(tree, f"{tree}/pub r\n{tree}/secret/sub LOCAL\n")
    assert p.walk(f"{tree}/pub/file", True, R).err == 0
    assert p.walk(f"{tree}/pub/file", True, W).err == errno.EACCES
    assert p.walk(f"{tree}/secret/sub", True).err == 0  # a later exception below a denial
    assert p.walk(f"{tree}/secret/key", True).err == errno.EACCES
    assert p.walk(f"{tree}/secret", True).err == errno.EACCES  # the denied directory itself


def test_walk_loops_and_cvmfs(tree):
    (tree / "pub" / "loop").symlink_to("loop")
    p = policy(tree)
    assert p.walk(f"{tree}/pub/loop", True).err == errno.ELOOP
    (tree / "pub" / "sw").symlink_to("/cvmfs/sw.example.org/bin")
    w = p.walk(f"{tree}/pub/sw/tool", True)
    assert w.cvmfs == "/cvmfs/sw.example.org/bin/tool"


def test_sandbox_preset_and_proc_self():
    p = Policy(MountTable([*sandbox_lines(), deny_line("/var/empty-never")]), own_proc=True)
    me = os.getpid()
    assert p.walk("/home", True).err == errno.EACCES
    assert p.walk("/root/.ssh", True).err == errno.EACCES
    assert p.walk("/sys/kernel", True).err == errno.EACCES
    assert p.walk("/dev", True).err == errno.EACCES
    assert p.walk("/dev/sda", True).err == errno.EACCES
    assert p.walk("/dev/null", True).err == 0 and p.walk("/dev/urandom", True).err == 0
    assert p.walk("/proc/1/environ", True, R, tgid=me, tid=me).err == errno.EACCES
    w = p.walk("/proc/self/status", True, R, tgid=me, tid=me)
    assert not w.err and w.real == f"/proc/{me}/status"
    w = p.walk("/dev/stdin", True, R, tgid=me, tid=me)
    assert not w.err and w.real == f"/proc/{me}/fd/0"
    assert p.walk("/proc/thread-self/comm", True, R, tgid=me, tid=me).real == f"/proc/{me}/task/{me}/comm"
    assert p.walk("/var/empty-never/x", True).err == errno.EACCES
    assert p.walk("/usr/bin/env", True).err == 0


def test_walks_of_paths_only_root_can_change_are_remembered_until_the_job_writes(tree):
    """``find -ls`` stats /etc/localtime (a symlink) once per entry: after the first, one lookup."""
    p = Policy(table("/home DENY\n"))
    system = "/usr/bin/env"  # root's, in directories closed to others
    first = p.walk(system, True, R)
    assert not first.err and p.walk(system, True, R) is first
    assert p.walk("/home/x", True, R) is p.walk("/home/x", True, R)  # denials too
    mine = f"{tree}/pub/file"  # below /tmp, which anybody can change: walked every time
    assert p.walk(mine, True, R) is not p.walk(mine, True, R)
    assert p.walk(f"/proc/{os.getpid()}/status", True, R) is not p.walk(
        f"/proc/{os.getpid()}/status", True, R
    )
    p.walk(f"{tree}/pub/new", False, W)  # a write by the job: under root, it may change anything
    again = p.walk(system, True, R)
    if os.geteuid() == 0:
        assert again is not first and again == first
    else:
        assert again is first  # only root changes those directories, and the job is not root


def test_a_host_target_is_taken_as_it_stands():
    """--private-tmp's directory is a host path: neither denied nor redirected by earlier entries."""
    t = table("/home DENY\n/home/u/.cache /elsewhere\n")
    t.add(Line("/tmp", REDIRECT, "/home/u/.cache/tmp/job-1", RWX, False, "--private-tmp", host_target=True))
    assert t.real("/tmp/f", t.match("/tmp/f")) == "/home/u/.cache/tmp/job-1/f"
    assert t.logical("/home/u/.cache/tmp/job-1/f") == "/tmp/f"
    assert t.match("/home/u/x").action == DENY
