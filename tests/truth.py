"""Compare a mounted :class:`Repository` with a truth listing of the real-publisher fixtures."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cvmfs_client.repository import Repository

# revision -> (truth file suffix, how to pin it); revision 3 is the newest (no pin needed).
REVISIONS = {
    "tools.example.org": {
        3: ("truth.tsv", None),
        2: ("rev2.truth.tsv", "trunk-previous"),
        1: ("rev1.truth.tsv", "generic-2026-11-24T17:26:07Z"),
    },
    "tiny-shake.example.org": {
        3: ("truth.tsv", None),
        2: ("rev2.truth.tsv", "trunk-previous"),
        1: ("rev1.truth.tsv", "generic-2026-11-24T17:26:15Z"),
    },
}
ROOT_HASHES = {
    "tools.example.org": {
        1: "2137ffdaaa221802fa3bacc2714e7500d9195c17",
        2: "280cd917f5fb67cfa2dfb4e8f5262c4b6b66cc4d",
        3: "f916797dd4979fc3eb28e82e93f26aa3995edb2b",
    },
    "tiny-shake.example.org": {
        1: "61f1f853486c92620d2dc32ae7a5cd4a084f5e19-shake128",
        2: "5c55e8e3cd8edd0297206ebcfbbacf1d7a846341-shake128",
        3: "43f9ccccc3b29845f1b1cea114c7bb21c358085b-shake128",
    },
}


@dataclass(frozen=True)
class TruthRow:
    path: str
    type: str
    mode: int
    size: int
    sha256: str
    symlink: str
    mtime: int
    nlink: int | None


def load_truth(path: Path) -> dict[str, TruthRow]:
    rows: dict[str, TruthRow] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        f = line.split("\t")
        rows[f[0]] = TruthRow(
            f[0], f[1], int(f[2], 8), int(f[3]), f[4], f[5], int(f[6]), int(f[7]) if f[7] else None
        )
    return rows


def compare_with_truth(repo: Repository, truth: dict[str, TruthRow]) -> list[str]:
    """Every difference between what the client shows and the truth, as readable lines."""
    problems: list[str] = []
    seen = {"." if not e.path else e.path[1:]: e for e in repo.walk("")}
    if set(seen) != set(truth):
        problems.append(
            f"paths differ: missing {sorted(set(truth) - set(seen))}, extra {sorted(set(seen) - set(truth))}"
        )
    for rel, want in sorted(truth.items()):
        e = seen.get(rel)
        if e is None:
            continue
        got_type = "d" if e.is_dir else "l" if e.is_symlink else "f"
        got = (got_type, e.mode & 0o7777, e.mtime)
        if got != (want.type, want.mode, want.mtime):
            problems.append(f"{rel}: (type, mode, mtime) {got} != {(want.type, want.mode, want.mtime)}")
        if want.type == "l":
            if e.symlink != want.symlink or len(e.symlink.encode()) != want.size:
                problems.append(f"{rel}: symlink {e.symlink!r} != {want.symlink!r}")
        elif want.type == "f":
            data = repo.read_file(e.path)
            if (
                e.size != want.size
                or len(data) != want.size
                or hashlib.sha256(data).hexdigest() != want.sha256
            ):
                problems.append(f"{rel}: content differs (size {e.size}/{len(data)} vs {want.size})")
        if want.nlink is not None and e.nlink != want.nlink:
            problems.append(f"{rel}: nlink {e.nlink} != {want.nlink}")
    return problems
