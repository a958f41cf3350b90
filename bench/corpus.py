"""Synthetic CT corpora for the benchmarks: realistic headers, 512x512 int16 pixels.

``synthesize`` writes CT-like instances (explicit VR little endian, nested
sequences, ~0.5 MB each) under a folder; ``verify_corpus`` reads a few back.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


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



def make(root: Path, n: int, seed: int, note: str = "") -> Corpus | None:
    """synthesize() and verify_corpus(), printing the corpus line (+ note); None, with the
    problems printed, when the files do not read back right."""
    corpus = synthesize(root, n, seed=seed)
    problems = verify_corpus(corpus)
    print(f"corpus: {len(corpus.instances)} CT instances 512x512 int16, {corpus.n_elements} elements each,"
          f" {corpus.n_patients} patients/{corpus.n_studies} studies/{corpus.n_series} series,"
          f" {corpus.bytes_total / 1e6:.0f} MB, made in {corpus.seconds:.1f}s" + note, flush=True)
    if problems:
        print("corpus problems: " + "; ".join(problems), file=sys.stderr)
        return None
    return corpus
