"""ELF facts the tracer needs at ``execve``: the class, and the program interpreter (PT_INTERP).

The kernel opens a dynamic program's interpreter (``ld-linux-x86-64.so.2``) itself, by the path in
PT_INTERP, with no syscall the tracer could rewrite. Software stacks built for /cvmfs (EESSI,
Gentoo Prefix) name an interpreter inside /cvmfs, which does not exist for the kernel. The
tracer then runs a copy of the program whose PT_INTERP names a short symlink to the verified
local copy of that interpreter (the string must fit in the original segment, hence "short").

Format facts (System V gABI, ELF-64): e_phoff at 0x20 (8 bytes), e_phentsize at 0x36, e_phnum
at 0x38 (2 bytes each); program header: p_type (4), p_flags (4), p_offset (8), p_vaddr, p_paddr,
p_filesz (8) ...; PT_INTERP = 3; the interpreter string is NUL-terminated within p_filesz.
"""

from __future__ import annotations

import os
import struct

from cvmfs_client.records import FrozenRecord

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
PT_INTERP = 3
HEAD_SIZE = 4096  # enough for the ELF header and the program headers of ordinary programs
_MAX_INTERP = 4096


class Interp(FrozenRecord):
    """A program's PT_INTERP string and its room in the file (a patched path must fit there)."""

    __slots__ = ("offset", "size", "path")

    def __init__(self, offset: int, size: int, path: bytes) -> None:
        self.offset = offset  # file offset of the string
        self.size = size  # bytes available, NUL included
        self.path = path


def elf_class(head: bytes) -> int | None:
    """ELFCLASS32/64 for an ELF file's first bytes, ``None`` for anything else."""
    if head[:4] != ELF_MAGIC or len(head) < 5:
        return None
    return head[4]


def read_at(path: bytes, offset: int = 0, size: int = HEAD_SIZE) -> bytes | None:
    """``size`` bytes of a file from ``offset`` (fewer at its end), ``None`` if unreadable.

    One open and one ``pread``: the tracer reads a program's first bytes at every ``execve``,
    and ``open()``'s buffered file object costs several more syscalls and ~20 us of Python.
    Opened without blocking and without taking a controlling terminal: the path may name a
    FIFO or a tty.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.pread(fd, size, offset)
    except (OSError, OverflowError):
        return None
    finally:
        os.close(fd)


def read_interp(path: bytes, head: bytes | None = None) -> Interp | None:
    """PT_INTERP of a 64-bit little-endian ELF file, or ``None`` (static, not ELF, unreadable).

    ``head``: the file's first bytes when the caller read them already (:func:`read_at`);
    the file is read again only for what lies beyond them.
    """
    first = read_at(path) if head is None else head
    if first is None:
        return None

    def at(offset: int, size: int) -> bytes:
        if offset + size <= len(first):
            return first[offset : offset + size]
        more = read_at(path, offset, size)
        return more if more is not None else b""

    try:
        if elf_class(first) != ELFCLASS64 or first[5] != 1:
            return None
        (phoff,) = struct.unpack_from("<Q", first, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", first, 0x36)
        if phentsize < 56 or phnum == 0 or phnum > 4096:
            return None
        table = at(phoff, phentsize * phnum)
        for i in range(phnum):
            base = i * phentsize
            if base + 56 > len(table):
                return None
            (p_type,) = struct.unpack_from("<I", table, base)
            if p_type != PT_INTERP:
                continue
            (p_offset,) = struct.unpack_from("<Q", table, base + 8)
            (p_filesz,) = struct.unpack_from("<Q", table, base + 32)
            if not 0 < p_filesz <= _MAX_INTERP:
                return None
            raw = at(p_offset, p_filesz)
            if len(raw) < p_filesz:
                return None  # the file ends inside the string
            end = raw.find(b"\0")
            return Interp(p_offset, p_filesz, raw[:end] if end >= 0 else raw)
    except (struct.error, IndexError, OverflowError):
        return None
    return None


def patch_interp(data: bytearray, interp: Interp, new: bytes) -> None:
    """Replace the interpreter string in a program's bytes (padded with NULs to the same size)."""
    if len(new) + 1 > interp.size:
        raise ValueError(f"interpreter path {new!r} does not fit in {interp.size - 1} bytes")
    data[interp.offset : interp.offset + interp.size] = new + b"\0" * (interp.size - len(new))
