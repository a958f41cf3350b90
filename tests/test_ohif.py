"""OHIF Viewer v3 (npm ``@ohif/app``, prebuilt) against dicomsvc's DICOMweb, in headless Chromium.

The viewer is served from its own origin (tests/ohif/serve.py) with the app-config.js that
docker compose uses (deploy/ohif/app-config.js, its DICOMweb root pointed at the test server,
plus tests/ohif/app-config.js: the onboarding tour off);
dicomsvc allows that origin (DICOMSVC_CORS_ORIGINS). A synthetic two-series study (CT and MR)
is stored, then tests/ohif/drive.mjs (playwright-core, Debian's chromium-headless-shell) opens
the study list and ``/viewer?StudyInstanceUIDs=...`` and records every request. Asserted: the
patient is listed, every request to the service got a 2xx, nothing was requested from any other
origin, and the viewport shows the image (the screenshot's viewport region has structure where
a blank viewport is one flat colour).

Needs tests/ohif/setup.sh (run by .ci/run): skipped, saying what is missing, when the browser,
node, playwright-core or OHIF are absent — except in CI (CI=true), where that is a failure.
"""

import json
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import MRImageStorage, generate_uid

import liveservice
from dicomfiles import make_ct
from liveservice import free_port, service_env

pytestmark = pytest.mark.same_in_scale_run("the viewer's service runs in a subprocess with its own environment (SQLite, local blobs)")

REPO = Path(__file__).resolve().parent.parent
OHIF_VERSION = "3.13.2"  # tests/ohif/setup.sh pins the same
OHIF_DIST = REPO / ".cache" / "ohif" / f"app-{OHIF_VERSION}" / "dist"
HERE = REPO / "tests" / "ohif"
APP_CONFIG = REPO / "deploy" / "ohif" / "app-config.js"
TEST_CONFIG = HERE / "app-config.js"  # appended: test-only settings
DEFAULT_ROOT = "'http://localhost:8001/dicomweb'"

FAMILY = "ZEBRAFINCH"  # a name to find in the study list (OHIF shows "ZEBRAFINCH, OHIF")
STUDY_DESCRIPTION = "OHIF HARNESS CT AND MR"


@pytest.fixture(scope="module")
def tools():
    missing = [] if (OHIF_DIST / "index.html").is_file() else [f"no OHIF {OHIF_VERSION} in {OHIF_DIST.relative_to(REPO)}"]
    return liveservice.browser_or_skip("OHIF test", missing)


# --------------------------------------------------------------------------
# the study: CT (3 slices) and MR (3 slices), one patient, one frame of reference
# --------------------------------------------------------------------------
def disc(size: int, z: int, inside: np.ndarray, outside: float) -> np.ndarray:
    """A disc (radius growing with z) filled with ``inside`` on a flat background."""
    yy, xx = np.mgrid[0:size, 0:size]
    radius = size * (0.30 + 0.04 * z)
    mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2
    return np.where(mask, inside, outside)


def study() -> list[Dataset]:
    size = 128
    study_uid, frame_uid = generate_uid(), generate_uid()
    ramp = np.linspace(0, 1, size)[None, :].repeat(size, axis=0)
    common = dict(
        StudyInstanceUID=study_uid,
        FrameOfReferenceUID=frame_uid,
        PatientName=f"{FAMILY}^OHIF",
        PatientID="OHIF-0001",
        PatientBirthDate="19700101",
        PatientSex="O",
        StudyDate="20240611",
        StudyTime="101500",
        StudyID="1",
        AccessionNumber="OHIF0001",
        StudyDescription=STUDY_DESCRIPTION,
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0],  # (0020,0037)
        PixelSpacing=[1, 1],  # (0028,0030)
        SliceThickness=5,
    )
    out = []
    ct_series, mr_series = generate_uid(), generate_uid()
    # Both series: a disc whose brightness ramps from left (dark) to right (bright).
    for z in range(3):
        # CT: stored 0 is air (-1024 HU, black in a 40/400 window); the disc ramps -100..+200 HU
        pixels = disc(size, z, 1024 - 100 + 300 * ramp, 0).astype(np.int16)
        out.append(make_ct(pixels, SeriesInstanceUID=ct_series, SeriesNumber=1, SeriesDescription="CT AXIAL",
                           InstanceNumber=z + 1, ImagePositionPatient=[-64, -64, 5 * z], **common))
    for z in range(3):
        pixels = disc(size, z, 200 + 800 * ramp, 20).astype(np.uint16)
        ds = make_ct(pixels, SeriesInstanceUID=mr_series, SeriesNumber=2, SeriesDescription="MR T1 AXIAL",
                     InstanceNumber=z + 1, ImagePositionPatient=[-64, -64, 5 * z], Modality="MR",
                     SOPClassUID=MRImageStorage, window=(500.0, 1000.0), intercept=0.0, **common)
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        out.append(ds)
    return out


def encode(ds: Dataset) -> bytes:
    with DicomBytesIO() as buffer:
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()


# --------------------------------------------------------------------------
# servers: the viewer's origin and the API's, both on loopback
# --------------------------------------------------------------------------
def viewer_config(api: str) -> str:
    """deploy/ohif/app-config.js with its DICOMweb root set to ``api``/dicomweb, then tests/ohif/app-config.js."""
    text = APP_CONFIG.read_text()
    assert DEFAULT_ROOT in text, "deploy/ohif/app-config.js no longer names its DICOMweb root"
    return text.replace(DEFAULT_ROOT, repr(api + "/dicomweb")) + "\n" + TEST_CONFIG.read_text()


@pytest.fixture(scope="module")
def stack(tools, tmp_path_factory):
    """dicomsvc (a uvicorn subprocess, DICOMSVC_CORS_ORIGINS = the viewer's origin) and OHIF's static
    files (tests/ohif/serve.py, a thread); yields (viewer origin, API origin, work folder)."""
    from ohif import serve  # tests/ohif/serve.py

    work = tmp_path_factory.mktemp("ohif")
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    config = work / "app-config.js"
    config.write_text(viewer_config(api))
    static = serve.make_server(OHIF_DIST, config)
    viewer = f"http://127.0.0.1:{static.server_address[1]}"
    threading.Thread(target=static.serve_forever, daemon=True).start()

    env = service_env(
        DICOMSVC_DATA_DIR=str(work / "data"),
        DICOMSVC_IMPORT_ROOT=str(work / "import"),
        DICOMSVC_CORS_ORIGINS=viewer,
        DICOMSVC_WORKERS="1",
        DICOMSVC_LOG_LEVEL="warning",
    )
    try:
        with liveservice.running(api_port, env, work / "dicomsvc.log"):
            yield viewer, api, work
    finally:
        static.shutdown()
        static.server_close()


@pytest.fixture(scope="module")
def drive(stack, tools):
    """The study stored, the viewer driven once: (study datasets, drive.mjs's record, API origin)."""
    viewer, api, work = stack
    datasets = study()
    with httpx.Client(base_url=api, timeout=30) as client:
        for ds in datasets:
            r = client.post("/dicom", content=encode(ds), headers={"Content-Type": "application/dicom"})
            assert r.status_code == 201, r.text
    shots = work / "shots"
    shots.mkdir()
    options = {"chromium": tools, "viewer": viewer, "api": api, "study": datasets[0].StudyInstanceUID,
               "patient": FAMILY, "out": str(shots), "timeoutMs": 60_000}  # fmt: skip
    done = subprocess.run(["node", str(HERE / "drive.mjs"), json.dumps(options)],
                          capture_output=True, text=True, timeout=240, cwd=HERE)  # fmt: skip
    assert done.returncode == 0, f"drive.mjs failed ({done.returncode}): {done.stderr[-3000:]}"
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return datasets, record, api


def describe(record: dict, api: str) -> str:
    """What a failure message shows: the step reached, failed or non-2xx API requests, console errors."""
    lines = [f"error: {record.get('error')}", f"steps: {record.get('steps')}"]
    for r in record["requests"]:
        if r["url"].startswith(api) and not (r["status"] and 200 <= r["status"] < 300):
            lines.append(f"  {r['method']} {r['url'][len(api):]} -> {r['status']} {r['failure'] or ''} (Accept: {r['accept']})")
    lines += [f"  blocked: {u}" for u in record["blocked"][:10]]
    lines += [f"  page error: {e}" for e in record["pageErrors"][:5]]
    lines += [f"  console {e}" for e in record["console"][:15]]
    if record.get("errorShot"):
        lines.append(f"screenshot: {record['errorShot']}")
    return "\n".join(lines)


def api_requests(record: dict, api: str) -> list[dict]:
    return [r for r in record["requests"] if r["url"].startswith(api + "/")]


# --------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------
def test_viewer_lists_and_shows_the_study(drive):
    datasets, record, api = drive
    assert record["error"] is None, describe(record, api)
    assert any(s["name"] == "study list shows the patient" for s in record["steps"])
    # QIDO-RS answered the study-level attributes the list shows (includefield, PS3.18 §8.3.4.3)
    assert STUDY_DESCRIPTION in record["listText"], record["listText"][:500]
    assert "CT" in record["listText"] and "MR" in record["listText"]
    paths = [urlsplit(r["url"]).path for r in api_requests(record, api)]
    study_uid = datasets[0].StudyInstanceUID
    assert "/dicomweb/studies" in paths, paths  # QIDO-RS studies (PS3.18 §10.6)
    assert any(p.endswith("/metadata") for p in paths), paths  # WADO-RS metadata (PS3.18 §10.4)
    assert any(f"/studies/{study_uid}/series/" in p and "/frames/" in p for p in paths), paths  # pixels
    assert any(p.endswith("/thumbnail") for p in paths), paths  # the server's thumbnails (PS3.18 §10.4.1.1.5)


def test_every_request_to_the_service_succeeded(drive):
    datasets, record, api = drive
    failed = [r for r in api_requests(record, api) if not (r["status"] and 200 <= r["status"] < 300)]
    assert api_requests(record, api)
    assert not failed, describe(record, api)


def test_nothing_fetched_from_elsewhere(drive):
    """The config has one data source and no phone-home features: no other origin is contacted."""
    datasets, record, api = drive
    assert not record["blocked"], record["blocked"]


def test_viewport_shows_the_image(drive):
    """The viewport is not blank: in its central half (away from the corner text overlays) the
    rendered disc ramps from dark (left) to bright (right); a viewport with no image is one flat
    colour."""
    datasets, record, api = drive
    assert record.get("viewerShot"), describe(record, api)
    shot = np.asarray(Image.open(record["viewerShot"]).convert("L"), dtype=np.float64)
    box = record["viewportBox"]
    x0, y0 = int(box["x"] + box["width"] / 4), int(box["y"] + box["height"] / 4)
    x1, y1 = int(box["x"] + 3 * box["width"] / 4), int(box["y"] + 3 * box["height"] / 4)
    centre = shot[y0:y1, x0:x1]
    assert centre.size > 10_000, box
    low, high = np.percentile(centre, [5, 95])
    third = centre.shape[1] // 3
    left, right = centre[:, :third].mean(), centre[:, -third:].mean()
    assert centre.std() > 15 and high - low > 60 and right - left > 30, (
        f"viewport looks blank or wrong: std {centre.std():.1f}, p5..p95 {low:.0f}..{high:.0f},"
        f" left/right thirds {left:.0f}/{right:.0f}; {record['viewerShot']}"
    )


# --------------------------------------------------------------------------
# docker compose: parsed and checked here (Docker cannot run on the test machine)
# --------------------------------------------------------------------------
def test_compose_serves_ohif_next_to_the_api():
    """docker-compose.yml: the ohif service (OHIF's published image, pinned to the version tested
    above) gets deploy/ohif/app-config.js as its /app-config.js, whose DICOMweb root is dicomsvc's
    published port; dicomsvc allows the viewer's published origin (DICOMSVC_CORS_ORIGINS)."""
    import yaml  # PyYAML (a dependency of openapi-spec-validator, in the test extra)

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    api, ohif = compose["services"]["dicomsvc"], compose["services"]["ohif"]
    assert ohif["image"] == f"ohif/app:v{OHIF_VERSION}"
    (viewer_port,) = [p.split(":")[0] for p in ohif["ports"] if p.endswith(":80")]
    (api_port,) = [p.split(":")[0] for p in api["ports"] if p.endswith(":8001")]
    mounts = {target.removesuffix(":ro"): source for source, target in (v.split(":", 1) for v in ohif["volumes"])}
    source = mounts["/usr/share/nginx/html/app-config.js"]
    assert (REPO / source).resolve() == APP_CONFIG
    assert f"'http://localhost:{api_port}/dicomweb'" == DEFAULT_ROOT
    assert f"const DICOMWEB_ROOT = {DEFAULT_ROOT};" in APP_CONFIG.read_text()
    origins = api["environment"]["DICOMSVC_CORS_ORIGINS"].split(",")
    assert f"http://localhost:{viewer_port}" in origins
    assert f"http://localhost:{api_port}" in ohif["environment"]["CSP_CONNECT_SRC"].split()
