"""Encryption at rest: ingest and GET /image-style reads with a key vs without, in-process.

    .venv/bin/python bench/encryption.py [--n 100] [--rounds 3]

Synthetic 512x512 int16 CTs (bench/corpus.py) ingested by path (dicomsvc.ingest.ingest_import,
no HTTP), alternating two data directories, one with DICOMSVC_ENCRYPTION_KEY, one without, a
batch at a time; then each stored PNG read back (what GET /image does on a read-cache miss:
BlobStore.read_bytes) and a 64 KiB range from the middle of each DICOM. Prints medians per
instance: wall and thread CPU ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as CO  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="enc-bench-"))
    imp = tmp / "import"
    imp.mkdir()
    corpus = CO.make(imp, a.n, 1234)
    from dicomsvc import ingest
    from dicomsvc.config import Config
    from dicomsvc.storage import sqlite
    from dicomsvc.storage.blobs import BlobStore

    key = base64.b64encode(os.urandom(32)).decode()
    configs = {}
    for mode in ("off", "on"):
        env = {"DICOMSVC_DATA_DIR": str(tmp / mode), "DICOMSVC_IMPORT_ROOT": str(imp)}
        if mode == "on":
            env["DICOMSVC_ENCRYPTION_KEY"] = key
        config = Config.from_env(env)
        config.data_dir.mkdir(parents=True)
        BlobStore.of(config).open()

        async def create(c=config):
            await (await sqlite.open_database(c.db_path)).close()

        asyncio.run(create())
        configs[mode] = config
    results: dict[str, dict[str, list[tuple[float, float]]]] = {m: {"ingest": [], "png": [], "range": []} for m in configs}
    ids: dict[str, list[str]] = {m: [] for m in configs}
    per_round = max(1, len(corpus.instances) // a.rounds)
    for r in range(a.rounds):
        batch = corpus.instances[r * per_round : (r + 1) * per_round]
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            for inst in batch:
                c0, w0 = time.thread_time(), time.perf_counter()
                ids[mode].append(ingest.ingest_import(configs[mode], inst.rel).id)
                results[mode]["ingest"].append((time.thread_time() - c0, time.perf_counter() - w0))
    for mode in ("off", "on", "off", "on"):
        blobs = BlobStore.of(configs[mode])
        for instance_id in ids[mode]:
            c0, w0 = time.thread_time(), time.perf_counter()
            blobs.read_bytes(blobs.path(BlobStore.key(instance_id, "png")))
            results[mode]["png"].append((time.thread_time() - c0, time.perf_counter() - w0))
            c0, w0 = time.thread_time(), time.perf_counter()
            with blobs.open_file(blobs.path(BlobStore.key(instance_id, "dcm"))) as fh:
                fh.seek(200_000)
                fh.read(65536)
            results[mode]["range"].append((time.thread_time() - c0, time.perf_counter() - w0))
    med = lambda xs, i: statistics.median(x[i] for x in xs) * 1000  # noqa: E731
    print(f"{'':28s}{'off wall':>10s}{'on wall':>10s}{'off cpu':>10s}{'on cpu':>10s}  (ms, median per instance)")
    for what, label in (("ingest", "ingest (parse..commit)"), ("png", "stored PNG read"), ("range", "64 KiB range of the DICOM")):
        off, on = results["off"][what], results["on"][what]
        print(f"{label:28s}{med(off, 1):10.3f}{med(on, 1):10.3f}{med(off, 0):10.3f}{med(on, 0):10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
