"""A user's path, end to end: copy a file in, post it, look at it, read its tags, post it again."""

import io
import shutil

import numpy as np
import pydicom
from PIL import Image

from dicomfiles import sample_file
from dicomsvc.dicom.parse import read
from dicomsvc.imaging.render import decode_frame, to_display


def test_post_image_tags_repost(client, import_root):
    source = sample_file("MR_small.dcm")
    shutil.copyfile(source, import_root / "mr.dcm")

    created = client.post("/dicom", json={"path": "mr.dcm"})
    assert created.status_code == 201
    instance_id = created.json()["id"]

    image = client.get("/image", params={"id": instance_id})
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(image.content)))
    parsed = read(source)
    assert np.array_equal(shown, to_display(decode_frame(source, parsed, 0), parsed.ds))
    cached = client.get("/image", params={"id": instance_id}, headers={"If-None-Match": image.headers["etag"]})
    assert cached.status_code == 304

    tags = client.get("/tags", params={"id": instance_id}).json()
    assert tags["uuid"] == instance_id
    by_name = {row["Name"]: row for row in tags["tags"] if "Parent" not in row}
    ds = pydicom.dcmread(source)
    assert by_name["SOPInstanceUID"]["Value"] == ds.SOPInstanceUID
    assert by_name["PatientName"]["Value"] == str(ds.PatientName)
    assert by_name["WindowCenter"]["VR"] == "DS"
    assert by_name["PixelData"]["Value"] is None and by_name["PixelData"]["Bytes"] == len(ds.PixelData)

    again = client.post("/dicom", json={"path": "mr.dcm"})
    assert again.status_code == 200 and again.json()["id"] == instance_id


def test_data_survives_a_restart(config, import_root):
    from starlette.testclient import TestClient

    from app import create_app

    shutil.copyfile(sample_file("CT_small.dcm"), import_root / "ct.dcm")
    with TestClient(create_app(config)) as first:
        instance_id = first.post("/dicom", json={"path": "ct.dcm"}).json()["id"]
        png = first.get("/image", params={"id": instance_id}).content
    with TestClient(create_app(config)) as second:
        assert second.get("/image", params={"id": instance_id}).content == png
        assert second.post("/dicom", json={"path": "ct.dcm"}).status_code == 200
        assert len(second.get("/tags", params={"id": instance_id}).json()["tags"]) > 100


def test_series_csv_export_and_photo(client):
    """Issue 15's research workflow through HTTP: a small series uploaded in one multipart request,
    a clinical CSV joined to it by Patient ID (the column guessed from the header), an export of
    npy + manifest whose every row carries the clinical column and the slice geometry, then a
    photo uploaded into the same study and found there by QIDO-RS."""
    import csv
    import time
    import zipfile

    from studydata import make_study, to_bytes

    series = make_study((("CT", 3),), seed=7, PatientID="STORY-7")
    for z, ds in enumerate(series):
        ds.ImagePositionPatient, ds.PixelSpacing, ds.SliceThickness = ["0", "0", str(2.5 * z)], ["0.5", "0.5"], "2.5"
    study = str(series[0].StudyInstanceUID)
    files = [("file", (f"{i}.dcm", to_bytes(ds), "application/dicom")) for i, ds in enumerate(series)]
    uploaded = client.post("/dicom", files=files)
    assert uploaded.status_code == 200 and uploaded.json()["created"] == 3, uploaded.text

    joined = client.post("/datasets", files={"csv": ("clinical.csv", b"patient_id,outcome\nSTORY-7,relapse\nNOBODY,none\n", "text/csv")},
                         data={"key": "PatientID"})  # fmt: skip
    assert joined.status_code == 201, joined.text
    summary = joined.json()
    assert (summary["matched"], summary["unmatched"], summary["ambiguous"]) == (1, [3], [])
    assert client.get(f"/datasets/{summary['id']}").json()["studies"] == [study]

    started = client.post(f"/datasets/{summary['id']}/export", json={"include": ["npy"]})
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 60  # a liveness bound
    while (job := client.get(started.json()["status_url"]).json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    result = client.get(f"/jobs/{started.json()['job']}/result")
    assert result.status_code == 200, result.text
    archive = zipfile.ZipFile(io.BytesIO(result.content))
    manifest = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    by_sop = {row["SOPInstanceUID"]: row for row in manifest}
    assert sorted(by_sop) == sorted(str(ds.SOPInstanceUID) for ds in series)
    for ds in series:
        row = by_sop[str(ds.SOPInstanceUID)]
        assert (row["StudyInstanceUID"], row["outcome"]) == (study, "relapse")
        assert row["ImagePositionPatient"] == "\\".join(str(v) for v in ds.ImagePositionPatient)
        assert (row["PixelSpacing"], row["SliceThickness"]) == ("\\".join(str(v) for v in ds.PixelSpacing), str(ds.SliceThickness))
        assert np.array_equal(np.load(io.BytesIO(archive.read(row["path_npy"]))), ds.pixel_array)

    photo = io.BytesIO()
    Image.fromarray(np.full((16, 24, 3), 128, np.uint8)).save(photo, "JPEG")
    attached = client.post(f"/dicom?StudyInstanceUID={study}&study_type=wound", content=photo.getvalue(),
                           headers={"content-type": "image/jpeg"})  # fmt: skip
    assert attached.status_code == 201, attached.text
    found = client.get("/dicomweb/studies", params={"StudyInstanceUID": study}).json()
    assert found[0]["00201208"]["Value"] == [4] and set(found[0]["00080061"]["Value"]) == {"CT", "OT"}
    assert found[0]["00100020"]["Value"] == ["STORY-7"]
