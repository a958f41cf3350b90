"""Anonymization through the service: every ingest route, the server-wide mode, stored copies."""

import io
import os
import zipfile

import pydicom
import pytest
from starlette.testclient import TestClient

from app import create_app
from dicomsvc.config import Config
from phi_fixture import build_phi_dataset, build_study, to_bytes

DICOM = {"content-type": "application/dicom"}


def every_byte_stored(data_dir) -> bytes:
    """The whole data directory, database and blobs, as one haystack."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())


def assert_no_phi(haystack: bytes, planted) -> None:
    for marker in planted.markers:
        assert marker.encode() not in haystack, marker
    for uid in planted.uids:
        assert uid.encode() not in haystack, uid


def phi_file():
    ds, planted = build_phi_dataset()
    data = to_bytes(ds)
    assert all(m.encode() in data for m in planted.markers)  # a passthrough would be caught
    return data, planted


def anon_client(data_dir, import_root, **env):
    base = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0"}
    return TestClient(create_app(Config.from_env(base | {f"DICOMSVC_{k.upper()}": v for k, v in env.items()})))


@pytest.mark.parametrize("route", ["path", "body", "multipart", "zip", "async"])
def test_every_route_stores_only_the_anonymized_instance(client, import_root, data_dir, route):
    data, planted = phi_file()
    if route == "path":
        (import_root / "phi.dcm").write_bytes(data)
        response = client.post("/dicom", json={"path": "phi.dcm", "anonymize": True})
        os.remove(import_root / "phi.dcm")  # the import root is not the store: leave only what we stored
    elif route == "body":
        response = client.post("/dicom?anonymize=true", content=data, headers=DICOM)
    elif route == "multipart":
        response = client.post("/dicom", files=[("file", ("phi.dcm", data, "application/dicom"))], data={"anonymize": "true"})
    else:
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as out:
            out.writestr("phi.dcm", data)
        query = "?anonymize=true" + ("&async=true" if route == "async" else "")
        response = client.post(f"/dicom{query}", content=archive.getvalue(), headers={"content-type": "application/zip"})
    assert response.status_code in (200, 201, 202), response.text
    if response.status_code == 202:
        job = response.json()["status_url"]
        for _ in range(200):
            if client.get(job).json()["status"] == "done":
                break
        body = client.get(job).json()
        instance_id = body["results"][0]["id"]
    else:
        body = response.json()
        instance_id = body["id"] if "id" in body else body["results"][0]["id"]
    stored = client.get(f"/dicom/{instance_id}/file").content
    ds = pydicom.dcmread(io.BytesIO(stored))
    assert ds.PatientIdentityRemoved == "YES"
    tags = client.get("/tags", params={"id": instance_id}).text
    assert_no_phi(stored + tags.encode(), planted)
    assert_no_phi(every_byte_stored(data_dir), planted)


def test_without_the_option_nothing_is_changed(client):
    data, _ = phi_file()
    instance_id = client.post("/dicom", content=data, headers=DICOM).json()["id"]
    response = client.get(f"/dicom/{instance_id}/file")
    assert response.content == data  # the very bytes that were posted
    assert response.headers["content-type"] == "application/dicom"
    assert response.headers["content-disposition"] == f'attachment; filename="{instance_id}.dcm"'
    assert client.get("/dicom/AAAAAAAAAAAAAAAAAAAAAA/file").status_code == 404


def test_server_wide_mode_anonymizes_everything(data_dir, import_root):
    data, planted = phi_file()
    with anon_client(data_dir, import_root, anonymize="always") as client:
        response = client.post("/dicom", content=data, headers=DICOM)  # no option asked for
        assert response.status_code == 201
        assert_no_phi(client.get(f"/dicom/{response.json()['id']}/file").content, planted)
    assert_no_phi(every_byte_stored(data_dir), planted)


def test_anonymize_a_stored_instance(client):
    data, planted = phi_file()
    original = client.post("/dicom", content=data, headers=DICOM).json()["id"]
    first = client.post(f"/dicom/{original}/anonymize")
    assert first.status_code == 201 and first.json()["source"] == original
    copy = first.json()["id"]
    assert copy != original
    assert_no_phi(client.get(f"/dicom/{copy}/file").content, planted)
    again = client.post(f"/dicom/{original}/anonymize")  # deterministic: the same copy
    assert again.status_code == 200 and again.json() == first.json()
    assert client.get("/image", params={"id": copy}).status_code == 200
    assert client.post("/dicom/AAAAAAAAAAAAAAAAAAAAAA/anonymize").status_code == 404


def test_burned_in_refused_unless_allowed(client):
    ds, _ = build_phi_dataset()
    ds.Modality = "US"
    del ds.BurnedInAnnotation
    data = to_bytes(ds)
    refused = client.post("/dicom?anonymize=true", content=data, headers=DICOM)
    assert refused.status_code == 422 and refused.json()["error"] == "burned_in_annotation"
    allowed = client.post("/dicom?anonymize=true&allow_burned_in=true", content=data, headers=DICOM)
    assert allowed.status_code == 201


def test_one_study_in_two_requests_keeps_its_uids_across_a_restart(data_dir, import_root):
    study = build_study()
    series = [[to_bytes(ds) for ds in instances] for instances in study.instances]
    found = []
    for number in (0, 1):  # each series in its own request, and the server restarted in between
        with anon_client(data_dir, import_root) as client:
            for data in series[number]:
                instance_id = client.post("/dicom?anonymize=true", content=data, headers=DICOM).json()["id"]
                found.append(pydicom.dcmread(io.BytesIO(client.get(f"/dicom/{instance_id}/file").content)))
    assert len({ds.StudyInstanceUID for ds in found}) == 1
    assert len({ds.SeriesInstanceUID for ds in found}) == 2
    assert len({ds.FrameOfReferenceUID for ds in found}) == 1
    assert len({ds.PatientID for ds in found}) == 1
    secret = (data_dir / "anon.secret").stat()
    assert secret.st_mode & 0o777 == 0o600


def test_the_secret_comes_from_the_environment_and_is_never_logged(data_dir, import_root, capfd, caplog):
    caplog.set_level("DEBUG")
    data, _ = phi_file()
    uids = []
    for number, secret in enumerate(("first-secret-xyz", "second-secret-xyz")):
        with anon_client(data_dir / str(number), import_root, anon_secret=secret) as client:
            instance_id = client.post("/dicom?anonymize=true", content=data, headers=DICOM).json()["id"]
            uids.append(pydicom.dcmread(io.BytesIO(client.get(f"/dicom/{instance_id}/file").content)).SOPInstanceUID)
        assert not (data_dir / str(number) / "anon.secret").exists()
    assert uids[0] != uids[1]
    out, err = capfd.readouterr()
    assert "secret-xyz" not in out + err + caplog.text


def test_stow_rs_can_anonymize(client):
    data, planted = phi_file()
    boundary = "b0undary"
    body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    answer = client.post("/studies?anonymize=true", content=body, headers={"content-type": ctype})
    assert answer.status_code == 200
    sop = answer.json()["00081199"]["Value"][0]["00081155"]["Value"][0]  # Referenced SOP Instance UID
    instance_id = client.get("/dicom", params={"SOPInstanceUID": sop}).json()["items"][0]["id"]
    assert_no_phi(client.get(f"/dicom/{instance_id}/file").content + answer.content, planted)


@pytest.mark.parametrize("how", ["query", "json", "form", "json_number"])
def test_a_mistyped_anonymize_is_400_and_stores_nothing(client, import_root, data_dir, how):
    """``anonymize=ture`` was read as "no" and the identifiers kept: now a 400, nothing stored."""
    data, _ = phi_file()
    (import_root / "phi.dcm").write_bytes(data)
    if how == "query":
        response = client.post("/dicom?anonymize=ture", content=data, headers=DICOM)
    elif how == "json":
        response = client.post("/dicom", json={"path": "phi.dcm", "anonymize": "maybe"})
    elif how == "json_number":
        response = client.post("/dicom", json={"path": "phi.dcm", "anonymize": 2})
    else:
        response = client.post("/dicom", files=[("file", ("phi.dcm", data, "application/dicom"))], data={"anonymize": "ja"})
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error", "detail"} and "anonymize" in response.json()["detail"]
    assert client.get("/dicom").json()["items"] == []
    assert client.post("/dicom?anonymize=off", content=data, headers=DICOM).status_code == 201  # the words still work
