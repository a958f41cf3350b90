"""The C heap of a dicomsvc process: glibc malloc's thresholds and trimming (``mallopt``,
``malloc_trim``). Elsewhere (musl, macOS) these do nothing.

glibc returns freed memory at the top of the heap to the system once more than
M_TRIM_THRESHOLD is free there, and serves blocks above M_MMAP_THRESHOLD with mmaps of
their own, unmapped at free. Both thresholds move with the program by default (a freed
mmap'ed block raises them to its size, up to 32 MB), which suits neither of our processes:
a server answering one 0.5 MB upload at a time had the heap top it freed trimmed after every
request and faulted the same pages in again on the next one, about 220 minor faults an upload
(issue 12). Fixed thresholds (``hold``) end that; ``trim`` gives the free memory back when a
process chooses to.
"""

import contextlib
import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def hold(mmap_threshold: int, trim_threshold: int) -> bool:
    """Fixed thresholds for this process: blocks of ``mmap_threshold`` bytes and more mapped on
    their own, up to ``trim_threshold`` bytes of free heap kept. Whether glibc took them."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        return libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
    return False


def trim() -> None:
    """Return the free heap memory to the system (``malloc_trim``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
