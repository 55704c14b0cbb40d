"""Local store of verified, decoded objects, as plain files a job can open and mmap.

Layout follows the real client's POSIX cache (spec 7.9): ``<dir>/XX/rest`` named by the hex id
without the type char, content decompressed and already verified; ``txn/`` holds downloads in
flight. A file appears under its final name only by ``rename`` after verification, so a reader
never sees partial or unverified bytes, and a process killed mid-download leaves only a stray
temporary file in ``txn/``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .fetcher import ObjectSource
from .hashing import ContentHash, ObjectType
from .objects import Compression, ObjectDecoder


class ObjectStore:
    """A directory of verified objects; safe for several processes (atomic rename, no locks)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.txn = self.directory / "txn"
        self.txn.mkdir(parents=True, exist_ok=True)

    def path_for(self, content_hash: ContentHash) -> Path:
        return self.directory / content_hash.cache_name()

    def get(
        self,
        content_hash: ContentHash,
        source: ObjectSource,
        kind: ObjectType = ObjectType.FILE,
        compression: Compression = Compression.ZLIB,
        expected_size: int | None = None,
    ) -> Path:
        """Local path of the verified object, downloading it first if needed."""
        final = self.path_for(content_hash)
        if final.exists():
            return final
        name = content_hash.object_path(kind)

        def consume(pieces: Iterator[bytes], url: str) -> Path:
            return self._write_verified(pieces, url, content_hash, compression, expected_size, final)

        return source.fetch(name, consume)

    def _write_verified(
        self,
        pieces: Iterator[bytes],
        url: str,
        content_hash: ContentHash,
        compression: Compression,
        expected_size: int | None,
        final: Path,
    ) -> Path:
        fd, tmp = tempfile.mkstemp(dir=self.txn, prefix=content_hash.hex[:12] + ".")
        try:
            with os.fdopen(fd, "wb") as out:
                dec = ObjectDecoder(content_hash, compression, out.write, url, expected_size)
                for piece in pieces:
                    dec.feed(piece)
                dec.finish()
            os.chmod(tmp, 0o444)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final

    def temporary(self, prefix: str) -> tuple[int, str]:
        """A temp file inside this store's ``txn`` (same file system, so rename is atomic)."""
        return tempfile.mkstemp(dir=self.txn, prefix=prefix)
