"""Sending benchmark: POST /dicom/send to Orthanc over C-STORE and STOW-RS, beside Orthanc sending
the same instances to the same Orthanc.

Run from the repo root:

    .venv/bin/python bench/send.py [--n 500] [--batch 50] [--rounds 1] [--keep]

What it does (servers always stopped in a finally block; loopback only):

  1. writes N CT-like instances (512x512 int16, explicit VR LE; bench/corpus.py);
  2. starts the destination, Orthanc "target" (its DICOM server and DICOMweb plugin), and the
     senders: dicomsvc (with destinations ``pacs``, C-STORE to target, and ``web``, STOW-RS to
     target's /dicom-web) and a second Orthanc, "source" (with target as its DICOM modality and
     DICOMweb server); the N files are stored in both (dicomsvc: POST /dicom {"path"}; source:
     POST /instances), 4 clients each;
  3. for each way (dimse, stowrs), alternating dicomsvc and Orthanc, target emptied before each:
     dicomsvc: POST /dicom/send {"to", "ids"}, timed until GET /jobs/{id} is done; Orthanc:
     POST /modalities/target/store and POST /dicom-web/servers/target/stow (each synchronous),
     timed until it answers; then target must hold N instances;
  4. prints instances/s (and dicomsvc's CPU per instance) side by side, JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as CO  # noqa: E402
import procstat as P  # noqa: E402
import servers as S  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def rest(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=600, trust_env=False)


def count(orthanc: S.OrthancPacs) -> int:
    with rest(orthanc.base) as client:
        return client.get("/statistics").json()["CountInstances"]


def empty(orthanc: S.OrthancPacs) -> None:
    with rest(orthanc.base) as client:
        for study in client.get("/studies").json():
            client.delete(f"/studies/{study}")


def ours_send(ours: S.NetworkedDicomsvc, way: str, ids: list[str]) -> dict:
    """POST /dicom/send of every instance; seconds until the job is done, CPU of dicomsvc's tree."""
    cpu0 = P.tree_cpu_seconds(ours.server.pid)
    with rest(ours.base) as client:
        t0 = time.monotonic()
        job_id = client.post("/dicom/send", json={"to": way, "ids": ids}).json()["job"]
        while (job := client.get(f"/jobs/{job_id}").json())["status"] not in ("done", "failed"):
            time.sleep(0.05)
        seconds = time.monotonic() - t0
    cpu = P.tree_cpu_seconds(ours.server.pid) - cpu0
    return {"seconds": round(seconds, 2), "instances_per_s": round(len(ids) / seconds, 1),
            "cpu_ms_per_inst": round(1000 * cpu / len(ids), 2), "sent": job.get("sent"), "failed": job["failed"]}  # fmt: skip


def orthanc_send(source: S.OrthancPacs, way: str, ids: list[str]) -> dict:
    """Orthanc's own sending of the same instances: C-STORE to a modality, or STOW-RS to a
    DICOMweb server (both synchronous: the answer comes when they are sent)."""
    cpu0 = P.tree_cpu_seconds(source.server.pid)
    with rest(source.base) as client:
        t0 = time.monotonic()
        if way == "pacs":
            answer = client.post("/modalities/target/store", json={"Resources": ids, "Synchronous": True})
        else:
            answer = client.post("/dicom-web/servers/target/stow", json={"Resources": ids, "Synchronous": True})
        seconds = time.monotonic() - t0
    cpu = P.tree_cpu_seconds(source.server.pid) - cpu0
    return {"seconds": round(seconds, 2), "instances_per_s": round(len(ids) / seconds, 1),
            "cpu_ms_per_inst": round(1000 * cpu / len(ids), 2), "http": answer.status_code}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch", type=int, default=50, help="DICOMSVC_SEND_BATCH")
    parser.add_argument("--rounds", type=int, default=1, help="times each way is measured (alternating)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    binary = S.orthanc_binary() if S.OrthancPacs.DICOMWEB_PLUGIN.exists() else None
    if binary is None:
        sys.exit("Orthanc and its DICOMweb plugin are not installed (Debian: orthanc, orthanc-dicomweb)")
    results: dict = {"n": args.n, "batch": args.batch, "orthanc": S.orthanc_version(binary), "runs": []}
    with S.Session("bench-send-", args.keep) as run:
        if (corpus := CO.make(run.tmp / "corpus", args.n, seed=1234)) is None:
            return 1
        target = S.OrthancPacs(run.tmp, "target", binary)
        if not run.start(target, {}):
            return 1
        source = S.OrthancPacs(run.tmp, "source", binary, {
            "DicomModalities": {"target": ["ORTHANC", "127.0.0.1", target.dimse_port]},
            "DicomWeb": {"Servers": {"target": [f"{target.base}/dicom-web/"]}},
        })  # fmt: skip
        network = {"destinations": {
            "pacs": {"type": "dimse", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": target.dimse_port},
            "web": {"type": "stowrs", "url": f"{target.base}/dicom-web"},
        }}  # fmt: skip
        ours = S.NetworkedDicomsvc(run.tmp, "send")
        if not run.start(source, {}) or not run.start(ours, {}, REPO, corpus.root, network, {"DICOMSVC_SEND_BATCH": str(args.batch)}):
            return 1
        with rest(ours.base) as client, rest(source.base) as orthanc, ThreadPoolExecutor(4) as pool:
            ours_ids = list(pool.map(lambda i: client.post("/dicom", json={"path": i.rel}).json()["id"], corpus.instances))
            source_ids = list(pool.map(lambda i: orthanc.post("/instances", content=i.path.read_bytes()).json()["ID"],
                                       corpus.instances))  # fmt: skip
        for _ in range(args.rounds):
            for way in ("pacs", "web"):
                for who, send in (("dicomsvc", lambda: ours_send(ours, way, ours_ids)),
                                  ("orthanc", lambda: orthanc_send(source, way, source_ids))):  # fmt: skip
                    empty(target)
                    record = {"sender": who, "way": "C-STORE" if way == "pacs" else "STOW-RS"} | send()
                    record["held_by_target"] = count(target)
                    results["runs"].append(record)
                    print(json.dumps(record), flush=True)
    print()
    print(f"Sending {args.n} CT instances (512x512 int16, ~0.5 MB each) to {results['orthanc']} on loopback, "
          f"dicomsvc batches of {args.batch}")  # fmt: skip
    print(f"{'sender':>9} | {'way':>7} | {'inst/s':>7} | {'seconds':>7} | {'sender CPU ms/inst':>18} | {'held':>5}")
    for r in results["runs"]:
        print(f"{r['sender']:>9} | {r['way']:>7} | {r['instances_per_s']:>7} | {r['seconds']:>7} | "
              f"{r['cpu_ms_per_inst']:>18} | {r['held_by_target']:>5}")  # fmt: skip
    print(json.dumps(results))
    return run.rc


if __name__ == "__main__":
    sys.exit(main())
