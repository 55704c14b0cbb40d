"""ELF facts read at ``execve`` (``interposer/elf.py``), on real programs of this machine and on
copies whose program headers or interpreter string lie beyond the first bytes read."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from interposer import elf

TRUE = Path("/bin/true")
LOADER = b"/lib64/ld-linux-x86-64.so.2"


def test_interpreter_of_a_dynamic_program():
    interp = elf.read_interp(bytes(TRUE))
    assert interp is not None and interp.path == LOADER
    data = TRUE.read_bytes()
    assert data[interp.offset : interp.offset + interp.size].rstrip(b"\0") == LOADER
    # the same answer from a head the caller read already, and from a head of 64 bytes only
    # (the program headers and the string then come from the file)
    assert elf.read_interp(bytes(TRUE), elf.read_at(bytes(TRUE))) == interp
    assert elf.read_interp(bytes(TRUE), data[:64]) == interp


def test_interpreter_string_beyond_the_head_is_read_from_the_file(tmp_path):
    """A program whose program header table and PT_INTERP string sit past the first 4096
    bytes (a linker script can put them anywhere): moved copies of /bin/true's."""
    data = bytearray(TRUE.read_bytes())
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    table = bytes(data[phoff : phoff + phentsize * phnum])
    new_interp = b"/cvmfs/sw.example.org/lib64/ld-linux-x86-64.so.2\0"
    at_table = len(data) + 8192
    at_string = at_table + len(table) + 100
    data += b"\0" * (at_string + len(new_interp) - len(data))
    data[at_table : at_table + len(table)] = table
    data[at_string : at_string + len(new_interp)] = new_interp
    struct.pack_into("<Q", data, 0x20, at_table)
    for i in range(phnum):
        base = at_table + i * phentsize
        if struct.unpack_from("<I", data, base)[0] == elf.PT_INTERP:
            struct.pack_into("<Q", data, base + 8, at_string)
            struct.pack_into("<Q", data, base + 32, len(new_interp))
    prog = tmp_path / "moved"
    prog.write_bytes(data)
    head = elf.read_at(bytes(prog))
    assert head is not None and len(head) == elf.HEAD_SIZE
    got = elf.read_interp(bytes(prog), head)
    assert got == elf.Interp(at_string, len(new_interp), new_interp[:-1])
    # cut short inside the string: no interpreter rather than a wrong one
    prog.write_bytes(data[: at_string + 10])
    assert elf.read_interp(bytes(prog)) is None


@pytest.mark.parametrize(
    "content",
    [
        b"#!/bin/sh\necho hi\n",
        b"",
        b"\x7fELF",
        b"\x7fELF\x01\x01\x01" + b"\0" * 60,
        b"\x7fELF\x02\x01" + b"\xff" * 100,
    ],
    ids=["script", "empty", "magic-only", "32-bit", "garbage-headers"],
)
def test_no_interpreter_for_what_is_not_a_64_bit_dynamic_program(tmp_path, content):
    path = tmp_path / "f"
    path.write_bytes(content)
    assert elf.read_interp(bytes(path)) is None


def test_static_program_and_unreadable_paths(tmp_path):
    busybox = shutil.which("busybox")
    if busybox is not None and elf.elf_class(Path(busybox).read_bytes()[:5]) == elf.ELFCLASS64:
        assert elf.read_interp(busybox.encode()) is None  # Debian's busybox is static
    assert elf.read_at(bytes(tmp_path / "missing")) is None
    assert elf.read_interp(bytes(tmp_path / "missing")) is None
    assert elf.read_at(bytes(tmp_path)) is None  # a directory: EISDIR on read
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert elf.read_at(bytes(fifo)) in (b"", None)  # no writer: must not block
