"""Data-access latencies: search over 100,000 indexed instances, renderings, arrays.

    .venv/bin/python bench/access.py [--rows 100000] [--requests 300]
    .venv/bin/python bench/access.py --keepalive [--n 20] [--requests 2000] [--no-orthanc]

Builds a data directory whose database holds ``--rows`` instance rows (written
straight into SQLite: the search does not care how they got there) plus a few
real instances ingested over HTTP, starts the service as a real uvicorn process
on 127.0.0.1, and prints p50/p95 latencies of:
- filtered searches (GET /dicom with PatientID, Modality + StudyDate range, StudyInstanceUID);
- a cached and an uncached non-default rendering (GET /image?...&window=...);
- /dicom/{id}/pixels of a 512x512 instance.

``--keepalive`` (issue 12's read targets) instead runs ``dicomsvc serve`` (the CLI: its
uvicorn settings) on ``--n`` synthetic CT instances ingested by path, nginx serving copies
of the very PNG files it stored (the static-file floor), and Orthanc (when installed)
holding the same files, and times GET /image, /tags and /healthz against nginx's PNG and
Orthanc's /instances/{id}/tags with one keep-alive ``http.client`` connection per service,
request by request in turn (bench/sidebyside.py's loop). ``--serve-only`` leaves dicomsvc
running (its port and pid printed) until Ctrl-C, for a profiler.
Machine caveat: 2 shared noisy cores: compare ratios within one run.
"""

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import make, synthesize  # noqa: E402
from report import machine_facts  # noqa: E402
from servers import free_port, launch, uvicorn_argv  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODALITIES = ["CT", "MR", "US", "CR", "DX", "PT", "NM", "MG"]


def fill(db_path: Path, rows: int) -> None:
    """``rows`` plausible instance rows: 1,000 patients, 5,000 studies, dates over ten years."""
    rng = random.Random(7)
    db = sqlite3.connect(db_path)
    db.executescript((REPO / "schema.sql").read_text())
    batch = []
    for n in range(rows):
        patient, study = n % 1000, n % 5000
        batch.append(
            (
                f"bench{n:017d}", f"2.25.{n}", f"h{n}", "1.2.840.10008.5.1.4.1.1.2", f"2.25.9{study}",
                f"2.25.8{n // 50}", f"PAT{patient:05d}", f"Name^{patient}",
                f"201{rng.randint(0, 9)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
                f"ACC{study:06d}", MODALITIES[study % len(MODALITIES)], 1, f"aa/bench{n}.dcm", 0, "bench",
                f"2026-01-01T00:00:{n % 60:02d}.000+00:00",
            )  # fmt: skip
        )
        if len(batch) == 10_000:
            _insert(db, batch)
            batch = []
    _insert(db, batch)
    db.commit()
    db.close()


def _insert(db: sqlite3.Connection, batch: list) -> None:
    db.executemany(
        "INSERT INTO dicom (id, sop_instance_uid, pixel_hash, sop_class_uid, study_instance_uid, "
        "series_instance_uid, patient_id, patient_name, study_date, accession_number, modality, "
        "has_pixels, dcm_blob, dcm_bytes, source, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        batch,
    )


def timed(client: httpx.Client, url: str, n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - t) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{url} answered {response.status_code}: {response.text[:200]}")
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def keepalive(args) -> int:
    """The issue-12 read figures: dicomsvc vs nginx (same PNG bytes) and Orthanc, keep-alive."""
    import shutil

    import servers as S
    from sidebyside import keepalive_reads, start_nginx

    with S.Session("dicomsvc-reads-", keep=False) as run:
        imports = run.tmp / "import"
        corpus = make(imports, args.n, 1234)
        if corpus is None:
            return 2
        data = run.tmp / "data"
        data.mkdir()
        port = S.free_port()
        env = S.dicomsvc_env(data, imports, DICOMSVC_PORT=str(port), DICOMSVC_HOST="127.0.0.1")
        argv = [sys.executable, "-m", "dicomsvc.cli.main", "serve"]
        server, _ = launch("dicomsvc", argv, REPO, env, run.tmp / "server.log", f"http://127.0.0.1:{port}/healthz")
        nginx = orthanc = None
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, trust_env=False) as c:
                ids = [c.post("/dicom", json={"path": i.rel}).json()["id"] for i in corpus.instances]
            if args.serve_only:
                print(f"dicomsvc serve: port {port}, pid {server.pid}; ids: {' '.join(ids[:3])} ...", flush=True)
                while server.alive():
                    time.sleep(1)
                return 0
            db = sqlite3.connect(data / "dicom.db")
            stored = db.execute("SELECT id, png_blob FROM dicom WHERE png_blob IS NOT NULL").fetchall()
            db.close()
            static = run.tmp / "static"
            static.mkdir()
            for id_, key in stored:
                shutil.copyfile(data / "blobs" / key, static / f"{id_}.png")
            nginx, nport = start_nginx(run.tmp, static)
            images = {
                "dicomsvc /image": (port, [f"/image?id={i}" for i, _ in stored], {}),
                "nginx (same PNG)": (nport, [f"/{i}.png" for i, _ in stored], {}),
            }
            tags = {"dicomsvc /tags": (port, [f"/tags?id={i}" for i, _ in stored], {})}
            binary = None if args.no_orthanc else S.orthanc_binary()
            if binary:
                orthanc = S.OrthancService(run.tmp, "reads", binary)
                orthanc.start()
                with httpx.Client(base_url=orthanc.base, timeout=60, trust_env=False) as c:
                    oids = [
                        c.post("/instances", content=i.path.read_bytes()).json()["ID"] for i in corpus.instances
                    ]
                tags["Orthanc /instances/{id}/tags"] = (orthanc.port, [f"/instances/{i}/tags" for i in oids], {})
            health = {"dicomsvc /healthz": (port, ["/healthz"], {})}
            print(f"{args.requests} requests each, one keep-alive http.client connection per service")
            print(f"{'request':32} {'p50 ms':>8} {'p95 ms':>8}")
            results = {}
            for group in (images, tags, health):
                for name, figures in keepalive_reads(group, args.requests).items():
                    results[name] = figures
                    if figures["errors"]:
                        print(f"{name}: {figures['errors']} answers were not 200")
                    print(f"{name:32} {figures['p50_ms']:8.3f} {figures['p95_ms']:8.3f}")
            ours, floor = results["dicomsvc /image"]["p50_ms"], results["nginx (same PNG)"]["p50_ms"]
            print(f"/image p50 / nginx p50: {ours / floor:.2f}x (target <= 1.5)")
            if "Orthanc /instances/{id}/tags" in results:
                theirs = results["Orthanc /instances/{id}/tags"]["p50_ms"]
                print(f"/tags p50 / Orthanc's: {results['dicomsvc /tags']['p50_ms'] / theirs:.2f}x (target <= 1)")
        finally:
            if nginx is not None:
                nginx.terminate()
                nginx.wait(timeout=10)
            if orthanc is not None:
                orthanc.stop()
            server.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--keepalive", action="store_true", help="issue 12's read figures (see above)")
    parser.add_argument("--n", type=int, default=20, help="--keepalive: instances stored")
    parser.add_argument("--no-orthanc", action="store_true", help="--keepalive: without Orthanc")
    parser.add_argument("--serve-only", action="store_true", help="--keepalive: leave dicomsvc running")
    args = parser.parse_args()
    if args.keepalive:
        return keepalive(args)
    facts = machine_facts()
    print(f"machine: nproc={facts['nproc']} cpu={facts['cpu_model']}; 2 shared noisy cores: compare ratios")
    with tempfile.TemporaryDirectory(prefix="dicomsvc-access-") as tmp:
        data, imports = Path(tmp) / "data", Path(tmp) / "import"
        data.mkdir()
        t = time.perf_counter()
        fill(data / "dicom.db", args.rows)
        print(f"database: {args.rows} rows in {time.perf_counter() - t:.1f}s")
        synthesize(imports, 3)
        port = free_port()
        env = dict(os.environ) | {
            "DICOMSVC_DATA_DIR": str(data), "DICOMSVC_IMPORT_ROOT": str(imports), "DICOMSVC_LOG_LEVEL": "warning",
        }  # fmt: skip
        argv = uvicorn_argv(port) + ["--no-access-log"]
        server, _ = launch("dicomsvc", argv, REPO, env, Path(tmp) / "server.log", f"http://127.0.0.1:{port}/healthz")
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, headers={"Accept-Encoding": "identity"}, timeout=60) as client:
                files = sorted(p.relative_to(imports) for p in imports.rglob("*.dcm"))
                ids = [client.post("/dicom", json={"path": str(f)}).json()["id"] for f in files]
                n = args.requests
                rows = [
                    ("search PatientID", "/dicom?PatientID=PAT00421"),
                    ("search Modality+StudyDate range", "/dicom?Modality=MR&StudyDate=20150101-20151231"),
                    ("search StudyInstanceUID", "/dicom?StudyInstanceUID=2.25.91234"),
                    ("search, no filter (newest 100)", "/dicom"),
                ]
                print(f"{'request':45} {'p50 ms':>8} {'p95 ms':>8}")
                for name, url in rows:
                    p50, p95 = timed(client, url, n)
                    print(f"{name:45} {p50:8.2f} {p95:8.2f}")
                stored = f"/image?id={ids[0]}"
                print(f"{'GET /image (stored default PNG)':45} " + "{:8.2f} {:8.2f}".format(*timed(client, stored, n)))
                extras = [
                    ("GET /image window (uncached, first request)", None),
                    ("GET /image window (cached)", f"/image?id={ids[1]}&window=40,400&width=256"),
                    ("GET /dicom/{id}/pixels 512x512", f"/dicom/{ids[2]}/pixels"),
                ]
                first = time.perf_counter()
                response = client.get(f"/image?id={ids[1]}&window=40,400&width=256")
                uncached = (time.perf_counter() - first) * 1000
                if response.status_code == 200:
                    print(f"{extras[0][0]:45} {uncached:8.2f}        -")
                    for name, url in extras[1:]:
                        p50, p95 = timed(client, url, n)
                        print(f"{name:45} {p50:8.2f} {p95:8.2f}")
                    uncached_times = []
                    for i in range(min(n, 50)):  # a new window each time: never cached
                        t = time.perf_counter()
                        client.get(f"/image?id={ids[1]}&window={i + 1},{400 + i}")
                        uncached_times.append((time.perf_counter() - t) * 1000)
                    uncached_times.sort()
                    print(
                        f"{'GET /image window (uncached, 50 windows)':45} {statistics.median(uncached_times):8.2f} "
                        f"{uncached_times[int(len(uncached_times) * 0.95) - 1]:8.2f}"
                    )
                else:
                    print(f"rendering options not available ({response.status_code}): skipped")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
