"""A job that reads files through the client: ``python -m tests.integration.reader FQRN PATH...``.

Configured by CVMFS_* environment variables like any client; prints ``sha256  path`` per file,
so concurrent-reader tests run real, separate processes.
"""

from __future__ import annotations

import hashlib
import sys

from cvmfs_client.client import open_repository


def main(argv: list[str]) -> int:
    fqrn, paths = argv[0], argv[1:]
    with open_repository(fqrn) as repo:
        for path in paths:
            with repo.open(path) as f:
                digest = hashlib.sha256()
                while block := f.read(1 << 20):
                    digest.update(block)
            print(f"{digest.hexdigest()}  {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
