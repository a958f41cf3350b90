"""DICOMweb latencies: dicomsvc's /dicomweb vs. Orthanc's DICOMweb plugin, side by side, on loopback.

Run from the repo root:

    .venv/bin/python bench/dicomweb.py [--series 600] [--studies 50] [--requests 100]
                                       [--metadata-requests 20] [--no-orthanc] [--keep] [--json out.json]

Data, the same files for both services: one CT series of --series instances (512x512 int16, the
headers and anatomy of bench/corpus.py, rewritten into one study and one series, instance numbers
and positions in order) and --studies small studies (one 64x64 CT instance each, patients
SMALL^P000, SMALL^P001, ...). dicomsvc stores them with POST /dicom {"path"}, Orthanc with
POST /instances (2 client threads each). Orthanc runs with its own config on 127.0.0.1: the
DICOMweb plugin (Debian orthanc-dicomweb) loaded, its defaults otherwise, HTTP compression off.

Then, per row, one request to each service in turn (the order swapped every time), after 3
warm-up requests each that are not counted, all with Accept-Encoding: identity; each answer is
checked (status, count of results, media type):
  - QIDO-RS studies (PS3.18 §10.6), no filter: every study;
  - QIDO-RS studies with a PatientName wildcard (SMALL^P00*: 10 of them);
  - QIDO-RS series in the big study;
  - WADO-RS series metadata (PS3.18 §10.4.1.1.2) of the big series;
  - one frame (.../frames/1, multipart/related; type="application/octet-stream";
    transfer-syntax=*, what OHIF asks for), a different instance each time;
  - one rendered frame (.../frames/1/rendered, image/jpeg), a different instance each time;
  - one thumbnail (.../instances/{sop}/thumbnail?viewport=256,256, image/jpeg, as OHIF asks; Orthanc's
    plugin has none, so its column is .../instances/{sop}/rendered?viewport=256,256).
Prints p50/p95 per row, a ratio column (Orthanc / dicomsvc: > 1 means dicomsvc is faster) and,
as the last stdout line, the results as JSON. Machine caveat: 2 shared noisy cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clients as CL  # noqa: E402
import corpus as CO  # noqa: E402
import report as R  # noqa: E402
import servers as S  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HEADERS = {"Accept-Encoding": "identity"}
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins")
DICOM_JSON = "application/dicom+json"
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
WARMUP = 3
WILDCARD = "SMALL^P00*"  # SMALL^P000 .. SMALL^P009


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def make_data(root: Path, n_series: int, n_studies: int, seed: int) -> dict:
    """The big series and the small studies under root; their files (relative paths) and UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    t0 = time.perf_counter()
    corpus = CO.synthesize(root / "big", n_series, seed=seed)
    problems = CO.verify_corpus(corpus)
    if problems:
        raise SystemExit("corpus problems: " + "; ".join(problems))
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    sops = []
    for k, inst in enumerate(corpus.instances):  # one study, one series: renumber in file order
        ds = pydicom.dcmread(inst.path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.PatientName, ds.PatientID = "BENCH^BIG", "BENCH-BIG"
        ds.StudyDescription, ds.SeriesDescription, ds.AccessionNumber = "CT CHEST 600", "AXIAL 1.0 SOFT", "ACCBIG"
        ds.StudyDate = ds.SeriesDate = "20240314"
        ds.SeriesNumber, ds.InstanceNumber = 2, k + 1
        ds.ImagePositionPatient = [-190.0, -190.0, -1.0 * k]
        ds.SliceLocation = -1.0 * k
        ds.save_as(inst.path, enforce_file_format=True)
        sops.append(ds.SOPInstanceUID)
    files = [f"big/{inst.rel}" for inst in corpus.instances]
    template = pydicom.dcmread(corpus.instances[0].path)
    pixels = template.pixel_array[::8, ::8].astype("<i2")
    for k in range(n_studies):  # the small studies: one 64x64 instance each
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID = f"SMALL^P{k:03d}", f"SMALL-{k:03d}"
        ds.StudyDescription, ds.AccessionNumber = f"SMALL STUDY {k}", f"ACCS{k:03d}"
        ds.StudyDate = f"2023{1 + k % 12:02d}{1 + k % 28:02d}"
        ds.Rows = ds.Columns = 64
        ds.PixelSpacing = [5.9375, 5.9375]
        ds.PixelData = pixels.tobytes()
        rel = f"small/{k:03d}.dcm"
        (root / "small").mkdir(exist_ok=True)
        ds.save_as(root / rel, enforce_file_format=True)
        files.append(rel)
    seconds = time.perf_counter() - t0
    print(f"data: 1 CT series of {n_series} instances (512x512 int16) + {n_studies} small studies (64x64),"
          f" made in {seconds:.1f}s", flush=True)
    return {"root": root, "files": files, "study": study, "series": series, "sops": sops,
            "n_studies": n_studies + 1, "n_wildcard": min(n_studies, 10)}


# --------------------------------------------------------------------------
# the services
# --------------------------------------------------------------------------
def dicomweb_plugin() -> str | None:
    for folder in PLUGIN_DIRS:
        for path in sorted(Path(folder).glob("libOrthancDicomWeb.so*")):
            return str(path)
    return None


class Ours(S.Service):
    label = "dicomsvc"
    root = "/dicomweb"

    def __init__(self, workroot: Path, import_root: Path):
        super().__init__(workroot, "dw")
        self.import_root = import_root

    def launch_server(self) -> None:
        data = self.work / "data"
        data.mkdir()
        argv = S.uvicorn_argv(self.port) + ["--no-access-log"]
        self.launch_dicomsvc(argv, REPO, S.dicomsvc_env(data, self.import_root))

    def store(self, c: httpx.Client, rel: str, path: Path) -> tuple[object, str | None]:
        r = c.post("/dicom", json={"path": rel})
        return (True, None) if r.status_code in (200, 201) else (None, f"POST /dicom {rel}: {r.status_code} {r.text[:200]!r}")


class Orthanc(S.OrthancService):
    """Orthanc (bench/servers.py's loopback-only config) with the DICOMweb plugin loaded."""

    root = "/dicom-web"

    def __init__(self, workroot: Path, binary: str, plugin: str):
        super().__init__(workroot, "dw", binary)
        self.plugin = plugin

    def launch_server(self) -> None:
        path = S.write_orthanc_config(self.work, self.port)
        cfg = json.loads(path.read_text())
        cfg["Plugins"] = [self.plugin]
        cfg["DicomWeb"] = {"Enable": True, "Root": self.root + "/", "EnableWado": False, "Ssl": False}
        path.write_text(json.dumps(cfg, indent=2))
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")}
        self.launch([self.binary, str(path)], self.work, env, "/system")

    def store(self, c: httpx.Client, rel: str, path: Path) -> tuple[object, str | None]:
        r = c.post("/instances", content=path.read_bytes(), headers={"Content-Type": "application/dicom"})
        return (True, None) if r.status_code == 200 else (None, f"POST /instances {rel}: {r.status_code} {r.text[:200]!r}")


def client(t: S.Service) -> httpx.Client:
    return httpx.Client(base_url=t.base, headers=HEADERS, timeout=120.0, trust_env=False)


def store_all(t: S.Service, data: dict) -> dict:
    items = [CO.Instance(rel=rel, path=data["root"] / rel, sop_uid="", study=0, series=0) for rel in data["files"]]
    sent = CL.send_each(items, 2, 1800, lambda: client(t), lambda c, inst: t.store(c, inst.rel, inst.path), t.server.pid)
    summary = sent.summary()
    print(f"  [{t.label}] stored {summary['ok']}/{summary['n']} in {summary['wall_s']:.1f}s"
          + (f", {summary['errors']} ERRORS: {summary['error_samples'][:2]}" if summary["errors"] else ""), flush=True)
    return summary


# --------------------------------------------------------------------------
# the rows
# --------------------------------------------------------------------------
def json_count(expected: int):
    def check(r: httpx.Response) -> str | None:
        if r.status_code != 200:
            return f"HTTP {r.status_code} {r.text[:200]!r}"
        try:
            n = len(r.json())
        except ValueError as e:
            return f"200 but not JSON ({e})"
        return None if n == expected else f"{n} results, expected {expected}"

    return check


def media(prefix: str, magic: bytes = b"", min_bytes: int = 1):
    def check(r: httpx.Response) -> str | None:
        if r.status_code != 200:
            return f"HTTP {r.status_code} {r.text[:200]!r}"
        kind = r.headers.get("content-type", "")
        if not kind.startswith(prefix):
            return f"Content-Type {kind!r}, expected {prefix}"
        if magic and not r.content.startswith(magic):
            return f"body starts {r.content[:8]!r}"
        return None if len(r.content) >= min_bytes else f"{len(r.content)} bytes"

    return check


def rows(data: dict, n: int, n_meta: int) -> list[dict]:
    """Each row: its label, how many requests, and per request k the path (under the DICOMweb root),
    the Accept header and the check."""
    study, series, sops = data["study"], data["series"], data["sops"]
    order = sops[:]
    random.Random(7).shuffle(order)

    def instance(k: int) -> str:
        return f"/studies/{study}/series/{series}/instances/{order[k % len(order)]}"

    return [
        {"key": "qido_studies", "label": f"QIDO /studies ({data['n_studies']})", "n": n,
         "path": lambda k: "/studies", "accept": DICOM_JSON, "check": json_count(data["n_studies"])},
        {"key": "qido_wildcard", "label": f"QIDO /studies?PatientName={WILDCARD} ({data['n_wildcard']})", "n": n,
         "path": lambda k: f"/studies?PatientName={WILDCARD}", "accept": DICOM_JSON, "check": json_count(data["n_wildcard"])},
        {"key": "qido_series", "label": "QIDO /studies/{s}/series", "n": n,
         "path": lambda k: f"/studies/{study}/series", "accept": DICOM_JSON, "check": json_count(1)},
        {"key": "metadata", "label": f"series metadata ({len(sops)} inst)", "n": n_meta,
         "path": lambda k: f"/studies/{study}/series/{series}/metadata", "accept": DICOM_JSON,
         "check": json_count(len(sops))},
        {"key": "frame", "label": "frame (512x512 int16)", "n": n,
         "path": lambda k: instance(k) + "/frames/1", "accept": FRAME_ACCEPT,
         "check": media("multipart/related", min_bytes=512 * 512 * 2)},
        {"key": "rendered", "label": "rendered frame (JPEG)", "n": n,
         "path": lambda k: instance(k) + "/frames/1/rendered", "accept": "image/jpeg",
         "check": media("image/jpeg", b"\xff\xd8")},
        {"key": "thumbnail", "label": "thumbnail (JPEG)", "n": n,
         "path": lambda k: instance(k) + "/thumbnail?viewport=256,256", "accept": "image/jpeg",
         "check": media("image/jpeg", b"\xff\xd8"),
         # Orthanc's plugin has no /thumbnail: what it would serve instead, the same size rendered
         "orthanc_path": lambda k: instance(k) + "/rendered?viewport=256,256"},
    ]


def run_rows(services: list[S.Service], data: dict, n: int, n_meta: int, deadline_s: float) -> dict:
    """Every row, request by request alternating the services; {label: {row key: figures}}."""
    out = {t.label: {} for t in services}
    conns = {t.label: client(t) for t in services}
    try:
        for row in rows(data, n, n_meta):
            lat = {t.label: [] for t in services}
            errors = {t.label: [] for t in services}
            nbytes = {t.label: 0 for t in services}
            deadline = time.monotonic() + deadline_s
            done = 0
            for k in range(-WARMUP, row["n"]):
                if time.monotonic() > deadline:
                    break
                for t in services if k % 2 == 0 else services[::-1]:
                    url = t.root + row.get(f"{t.label}_path", row["path"])(k)
                    t0 = time.perf_counter()
                    try:
                        r = conns[t.label].get(url, headers={"Accept": row["accept"]})
                        ms = (time.perf_counter() - t0) * 1000
                        err = row["check"](r)
                    except httpx.HTTPError as e:
                        r, ms, err = None, None, repr(e)
                    if k < 0:
                        continue
                    if err:
                        errors[t.label].append(f"GET ...{url[-80:]}: {err}")
                    else:
                        lat[t.label].append(ms)
                        nbytes[t.label] += len(r.content)
                done += k >= 0
            for t in services:
                figures = R.lat_summary(lat[t.label])
                figures.update(requests=done, errors=len(errors[t.label]), error_samples=errors[t.label][:3],
                               mean_kb=round(nbytes[t.label] / len(lat[t.label]) / 1000, 1) if lat[t.label] else None)
                out[t.label][row["key"]] = figures
            line = "  ".join(f"[{t.label}] p50 {R.fmt(out[t.label][row['key']]['p50_ms'], '{:.2f}')} ms"
                             + (f" ({len(errors[t.label])} errors)" if errors[t.label] else "") for t in services)
            print(f"  {row['label']}: {line}", flush=True)
    finally:
        for c in conns.values():
            c.close()
    return out


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
LABELS = {
    "qido_studies": "QIDO /studies",
    "qido_wildcard": f"QIDO /studies?PatientName={WILDCARD}",
    "qido_series": "QIDO /studies/{s}/series",
    "metadata": "series metadata",
    "frame": "frame",
    "rendered": "rendered frame",
    "thumbnail": "thumbnail (1)",
}


def print_report(out: dict) -> None:
    svc = out["services"]
    table = R.Table(svc)
    for key, label in LABELS.items():
        table.row(f"{label} p50 [ms]", ("rows", key, "p50_ms"), "{:.2f}", better="lo")
        table.row(f"{label} p95 [ms]", ("rows", key, "p95_ms"), "{:.2f}", better="lo")
    table.row("series metadata size [kB]", ("rows", "metadata", "mean_kb"), "{:.0f}", compare=False)
    table.row("thumbnail size [kB]", ("rows", "thumbnail", "mean_kb"), "{:.1f}", compare=False)
    table.print()
    if len(svc) == 2:
        print("ratio: Orthanc / dicomsvc -> > 1 means dicomsvc is faster;"
              " targets: every row >= 1, series metadata >= 5")
        slow = [LABELS[k] for k in LABELS
                if (r := R.ratio(R.dig(svc, ("orthanc", "rows", k, "p50_ms")), R.dig(svc, ("dicomsvc", "rows", k, "p50_ms"))))
                is not None and r < (5 if k == "metadata" else 1)]
        print("below target (p50): " + (", ".join(slow) if slow else "none"))
    if "orthanc" in svc:
        print("(1) Orthanc's DICOMweb plugin has no /thumbnail: its column is .../rendered?viewport=256,256")


def collect_errors(out: dict) -> list[str]:
    lines = []
    for name, s in out["services"].items():
        for key, figures in s.get("rows", {}).items():
            if figures.get("errors"):
                lines.append(f"{name} {LABELS[key]}: {figures['errors']} errors of {figures['requests']}")
                lines += [f"    {e}" for e in figures["error_samples"]]
        if (stored := s.get("store")) and stored.get("errors"):
            lines += CL.problems(name, "store", stored)
        lines += [f"{name}: {e}" for e in s.get("fatal", [])]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=600, help="instances in the big CT series (default 600)")
    ap.add_argument("--studies", type=int, default=50, help="small studies besides it (default 50)")
    ap.add_argument("--requests", type=int, default=100, help="timed requests per row per service (default 100)")
    ap.add_argument("--metadata-requests", type=int, default=20, help="timed series metadata requests (default 20)")
    ap.add_argument("--row-timeout", type=float, default=600.0, help="deadline per row, s")
    ap.add_argument("--no-orthanc", action="store_true", help="benchmark dicomsvc only")
    ap.add_argument("--no-ours", action="store_true", help="benchmark Orthanc only (bench development)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data, server logs)")
    ap.add_argument("--json", metavar="FILE", help="also write the JSON results to FILE")
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args(argv)
    if a.series < 1 or a.studies < 10 or a.requests < 1 or a.metadata_requests < 1:
        ap.error("--series, --requests, --metadata-requests must be >= 1 and --studies >= 10")

    out, binary = R.begin(a.no_orthanc, a.no_ours)
    if out is None:
        return 2
    plugin = dicomweb_plugin() if binary else None
    if binary and not plugin:
        print("note: Orthanc's DICOMweb plugin (Debian orthanc-dicomweb) not found -> dicomsvc only")
        out["services"].pop("orthanc", None)
    if plugin:
        out["facts"]["orthanc_dicomweb"] = plugin
    out["config"] = {"series": a.series, "studies": a.studies, "requests": a.requests,
                     "metadata_requests": a.metadata_requests, "warmup": WARMUP, "frame_accept": FRAME_ACCEPT}
    with S.Session("dicomsvc-dicomweb-", a.keep) as run:
        import_root = run.tmp / "import"
        import_root.mkdir()
        data = make_data(import_root, a.series, a.studies, a.seed)
        services: list[S.Service] = []
        if not a.no_ours:
            services.append(Ours(run.tmp, import_root))
        if plugin:
            services.append(Orthanc(run.tmp, binary, plugin))
        ready = []
        for t in services:
            if run.start(t, out["services"][t.label]):
                out["services"][t.label]["store"] = store_all(t, data)
                ready.append(t)
        if ready:
            print(f"rows: {a.requests} requests each ({a.metadata_requests} for series metadata), services"
                  " alternating request by request", flush=True)
            for label, figures in run_rows(ready, data, a.requests, a.metadata_requests, a.row_timeout).items():
                out["services"][label]["rows"] = figures
    return R.finish(out, run.rc, print_report, collect_errors(out), a.json)


if __name__ == "__main__":
    sys.exit(main())
