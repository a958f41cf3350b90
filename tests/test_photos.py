"""Photos and scans to DICOM: JPEG and PNG bodies and multipart parts become Secondary Capture
instances (PS3.3 A.8.1), stored like any upload (issue 15)."""

import io
import os
import shutil
import struct
import subprocess
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from dicomfiles import make_ct

SC = "1.2.840.10008.5.1.4.1.1.7"
DCIODVFY = shutil.which("dciodvfy")
# without dciodvfy the validity tests skip, except in CI (.ci/run installs dicom3tools): there they fail
IN_CI = os.environ.get("CI") == "true"
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None and not IN_CI, reason="dciodvfy (Debian package dicom3tools) is not installed")
PHI = "Marker^Secret"  # a patient name that must never appear in an error or a log


def noise(shape, dtype=np.uint8, high=256, seed=3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, size=shape, dtype=dtype)


def jpeg(shape=(40, 60, 3), **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(noise(shape)).save(buf, "JPEG", **save)
    return buf.getvalue()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    """A PNG chunk with its CRC (ISO/IEC 15948 §5.3)."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def post_image(client, data: bytes, query: str = "PatientID=P-1&PatientName=Doe^Jane", kind: str = "image/jpeg"):
    return client.post(f"/dicom?{query}", content=data, headers={"content-type": kind})


def stored_file(client, instance: str):
    response = client.get(f"/dicom/{instance}/file")
    assert response.status_code == 200
    return dcmread(io.BytesIO(response.content)), response.content


def pixels(client, instance: str) -> np.ndarray:
    response = client.get(f"/dicom/{instance}/pixels")
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content))


@pytest.mark.parametrize(
    "shape, save, photometric",
    [
        ((40, 60, 3), {"subsampling": 2}, "YBR_FULL_422"),  # 4:2:0, Pillow's default
        ((40, 60, 3), {"subsampling": 1}, "YBR_FULL_422"),  # 4:2:2
        ((40, 60, 3), {"subsampling": 0}, "YBR_FULL"),  # 4:4:4: no chrominance subsampling
        ((40, 60, 3), {"keep_rgb": True}, "RGB"),  # Adobe APP14, transform 0: no colour transform
        ((33, 51), {}, "MONOCHROME2"),
    ],
    ids=["ycbcr-420", "ycbcr-422", "ycbcr-444", "rgb", "grey"],
)
def test_jpeg_is_kept_bit_exactly(client, shape, save, photometric):
    original = jpeg(shape, **save)
    response = post_image(client, original)
    assert response.status_code == 201, response.text
    ds, _ = stored_file(client, response.json()["id"])
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit and ds.SOPClassUID == SC
    (fragment,) = generate_frames(ds.PixelData, number_of_frames=1)
    # PS3.5 A.4: the fragment is the JPEG itself, with one NUL byte when its length is odd
    assert fragment[: len(original)] == original and fragment[len(original) :] in (b"", b"\0")
    assert ds.PhotometricInterpretation == photometric
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (shape[0], shape[1], 1 if len(shape) == 2 else 3)
    assert (ds.BurnedInAnnotation, ds.ConversionType, ds.Modality, ds.LossyImageCompression) == ("YES", "WSD", "OT", "01")
    assert (str(ds.PatientName), ds.PatientID) == ("Doe^Jane", "P-1")
    assert ds.StudyInstanceUID and ds.SeriesInstanceUID and ds.SOPInstanceUID != ds.StudyInstanceUID
    assert len(ds.ContentDate) == 8 and ds.InstanceCreationDate == ds.ContentDate
    assert client.get(f"/image?id={response.json()['id']}").status_code == 200  # rendered like any instance


def test_16_bit_grey_png_keeps_its_values(client):
    values = noise((37, 29), np.uint16, 65536)
    values[0, 0], values[0, 1] = 0, 65535
    response = post_image(client, png(Image.fromarray(values)), kind="image/png")
    assert response.status_code == 201, response.text
    ds, _ = stored_file(client, response.json()["id"])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == ("MONOCHROME2", 16, 16, 0)
    assert np.array_equal(pixels(client, response.json()["id"]), values)


def test_8_bit_grey_png_keeps_its_values(client):
    values = noise((23, 17))
    response = post_image(client, png(Image.fromarray(values)), kind="image/png")
    assert response.status_code == 201, response.text
    ds, _ = stored_file(client, response.json()["id"])
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored) == ("MONOCHROME2", 1, 8, 8)
    assert np.array_equal(pixels(client, response.json()["id"]), values)


def test_rgb_png(client):
    values = noise((21, 34, 3))
    response = post_image(client, png(Image.fromarray(values)), kind="image/png")
    assert response.status_code == 201, response.text
    ds, _ = stored_file(client, response.json()["id"])
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated, ds.PlanarConfiguration) == ("RGB", 3, 8, 0)
    assert np.array_equal(pixels(client, response.json()["id"]), values)


def test_palette_png_becomes_rgb_and_alpha_is_dropped(client):
    palette = Image.fromarray(noise((16, 24, 3))).quantize(colors=12)
    assert palette.mode == "P"
    response = post_image(client, png(palette), kind="image/png")
    assert response.status_code == 201, response.text
    ds, _ = stored_file(client, response.json()["id"])
    assert ds.PhotometricInterpretation == "RGB"
    assert np.array_equal(pixels(client, response.json()["id"]), np.asarray(palette.convert("RGB")))

    rgba = noise((9, 11, 4))
    response = post_image(client, png(Image.fromarray(rgba, "RGBA")), kind="image/png")
    assert response.status_code == 201, response.text
    assert np.array_equal(pixels(client, response.json()["id"]), rgba[..., :3])


def test_photo_attached_to_an_existing_study_shows_in_qido(client):
    ct = io.BytesIO()
    make_ct().save_as(ct, enforce_file_format=True)
    first = client.post("/dicom", content=ct.getvalue(), headers={"content-type": "application/dicom"})
    assert first.status_code == 201
    study = dcmread(io.BytesIO(ct.getvalue())).StudyInstanceUID
    other = post_image(client, jpeg(), f"PatientID=SOMEONE-ELSE&StudyInstanceUID={study}")
    assert other.status_code == 409 and other.json()["error"] == "study_mismatch"
    response = post_image(client, jpeg(), f"StudyInstanceUID={study}&SeriesDescription=wound")
    assert response.status_code == 201, response.text
    photo, _ = stored_file(client, response.json()["id"])
    # the study's patient and study attributes, not blanks (the study shows its newest instance's)
    assert (photo.PatientID, str(photo.PatientName), photo.StudyDate) == ("TEST-001", "Test^Patient", "20240102")
    found = client.get(f"/dicomweb/studies?StudyInstanceUID={study}").json()
    assert len(found) == 1
    assert found[0]["00100020"]["Value"] == ["TEST-001"]
    assert found[0]["00201208"]["Value"] == [2]  # Number of Study Related Instances
    assert set(found[0]["00080061"]["Value"]) == {"CT", "OT"}  # Modalities in Study
    series = client.get(f"/dicomweb/studies/{study}/series").json()
    assert {"wound"} <= {s.get("0008103E", {}).get("Value", [None])[0] for s in series}


def test_multipart_dicom_and_images_side_by_side(client):
    ct = io.BytesIO()
    make_ct().save_as(ct, enforce_file_format=True)
    files = [
        ("file", ("ct.dcm", ct.getvalue(), "application/dicom")),
        ("file", ("photo.jpg", jpeg(), "image/jpeg")),
        ("file", ("scan.png", png(Image.fromarray(noise((8, 8)))), "application/octet-stream")),  # sniffed
    ]
    fields = {"PatientID": "P-9", "PatientName": "Roe^Ann", "study_type": "dermatology", "Modality": "XC"}
    response = client.post("/dicom", files=files, data=fields)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] == 3, body
    by_file = {r["file"]: r["id"] for r in body["results"]}
    photo, _ = stored_file(client, by_file["photo.jpg"])
    scan, _ = stored_file(client, by_file["scan.png"])
    original, _ = stored_file(client, by_file["ct.dcm"])
    assert original.PatientID == "TEST-001"  # DICOM files keep their own attributes
    assert (photo.PatientID, photo.Modality, photo.StudyDescription) == ("P-9", "XC", "dermatology")
    # the images of one request: one series of one new study, numbered in request order
    assert (photo.StudyInstanceUID, photo.SeriesInstanceUID) == (scan.StudyInstanceUID, scan.SeriesInstanceUID)
    assert (photo.InstanceNumber, scan.InstanceNumber) == (1, 2)
    assert scan.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_image_without_a_content_type_is_sniffed(client):
    response = client.post("/dicom?PatientID=P-2", content=jpeg())  # what curl --data-binary sends
    assert response.status_code == 201, response.text


def test_progressive_jpeg_is_stored_decoded(client):
    original = jpeg(progressive=True)
    response = post_image(client, original)
    assert response.status_code == 201, response.text
    ds, _ = stored_file(client, response.json()["id"])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and ds.PhotometricInterpretation == "RGB"
    assert ds.LossyImageCompression == "01"
    expected = np.asarray(Image.open(io.BytesIO(original)).convert("RGB"))
    assert np.array_equal(pixels(client, response.json()["id"]), expected)


def test_async_image_is_a_job(client):
    response = post_image(client, jpeg(), "PatientID=P-3&async=true")
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 30
    while (job := client.get(response.json()["status_url"]).json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["status"] == "done" and job["results"][0]["status"] == "created", job


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height``, with hardly any data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def huge_jpeg(size: int) -> bytes:
    """A baseline JPEG whose SOF0 declares ``size`` x ``size`` pixels, its scan data a few bytes."""
    small = jpeg((8, 8, 3))
    at = small.index(b"\xff\xc0")
    return small[: at + 5] + struct.pack(">HH", size, size) + small[at + 9 :]


def damaged_png() -> bytes:
    data = bytearray(png(Image.fromarray(noise((16, 16, 3)))))
    data[data.index(b"IDAT") + 10] ^= 0xFF  # a byte of the compressed data: the chunk's CRC fails
    return bytes(data)


@pytest.mark.parametrize(
    "data, kind, status, code",
    [
        (jpeg((64, 64, 3))[:1500], "image/jpeg", 422, "invalid_image"),  # truncated in its scan data
        (jpeg((64, 64, 3))[:-2], "image/jpeg", 422, "invalid_image"),  # no EOI
        (jpeg((64, 64, 3))[:200], "image/jpeg", 422, "invalid_image"),  # cut inside its headers
        (damaged_png(), "image/png", 422, "invalid_image"),
        (png(Image.fromarray(noise((16, 16)))) [:-20], "image/png", 422, "invalid_image"),  # no IEND
        (b"just some text, not an image at all", "image/jpeg", 415, "unsupported_media_type"),
        (b"just some text, not an image at all", "image/png", 415, "unsupported_media_type"),
        (huge_png(100_000, 100_000), "image/png", 413, "too_large"),
        (huge_png(30_000, 30_000), "image/png", 413, "too_large"),  # 900 MB decoded: DICOMSVC_MAX_FRAME_BYTES
        (huge_jpeg(60_000), "image/jpeg", 413, "too_large"),
    ],
    ids=["jpeg-truncated", "jpeg-no-eoi", "jpeg-headers-cut", "png-crc", "png-truncated", "text-as-jpeg", "text-as-png",
         "png-100000", "png-30000", "jpeg-60000"],  # fmt: skip
)
def test_bad_images_are_json_4xx(client, data_dir, data, kind, status, code, caplog):
    response = post_image(client, data, f"PatientName={PHI}", kind=kind)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert PHI not in response.text and PHI not in caplog.text
    assert not [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]  # nothing left behind


def test_a_bad_image_in_a_form_fails_alone(client):
    files = [("file", ("good.jpg", jpeg(), "image/jpeg")), ("file", ("bad.png", damaged_png(), "image/png"))]
    body = client.post("/dicom", files=files, data={"PatientID": "P-4"}).json()
    assert [(r["file"], r["status"]) for r in body["results"]] == [("good.jpg", "created"), ("bad.png", "failed")]
    assert body["results"][1]["error"] == "invalid_image"


@pytest.mark.parametrize(
    "query, field",
    [
        ("PatientName=" + "A" * 65, "PatientName"),
        ("PatientName=A^B^C^D^E^F", "PatientName"),
        ("PatientName=A%5CB", "PatientName"),  # a backslash: two values
        ("PatientID=" + "7" * 65, "PatientID"),
        ("PatientID=a%01b", "PatientID"),  # a control character
        ("PatientBirthDate=19991332", "PatientBirthDate"),
        ("PatientBirthDate=1999-01-02", "PatientBirthDate"),
        ("PatientSex=X", "PatientSex"),
        ("StudyInstanceUID=1.2.03", "StudyInstanceUID"),
        ("StudyInstanceUID=1.2.abc", "StudyInstanceUID"),
        ("StudyInstanceUID=1." + "2" * 70, "StudyInstanceUID"),
        ("Modality=ot", "Modality"),
        ("AccessionNumber=" + "9" * 17, "AccessionNumber"),
        ("StudyDescription=one&study_type=another", "study_type"),
        ("burned_in=maybe", "burned_in"),
    ],
)
def test_bad_fields_are_400_naming_the_field(client, data_dir, query, field):
    response = post_image(client, jpeg(), query)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith(field) or f"{field} " in detail
    value = query.split("=", 1)[1].split("&")[0]
    assert len(value) < 4 or value not in detail  # the value itself is never echoed
    assert not [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]  # refused before anything is stored


def test_a_field_given_twice_with_different_values_is_400(client, data_dir):
    """One image, one patient: a repeated query parameter or form field with two values is refused
    naming the field, whichever it is (one of them was taken silently: the form's last, the query's last)."""
    for response in (
        post_image(client, jpeg(), "PatientID=P-1&PatientID=P-2"),
        client.post("/dicom", files=[("file", ("a.jpg", jpeg(), "image/jpeg"))], data={"PatientID": ["P-1", "P-2"]}),
        client.post("/dicom?PatientID=P-1", files=[("file", ("a.jpg", jpeg(), "image/jpeg"))], data={"PatientID": "P-2"}),
    ):
        assert response.status_code == 400, response.text
        assert response.json()["detail"].startswith("PatientID is given twice") and "P-" not in response.text
    assert not [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
    same = client.post("/dicom", files=[("file", ("a.jpg", jpeg(), "image/jpeg"))], data={"PatientID": ["P-1", "P-1"]})
    assert same.status_code == 200 and same.json()["created"] == 1, same.text


def test_study_type_and_utf8_names(client):
    response = post_image(client, jpeg(), "PatientName=M%C3%BCller^J%C3%BCrgen&study_type=wound%20care&burned_in=no")
    assert response.status_code == 201, response.text
    ds, _ = stored_file(client, response.json()["id"])
    assert (str(ds.PatientName), ds.StudyDescription, ds.BurnedInAnnotation) == ("Müller^Jürgen", "wound care", "NO")
    assert ds.SpecificCharacterSet == "ISO_IR 192"


def test_anonymized_photo(client):
    refused = post_image(client, jpeg(), f"PatientName={PHI}&PatientID=SECRET-ID&anonymize=1")
    assert refused.status_code == 422 and refused.json()["error"] == "burned_in_annotation"  # YES by default
    response = post_image(client, jpeg(), f"PatientName={PHI}&PatientID=SECRET-ID&anonymize=1&burned_in=no")
    assert response.status_code == 201, response.text
    _, raw = stored_file(client, response.json()["id"])
    assert PHI.encode() not in raw and b"SECRET-ID" not in raw
    allowed = post_image(client, jpeg((12, 12, 3)), f"PatientName={PHI}&anonymize=1&allow_burned_in=1")
    assert allowed.status_code == 201, allowed.text
    assert PHI.encode() not in stored_file(client, allowed.json()["id"])[1]


def dciodvfy_errors(path) -> list[str]:
    assert DCIODVFY is not None, "CI=true: dciodvfy (Debian package dicom3tools) is needed; .ci/run installs it"
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, encoding="latin-1", timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    assert lines, "dciodvfy said nothing at all"
    return [line for line in lines if line.startswith("Error")]


@needs_dciodvfy
@pytest.mark.parametrize(
    "data, kind",
    [
        (jpeg(), "image/jpeg"),
        (jpeg(keep_rgb=True), "image/jpeg"),
        (jpeg((20, 30)), "image/jpeg"),
        (jpeg(progressive=True), "image/jpeg"),
        (png(Image.fromarray(noise((10, 12), np.uint16, 4096))), "image/png"),
        (png(Image.fromarray(noise((10, 12, 3)))), "image/png"),
    ],
    ids=["jpeg-colour", "jpeg-rgb", "jpeg-grey", "jpeg-progressive", "png-16", "png-rgb"],
)
def test_dciodvfy_finds_no_error(client, tmp_path, data, kind):
    query = "PatientName=M%C3%BCller^J&PatientID=P-5&PatientBirthDate=19800101&PatientSex=F&AccessionNumber=A1&study_type=x"
    response = post_image(client, data, query, kind=kind)
    assert response.status_code == 201, response.text
    path = tmp_path / "sc.dcm"
    path.write_bytes(stored_file(client, response.json()["id"])[1])
    assert dciodvfy_errors(path) == []


def test_converted_in_worker_processes(process_client):
    """As served: the conversion runs in a worker process (svc.cpu), the server never decodes."""
    response = post_image(process_client, png(Image.fromarray(noise((12, 10), np.uint16, 65536))), kind="image/png")
    assert response.status_code == 201, response.text
    files = [("file", ("a.jpg", jpeg(), "image/jpeg")), ("file", ("b.png", b"\x89PNG\r\n\x1a\n broken", "image/png"))]
    body = process_client.post("/dicom", files=files, data={"PatientID": "P-6"}).json()
    assert [r["status"] for r in body["results"]] == ["created", "failed"], body
    assert process_client.get("/healthz").status_code == 200  # the server is still up


def test_mutated_images_never_fail_unexpectedly(tmp_path):
    """Random damage (bytes changed, cut, inserted; PNG CRCs recomputed so the decoder is reached)
    ends in a JSON-able error (DicomSvcError) or an instance, never another exception (a 500)."""
    from dicomsvc import photos
    from dicomsvc.errors import DicomSvcError
    from dicomsvc.imaging.photo import convert

    def fix_crcs(data: bytes) -> bytes:
        out, pos = bytearray(data[:8]), 8
        while pos + 12 <= len(data):
            (length,) = struct.unpack_from(">I", data, pos)
            if pos + 12 + length > len(data):
                break
            out += chunk(data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length])
            pos += 12 + length
        return bytes(out + data[pos:])

    spec = photos.capture({"PatientID": "X"})
    seeds = [jpeg((24, 32, 3)), jpeg((24, 32)), jpeg(progressive=True), png(Image.fromarray(noise((12, 16, 3)))),
             png(Image.fromarray(noise((12, 16), np.uint16, 65536))), png(Image.fromarray(noise((8, 8, 3))).quantize(8))]  # fmt: skip
    rng = np.random.default_rng(11)
    path, outcomes = tmp_path / "image", set()
    for _ in range(600):
        seed = seeds[rng.integers(len(seeds))]
        data = bytearray(seed)
        for _ in range(rng.integers(1, 5)):
            at = int(rng.integers(2, len(data)))
            if rng.random() < 0.7:
                data[at] = int(rng.integers(256))
            else:
                del data[at : at + int(rng.integers(1, 40))]
        path.write_bytes(fix_crcs(bytes(data)) if seed.startswith(b"\x89PNG") else bytes(data))
        try:
            convert(path, spec, 1 << 29, io.BytesIO())
            outcomes.add("stored")
        except DicomSvcError as exc:
            outcomes.add(exc.code)
    assert {"stored", "invalid_image"} <= outcomes


@pytest.mark.parametrize(
    "data", [huge_png(100_000, 100_000), huge_png(30_000, 30_000), huge_jpeg(60_000)], ids=["png-100000", "png-30000", "jpeg-60000"]
)
def test_huge_dimensions_are_refused_from_the_header_before_any_decoding(tmp_path, monkeypatch, data):
    """A decompression bomb (a few hundred bytes declaring 10^10 pixels) is refused by the sizes
    its header declares -- PNG IHDR (ISO/IEC 15948 §11.2.2), JPEG SOF (ITU T.81 B.2.2) -- and
    DICOMSVC_MAX_FRAME_BYTES: the decoder is never called, and Python allocates next to nothing."""
    import tracemalloc

    from dicomsvc import photos
    from dicomsvc.errors import TooLarge
    from dicomsvc.imaging import photo

    def no_decoding(*args, **kwargs):
        raise AssertionError("the image was handed to the decoder")

    monkeypatch.setattr(photo.Image, "open", no_decoding)
    path = tmp_path / "bomb"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            photo.convert(path, photos.capture({"PatientID": "X"}), 1 << 29, io.BytesIO())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # a generous bound: the decoded frame would be 900 MB to 30 GB
