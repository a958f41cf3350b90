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
# What the server (cli/server.py) and each worker (workerproc.py) hold: blocks under 4 MiB from
# the heap, up to 8 MiB of it kept free. The server's request bodies (a CT's 0.5 MB, read in
# 64 KiB pieces), 400 uploads from 1 client, 6 alternating pairs: 221 -> 1 minor faults and
# 2.8 -> 2.2 ms of its CPU an upload (median). A worker's ingest buffers of 0.5-1 MB (the file,
# the pixel array, the display image, the PNG), 300 CTs by path: 110-270 -> 7 minor faults an
# instance in each worker; from 4 clients (6 pairs) the server tree's CPU 10.8 -> 10.0 ms an
# instance (medians; lower in every pair), 136 -> 150 instances/s; from 1 client (4 pairs) lower
# in every pair. Each process's peak RSS unchanged (within 0.5 MB). Larger blocks (a big frame's
# arrays) are still mapped on their own.
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 8 << 20


def hold(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
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
