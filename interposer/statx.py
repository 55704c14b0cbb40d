"""``struct statx`` of a shadow entry, made by the tracer so that a job's ``statx`` can be answered.

``statx`` writes a structure the ``os`` module cannot produce (birth time, mount id, the mask of
what was filled in), so the tracer asks the kernel itself through libc and hands the job the
bytes as they are: the same answer, block count included, as a ``statx`` relative to a shadow
directory fd, which runs untrapped (tests/interposer/test_translate.py). The layout is the
kernel's generic one (include/uapi/linux/stat.h), the same on every architecture.
"""

from __future__ import annotations

import ctypes

STATX_SIZE = 256  # sizeof(struct statx)
STATX_BASIC_STATS = 0x7FF
STATX_BTIME = 0x800
STATX_MNT_ID = 0x1000
ASKED = STATX_BASIC_STATS | STATX_BTIME | STATX_MNT_ID  # what one answer is made with
AT_STATX_SYNC_TYPE = 0x6000  # AT_STATX_FORCE_SYNC | AT_STATX_DONT_SYNC: no meaning for local files

_libc = ctypes.CDLL(None, use_errno=True)
_statx = getattr(_libc, "statx", None)  # glibc >= 2.28
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    _statx.restype = ctypes.c_int
AVAILABLE = _statx is not None


def shadow_statx(path: bytes) -> bytes | None:
    """The ``struct statx`` of ``path`` itself (not followed); ``None`` when libc has no
    ``statx`` or the call fails (the kernel then answers)."""
    if _statx is None:
        return None
    buf = ctypes.create_string_buffer(STATX_SIZE)
    if _statx(-100, path, 0x100, ASKED, buf) != 0:  # AT_FDCWD, AT_SYMLINK_NOFOLLOW
        return None
    return buf.raw
