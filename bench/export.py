"""Dataset export throughput and memory: N instances joined to a clinical CSV, exported as
npy + png + dicom, the ZIP streamed to disk. Peak RSS of the server process and of its
workers during the export (sampled from /proc every 20 ms) against their size before it.

    .venv/bin/python bench/export.py [--instances 10000] [--per-study 100] [--anonymize]

--anonymize: the export asks "anonymize": true of studies stored as they came (each instance
anonymized on the way out, in the workers).
"""

import argparse
import io
import os
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out + [g for c in out for g in children(c)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--per-study", type=int, default=100)
    parser.add_argument("--anonymize", action="store_true", help="anonymize on the way out")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dicomsvc-export-bench-"))
    try:
        run(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, args) -> None:
    import numpy as np
    from starlette.testclient import TestClient

    from app import create_app
    from conftest import make_config
    from studydata import make_study, to_bytes

    (root / "import").mkdir()
    config = make_config(root / "data", root / "import", workers=2)
    with TestClient(create_app(config)) as client:
        t0 = time.perf_counter()
        studies = args.instances // args.per_study
        for s in range(studies):
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as z:
                for n, ds in enumerate(make_study((("CT", args.per_study),), seed=s)):
                    ds.PixelData = np.random.default_rng(n).integers(0, 2000, (64, 64), dtype=np.int16).tobytes()
                    ds.Rows, ds.Columns = 64, 64
                    z.writestr(f"{n}.dcm", to_bytes(ds))
            job = client.post("/dicom?async=true", content=buffer.getvalue(), headers={"content-type": "application/zip"}).json()["job"]
            while client.get(f"/jobs/{job}").json()["status"] not in ("done", "failed"):
                time.sleep(0.2)
        print(f"stored {studies * args.per_study} instances in {time.perf_counter() - t0:.0f} s")
        csv = "PatientID,Outcome\n" + "".join(f"PID-{s},{s % 2}\n" for s in range(studies))
        body = client.post("/datasets", files={"csv": ("c.csv", csv.encode(), "text/csv")}, data={"key": "PatientID"}).json()
        print("dataset", {k: body[k] for k in ("rows", "matched", "study_count")})

        me = os.getpid()
        base_server, base_workers = rss(me), max((rss(c) for c in children(me)), default=0)
        peak = {"server": base_server, "workers": base_workers}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak["server"] = max(peak["server"], rss(me))
                peak["workers"] = max([peak["workers"], *(rss(c) for c in children(me))])
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        job = client.post(f"/datasets/{body['id']}/export", json={"include": ["npy", "png", "dicom"], "anonymize": args.anonymize}).json()["job"]
        while (status := client.get(f"/jobs/{job}").json())["status"] not in ("done", "failed"):
            time.sleep(0.2)
        built = time.perf_counter() - t0
        size = 0
        with client.stream("GET", f"/jobs/{job}/result") as answer, open(root / "export.zip", "wb") as out:
            for chunk in answer.iter_bytes():
                size += len(chunk)
                out.write(chunk)
        total = time.perf_counter() - t0
        stop.set()
        sampler.join()
        with zipfile.ZipFile(root / "export.zip") as z:
            members = len(z.namelist())
        n = studies * args.per_study
        print(f"export: {status['results'][0]['detail']}; job {built:.1f} s ({n / built:.0f} instances/s), "
              f"with the ZIP download {total:.1f} s ({n / total:.0f} instances/s); ZIP {size / 1e6:.0f} MB, {members} members")
        print(f"RSS server {base_server / 2**20:.0f} -> peak {peak['server'] / 2**20:.0f} MiB; "
              f"largest worker {base_workers / 2**20:.0f} -> peak {peak['workers'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
