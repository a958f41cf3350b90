"""Per-stage profile of one ingest (in-process, no HTTP): CPU (thread time) and wall ms per stage.

    .venv/bin/python bench/ingest_stages.py [--n 200] [--keep-cached]

Ingests N synthetic CTs (bench/corpus.py) by path through dicomsvc.ingest.ingest_import,
with each stage wrapped in a timer; prints the median per instance of each stage. pydicom is
set up as in the service's workers (``logs.quiet_pydicom``: no validation while reading).
``--keep-cached``: stored DICOM blobs keep their page-cache pages (``blobs.drop_cached`` does
nothing), for an A/B of that choice; run both, alternating, in one session. "whole ingest" is
the ingest's thread's CPU: every stage runs in it (the early writeback of ``blobs.sync_soon`` is
the kernel's, not a thread's).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as CO  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--keep-cached", action="store_true", help="stored DICOM blobs keep their page-cache pages")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="stages-"))
    imp = tmp / "import"
    imp.mkdir()
    corpus = CO.make(imp, a.n, 1234)
    import os

    os.environ["DICOMSVC_DATA_DIR"] = str(tmp / "data")
    os.environ["DICOMSVC_IMPORT_ROOT"] = str(imp)
    from dicomsvc import ingest
    from dicomsvc.config import Config
    from dicomsvc.logs import quiet_pydicom
    from dicomsvc.storage import blobs, instances, sqlite
    from dicomsvc.storage.blobs import BlobStore

    if a.keep_cached:
        blobs.drop_cached = lambda path: None
    quiet_pydicom()  # as in the workers: values not validated while reading (pydicom.config IGNORE)
    config = Config.from_env()
    config.data_dir.mkdir(parents=True)
    BlobStore(config.blob_dir).open()

    async def create():
        await (await sqlite.open_database(config.db_path)).close()

    asyncio.run(create())
    times: dict[str, list[tuple[float, float]]] = {}
    current: dict[str, list[float]] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                acc = current.setdefault(name, [0.0, 0.0])
                acc[0] += time.thread_time() - c0
                acc[1] += time.perf_counter() - w0

        return wrapper

    stages = [
        (ingest, "read", "parse"), (ingest, "pixel_hash", "pixel hash"), (ingest, "flatten", "flatten"),
        (ingest, "render_png", "render PNG"), (ingest, "_metadata", "DICOM JSON"), (ingest, "summary", "summary"),
        (instances, "stored_versions", "duplicate check"), (instances, "insert_instances", "SQLite insert+commit"),
        (blobs, "sync_data", "fdatasync blobs"), (blobs, "sync_folder", "fsync folders"),
        (BlobStore, "spool", "copy in"), (BlobStore, "write_temp", "PNG write"),
    ]
    for owner, attr, name in stages:
        setattr(owner, attr, timed(name, getattr(owner, attr)))
    total = []
    try:
        for inst in corpus.instances:
            current.clear()
            c0, w0 = time.thread_time(), time.perf_counter()
            ingest.ingest_import(config, inst.rel)
            total.append((time.thread_time() - c0, time.perf_counter() - w0))
            for k, v in current.items():
                times.setdefault(k, []).append(tuple(v))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the corpus and the data folder (hundreds of MB)
    med = lambda xs, i: statistics.median(x[i] for x in xs) * 1000  # noqa: E731
    print(f"{'stage':28} {'CPU ms':>8} {'wall ms':>8}")
    for _, _, name in stages:
        if name in times:
            print(f"{name:28} {med(times[name], 0):8.2f} {med(times[name], 1):8.2f}")
    print(f"{'whole ingest':28} {med(total, 0):8.2f} {med(total, 1):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
