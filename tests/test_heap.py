"""dicomsvc.heap: fixed glibc heap thresholds, and the server process that holds them (issue 12:
a 1-client upload used to fault its 0.5 MB of heap in anew every time)."""

import http.client
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dicomfiles import make_ct, save
from dicomsvc import heap
from liveservice import free_port, service_env, serving

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# A burst like an upload's: 24 pieces of 64 KiB (1.5 MiB) made, filled and freed, in a fresh
# interpreter; the minor page faults of the last 20 of 25 bursts.
BURSTS = """
import resource, sys
from dicomsvc import heap
if sys.argv[1] == "hold":
    assert heap.hold()
def burst():
    pieces = [b"\\x01" * 65536 for _ in range(24)]
    del pieces
for _ in range(5):
    burst()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    burst()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_of_bursts(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", BURSTS, mode], capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout)


def test_held_thresholds_keep_the_heap_a_burst_freed():
    trimmed, held = faults_of_bursts("default"), faults_of_bursts("hold")
    # glibc's default trims the 1.5 MiB after every burst: 384 pages faulted in again each time
    assert trimmed >= 20 * 300, trimmed
    assert held < 100, held


def test_the_server_takes_its_thresholds():
    assert heap.hold() is True


def minor_faults(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[7])  # after (comm): state ... minflt


def test_uploads_one_at_a_time_fault_no_new_heap_in_the_server(tmp_path):
    pixels = np.random.default_rng(3).integers(0, 2000, size=(512, 512), dtype=np.int16)
    bodies = [save(make_ct(pixels), tmp_path / f"{i}.dcm").read_bytes() for i in range(25)]
    env = service_env(DICOMSVC_DATA_DIR=str(tmp_path / "data"), DICOMSVC_IMPORT_ROOT=str(tmp_path / "import"),
                      DICOMSVC_LOG_LEVEL="warning")  # fmt: skip
    port = free_port()
    with serving(port, env, tmp_path / "server.log", serve=True) as (_, process):
        server = process.pid
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def upload(body: bytes) -> None:
            connection.request("POST", "/dicom", body=body, headers={"Content-Type": "application/dicom"})
            answer = connection.getresponse()
            assert answer.status == 201, answer.read()
            answer.read()

        for body in bodies[:5]:  # the first ones grow the heap to what an upload needs
            upload(body)
        before = minor_faults(server)
        for body in bodies[5:]:
            upload(body)
        per_upload = (minor_faults(server) - before) / 20
        connection.close()
    assert per_upload < 30, per_upload  # 220 an upload, 0.5 MB, with glibc's default thresholds
