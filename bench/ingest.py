"""Ingest + render benchmark: dicomsvc vs. Orthanc, on synthetic CT, on loopback.

Run from the repo root:

    .venv/bin/python bench/ingest.py [--n 500] [--no-orthanc] [--keep] [--json out.json]
                                     [--reads 500] [--phase-timeout 900]
                                     [--auth none|token] [--audit on|off]

What it does (all bounded by request counts and deadlines; servers are always
killed in a finally block):

  1. writes N CT-like instances (512x512 int16, explicit VR LE) into a temp dir;
  2. phase "1 client":  a fresh dicomsvc, then a fresh Orthanc, each ingests all N
     files sequentially (dicomsvc: POST /dicom {"path": rel}; Orthanc: POST
     /instances with the file bytes);
  3. reads: with both servers from phase 2 still up, GET image/tags (dicomsvc
     /image, /tags; Orthanc /instances/{id}/preview, /instances/{id}/tags) on
     stored ids, one request to each service in turn (order swapped each time);
  4. phase "4 clients": a fresh Orthanc, then a fresh dicomsvc (ABBA order),
     each ingests all N files with 4 concurrent client threads;
  5. prints a table + ratios, and the numbers as JSON on the last stdout line.

Server CPU is utime+stime of the server process tree from /proc, taken just
before the first and after the last ingest request, plus up to 3 s of settling
(background work the server finishes after answering).  Peak RSS is VmHWM of
the server process and its live children, read just before the server is stopped.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clients as CL  # noqa: E402
import corpus as CO  # noqa: E402
import procstat as P  # noqa: E402
import report as R  # noqa: E402
import servers as S  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO  # cwd of `dicomsvc serve`, where `app:app` is imported from (--app-dir, for testing the bench itself)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADERS = {"Accept-Encoding": "identity"}
AUTH = "none"  # --auth token: DICOMSVC_AUTH=token, every request with an uploader's API token
AUDIT = "true"  # --audit off: DICOMSVC_AUDIT=false (the audit trail's cost, issue 11)


# --------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------
class Target(S.Service):
    """A service under test: how to start it and how to talk to it."""

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=HEADERS, timeout=60.0, trust_env=False)

    # to override (and launch_server)
    def ingest(self, c: httpx.Client, inst: CO.Instance) -> tuple[str | None, str | None]: ...
    def image_url(self, id_: str) -> str: ...
    def tags_url(self, id_: str) -> str: ...


class Ours(Target):
    label = "dicomsvc"

    def __init__(self, workroot: Path, tag: str, import_root: Path):
        super().__init__(workroot, tag)
        self.import_root = import_root

    def launch_server(self):
        data = self.work / "data"
        data.mkdir()
        env = S.dicomsvc_env(data, self.import_root, DICOMSVC_AUTH=AUTH, DICOMSVC_AUDIT=AUDIT,
                             DICOMSVC_HOST="127.0.0.1", DICOMSVC_PORT=str(self.port))  # fmt: skip
        self.token = None
        if AUTH == "token":  # made before the server starts, as an operator would: dicomsvc token create
            made = subprocess.run(
                [sys.executable, "-m", "dicomsvc.cli.main", "token", "create", "--user", "bench", "--role", "uploader"],
                cwd=APP_DIR, env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            self.token = made.stdout.strip()
        self.launch_dicomsvc(S.serve_argv(), APP_DIR, env)  # as users run it: `dicomsvc serve`

    def client(self) -> httpx.Client:
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.base, headers=HEADERS | auth, timeout=60.0, trust_env=False)

    def ingest(self, c, inst):
        r = c.post("/dicom", json={"path": inst.rel})
        if r.status_code != 201:
            return None, f"POST /dicom {inst.rel}: HTTP {r.status_code} {r.text[:300]!r}"
        try:
            return str(r.json()["id"]), None
        except Exception as e:  # noqa: BLE001
            return None, f"POST /dicom {inst.rel}: 201 but body {r.text[:300]!r} ({e!r})"

    def upload(self, c, inst):
        r = c.post("/dicom", content=inst.path.read_bytes(), headers={"Content-Type": "application/dicom"})
        if r.status_code != 201:
            return None, f"POST /dicom (upload) {inst.rel}: HTTP {r.status_code} {r.text[:300]!r}"
        return str(r.json()["id"]), None

    def image_url(self, id_):
        return f"/image?id={id_}"

    def tags_url(self, id_):
        return f"/tags?id={id_}"


class Orthanc(S.OrthancService, Target):
    def ingest(self, c, inst):
        body = inst.path.read_bytes()
        r = c.post("/instances", content=body, headers={"Content-Type": "application/dicom"})
        if r.status_code != 200:
            return None, f"POST /instances {inst.rel}: HTTP {r.status_code} {r.text[:300]!r}"
        try:
            j = r.json()
        except Exception as e:  # noqa: BLE001
            return None, f"POST /instances {inst.rel}: body {r.text[:300]!r} ({e!r})"
        if j.get("Status") != "Success":
            return None, f"POST /instances {inst.rel}: Status {j.get('Status')!r}"
        return j["ID"], None

    upload = ingest  # Orthanc has no path import: both rows are POST /instances with the bytes

    def image_url(self, id_):
        return f"/instances/{id_}/preview"

    def tags_url(self, id_):
        return f"/instances/{id_}/tags"


# --------------------------------------------------------------------------
# phases
# --------------------------------------------------------------------------
def run_ingest(t: Target, corpus: CO.Corpus, clients: int, deadline_s: float) -> dict:
    insts = corpus.instances
    run = CL.send_each(insts, clients, deadline_s, t.client, t.ingest, t.server.pid)
    ids = run.answers
    ok = run.ok
    wall = run.wall
    res = run.summary()
    res.update(
        client_cpu_ms_per_inst=round(1000 * run.client_cpu / ok, 2) if ok else None,
        mb_per_s=round(sum(i.size for i, x in zip(insts, ids) if x) / wall / 1e6, 1) if wall > 0 else None,
        _ids=ids,
    )
    return res


def check_image(r: httpx.Response) -> str | None:
    if r.status_code != 200:
        return f"HTTP {r.status_code} {r.text[:300]!r}"
    if not r.content.startswith(PNG_MAGIC):
        return f"200 but not a PNG (content-type {r.headers.get('content-type')!r}, first bytes {r.content[:16]!r})"
    return None


def check_tags(r: httpx.Response) -> str | None:
    if r.status_code != 200:
        return f"HTTP {r.status_code} {r.text[:300]!r}"
    try:
        j = r.json()
    except Exception as e:  # noqa: BLE001
        return f"200 but not JSON ({e!r}): {r.text[:200]!r}"
    if not j:
        return "200 but empty JSON"
    return None


def run_reads(targets: list[tuple[Target, list[str | None]]], n_req: int, deadline_s: float, seed: int) -> dict:
    """Alternate single requests between targets; same instance order for all."""
    # only instances that every target stored
    common = [i for i in range(len(targets[0][1])) if all(ids[i] for _, ids in targets)]
    res = {t.label: {} for t, _ in targets}
    if not common:
        for t, _ in targets:
            res[t.label] = {"image": {"n": 0, "errors": 0}, "tags": {"n": 0, "errors": 0}, "note": "no stored ids"}
        return res
    rnd = random.Random(seed)
    order = common[:]
    rnd.shuffle(order)
    seq = [order[k % len(order)] for k in range(n_req)]  # each id once before any repeats
    warm = order[: min(5, len(order))]
    clients = {t.label: t.client() for t, _ in targets}
    try:
        for kind, url_of, check in (("image", "image_url", check_image), ("tags", "tags_url", check_tags)):
            lat = {t.label: [] for t, _ in targets}
            errs = {t.label: [] for t, _ in targets}
            nerr = {t.label: 0 for t, _ in targets}
            nbytes = {t.label: 0 for t, _ in targets}
            for t, ids in targets:  # warm-up, not counted
                for i in warm:
                    try:
                        clients[t.label].get(getattr(t, url_of)(ids[i]))
                    except httpx.HTTPError:
                        pass
            deadline = time.monotonic() + deadline_s
            done = 0
            for k, i in enumerate(seq):
                if time.monotonic() > deadline:
                    break
                pair = targets if k % 2 == 0 else targets[::-1]
                for t, ids in pair:
                    c = clients[t.label]
                    url = getattr(t, url_of)(ids[i])
                    t0 = time.perf_counter()
                    try:
                        r = c.get(url)
                        dt = (time.perf_counter() - t0) * 1000
                        err = check(r)
                    except httpx.HTTPError as e:
                        dt, err, r = None, repr(e), None
                    if err:
                        nerr[t.label] += 1
                        if len(errs[t.label]) < CL.MAX_ERR_SAMPLES:
                            errs[t.label].append(f"GET {url}: {err}")
                    else:
                        lat[t.label].append(dt)
                        nbytes[t.label] += len(r.content)
                done += 1
            for t, _ in targets:
                s = R.lat_summary(lat[t.label])
                s.update(
                    requests=done,
                    errors=nerr[t.label],
                    error_samples=errs[t.label],
                    mean_bytes=round(nbytes[t.label] / len(lat[t.label])) if lat[t.label] else None,
                )
                res[t.label][kind] = s
    finally:
        for c in clients.values():
            c.close()
    return res


def snapshot_rss(t: Target) -> dict:
    return P.tree_peak_rss_mib(t.server.pid) if t.server and t.server.alive() else {"sum_mib": None}


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
def print_report(out: dict) -> None:
    svc = out["services"]
    names = list(svc)
    table = R.Table(svc)
    table.row("ingest, 1 client      [inst/s]", ("ingest_1", "inst_per_s"))
    table.row("ingest, 4 clients     [inst/s]", ("ingest_4", "inst_per_s"))
    table.row("server CPU/inst, 1 cl [ms]", ("ingest_1", "server_cpu_ms_per_inst"), better="lo")
    table.row("server CPU/inst, 4 cl [ms]", ("ingest_4", "server_cpu_ms_per_inst"), better="lo")
    table.row("image p50             [ms]", ("reads", "image", "p50_ms"), "{:.2f}", better="lo")
    table.row("image p95             [ms]", ("reads", "image", "p95_ms"), "{:.2f}", better="lo")
    table.row("tags  p50             [ms]", ("reads", "tags", "p50_ms"), "{:.2f}", better="lo")
    table.row("tags  p95             [ms]", ("reads", "tags", "p95_ms"), "{:.2f}", better="lo")
    table.row("peak RSS, 1-cl server [MiB]", ("rss_1", "sum_mib"), better="lo")
    table.row("peak RSS, 4-cl server [MiB]", ("rss_4", "sum_mib"), better="lo")
    table.row("startup to ready      [s]", ("startup_s",), "{:.2f}", better="lo")
    table.print()
    if len(names) == 2:
        print("ratio: ours/Orthanc for throughput, Orthanc/ours for latency, CPU, RSS, startup"
              " -> >1 means dicomsvc is better")
    # extra facts
    for n in names:
        s = svc[n]
        i1, i4, rd = s.get("ingest_1", {}), s.get("ingest_4", {}), s.get("reads", {})
        print(
            f"{n}: image mean {R.fmt(R.dig(rd, ('image', 'mean_bytes')), '{:.0f}')} B/resp,"
            f" tags mean {R.fmt(R.dig(rd, ('tags', 'mean_bytes')), '{:.0f}')} B/resp;"
            f" CPU after last reply {R.fmt(i1.get('server_cpu_after_reply_s'), '{:.2f}')}/"
            f"{R.fmt(i4.get('server_cpu_after_reply_s'), '{:.2f}')} s (1/4 cl);"
            f" bench-client CPU/inst {R.fmt(i1.get('client_cpu_ms_per_inst'))}/{R.fmt(i4.get('client_cpu_ms_per_inst'))} ms"
        )


def collect_errors(out: dict) -> list[str]:
    lines = []
    for n, s in out["services"].items():
        for ph in ("ingest_1", "ingest_4"):
            lines += CL.problems(n, ph, s.get(ph))
        for kind in ("image", "tags"):
            p = R.dig(s, ("reads", kind))
            if p and p.get("errors"):
                lines.append(f"{n} GET {kind}: {p['errors']} errors of {p.get('requests')}")
                lines += [f"    {e}" for e in p.get("error_samples", [])]
        for e in s.get("fatal", []):
            lines.append(f"{n}: {e}")
    return lines


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500, help="instances to synthesize and ingest (default 500)")
    ap.add_argument("--reads", type=int, default=500, help="GET requests per endpoint per service (default 500)")
    ap.add_argument("--no-orthanc", action="store_true", help="benchmark dicomsvc only")
    ap.add_argument("--no-ours", action="store_true", help="benchmark Orthanc only (bench development)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (instances, data dirs, server logs)")
    ap.add_argument("--json", metavar="FILE", help="also write the JSON results to FILE")
    ap.add_argument("--phase-timeout", type=float, default=900.0, help="deadline per ingest/read phase, s")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--no-access-log", action="store_true",
                    help="no effect, kept for older command lines: dicomsvc runs as `dicomsvc serve` does,"
                         " without uvicorn's access log (Orthanc logs no access lines either)")
    ap.add_argument("--auth", choices=("none", "token"), default="none",
                    help="dicomsvc's DICOMSVC_AUTH: token sends an uploader's API token on every request")
    ap.add_argument("--audit", choices=("on", "off"), default="on",
                    help="dicomsvc's audit trail (DICOMSVC_AUDIT): off to measure what it costs")
    ap.add_argument("--table", action="store_true",
                    help="the issue-12 table: path/upload x 1/4 clients, ZIP, CPU, fsyncs (strace), tags, image vs"
                         " nginx, idle PSS, peak RSS; --rounds rounds alternating with Orthanc (bench/sidebyside.py)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of --table (medians reported)")
    ap.add_argument("--app-dir", default=str(REPO), help=argparse.SUPPRESS)  # bench self-test only
    a = ap.parse_args(argv)
    if a.n < 1 or a.reads < 0:
        ap.error("--n must be >= 1 and --reads >= 0")

    global APP_DIR, AUTH, AUDIT  # noqa: PLW0603
    APP_DIR = Path(a.app_dir).resolve()
    AUTH = a.auth
    AUDIT = "true" if a.audit == "on" else "false"
    out, binary = R.begin(a.no_orthanc, a.no_ours)
    if out is None:
        return 2
    use_ours, use_orth = not a.no_ours, binary is not None

    with S.Session("dicomsvc-bench-", a.keep) as run:
        tmp = run.tmp
        import_root = tmp / "import"
        import_root.mkdir()
        if a.table:
            import sidebyside

            sidebyside.run_table(a, out, binary, Ours, Orthanc, run, import_root)
            return R.finish(out, run.rc, lambda o: None, [e for s in out["services"].values()
                                                          for e in s.get("fatal", [])], a.json)
        corpus = CO.make(import_root, a.n, a.seed, f" in {tmp}" if a.keep else "")
        if corpus is None:
            return 2
        out["config"] = {
            "n": a.n, "reads": a.reads, "uvicorn_access_log": False, "elements_per_instance": corpus.n_elements,
            "auth": a.auth,
            "audit": a.audit,
            "bytes_total": corpus.bytes_total,
            "phases": "1-client: fresh dicomsvc then fresh Orthanc, each ingests all N; reads (ids in one shuffled"
                      " order, each id once before any repeats, 5 warm-up GETs not counted) alternate request by"
                      " request on those two servers; 4-client: fresh Orthanc then fresh dicomsvc, each ingests all N",
        }

        def start(t: Target) -> bool:
            return run.start(t, out["services"][t.label])

        def ingest(t: Target, clients: int, key: str):
            t0 = time.monotonic()
            r = run_ingest(t, corpus, clients, a.phase_timeout)
            ids = r.pop("_ids")
            out["services"][t.label][key] = r
            print(f"  [{t.label}] ingest x{clients}: {r['ok']}/{r['n']} ok in {r['wall_s']:.1f}s"
                  f" = {r['inst_per_s']} inst/s" + (f", {r['errors']} ERRORS" if r["errors"] else "")
                  + f"  ({time.monotonic() - t0:.0f}s)", flush=True)
            return ids

        # ---- phase 1: 1 client, ours then Orthanc; then reads on both ----
        print("phase 1: sequential ingest (1 client), fresh servers", flush=True)
        readers = []
        if use_ours:
            o1 = Ours(tmp, "p1", import_root)
            if start(o1):
                readers.append((o1, ingest(o1, 1, "ingest_1")))
        if use_orth:
            r1 = Orthanc(tmp, "p1", binary)
            if start(r1):
                readers.append((r1, ingest(r1, 1, "ingest_1")))
        if readers and a.reads:
            print(f"phase 2: {a.reads} x GET image + {a.reads} x GET tags per service, alternating services"
                  " request by request", flush=True)
            rd = run_reads(readers, a.reads, a.phase_timeout, a.seed)
            for t, _ in readers:
                out["services"][t.label]["reads"] = rd[t.label]
                im, tg = rd[t.label]["image"], rd[t.label]["tags"]
                print(f"  [{t.label}] image p50 {im.get('p50_ms')} ms p95 {im.get('p95_ms')} ms;"
                      f" tags p50 {tg.get('p50_ms')} ms p95 {tg.get('p95_ms')} ms"
                      + (f"; {im['errors']}+{tg['errors']} ERRORS" if im.get("errors") or tg.get("errors") else ""),
                      flush=True)
        for t, _ in readers:
            out["services"][t.label]["rss_1"] = snapshot_rss(t)
        for t in list(run.live):
            run.stop(t)

        # ---- phase 3: 4 clients, Orthanc then ours (ABBA) ----
        print("phase 3: concurrent ingest (4 clients), fresh servers", flush=True)
        order = []
        if use_orth:
            order.append(Orthanc(tmp, "p3", binary))
        if use_ours:
            order.append(Ours(tmp, "p3", import_root))
        for t in order:
            if start(t):
                ingest(t, 4, "ingest_4")
                out["services"][t.label]["rss_4"] = snapshot_rss(t)
            run.stop(t)

    return R.finish(out, run.rc, print_report, collect_errors(out), a.json)


if __name__ == "__main__":
    sys.exit(main())
