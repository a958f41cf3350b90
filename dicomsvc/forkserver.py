"""The fork server's first import: set up the process every worker is forked from.

``dicomsvc.workers`` starts workers with multiprocessing's "forkserver" method: one
process imports the workers' modules once (numpy, pydicom and its decoders, the
pipeline: ``set_forkserver_preload``) and forks a worker per request, so all the
workers share those pages copy-on-write instead of each importing its own. This
module is the first of that list, so what it does happens before any of them:

* one thread for OpenBLAS/OpenMP/MKL (``workerproc.ONE_THREAD``), set before numpy is
  imported, and inherited by every worker forked from here;
* the fork server dies with the server, kill -9 included (``PR_SET_PDEATHSIG``). The
  server starts it from a thread that lives as long as its process
  (``workers._start_fork_server``), since the signal follows the starting *thread*.
  Should the server die before this request takes effect, the fork server still
  leaves: it exits when its "alive" pipe reaches end of file, which happens once the
  server and every worker (each holds a copy, and an idle or new worker leaves when
  its own pipe to the server does) are gone; and no worker can be busy then, since a
  worker forked from here only gets a task after this module ran.

Importing it anywhere but in the fork server does nothing.

``dicomsvc.forkserver_ready`` is the list's last module: when it is imported everything the
workers share is loaded, and the library code the fork server ran only to load it leaves its
resident set (``release_library_pages``).
"""

import contextlib
import ctypes
import os
import re
import sys

from .workerproc import ONE_THREAD, die_with_parent

UNUSED = ("requests", "tqdm")  # imported by pydicom.data if installed; never used in a worker


# A mapping's first line in /proc/<pid>/smaps: start-end perms offset dev inode [path]
_VMA = re.compile(r"([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ (\d+)\s*(.*)")
MADV_DONTNEED = 4  # <sys/mman.h>


def release_library_pages() -> int:
    """Unmap from this process the pages of shared libraries (and any other file) that it
    only read: read-only, private, file-backed mappings with no page of their own (Anonymous
    0 in /proc/self/smaps). Returns the bytes that were resident in them.

    The fork server touches ~17 MiB of library code and read-only data importing numpy,
    pydicom, its decoders and OpenSSL, then runs only its fork loop. Those pages stay in the
    page cache (the workers map what they use themselves), so no memory is freed, but they
    leave the fork server's RSS, which the peak-RSS figure of issue 12 sums with the workers'
    (52 -> ~35 MiB). ``MADV_DONTNEED`` on such a mapping drops page-table entries only: a later
    access faults the same file page in again. Mappings with copied-on-write pages (relocated
    data, anything written) are left alone, since dropping those pages would undo the writes;
    writable ones are skipped too, so nothing written between reading smaps and the madvise
    is lost (the fork server has one thread anyway). Linux only; elsewhere nothing happens.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        smaps = open("/proc/self/smaps")  # noqa: SIM115 (read whole below, closed at once)
    except (OSError, AttributeError):
        return 0
    with smaps:
        text = smaps.read()
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    released = 0
    for start, end, rss in _read_only_file_pages(text):
        with contextlib.suppress(OSError):
            if madvise(start, end - start, MADV_DONTNEED) == 0:
                released += rss
    return released


def _read_only_file_pages(smaps: str) -> list[tuple[int, int, int]]:
    """(start, end, resident bytes) of each mapping in ``smaps`` that ``release_library_pages``
    may drop: private, not writable, backed by a file, without anonymous pages, resident."""
    found: list[tuple[int, int, int]] = []
    vma: dict | None = None
    for line in smaps.splitlines():
        head = _VMA.fullmatch(line)
        if head:
            start, end, perms, inode, path = head.groups()
            keep = perms[1] == "-" and perms[3] == "p" and inode != "0" and path.startswith("/")
            vma = {"start": int(start, 16), "end": int(end, 16), "rss": 0, "anon": None} if keep else None
            if vma is not None:
                found.append(vma)  # type: ignore[arg-type]
        elif vma is not None and line.startswith(("Rss:", "Anonymous:")):
            key, value = line.split()[:2]
            vma["rss" if key == "Rss:" else "anon"] = int(value) * 1024
    return [(v["start"], v["end"], v["rss"]) for v in found if v["anon"] == 0 and v["rss"] > 0]  # type: ignore[index]


def _in_fork_server() -> bool:
    """Imported by ``multiprocessing.forkserver.main`` (its preload), not elsewhere."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "main" and code.co_filename.endswith(os.path.join("multiprocessing", "forkserver.py")):
            return True
        frame = frame.f_back
    return False


if _in_fork_server():
    for _name in ONE_THREAD:
        os.environ.setdefault(_name, "1")
    # pydicom.data imports requests and tqdm when they are installed (the tests install them),
    # to download its test files -- which no worker does: kept out of the fork server, and so
    # of every worker (5 MB of each one's memory, issue 12). ``import requests`` then raises
    # ImportError, as pydicom expects where they are not installed.
    for _name in UNUSED:
        sys.modules.setdefault(_name, None)
    die_with_parent()
