"""Data access for viewers and pipelines, through HTTP: renderings, arrays, DICOM JSON."""

import io
import time

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut

from dicomfiles import blob_files, sample_file

DICOM = {"content-type": "application/dicom"}


def post(client, name: str) -> str:
    response = client.post("/dicom", content=sample_file(name).read_bytes(), headers=DICOM)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_window_size_and_jpeg_renderings_are_cached(client, data_dir, monkeypatch):
    instance_id = post(client, "CT_small.dcm")
    default = client.get("/image", params={"id": instance_id})
    windowed = client.get("/image", params={"id": instance_id, "window": "40,400"})
    assert windowed.status_code == 200 and windowed.headers["content-type"] == "image/png"
    assert windowed.content != default.content and windowed.headers["etag"] != default.headers["etag"]
    assert windowed.headers["vary"] == "Accept"
    cached = list(data_dir.glob(f"blobs/*/{instance_id}.renderings/*"))
    assert len(cached) == 1
    same = client.get("/image", params={"id": instance_id, "windowCenter": "40", "windowWidth": "400"})
    assert same.content == windowed.content and same.headers["etag"] == windowed.headers["etag"]
    assert len(list(data_dir.glob(f"blobs/*/{instance_id}.renderings/*"))) == 1  # served from the cache
    not_modified = client.get(
        "/image", params={"id": instance_id, "window": "40,400"}, headers={"If-None-Match": windowed.headers["etag"]}
    )
    assert not_modified.status_code == 304
    small = client.get("/image", params={"id": instance_id, "width": "64"}, headers={"Accept": "image/jpeg"})
    assert small.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(small.content)).size == (64, 64)
    jpeg = client.get("/image", params={"id": instance_id, "format": "jpeg", "quality": "50"})
    assert Image.open(io.BytesIO(jpeg.content)).format == "JPEG"
    assert client.delete(f"/dicom/{instance_id}").status_code == 204
    assert not list(data_dir.glob(f"blobs/*/{instance_id}*"))  # renderings went with it


def test_frames_and_bad_parameters(client):
    instance_id = post(client, "rtdose.dcm")  # 15 frames
    frames = [client.get("/image", params={"id": instance_id, "frame": str(n)}) for n in (1, 8)]
    assert all(r.status_code == 200 for r in frames) and frames[0].content != frames[1].content
    for params in ({"frame": "16"}, {"frame": "0"}, {"frame": "x"}, {"window": "40"}, {"width": "-3"},
                   {"format": "gif"}, {"quality": "101", "format": "jpeg"}):  # fmt: skip
        response = client.get("/image", params={"id": instance_id} | params)
        assert response.status_code == 400 and response.json()["error"] == "bad_request", params
    assert "15 frames" in client.get("/image", params={"id": instance_id, "frame": "16"}).json()["detail"]


def test_pixels_as_npy(client, data_dir):
    for name in ("CT_small.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_rle_2frame.dcm", "rtdose.dcm"):
        instance_id = post(client, name)
        response = client.get(f"/dicom/{instance_id}/pixels")
        assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
        assert response.headers["content-disposition"] == f'attachment; filename="{instance_id}.npy"'
        expected = pydicom.dcmread(sample_file(name)).pixel_array
        array = np.load(io.BytesIO(response.content))
        assert array.dtype == expected.dtype and np.array_equal(array, expected), name
    ds = pydicom.dcmread(sample_file("rtdose.dcm"))
    one = np.load(io.BytesIO(client.get(f"/dicom/{instance_id}/pixels", params={"frame": "3"}).content))
    assert np.array_equal(one, ds.pixel_array[2])
    ct = post(client, "MR_small.dcm")
    rescaled = np.load(io.BytesIO(client.get(f"/dicom/{ct}/pixels", params={"rescale": "true"}).content))
    mr = pydicom.dcmread(sample_file("MR_small.dcm"))
    assert rescaled.dtype == np.float32 and np.allclose(rescaled, apply_modality_lut(mr.pixel_array, mr))
    assert client.get(f"/dicom/{instance_id}/pixels", params={"frame": "99"}).status_code == 400
    assert client.get(f"/dicom/{post(client, 'rtplan.dcm')}/pixels").status_code == 404
    time.sleep(0.1)  # the temporary .npy goes once it is sent
    assert not [p for p in blob_files(data_dir) if ".tmp" in p.parts]


def test_dicom_json_round_trips_with_bulk_data_by_reference(client):
    instance_id = post(client, "CT_small.dcm")
    response = client.get("/tags", params={"id": instance_id, "format": "dicomjson"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom+json"
    model = response.json()
    pixel = model["7FE00010"]
    assert "InlineBinary" not in pixel and pixel["BulkDataURI"].endswith(f"/dicom/{instance_id}/bulk/7FE00010")

    def fetch(uri: str) -> bytes:
        return client.get(uri).content

    rebuilt = pydicom.Dataset.from_json(model, bulk_data_uri_handler=fetch)
    original = pydicom.dcmread(sample_file("CT_small.dcm"))
    assert rebuilt.PixelData == original.PixelData
    for keyword in ("PatientName", "StudyInstanceUID", "ImagePositionPatient", "RescaleIntercept", "Rows"):
        assert rebuilt[keyword].value == original[keyword].value, keyword
    assert client.get(f"/dicom/{instance_id}/bulk/00100010").status_code == 404  # not binary
    assert client.get("/tags", params={"id": instance_id, "format": "xml"}).status_code == 400
