"""The issue-12 table: dicomsvc vs Orthanc (and nginx, the static-file floor), one run.

    .venv/bin/python bench/ingest.py --table [--n 500] [--rounds 3] [--json out.json]

Per round, services alternate (ours first in even rounds, Orthanc first in odd ones), each
on a fresh server and data folder: ingest by path (Orthanc has no path import: its row is
POST /instances with the bytes) and by upload (application/dicom), 1 and 4 clients, one
ZIP of the corpus, and (dicomsvc only: Orthanc has none) a folder import of the corpus
(``POST /dicom {"path": "."}``). Medians over the rounds. Then, untimed: fsync-family calls per
instance (strace -f -c on the whole server tree during a 1-client path ingest, and on a server
of its own during a folder import of the corpus), idle
memory (RSS and PSS summed over the server and its workers, after start-up), and reads
timed with one keep-alive ``http.client`` connection per service, request by request in
turn, in rounds (medians of the rounds' p50s), each after an untimed pass that reads every answer once
(Orthanc's /preview, ~14 ms of CPU each, in passes of its own): dicomsvc /tags and /image, Orthanc /instances/{id}/tags and /preview, and nginx
serving the very PNG files dicomsvc stored. Peak RSS during ingest is VmHWM summed over the
tree after each ingest, each process's VmHWM set back to its RSS just before the first request
(``procstat.reset_peak_rss``), so start-up peaks (a fork server's imports) are not in it; max
over rounds. "Since start" is the same sum without the reset (each process's larger peak). It
counts a page shared by forked workers once per process, so the peak of PSS summed over the
tree (sampled every 0.2 s during each ingest; shared pages once) is printed beside it.

No data folder is removed before the run ends (FRESH_INODES), so no service pays for the
files of the phase before it. On ext4 without a journal (this machine's root file system),
creating a file skips the free inodes of its block group that were freed in the last 5 s, or
5 min while the inode table block is dirty (``recently_deleted`` in fs/ext4/ialloc.c), one
buffer lookup each. What perf measured in a dicomsvc worker (two files created an instance):
``openat`` at 1.7-1.9 % of its CPU when nothing had been deleted for 5 minutes, 9.8 % right
after a folder of ~1,200 files was removed, 19-24 % after ~32,000 (``find_inode_bit`` 17-22 %),
and 2.1-2.4 % when the 1,500 deleted files lay in another block group. The cost of keeping the
folders: disk space, about 10 x the corpus per round (about 10 GB at the defaults).

Every phase also starts with nothing dirty in the page cache (SETTLE): the corpus and its
ZIP (written just before the first phase: twice the corpus's bytes) are synced before it, and
each phase's server, once stopped, is followed by an ``os.sync()`` outside the timed window.
Otherwise the kernel's flusher writes them back some 30 s later (``vm.dirty_expire_centisecs``),
in whichever phase runs then, on the same two cores.
"""

from __future__ import annotations

import http.client
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clients as CL  # noqa: E402
import corpus as CO  # noqa: E402
import procstat as P  # noqa: E402
import report as R  # noqa: E402
import servers as S  # noqa: E402
import upload as UP  # noqa: E402

# What strace counts: calls that make data durable (each waits for the disk and flushes its cache),
# and sync_file_range(SYNC_FILE_RANGE_WRITE), which only starts writeback and waits for nothing.
FLUSH_CALLS = ("fsync", "fdatasync", "syncfs", "sync", "msync")
WRITEBACK_CALLS = ("sync_file_range",)


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def _max(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _ingest(t, corpus: CO.Corpus, clients: int, how: str, deadline_s: float) -> dict:
    send = t.ingest if how == "path" else t.upload
    peak_pss, stop = [0.0], threading.Event()

    def sample():
        while not stop.wait(0.2):
            try:
                peak_pss[0] = max(peak_pss[0], tree_memory_mib(t.server.pid)[1])
            except (OSError, ValueError):  # a process went between listing and reading
                pass

    sampler = threading.Thread(target=sample, daemon=True)
    since_start = P.tree_peak_rss_mib(t.server.pid)  # the start-up's peak, for the "since start" row
    reset = P.reset_peak_rss(t.server.pid)
    sampler.start()
    try:
        run = CL.send_each(corpus.instances, clients, deadline_s, t.client, send, t.server.pid)
    finally:
        stop.set()
        sampler.join()
    res = run.summary()
    during = P.tree_peak_rss_mib(t.server.pid)
    res["peak_rss_mib"] = during["sum_mib"] if reset else None
    res["peak_rss_start_mib"] = _peak_since_start(since_start, during)
    res["peak_pss_mib"] = round(peak_pss[0], 1) or None
    res["_ids"] = run.answers
    return res


def _peak_since_start(start: dict, during: dict) -> float:
    """VmHWM summed as if never reset: each process's larger of its start-up peak (read before
    the reset) and its peak during the ingest; a process started during it has only the latter."""
    peaks = {pid: max(mib, start["per"].get(pid, 0.0)) for pid, mib in during["per"].items()}
    return round(sum(peaks.values()), 1)


def _folder(t, corpus: CO.Corpus, deadline_s: float) -> dict:
    """dicomsvc's folder import of the whole corpus: ``POST /dicom {"path": "."}`` (every file
    below the import root: a background job past DICOMSVC_SYNC_LIMIT files, else answered when
    stored), timed until ``GET /jobs/{id}?wait=`` says it is done (each answer held until the job ends: no poll interval in the figure). Orthanc has no
    folder import: the issue compares it with Orthanc's per-file upload."""
    pid, n = t.server.pid, len(corpus.instances)
    cpu0 = P.tree_cpu_seconds(pid)
    deadline = time.monotonic() + deadline_s
    with t.client() as c:
        t0 = time.perf_counter()
        r = c.post("/dicom", json={"path": "."})
        if r.status_code == 200:  # no more files than DICOMSVC_SYNC_LIMIT: answered when stored
            job = r.json() | {"status": "done"}
        elif r.status_code != 202:
            return {"error": f"POST /dicom folder: HTTP {r.status_code} {r.text[:300]!r}", "inst_per_s": None}
        else:
            url = r.json()["status_url"]
            while time.monotonic() < deadline:
                job = c.get(url, params={"wait": 30}).json()
                if job.get("status") in ("done", "failed"):
                    break
            else:
                return {"error": "the folder import was not done before the phase deadline", "inst_per_s": None}
        done_s = time.perf_counter() - t0
    cpu1 = P.tree_cpu_seconds(pid)
    res = P.cpu_figures(cpu0, cpu1, P.settle_cpu(pid), n)
    ok = (job.get("created") or 0) + (job.get("duplicates") or 0)
    if job.get("status") != "done" or job.get("created") != n:
        res["error"] = f"expected {n} created: {({k: v for k, v in job.items() if k != 'results'})}"
    res.update(done_s=round(done_s, 3), inst_per_s=round(ok / done_s, 2) if ok else None, created=job.get("created"))
    return res


def tree_memory_mib(pid: int) -> tuple[float, float]:
    """(RSS summed, PSS summed) over the server and its live descendants, MiB."""
    pids = P.descendants(pid)
    rss = sum(P.status_kib(p, "VmRSS:") for p in pids) / 1024
    pss = sum(P.pss_kib(p) for p in pids) / 1024
    return round(rss, 1), round(pss, 1)


def count_syncs(t, corpus: CO.Corpus, n: int, how: str) -> dict | None:
    """fsync-family calls per instance over the whole server tree (untimed: strace slows it),
    while ``n`` instances are sent by one client (``how``: "path" or "upload")."""
    send = t.ingest if how == "path" else t.upload
    return _syncs_while(t, lambda: CL.send_each(corpus.instances[:n], 1, 300, t.client, send, t.server.pid).ok)


def count_folder_syncs(t, corpus: CO.Corpus, deadline_s: float) -> dict | None:
    """The same during a folder import of the whole corpus (``_folder``): the group commit's
    share of syncs, chunk by chunk."""
    return _syncs_while(t, lambda: _folder(t, corpus, deadline_s).get("created") or 0)


def _syncs_while(t, act) -> dict | None:
    """Calls over the server tree while ``act()`` runs, per instance it returns: ``syncs``
    (FLUSH_CALLS) and ``writebacks`` (WRITEBACK_CALLS)."""
    if not shutil.which("strace"):
        return None
    pids = P.descendants(t.server.pid)
    out = t.work / "strace.txt"
    argv = ["strace", "-f", "-c", "-o", str(out), "-e", f"trace={','.join(FLUSH_CALLS + WRITEBACK_CALLS)}"]
    for p in pids:
        argv += ["-p", str(p)]
    tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    done = act()
    time.sleep(0.5)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    flushes = writebacks = 0
    for line in out.read_text().splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m and m.group(2) in FLUSH_CALLS:
            flushes += int(m.group(1))
        elif m and m.group(2) in WRITEBACK_CALLS:
            writebacks += int(m.group(1))
    return {"syncs": round(flushes / done, 2), "writebacks": round(writebacks / done, 2)} if done else None


def start_nginx(work: Path, root: Path) -> tuple[subprocess.Popen, int]:
    port = S.free_port()
    prefix = work / "nginx"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""  # else workers run as nobody
    conf.write_text(f"""{user} daemon off; worker_processes 1; pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path {prefix}/t1; proxy_temp_path {prefix}/t2; fastcgi_temp_path {prefix}/t3;
  uwsgi_temp_path {prefix}/t4; scgi_temp_path {prefix}/t5;
  types {{ image/png png; }}
  server {{ listen 127.0.0.1:{port}; root {root}; }} }}
""")
    proc = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/")
            c.getresponse().read()
            c.close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port


def keepalive_reads(port_paths: dict[str, tuple[int, list[str], dict]], n: int, warm: bool = False) -> dict:
    """p50/p95 ms per name: one keep-alive connection each, the names in turn request by request.

    ``warm``: each name's paths are all asked once first, untimed, so every timed read is of
    an answer already in memory (dicomsvc's read cache, Orthanc's and nginx's page cache):
    the steady state, not the first read after an ingest.

    A server may close a keep-alive connection that sat idle past its timeout (uvicorn's is 5 s;
    Orthanc's HTTP server, civetweb, has its ``keep_alive_timeout_ms``), which a stall of the
    machine can exceed: that request is sent again on a new connection, untimed, and counted in
    ``reconnects``."""
    conns = {k: http.client.HTTPConnection("127.0.0.1", port, timeout=60) for k, (port, _, _) in port_paths.items()}
    lat = {k: [] for k in port_paths}
    errors = {k: 0 for k in port_paths}
    reconnects = {k: 0 for k in port_paths}
    names = list(port_paths)

    def get(k: str, path: str, headers: dict) -> int:
        conns[k].request("GET", path, headers={"Accept-Encoding": "identity", **headers})
        r = conns[k].getresponse()
        r.read()
        return r.status

    if warm:
        for k, (_, paths, headers) in port_paths.items():
            for path in paths:
                get(k, path, headers)
    for i in range(n + 5):
        for k in names if i % 2 == 0 else names[::-1]:
            port, paths, headers = port_paths[k]
            t0 = time.perf_counter()
            try:
                status = get(k, paths[i % len(paths)], headers)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conns[k].close()
                conns[k] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                reconnects[k] += 1
                status, t0 = get(k, paths[i % len(paths)], headers), None
            dt = (time.perf_counter() - t0) * 1000 if t0 is not None else None
            if status != 200:
                errors[k] += 1
            elif i >= 5 and dt is not None:
                lat[k].append(dt)
    for c in conns.values():
        c.close()
    return {k: {**R.lat_summary(v), "errors": errors[k], "reconnects": reconnects[k]} for k, v in lat.items()}


def _median_reads(rounds: list[dict]) -> dict:
    """Per name: the median over rounds of each figure of ``keepalive_reads``, and the p50 of each
    round (``p50_rounds_ms``)."""
    out = {}
    for name in rounds[0]:
        figures = [r[name] for r in rounds]
        out[name] = {k: _median([f.get(k) for f in figures]) for k in ("p50_ms", "p95_ms", "mean_ms")}
        out[name].update(n=sum(f.get("n") or 0 for f in figures), errors=sum(f.get("errors") or 0 for f in figures),
                         reconnects=sum(f.get("reconnects") or 0 for f in figures),
                         p50_rounds_ms=[f.get("p50_ms") for f in figures])
    return out


def settle() -> None:
    """The page cache written back before the next phase (SETTLE)."""
    os.sync()


def run_table(a, out: dict, binary: str | None, Ours, Orthanc, run: S.Session, import_root: Path) -> None:
    UP.APP_DIR = Path(a.app_dir).resolve()  # the ZIP rows run the same tree as the others
    corpus = CO.make(import_root, a.n, a.seed)
    if corpus is None:
        raise SystemExit(2)
    zipped = UP.zip_corpus(corpus, run.tmp / "corpus.zip", "stored")
    settle()  # the corpus and the ZIP on disk before any phase (SETTLE)
    fresh, reused = R.page_cache_cost(run.tmp)
    out["facts"]["page_cache_ms_per_mb"] = {"new_file": fresh, "after_delete": reused}
    cold = fresh > 3 * reused  # new pages from guest memory never touched before: every server's writes pay
    print(f"page cache: writing a new file cost {fresh} ms of system CPU per MB, {reused} again after deleting it"
          + (" (cold guest memory: each server pays it for the pages it writes)" if cold else ""))
    makers = [("dicomsvc", lambda tag: Ours(run.tmp, tag, import_root))]
    if binary:
        makers.append(("orthanc", lambda tag: Orthanc(run.tmp, tag, binary)))
    zip_makers = {"dicomsvc": lambda tag: UP.Ours(run.tmp, tag), "orthanc": lambda tag: UP.Orthanc(run.tmp, tag, binary)}
    figures: dict[str, dict[str, list]] = {label: {} for label, _ in makers}

    def note(label, key, value):
        figures[label].setdefault(key, []).append(value)

    def phase(label, t, measure, *start_args):
        """``measure(t)`` on ``t`` started; then ``t`` stopped (its data folder stays until the run
        ends: FRESH_INODES) and the page cache settled (SETTLE). None when it did not start."""
        if not run.start(t, out["services"][label], *start_args):
            return None
        res = measure(t)
        run.stop(t)
        settle()
        return res

    for rnd in range(a.rounds):
        order = makers if rnd % 2 == 0 else makers[::-1]
        for how in ("path", "upload"):
            for clients in (1, 4):
                for label, make in order:
                    res = phase(label, make(f"r{rnd}{how}{clients}"),
                                lambda t: _ingest(t, corpus, clients, how, a.phase_timeout))
                    if res is None:
                        continue
                    key = f"{how}_{clients}"
                    note(label, key, res["inst_per_s"])
                    note(label, "cpu_ms", res.get("server_cpu_ms_per_inst"))
                    note(label, "peak_rss", res["peak_rss_mib"])
                    note(label, "peak_rss_start", res["peak_rss_start_mib"])
                    note(label, "peak_pss", res["peak_pss_mib"])
                    if res["errors"]:
                        out["services"][label].setdefault("fatal", []).extend(res["error_samples"][:3])
                    print(f"  round {rnd} [{label}] {how} x{clients}: {res['inst_per_s']} inst/s,"
                          f" {res.get('server_cpu_ms_per_inst')} ms CPU/inst", flush=True)
        for label, _ in order:
            res = phase(label, zip_makers[label](f"r{rnd}zip"), lambda t: UP.run_zip(t, zipped, a.phase_timeout),
                        a.phase_timeout)
            if res is None:
                continue
            note(label, "zip", res.get("inst_per_s"))
            print(f"  round {rnd} [{label}] zip: {res.get('inst_per_s')} inst/s {res.get('error', '')}", flush=True)
        label, make = makers[0]  # dicomsvc: Orthanc has no folder import
        res = phase(label, make(f"r{rnd}folder"), lambda t: _folder(t, corpus, a.phase_timeout))
        if res is not None:
            note(label, "folder", res.get("inst_per_s"))
            print(f"  round {rnd} [{label}] folder: {res.get('inst_per_s')} inst/s,"
                  f" {res.get('server_cpu_ms_per_inst')} ms CPU/inst {res.get('error', '')}", flush=True)

    # untimed passes: fsyncs, idle memory, reads against nginx
    live = {}
    for label, make in makers:
        t = make("reads")
        if run.start(t, out["services"][label]):
            time.sleep(2.0)
            rss, pss = tree_memory_mib(t.server.pid)
            note(label, "idle_rss", rss)
            note(label, "idle_pss", pss)
            how = "path" if label == "dicomsvc" else "upload"
            counted = count_syncs(t, corpus, min(100, a.n), how) or {}
            note(label, "syncs", counted.get("syncs"))
            note(label, "writebacks", counted.get("writebacks"))
            live[label] = t
    label, make = makers[0]  # dicomsvc: a folder import's syncs, on a server of its own (Orthanc has none)
    res = phase(label, make("syncs_folder"), lambda t: count_folder_syncs(t, corpus, a.phase_timeout))
    note(label, "syncs_folder", (res or {}).get("syncs"))
    note(label, "writebacks_folder", (res or {}).get("writebacks"))
    stored = []
    ours = live.get("dicomsvc")
    if ours is not None:
        import sqlite3

        db = sqlite3.connect(ours.work / "data" / "dicom.db")
        stored = db.execute("SELECT id, png_blob FROM dicom WHERE png_blob IS NOT NULL").fetchall()
        db.close()
    orthanc_ids = []
    if "orthanc" in live:
        with live["orthanc"].client() as c:
            orthanc_ids = c.get("/instances").json()
    if stored:
        floor = run.tmp / "static"
        floor.mkdir()
        for id_, key in stored:
            shutil.copyfile(ours.work / "data" / "blobs" / key, floor / f"{id_}.png")
        nginx, nport = start_nginx(run.tmp, floor)
        try:
            port_of = lambda t: t.port  # noqa: E731
            images = {"dicomsvc": (port_of(ours), [f"/image?id={i}" for i, _ in stored], {}),
                      "nginx": (nport, [f"/{i}.png" for i, _ in stored], {})}
            tags = {"dicomsvc": (port_of(ours), [f"/tags?id={i}" for i, _ in stored], {})}
            previews = {}
            if orthanc_ids:
                o = live["orthanc"]
                previews = {"orthanc": (o.port, [f"/instances/{i}/preview" for i in orthanc_ids], {})}
                tags["orthanc"] = (o.port, [f"/instances/{i}/tags" for i in orthanc_ids], {})
            # Rounds of reads, as for everything else: the p50 of a client and a server exchanging
            # single requests depends on where the scheduler puts them, which changes from one pass
            # to the next. Each round is a.reads timed reads after a warm pass; the table has the
            # medians of the rounds' p50s. Orthanc's /preview (it renders: ~14 ms of CPU each) runs
            # in passes of its own: interleaved, its bursts slowed the sub-millisecond reads next to
            # them (in one probe dicomsvc's p50 0.18 -> 0.23 ms, nginx's 0.10-0.15 -> 0.17 ms).
            img_rounds = [keepalive_reads(images, a.reads, warm=True) for _ in range(a.rounds)]
            if previews:
                for r, p in zip(img_rounds, [keepalive_reads(previews, a.reads, warm=True) for _ in range(a.rounds)]):
                    r.update(p)
            tg_rounds = [keepalive_reads(tags, a.reads, warm=True) for _ in range(a.rounds)]
            img, tg = _median_reads(img_rounds), _median_reads(tg_rounds)
        finally:
            nginx.terminate()
            nginx.wait(timeout=10)
        for label in ("dicomsvc", "orthanc"):
            if label in figures:
                note(label, "image_p50", R.dig(img, (label, "p50_ms")))
                note(label, "tags_p50", R.dig(tg, (label, "p50_ms")))
        out["floor"] = {"nginx_image_p50_ms": R.dig(img, ("nginx", "p50_ms")), "reads": {"image": img, "tags": tg}}
    for t in live.values():
        run.stop(t)

    for label, f in figures.items():
        out["services"][label]["table"] = {k: (_max(v) if k in ("peak_rss", "peak_rss_start", "peak_pss") else _median(v)) for k, v in f.items()}
        out["services"][label]["rounds"] = f
    print_table(out)


def print_table(out: dict) -> None:
    ours = R.dig(out, ("services", "dicomsvc", "table")) or {}
    orth = R.dig(out, ("services", "orthanc", "table")) or {}
    floor = R.dig(out, ("floor", "nginx_image_p50_ms"))
    rows = [
        ("ingest by path, 1 client [inst/s]", "path_1", "hi"),
        ("ingest by path, 4 clients [inst/s]", "path_4", "hi"),
        ("upload, 1 client [inst/s]", "upload_1", "hi"),
        ("upload, 4 clients [inst/s]", "upload_4", "hi"),
        ("ZIP of the corpus [inst/s]", "zip", "hi"),
        ("folder import of the corpus [inst/s] (Orthanc: none)", "folder", None),
        ("server CPU per instance [ms]", "cpu_ms", "lo"),
        ("fsync/fdatasync calls per instance", "syncs", None),
        ("fsync/fdatasync calls per instance, folder import (Orthanc: none)", "syncs_folder", None),
        ("sync_file_range calls per instance (writeback started, no flush)", "writebacks", None),
        ("sync_file_range calls per instance, folder import", "writebacks_folder", None),
        ("GET /tags p50 [ms]", "tags_p50", "lo"),
        ("GET /image p50 [ms] (Orthanc: /preview)", "image_p50", "lo"),
        ("idle RSS summed [MiB]", "idle_rss", "lo"),
        ("idle PSS summed [MiB]", "idle_pss", "lo"),
        ("peak RSS during ingest, summed [MiB]", "peak_rss", "lo"),
        ("peak RSS since start, summed [MiB]", "peak_rss_start", "lo"),
        ("peak PSS during ingest, summed [MiB]", "peak_pss", "lo"),
    ]
    print(f"\n| | dicomsvc | Orthanc | ratio (>1 = ours better) |\n|---|---|---|---|")
    for label, key, better in rows:
        a, b = ours.get(key), orth.get(key)
        r = None if better is None else (R.ratio(a, b) if better == "hi" else R.ratio(b, a))
        print(f"| {label} | {R.fmt(a, '{:.2f}')} | {R.fmt(b, '{:.2f}')} | {R.fmt(r, '{:.2f}')} |")
    img = ours.get("image_p50")
    print(f"| GET /image p50 vs nginx, same PNGs [ms] | {R.fmt(img, '{:.3f}')} | nginx {R.fmt(floor, '{:.3f}')} |"
          f" {R.fmt(R.ratio(img, floor), '{:.2f}')}x the floor |")
    reads = R.dig(out, ("floor", "reads", "image")) or {}
    if reads:  # the rounds' p50s: the spread the scheduler's placement gives (README "Benchmarks")
        print("GET /image p50 per round [ms]: " + "; ".join(
            f"{name} {', '.join(R.fmt(x, '{:.3f}') for x in figures.get('p50_rounds_ms') or [])}"
            for name, figures in reads.items()))
    zo, uo = ours.get("zip"), orth.get("upload_1")
    print(f"ZIP vs Orthanc's per-file upload (1 client): {R.fmt(R.ratio(zo, uo), '{:.2f}')}x (target >= 2)")
    fo = ours.get("folder")
    print(f"folder import vs Orthanc's per-file upload (1 client): {R.fmt(R.ratio(fo, uo), '{:.2f}')}x (target >= 2)")
