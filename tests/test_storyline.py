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
