"""Upload benchmark: DICOM and ZIP uploads over HTTP, dicomsvc vs. Orthanc, on loopback.

Run from the repo root:

    .venv/bin/python bench/upload.py [--n 500] [--no-orthanc] [--big-zip-gb 1.0] [--json FILE]
                                     [--orthanc-big-zip-gb 0.25] [--zip-compression deflate1|stored]
                                     [--phase-timeout 1800] [--keep]

What it does (every loop is bounded by a count and a deadline; servers are
always killed in a finally block; only 127.0.0.1 is contacted):

  0. writes N CT-like instances with bench/corpus.synthesize (the corpus of
     bench/ingest.py), packs them into one ZIP, and streams a big ZIP of at least
     --big-zip-gb GB (further synthesize() batches, so every instance has its own
     UIDs and pixels) plus a smaller one for Orthanc, all in a temp dir that is
     deleted at the end;
  1. single uploads: each service ingests the N files as N requests, 1 client
     (dicomsvc, then Orthanc) and 4 clients (Orthanc, then dicomsvc), a fresh
     server each time.  dicomsvc: POST /dicom, Content-Type application/dicom;
     Orthanc: POST /instances.  Each body is one ~0.5 MB file read into memory,
     for both services alike;
  2. the N instances as one ZIP (dicomsvc first, then Orthanc, fresh servers);
  3. the big ZIP (Orthanc first, on its smaller ZIP, then dicomsvc).
     dicomsvc: POST /dicom, Content-Type application/zip -> 200 with the
     results (<= DICOMSVC_SYNC_LIMIT files) or 202 {"job", "status_url"}, then
     GET /jobs/<id>?wait=0.25 (?wait=1 after 10 s) is asked again until "done"
     or "failed": each answer is held until the job ends or the wait is over,
     so the job's end is seen as it comes, not at the next poll.  Orthanc 1.10: POST /instances with the ZIP, answered
     synchronously with one entry per instance.  ZIP bodies are streamed from
     disk (1 MiB chunks, explicit Content-Length), never read whole.

Measures: instances/s (instances stored / wall time until the service says
they are all in), server CPU (utime+stime of the server process tree from
/proc, plus up to 3 s of settling) per instance, and peak memory of the server
process and its children: VmHWM summed over the tree just before the server is
stopped (the fresh server's whole life; the figure bench/ingest.py prints;
shared pages count once per process, so it overstates), plus the peak of the
tree's summed RSS and PSS sampled every 0.2 s (PSS splits shared pages).  The
300 MB check applies to the VmHWM sum of the big-ZIP phase.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
import urllib.parse
import zipfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clients as CL  # noqa: E402
import corpus as CO  # noqa: E402
import procstat as P  # noqa: E402
import report as R  # noqa: E402
import servers as S  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO  # cwd of `dicomsvc serve`, where `app:app` is imported from (--app-dir: bench self-test)
HEADERS = {"Accept-Encoding": "identity"}
CHUNK = 1 << 20
RSS_LIMIT_MB = 300  # decimal MB, as in the requirement
RSS_LIMIT_MIB = RSS_LIMIT_MB * 1e6 / 2**20
JOB_KEYS = ("id", "status", "total", "processed", "created", "duplicates", "failed", "skipped", "progress", "results")
SYNC_KEYS = ("created", "duplicates", "failed", "skipped", "results")


# --------------------------------------------------------------------------
# request bodies
# --------------------------------------------------------------------------
def file_chunks(path: Path, size: int):
    """The file's bytes in CHUNK pieces; bounded by its size."""
    with open(path, "rb") as f:
        for _ in range(size // CHUNK + 2):
            b = f.read(CHUNK)
            if not b:
                return
            yield b


def streamed(path: Path) -> tuple:
    size = path.stat().st_size
    return file_chunks(path, size), {"Content-Length": str(size)}


# --------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------
class Target(S.Service):
    def __init__(self, workroot: Path, tag: str):
        super().__init__(workroot, tag)
        self.sampler: P.TreeSampler | None = None

    def client(self, timeout: float = 60.0) -> httpx.Client:
        t = httpx.Timeout(timeout, connect=10.0, pool=10.0)
        return httpx.Client(base_url=self.base, headers=HEADERS, timeout=t, trust_env=False)

    def start(self, max_s: float):
        super().start()
        self.sampler = P.TreeSampler(self.server.pid, max_s)
        self.sampler.start()

    def memory(self) -> dict:
        """Peak memory so far: VmHWM summed over the live tree, and the sampled peaks."""
        out = {}
        if self.server and self.server.alive():
            if self.sampler:
                self.sampler.sample()
            h = P.tree_peak_rss_mib(self.server.pid)
            out = {"hwm_sum_mib": h["sum_mib"], "hwm_max_mib": h["max_mib"], "nproc": h["nproc"],
                   "per_process": P.per_process(self.server.pid)}
        if self.sampler:
            s = self.sampler.stop()
            out.update(sampled_rss_sum_mib=s["rss_sum_mib"], sampled_pss_sum_mib=s["pss_sum_mib"],
                       samples=s["samples"])
        return out

    def stop(self):
        if self.sampler:
            self.sampler.stop()
        super().stop()

    def log_tail(self, n=15) -> str:
        return self.server.log_tail(n) if self.server else ""

    def cleanup(self):
        shutil.rmtree(self.work, ignore_errors=True)

    # to override (and launch_server)
    def upload_one(self, c: httpx.Client, path: Path) -> tuple[str | None, bool | None, str | None]: ...
    def upload_zip(self, c: httpx.Client, path: Path, deadline: float) -> dict: ...


class Ours(Target):
    label = "dicomsvc"

    def launch_server(self):
        data, imp = self.work / "data", self.work / "import"
        data.mkdir()
        imp.mkdir()
        # log level warning also silences uvicorn's access log (Orthanc logs no access lines)
        env = S.dicomsvc_env(data, imp, DICOMSVC_HOST="127.0.0.1", DICOMSVC_PORT=str(self.port))
        argv = [sys.executable, "-m", "dicomsvc.cli.main", "serve"]  # = .venv/bin/dicomsvc serve
        self.launch_dicomsvc(argv, APP_DIR, env)

    def upload_one(self, c, path):
        r = c.post("/dicom", content=path.read_bytes(), headers={"Content-Type": "application/dicom"})
        if r.status_code not in (200, 201):
            return None, None, f"POST /dicom {path.name}: HTTP {r.status_code} {r.text[:300]!r}"
        try:
            return str(r.json()["id"]), r.status_code == 201, None
        except Exception as e:  # noqa: BLE001
            return None, None, f"POST /dicom {path.name}: {r.status_code} but body {r.text[:300]!r} ({e!r})"

    def upload_zip(self, c, path, deadline):
        res = {"shape_problems": []}
        sampler = self.sampler
        body, hdr = streamed(path)
        t0 = time.perf_counter()
        r = c.post("/dicom", content=body, headers={"Content-Type": "application/zip", **hdr})
        res["upload_s"] = time.perf_counter() - t0
        res["http_status"] = r.status_code
        try:
            j = r.json()
        except Exception:  # noqa: BLE001
            j = None
        if r.status_code == 200 and isinstance(j, dict):
            res["mode"] = "sync"
            res["done_s"] = res["upload_s"]
            res["status"] = "done"
            missing = [k for k in SYNC_KEYS if k not in j]
            if missing:
                res["shape_problems"].append(f"200 body lacks {missing}: {r.text[:300]!r}")
            final = j
        elif r.status_code == 202 and isinstance(j, dict) and "job" in j:
            res["mode"] = "job"
            job = str(j["job"])
            url = j.get("status_url") or f"/jobs/{job}"
            if "status_url" not in j:
                res["shape_problems"].append(f"202 body lacks status_url: {r.text[:300]!r}")
            elif urllib.parse.urlsplit(url).path != f"/jobs/{job}":  # absolute, as the README shows
                res["shape_problems"].append(f"202 status_url {url!r} is not /jobs/{job}")
            final, polls, timeline = None, 0, []
            n_poll = int(max(0.0, deadline - time.monotonic()) / 0.25) + 2
            for _ in range(n_poll):
                if time.monotonic() > deadline:
                    res["error"] = f"job {job} not done before the phase deadline (last: {str(final)[:300]})"
                    break
                wait = 0.25 if time.perf_counter() - t0 < 10 else 1.0
                asked = time.perf_counter()
                pr = c.get(url, params={"wait": wait})  # held until the job ends or the wait is over
                polls += 1
                if pr.status_code != 200:
                    res["error"] = f"GET {url}: HTTP {pr.status_code} {pr.text[:300]!r}"
                    break
                try:
                    final = pr.json()
                except Exception as e:  # noqa: BLE001
                    res["error"] = f"GET {url}: not JSON ({e!r}): {pr.text[:300]!r}"
                    break
                if len(timeline) < 400:  # (s since POST, processed, server tree RSS sum MiB at the last sample)
                    rss = round(sampler.last_rss / 1024) if sampler else None
                    timeline.append((round(time.perf_counter() - t0, 2), final.get("processed"), rss))
                if final.get("status") in ("done", "failed"):
                    res["done_s"] = time.perf_counter() - t0
                    break
                if final.get("status") not in ("queued", "running"):
                    res["shape_problems"].append(f"unexpected job status {final.get('status')!r}")
                    break
                time.sleep(max(0.0, wait - (time.perf_counter() - asked)))  # a server that did not wait
            res["polls"] = polls
            res["progress_timeline"] = timeline
            if final is not None:
                res["status"] = final.get("status")
                missing = [k for k in JOB_KEYS if k not in final]
                if missing:
                    res["shape_problems"].append(f"GET /jobs body lacks {missing}: {json.dumps(final)[:300]}")
                if final.get("id") not in (None, job):
                    res["shape_problems"].append(f"GET /jobs id {final.get('id')!r} != job {job!r}")
                res["total"] = final.get("total")
                res["processed"] = final.get("processed")
        else:
            res["error"] = f"POST /dicom (zip): HTTP {r.status_code} {r.text[:300]!r}"
            return res
        if final is not None:
            for k in ("created", "duplicates", "failed", "skipped"):
                res[k] = final.get(k)
            results = final.get("results")
            res["n_results"] = len(results) if isinstance(results, list) else None
            res["result_samples"] = results[:3] if isinstance(results, list) else results
            if res.get("status") == "failed" and "error" not in res:
                res["error"] = f"job failed: {json.dumps({k: v for k, v in final.items() if k != 'results'})[:400]}"
            # spot check: a few stored ids answer GET /tags
            ids = [x.get("id") for x in (results or []) if isinstance(x, dict) and x.get("id")][:3]
            for id_ in ids:
                tr = c.get("/tags", params={"id": id_})
                if tr.status_code != 200:
                    res["shape_problems"].append(f"GET /tags?id={id_} after the ZIP: HTTP {tr.status_code}")
        return res


class Orthanc(S.OrthancService, Target):
    def upload_one(self, c, path):
        r = c.post("/instances", content=path.read_bytes(), headers={"Content-Type": "application/dicom"})
        if r.status_code != 200:
            return None, None, f"POST /instances {path.name}: HTTP {r.status_code} {r.text[:300]!r}"
        try:
            j = r.json()
            st = j.get("Status")
            if st not in ("Success", "AlreadyStored"):
                return None, None, f"POST /instances {path.name}: Status {st!r}"
            return j["ID"], st == "Success", None
        except Exception as e:  # noqa: BLE001
            return None, None, f"POST /instances {path.name}: body {r.text[:300]!r} ({e!r})"

    def upload_zip(self, c, path, deadline):
        res = {"shape_problems": [], "mode": "sync"}
        body, hdr = streamed(path)
        t0 = time.perf_counter()
        r = c.post("/instances", content=body, headers={"Content-Type": "application/zip", **hdr})
        res["upload_s"] = res["done_s"] = time.perf_counter() - t0
        res["http_status"] = r.status_code
        if r.status_code != 200:
            res["error"] = f"POST /instances (zip): HTTP {r.status_code} {r.text[:300]!r}"
            return res
        try:
            j = r.json()
        except Exception as e:  # noqa: BLE001
            res["error"] = f"POST /instances (zip): not JSON ({e!r}) {r.text[:300]!r}"
            return res
        if isinstance(j, dict):  # a single instance answers with one object
            j = [j]
        st = [x.get("Status") if isinstance(x, dict) else None for x in j]
        res.update(
            status="done",
            total=len(j),
            created=st.count("Success"),
            duplicates=st.count("AlreadyStored"),
            failed=len(st) - st.count("Success") - st.count("AlreadyStored"),
            skipped=None,
            n_results=len(j),
            result_samples=j[:1],
        )
        return res


# --------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------
def run_singles(t: Target, corpus: CO.Corpus, clients: int, deadline_s: float) -> dict:
    insts = corpus.instances

    def send(c: httpx.Client, inst: CO.Instance):
        id_, new, err = t.upload_one(c, inst.path)
        return (id_, new), err

    if t.sampler:
        t.sampler.reset()
    run = CL.send_each(insts, clients, deadline_s, t.client, send, t.server.pid)
    ids = [a[0] if a else None for a in run.answers]
    ok = run.ok
    created = sum(bool(a[1]) for a in run.answers if a)
    res = run.summary(created=created)
    # correctness: the same file again is a duplicate with the same id (not timed)
    if ids[0]:
        with t.client() as c:
            try:
                id_, new, err = t.upload_one(c, insts[0].path)
                if err or new or id_ != ids[0]:
                    res["duplicate_check"] = f"re-upload of {insts[0].rel}: id {id_!r} (first {ids[0]!r}), created={new}, err={err}"
                else:
                    res["duplicate_check"] = "ok"
            except httpx.HTTPError as e:
                res["duplicate_check"] = repr(e)
    if ok != created:
        res["note"] = f"{ok - created} of {ok} answered as duplicates on a fresh server"
    return res


def run_zip(t: Target, z: dict, deadline_s: float) -> dict:
    path = z["path"]
    pid = t.server.pid
    deadline = time.monotonic() + deadline_s
    if t.sampler:
        t.sampler.reset()
    cpu0 = P.tree_cpu_seconds(pid)
    with t.client(timeout=deadline_s) as c:
        try:
            res = t.upload_zip(c, path, deadline)
        except httpx.HTTPError as e:
            res = {"error": f"{type(e).__name__}: {e}", "shape_problems": []}
    cpu1 = P.tree_cpu_seconds(pid) if t.server.alive() else None
    cpu2 = P.settle_cpu(pid) if t.server.alive() else None
    n_ok = (res.get("created") or 0) + (res.get("duplicates") or 0)
    done = res.get("done_s")
    res.update(
        zip_bytes=z["bytes"],
        zip_instances=z["n"],
        inst_per_s=round(n_ok / done, 2) if done and n_ok else None,
        upload_mb_per_s=round(z["bytes"] / res["upload_s"] / 1e6, 1) if res.get("upload_s") else None,
        **P.cpu_figures(cpu0, cpu1, cpu2, n_ok),
    )
    for k in ("upload_s", "done_s"):
        if res.get(k) is not None:
            res[k] = round(res[k], 3)
    if "error" not in res and res.get("created") != z["n"]:
        res["error"] = (f"expected {z['n']} created, got created={res.get('created')} duplicates={res.get('duplicates')}"
                        f" failed={res.get('failed')} skipped={res.get('skipped')} total={res.get('total')}")
    if not t.server.alive():
        res["error"] = (res.get("error", "") + f"; server died (exit {t.server.proc.returncode})").lstrip("; ")
    return res


# --------------------------------------------------------------------------
# ZIPs
# --------------------------------------------------------------------------
def zip_args(mode: str) -> dict:
    if mode == "stored":
        return {"compression": zipfile.ZIP_STORED}
    return {"compression": zipfile.ZIP_DEFLATED, "compresslevel": 1}


def zip_corpus(corpus: CO.Corpus, path: Path, mode: str) -> dict:
    t0 = time.perf_counter()
    with zipfile.ZipFile(path, "w", **zip_args(mode)) as zf:
        for inst in corpus.instances:
            zf.write(inst.path, inst.rel)
    return {"path": path, "n": len(corpus.instances), "bytes": path.stat().st_size,
            "raw_bytes": corpus.bytes_total, "seconds": round(time.perf_counter() - t0, 1)}


def build_big_zips(tmp: Path, targets: list[tuple[Path, int]], mode: str, seed: int, batch: int = 500) -> list[dict]:
    """Stream ZIPs of at least the given sizes; instance k of every ZIP is the same file.

    Instances come from synthesize() batches written to a scratch dir and deleted
    after each batch, so neither the instances nor the ZIPs are held in memory.
    """
    t0 = time.perf_counter()
    scratch = tmp / "bigsrc"
    goal = max(size for _, size in targets)
    # worst case: stored, ~0.53 MB per instance; deflate only needs more instances
    max_batches = int(goal / (batch * 50_000)) + 2
    zfs = [zipfile.ZipFile(p, "w", allowZip64=True, **zip_args(mode)) for p, _ in targets]
    counts = [0] * len(targets)
    raw = [0] * len(targets)
    open_ = [True] * len(targets)
    try:
        for b in range(max_batches):
            if not any(open_):
                break
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            corpus = CO.synthesize(scratch, batch, seed=seed + 1 + b)
            for inst in corpus.instances:
                for k, (zf, (_, size)) in enumerate(zip(zfs, targets)):
                    if not open_[k]:
                        continue
                    zf.write(inst.path, f"batch{b:03d}/{inst.rel}")
                    counts[k] += 1
                    raw[k] += inst.size
                    if zf.fp.tell() >= size:
                        zf.close()
                        open_[k] = False
                if not any(open_):
                    break
            print(f"  big ZIP: {counts[0]} instances, {zfs[0].fp.tell() / 1e9 if open_[0] else targets[0][0].stat().st_size / 1e9:.2f} GB"
                  f" ({time.perf_counter() - t0:.0f}s)", flush=True)
    finally:
        for zf in zfs:
            zf.close()
        shutil.rmtree(scratch, ignore_errors=True)
    secs = round(time.perf_counter() - t0, 1)
    out = []
    for k, (p, size) in enumerate(targets):
        out.append({"path": p, "n": counts[k], "bytes": p.stat().st_size, "raw_bytes": raw[k], "seconds": secs,
                    "complete": p.stat().st_size >= size})
    return out


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
def print_report(out: dict) -> None:
    svc = out["services"]
    names = list(svc)
    table = R.Table(svc)
    row = table.row
    table.section(f"single uploads ({out['config'].get('n')} x POST of one ~0.5 MB instance)")
    for cl in (1, 4):
        k = f"single_{cl}"
        row(f"  {cl} client{'s' if cl > 1 else ' '}: throughput   [inst/s]", (k, "inst_per_s"))
        row(f"  {cl} client{'s' if cl > 1 else ' '}: server CPU   [ms/inst]", (k, "server_cpu_ms_per_inst"), better="lo")
        row(f"  {cl} client{'s' if cl > 1 else ' '}: peak RSS sum [MiB]", (k, "mem", "hwm_sum_mib"), better="lo")
        row(f"  {cl} client{'s' if cl > 1 else ' '}: peak PSS     [MiB]", (k, "mem", "sampled_pss_sum_mib"), better="lo")
    zc = out["config"].get("zip_compression")
    z1 = out["config"].get("zip_small", {})
    table.section(f"one ZIP of the same {z1.get('n')} ({zc}, {R.fmt((z1.get('bytes') or 0) / 1e6, '{:.0f}')} MB)")
    row("  upload (POST answered)   [s]", ("zip_small", "upload_s"), "{:.2f}", better="lo")
    row("  until all stored         [s]", ("zip_small", "done_s"), "{:.2f}", better="lo")
    row("  throughput               [inst/s]", ("zip_small", "inst_per_s"))
    row("  server CPU               [ms/inst]", ("zip_small", "server_cpu_ms_per_inst"), better="lo")
    row("  peak RSS sum (VmHWM)     [MiB]", ("zip_small", "mem", "hwm_sum_mib"), better="lo")
    row("  peak PSS sum (sampled)   [MiB]", ("zip_small", "mem", "sampled_pss_sum_mib"), better="lo")
    same = len({R.dig(svc[n], ("zip_big", "zip_bytes")) for n in names}) == 1
    table.section("big ZIP" + ("" if same else " (NOT the same ZIP: see sizes; ratios of time/RSS omitted)"))
    row("  ZIP size                 [MB]", ("zip_big", "zip_mb"), "{:.0f}", compare=False)
    row("  instances in it", ("zip_big", "zip_instances"), "{:.0f}", compare=False)
    row("  upload (POST answered)   [s]", ("zip_big", "upload_s"), "{:.1f}", better="lo", compare=same)
    row("  upload rate              [MB/s]", ("zip_big", "upload_mb_per_s"), compare=same)
    row("  until all stored         [s]", ("zip_big", "done_s"), "{:.1f}", better="lo", compare=same)
    row("  throughput               [inst/s]", ("zip_big", "inst_per_s"))
    row("  server CPU               [ms/inst]", ("zip_big", "server_cpu_ms_per_inst"), better="lo")
    row("  peak RSS sum (VmHWM)     [MiB]", ("zip_big", "mem", "hwm_sum_mib"), better="lo", compare=same)
    row("  peak RSS, largest proc   [MiB]", ("zip_big", "mem", "hwm_max_mib"), better="lo", compare=same)
    row("  peak PSS sum (sampled)   [MiB]", ("zip_big", "mem", "sampled_pss_sum_mib"), better="lo", compare=same)
    row("startup to ready           [s]", ("startup_s",), "{:.2f}", better="lo")
    table.print()
    if len(names) == 2:
        print("ratio: ours/Orthanc for throughput, Orthanc/ours for time, CPU and memory -> >1 means dicomsvc is better")
    print("RSS sum = VmHWM summed over the server process and its children (shared pages counted in each);"
          " PSS = peak of the summed proportional set size, sampled every 0.2 s")
    for n in names:
        s = svc[n]
        zs, zb = s.get("zip_small", {}), s.get("zip_big", {})
        extra = []
        for key, z in (("ZIP", zs), ("big ZIP", zb)):
            if z.get("mode"):
                extra.append(f"{key}: HTTP {z.get('http_status')} ({z.get('mode')}"
                             + (f", {z.get('polls')} polls" if z.get("mode") == "job" else "")
                             + f"), created {z.get('created')} dup {z.get('duplicates')} failed {z.get('failed')}"
                             f" skipped {z.get('skipped')}, CPU after reply {R.fmt(z.get('server_cpu_after_reply_s'), '{:.2f}')} s")
        if extra:
            print(f"{n}: " + "; ".join(extra))
    ck = out.get("rss_check")
    if ck:
        print(ck["line"])


def collect_errors(out: dict) -> list[str]:
    lines = []
    for n, s in out["services"].items():
        for ph in ("single_1", "single_4"):
            p = s.get(ph)
            if not p:
                continue
            lines += CL.problems(n, ph, p)
            if p.get("duplicate_check") not in (None, "ok"):
                lines.append(f"{n} {ph}: duplicate check: {p['duplicate_check']}")
            if p.get("note"):
                lines.append(f"{n} {ph}: {p['note']}")
        for ph in ("zip_small", "zip_big"):
            p = s.get(ph)
            if not p:
                continue
            if p.get("error"):
                lines.append(f"{n} {ph}: {p['error']}")
            for e in p.get("shape_problems", []):
                lines.append(f"{n} {ph}: shape: {e}")
            if p.get("n_results") is not None and p.get("n_results") != p.get("zip_instances"):
                lines.append(f"{n} {ph}: {p.get('n_results')} results for {p.get('zip_instances')} instances")
        for e in s.get("fatal", []):
            lines.append(f"{n}: {e}")
    return lines


def git_state() -> str:
    """The commit benchmarked, with the number of changed files when the tree is dirty."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                               text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + (f" + {len(dirty)} uncommitted changes" if dirty else "")


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500, help="instances for the single uploads and the small ZIP (default 500)")
    ap.add_argument("--big-zip-gb", type=float, default=1.0, help="the big ZIP is at least this many GB (1e9 B; default 1.0; 0 skips)")
    ap.add_argument("--orthanc-big-zip-gb", type=float, default=0.25,
                    help="Orthanc's big ZIP, GB (default 0.25: Orthanc 1.10 holds the whole body and more in memory;"
                         " >= --big-zip-gb gives it the same ZIP as dicomsvc; 0 skips)")
    ap.add_argument("--zip-compression", choices=("deflate1", "stored"), default="deflate1",
                    help="how the ZIPs are compressed (default deflate1: deflate, level 1)")
    ap.add_argument("--no-orthanc", action="store_true", help="benchmark dicomsvc only")
    ap.add_argument("--no-ours", action="store_true", help=argparse.SUPPRESS)  # bench development
    ap.add_argument("--skip", default="", help=argparse.SUPPRESS)  # bench development: "single,zip,big"
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (corpus, ZIPs, data dirs, server logs)")
    ap.add_argument("--json", metavar="FILE", help="also write the JSON results to FILE")
    ap.add_argument("--phase-timeout", type=float, default=1800.0, help="deadline per measured phase, s (default 1800)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--app-dir", default=str(REPO), help=argparse.SUPPRESS)  # bench self-test only
    a = ap.parse_args(argv)
    if a.n < 1 or a.big_zip_gb < 0 or a.orthanc_big_zip_gb < 0:
        ap.error("--n must be >= 1, sizes >= 0")
    skip = set(filter(None, a.skip.split(",")))

    global APP_DIR  # noqa: PLW0603
    APP_DIR = Path(a.app_dir).resolve()
    out, binary = R.begin(a.no_orthanc, a.no_ours, code=git_state())
    if out is None:
        return 2
    use_ours, use_orth = not a.no_ours, binary is not None

    with S.Session("dicomsvc-upload-bench-", a.keep) as run:
        tmp = run.tmp
        corpus = CO.make(tmp / "corpus", a.n, a.seed)
        if corpus is None:
            return 2
        zs = zip_corpus(corpus, tmp / "small.zip", a.zip_compression)
        print(f"ZIP of the corpus: {zs['n']} instances, {zs['bytes'] / 1e6:.1f} MB ({a.zip_compression};"
              f" {zs['raw_bytes'] / 1e6:.0f} MB uncompressed), made in {zs['seconds']}s", flush=True)
        zb = zo = None
        if a.big_zip_gb > 0 and "big" not in skip:
            targets = [(tmp / "big.zip", int(a.big_zip_gb * 1e9))]
            orth_gb = a.orthanc_big_zip_gb
            if use_orth and 0 < orth_gb < a.big_zip_gb:
                targets.append((tmp / "big-orthanc.zip", int(orth_gb * 1e9)))
            print(f"building the big ZIP(s) ({', '.join(f'>= {s / 1e9:.2f} GB' for _, s in targets)},"
                  f" {a.zip_compression}) from fresh synthesize() batches ...", flush=True)
            built = build_big_zips(tmp, targets, a.zip_compression, a.seed)
            zb = built[0]
            zo = built[1] if len(built) > 1 else (zb if use_orth and orth_gb >= a.big_zip_gb else None)
            for z in built:
                print(f"  {z['path'].name}: {z['n']} instances, {z['bytes'] / 1e9:.3f} GB"
                      f" ({z['raw_bytes'] / 1e9:.2f} GB uncompressed), built in {z['seconds']}s", flush=True)
                if not z["complete"]:
                    print(f"  WARNING: {z['path'].name} stopped short of its size", file=sys.stderr)
        out["config"] = {
            "n": a.n,
            "bytes_total": corpus.bytes_total,
            "elements_per_instance": corpus.n_elements,
            "zip_compression": a.zip_compression,
            "zip_small": {"n": zs["n"], "bytes": zs["bytes"], "raw_bytes": zs["raw_bytes"]},
            "zip_big": {"n": zb["n"], "bytes": zb["bytes"], "raw_bytes": zb["raw_bytes"]} if zb else None,
            "zip_big_orthanc": {"n": zo["n"], "bytes": zo["bytes"], "raw_bytes": zo["raw_bytes"]} if zo else None,
            "dicomsvc_sync_limit": "server default (DICOMSVC_* unset except DATA_DIR, IMPORT_ROOT, HOST, PORT, LOG_LEVEL=warning)",
            "phases": "single 1 client: dicomsvc, Orthanc; single 4 clients: Orthanc, dicomsvc; small ZIP: dicomsvc,"
                      " Orthanc; big ZIP: Orthanc, dicomsvc; a fresh server for every service and phase",
        }

        def start(t: Target) -> bool:
            return run.start(t, out["services"][t.label], a.phase_timeout + 600)

        def finish(t: Target, key: str):
            if key in out["services"][t.label]:
                out["services"][t.label][key]["mem"] = t.memory()
                if t.server and not t.server.alive():
                    out["services"][t.label][key]["server_log_tail"] = t.log_tail()
            run.stop(t)
            if key in out["services"][t.label]:
                tail = t.log_tail(200)
                bad = [ln for ln in tail.splitlines() if " error" in ln.lower() or "traceback" in ln.lower()]
                if bad:
                    out["services"][t.label][key]["server_log_errors"] = bad[:10]
            if not a.keep:
                t.cleanup()

        def make(label: str, tag: str) -> Target:
            return Ours(tmp, tag) if label == "dicomsvc" else Orthanc(tmp, tag, binary)

        labels = [lb for lb in ("dicomsvc", "orthanc") if lb in out["services"]]

        # ---- phase 1: single uploads ----
        if "single" not in skip:
            for clients, order in ((1, labels), (4, labels[::-1])):
                print(f"phase 1: {a.n} single uploads, {clients} client(s), fresh servers", flush=True)
                for lb in order:
                    t = make(lb, f"s{clients}")
                    key = f"single_{clients}"
                    if start(t):
                        try:
                            r = run_singles(t, corpus, clients, a.phase_timeout)
                            out["services"][lb][key] = r
                            print(f"  [{lb}] {r['ok']}/{r['n']} ok in {r['wall_s']:.1f}s = {r['inst_per_s']} inst/s,"
                                  f" server CPU {r['server_cpu_ms_per_inst']} ms/inst"
                                  + (f", {r['errors']} ERRORS: {r['error_samples'][:1]}" if r["errors"] else ""), flush=True)
                        finally:
                            finish(t, key)

        # ---- phase 2 and 3: ZIPs ----
        zip_phases = []
        if "zip" not in skip:
            zip_phases.append(("zip_small", labels, {"dicomsvc": zs, "orthanc": zs}))
        if zb:
            zip_phases.append(("zip_big", labels[::-1], {"dicomsvc": zb, "orthanc": zo}))
        for key, order, zips in zip_phases:
            for lb in order:
                z = zips.get(lb)
                if z is None:
                    print(f"  [{lb}] {key}: skipped", flush=True)
                    continue
                print(f"phase {2 if key == 'zip_small' else 3}: [{lb}] one ZIP, {z['n']} instances,"
                      f" {z['bytes'] / 1e6:.0f} MB ({a.zip_compression}), fresh server", flush=True)
                t = make(lb, key)
                if start(t):
                    try:
                        r = run_zip(t, z, a.phase_timeout)
                        r["zip_mb"] = round(z["bytes"] / 1e6, 1)
                        out["services"][lb][key] = r
                        print(f"  [{lb}] HTTP {r.get('http_status')} {r.get('mode', '')}: upload {R.fmt(r.get('upload_s'), '{:.1f}')}s,"
                              f" all stored after {R.fmt(r.get('done_s'), '{:.1f}')}s = {r.get('inst_per_s')} inst/s;"
                              f" created {r.get('created')} dup {r.get('duplicates')} failed {r.get('failed')}"
                              + (f"; ERROR {r['error']}" if r.get("error") else ""), flush=True)
                    finally:
                        finish(t, key)
                        m = out["services"][lb].get(key, {}).get("mem", {})
                        print(f"  [{lb}] peak RSS sum {m.get('hwm_sum_mib')} MiB (largest process {m.get('hwm_max_mib')}),"
                              f" sampled PSS sum {m.get('sampled_pss_sum_mib')} MiB", flush=True)
                        if len(m.get("per_process") or []) > 1:
                            for pp in m["per_process"]:
                                print(f"      pid {pp['pid']}: peak {pp['hwm_mib']} MiB, now {pp['rss_mib']} MiB  {pp['cmd']}")
                        tl = out["services"][lb].get(key, {}).get("progress_timeline") or []
                        if tl:
                            pick = [tl[int(i * (len(tl) - 1) / 5)] for i in range(6)]
                            print("      job progress (s, processed, tree RSS MiB): "
                                  + "  ".join(f"{x[0]:.0f}s {x[1]} {x[2]}" for x in pick))

        # ---- the memory check ----
        mem = R.dig(out["services"], ("dicomsvc", "zip_big", "mem"))
        if mem and mem.get("hwm_sum_mib") is not None:
            v = mem["hwm_sum_mib"]
            ok = v < RSS_LIMIT_MIB
            out["rss_check"] = {
                "limit_mib": round(RSS_LIMIT_MIB, 1), "hwm_sum_mib": v, "pass": ok,
                "line": f"memory check, dicomsvc on the {out['services']['dicomsvc']['zip_big']['zip_mb'] / 1e3:.2f} GB ZIP:"
                        f" peak RSS sum {v} MiB {'<' if ok else '>='} {RSS_LIMIT_MB} MB ({RSS_LIMIT_MIB:.0f} MiB)"
                        f" -> {'PASS' if ok else 'FAIL'} (sampled PSS sum {mem.get('sampled_pss_sum_mib')} MiB)",
            }
            if not ok:
                run.rc = 1
        elif use_ours and zb:
            out["rss_check"] = {"pass": None, "line": "memory check, dicomsvc on the big ZIP: NOT MEASURED (see problems)"}

    client_rss = f"bench client peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    return R.finish(out, run.rc, print_report, collect_errors(out), a.json, notes=(client_rss,))


if __name__ == "__main__":
    sys.exit(main())
