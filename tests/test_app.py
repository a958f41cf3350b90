"""The HTTP contract, as a client sees it: statuses, bodies, headers, no leftovers."""

import io
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from dicomfiles import blob_files, make_ct, sample_file, save
from indexdb import index

ALL_TEST_FILES = sorted(
    p.name
    for p in sample_file("CT_small.dcm").parent.iterdir()
    if p.is_file() and p.suffix in {".dcm", ".gz", ".txt", ".json", ".icc", ".dump"}
)


def post(client, path):
    return client.post("/dicom", json={"path": path})


def rows_in(data_dir, table):
    with index(data_dir) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]


# POST /dicom ------------------------------------------------------------------


def test_post_creates_then_duplicate_returns_same_id(client, put, data_dir):
    name = put("CT_small.dcm")
    first = post(client, name)
    assert first.status_code == 201
    instance_id = first.json()["id"]
    assert len(instance_id) == 22 and instance_id.isalnum()
    again = post(client, name)
    assert again.status_code == 200
    assert again.json() == {"id": instance_id}
    assert rows_in(data_dir, "dicom") == 1
    assert len([p for p in blob_files(data_dir) if ".tmp" not in p.parts]) == 2  # .dcm + .png
    assert not [p for p in blob_files(data_dir) if ".tmp" in p.parts]


def test_same_uid_with_other_pixels_is_a_new_instance(client, import_root):
    uid = "1.2.826.0.1.3680043.8.498.1"
    save(make_ct(np.zeros((8, 8), np.int16), sop_uid=uid), import_root / "a.dcm")
    save(make_ct(np.ones((8, 8), np.int16), sop_uid=uid), import_root / "b.dcm")
    a, b = post(client, "a.dcm"), post(client, "b.dcm")
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]


def test_absolute_path_inside_root_and_nested_relative_path(client, import_root, put):
    name = put("MR_small.dcm", "study/series/one.dcm")
    assert post(client, str(import_root / name)).status_code == 201
    assert post(client, "study/../study/series/one.dcm").status_code == 200


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'"path"', b"", b"\xff\xfe"],
    ids=["malformed", "array", "string", "empty", "not-utf8"],
)
def test_malformed_body_is_400(client, body):
    assert_error(client.post("/dicom", content=body), 400, "bad_request")


@pytest.mark.parametrize("payload", [{}, {"path": ""}, {"path": "   "}, {"path": 7}, {"path": None}, {"path": "a\x00b"}])
def test_missing_or_empty_path_is_400(client, payload):
    assert_error(client.post("/dicom", json=payload), 400, "bad_request")


def test_oversized_json_body_is_413(client):
    assert_error(client.post("/dicom", json={"path": "x" * (2 << 20)}), 413, "too_large")


@pytest.mark.parametrize("path", ["../outside.dcm", "a/../../outside.dcm", "/etc/passwd"])
def test_paths_outside_the_root_are_403(client, path, import_root):
    (import_root.parent / "outside.dcm").write_bytes(sample_file("CT_small.dcm").read_bytes())
    assert_error(post(client, path), 403, "forbidden")


def test_symlink_pointing_out_is_403_and_inside_is_fine(client, import_root, put):
    outside = import_root.parent / "secret.dcm"
    outside.write_bytes(sample_file("CT_small.dcm").read_bytes())
    (import_root / "escape.dcm").symlink_to(outside)
    assert_error(post(client, "escape.dcm"), 403, "forbidden")
    (import_root / "linkdir").symlink_to(import_root.parent)
    assert_error(post(client, "linkdir/secret.dcm"), 403, "forbidden")
    put("MR_small.dcm")
    (import_root / "alias.dcm").symlink_to(import_root / "MR_small.dcm")
    assert post(client, "alias.dcm").status_code == 201


def test_missing_file_is_404(client):
    assert_error(post(client, "nope.dcm"), 404, "not_found")


def test_fifo_is_400_and_never_opened(client, import_root, data_dir):
    fifo = import_root / "pipe.dcm"
    os.mkfifo(fifo)
    # A reader that opened the FIFO would block until a writer came: none ever does.
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("r", post(client, "pipe.dcm")))
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "POST of a FIFO hung"
    assert_error(result["r"], 400, "bad_request")
    assert "FIFO" in result["r"].json()["detail"]


def test_socket_is_400(client, import_root):
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(import_root / "s.sock"))
        assert_error(post(client, "s.sock"), 400, "bad_request")
    finally:
        sock.close()


def test_device_is_400(client, import_root):
    try:
        os.mknod(import_root / "null", 0o600 | 0o020000, os.makedev(1, 3))  # S_IFCHR, /dev/null
    except PermissionError:
        pytest.skip("creating device nodes needs root")
    assert_error(post(client, "null"), 400, "bad_request")


@pytest.mark.parametrize(
    "content",
    [
        os.urandom(4096),
        b"",
        b"DICM",
        b"\x00" * 128 + b"DICM" + b"\xff" * 300,  # a preamble and garbage
    ],
    ids=["random", "empty", "tiny", "garbage-after-preamble"],
)
def test_not_dicom_is_422_and_leaves_nothing(client, import_root, data_dir, content):
    (import_root / "x.dcm").write_bytes(content)
    assert_error(post(client, "x.dcm"), 422, "invalid_dicom")
    assert rows_in(data_dir, "dicom") == 0
    assert blob_files(data_dir) == []


def test_png_and_truncated_header_are_422(client, import_root, data_dir):
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    (import_root / "img.png").write_bytes(buf.getvalue())
    assert_error(post(client, "img.png"), 422, "invalid_dicom")
    head = sample_file("CT_small.dcm").read_bytes()[:200]  # cut inside the file meta
    (import_root / "cut.dcm").write_bytes(head)
    assert_error(post(client, "cut.dcm"), 422, "invalid_dicom")
    assert blob_files(data_dir) == []


def test_every_bundled_file_gets_a_clean_answer(client, put):
    """No 500s for any input pydicom ships, valid or not; images answer 200/404/415."""
    for name in ALL_TEST_FILES:
        response = post(client, put(name))
        assert response.status_code in (200, 201, 422), (name, response.status_code, response.text)
        if response.status_code == 422:
            assert response.json()["error"] == "invalid_dicom"
            continue
        image = client.get("/image", params={"id": response.json()["id"]})
        assert image.status_code in (200, 404, 415), (name, image.status_code)
        tags = client.get("/tags", params={"id": response.json()["id"]})
        assert tags.status_code == 200, name


def test_non_uid_sop_instance_uid_is_stored_with_a_warning(client, put):
    # pydicom-data's bad_sequence.dcm (JPEG Lossless): a 64-hex-digit SOP Instance UID, as some
    # anonymization tools write; dcmtk renders it and Orthanc stores it
    response = post(client, put("bad_sequence.dcm"))
    assert response.status_code == 201, response.text
    assert response.json()["warnings"] == ["SOP Instance UID (0008,0018) is not a valid UID (PS3.5 §9.1)"]
    image = client.get("/image", params={"id": response.json()["id"]})
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


# GET /image ---------------------------------------------------------------------


def test_image_is_png_with_caching_headers_and_304(client, put):
    instance_id = post(client, put("CT_small.dcm")).json()["id"]
    response = client.get("/image", params={"id": instance_id})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    etag = response.headers["etag"]
    img = Image.open(io.BytesIO(response.content))
    assert img.size == (128, 128) and img.mode == "L"
    again = client.get("/image", params={"id": instance_id}, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    other = client.get("/image", params={"id": instance_id}, headers={"If-None-Match": '"nope"'})
    assert other.status_code == 200


def test_image_without_pixel_data_is_404_no_pixel_data(client, put):
    response = post(client, put("rtplan.dcm"))
    assert response.status_code == 201 and "warnings" not in response.json()
    instance_id = response.json()["id"]
    assert_error(client.get("/image", params={"id": instance_id}), 404, "no_pixel_data")
    assert client.get("/tags", params={"id": instance_id}).status_code == 200


def test_undecodable_pixels_are_stored_with_warning_and_image_415(client, import_root):
    ds = make_ct(np.zeros((16, 16), np.int16))
    ds.PixelData = ds.PixelData[:100]  # far too short for 16 x 16 x 2 bytes
    save(ds, import_root / "short.dcm")
    response = post(client, "short.dcm")
    assert response.status_code == 201
    assert response.json()["warnings"] and "holds 100 bytes" in response.json()["warnings"][0]  # of 512
    image = client.get("/image", params={"id": response.json()["id"]})
    assert_error(image, 415, "unsupported_transfer_syntax")
    assert "holds 100 bytes" in image.json()["detail"]


def test_image_and_tags_need_a_known_id(client):
    assert_error(client.get("/image"), 400, "bad_request")
    assert_error(client.get("/tags"), 400, "bad_request")
    assert_error(client.get("/image", params={"id": "A" * 22}), 404, "not_found")
    assert_error(client.get("/tags", params={"id": "A" * 22}), 404, "not_found")
    assert_error(client.get("/tags", params={"id": "../../etc"}), 404, "not_found")


def test_unknown_route_and_method_are_json(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert client.put("/dicom").status_code == 405
    assert client.put("/dicom").json()["error"] == "method_not_allowed"


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


# Concurrency ----------------------------------------------------------------------


def test_eight_concurrent_posts_of_different_files(client, import_root, data_dir):
    names = []
    for i in range(8):
        save(make_ct(np.full((16, 16), i, np.int16)), import_root / f"f{i}.dcm")
        names.append(f"f{i}.dcm")
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda n: post(client, n), names))
    assert [r.status_code for r in responses] == [201] * 8
    assert len({r.json()["id"] for r in responses}) == 8
    assert rows_in(data_dir, "dicom") == 8


def test_same_file_posted_by_eight_clients_is_stored_once(client, put, data_dir):
    name = put("CT_small.dcm")
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(client, name), range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert rows_in(data_dir, "dicom") == 1
    stored = [p for p in blob_files(data_dir) if ".tmp" not in p.parts]
    assert len(stored) == 2, stored  # the losers removed their blobs
    assert not [p for p in blob_files(data_dir) if ".tmp" in p.parts]


def test_testdata_helper_never_downloads():
    assert get_testdata_file("CT_small.dcm", download=False) is not None


def test_file_over_the_size_limit_is_413_and_leaves_nothing(data_dir, import_root, put):
    from starlette.testclient import TestClient

    from app import create_app
    from dicomsvc.config import Config

    config = Config.from_env(
        {
            "DICOMSVC_DATA_DIR": str(data_dir),
            "DICOMSVC_IMPORT_ROOT": str(import_root),
            "DICOMSVC_WORKERS": "0",
            "DICOMSVC_MAX_UPLOAD_BYTES": "5000",
        }
    )
    with TestClient(create_app(config)) as small:
        assert_error(post(small, put("CT_small.dcm")), 413, "too_large")  # 39 kB
        assert post(small, put("MR_small.dcm")).status_code == 413  # 9.8 kB
        assert post(small, put("rtplan.dcm")).status_code == 201  # 2.5 kB
    assert [p for p in blob_files(data_dir) if ".tmp" in p.parts] == []


def test_no_patient_data_in_logs_or_errors(client, import_root, capfd, caplog):
    """Values that pydicom would complain about (and quote) never reach logs or answers."""
    caplog.set_level("DEBUG")
    marker_name, marker_id = "Zebedee^Quux", "PHI-7731"
    ds = make_ct(np.zeros((8, 8), np.int16), PatientName=marker_name, PatientID=marker_id)
    ds.PatientBirthDate = "19XX0101"  # invalid DA: pydicom warns, quoting the value
    ds.add_new(0x00100030, "DA", "19XX0101")
    ds.PixelData = ds.PixelData[:10]  # and the pixels cannot be decoded
    save(ds, import_root / "phi.dcm")
    response = post(client, "phi.dcm")
    assert response.status_code == 201
    assert_error(client.get("/image", params={"id": response.json()["id"]}), 415, "unsupported_transfer_syntax")
    (import_root / "bad.dcm").write_bytes(b"\x08\x00\x10\x00" + marker_name.encode() * 10)
    bad = post(client, "bad.dcm")
    assert bad.status_code == 422
    out, err = capfd.readouterr()
    seen = out + err + caplog.text + response.text + bad.text
    for marker in (marker_name, marker_id, "Zebedee", "19XX0101"):
        assert marker not in seen
    # and the values are stored: they just never leak
    tags = client.get("/tags", params={"id": response.json()["id"]}).json()["tags"]
    assert any(r["Value"] == marker_name for r in tags)


def test_etag_matching():
    from dicomsvc.http.requests import etag_matches

    assert etag_matches('"a.png"', '"a.png"') and etag_matches('W/"a.png"', '"a.png"')
    assert etag_matches('"x", "a.f1-w40,400-png"', '"a.f1-w40,400-png"')  # commas inside a tag
    assert etag_matches("*", '"a"') and not etag_matches('"b"', '"a"') and not etag_matches(None, '"a"')


def test_access_log_names_the_route_template_never_the_path_or_query(client, caplog):
    caplog.set_level("INFO", logger="dicomsvc.access")
    client.get("/dicom", params={"PatientID": "PAT-SECRET-42", "PatientName": "x"})
    client.get("/dicom", params={"PatientID": "PAT-SECRET-42"})
    lines = [r.getMessage() for r in caplog.records if r.name == "dicomsvc.access"]
    assert lines and lines[-1].startswith("GET /dicom 200 ")
    assert any(" 400 " in line for line in lines)
    assert "PAT-SECRET-42" not in caplog.text


# Hostile and damaged input (issue 9) --------------------------------------------------------


def test_damaged_pixel_data_is_stored_with_a_warning_and_never_rendered(client, import_root, data_dir):
    """A JPEG cut inside its last fragment: stored with the reason, no PNG made; every
    rendering and the array answer 415 with that reason (it was a PNG of the stub)."""
    raw = sample_file("JPEG-lossy.dcm").read_bytes()
    response = client.post("/dicom", content=raw[:-300], headers={"content-type": "application/dicom"})
    assert response.status_code == 201, response.text
    reason = "truncated file: an item of the encapsulated Pixel Data (7FE0,0010) runs past the end of the file"
    assert [w for w in response.json()["warnings"] if w.startswith(reason)], response.json()
    instance_id = response.json()["id"]
    for url, query in (
        ("/image", {"id": instance_id}),
        ("/image", {"id": instance_id, "format": "jpeg"}),
        ("/image", {"id": instance_id, "frame": "1", "window": "100,200", "width": "64"}),
        (f"/dicom/{instance_id}/pixels", {}),
    ):
        answer = client.get(url, params=query)
        assert_error(answer, 415, "unsupported_transfer_syntax")
        assert answer.json()["detail"].startswith(reason), (url, query)
    assert [p for p in blob_files(data_dir) if p.suffix in (".png", ".jpeg", ".jpg", ".npy")] == []
    assert client.get("/tags", params={"id": instance_id}).status_code == 200
    assert client.get(f"/dicom/{instance_id}/file").content == raw[:-300]


@pytest.mark.parametrize("edit", ["zz", "uh", "delimiter", "nested"])
def test_unknown_vrs_and_stray_delimiters_are_stored_with_a_warning(client, edit):
    from pydicom.dataset import Dataset

    ds = make_ct(np.zeros((8, 8), np.int16))
    if edit == "uh":
        del ds.SOPInstanceUID  # so that the file meta's (0002,0003) is the identity
    if edit == "nested":
        item = Dataset()
        item.ReferencedSOPClassUID = ""
        ds.ReferencedImageSequence = [item]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    if edit == "zz":
        at = raw.index(b"\x08\x00\x60\x00CS")
        raw = raw[:at] + b"\x08\x00\x50\x00ZZ\x00\x00" + raw[at:]
    elif edit == "uh":
        at = raw.index(b"\x02\x00\x03\x00UI")
        raw = raw[: at + 4] + b"UH" + raw[at + 6 :]
    elif edit == "nested":  # a zero-length (0008,1150) of VR ZZ inside a sequence item: read when used
        at = raw.index(b"\x08\x00\x50\x11UI")
        raw = raw[: at + 4] + b"ZZ" + raw[at + 6 :]
    else:
        raw += b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    response = client.post("/dicom", content=raw, headers={"content-type": "application/dicom"})
    assert response.status_code == 201, response.text
    assert len(response.json().get("warnings", [])) == (edit != "nested")
    instance_id = response.json()["id"]
    rows = client.get("/tags", params={"id": instance_id}).json()["tags"]
    assert all(len(r["VR"]) == 2 and r["VR"] not in ("ZZ", "UH") for r in rows)
    for url in ("/image", "/tags"):
        assert client.get(url, params={"id": instance_id}).status_code == 200
    assert client.get("/tags", params={"id": instance_id, "format": "dicomjson"}).status_code == 200


def small_client(data_dir, import_root, **limits):
    from starlette.testclient import TestClient

    from app import create_app
    from dicomsvc.config import Config

    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0"}
    return TestClient(create_app(Config.from_env(env | {f"DICOMSVC_{k.upper()}": str(v) for k, v in limits.items()})))


def test_a_deflate_bomb_is_413_and_stores_nothing(data_dir, import_root):
    """16 MiB of pixel data in a ~16 kB upload: DICOMSVC_MAX_UPLOAD_BYTES caps the inflated size too."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = make_ct(np.zeros((2048, 2048), np.int16), window=None)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with small_client(data_dir, import_root, max_upload_bytes=4 << 20) as small:
        response = small.post("/dicom", content=buf.getvalue(), headers={"content-type": "application/dicom"})
        assert_error(response, 413, "too_large")
        assert "inflates" in response.json()["detail"]
        again = small.post("/dicom?anonymize=true", content=buf.getvalue(), headers={"content-type": "application/dicom"})
        assert_error(again, 413, "too_large")
        fits = small.post("/dicom", content=sample_file("image_dfl.dcm").read_bytes(),
                          headers={"content-type": "application/dicom"})  # fmt: skip
        assert fits.status_code == 201
        image = small.get("/image", params={"id": fits.json()["id"]})
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert len(blob_files(data_dir)) == 2  # image_dfl's .dcm and .png: nothing else, no temp files


def test_anonymizing_what_pydicom_reads_but_will_not_write_is_422(client, put, data_dir):
    """No (0002,0010) Transfer Syntax UID: pydicom reads the file but refuses to write the
    anonymized copy (it was a 500); nothing is left behind."""
    response = client.post("/dicom", params={"anonymize": "true"}, json={"path": put("ExplVR_LitEndNoMeta.dcm")})
    assert_error(response, 422, "invalid_dicom")
    assert "anonymized copy could not be written" in response.json()["detail"]
    assert blob_files(data_dir) == []


def test_a_full_disk_while_inflating_a_deflated_upload_is_507(client, monkeypatch, data_dir):
    from dicomfiles import temporary_files_on_a_full_disk

    temporary_files_on_a_full_disk(monkeypatch)
    response = client.post("/dicom", content=sample_file("image_dfl.dcm").read_bytes(),
                           headers={"content-type": "application/dicom"})  # fmt: skip
    assert_error(response, 507, "insufficient_storage")
    assert blob_files(data_dir) == []


def test_an_unexpected_exception_is_a_json_500_whose_message_is_never_logged(client, caplog, capfd, monkeypatch):
    """Exception messages can quote values read from a file: the 500 names only the type."""
    from dicomsvc.http import catalog

    async def broken(*args, **kwargs):
        raise ValueError("DOE^PLANTED quoted by a library")

    monkeypatch.setattr(catalog, "stats", broken)
    caplog.set_level("DEBUG")
    response = client.get("/stats")
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "detail": "internal server error"}
    assert client.get("/healthz").status_code == 200
    out, err = capfd.readouterr()
    assert "ValueError" in caplog.text  # the type is logged...
    assert "DOE^PLANTED" not in caplog.text + out + err  # ...never the message or a traceback


def test_a_file_meta_element_with_a_foreign_vr_is_not_a_500(client):
    """(0002,0002) Media Storage SOP Class UID re-encoded as FL (fuzz seed 9 #510): the
    DICOMDIR check read it through pydicom, which raised BytesLengthException."""
    data = sample_file("CT_small.dcm").read_bytes()
    assert data.count(b"\x02\x00\x02\x00UI") == 1
    mutant = data.replace(b"\x02\x00\x02\x00UI", b"\x02\x00\x02\x00FL")
    response = client.post("/dicom", content=mutant, headers={"content-type": "application/dicom"})
    assert response.status_code in (200, 201, 422), response.text
