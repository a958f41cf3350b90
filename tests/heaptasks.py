"""A worker-process task that looks at the worker's C heap (tests/test_workers.py)."""

import ctypes


class _MallInfo2(ctypes.Structure):  # <malloc.h> struct mallinfo2 (glibc 2.33+)
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


def mapped_on_their_own(sizes: list[int]) -> list[bool]:
    """For each size, whether glibc's malloc serves a block of it with an mmap of its own (the
    count of such mappings, ``hblks``, goes up) rather than from the heap."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    out = []
    for size in sizes:
        before = libc.mallinfo2().hblks
        block = libc.malloc(size)
        out.append(libc.mallinfo2().hblks > before)
        libc.free(block)
    return out
