"""Forwarding benchmark: how fast dicomsvc's routing-rule queue drains into Orthanc.

Run from the repo root:

    .venv/bin/python bench/forward.py [--n 300] [--batch 50] [--kinds dimse,stowrs,stowrs-anon] [--keep]

What it does, once per destination kind (servers always stopped in a finally block; loopback):

  1. writes N CT-like instances (512x512 int16, explicit VR LE; bench/corpus.py);
  2. starts dicomsvc (its worker processes) with one rule sending everything to a destination
     (``dimse``: Orthanc's C-STORE SCP; ``stowrs``: Orthanc's DICOMweb plugin; ``stowrs-anon``:
     the same with ``anonymize: true``), the Orthanc not started yet: every forward fails
     (connection refused) and stays queued -- the outage;
  3. imports the N files (POST /dicom {"path"}, 4 clients); then starts Orthanc, and times from
     Orthanc answering until GET /forwarding says all N were sent (backoff capped at 1 s, so at
     most about a second of that is the queue's wait) and Orthanc holds N instances;
  4. prints instances/s and dicomsvc's CPU per instance for the drain, and JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
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
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class OrthancPacs(S.OrthancService):
    """Orthanc with its DICOM server (AE ORTHANC) and the DICOMweb plugin; ports chosen at once."""

    def __init__(self, workroot: Path, tag: str, binary: str):
        super().__init__(workroot, tag, binary)
        self.dimse_port = S.free_port()

    def launch_server(self) -> None:
        cfg_path = S.write_orthanc_config(self.work, self.port)
        cfg = json.loads(cfg_path.read_text())
        cfg |= {"DicomServerEnabled": True, "DicomPort": self.dimse_port, "DicomAet": "ORTHANC",
                "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
                "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}  # fmt: skip
        cfg_path.write_text(json.dumps(cfg, indent=2))
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")}
        self.launch([self.binary, str(cfg_path)], self.work, env, "/system")

    def count(self) -> int:
        return httpx.get(self.base + "/statistics", timeout=30, trust_env=False).json()["CountInstances"]


class Ours(S.Service):
    label = "dicomsvc"

    def launch_server(self, import_root: Path, network: dict, batch: int) -> None:
        data = self.work / "data"
        data.mkdir()
        path = self.work / "network.json"
        path.write_text(json.dumps(network))
        env = S.dicomsvc_env(data, import_root, DICOMSVC_NETWORK_CONFIG=str(path), DICOMSVC_FORWARD_BATCH=str(batch),
                             DICOMSVC_FORWARD_BACKOFF_SECONDS="1", DICOMSVC_FORWARD_MAX_BACKOFF_SECONDS="1",
                             DICOMSVC_FORWARD_POLL_SECONDS="1")  # fmt: skip
        self.launch_dicomsvc(S.uvicorn_argv(self.port) + ["--no-access-log"], REPO, env)

    def start(self, *args) -> None:
        self.launch_server(*args)

    def forwarding(self) -> dict:
        return httpx.get(self.base + "/forwarding", timeout=30, trust_env=False).json()["destinations"][0]


def phase(run: S.Session, kind: str, corpus: CO.Corpus, binary: str, batch: int) -> dict:
    record: dict = {"destination": kind, "n": len(corpus.instances), "batch": batch}
    orthanc = OrthancPacs(run.tmp, kind, binary)
    if kind == "dimse":
        destination = {"type": "dimse", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dimse_port}
    else:
        destination = {"type": "stowrs", "url": f"{orthanc.base}/dicom-web"}
    network = {"destinations": {"pacs": destination}, "rules": [{"to": "pacs", "anonymize": kind == "stowrs-anon"}]}
    ours = Ours(run.tmp, kind)
    if not run.start(ours, record, corpus.root, network, batch):
        return record
    with httpx.Client(base_url=ours.base, timeout=120, trust_env=False) as client, ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda i: client.post("/dicom", json={"path": i.rel}).status_code, corpus.instances))
    record["imported"] = codes.count(201)
    queued = ours.forwarding()
    record["queued_before"] = queued["queued"]
    record["outage_detail"] = (queued["last_error"] or {}).get("detail")
    cpu0 = P.tree_cpu_seconds(ours.server.pid)
    if not run.start(orthanc, {}):
        record["problem"] = "Orthanc did not start"
        return record
    t0 = time.monotonic()
    deadline = t0 + 600
    while (state := ours.forwarding())["sent"] + state["failed"] < len(corpus.instances) and time.monotonic() < deadline:
        time.sleep(0.1)
    seconds = time.monotonic() - t0
    cpu = P.tree_cpu_seconds(ours.server.pid) - cpu0
    record |= {
        "seconds": round(seconds, 2),
        "instances_per_s": round(len(corpus.instances) / seconds, 1),
        "dicomsvc_cpu_ms_per_inst": round(1000 * cpu / len(corpus.instances), 2),
        "sent": state["sent"],
        "failed": state["failed"],
        "held_by_orthanc": orthanc.count(),
    }
    run.stop(ours)
    run.stop(orthanc)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--batch", type=int, default=50, help="DICOMSVC_FORWARD_BATCH")
    parser.add_argument("--kinds", default="dimse,stowrs,stowrs-anon")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    binary = S.orthanc_binary() if DICOMWEB_PLUGIN.exists() else None
    if binary is None:
        sys.exit("Orthanc and its DICOMweb plugin are not installed (Debian: orthanc, orthanc-dicomweb)")
    results: dict = {"n": args.n, "orthanc": S.orthanc_version(binary), "phases": []}
    with S.Session("bench-forward-", args.keep) as run:
        if (corpus := CO.make(run.tmp / "corpus", args.n, seed=1234)) is None:
            return 1
        for kind in args.kinds.split(","):
            record = phase(run, kind, corpus, binary, args.batch)
            results["phases"].append(record)
            print(json.dumps(record), flush=True)
    print()
    print(f"Forwarding queue drained into {results['orthanc']}: {args.n} CT instances (512x512 int16), loopback")
    print(f"{'destination':>12} | {'inst/s':>7} | {'seconds':>7} | {'dicomsvc CPU ms/inst':>20} | {'sent':>5} | {'held':>5}")
    for r in results["phases"]:
        if "seconds" in r:
            print(f"{r['destination']:>12} | {r['instances_per_s']:>7} | {r['seconds']:>7} | "
                  f"{r['dicomsvc_cpu_ms_per_inst']:>20} | {r['sent']:>5} | {r['held_by_orthanc']:>5}")  # fmt: skip
    print(json.dumps(results))
    return run.rc


if __name__ == "__main__":
    sys.exit(main())
