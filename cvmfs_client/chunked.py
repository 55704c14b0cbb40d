"""A chunked file read as one stream over its verified chunks, with no assembled copy.

Why: opening a chunked file used to build ``assembled/...`` first, the whole file written once
more (and read back or hashed for the index) before its first byte was read: for a 20 MiB file,
20 MiB more to write and hash than the chunks themselves, and a second copy in the cache. The
real client serves chunked files chunk by chunk, and so does :class:`ChunkedReader`. Each chunk
comes from the node cache as any object does (verified when it was stored, size-checked on every
use) and is opened when the read position reaches it. ``Repository.materialize`` still assembles,
for callers that need one file (a path handed to a job).
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Callable, Sequence
from typing import BinaryIO

from .errors import CorruptObject


class ChunkedReader(io.RawIOBase):
    """Read-only, seekable raw stream over ``spans`` (offset, size) of a file of ``size`` bytes.

    ``open_chunk(i)`` opens span ``i``'s verified object. Spans that do not tile the file, and a
    chunk that ends before its span does (changed on disk behind the cache's back), raise
    :class:`CorruptObject` naming ``source``: never a short or wrong file. Wrap it in
    ``io.BufferedReader`` for the usual file API.
    """

    def __init__(
        self,
        spans: Sequence[tuple[int, int]],
        size: int,
        open_chunk: Callable[[int], BinaryIO],
        source: str,
    ) -> None:
        super().__init__()
        end = 0
        for offset, length in spans:
            if offset != end or length <= 0:
                raise CorruptObject(source, f"chunk {offset}+{length} leaves a gap or overlaps at {end}")
            end += length
        if end != size:
            raise CorruptObject(source, f"chunks cover {end} bytes, the file has {size}")
        self._starts = [offset for offset, _ in spans]
        self._sizes = [length for _, length in spans]
        self._size = size
        self._open_chunk = open_chunk
        self._source = source
        self._pos = 0
        self._index = -1  # span of the open chunk file
        self._file: BinaryIO | None = None
        self._file_pos = 0  # read position inside the open chunk file

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"{self._source}: I/O operation on a closed file")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        self._check_open()
        if self._pos >= self._size or not len(buffer):
            return 0
        index = bisect.bisect_right(self._starts, self._pos) - 1
        start, length = self._starts[index], self._sizes[index]
        within = self._pos - start
        if index != self._index or self._file is None:
            self._switch(index)
        assert self._file is not None
        if within != self._file_pos:
            self._file.seek(within)
            self._file_pos = within
        want = min(len(buffer), length - within)
        with memoryview(buffer) as view:
            got = self._file.readinto(view[:want])
        if not got:
            raise CorruptObject(self._source, f"chunk {index} ends at byte {within} of {length}")
        self._file_pos += got
        self._pos += got
        return got

    def _switch(self, index: int) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._file = self._open_chunk(index)
        self._index = index
        self._file_pos = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()
