"""Everything that depends on x86-64: syscall numbers, the register file, the in-process stub.

Only this module knows register names and numbers; the rest of the interposer speaks of
"argument 0..5", "the syscall number" and "the return value". A port to aarch64 would add a
sibling module with the same names (``SYSCALL``, ``Regs``, ``arg``/``set_arg``, ``STUB_CODE``...).

Facts relied on (arch/x86/entry/syscalls/syscall_64.tbl, arch/x86/include/uapi/asm/ptrace.h):
- arguments travel in rdi, rsi, rdx, r10, r8, r9; the number in rax (``orig_rax`` at a stop);
- ``syscall`` is two bytes (0f 05) and clobbers only rax, rcx and r11: the argument registers
  keep their values, so a rewritten pointer must be put back after the call (glibc and ld.so
  inline syscalls and reuse the register; a restarted syscall re-reads it);
- at a seccomp stop, ``orig_rax = -1`` skips the call and ``rax`` becomes its return value.
"""

from __future__ import annotations

import ctypes
import os
import struct

AUDIT_ARCH = 0xC000003E  # AUDIT_ARCH_X86_64 = EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
X32_SYSCALL_BIT = 0x40000000  # x32 ABI syscalls share the arch value: refuse them like i386 ones
SYSCALL_INSN_LEN = 2

# Syscall numbers (asm/unistd_64.h). Names follow the kernel's; newer calls (6.x) are included
# because a kernel that has them lets programs reach paths through them.
SYSCALL: dict[str, int] = {
    "read": 0,
    "write": 1,
    "open": 2,
    "close": 3,
    "stat": 4,
    "fstat": 5,
    "lstat": 6,
    "mmap": 9,
    "mprotect": 10,
    "munmap": 11,
    "access": 21,
    "dup": 32,
    "getpid": 39,
    "clone": 56,
    "fork": 57,
    "vfork": 58,
    "execve": 59,
    "kill": 62,
    "fcntl": 72,
    "truncate": 76,
    "getcwd": 79,
    "chdir": 80,
    "fchdir": 81,
    "rename": 82,
    "mkdir": 83,
    "rmdir": 84,
    "creat": 85,
    "link": 86,
    "unlink": 87,
    "symlink": 88,
    "readlink": 89,
    "chmod": 90,
    "fchmod": 91,
    "chown": 92,
    "fchown": 93,
    "lchown": 94,
    "ptrace": 101,
    "setgroups": 116,
    "setfsuid": 122,
    "setfsgid": 123,
    "capget": 125,
    "capset": 126,
    "utime": 132,
    "mknod": 133,
    "uselib": 134,
    "statfs": 137,
    "pivot_root": 155,
    "prctl": 157,
    "chroot": 161,
    "acct": 163,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "quotactl": 179,
    "setxattr": 188,
    "lsetxattr": 189,
    "fsetxattr": 190,
    "getxattr": 191,
    "lgetxattr": 192,
    "listxattr": 194,
    "llistxattr": 195,
    "removexattr": 197,
    "lremovexattr": 198,
    "fremovexattr": 199,
    "getdents64": 217,
    "utimes": 235,
    "inotify_add_watch": 254,
    "openat": 257,
    "mkdirat": 258,
    "mknodat": 259,
    "fchownat": 260,
    "futimesat": 261,
    "newfstatat": 262,
    "unlinkat": 263,
    "renameat": 264,
    "linkat": 265,
    "symlinkat": 266,
    "readlinkat": 267,
    "fchmodat": 268,
    "faccessat": 269,
    "unshare": 272,
    "utimensat": 280,
    "fanotify_mark": 301,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "renameat2": 316,
    "seccomp": 317,
    "execveat": 322,
    "statx": 332,
    "io_uring_setup": 425,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "pidfd_open": 434,
    "clone3": 435,
    "openat2": 437,
    "pidfd_getfd": 438,
    "faccessat2": 439,
    "mount_setattr": 442,
    "fchmodat2": 452,
    "setxattrat": 463,
    "getxattrat": 464,
    "listxattrat": 465,
    "removexattrat": 466,
    "open_tree_attr": 467,
    "file_getattr": 468,
    "file_setattr": 469,
}
NR = SYSCALL  # short alias for hot paths


class Regs(ctypes.Structure):
    """``struct user_regs_struct`` (sys/user.h), the PTRACE_GETREGS/SETREGS layout."""

    _fields_ = [
        (name, ctypes.c_ulonglong)
        for name in (
            "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
            "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
            "gs_base", "ds", "es", "fs", "gs",
        )
    ]  # fmt: skip


ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
_MASK64 = (1 << 64) - 1


def syscall_nr(regs: Regs) -> int:
    """The number of the syscall the tracee stopped in (``-1`` once skipped)."""
    nr = regs.orig_rax
    return nr - (1 << 64) if nr >= 1 << 63 else nr


def arg(regs: Regs, i: int) -> int:
    """Argument ``i`` as an unsigned 64-bit value (callers narrow ints themselves)."""
    return getattr(regs, ARG_REGS[i])


def args(regs: Regs) -> tuple[int, int, int, int, int, int]:
    return (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)


def set_arg(regs: Regs, i: int, value: int) -> None:
    setattr(regs, ARG_REGS[i], value & _MASK64)


def retval(regs: Regs) -> int:
    """The return value at a syscall-exit stop, signed (``-errno`` on failure)."""
    v = regs.rax
    return v - (1 << 64) if v >= 1 << 63 else v


def set_retval(regs: Regs, value: int) -> None:
    regs.rax = value & _MASK64


def skip_syscall(regs: Regs, result: int) -> None:
    """At a seccomp stop: do not run the call, return ``result`` to the program instead."""
    regs.orig_rax = _MASK64  # -1
    regs.rax = result & _MASK64


# struct stat (arch/x86/include/uapi/asm/stat.h), what stat/lstat/fstat/newfstatat write:
# dev, ino, nlink, mode, uid, gid, pad, rdev, size, blksize, blocks, then a/m/ctime as
# (seconds, nanoseconds), then three unused longs.
_STAT = struct.Struct("<QQQIII4xQqqqqqqqqq24x")
STAT_SIZE = _STAT.size  # 144


def pack_stat(st: os.stat_result, blocks: int | None = None) -> bytes:
    """``st`` as the kernel writes it for ``newfstatat`` (nanoseconds from the ``*_ns`` fields),
    with ``blocks`` instead of ``st.st_blocks`` when given."""
    a, m, c = divmod(st.st_atime_ns, 10**9), divmod(st.st_mtime_ns, 10**9), divmod(st.st_ctime_ns, 10**9)
    return _STAT.pack(
        st.st_dev, st.st_ino, st.st_nlink, st.st_mode, st.st_uid, st.st_gid, st.st_rdev, st.st_size,
        st.st_blksize, st.st_blocks if blocks is None else blocks, *a, *m, *c,
    )  # fmt: skip


# struct statfs (asm-generic/statfs.h with a 64-bit __statfs_word): type, bsize, blocks,
# bfree, bavail, files, ffree, fsid (two ints), namelen, frsize, flags, four spare words.
_STATFS = struct.Struct("<qqQQQQQiiqqq32x")
STATFS_SIZE = _STATFS.size  # 120


def pack_statfs(
    f_type: int, bsize: int, blocks: int, bfree: int, bavail: int, files: int, ffree: int,
    namelen: int, frsize: int, flags: int,
) -> bytes:  # fmt: skip
    """A ``struct statfs`` as the kernel writes it (``f_fsid`` zero, as FUSE leaves it)."""
    return _STATFS.pack(f_type, bsize, blocks, bfree, bavail, files, ffree, 0, 0, namelen, frsize, flags)


def set_syscall(regs: Regs, nr: int) -> None:
    """At a seccomp stop: run syscall ``nr`` instead (the filter is re-checked, not re-trapped)."""
    regs.orig_rax = nr & _MASK64


def rewind_to_syscall(regs: Regs, nr: int) -> None:
    """At a syscall-exit stop: execute the same ``syscall`` instruction again, as call ``nr``."""
    regs.rip = (regs.rip - SYSCALL_INSN_LEN) & _MASK64
    regs.rax = nr & _MASK64


# --- the in-process stub -------------------------------------------------------------------
#
# A translated call costs one ptrace stop instead of two: at the seccomp stop the tracer skips
# the original syscall and points the thread at this stub, with r11 = a frame it filled in.
# The stub runs the rewritten syscall itself (the seccomp filter lets syscalls from the stub's
# address range through untrapped), optionally moves a new fd into a reserved range with
# fcntl(F_DUPFD[_CLOEXEC]) + close, restores the argument registers and rbx from the frame,
# decrements the thread's nesting counter and jumps back to the instruction after the original
# ``syscall``. It never touches the stack (the red zone of a leaf function may be live).
#
#     stub: mov %rbx,0x70(%r11); mov %r11,%rbx
#           mov 0x00(%rbx),%rax; mov 0x08(%rbx),%rdi; mov 0x10(%rbx),%rsi; mov 0x18(%rbx),%rdx
#           mov 0x20(%rbx),%r10; mov 0x28(%rbx),%r8;  mov 0x30(%rbx),%r9;  syscall
#           mov 0x78(%rbx),%rdx; test %rdx,%rdx; jz done; test %rax,%rax; js done
#           mov %rax,0x90(%rbx); mov %rax,%rdi; mov 0x80(%rbx),%rsi; mov $72,%eax; syscall
#           test %rax,%rax; js failed; mov %rax,0x98(%rbx)
#           mov 0x90(%rbx),%rdi; mov $3,%eax; syscall; mov 0x98(%rbx),%rax; jmp done
#   failed: mov 0x90(%rbx),%rax
#     done: mov 0x38(%rbx),%rdi; mov 0x40(%rbx),%rsi; mov 0x48(%rbx),%rdx; mov 0x50(%rbx),%r10
#           mov 0x58(%rbx),%r8;  mov 0x60(%rbx),%r9;  mov 0x68(%rbx),%rcx; mov 0x88(%rbx),%r11
#           mov 0x70(%rbx),%rbx; decq (%r11); jmp *%rcx
#
# (assembled with GNU as 2.40; the bytes below are that output.)
STUB_CODE = bytes.fromhex(
    "49895b704c89db488b03488b7b08488b7310488b53184c8b53204c8b43284c8b4b300f05488b53784885d274"
    "474885c07842488983900000004889c7488bb380000000b8480000000f054885c0781e48898398000000488b"
    "bb90000000b8030000000f05488b8398000000eb07488b8390000000488b7b38488b7340488b53484c8b5350"
    "4c8b43584c8b4b60488b4b684c8b9b88000000488b5b7049ff0bffe1"
)

# Frame field offsets (bytes), matching the code above.
F_NR, F_ARGS, F_SAVED_ARGS, F_RIP, F_RBX = 0x00, 0x08, 0x38, 0x68, 0x70
F_RELOC_BASE, F_RELOC_CMD, F_DEPTH_PTR = 0x78, 0x80, 0x88
FRAME_HEADER = 0xA0  # bytes of header the tracer writes
F_PATH = 0x100  # a rewritten path string lives here
FRAME_SIZE = 0x1100  # header area + PATH_MAX

# Where the stub lives: a fixed address so that the seccomp filter, installed once before the
# job starts, can recognise it by instruction pointer. Below where x86-64 Linux places PIE
# programs (0x55..., 0x56...), libraries and stacks (0x7f...), above the ASan shadow's end
# (0x10007fff7fff); mapped with MAP_FIXED_NOREPLACE so a taken address is detected, not clobbered.
STUB_ADDR = 0x3FFF_F000_0000
STUB_CODE_SIZE = 0x1000  # the filter lets syscalls from [STUB_ADDR, STUB_ADDR + this) through
SLOT_SIZE = 0x8000  # per thread: depth counter, MAX_DEPTH frames, then classic scratch
SLOT_FRAMES_OFFSET = 0x40
MAX_DEPTH = 3  # nested translated calls (signal handlers) per thread before falling back
SLOT_SCRATCH_OFFSET = 0x4000
SLOT_SCRATCH_SIZE = SLOT_SIZE - SLOT_SCRATCH_OFFSET
SLOTS = 256  # threads of one address space that can use the stub at the same time
STUB_MAP_SIZE = STUB_CODE_SIZE + SLOTS * SLOT_SIZE

# mmap(2) flags used when the tracer injects the stub mapping.
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x4000, 0x100000

assert len(STUB_CODE) < 0x100 and (F_PATH + 4096) <= FRAME_SIZE
assert SLOT_FRAMES_OFFSET + MAX_DEPTH * FRAME_SIZE <= SLOT_SCRATCH_OFFSET
