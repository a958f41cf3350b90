"""Ingest throughput of 1 and 3 dicomsvc replicas on one PostgreSQL and one blob store (issue 13).

    .venv/bin/python bench/replicas.py --n 300 --clients 6 [--replicas 1,3] [--store folder|s3]

For each replica count: a fresh throwaway PostgreSQL database (tests/pgserver.py, fsync on) and a
fresh blob store -- one folder every replica's data directory links to, or a bucket on a throwaway
SeaweedFS (tests/seaweed.py, ``--store s3``, once DICOMSVC_BLOB_URL exists); the replicas are
``dicomsvc serve`` processes with data directories of their own and DICOMSVC_WORKERS each
(``--workers``, default: 2 for one replica, 1 each for three: the same two cores). The corpus
(bench/corpus.py: 512x512 int16 CTs, ~0.5 MB) is uploaded once, ``POST /dicom`` with each file's
bytes, by ``--clients`` threads sending to the replicas in turn. Printed per configuration:
instances/s, the servers' CPU ms per instance (all replica trees), PostgreSQL's and SeaweedFS's CPU ms, commits,
rows inserted and WAL bytes per instance, objects written per instance.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from corpus import synthesize  # noqa: E402
from procstat import tree_cpu_seconds  # noqa: E402
from servers import ServerProc, free_port  # noqa: E402

import pgserver  # noqa: E402


def pg_counters(url: str) -> dict[str, float]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        commits, inserted = conn.execute(
            "SELECT xact_commit, tup_inserted FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        (wal,) = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()
    return {"commits": commits, "rows": inserted, "wal": float(wal)}


def postmaster_pid(server: pgserver.Server) -> int:
    return int((server.root / "data" / "postmaster.pid").read_text().split()[0])


class Store:
    """Where the replicas' blobs go: a shared folder, or an S3 bucket (``--store s3``)."""

    def __init__(self, kind: str, root: Path, s3=None) -> None:
        self.kind, self.root, self.s3 = kind, root, s3
        self.bucket = s3.new_bucket() if s3 is not None else None
        if kind == "folder":
            (root / "blobs").mkdir(parents=True)
            (root / "spool").mkdir()

    def env(self) -> dict[str, str]:
        return self.s3.env(self.bucket) if self.s3 is not None else {}

    def prepare(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True)
        if self.kind == "folder":
            (data_dir / "blobs").symlink_to(self.root / "blobs")
            (data_dir / "spool").symlink_to(self.root / "spool")

    def cpu_seconds(self) -> float:
        """The object store server's CPU (SeaweedFS: master, volume, filer and S3 in one process)."""
        return tree_cpu_seconds(self.s3.process.pid) if self.s3 is not None else 0.0

    def objects(self) -> int:
        if self.s3 is not None:
            return len(self.s3.keys(self.bucket))
        return sum(1 for p in (self.root / "blobs").rglob("*") if p.is_file() and ".tmp" not in p.parts)


def run_config(pg: pgserver.Server, store_kind: str, s3, replicas: int, workers: int, corpus, clients: int, work: Path) -> dict:
    url = pg.new_database()
    store = Store(store_kind, work / f"store{replicas}", s3)
    servers: list[ServerProc] = []
    dicomsvc = Path(sys.executable).with_name("dicomsvc")
    try:
        for i in range(replicas):
            data = work / f"r{replicas}-{i}"
            store.prepare(data)
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMSVC_")} | store.env() | {
                "DICOMSVC_DATA_DIR": str(data), "DICOMSVC_IMPORT_ROOT": str(work / "import"),
                "DICOMSVC_DATABASE_URL": url, "DICOMSVC_WORKERS": str(workers), "DICOMSVC_HOST": "127.0.0.1",
                "DICOMSVC_PORT": str(port), "DICOMSVC_LOG_LEVEL": "warning", "DICOMSVC_MIN_FREE_BYTES": "0",
            }  # fmt: skip
            server = ServerProc(f"replica{i}", [str(dicomsvc), "serve"], str(data), env, work / f"r{replicas}-{i}.log")
            server.start()
            servers.append(server)
            server.url = f"http://127.0.0.1:{port}"
        for server in servers:
            server.wait_ready(f"{server.url}/readyz", timeout=90)
        bodies = [inst.path.read_bytes() for inst in corpus.instances]
        before = pg_counters(url)
        cpu0 = sum(tree_cpu_seconds(s.pid) for s in servers)
        pg0 = tree_cpu_seconds(postmaster_pid(pg))
        store0 = store.cpu_seconds()
        objects0 = store.objects()
        lock, next_i, statuses = threading.Lock(), [0], []

        def client(k: int) -> None:
            with httpx.Client(timeout=300) as http:
                while True:
                    with lock:
                        i = next_i[0]
                        next_i[0] += 1
                    if i >= len(bodies):
                        return
                    target = servers[(i + k) % replicas]
                    answer = http.post(f"{target.url}/dicom", content=bodies[i], headers={"content-type": "application/dicom"})
                    with lock:
                        statuses.append(answer.status_code)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        cpu = sum(tree_cpu_seconds(s.pid) for s in servers) - cpu0
        pg_cpu = tree_cpu_seconds(postmaster_pid(pg)) - pg0
        store_cpu = store.cpu_seconds() - store0
        for server in servers:  # their connections close, and a closing backend reports its statistics
            server.stop()
        time.sleep(0.5)
        after = pg_counters(url)
        n = len(bodies)
        bad = [s for s in statuses if s != 201]
        return {
            "replicas": replicas, "workers": workers, "n": n, "errors": len(bad), "per_s": n / wall,
            "cpu_ms": 1000 * cpu / n, "pg_cpu_ms": 1000 * pg_cpu / n, "store_cpu_ms": 1000 * store_cpu / n,
            "commits": (after["commits"] - before["commits"]) / n, "rows": (after["rows"] - before["rows"]) / n,
            "wal_kb": (after["wal"] - before["wal"]) / n / 1024, "objects": (store.objects() - objects0) / n,
        }  # fmt: skip
    finally:
        for server in servers:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--replicas", default="1,3")
    ap.add_argument("--workers", type=int, default=0, help="worker processes per replica (0: 2 / replicas, at least 1)")
    ap.add_argument("--store", choices=("folder", "s3"), default="folder")
    args = ap.parse_args()
    counts = [int(x) for x in args.replicas.split(",")]
    with tempfile.TemporaryDirectory(prefix="dicomsvc-replicas-") as tmp:
        work = Path(tmp)
        corpus = synthesize(work / "import", args.n)
        with pgserver.running(fsync=True) as pg:
            if args.store == "s3":
                import seaweed

                with seaweed.running() as s3:
                    rows = [run_config(pg, "s3", s3, r, args.workers or max(1, 2 // r), corpus, args.clients, work) for r in counts]
            else:
                rows = [run_config(pg, "folder", None, r, args.workers or max(1, 2 // r), corpus, args.clients, work) for r in counts]
    print(f"\n{args.n} CT instances (512x512 int16), {args.clients} clients, PostgreSQL (fsync on) + {args.store} blobs, "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    head = "| replicas x workers | instances/s | server CPU ms/inst | PostgreSQL CPU ms/inst | object store CPU ms/inst | commits/inst | rows/inst | WAL KiB/inst | objects/inst | errors |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for r in rows:
        print(f"| {r['replicas']} x {r['workers']} | {r['per_s']:.0f} | {r['cpu_ms']:.1f} | {r['pg_cpu_ms']:.1f} | {r['store_cpu_ms']:.1f} | "
              f"{r['commits']:.2f} | {r['rows']:.0f} | {r['wal_kb']:.1f} | {r['objects']:.2f} | {r['errors']} |")  # fmt: skip


if __name__ == "__main__":
    main()
