"""Ingest throughput of the embedded default vs the scale configuration, side by side (issue 13).

    .venv/bin/python bench/scale.py [--n 500] [--clients 1,4] [--configs all|"name;name"]

Configurations (``CONFIGS``, a list: add a row to compare another one -- replicas, another store):
SQLite + the local blob folder, and PostgreSQL (a throwaway server, tests/pgserver.py, fsync on) +
S3 blobs on a throwaway SeaweedFS (tests/seaweed.py), each with encryption at rest off and on, with
one ``dicomsvc serve`` replica; and PostgreSQL + SeaweedFS with three replicas (data directories of
their own, one index and bucket), the clients' requests spread over them in turn. Every replica
runs its default workers. For every configuration, mode and client count fresh servers, data
directories, database and bucket prefix: the corpus (bench/corpus.py,
512x512 int16 CTs, ~0.5 MB each) sent once, ``POST /dicom {"path"}`` (read from the import root)
or the file as the request body (upload), by 1 and 4 client threads (bench/clients.py).
Printed: instances/s and the servers' CPU ms per instance (their process trees: servers + workers).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from clients import send_each  # noqa: E402
from corpus import synthesize  # noqa: E402
from servers import ServerProc, free_port  # noqa: E402


@dataclass(frozen=True)
class Setup:
    name: str
    postgres: bool = False  # the index on PostgreSQL (else SQLite in the data directory)
    s3: bool = False  # blobs on SeaweedFS (else the local folder)
    encrypted: bool = False  # DICOMSVC_ENCRYPTION_KEY set
    settings: dict = field(default_factory=dict)  # more DICOMSVC_* for this configuration
    replicas: int = 1  # dicomsvc serve processes on the one index and store; requests spread over them


CONFIGS = [
    Setup("SQLite + folder"),
    Setup("SQLite + folder, encrypted", encrypted=True),
    Setup("PostgreSQL + SeaweedFS", postgres=True, s3=True),
    Setup("PostgreSQL + SeaweedFS, encrypted", postgres=True, s3=True, encrypted=True),
    Setup("PostgreSQL + SeaweedFS, 3 replicas", postgres=True, s3=True, replicas=3),
]
KEY = base64.b64encode(os.urandom(32)).decode()


class Backends:
    """The throwaway servers the configurations need, started on first use."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack, self.pg, self.s3, self.bucket = stack, None, None, None

    def env(self, setup: Setup) -> dict[str, str]:
        env: dict[str, str] = {}
        if setup.postgres:
            if self.pg is None:
                import pgserver

                self.pg = self.stack.enter_context(pgserver.running(fsync=True))
            env["DICOMSVC_DATABASE_URL"] = self.pg.new_database()
        if setup.s3:
            if self.s3 is None:
                import seaweed

                self.s3 = self.stack.enter_context(seaweed.running())
                self.bucket = self.s3.new_bucket()
            env |= self.s3.env(self.bucket, f"b{uuid.uuid4().hex[:10]}")
        if setup.encrypted:
            env["DICOMSVC_ENCRYPTION_KEY"] = KEY
        return env | setup.settings


def run(setup: Setup, backends: Backends, corpus, mode: str, clients: int, work: Path) -> dict:
    shared = {k: v for k, v in os.environ.items() if not k.startswith("DICOMSVC_")} | backends.env(setup)
    dicomsvc = Path(sys.executable).with_name("dicomsvc")
    servers, urls = [], []
    for _ in range(setup.replicas):  # each with a data directory of its own (dicomsvc.lock)
        data = work / f"d{uuid.uuid4().hex[:8]}"
        data.mkdir()
        port = free_port()
        env = shared | {
            "DICOMSVC_DATA_DIR": str(data), "DICOMSVC_IMPORT_ROOT": str(work / "import"), "DICOMSVC_HOST": "127.0.0.1",
            "DICOMSVC_PORT": str(port), "DICOMSVC_LOG_LEVEL": "warning", "DICOMSVC_MIN_FREE_BYTES": "0",
        }  # fmt: skip
        servers.append(ServerProc(setup.name, [str(dicomsvc), "serve"], str(data), env, data / "server.log"))
        servers[-1].start()
        urls.append(f"http://127.0.0.1:{port}")
    turns = itertools.count()  # the replicas in turn, request by request
    try:
        for server, url in zip(servers, urls):
            server.wait_ready(f"{url}/readyz", timeout=90)

        def send(http: httpx.Client, inst):
            url = urls[next(turns) % len(urls)]
            if mode == "path":
                answer = http.post(f"{url}/dicom", json={"path": inst.rel})
            else:
                answer = http.post(f"{url}/dicom", content=inst.path.read_bytes(), headers={"content-type": "application/dicom"})
            return (answer.status_code, None) if answer.status_code == 201 else (None, f"{answer.status_code} {answer.text[:200]}")

        sent = send_each(corpus.instances, clients, 900, lambda: httpx.Client(timeout=300), send, [s.pid for s in servers])
        return sent.summary()
    finally:
        for server in servers:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--clients", default="1,4")
    ap.add_argument("--configs", default="all", help="names of CONFIGS rows separated by ';' (names hold commas), or all")
    args = ap.parse_args()
    counts = [int(x) for x in args.clients.split(",")]
    setups = CONFIGS if args.configs == "all" else [s for s in CONFIGS if s.name in {n.strip() for n in args.configs.split(";")}]
    runs = [(mode, c) for mode in ("path", "upload") for c in counts]
    table: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="dicomsvc-scale-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        corpus = synthesize(work / "import", args.n)
        backends = Backends(stack)
        for mode, c in runs:  # configurations alternate within each run, not one after the other
            for setup in setups:
                table[(setup.name, mode, c)] = run(setup, backends, corpus, mode, c, work)
                print(f"  {setup.name}: {mode}, {c} client(s): {table[(setup.name, mode, c)]['inst_per_s']} inst/s", file=sys.stderr)
    print(f"\n{args.n} CT instances (512x512 int16, ~0.5 MB), each replica with its default workers, "
          f"{os.cpu_count()} CPUs; instances/s (server CPU ms per instance)\n")  # fmt: skip
    head = "| configuration | " + " | ".join(f"{mode}, {c} client{'s' if c > 1 else ''}" for mode, c in runs) + " |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for setup in setups:
        cells = []
        for mode, c in runs:
            r = table[(setup.name, mode, c)]
            bad = f", {r['errors']} errors" if r["errors"] else ""
            cells.append(f"{r['inst_per_s']} ({r['server_cpu_ms_per_inst']}){bad}")
        print(f"| {setup.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
