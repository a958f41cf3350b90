"""dicomsvc.libpages: the library pages a process ran only while starting, let go once started
(issue 12: counted in the summed peak RSS of the server, the fork server and the workers)."""

import json
import platform
import subprocess
import sys

import pytest

from dicomsvc.libpages import release, releasable

SMAPS = """\
00400000-00401000 r--p 00000000 fd:00 11 /usr/bin/python3.11
Rss:                   4 kB
Anonymous:             0 kB
00401000-00403000 r-xp 00001000 fd:00 11 /usr/bin/python3.11
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
00403000-00404000 r--p 00003000 fd:00 11 /usr/bin/python3.11
Rss:                   4 kB
Anonymous:             4 kB
00404000-00405000 rw-p 00004000 fd:00 11 /usr/bin/python3.11
Rss:                   4 kB
Anonymous:             0 kB
00405000-00406000 r--s 00000000 fd:00 12 /dev/shm/shared
Rss:                   4 kB
Anonymous:             0 kB
00406000-00408000 r--p 00000000 00:00 0 
Rss:                   8 kB
Anonymous:             0 kB
7fff0000-7fff2000 r--p 00000000 00:00 0 [vvar]
Rss:                   0 kB
Anonymous:             0 kB
7fff2000-7fff4000 r-xp 00000000 fd:00 13 /usr/lib/libz.so.1
Rss:                   0 kB
Anonymous:             0 kB
"""


def test_only_read_only_private_file_mappings_without_own_pages_are_let_go():
    # the code and read-only data of the binary; not relocated data (a page of its own), not
    # writable data, not a shared mapping, not anonymous memory, not what is not resident
    assert releasable(SMAPS) == [(0x400000, 0x401000, 4096), (0x401000, 0x403000, 8192)]


MEASURE = """
import hashlib, json, sys, zlib
import numpy as np
import pydicom
from dicomsvc.libpages import release, resident

before = resident()
released = release()
after = resident()
# everything still runs: the pages fault in again from the same files
works = (float(np.arange(10).sum()), zlib.decompress(zlib.compress(b"x" * 1000)) == b"x" * 1000, hashlib.sha256(b"x").hexdigest()[:8])
print(json.dumps({"before": before, "released": released, "after": after, "works": works}))
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="/proc/self/smaps and madvise are Linux's")
def test_the_library_pages_leave_the_resident_set_and_come_back_when_used():
    done = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(done.stdout)
    assert got["works"] == [45.0, True, "2d711642"]
    assert got["before"] > 4 << 20  # numpy, pydicom and the interpreter: several MiB of code touched
    assert got["released"] >= got["before"] * 0.9
    assert got["after"] < got["before"] / 4  # what reading smaps and returning touched again


def test_outside_linux_or_without_proc_nothing_happens(monkeypatch):
    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/self/smaps")

    monkeypatch.setattr("builtins.open", no_proc)
    assert release() == 0
