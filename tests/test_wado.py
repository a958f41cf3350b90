"""WADO-RS (PS3.18 §10.4): retrieve, frames, bulk data, rendered and thumbnails; Accept
negotiation. Proof with dicomweb-client against a live server, plus the parsing rules."""

import hashlib
import io
import time
import tracemalloc

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicomfiles import blob_files, make_ct, sample_file, unlink_blob
from dicomsvc.http.dicomweb.multipart import EXPLICIT_LE

DICOM = {"content-type": "application/dicom"}
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"
# Frames from pydicom's files: native, RLE, JPEG 2000, JPEG-LS, multi-frame
FRAME_FILES = [
    "CT_small.dcm",
    "emri_small.dcm",
    "MR_small_RLE.dcm",
    "emri_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
    "SC_rgb_rle.dcm",
    "image_dfl.dcm",
]


def web(url: str):
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=url + "/dicomweb")


def post(base_or_client, data: bytes) -> None:
    if isinstance(base_or_client, str):
        answer = requests.post(base_or_client + "/dicom", data=data, headers=DICOM, timeout=60)
    else:
        answer = base_or_client.post("/dicom", content=data, headers=DICOM)
    assert answer.status_code in (200, 201), answer.text


def post_file(base_or_client, name: str) -> pydicom.Dataset:
    post(base_or_client, sample_file(name).read_bytes())
    return pydicom.dcmread(sample_file(name))


def encode(ds: pydicom.Dataset, implicit: bool = False) -> bytes:
    out = io.BytesIO()
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(out, enforce_file_format=True, implicit_vr=implicit)
    return out.getvalue()


def uids(ds: pydicom.Dataset) -> tuple[str, str, str]:
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def instance_url(ds: pydicom.Dataset) -> str:
    study, series, sop = uids(ds)
    return f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def assert_same(original: pydicom.Dataset, got: pydicom.Dataset, decompressed: bool = False) -> None:
    """Every data element of ``original`` is in ``got`` with the same value (pixel data: the
    same pixels; a decompressed copy may say RGB for YBR colour and Planar Configuration 0)."""
    changed = {0x7FE00010, 0xFFFCFFFC}
    if decompressed:
        changed |= {0x00280004, 0x00280006}
    for elem in original:
        if elem.tag in changed or elem.tag.element == 0:
            continue
        assert elem.tag in got, elem.tag
        assert got[elem.tag].value == elem.value, elem.tag
    assert np.array_equal(got.pixel_array, original.pixel_array)


def study_of_two_series() -> list[pydicom.Dataset]:
    """A synthetic CT + MR study: 2 series of 3 instances, numbered."""
    study, out = generate_uid(), []
    for number, modality in ((1, "CT"), (2, "MR")):
        series = generate_uid()
        for i in range(3):
            pixels = np.full((16, 24), 100 * number + i, dtype=np.int16)
            ds = make_ct(pixels, StudyInstanceUID=study, SeriesInstanceUID=series, Modality=modality)
            ds.SeriesNumber, ds.InstanceNumber = number, i + 1
            out.append(ds)
    return out


# Retrieve studies, series, instances ------------------------------------------------------------


def test_retrieve_study_series_instance_with_dicomweb_client(live_server):
    datasets = study_of_two_series()
    client = web(live_server)
    for ds in datasets:
        post(live_server, encode(ds))
    study = datasets[0].StudyInstanceUID
    got = client.retrieve_study(study)
    assert [ds.SOPInstanceUID for ds in got] == [ds.SOPInstanceUID for ds in datasets]  # series, instance order
    for original, copy in zip(datasets, got):
        assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert_same(original, copy)
    series = client.retrieve_series(study, datasets[3].SeriesInstanceUID)
    assert [ds.SOPInstanceUID for ds in series] == [ds.SOPInstanceUID for ds in datasets[3:]]
    one = client.retrieve_instance(*uids(datasets[4]))
    assert_same(datasets[4], one)
    with pytest.raises(requests.HTTPError) as missing:
        client.retrieve_study(generate_uid())
    assert missing.value.response.status_code == 404


@pytest.mark.parametrize(
    "name",
    ["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "emri_small_RLE.dcm",
     "SC_rgb_rle.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"],
)  # fmt: skip
def test_retrieve_instance_transfer_syntax_as_asked(live_server, name):
    original = post_file(live_server, name)
    client = web(live_server)
    # no transfer-syntax parameter: Explicit VR Little Endian (PS3.18 Table 8.7.3-2), decompressed
    default = client.retrieve_instance(*uids(original), media_types=("application/dicom",))
    asked = client.retrieve_instance(*uids(original), media_types=(("application/dicom", EXPLICIT_LE),))
    for got in (default, asked):
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert_same(original, got, decompressed=True)
    stored = original.file_meta.TransferSyntaxUID
    as_stored = client.retrieve_instance(*uids(original))  # dicomweb-client asks transfer-syntax=*
    web_safe = stored not in (ImplicitVRLittleEndian, "1.2.840.10008.1.2.2")
    assert as_stored.file_meta.TransferSyntaxUID == (stored if web_safe else ExplicitVRLittleEndian)
    assert_same(original, as_stored, decompressed=not web_safe)
    if web_safe and stored != ExplicitVRLittleEndian:  # compressed, kept as it was
        assert as_stored.PixelData == original.PixelData


def test_retrieve_lossy_and_not_acceptable(client):
    original = post_file(client, "SC_rgb_jpeg_dcmtk.dcm")  # JPEG Baseline: lossy
    url = instance_url(original)
    dicom = 'multipart/related; type="application/dicom"'
    default = client.get(url, headers={"Accept": dicom})
    assert default.status_code == 200
    assert f"transfer-syntax={JPEG_BASELINE}" in default.text[:400]  # lossy data is sent as stored
    asked = client.get(url, headers={"Accept": f"{dicom}; transfer-syntax={EXPLICIT_LE}"})
    assert f"transfer-syntax={EXPLICIT_LE}" in asked.content[:400].decode("latin-1")
    refused = client.get(url, headers={"Accept": f"{dicom}; transfer-syntax={J2K_LOSSLESS}"})
    assert refused.status_code == 406 and refused.json()["error"] == "not_acceptable"
    assert client.get(url, headers={"Accept": "application/json"}).status_code == 406
    single = client.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert single.headers["content-type"].startswith("application/dicom")
    assert single.content == sample_file("SC_rgb_jpeg_dcmtk.dcm").read_bytes()  # the stored file itself


def test_an_instance_that_cannot_be_decoded(client, caplog):
    """Decompressing is tried only when asked: the first instance's failure is a JSON error
    (the answer has not started); a later one is left out of the stream and logged by id."""
    study, series = generate_uid(), generate_uid()
    good = []
    for number in (1, 3):
        ds = pydicom.dcmread(sample_file("MR_small_RLE.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        post(client, encode(ds))
        good.append(ds)
    broken = pydicom.dcmread(sample_file("MR_small_RLE.dcm"))
    broken.StudyInstanceUID, broken.SeriesInstanceUID, broken.InstanceNumber = study, series, 2
    broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    broken.PixelData = encapsulate([b"\x01" + bytes(63) + b"not RLE at all"])  # RLE header, then junk
    post(client, encode(broken))
    url = f"/dicomweb/studies/{study}/series/{series}"
    dicom = 'multipart/related; type="application/dicom"'
    as_stored = client.get(url, headers={"Accept": dicom + "; transfer-syntax=*"})
    assert as_stored.content.count(b"Content-Type: application/dicom") == 3
    decoded = client.get(url, headers={"Accept": dicom})
    assert decoded.status_code == 200
    assert decoded.content.count(f"Content-Type: application/dicom; transfer-syntax={EXPLICIT_LE}".encode()) == 2
    assert "left out of the answer: unsupported_transfer_syntax" in caplog.text
    assert broken.SOPInstanceUID not in caplog.text
    alone = client.get(instance_url(broken), headers={"Accept": dicom})
    assert alone.status_code == 415 and alone.json()["error"] == "unsupported_transfer_syntax"


def test_a_syntax_without_a_decoder_here(process_client):
    """Whether a transfer syntax can be decoded is asked of a worker (the server process never
    imports pydicom: dicomsvc.tasks), once per syntax: MPEG-2 (PS3.5 §8.2.5) has no decoder here,
    so Explicit VR Little Endian and uncompressed frames are refused (406), saying why, while
    the frames as stored and the file as stored are served."""
    mpeg2 = "1.2.840.10008.1.2.4.100"
    ds = pydicom.dcmread(sample_file("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = mpeg2
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    post(process_client, encode(ds))
    url = instance_url(ds)
    dicom = 'multipart/related; type="application/dicom"'
    for _ in range(2):  # the second answer from the server's memory of the first
        refused = process_client.get(url, headers={"Accept": f"{dicom}; transfer-syntax={EXPLICIT_LE}"})
        assert refused.status_code == 406 and f"({mpeg2}) cannot be decoded here" in refused.json()["detail"]
    stored = process_client.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert stored.status_code == 200 and f"transfer-syntax={mpeg2}" in stored.headers["content-type"]
    frames = process_client.get(url + "/frames/1", headers={"Accept": "multipart/related; type=application/octet-stream"})
    assert frames.status_code == 406 and "cannot be decoded here" in frames.json()["detail"]


def test_a_big_series_streams_in_flat_memory(live_server, data_dir):
    """16 instances of 4 MiB (64 MiB), stored Implicit VR Little Endian, so each one is
    re-encoded to a temporary file by a worker and streamed: the peak of Python memory
    (server and client share this process) stays far below the series' size."""
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4000, size=(1024, 2048), dtype=np.int16)
    for i in range(16):
        ds = make_ct(pixels, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=i + 1)
        post(live_server, encode(ds, implicit=True))
    url = f"{live_server}/dicomweb/studies/{study}/series/{series}"
    tracemalloc.start()
    try:
        total, digest = 0, hashlib.sha256()
        with requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, stream=True) as r:
            assert r.status_code == 200
            for chunk in r.iter_content(1 << 16):
                total += len(chunk)
                digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 16 * 4 * 1024 * 1024
    assert peak < 24 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB for a 64 MiB series"
    assert not [p for p in blob_files(data_dir) if ".tmp" in p.parts]  # temporary files removed


def test_a_client_that_goes_away_leaves_no_temporary_files(live_server, data_dir):
    study, series = generate_uid(), generate_uid()
    pixels = np.random.default_rng(5).integers(0, 4000, size=(512, 1024), dtype=np.int16)
    for i in range(6):
        ds = make_ct(pixels, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=i + 1)
        post(live_server, encode(ds, implicit=True))  # each one re-encoded to a temporary file
    url = f"{live_server}/dicomweb/studies/{study}/series/{series}"
    with requests.get(url, stream=True, headers={"Accept-Encoding": "identity"}) as answer:
        chunks = answer.iter_content(1 << 16)
        next(chunks), next(chunks)  # a little of the first instance, then hang up
    deadline = time.monotonic() + 30  # a liveness bound: the server notices and cleans up
    while [p for p in blob_files(data_dir) if ".tmp" in p.parts]:
        assert time.monotonic() < deadline, "temporary files left after the client went away"
        time.sleep(0.05)


# Frames ------------------------------------------------------------------------------------------


def _native_frame(ds: pydicom.Dataset, index: int) -> bytes:
    pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = pixels[index] if frames > 1 else pixels
    return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("name", FRAME_FILES)
def test_retrieve_instance_frames_pixel_identical(live_server, name):
    original = post_file(live_server, name)
    client = web(live_server)
    frames = int(original.get("NumberOfFrames", 1) or 1)
    numbers = [1] if frames == 1 else [1, frames, 3]
    got = client.retrieve_instance_frames(*uids(original), frame_numbers=numbers)
    assert got == [_native_frame(original, n - 1) for n in numbers]
    stored = original.file_meta.TransferSyntaxUID
    if stored.is_compressed:  # as stored: the frame's fragments, byte for byte
        as_stored = client.retrieve_instance_frames(
            *uids(original), frame_numbers=numbers, media_types=(("application/octet-stream", "*"),)
        )
        expected = [get_frame(original.PixelData, n - 1, number_of_frames=frames) for n in numbers]
        assert as_stored == expected


def test_frames_part_headers_etag_and_errors(client):
    original = post_file(client, "emri_small_jpeg_2k_lossless.dcm")  # 10 frames, JPEG 2000
    url = instance_url(original) + "/frames/2,4"
    native = client.get(url)
    assert native.status_code == 200
    assert native.headers["content-type"].startswith('multipart/related; type="application/octet-stream"; boundary=')
    assert native.content.count(f"Content-Type: application/octet-stream; transfer-syntax={EXPLICIT_LE}".encode()) == 2
    stored = client.get(url, headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert stored.headers["content-type"].startswith('multipart/related; type="image/jp2"')
    assert stored.content.count(f"Content-Type: image/jp2; transfer-syntax={J2K_LOSSLESS}".encode()) == 2
    by_query = client.get(url, params={"accept": 'multipart/related; type="image/jp2"'})  # PS3.18 §8.3.3.1
    assert by_query.content == stored.content
    # strong ETags: the same bytes each time; another representation, another tag
    again = client.get(url)
    assert again.content == native.content and again.headers["etag"] == native.headers["etag"]
    assert not native.headers["etag"].startswith("W/") and stored.headers["etag"] != native.headers["etag"]
    cached = client.get(url, headers={"If-None-Match": native.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    assert client.get(instance_url(original) + "/frames/11").status_code == 404
    assert client.get(instance_url(original) + "/frames/0").status_code == 400
    assert client.get(instance_url(original) + "/frames/1,x").status_code == 400
    assert client.get(instance_url(original) + "/frames/" + "9" * 5000).status_code == 400  # not a 500
    assert client.get(url, headers={"Accept": 'multipart/related; type="image/jls"'}).status_code == 406
    single = client.get(instance_url(original) + "/frames/3", headers={"Accept": "application/octet-stream"})
    assert single.headers["content-type"].startswith("application/octet-stream")
    assert single.content == _native_frame(original, 2)


# Bulk data ---------------------------------------------------------------------------------------


def test_retrieve_bulkdata(live_server):
    icon = pydicom.Dataset()
    icon.add_new(0x7FE00010, "OB", bytes(range(256)) * 8)  # Pixel Data: 2 KiB inside a sequence item
    ds = make_ct(IconImageSequence=[icon])
    post(live_server, encode(ds))
    client = web(live_server)
    base = live_server + instance_url(ds) + "/bulk/"
    assert client.retrieve_bulkdata(base + "00880200/0/7FE00010") == [icon.PixelData]
    assert client.retrieve_bulkdata(base + "7FE00010") == [ds.PixelData]  # the pixel data URI
    # the BulkDataURIs the metadata gives (PS3.18 §10.4.1.1.2) are these (the host and port are
    # the Host header's, and dicomweb-client sends the host without the port: compare the paths)
    metadata = requests.get(live_server + instance_url(ds) + "/metadata").json()[0]
    assert metadata["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"] == base + "00880200/0/7FE00010"
    assert metadata["7FE00010"]["BulkDataURI"] == base + "7FE00010"
    compressed = post_file(live_server, "emri_small_RLE.dcm")
    url = live_server + instance_url(compressed) + "/bulk/7FE00010"
    assert client.retrieve_bulkdata(url) == [compressed.pixel_array.astype("<u2").tobytes()]  # decoded
    frames = client.retrieve_bulkdata(url, media_types=(("image/x-dicom-rle", RLE),))
    assert frames == [get_frame(compressed.PixelData, i, number_of_frames=10) for i in range(10)]
    single = requests.get(base + "00880200/0/7FE00010", headers={"Accept": "application/octet-stream"})
    assert single.headers["content-type"] == "application/octet-stream" and single.content == icon.PixelData
    # a plain fetch (Accept: */*, as OHIF's singlepart "bulkdata" sends) gets the value itself
    for url, value in ((base + "00880200/0/7FE00010", icon.PixelData), (base + "7FE00010", ds.PixelData)):
        plain = requests.get(url, headers={"Accept": "*/*"})
        assert plain.headers["content-type"].startswith("application/octet-stream") and plain.content == value
    assert requests.get(base + "00880200/5/7FE00010").status_code == 404
    assert requests.get(base + "7FE00010", headers={"Accept": "text/html"}).status_code == 406


# Rendered and thumbnails ---------------------------------------------------------------------------


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_a_thumbnail_is_made_from_the_stored_png(client, monkeypatch):
    """Frame 1 with the file's own window: the display pixels are the PNG's stored at ingest,
    so the DICOM file is not parsed nor decoded (and the result is what /image resizes)."""
    from dicomsvc import retrieve

    original = post_file(client, "CT_small.dcm")
    stored_png = client.get(instance_url(original) + "/rendered", headers={"Accept": "image/png"})  # ingest's
    monkeypatch.setattr(retrieve, "read", lambda path: pytest.fail("the DICOM file was read"))
    thumb = client.get(instance_url(original) + "/thumbnail", headers={"Accept": "image/png"})
    assert thumb.status_code == 200 and _image(thumb.content).size == (128, 128)
    assert np.array_equal(np.asarray(_image(thumb.content)), np.asarray(_image(stored_png.content)))  # 128: as is
    small = client.get(instance_url(original) + "/thumbnail?viewport=64,64", headers={"Accept": "image/png"})
    box = np.asarray(_image(stored_png.content), dtype=np.float64).reshape(64, 2, 64, 2).mean(axis=(1, 3))
    assert np.abs(np.asarray(_image(small.content), dtype=np.float64) - box).max() <= 1


def test_rendered_and_thumbnails_at_every_level(live_server):
    datasets = study_of_two_series()
    client = web(live_server)
    for ds in datasets:
        post(live_server, encode(ds))
    multi = post_file(live_server, "emri_small_jpeg_2k_lossless.dcm")
    study, series, sop = uids(datasets[4])
    instance = client.retrieve_instance_rendered(study, series, sop)
    assert _image(instance).format == "JPEG" and _image(instance).size == (24, 16)
    png = client.retrieve_instance_rendered(study, series, sop, media_types=("image/png",))
    assert _image(png).format == "PNG"
    # a study and a series show a representative: the middle instance of the (first) series
    assert client.retrieve_series_rendered(study, series) == client.retrieve_instance_rendered(
        study, series, datasets[4].SOPInstanceUID
    )
    first_series = requests.get(f"{live_server}/dicomweb/studies/{study}/rendered", headers={"Accept": "image/png"})
    assert np.array_equal(np.asarray(_image(first_series.content)), np.asarray(_image(
        client.retrieve_instance_rendered(*uids(datasets[1]), media_types=("image/png",))
    )))  # fmt: skip
    frame = client.retrieve_instance_frames_rendered(*uids(multi), frame_numbers=[5], media_types=("image/png",))
    assert frame != client.retrieve_instance_frames_rendered(*uids(multi), frame_numbers=[1], media_types=("image/png",))
    sized = client.retrieve_instance_rendered(
        *uids(multi), params={"viewport": "32,32", "window": "600,1200,sigmoid", "quality": "50"}
    )
    assert _image(sized).size == (32, 32)
    linear = client.retrieve_instance_rendered(
        *uids(multi), params={"viewport": "32,32", "window": "600,1200,linear", "quality": "50"}
    )
    assert linear != sized
    base = live_server + instance_url(multi)
    for url in (
        f"{live_server}/dicomweb/studies/{study}/thumbnail",
        f"{live_server}/dicomweb/studies/{study}/series/{series}/thumbnail",
        base + "/thumbnail",
        base + "/frames/3/thumbnail",
    ):
        thumb = requests.get(url)
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert max(_image(thumb.content).size) <= 128
    big = requests.get(base + "/thumbnail", params={"viewport": "200,100"}, headers={"Accept": "image/png"})
    assert _image(big.content).format == "PNG" and _image(big.content).size == (100, 100)
    etag = requests.get(base + "/rendered").headers["etag"]
    assert requests.get(base + "/rendered", headers={"If-None-Match": etag}).status_code == 304
    for bad in ({"viewport": "0,10"}, {"viewport": "1,2,3,4,5,6"}, {"viewport": "\u00b2,8"}, {"window": "1,2,cubic"},
                {"quality": "101"}, {"window": "1,2,3,4"}):
        answer = requests.get(base + "/rendered", params=bad)
        assert answer.status_code == 400 and answer.json()["error"] == "bad_request"
    assert requests.get(base + "/rendered", headers={"Accept": "image/gif"}).status_code == 406
    assert requests.get(base + "/frames/11/rendered").status_code == 404
    assert requests.get(f"{live_server}/dicomweb/studies/{generate_uid()}/rendered").status_code == 404


def test_a_file_deleted_after_its_lookup_is_404(client, data_dir, monkeypatch):
    """A DELETE between the row's lookup and the reading of the file: 404, never a 500."""
    from dicomsvc.http.dicomweb import wado

    original = post_file(client, "emri_small_RLE.dcm")
    client.get(instance_url(original) + "/frames/1")  # its frame source is now kept parsed
    real = wado.instances.instance_by_uid

    async def vanishing(db, *args):
        row = await real(db, *args)
        unlink_blob(data_dir / "blobs" / row["dcm_blob"])
        return row

    monkeypatch.setattr(wado.instances, "instance_by_uid", vanishing)
    dicom = 'multipart/related; type="application/dicom"'
    octets = 'multipart/related; type="application/octet-stream"'
    for path, accept in [
        ("", dicom),  # decompressed by a worker
        ("", dicom + "; transfer-syntax=*"),  # as stored
        ("/frames/1", octets),  # decoded
        ("/frames/2", octets + "; transfer-syntax=*"),  # cut from the file
        ("/bulk/7FE00010", octets),
        ("/rendered", "image/jpeg"),
    ]:
        answer = client.get(instance_url(original) + path, headers={"Accept": accept})
        assert answer.status_code == 404, (path, accept, answer.text)
    # a thumbnail of frame 1 is made from the PNG stored at ingest: that one gone too, 404
    assert client.get(instance_url(original) + "/thumbnail").status_code == 200
    for png in (data_dir / "blobs").rglob("*.png"):
        unlink_blob(png)
    assert client.get(instance_url(original) + "/frames/1/thumbnail?viewport=32,32").status_code == 404
