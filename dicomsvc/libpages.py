"""Library pages a process ran only while starting, let go once it has started.

Starting a dicomsvc process touches far more library code and read-only data than serving
does: the fork server imports numpy, pydicom, its decoders and OpenSSL (~17 MiB of pages it
never runs again: it only forks), the server imports its stack and starts everything (about
7 MiB). Those pages stay mapped, and counted in the process's RSS, for as long as it lives.
``release`` unmaps them (``dicomsvc.forkserver_ready`` after the fork server's preloads,
``cli.server.Server`` once the server has started): what the process still uses faults in
again from the page cache, the rest leaves its resident set. No memory is freed (the pages
stay cached, and shared with the processes that use them); what falls is the per-process RSS
that issue 12's peak-RSS figure sums over the server, the fork server and the workers.
"""

import ctypes
import re

# A mapping's first line in /proc/<pid>/smaps: start-end perms offset dev inode [path]
_VMA = re.compile(r"([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ (\d+)\s*(.*)")
MADV_DONTNEED = 4  # <sys/mman.h>


def release() -> int:
    """Unmap from this process the pages of shared libraries (and any other file) that it
    only read: read-only, private, file-backed mappings with no page of their own (Anonymous
    0 in /proc/self/smaps). Returns the bytes that were resident in them.

    ``MADV_DONTNEED`` on such a mapping drops page-table entries only: the pages stay in the
    page cache, and a later access faults the same file page in again. Mappings with pages
    copied on write (relocated data, anything written) are left alone, since dropping those
    would undo the writes; writable ones are skipped too, so nothing another thread writes
    between the reading of smaps and the madvise is lost. Linux only; elsewhere nothing happens.
    """
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        with open("/proc/self/smaps") as smaps:
            text = smaps.read()
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return sum(rss for start, end, rss in releasable(text) if madvise(start, end - start, MADV_DONTNEED) == 0)


def releasable(smaps: str) -> list[tuple[int, int, int]]:
    """(start, end, resident bytes) of each mapping listed in ``smaps`` (/proc/<pid>/smaps)
    that ``release`` drops: private, not writable, backed by a file, resident, without
    anonymous pages."""
    found: list[dict] = []
    vma: dict | None = None
    for line in smaps.splitlines():
        head = _VMA.fullmatch(line)
        if head:
            start, end, perms, inode, path = head.groups()
            vma = None
            if perms[1] == "-" and perms[3] == "p" and inode != "0" and path.startswith("/"):
                vma = {"start": int(start, 16), "end": int(end, 16), "Rss:": 0, "Anonymous:": None}
                found.append(vma)
        elif vma is not None and line.startswith(("Rss:", "Anonymous:")):
            key, value = line.split()[:2]
            vma[key] = int(value) * 1024
    return [(v["start"], v["end"], v["Rss:"]) for v in found if v["Anonymous:"] == 0 and v["Rss:"] > 0]


def resident(pid: int | str = "self") -> int:
    """Bytes resident in the mappings of process ``pid`` that ``release`` would drop: what a
    release leaves out of its RSS, or what came back since (0 where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/smaps") as smaps:
            return sum(rss for _, _, rss in releasable(smaps.read()))
    except OSError:
        return 0
