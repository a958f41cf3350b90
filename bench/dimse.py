"""C-STORE benchmark: dcmtk's storescu into dicomsvc's SCP vs into Orthanc's, on synthetic CT.

Run from the repo root:

    .venv/bin/python bench/dimse.py [--n 500] [--keep] [--json out.json]

What it does (servers always stopped in a finally block; loopback only):

  1. writes N CT-like instances (512x512 int16, explicit VR LE; bench/corpus.py);
  2. "1 association": a fresh dicomsvc (DICOMSVC_DIMSE_PORT, the worker processes, a peer
     file allowing STORESCU), then a fresh Orthanc (its DICOM server on, no plugins), each
     receives all N files from one storescu run (one association, the same file list);
  3. "4 associations": a fresh Orthanc, then a fresh dicomsvc (ABBA order), each receives
     the N files split over 4 storescu runs at once;
  4. prints instances/s and server CPU per instance side by side, the ratio, and the
     numbers as JSON on the last stdout line.

A run counts only if storescu reports Success for every file and the server then holds N
instances (dicomsvc: GET /stats; Orthanc: GET /statistics). Server CPU is utime+stime of
the server's process tree (bench/procstat.py) from before the first association to the
end of settling.
"""

from __future__ import annotations

import argparse
import json
import subprocess
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
SETTINGS: dict[str, str] = {}  # --max-pdu: DICOMSVC_DIMSE_MAX_PDU


class OursScp(S.Service):
    label = "dicomsvc"

    def launch_server(self) -> None:
        data, import_root = self.work / "data", self.work / "import"
        data.mkdir()
        import_root.mkdir()
        peers = self.work / "network.json"
        peers.write_text(json.dumps({"peers": [{"ae_title": "STORESCU", "host": "127.0.0.1"}]}))
        self.dimse_port = S.free_port()
        env = S.dicomsvc_env(data, import_root, DICOMSVC_DIMSE_PORT=str(self.dimse_port),
                             DICOMSVC_NETWORK_CONFIG=str(peers), **SETTINGS)  # fmt: skip
        self.launch_dicomsvc(S.uvicorn_argv(self.port) + ["--no-access-log"], REPO, env)
        self.called = "DICOMSVC"

    def count(self) -> int:
        return httpx.get(self.base + "/stats", timeout=30, trust_env=False).json()["instances"]


class OrthancScp(S.OrthancService):
    """Orthanc with its DICOM server on (AE ORTHANC, any calling AE may store)."""

    def launch_server(self) -> None:
        self.dimse_port = S.free_port()
        cfg_path = S.write_orthanc_config(self.work, self.port)
        cfg = json.loads(cfg_path.read_text())
        cfg |= {"DicomServerEnabled": True, "DicomPort": self.dimse_port, "DicomAet": "ORTHANC",
                "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True}  # fmt: skip
        cfg_path.write_text(json.dumps(cfg, indent=2))
        import os

        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")}
        self.launch([self.binary, str(cfg_path)], self.work, env, "/system")
        self.called = "ORTHANC"

    def count(self) -> int:
        return httpx.get(self.base + "/statistics", timeout=30, trust_env=False).json()["CountInstances"]


def storescu(target: S.Service, files: list[Path]) -> tuple[int, str]:
    """One storescu run (one association) of ``files``: (successes, output tail)."""
    done = subprocess.run(
        ["storescu", "-v", "-aet", "STORESCU", "-aec", target.called, "127.0.0.1", str(target.dimse_port),
         *map(str, files)],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    output = done.stdout + done.stderr
    return output.count("Received Store Response (Success)"), output[-500:]


def phase(target: S.Service, files: list[Path], associations: int) -> dict:
    parts = [files[i::associations] for i in range(associations)]
    pid = target.server.pid
    cpu0 = P.tree_cpu_seconds(pid)
    t0 = time.monotonic()
    with ThreadPoolExecutor(associations) as pool:
        results = list(pool.map(lambda part: storescu(target, part), parts))
    seconds = time.monotonic() - t0
    settled = P.settle_cpu(pid)
    stored = sum(ok for ok, _ in results)
    record = {
        "associations": associations,
        "seconds": round(seconds, 2),
        "instances_per_s": round(len(files) / seconds, 1),
        "server_cpu_ms_per_inst": round(1000 * (settled - cpu0) / len(files), 2),
        "success": stored,
        "held": target.count(),
    }
    if stored != len(files) or record["held"] != len(files):
        record["problem"] = results[0][1]
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--max-pdu", type=int, help="DICOMSVC_DIMSE_MAX_PDU (default: the setting's)")
    parser.add_argument("--only", choices=("dicomsvc", "orthanc"), help="measure one service only")
    args = parser.parse_args()
    if args.max_pdu is not None:
        SETTINGS["DICOMSVC_DIMSE_MAX_PDU"] = str(args.max_pdu)
    binary = S.orthanc_binary()
    if binary is None:
        print("Orthanc is not installed (/usr/sbin/Orthanc)", file=sys.stderr)
        return 2
    results: dict = {"n": args.n, "orthanc": S.orthanc_version(binary), "phases": []}
    with S.Session("bench-dimse-", args.keep) as run:
        corpus = CO.make(run.tmp / "corpus", args.n, seed=1234)
        if corpus is None:
            return 1
        files = [inst.path for inst in corpus.instances]
        for associations, order in ((1, ("dicomsvc", "orthanc")), (4, ("orthanc", "dicomsvc"))):
            for name in order:
                if args.only and name != args.only:
                    continue
                target = OursScp(run.tmp, f"a{associations}") if name == "dicomsvc" else OrthancScp(run.tmp, f"a{associations}", binary)
                record: dict = {"service": name}
                if run.start(target, record):
                    record |= phase(target, files, associations)
                    run.stop(target)
                results["phases"].append(record)
                print(json.dumps(record), flush=True)
    print()
    print(f"C-STORE of {args.n} CT instances (512x512 int16) by storescu, loopback; {results['orthanc']}")
    print(f"{'associations':>12} | {'dicomsvc inst/s':>15} | {'Orthanc inst/s':>14} | {'ratio':>5} |"
          f" {'dicomsvc CPU ms/inst':>20} | {'Orthanc CPU ms/inst':>19}")  # fmt: skip
    for associations in (1, 4) if not args.only else ():
        ours = next(r for r in results["phases"] if r["service"] == "dicomsvc" and r.get("associations") == associations)
        theirs = next(r for r in results["phases"] if r["service"] == "orthanc" and r.get("associations") == associations)
        ratio = ours["instances_per_s"] / theirs["instances_per_s"]
        print(f"{associations:>12} | {ours['instances_per_s']:>15} | {theirs['instances_per_s']:>14} | {ratio:>5.2f} |"
              f" {ours['server_cpu_ms_per_inst']:>20} | {theirs['server_cpu_ms_per_inst']:>19}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    return run.rc


if __name__ == "__main__":
    sys.exit(main())
