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


def read_interp(path: bytes) -> Interp | None:
    """PT_INTERP of a 64-bit little-endian ELF file, or ``None`` (static, not ELF, unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_SIZE)
            if elf_class(head) != ELFCLASS64 or head[5] != 1:
                return None
            (phoff,) = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            if phentsize < 56 or phnum == 0 or phnum > 4096:
                return None
            f.seek(phoff)
            table = f.read(phentsize * phnum)
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
                f.seek(p_offset)
                raw = f.read(p_filesz)
                end = raw.find(b"\0")
                return Interp(p_offset, p_filesz, raw[:end] if end >= 0 else raw)
    except (OSError, struct.error):
        return None
    return None


def patch_interp(data: bytearray, interp: Interp, new: bytes) -> None:
    """Replace the interpreter string in a program's bytes (padded with NULs to the same size)."""
    if len(new) + 1 > interp.size:
        raise ValueError(f"interpreter path {new!r} does not fit in {interp.size - 1} bytes")
    data[interp.offset : interp.offset + interp.size] = new + b"\0" * (interp.size - len(new))
