"""Shared helpers for the dicomsvc benchmarks.

Everything here talks only to 127.0.0.1 and only to processes this module
started itself.  Nothing in here is imported by the service.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import signal
import sys
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


# --------------------------------------------------------------------------
# machine facts
# --------------------------------------------------------------------------
def machine_facts() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        nproc = os.cpu_count()
    import pydicom

    return {
        "nproc": nproc,
        "cpu_model": model,
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "numpy": np.__version__,
        "kernel": platform.release(),
    }


def orthanc_binary() -> str | None:
    for cand in ("/usr/sbin/Orthanc", shutil.which("Orthanc")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def orthanc_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        first = out.splitlines()[0].strip() if out else "?"
        return "Orthanc " + first.split()[-1] if first.split() else first
    except (OSError, subprocess.SubprocessError):
        return "?"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# /proc accounting for a process tree
# --------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parens: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """root plus all live descendants (by scanning /proc for ppid links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is None:
            continue
        children.setdefault(int(f[1]), []).append(int(entry))  # f[1] = ppid
    out, todo = [], [root]
    while todo and len(out) < 10_000:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of root and live descendants, plus reaped children (cutime+cstime)."""
    total = 0
    for pid in descendants(root):
        f = _stat_fields(pid)
        if f is None:
            continue
        # after comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
        total += int(f[11]) + int(f[12])
        if pid == root:
            total += int(f[13]) + int(f[14])
    return total / CLK_TCK


def tree_peak_rss_mib(root: int) -> dict:
    """VmHWM (peak RSS) of root and of each live descendant, in MiB."""
    per = {}
    for pid in descendants(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    per[pid] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return {
        "sum_mib": round(sum(per.values()), 1),
        "max_mib": round(max(per.values()), 1) if per else None,
        "nproc": len(per),
    }


# --------------------------------------------------------------------------
# subprocess servers
# --------------------------------------------------------------------------
class ServerProc:
    """A server subprocess in its own session (so we can kill exactly its group)."""

    def __init__(self, name: str, argv: list[str], cwd: str, env: dict, log_path: Path):
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def wait_ready(self, url: str, ok=lambda r: r.status_code == 200, timeout: float = 60.0) -> float:
        """Poll url until ok(response); returns seconds waited. Raises on timeout/death."""
        import httpx

        t0 = time.monotonic()
        deadline = t0 + timeout
        last = None
        with httpx.Client(timeout=2.0, trust_env=False) as c:
            for _ in range(int(timeout / 0.05) + 1):
                if not self.alive():
                    raise RuntimeError(
                        f"{self.name} exited with code {self.proc.returncode} before becoming ready;"
                        f" log tail:\n{self.log_tail()}"
                    )
                try:
                    r = c.get(url)
                    if ok(r):
                        return time.monotonic() - t0
                    last = f"HTTP {r.status_code}: {r.text[:200]!r}"
                except httpx.HTTPError as e:
                    last = repr(e)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s (last: {last}); log tail:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group we created, then SIGKILL after grace. Idempotent."""
        if self.proc is None:
            if self._log:
                self._log.close()
                self._log = None
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        else:
            # leader gone; make sure no straggler of its group survives
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode


def write_orthanc_config(workdir: Path, http_port: int, name: str = "bench") -> Path:
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    cfg = {
        "Name": name,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "HttpCompressionEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),  # unused (server disabled), but never the default 4242
        "DicomModalities": {},
        "OrthancPeers": {},
        "HttpProxy": "",
        "SaveJobs": False,
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "LuaScripts": [],
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


# --------------------------------------------------------------------------
# latency stats
# --------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), p, method="linear"))


def lat_summary(ms: list[float]) -> dict:
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 2) if ms else None,
        "p95_ms": round(pct(ms, 95), 2) if ms else None,
        "mean_ms": round(float(np.mean(ms)), 2) if ms else None,
    }


# --------------------------------------------------------------------------
# synthetic CT series
# --------------------------------------------------------------------------
@dataclass
class Instance:
    rel: str  # path relative to the import root, '/'-separated
    path: Path
    sop_uid: str
    study: int
    series: int
    size: int = 0


@dataclass
class Corpus:
    root: Path
    instances: list[Instance] = field(default_factory=list)
    n_patients: int = 0
    n_studies: int = 0
    n_series: int = 0
    seconds: float = 0.0
    n_elements: int = 0
    bytes_total: int = 0


def _layout(n: int) -> list[tuple[int, int, int]]:
    """(patient, study, series) for a few studies/series: 2 patients, 3 studies, 6 series."""
    plan = [(0, 0, 0), (0, 0, 1), (0, 1, 2), (1, 2, 3), (1, 2, 4), (1, 2, 5)]
    # split n as evenly as possible, every series gets >= 1 if n >= 6
    k = len(plan) if n >= len(plan) else max(1, n)
    plan = plan[:k]
    base, extra = divmod(n, k)
    out = []
    for i, p in enumerate(plan):
        out += [p] * (base + (1 if i < extra else 0))
    return out


def _anatomy(ny: int, nx: int, z: float, rng: np.random.Generator, yy, xx) -> np.ndarray:
    """Stored values (HU + 1024) of a crude torso slice at normalised position z in [0, 1]."""
    img = np.zeros((ny, nx), np.float32)  # air: HU -1024 -> stored 0
    cy, cx = ny / 2 + 20, nx / 2
    s = 1.0 + 0.08 * np.sin(np.pi * z)  # body gets a bit wider mid-series
    body = ((xx - cx) / (190 * s)) ** 2 + ((yy - cy) / (130 * s)) ** 2 <= 1.0
    img[body] = 1024 - 90  # fat-ish, HU -90
    inner = ((xx - cx) / (172 * s)) ** 2 + ((yy - cy) / (114 * s)) ** 2 <= 1.0
    img[inner] = 1024 + 40  # soft tissue, HU 40
    # lungs shrink towards the end of the series
    lr = max(0.05, 1.0 - z) * 70
    for sx in (-1, 1):
        lung = ((xx - (cx + sx * 75)) / (lr * 0.9 + 1)) ** 2 + ((yy - (cy - 10)) / (lr * 1.25 + 1)) ** 2 <= 1.0
        img[lung] = 1024 - 820
    # spine + aorta
    spine = ((xx - cx) / 22) ** 2 + ((yy - (cy + 85)) / 20) ** 2 <= 1.0
    img[spine] = 1024 + 650
    canal = ((xx - cx) / 7) ** 2 + ((yy - (cy + 72)) / 7) ** 2 <= 1.0
    img[canal] = 1024 + 20
    aorta = ((xx - (cx + 18)) / 13) ** 2 + ((yy - (cy + 55)) / 13) ** 2 <= 1.0
    img[aorta] = 1024 + 180
    # a slice-dependent lesion so neighbouring slices differ visibly
    ly, lx = cy + 30 * np.cos(6 * z), cx - 50 + 40 * np.sin(5 * z)
    lesion = ((xx - lx) / 14) ** 2 + ((yy - ly) / 11) ** 2 <= 1.0
    img[lesion] = 1024 + 90
    return img


def synthesize(root: Path, n: int, seed: int = 1234, bits_stored: int = 12) -> Corpus:
    """Write n CT-like instances under root/<study>/<series>/IMxxxxx.dcm."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    rows = cols = 512
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    fov = ((xx - cols / 2 + 0.5) ** 2 + (yy - rows / 2 + 0.5) ** 2) <= (cols / 2) ** 2
    # a small bank of noise fields, rolled per slice -> per-slice noise for cheap
    bank = [rng.normal(0.0, 18.0, (rows, cols)).astype(np.float32) for _ in range(4)]
    lo, hi = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1

    layout = _layout(n)
    now = _dt.datetime(2024, 3, 14, 9, 26, 53)
    patients = [
        {"PatientName": "BENCH^ALPHA", "PatientID": "BENCH0001", "PatientBirthDate": "19580211", "PatientSex": "F", "PatientAge": "066Y", "PatientWeight": 61.5, "PatientSize": 1.64},
        {"PatientName": "BENCH^BRAVO^J", "PatientID": "BENCH0002", "PatientBirthDate": "19710930", "PatientSex": "M", "PatientAge": "052Y", "PatientWeight": 84.0, "PatientSize": 1.81},
    ]
    study_uids = [generate_uid() for _ in range(3)]
    series_uids = [generate_uid() for _ in range(6)]
    for_uids = [generate_uid() for _ in range(3)]
    study_desc = ["CT CHEST W CONTRAST", "CT ABDOMEN PELVIS", "CT THORAX LOW DOSE"]
    series_desc = ["AXIAL 1.0 SOFT", "AXIAL 1.0 LUNG", "AXIAL 2.0 STD", "AXIAL 1.25 SOFT", "AXIAL 1.25 BONE", "AXIAL 5.0 STD"]
    kernels = ["B31f", "B70f", "STANDARD", "SOFT", "BONE", "STANDARD"]
    thickness = [1.0, 1.0, 2.0, 1.25, 1.25, 5.0]
    windows = [(40, 400), (-600, 1500), (40, 350), (50, 400), (400, 1800), (40, 400)]
    series_count = [0] * 6
    series_total = [layout.count(p) for p in sorted(set(layout), key=lambda p: p[2])]

    corpus = Corpus(root=root)
    ds_by_series: dict[int, Dataset] = {}

    def make_template(pat: int, st: int, se: int) -> Dataset:
        ds = Dataset()
        P = patients[pat]
        d = (now + _dt.timedelta(days=40 * st)).strftime("%Y%m%d")
        tm = (now + _dt.timedelta(minutes=7 * se)).strftime("%H%M%S.%f")[:13]
        # SOP common / general image
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceCreationDate = d
        ds.InstanceCreationTime = tm
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = "1.2.3"  # per instance below
        ds.StudyDate = d
        ds.SeriesDate = d
        ds.AcquisitionDate = d
        ds.ContentDate = d
        ds.StudyTime = tm
        ds.SeriesTime = tm
        ds.AcquisitionTime = tm
        ds.ContentTime = tm
        ds.AccessionNumber = f"ACC{1000 + st}"
        ds.Modality = "CT"
        ds.Manufacturer = "BENCH MEDICAL"
        ds.InstitutionName = "Bench General Hospital"
        ds.InstitutionAddress = "1 Loopback Road"
        ds.ReferringPhysicianName = "REFERRER^RITA"
        ds.StationName = "CTBENCH01"
        ds.StudyDescription = study_desc[st]
        ds.ProcedureCodeSequence = Sequence([_code(Dataset, "CTCHE", "99BENCH", study_desc[st])])
        ds.SeriesDescription = series_desc[se]
        ds.InstitutionalDepartmentName = "Radiology"
        ds.PerformingPhysicianName = "TECH^TOM"
        ds.OperatorsName = "OPERATOR^OLGA"
        ds.ManufacturerModelName = "SynthCT 64"
        # request attributes: a two-level nested sequence
        req = Dataset()
        req.RequestedProcedureID = f"RP{st:03d}"
        req.ScheduledProcedureStepID = f"SPS{st:03d}"
        req.ScheduledProcedureStepDescription = study_desc[st]
        req.ScheduledProtocolCodeSequence = Sequence([_code(Dataset, f"P{st}", "99BENCH", "Routine protocol")])
        ds.RequestAttributesSequence = Sequence([req])
        ds.AnatomicRegionSequence = Sequence([_code(Dataset, "51185008", "SCT", "Chest")])
        # patient
        ds.PatientName = P["PatientName"]
        ds.PatientID = P["PatientID"]
        ds.IssuerOfPatientID = "BENCH"
        ds.PatientBirthDate = P["PatientBirthDate"]
        ds.PatientSex = P["PatientSex"]
        ds.PatientAge = P["PatientAge"]
        ds.PatientSize = P["PatientSize"]
        ds.PatientWeight = P["PatientWeight"]
        ds.PatientIdentityRemoved = "NO"
        # CT image / acquisition
        ds.ContrastBolusAgent = "IOPAMIDOL" if st == 0 else ""
        ds.BodyPartExamined = "CHEST" if st != 1 else "ABDOMEN"
        ds.ScanOptions = "HELICAL MODE"
        ds.SliceThickness = thickness[se]
        ds.KVP = 120 if se != 5 else 100
        ds.DataCollectionDiameter = 500.0
        ds.DeviceSerialNumber = "SN-000042"
        ds.SoftwareVersions = ["synth-1.0", "bench"]
        ds.ProtocolName = "THORAX ROUTINE"
        ds.ReconstructionDiameter = 380.0
        ds.DistanceSourceToDetector = 1085.6
        ds.DistanceSourceToPatient = 595.0
        ds.GantryDetectorTilt = 0.0
        ds.TableHeight = 160.0
        ds.RotationDirection = "CW"
        ds.ExposureTime = 500
        ds.XRayTubeCurrent = 220
        ds.Exposure = 110
        ds.FilterType = "BODY FILTER"
        ds.GeneratorPower = 26
        ds.FocalSpots = 1.2
        ds.ConvolutionKernel = kernels[se]
        ds.PatientPosition = "FFS"
        ds.RevolutionTime = 0.5
        ds.SingleCollimationWidth = 0.625
        ds.TotalCollimationWidth = 40.0
        ds.TableSpeed = 78.75
        ds.TableFeedPerRotation = 39.375
        ds.SpiralPitchFactor = 0.984
        ds.CTDIvol = 7.83
        ds.CTDIPhantomTypeCodeSequence = Sequence([_code(Dataset, "113691", "DCM", "IEC Body Dosimetry Phantom")])
        # study / series / frame of reference
        ds.StudyInstanceUID = study_uids[st]
        ds.SeriesInstanceUID = series_uids[se]
        ds.StudyID = f"{st + 1}"
        ds.SeriesNumber = se + 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = 1  # per instance
        ds.ImagePositionPatient = [-190.0, -190.0, 0.0]  # per instance
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = for_uids[st]
        ds.PositionReferenceIndicator = "SN"
        ds.SliceLocation = 0.0  # per instance
        ds.ImageComments = "synthetic image for benchmarking"
        # image pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [0.742188, 0.742188]
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1
        ds.PixelPaddingValue = lo if bits_stored < 16 else -2000
        ds.SmallestImagePixelValue = 0  # per instance
        ds.LargestImagePixelValue = 0  # per instance
        ds.WindowCenter = windows[se][0]
        ds.WindowWidth = windows[se][1]
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenterWidthExplanation = "WINDOW1"
        ds.LossyImageCompression = "00"
        ds.PixelData = b""
        ds["PixelData"].VR = "OW"
        # file meta
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        fm.MediaStorageSOPInstanceUID = "1.2.3"
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        fm.ImplementationVersionName = "DICOMSVC_BENCH"
        ds.file_meta = fm
        return ds

    for i, (pat, st, se) in enumerate(layout):
        ds = ds_by_series.get(se)
        if ds is None:
            ds = ds_by_series[se] = make_template(pat, st, se)
        k = series_count[se]
        series_count[se] += 1
        tot = max(1, series_total[se])
        z = k / max(1, tot - 1)
        img = _anatomy(rows, cols, z, rng, yy, xx)
        noise = np.roll(bank[i % 4], (int(rng.integers(rows)), int(rng.integers(cols))), axis=(0, 1))
        img += noise * (img > 60)  # no noise in pure air, like a real scanner's air is ~quiet
        img[~fov] = ds.PixelPaddingValue
        px = np.clip(np.rint(img), lo, hi).astype("<i2")
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = k + 1
        zpos = -k * float(ds.SliceThickness)
        ds.ImagePositionPatient = [-190.0, -190.0 - 20 * st, round(zpos, 3)]
        ds.SliceLocation = round(zpos, 3)
        ds.SmallestImagePixelValue = int(px.min())
        ds.LargestImagePixelValue = int(px.max())
        ds.PixelData = px.tobytes()
        rel = f"study{st + 1}/series{se + 1}/IM{k + 1:05d}.dcm"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        size = path.stat().st_size
        corpus.instances.append(Instance(rel=rel, path=path, sop_uid=uid, study=st, series=se, size=size))
        corpus.bytes_total += size

    corpus.n_patients = len({p for p, _, _ in layout})
    corpus.n_studies = len({s for _, s, _ in layout})
    corpus.n_series = len({s for _, _, s in layout})
    corpus.seconds = time.perf_counter() - t0
    if corpus.instances:
        back = pydicom.dcmread(corpus.instances[0].path)
        corpus.n_elements = sum(1 for _ in back.iterall())
    return corpus


def _code(Dataset, value: str, scheme: str, meaning: str):
    c = Dataset()
    c.CodeValue = value
    c.CodingSchemeDesignator = scheme
    c.CodeMeaning = meaning
    return c


def verify_corpus(corpus: Corpus, sample: int = 3) -> list[str]:
    """Read a few files back with pydicom and check the pixel data; returns problems."""
    import pydicom

    problems = []
    idx = sorted({0, len(corpus.instances) // 2, len(corpus.instances) - 1})[:sample]
    for i in idx:
        inst = corpus.instances[i]
        ds = pydicom.dcmread(inst.path)
        if ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.1":
            problems.append(f"{inst.rel}: transfer syntax {ds.file_meta.TransferSyntaxUID}")
        arr = ds.pixel_array
        if arr.shape != (512, 512) or arr.dtype != np.int16:
            problems.append(f"{inst.rel}: pixel_array {arr.shape} {arr.dtype}")
        if ds.SOPInstanceUID != inst.sop_uid:
            problems.append(f"{inst.rel}: SOPInstanceUID mismatch")
    if len({i.sop_uid for i in corpus.instances}) != len(corpus.instances):
        problems.append("duplicate SOP Instance UIDs")
    return problems


# --------------------------------------------------------------------------
# report helpers shared by ingest.py and upload.py
# --------------------------------------------------------------------------
def settle_cpu(pid: int, max_s: float = 3.0) -> float:
    """Wait (<= max_s) until the server tree stops burning CPU; return its CPU seconds."""
    last = tree_cpu_seconds(pid)
    for _ in range(int(max_s / 0.25)):
        time.sleep(0.25)
        now = tree_cpu_seconds(pid)
        if now - last < 0.02:
            return now
        last = now
    return last


def fmt(x, spec="{:.1f}"):
    return "-" if x is None else spec.format(x)


def ratio(num, den):
    if num is None or den is None or den == 0:
        return None
    return round(num / den, 2)


def dig(d, ks):
    for k in ks:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def cleanup(live: list, keep: bool, tmp: Path) -> None:
    """Stop every server still running; remove the scratch folder unless asked to keep it."""
    for t in list(live):
        try:
            t.stop()
        except Exception as e:  # noqa: BLE001
            print(f"stopping {t.label} failed: {e}", file=sys.stderr)
    if keep:
        print(f"kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def problems_exit_code(errs: list[str], rc: int) -> int:
    """Print the problems; 1 when dicomsvc had any, 3 when only the peer did."""
    if not errs:
        return rc
    print("\nPROBLEMS:")
    for line in errs:
        print("  " + line)
    if any(line.startswith("dicomsvc") for line in errs):
        return rc or 1
    return rc or 3


def start_orthanc(label: str, binary: str, work: Path, port: int, base: str) -> tuple["ServerProc", float]:
    """Orthanc with its own config in ``work`` (loopback only); the process and its start-up seconds."""
    cfg = write_orthanc_config(work, port)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")}
    server = ServerProc(label, [binary, str(cfg)], str(work), env, work / "server.log")
    server.start()
    return server, server.wait_ready(base + "/system", timeout=60)
