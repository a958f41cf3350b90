"""The page in the browser at ``/`` (dicomsvc/http/page.py, dicomsvc/http/static/).

HTTP level (TestClient): the page and its assets are public, strict CSP, caching, /ui/config's
shape; with auth on, the page is still public while the data routes answer 401.

In a real browser: tests/webpage/drive.mjs (playwright-core from tests/ohif/node_modules,
Debian's chromium-headless-shell: tests/ohif/setup.sh) drives the page served by uvicorn at
1280x720: a ZIP of three CT slices (sent resumably: DICOMSVC_PAGE_RESUMABLE_BYTES is set below
its size) and a broken file (multipart) are uploaded with anonymize unticked, the Upload button
reached and pressed with the keyboard only; the progress reaches done and the broken file is
listed with its reason; the study is found by patient ID, opened from the keyboard, and three
slices are stepped through (ArrowDown, the mouse wheel): each shows another instance, with other
pixels, and its own tags; a CT window preset asks /image with that window; a second series, one
two-frame instance, steps through its frames (/image?frame=2). No console errors, no
CSP violations, nothing fetched from elsewhere, no horizontal scroll.

Screenshots are kept in tests/artifacts/webpage/ (git-ignored). The README's screenshot,
docs/page.png, is written by the same run when asked:
``DICOMSVC_PAGE_SCREENSHOT=docs/page.png .venv/bin/python -m pytest -q tests/test_webpage.py``.
Skipped when the browser, node or playwright-core are missing, except under CI=true (a failure).
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import MRImageStorage, generate_uid
from starlette.testclient import TestClient

from app import create_app
from dicomfiles import make_ct
from dicomsvc.config import Config
import liveservice
from liveservice import free_port, service_env

# The browser's service runs in a subprocess with its own environment (SQLite, local blobs)
in_the_browser = pytest.mark.same_in_scale_run("the page's service runs in a subprocess with its own environment")

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "tests" / "webpage" / "drive.mjs"
ARTIFACTS = REPO / "tests" / "artifacts" / "webpage"
OHIF = "http://viewer.example:3000"
CHUNK = 16 * 1024  # the page's tus chunks in the browser run: the ZIP goes in several PATCHes


# --------------------------------------------------------------------------
# HTTP level
# --------------------------------------------------------------------------
def asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:href|src)="(/ui/[^"]+)"', html)


def test_page_is_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"
    assert directives["img-src"] == "'self' blob: data:" and directives["object-src"] == "'none'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-cache"
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.S)
    assert scripts and all(" src=" in attrs and not body.strip() for attrs, body in scripts)  # no inline script
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", page.text)  # no inline event handlers
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    again = client.get("/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304


def test_every_control_has_a_label(client):
    """WCAG 2.2 SC 1.3.1/4.1.2: each input and select is named by a <label for> or sits inside a <label>;
    the page declares its language; the images the page fills in start with alt text."""
    from html.parser import HTMLParser

    class Controls(HTMLParser):
        def __init__(self):
            super().__init__()
            self.controls, self.labelled, self.inside, self.imgs, self.lang = [], set(), 0, [], None

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "html":
                self.lang = a.get("lang")
            if tag == "label":
                self.inside += 1
                if "for" in a:
                    self.labelled.add(a["for"])
            if tag in ("input", "select", "textarea"):
                self.controls.append((a.get("id"), self.inside > 0 or "aria-label" in a))
            if tag == "img":
                self.imgs.append(a)

        def handle_endtag(self, tag):
            if tag == "label":
                self.inside -= 1

    parsed = Controls()
    parsed.feed(client.get("/").text)
    assert len(parsed.controls) >= 12 and parsed.lang == "en"
    unnamed = [id_ for id_, wrapped in parsed.controls if not wrapped and id_ not in parsed.labelled]
    assert unnamed == []
    assert all("alt" in img for img in parsed.imgs)


def test_assets_are_versioned_and_cached(client):
    urls = asset_urls(client.get("/").text)
    assert {urlsplit(u).path for u in urls} == {"/ui/app.js", "/ui/app.css", "/ui/favicon.svg"}
    for url in urls:
        answer = client.get(url)
        assert answer.status_code == 200 and answer.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert "content-security-policy" in answer.headers
        unversioned = client.get(urlsplit(url).path)  # an old or missing version: revalidated
        assert unversioned.headers["cache-control"] == "no-cache" and unversioned.content == answer.content
    assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    missing = client.get("/ui/secret.txt")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert client.get("/ui/..%2fpage.py").status_code == 404


def test_config_says_what_the_page_needs(data_dir, import_root):
    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0",
           "DICOMSVC_OHIF_URL": OHIF + "/", "DICOMSVC_PAGE_RESUMABLE_BYTES": "1000",
           "DICOMSVC_ANON_SECRET": "do-not-show-me"}  # fmt: skip
    with TestClient(create_app(Config.from_env(env))) as client:
        body = client.get("/ui/config").json()
    assert body == {"version": body["version"], "auth": "none", "ohif_url": OHIF, "resumable_bytes": 1000,
                    "chunk_bytes": 8 * 1024**2, "batch_bytes": 64 * 1024**2, "max_upload_bytes": 4 * 1024**3,
                    "qido_max_results": 1000}
    assert "do-not-show-me" not in json.dumps(body)


@pytest.mark.parametrize("bad", ["ftp://viewer", "http://user:pw@viewer", "http://viewer/?a=1", "viewer:3000",
                                 "http://viewer/#x", 'http://viewer/"><script>'])
def test_ohif_url_must_be_a_plain_http_url(bad, tmp_path):
    with pytest.raises(ValueError, match="DICOMSVC_OHIF_URL"):
        Config.from_env({"DICOMSVC_DATA_DIR": str(tmp_path), "DICOMSVC_OHIF_URL": bad})


def test_with_auth_on_the_page_is_public_and_the_data_is_not(data_dir, import_root):
    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0",
           "DICOMSVC_AUTH": "token"}  # fmt: skip
    with TestClient(create_app(Config.from_env(env))) as client:
        page = client.get("/")
        assert page.status_code == 200
        for url in asset_urls(page.text):
            assert client.get(url).status_code == 200
        assert client.get("/ui/config").json()["auth"] == "token"
        for path in ("/dicomweb/studies", "/dicom", "/jobs", "/stats", "/image?id=x", "/tags?id=x"):
            refused = client.get(path)
            assert refused.status_code == 401 and refused.json()["error"] == "unauthorized", path
        assert client.post("/dicom", content=b"x", headers={"content-type": "application/dicom"}).status_code == 401
        assert client.get("/ui/nothing").status_code == 404  # no rule needed to say it is not there


def test_the_script_sends_the_token_on_every_call():
    """Every request the script makes goes through authHeaders (fetch in api(), the XMLHttpRequest
    upload, tus PATCHes); no bare fetch but the public /ui/config."""
    script = (REPO / "dicomsvc" / "http" / "static" / "app.js").read_text()
    fetches = re.findall(r"fetch\(([^,)]+)", script)
    assert sorted(fetches) == sorted(["path", "location", "'/ui/config'"]), fetches
    assert "sessionStorage" in script and "localStorage" not in script
    assert "Authorization: `Bearer ${t}`" in script and "setRequestHeader(k, v)" in script


# --------------------------------------------------------------------------
# in the browser
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    axe = REPO / "tests" / "ohif" / "node_modules" / "axe-core" / "axe.min.js"  # drive.mjs's accessibility check
    return liveservice.browser_or_skip("the page test", [] if axe.is_file() else ["no axe-core in tests/ohif/node_modules"])


def phantom(size: int, z: int) -> np.ndarray:
    """A CT-like slice in HU: air, a soft-tissue body (40), two lungs (-800), a bone (700) growing with z."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    hu = np.full((size, size), -1000.0)
    hu[((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.32) ** 2 <= 1] = 40
    for cx in (0.33, 0.67):
        hu[((xx - cx) / 0.12) ** 2 + ((yy - 0.47) / 0.18) ** 2 <= 1] = -800
    hu[(xx - 0.5) ** 2 + (yy - 0.72) ** 2 <= (0.04 + 0.02 * z) ** 2] = 700
    return hu


def slices(patient_id: str) -> list:
    """Three CT slices, 128x128 (each slice's pixels differ: the bone grows with z)."""
    size, study, series = 128, generate_uid(), generate_uid()
    out = []
    for z in range(3):
        pixels = (phantom(size, z) + 1024).astype(np.int16)  # Rescale Intercept -1024 (make_ct)
        out.append(make_ct(pixels, StudyInstanceUID=study, SeriesInstanceUID=series, SeriesNumber=1,
                           InstanceNumber=z + 1, ImagePositionPatient=[0, 0, 5 * z],
                           ImageOrientationPatient=[1, 0, 0, 0, 1, 0], PatientID=patient_id,
                           PatientName="WEBPAGE^STORYLINE", StudyDescription="PAGE TEST CT"))  # fmt: skip
    return out


def multiframe(study: str, patient_id: str):
    """A second series in the study: one MR instance of two frames, Number of Frames (0028,0008) 2."""
    yy, xx = np.mgrid[0:64, 0:64]
    frames = [np.where((yy - 32) ** 2 + (xx - 32) ** 2 <= r**2, 900, 100).astype(np.uint16) for r in (8, 24)]
    ds = make_ct(frames[0], StudyInstanceUID=study, SeriesNumber=2, InstanceNumber=1, Modality="MR",
                 SOPClassUID=MRImageStorage, PatientID=patient_id, PatientName="WEBPAGE^STORYLINE",
                 StudyDescription="PAGE TEST CT", window=(500.0, 1000.0), intercept=0.0)  # fmt: skip
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack(frames).tobytes()
    return ds


def zipped(datasets) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for n, ds in enumerate(datasets):
            with DicomBytesIO() as b:
                ds.save_as(b, enforce_file_format=True)
                archive.writestr(f"ct/slice{n + 1}.dcm", b.getvalue())
    return buffer.getvalue()


@pytest.fixture(scope="module", params=["none", "token"])
def server(request, browser, tmp_path_factory):
    """dicomsvc in uvicorn on a free loopback port (DICOMSVC_OHIF_URL set, small resumable sizes),
    with DICOMSVC_AUTH=none, then =token (an uploader's token made with ``dicomsvc token create``)."""
    work = tmp_path_factory.mktemp("webpage")
    env = service_env(
        DICOMSVC_DATA_DIR=str(work / "data"),
        DICOMSVC_IMPORT_ROOT=str(work / "import"),
        DICOMSVC_WORKERS="1",
        DICOMSVC_LOG_LEVEL="warning",
        DICOMSVC_OHIF_URL=OHIF,
        DICOMSVC_PAGE_RESUMABLE_BYTES=str(2 * CHUNK),
        DICOMSVC_PAGE_CHUNK_BYTES=str(CHUNK),
        DICOMSVC_AUTH=request.param,
        DICOMSVC_QIDO_MAX_RESULTS="1",  # QIDO-RS answers one result a page: the page must ask for the next
        DICOMSVC_PAGE_BATCH_BYTES="4096",  # one small file a multipart request (the Cancel step holds the second)
    )
    token = None
    if request.param == "token":
        made = subprocess.run([sys.executable, "-m", "dicomsvc.cli.main", "token", "create", "--user", "page",
                               "--role", "uploader"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip().splitlines()[-1]
    with liveservice.running(free_port(), env, work / "dicomsvc.log") as base:
        yield base, work, token


@pytest.fixture(scope="module")
def drive(server, browser):
    base, work, token = server
    patient_id = f"PAGE-{uuid.uuid4().hex[:8].upper()}"
    datasets = slices(patient_id)
    files = work / "files"
    files.mkdir()
    archive = files / "ct-series.zip"
    cine = multiframe(datasets[0].StudyInstanceUID, patient_id)
    archive.write_bytes(zipped([*datasets, cine]))
    assert archive.stat().st_size > 2 * CHUNK  # resumable, in several chunks
    broken = files / "broken.dcm"
    clinical = files / "clinical.csv"
    clinical.write_text(f"PatientID,outcome\n{patient_id},stable\nNOT-STORED,unknown\n")
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f")  # a file meta element cut short
    # another study, stored before the page opens: the list (one study a page) has two pages
    other = make_ct(PatientID=f"{patient_id}-OTHER", PatientName="OTHER^PAGING")
    with reader(base, token) as client:
        stored = client.post("/dicom", content=encoded(other), headers={"Content-Type": "application/dicom"})
        assert stored.status_code == 201, stored.text
    # the Cancel steps: two files of one more study (a multipart request each), and a file sent by tus
    cancel = work / "cancel"
    cancel.mkdir()
    kept, dropped = (make_ct(PatientID=f"{patient_id}-CANCEL", PatientName="CANCEL^PAGE") for _ in range(2))
    (cancel / "kept.dcm").write_bytes(encoded(kept))
    (cancel / "dropped.dcm").write_bytes(encoded(dropped))
    (cancel / "big.dcm").write_bytes(bytes(3 * CHUNK + 1))  # > 2 chunks: resumable; never finished
    assert (cancel / "kept.dcm").stat().st_size > 4096 / 2  # two files do not fit one request
    shots = ARTIFACTS / ("token" if token else "open")
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    options = {"chromium": browser, "base": base, "files": [str(archive), str(broken)], "patientId": patient_id,
               "csv": str(clinical), "nameWildcard": "webpage*", "folder": str(files),
               "out": str(shots), "timeoutMs": 60_000, "token": token,
               "cancelFiles": [str(cancel / "kept.dcm"), str(cancel / "dropped.dcm")],
               "cancelBig": str(cancel / "big.dcm")}  # fmt: skip
    done = subprocess.run(["node", str(DRIVER), json.dumps(options)], capture_output=True, text=True,
                          timeout=300, cwd=DRIVER.parent)  # fmt: skip
    assert done.returncode == 0, f"drive.mjs failed ({done.returncode}): {done.stderr[-3000:]}"
    record = json.loads(done.stdout.strip().splitlines()[-1])
    wanted = os.environ.get("DICOMSVC_PAGE_SCREENSHOT")
    if wanted and not token and record["shots"].get("study"):
        shutil.copyfile(record["shots"]["study"], REPO / wanted)
    record["cine"] = cine.SOPInstanceUID
    record["other"] = other.PatientID
    record["kept"], record["dropped"] = kept.SOPInstanceUID, dropped.SOPInstanceUID
    return record, datasets, base, patient_id, token


def encoded(ds) -> bytes:
    with DicomBytesIO() as b:
        ds.save_as(b, enforce_file_format=True)
        return b.getvalue()


def reader(base: str, token: str | None) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"} if token else {})


def describe(record: dict) -> str:
    lines = [f"error: {record.get('error')}", f"steps: {[s['name'] for s in record['steps']]}"]
    lines += [f"  {r['method']} {r['url']} -> {r['status']} {r['failure'] or ''}" for r in record["requests"]
              if not (r["status"] and r["status"] < 400) and not r["url"].startswith("blob:")]
    lines += [f"  console {c}" for c in record["console"][:10]] + [f"  page error {e}" for e in record["pageErrors"][:5]]
    lines += [f"  csp {c}" for c in record["csp"][:5]] + [f"screenshots: {record['shots']}"]
    return "\n".join(lines)


@in_the_browser
def test_upload_reaches_done_and_lists_the_failure(drive):
    record, datasets, base, _, token = drive
    assert record["error"] is None, describe(record)
    upload = record["upload"]
    assert record["folderChosen"].startswith("3 file(s) chosen")  # the folder: the ZIP, the broken file, the CSV
    assert record["droppedChosen"] == "1 file(s) chosen, 200 B."  # drag and drop chooses files too
    assert record["chosen"].startswith("2 file(s) chosen")  # then the picker's two replaced it
    assert upload["status"].startswith("Done: 4 stored"), upload
    assert upload["transfer"] == 1 and upload["processing"] == 1, upload
    assert [f for f in upload["failures"] if f.startswith("broken.dcm: ")], upload["failures"]
    # the clinical CSV was joined after the upload (POST /datasets, key PatientID): one row of two
    assert "Clinical CSV: 1 row(s) joined to studies, 1 unmatched" in upload["status"], upload["status"]
    methods = [(r["method"], urlsplit(r["url"]).path) for r in record["requests"]]
    # the ZIP went resumably (tus creation, several PATCHes), the broken file by multipart; both as jobs
    assert ("POST", "/uploads/") in methods and sum(m == "PATCH" for m, _ in methods) >= 3, methods
    # one PATCH was broken off on the way (drive.mjs): the page asked HEAD for the offset and went on
    assert record["broken"] and ("HEAD", urlsplit(record["broken"]).path) in methods, (record["broken"], methods)
    assert ("POST", "/dicom") in methods and any(p.startswith("/jobs/") for _, p in methods)
    # progress polled without the per-file results; each job's results read once, after its polls
    asked = [(urlsplit(r["url"]).path, parse_qs(urlsplit(r["url"]).query)) for r in record["requests"]
             if r["method"] == "GET" and urlsplit(r["url"]).path.startswith("/jobs/")]  # fmt: skip
    polled = [path for path, query in asked if query == {"results": ["false"]}]
    full = [path for path, query in asked if not query]
    assert polled and sorted(full) == sorted(set(polled)) and len(asked) == len(polled) + len(full), asked
    assert all(asked.index((path, {})) > max(i for i, a in enumerate(asked) if a[0] == path and a[1]) for path in full)
    post = next(r for r in record["requests"] if r["method"] == "POST" and urlsplit(r["url"]).path == "/dicom")
    assert "anonymize" not in parse_qs(urlsplit(post["url"]).query)  # unticked: stored as sent
    with reader(base, token) as client:
        found = client.get("/dicom", params={"SeriesInstanceUID": datasets[0].SeriesInstanceUID}).json()["items"]
    assert sorted(i["SOPInstanceUID"] for i in found) == sorted(ds.SOPInstanceUID for ds in datasets)
    assert {i["PatientName"] for i in found} == {"WEBPAGE^STORYLINE"}  # not anonymized


@in_the_browser
def test_study_is_found_and_stepped_through(drive):
    record, datasets, base, patient_id, token = drive
    assert record["error"] is None, describe(record)
    assert record["listRow"][1] == patient_id and "CT" in record["listRow"][4], record["listRow"]
    assert record["thumbnails"] == 2  # two series, a thumbnail each
    first, second, third = record["slices"]
    assert len({s["id"] for s in record["slices"]}) == 3 and len({s["src"] for s in record["slices"]}) == 3
    assert len({s["hash"] for s in record["slices"]}) == 3 and first["mean"] < second["mean"] < third["mean"]
    assert first["focused"] == "stack"  # the study opened with the stack focused: arrow keys step at once
    with reader(base, token) as client:
        sops = [client.get(f"/dicom/{s['id']}").json()["SOPInstanceUID"] for s in record["slices"]]
    assert sops == [ds.SOPInstanceUID for ds in datasets]  # in Instance Number order
    for shown, sop in zip(record["slices"], sops):  # the tags table is the current instance's
        rows = {row[0]: row for row in shown["tags"]}
        assert rows["(0008,0018)"][1] == "SOPInstanceUID" and rows["(0008,0018)"][3] == sop
    assert record["ohifLink"] == f"{OHIF}/viewer?StudyInstanceUIDs={datasets[0].StudyInstanceUID}"


@in_the_browser
def test_search_by_name_dates_and_modality(drive):
    record, datasets, base, patient_id, token = drive
    assert record["error"] is None, describe(record)
    found, none = record["searches"]
    query = parse_qs(found["query"])
    assert query["PatientName"] == ["webpage*"] and query["StudyDate"] == ["20240101-20240131"]  # PS3.4 C.2.2.2.5
    assert query["ModalitiesInStudy"] == ["CT"] and found["ids"] == [patient_id]
    assert parse_qs(none["query"])["ModalitiesInStudy"] == ["US"] and none["ids"] == []


@in_the_browser
def test_window_preset_asks_for_that_window(drive):
    record, datasets, base, _, token = drive
    assert record["error"] is None, describe(record)
    windowed, third = record["windowed"], record["slices"][2]
    assert windowed["id"] == third["id"] and windowed["window"] == "-600,1500"
    assert windowed["hash"] != third["hash"]
    asked = [parse_qs(urlsplit(r["url"]).query) for r in record["requests"] if urlsplit(r["url"]).path == "/image"]
    assert {"id": [third["id"]], "window": ["-600,1500"]} in asked, asked


@in_the_browser
def test_token_is_asked_for_only_with_auth_on(drive):
    record, *_, token = drive
    assert record["error"] is None, describe(record)
    assert bool([s for s in record["steps"] if s["name"] == "token set"]) == bool(token)


@in_the_browser
def test_a_multiframe_instance_is_a_stack_of_its_frames(drive):
    record, datasets, base, _, token = drive
    assert record["error"] is None, describe(record)
    first, second = record["frames"]
    assert first["id"] == second["id"] and (first["frame"], second["frame"]) == ("1", "2")
    assert first["hash"] != second["hash"] and first["mean"] < second["mean"]  # the larger disc
    assert "frame 2 of 2" in second["caption"]
    with reader(base, token) as client:
        assert client.get(f"/dicom/{first['id']}").json()["SOPInstanceUID"] == record["cine"]
    asked = [parse_qs(urlsplit(r["url"]).query) for r in record["requests"] if urlsplit(r["url"]).path == "/image"]
    assert {"id": [first["id"]], "frame": ["2"]} in asked, asked


@in_the_browser
def test_keyboard_reaches_upload_and_study(drive):
    record, *_ = drive
    assert record["error"] is None, describe(record)
    assert record["tabsToUpload"] and record["tabsToStudy"] and record["tabsToStack"]
    assert record["focusOutlines"] == {"picker": "solid", "upload": "solid", "stack": "solid"}  # focus is visible
    assert record["overlaps"] == []  # the study view's parts side by side at 1280x720, none over another
    assert [s for s in record["steps"] if s["name"] == "upload started with the keyboard"]


@in_the_browser
def test_no_errors_no_violations_nothing_from_elsewhere(drive):
    record, *_ = drive
    assert record["error"] is None, describe(record)
    # the one PATCH broken off on purpose is the only network error the browser reports
    console = [c for c in record["console"] if "ERR_CONNECTION_RESET" not in c]
    assert not console and not record["pageErrors"], describe(record)
    assert not record["csp"], record["csp"]
    assert not record["blocked"], record["blocked"]
    held = {(h["method"], h["url"]) for h in record["held"]}  # the requests the Cancel steps gave up on
    bad = [r for r in record["requests"] if (r["failure"] or (r["status"] or 0) >= 400)
           and not (r["method"] == "PATCH" and r["url"] == record["broken"] and r["failure"])
           and not ((r["method"], r["url"]) in held and r["failure"])]  # fmt: skip
    assert not bad, describe(record)  # with auth on: the token went with every request (none was refused)
    assert not record["overflow"], record["overflow"]  # no horizontal scroll at 1280x720, 1024x768, 200% zoom
    assert {"home", "uploaded", "list", "study"} <= set(record["shots"])


@in_the_browser
def test_the_list_pages_and_says_the_server_caps_it(drive):
    record, datasets, base, patient_id, token = drive
    assert record["error"] is None, describe(record)
    first, second, third = record["paging"]
    # DICOMSVC_QIDO_MAX_RESULTS=1: one study a page, the list says the server caps it
    assert first["rows"] == 1 and "at most 1 study a request (DICOMSVC_QIDO_MAX_RESULTS)" in first["count"], first
    assert "there may be more" in first["count"]
    assert second["rows"] == 2 and sorted(second["ids"]) == sorted([patient_id, record["other"]]) and second["more"]
    assert third["rows"] == 2 and not third["more"] and "no more" in third["count"], third  # an empty page: the end
    offsets = [parse_qs(urlsplit(r["url"]).query).get("offset") for r in record["requests"]
               if urlsplit(r["url"]).path == "/dicomweb/studies" and r["ms"] >= step_ms(record, "upload done")]
    assert ["1"] in offsets and ["2"] in offsets, offsets  # QIDO-RS offset: the rows already shown


def step_ms(record: dict, name: str) -> int:
    return next(s["ms"] for s in record["steps"] if s["name"] == name)


@in_the_browser
def test_cancel_stops_the_transfer(drive):
    record, datasets, base, patient_id, token = drive
    assert record["error"] is None, describe(record)
    post, tus = record["cancelPost"], record["cancelTus"]
    held_post, held_patch = record["held"]
    assert held_post["method"] == "POST" and held_patch["method"] == "PATCH"
    # multipart: the first file's request went (a job the server keeps running), the second's was aborted
    assert post["status"].startswith("Cancelled.") and "1 job(s) the server already had keep running" in post["status"]
    assert post["cancelDisabled"] and not post["startDisabled"], post
    # tus: no PATCH after the held one, the upload terminated (DELETE 204): the server has it no more
    assert tus["status"].startswith("Cancelled. The partial resumable upload was removed"), tus
    location = urlsplit(held_patch["url"]).path
    after = [r for r in record["requests"] if urlsplit(r["url"]).path == location and r["ms"] > step_ms(record, "more studies")]
    assert [(r["method"], r["status"]) for r in after if r["method"] != "PATCH"] == [("DELETE", 204)], after
    patches, delete = [r for r in after if r["method"] == "PATCH"], after[-1]
    assert delete["method"] == "DELETE" and patches[-1]["failure"], after  # the held PATCH, aborted, was the last
    assert [r["status"] for r in patches[:-1]] == [204] * (len(patches) - 1), after
    with reader(base, token) as client:
        assert client.head(location, headers={"Tus-Resumable": "1.0.0"}).status_code in (404, 410)
        stored = {}
        for _ in range(100):  # the job the page left keeps running to its end
            stored = {i["SOPInstanceUID"] for i in client.get("/dicom", params={"PatientID": f"{patient_id}-CANCEL"}).json()["items"]}
            if stored:
                break
            time.sleep(0.2)
    assert stored == {record["kept"]}  # the held (cancelled) file never reached the server


@in_the_browser
def test_a_dropped_folder_is_walked(drive):
    record, *_ = drive
    assert record["error"] is None, describe(record)
    # a fake entry tree (drive.mjs): every file below the folder, in later readEntries batches and subfolders too
    assert record["droppedFolder"]["chosen"] == "3 file(s) chosen, 60 B.", record["droppedFolder"]
    assert sorted(record["droppedFolder"]["names"].split("\n")) == ["scan/a.dcm", "scan/b.dcm", "scan/sub/c.dcm"]


@in_the_browser
def test_axe_finds_nothing_serious(drive):
    record, *_ = drive
    assert record["error"] is None, describe(record)
    assert set(record["axe"]) == {"uploaded", "list", "study"}
    assert record["axe"] == {"uploaded": [], "list": [], "study": []}, record["axe"]


@in_the_browser
def test_other_window_sizes_keep_the_layout(drive):
    record, *_ = drive
    assert record["error"] is None, describe(record)
    # 1024x768 and 200% zoom of 1280x720 (640x360 CSS pixels): no horizontal scroll, no overlap
    assert record["overlapsAt"] == {"1024x768": [], "640x360": []}, record["overlapsAt"]
    assert not record["overflow"], record["overflow"]
