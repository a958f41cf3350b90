"""Ownership: who stored what, and DICOMSVC_VISIBILITY=own -- an uploader cannot see or anonymize
another's uploads through any route, DICOMweb included (404, never 403: existence does not leak)."""

import io
import time

import pytest
from pydicom.uid import generate_uid

from authhelpers import bearer, token_app
from dicomfiles import make_ct

USERS = {"ann": "uploader", "bob": "uploader", "rita": "reader", "adam": "admin"}


def dicom_bytes(**elements) -> bytes:
    out = io.BytesIO()
    make_ct(**elements).save_as(out, enforce_file_format=True)
    return out.getvalue()


def store(client, token: str, body: bytes, **params) -> dict:
    answer = client.post("/dicom", content=body, params=params, headers={"Content-Type": "application/dicom", **bearer(token)})
    assert answer.status_code in (201, 202), answer.text
    return answer.json()


def wait_for(client, token: str, job: str) -> dict:
    deadline = time.monotonic() + 60
    while (status := client.get(f"/jobs/{job}", headers=bearer(token)).json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.05)
    return status


@pytest.fixture
def world(monkeypatch, data_dir, import_root):
    """ann stores instance A (study S, series SA) through a job; bob stores B (another study) and
    C (study S too, series SC). Visibility: own."""
    with token_app(monkeypatch, data_dir, import_root, USERS, visibility="own") as (client, tokens):
        study, series_a, series_c = generate_uid(), generate_uid(), generate_uid()
        a = {"StudyInstanceUID": study, "SeriesInstanceUID": series_a, "sop_uid": generate_uid()}
        job = store(client, tokens["ann"], dicom_bytes(**a), **{"async": "true"})["job"]
        (result,) = wait_for(client, tokens["ann"], job)["results"]
        b = {"sop_uid": generate_uid()}
        c = {"StudyInstanceUID": study, "SeriesInstanceUID": series_c, "sop_uid": generate_uid(), "Modality": "MR"}
        ids = {"A": result["id"], "B": store(client, tokens["bob"], dicom_bytes(**b))["id"],
               "C": store(client, tokens["bob"], dicom_bytes(**c))["id"]}  # fmt: skip
        yield client, tokens, ids, {"study": study, "series": series_a, "sop": a["sop_uid"], "job": job,
                                    "series_c": series_c, "sop_c": c["sop_uid"]}  # fmt: skip


def reads_of(ids: dict, uids: dict) -> list[str]:
    """Every GET that reads instance A."""
    a = ids["A"]
    s, se, sop = uids["study"], uids["series"], uids["sop"]
    w = f"/dicomweb/studies/{s}/series/{se}"
    return [
        f"/dicom/{a}", f"/dicom/{a}/file", f"/dicom/{a}/pixels", f"/dicom/{a}/bulk/7FE00010",
        f"/image?id={a}", f"/image?id={a}&width=16", f"/tags?id={a}", f"/tags?id={a}&format=dicomjson",
        f"/jobs/{uids['job']}",
        w, f"{w}/metadata", f"{w}/instances/{sop}", f"{w}/instances/{sop}/metadata",
        f"{w}/instances/{sop}/frames/1", f"{w}/instances/{sop}/bulk/7FE00010",
        f"{w}/rendered", f"{w}/thumbnail", f"{w}/instances/{sop}/rendered", f"{w}/instances/{sop}/thumbnail",
        f"{w}/instances/{sop}/frames/1/rendered", f"{w}/instances/{sop}/frames/1/thumbnail",
    ]  # fmt: skip


def searches_of(ids: dict, uids: dict) -> list[str]:
    """Every search that finds instance A (and nothing else of ann's)."""
    s, se, sop = uids["study"], uids["series"], uids["sop"]
    return [
        f"/dicom?SOPInstanceUID={sop}", f"/dicomweb/instances?SOPInstanceUID={sop}",
        f"/dicomweb/series?SeriesInstanceUID={se}", f"/dicomweb/studies/{s}/series/{se}/instances",
        f"/dicomweb/studies/{s}/instances?SOPInstanceUID={sop}", f"/dicomweb/studies/{s}/series?SeriesInstanceUID={se}",
    ]  # fmt: skip


def found(answer) -> list:
    body = answer.json()
    return body["items"] if isinstance(body, dict) else body


def test_another_uploaders_instances_are_not_there(world):
    client, tokens, ids, uids = world
    for url in reads_of(ids, uids):
        for user in ("ann", "adam"):
            answer = client.get(url, headers={**bearer(tokens[user]), "Accept": "*/*"})
            assert answer.status_code == 200, (user, url, answer.status_code, answer.text[:200])
        for user in ("bob", "rita"):  # another uploader; a reader who stored nothing
            answer = client.get(url, headers={**bearer(tokens[user]), "Accept": "*/*"})
            assert answer.status_code == 404, (user, url, answer.status_code, answer.text[:200])
            assert answer.json()["error"] in ("not_found", "no_pixel_data")
    for url in searches_of(ids, uids):
        assert len(found(client.get(url, headers=bearer(tokens["ann"])))) == 1, url
        assert len(found(client.get(url, headers=bearer(tokens["adam"])))) == 1, url
        assert found(client.get(url, headers=bearer(tokens["bob"]))) == [], url
        assert found(client.get(url, headers=bearer(tokens["rita"]))) == [], url
    anonymize = client.post(f"/dicom/{ids['A']}/anonymize", headers=bearer(tokens["bob"]))
    assert anonymize.status_code == 404


def test_a_shared_study_shows_each_uploader_their_own_part(world):
    client, tokens, ids, uids = world
    s = uids["study"]

    def study_as(user: str) -> dict:
        (study,) = client.get(f"/dicomweb/studies?StudyInstanceUID={s}", headers=bearer(tokens[user])).json()
        return study

    # (0020,1206) Number of Study Related Series, (0020,1208) ... Instances, (0008,0061) Modalities in Study
    assert study_as("bob")["00201206"]["Value"] == [1] and study_as("bob")["00201208"]["Value"] == [1]
    assert study_as("bob")["00080061"]["Value"] == ["MR"] and study_as("ann")["00080061"]["Value"] == ["CT"]
    assert study_as("adam")["00201206"]["Value"] == [2] and study_as("adam")["00080061"]["Value"] == ["CT", "MR"]
    series = client.get(f"/dicomweb/studies/{s}/series", headers=bearer(tokens["bob"])).json()
    assert [x["0020000E"]["Value"] for x in series] == [[uids["series_c"]]]
    metadata = client.get(f"/dicomweb/studies/{s}/metadata", headers=bearer(tokens["bob"])).json()
    assert [m["00080018"]["Value"] for m in metadata] == [[uids["sop_c"]]]
    everything = client.get(f"/dicomweb/studies?StudyInstanceUID={s}&includefield=all", headers=bearer(tokens["bob"]))
    assert uids["sop"] not in everything.text
    retrieved = client.get(f"/dicomweb/studies/{s}", headers={**bearer(tokens["bob"]), "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert retrieved.status_code == 200 and uids["sop_c"].encode() in retrieved.content and uids["sop"].encode() not in retrieved.content
    assert client.get(f"/dicomweb/studies/{s}/rendered", headers=bearer(tokens["bob"])).status_code == 200
    stats = client.get("/stats", headers=bearer(tokens["bob"])).json()
    assert (stats["instances"], stats["studies"], stats["by_user"]) == (2, 2, {"bob": 2})
    everyone = client.get("/stats", headers=bearer(tokens["adam"])).json()
    assert (everyone["instances"], everyone["users"], everyone["by_user"]) == (3, 2, {"bob": 2, "ann": 1})
    assert {j["created_by"] for j in client.get("/jobs", headers=bearer(tokens["adam"])).json()["items"]} == {"ann"}
    assert client.get("/jobs", headers=bearer(tokens["bob"])).json()["items"] == []


def test_under_all_only_admins_anonymize_what_others_stored(monkeypatch, data_dir, import_root):
    with token_app(monkeypatch, data_dir, import_root, USERS) as (client, tokens):  # visibility: all
        a = store(client, tokens["ann"], dicom_bytes())["id"]
        assert client.get(f"/dicom/{a}", headers=bearer(tokens["bob"])).status_code == 200  # all see all
        refused = client.post(f"/dicom/{a}/anonymize", headers=bearer(tokens["bob"]))
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        assert client.post(f"/dicom/{a}/anonymize", headers=bearer(tokens["rita"])).status_code == 403  # a reader
        mine = client.post(f"/dicom/{a}/anonymize", headers=bearer(tokens["ann"]))
        assert mine.status_code == 201
        copy = client.get(f"/dicom/{mine.json()['id']}", headers=bearer(tokens["ann"])).json()
        assert copy["uploaded_by"] == "ann" and copy["anonymized_from"] == a
        assert client.post(f"/dicom/{a}/anonymize", headers=bearer(tokens["adam"])).status_code == 200  # exists
        assert client.delete(f"/dicom/{a}", headers=bearer(tokens["ann"])).status_code == 403  # admins delete
        assert client.delete(f"/dicom/{a}", headers=bearer(tokens["adam"])).status_code == 204
