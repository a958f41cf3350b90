"""Task functions for worker-process tests: they must be importable by a spawned worker
(tests/ is on its sys.path), so they live here rather than in a test module."""

import os
import time
from pathlib import Path

from dicomsvc import ingest
from dicomsvc.config import Config
from dicomsvc.storage import instances
from dicomsvc.storage.blobs import BlobStore


def pid() -> int:
    return os.getpid()


def inherited() -> dict:
    """What a worker started with: objects frozen out of the GC, OpenBLAS's thread count."""
    import gc

    return {
        "frozen": gc.get_freeze_count(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


def allocate_forever() -> None:
    """A decoder that allocates without bound: 64 MiB at a time until the limit stops it."""
    held = []
    while True:
        held.append(bytearray(64 << 20))


def echo(data: bytes) -> bytes:
    return data


def repeat(data: bytes, times: int) -> bytes:
    return data * times


def sleep_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "woke up"


def die_or_hang(how: str) -> None:
    if how == "exit":
        os._exit(9)  # as a segfaulting decoder would
    time.sleep(3600)  # until the time limit kills the worker


def ingest_then_stop(config: Config, temp: Path, when: str, how: str) -> None:
    """Ingest ``temp``, but stop the worker (``how``: "exit" or "hang") at ``when``:
    "spooled" (a temporary copy written), "placed" (blobs renamed into place, no row yet)
    or "committed" (the row committed)."""
    if when == "spooled":
        with open(temp, "rb") as src:
            BlobStore(config.blob_dir).spool(src, 1 << 30)
        die_or_hang(how)
    real_insert = instances.insert_instance

    def insert(*args, **kwargs):
        if when == "placed":
            die_or_hang(how)
        stored = real_insert(*args, **kwargs)
        die_or_hang(how)
        return stored

    instances.insert_instance = insert  # in this worker only, which does not survive it
    ingest.ingest_file(config, temp, "test")


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def churn_heap(mib: int) -> int:
    """Allocate ``mib`` MiB of 1000-byte blocks (malloc's heap, not pymalloc's arenas or mmap),
    free them all but one allocated after them (so the heap's top stays in use and free()
    alone cannot shrink it); the worker's RSS with them allocated."""
    blocks = [bytes(1000) for _ in range(mib * 1024 * 1024 // 1000)]
    global _pin
    _pin = bytes(1000)
    peak = rss_kib()
    del blocks
    return peak


def wait_for(path: str) -> str:
    """Hold a worker until ``path`` exists (two minutes at most)."""
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "went on"


def group_echo(label: str, items: list) -> list[tuple]:
    """A grouped task (``WorkerPool.run_grouped``): each item answered with this worker's pid, the
    shared argument, the item and the group's size; the item "bad" refused alone."""
    from dicomsvc.errors import BadRequest
    from dicomsvc.workerproc import failure

    return [failure(BadRequest("a bad item")) if item == "bad" else ("ok", (os.getpid(), label, item, len(items))) for item in items]


def group_dies_with_crash_dcm(config: Config, items: list) -> list[tuple]:
    """``ingest.ingest_group``, but when the group holds the path "crash.dcm" the worker dies as the
    rows are inserted (every item's blobs in place, no row), grouped or alone."""
    if any(item[:2] == ("path", "crash.dcm") for item in items):

        def die(*args, **kwargs):
            os._exit(9)

        instances.insert_instance = instances.insert_instances = die  # in this worker only
    return ingest.ingest_group(config, items)


def group_then_stop(config: Config, items: list) -> list[tuple]:
    """``ingest.ingest_group``, but the worker dies as the staged items' rows are inserted (their
    blobs renamed into place, no row)."""

    def die(*args, **kwargs):
        os._exit(9)

    instances.insert_instance = instances.insert_instances = die  # in this worker only, which does not survive it
    return ingest.ingest_group(config, items)
