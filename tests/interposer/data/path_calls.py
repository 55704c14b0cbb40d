"""Random path calls on a tree, one line of outcome each (tests/interposer/test_coreutils.py).

    python3 path_calls.py SEED ROOT COUNT NAMES DIRS

NAMES and DIRS: files of relative paths, one per line (the tree's entries; its directories).
Run on the source tree natively and on /cvmfs under ``cvmfs-client run``, the outputs match.
"""

import os
import random
import stat as S
import sys

seed, root, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
with open(sys.argv[4]) as f:
    names = [n for n in f.read().split("\n") if n]
with open(sys.argv[5]) as f:
    dirs = [""] + [d for d in f.read().split("\n") if d]
rnd = random.Random(seed)
# symlinks whose targets differ by design between /cvmfs and the source tree (an absolute
# /cvmfs target, a variant $(VAR) one): left out of listings
UNEQUAL = {"abs-link", "current"}
ODD = [
    ".",
    "nope",
    "cases/nope",
    "cases/rel-link/",
    "cases/dir-link/",
    "cases/dir-link/..",
    "cases//twin-a.dat",
    "./cases/./twin-b.dat",
    "cases/empty.txt/",
    "bin/../cases",
    "cases/broken-link",
    "deep/d1/../d1/d2",
    "cases/dir-link/.",
    "cases/rel-link/.",
    "cases/empty.txt/.",
    "cases/empty.txt/..",
    "deep//d1///d2/",
    "cases/dir-link/../dir-link",
]


def path():
    r = rnd.random()
    if r < 0.55:
        return rnd.choice(names)
    if r < 0.8:
        return rnd.choice(ODD)
    a = rnd.choice(names).split("/")
    return "/".join(a[: rnd.randint(1, len(a))]) + rnd.choice(["", "/", "/..", "/.", "/x", "/../.", "//"])


def fmt(st):
    d = S.S_ISDIR(st.st_mode)  # directories: sizes and times are the shadow tree's (README)
    return (S.filemode(st.st_mode), "D" if d else st.st_size, st.st_nlink, "D" if d else int(st.st_mtime))


fds = {}


def dfd(d):
    if d not in fds:
        fds[d] = os.open(os.path.join(root, d) if d else root, os.O_RDONLY | os.O_DIRECTORY)
    return fds[d]


def at(d):
    os.chdir(os.path.join(root, d) if d else root)


def opened(fd):
    try:
        st = os.fstat(fd)
        return fmt(st), sorted(os.listdir(fd))[:5] if S.S_ISDIR(st.st_mode) else os.read(fd, 8)
    finally:
        os.close(fd)


for i in range(count):
    op, p, d = rnd.randrange(10), path(), rnd.choice(dirs)
    follow = rnd.random() < 0.5
    try:
        if op == 0:
            extra = rnd.choice([0, os.O_NOFOLLOW, os.O_DIRECTORY, os.O_DIRECTORY | os.O_NOFOLLOW])
            flags = os.O_RDONLY | extra
            out = (d, flags, opened(os.open(p, flags, dir_fd=dfd(d))))
        elif op == 1:
            out = (d, os.access(p, os.R_OK, dir_fd=dfd(d), follow_symlinks=follow))
        elif op == 2:
            out = (d, fmt(os.stat(p, dir_fd=dfd(d), follow_symlinks=follow)))
        elif op == 3:
            at(d)
            out = (d, fmt(os.lstat(p)), os.path.exists(p))
        elif op == 4:
            at(d)
            out = (d, opened(os.open(p, os.O_RDONLY)))
        elif op == 5:
            with os.scandir(os.path.join(root, p)) as it:
                shown = (e for e in it if e.name not in UNEQUAL)
                out = sorted((e.name, e.is_dir(), e.is_symlink(), e.is_file()) for e in shown)[:6]
        elif op == 6:
            out = (d, os.readlink(p, dir_fd=dfd(d)))
        elif op == 7:
            at(d)
            out = (d, os.path.realpath(p).replace(root, "ROOT"))
        elif op == 8:
            fd = os.open(os.path.join(root, p), os.O_PATH | os.O_NOFOLLOW)
            try:
                out = fmt(os.fstat(fd)), os.readlink(f"/proc/self/fd/{fd}").replace(root, "ROOT")
            finally:
                os.close(fd)
        else:
            q = os.path.join(root, p)
            out = [os.path.isdir(q), os.path.isfile(q), os.path.islink(q)]
    except OSError as e:
        out = ("ERR", e.errno)
    print(i, op, repr(p), out)
