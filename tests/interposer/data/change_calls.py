"""Random changes on a tree, one line of errno each (tests/interposer/test_semantics.py).

    python3 change_calls.py SEED ROOT COUNT NAMES

NAMES: a file of the tree's relative paths, one per line. Run on a read-only bind mount of the
source tree and on /cvmfs under ``cvmfs-client run``, the outputs match: every change fails
with the errno the kernel of a read-only mount gives, in its order of checks.
"""

import errno
import os
import random
import sys

seed, root, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
with open(sys.argv[4]) as f:
    names = [x for x in f.read().split("\n") if x]
rnd = random.Random(seed)
ODD = [
    ".", "nope", "nope/x", "cases/nope", "cases/empty.txt/", "cases/empty.txt/x", "cases/rel-link",
    "cases/broken-link", "cases/dir-link", "cases/dir-link/", "cases/emptydir", "cases/emptydir/", "cases/..",
    "deep/d1/d2", "bin/../cases/new",
]  # fmt: skip
OPEN_FLAGS = [
    os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_CREAT, os.O_RDONLY | os.O_TRUNC,
    os.O_WRONLY | os.O_CREAT | os.O_EXCL, os.O_RDONLY | os.O_CREAT, os.O_WRONLY | os.O_DIRECTORY,
]  # fmt: skip


def path():
    r = rnd.random()
    if r < 0.5:
        return rnd.choice(names)
    if r < 0.8:
        return rnd.choice(ODD)
    return rnd.choice(names) + rnd.choice(["/new", "/", "/.", "/..", "x"])


def code(f, *a, **k):
    try:
        r = f(*a, **k)
        if f is os.open:
            os.close(r)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


cases = os.open(root + "/cases", os.O_RDONLY | os.O_DIRECTORY)
for i in range(count):
    p = path()
    q = os.path.join(root, p)
    op = rnd.randrange(16)
    if op == 0:
        out = code(os.mkdir, q)
    elif op == 1:
        out = code(os.rmdir, q)
    elif op == 2:
        out = code(os.unlink, q)
    elif op == 3:
        out = code(os.rename, q, os.path.join(root, rnd.choice(names + ODD)))
    elif op == 4:
        out = code(os.symlink, "t", q)
    elif op == 5:
        out = code(os.link, os.path.join(root, rnd.choice(names)), q)
    elif op == 6:
        out = code(os.chmod, q, 0o644)
    elif op == 7:
        out = code(os.utime, q)
    elif op == 8:
        out = code(os.truncate, q, 0)
    elif op == 9:
        out = code(os.setxattr, q, "user.x", b"1")
    elif op == 10:
        out = code(os.open, q, rnd.choice(OPEN_FLAGS))
    elif op == 11:
        out = code(os.chown, q, os.getuid(), os.getgid())
    elif op == 12:
        out = code(os.mknod, q, 0o600)
    elif op == 13:
        out = code(os.unlink, os.path.basename(p) or "x", dir_fd=cases)
    elif op == 14:
        out = code(os.mkdir, os.path.basename(p) or "x", dir_fd=cases)
    else:
        out = code(os.removexattr, q, "user.x")
    print(i, op, repr(p), out)
