"""DICOMweb part 1 over HTTP: QIDO-RS (PS3.18 §10.6), WADO-RS metadata (§10.4), DELETE of
studies and series, STOW-RS under /dicomweb, gzip, CORS preflights, ETags."""

import gzip
import json
from io import BytesIO

import pytest
from pydicom import dcmread
from starlette.testclient import TestClient

from app import create_app
from conftest import make_config
from dicomfiles import blob_files, make_ct
from dicomsvc.dicom.dicomjson import to_dicom_json
from dicomsvc.http.compression import accepts_gzip, compressible
from studydata import make_study, post_all, to_bytes

WEB = "/dicomweb"
TAG = {"PatientName": "00100010", "PatientID": "00100020", "StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E",
       "SOPInstanceUID": "00080018", "Modality": "00080060", "RetrieveURL": "00081190", "InstanceNumber": "00200013",
       "StudyDescription": "00081030", "SeriesNumber": "00200011"}  # fmt: skip


@pytest.fixture
def stored(client):
    """Study A (CT x3, MR x2), study B (CT x1, another patient)."""
    a = make_study((("CT", 3), ("MR", 2)), seed=1)
    b = make_study((("CT", 1),), seed=2, PatientName="Roe^Richard", StudyDate="20230505", StudyTime="090000",
                   StudyDescription="Knee [left]")  # fmt: skip
    ids = post_all(client, a + b)
    return a, b, ids


def values(results: list[dict], keyword: str) -> list:
    return [r[TAG[keyword]]["Value"][0] for r in results]


def uids(results: list[dict], keyword: str) -> set[str]:
    return set(values(results, keyword))


# QIDO-RS: the six resources and what they return ---------------------------------------------


def test_study_results_carry_table_10_6_3_3(client, stored):
    a, b, _ = stored
    answer = client.get(f"{WEB}/studies")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/dicom+json"
    by_uid = {r["0020000D"]["Value"][0]: r for r in answer.json()}
    assert set(by_uid) == {a[0].StudyInstanceUID, b[0].StudyInstanceUID}
    study = by_uid[a[0].StudyInstanceUID]
    assert study == {
        "00080020": {"vr": "DA", "Value": ["20240102"]},
        "00080030": {"vr": "TM", "Value": ["101500"]},
        "00080050": {"vr": "SH", "Value": ["ACC1"]},
        "00080056": {"vr": "CS", "Value": ["ONLINE"]},
        "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
        "00080090": {"vr": "PN", "Value": [{"Alphabetic": "Ref^Doctor"}]},
        "00081030": {"vr": "LO", "Value": ["Chest and head"]},
        "00081190": {"vr": "UR", "Value": [f"http://testserver{WEB}/studies/{a[0].StudyInstanceUID}"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00100020": {"vr": "LO", "Value": ["PID-1"]},
        "00100030": {"vr": "DA", "Value": ["19700101"]},
        "00100040": {"vr": "CS", "Value": ["F"]},
        "0020000D": {"vr": "UI", "Value": [a[0].StudyInstanceUID]},
        "00200010": {"vr": "SH", "Value": ["S1"]},
        "00201206": {"vr": "IS", "Value": [2]},  # numbers as numbers
        "00201208": {"vr": "IS", "Value": [5]},
    }
    assert list(study) == sorted(study)


def test_series_and_instance_resources(client, stored):
    a, b, _ = stored
    study, ct, mr = a[0].StudyInstanceUID, a[0].SeriesInstanceUID, a[3].SeriesInstanceUID
    series = client.get(f"{WEB}/studies/{study}/series").json()
    assert values(series, "SeriesInstanceUID") == [ct, mr]  # in Series Number order
    assert [s["00201209"]["Value"] for s in series] == [[3], [2]]
    assert series[1]["00081190"]["Value"] == [f"http://testserver{WEB}/studies/{study}/series/{mr}"]
    assert series[1]["0008103E"] == {"vr": "LO", "Value": ["MR series 2"]}
    assert (series[1]["00400244"], series[1]["00400245"]) == ({"vr": "DA", "Value": ["20240102"]}, {"vr": "TM", "Value": ["101000"]})
    assert "00100010" not in series[0]  # below a given study: series attributes only
    every_series = client.get(f"{WEB}/series").json()
    assert len(every_series) == 3 and all("00100010" in s and "00201208" in s for s in every_series)  # + study's
    instances = client.get(f"{WEB}/studies/{study}/series/{ct}/instances").json()
    assert values(instances, "InstanceNumber") == [1, 2, 3]
    first = instances[0]
    assert first["00080016"]["Value"] == [a[0].SOPClassUID] and first["00080018"]["Value"] == [a[0].SOPInstanceUID]
    assert (first["00280010"], first["00280011"], first["00280100"]) == (
        {"vr": "US", "Value": [16]}, {"vr": "US", "Value": [24]}, {"vr": "US", "Value": [16]}
    )  # fmt: skip
    assert first["00081190"]["Value"] == [f"http://testserver{WEB}/studies/{study}/series/{ct}/instances/{a[0].SOPInstanceUID}"]
    in_study = client.get(f"{WEB}/studies/{study}/instances").json()
    assert len(in_study) == 5 and {"CT", "MR"} == set(values(in_study, "Modality"))  # + series attributes
    assert len(client.get(f"{WEB}/instances").json()) == 6
    assert client.get(f"{WEB}/studies/1.2.3/series").json() == []  # no match: 200 []


# Matching (PS3.4 C.2.2.2) ---------------------------------------------------------------------


def search(client, path: str, **params) -> list[dict]:
    answer = client.get(f"{WEB}{path}", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_matching(client, stored):
    a, b, _ = stored
    sa, sb = a[0].StudyInstanceUID, b[0].StudyInstanceUID

    def studies(**params) -> set[str]:
        return uids(search(client, "/studies", **params), "StudyInstanceUID")

    assert studies(PatientID="PID-1") == {sa}
    assert studies(**{"00100020": "PID-2"}) == {sb}  # by tag
    assert studies(PatientName="doe^JANE") == {sa}  # PN without regard to case
    assert studies(PatientName="d*") == {sa} and studies(PatientName="*o?^*") == {sa, sb}
    assert studies(PatientName="Doe") == set()  # single value matching is whole-value
    assert studies(PatientName="") == {sa, sb}  # universal matching
    assert studies(StudyInstanceUID=f"{sa}\\{sb}") == {sa, sb} == studies(StudyInstanceUID=f"{sa},{sb}")
    assert studies(StudyDate="20240102") == {sa}
    assert studies(StudyDate="20240101-") == {sa} and studies(StudyDate="-20231231") == {sb}
    assert studies(StudyDate="20230101-20241231") == {sa, sb} and studies(StudyDate="20200101-20201231") == set()
    assert studies(StudyTime="1000-1100") == {sa} and studies(StudyTime="0900-") == {sa, sb}
    assert studies(StudyTime="-0900") == {sb}  # 090000 is 09:00, the upper bound inclusive
    assert studies(ModalitiesInStudy="MR") == {sa} and studies(ModalitiesInStudy="CT") == {sa, sb}
    assert studies(ModalitiesInStudy="MR,XA") == {sa}
    assert studies(AccessionNumber="ACC*") == {sa, sb} and studies(AccessionNumber="acc1") == set()  # case counts
    assert studies(StudyDescription="Knee [left]") == {sb} and studies(StudyDescription="Knee [l*") == {sb}
    assert studies(ReferringPhysicianName="ref^doctor", StudyID="S1") == {sa}
    assert studies(PatientBirthDate="19700101-19701231", PatientID="PID-2") == {sb}
    ct, mr = a[0].SeriesInstanceUID, a[3].SeriesInstanceUID
    assert uids(search(client, "/series", Modality="MR"), "SeriesInstanceUID") == {mr}
    assert uids(search(client, "/series", SeriesNumber="1", PatientID="PID-1"), "SeriesInstanceUID") == {ct}
    assert uids(search(client, "/series", SeriesDescription="MR*"), "SeriesInstanceUID") == {mr}
    assert len(search(client, "/series", PerformedProcedureStepStartDate="20240102", PerformedProcedureStepStartTime="101000")) == 3
    assert values(search(client, f"/studies/{sa}/instances", InstanceNumber="2"), "SOPInstanceUID") == [
        a[1].SOPInstanceUID, a[4].SOPInstanceUID
    ]  # fmt: skip
    mr_class = a[3].SOPClassUID
    assert len(search(client, "/instances", SOPClassUID=mr_class)) == 2
    assert values(search(client, "/instances", SOPInstanceUID=a[2].SOPInstanceUID), "InstanceNumber") == [3]
    # matching keys are returned, even those not in the level's table
    (found,) = search(client, f"/studies/{sa}/series", Modality="MR", StudyDescription="Chest*")
    assert found["00081030"]["Value"] == ["Chest and head"]


# Parameters: includefield, fuzzymatching, limit and offset, errors ---------------------------


def test_includefield(client, stored):
    a, _, _ = stored
    study = a[0].StudyInstanceUID
    (plain,) = search(client, "/studies", PatientID="PID-1")
    assert "00080060" not in plain and "00281052" not in plain
    (asked,) = search(client, "/studies", PatientID="PID-1", includefield="Modality,00281052")
    assert asked["00080060"] == {"vr": "CS", "Value": ["MR"]}  # the newest instance's
    assert asked["00281052"]["vr"] == "DS"
    (repeated,) = client.get(f"{WEB}/studies?PatientID=PID-1&includefield=Modality&includefield=00281052").json()
    assert repeated == asked
    (everything,) = search(client, f"/studies/{study}/series/{a[0].SeriesInstanceUID}/instances",
                           InstanceNumber="1", includefield="all")  # fmt: skip
    assert everything["00281052"] == asked["00281052"] and everything["7FE00010"]["vr"] == "OW"
    assert everything["7FE00010"]["BulkDataURI"].startswith(f"http://testserver{WEB}/studies/{study}/series/")
    assert everything["00281050"]["Value"] == [40.0]  # (0028,1050) Window Center, a number


def test_fuzzymatching_limit_offset_and_warnings(client, stored):
    a, b, _ = stored
    plain = client.get(f"{WEB}/studies")
    assert "warning" not in plain.headers
    fuzzy = client.get(f"{WEB}/studies?fuzzymatching=true&PatientName=doe*")
    assert fuzzy.headers["warning"].startswith('299 dicomsvc "The fuzzymatching parameter is not supported')
    assert len(fuzzy.json()) == 1
    assert "warning" not in client.get(f"{WEB}/studies?fuzzymatching=false").headers
    page1 = client.get(f"{WEB}/instances?limit=4")
    assert len(page1.json()) == 4 and "additional results" in page1.headers["warning"]
    page2 = client.get(f"{WEB}/instances?limit=4&offset=4")
    assert len(page2.json()) == 2 and "warning" not in page2.headers
    everything = values(page1.json() + page2.json(), "SOPInstanceUID")
    assert sorted(everything) == sorted(ds.SOPInstanceUID for ds in a + b)
    assert client.get(f"{WEB}/instances?offset=6").json() == []


def test_the_most_results_is_a_setting(tmp_path):
    (tmp_path / "import").mkdir()
    config = make_config(tmp_path / "data", tmp_path / "import", workers=0)
    config = type(config)(**{**config.__dict__, "qido_max_results": 2})
    with TestClient(create_app(config)) as client:
        post_all(client, make_study((("CT", 3),), seed=7))
        capped = client.get(f"{WEB}/instances?limit=100")
        assert len(capped.json()) == 2 and "additional results" in capped.headers["warning"]


@pytest.mark.parametrize(
    "query, named",
    [
        ("Foo=1", "Foo"),
        ("PatientNme=x", "PatientNme"),
        ("limit=x", "limit"),
        ("limit=0", "limit"),
        ("offset=-1", "offset"),
        ("fuzzymatching=maybe", "fuzzymatching"),
        ("SOPInstanceUID=1.2", "SOPInstanceUID"),  # an instance key in a study search
        ("Rows=16", "Rows"),  # a DICOM attribute that is no matching key
        ("StudyDate=2024", "StudyDate"),
        ("StudyDate=20240101-2024", "StudyDate"),
        ("StudyTime=25h", "StudyTime"),
        ("includefield=NoSuchThing", "NoSuchThing"),
        ("PatientID=a&PatientID=b", "PatientID"),
        ("00100020.00100021=x", "00100020.00100021"),
        ("offset=99999999999999999999", "offset"),  # past SQLite's integers: still a 400
        ("limit=\u00b2", "limit"),  # a digit to str.isdigit, not a number
        ("X" * 5000 + "=1", "XXXX"),  # named, but not at length
    ],
)
def test_bad_parameters_are_400_naming_them(client, query, named):
    answer = client.get(f"{WEB}/studies?{query}")
    assert answer.status_code == 400
    assert answer.json()["error"] == "bad_request" and named in answer.json()["detail"]


def test_long_uid_lists_and_order(client, stored, config):
    import asyncio

    from dicomsvc.storage import sqlite, studies

    a, b, _ = stored
    many = [f"1.{n}" for n in range(5_000)] + [a[0].StudyInstanceUID]
    answer = client.get(f"{WEB}/studies", params={"StudyInstanceUID": ",".join(many)})
    assert answer.status_code == 200 and values(answer.json(), "StudyInstanceUID") == [a[0].StudyInstanceUID]

    async def more_than_sqlite_binds() -> list[dict]:  # 40,000 values: one bound parameter all the same
        db = await sqlite.open_database(config.database)
        try:
            condition = studies.Condition("StudyInstanceUID", "list", tuple(f"1.{n}" for n in range(40_000)) + (many[-1],))
            return await studies.search(db, "study", [condition], 10, 0)
        finally:
            await db.close()

    assert [r["study_instance_uid"] for r in asyncio.run(more_than_sqlite_binds())] == [a[0].StudyInstanceUID]
    # across studies newest first; within a study in number order
    assert values(search(client, "/series"), "SeriesInstanceUID") == [b[0].SeriesInstanceUID, a[3].SeriesInstanceUID,
                                                                       a[0].SeriesInstanceUID]  # fmt: skip
    assert values(search(client, "/instances"), "SOPInstanceUID") == [ds.SOPInstanceUID for ds in reversed(a + b)]
    assert values(search(client, f"/studies/{a[0].StudyInstanceUID}/instances"), "SOPInstanceUID") == [
        ds.SOPInstanceUID for ds in a
    ]  # fmt: skip


def test_metadata_of_instances_stored_before_json_was_kept(client, stored, config):
    """Made from the files on first request; an instance whose file is gone is left out, not a 500."""
    from indexdb import index

    a, _, ids = stored
    with index(config) as db:
        db.execute("DELETE FROM dicom_json")
    from dicomfiles import unlink_blob

    unlink_blob(config.blob_dir / ids[0][:2] / f"{ids[0]}.dcm")
    answer = client.get(f"{WEB}/studies/{a[0].StudyInstanceUID}/series/{a[0].SeriesInstanceUID}/metadata")
    assert answer.status_code == 200
    assert answer.json() == [expected_metadata(ds, "http://testserver") for ds in a[1:3]]


def test_series_number_must_be_a_number(client):
    answer = client.get(f"{WEB}/series?SeriesNumber=one")
    assert answer.status_code == 400 and "SeriesNumber" in answer.json()["detail"]


def test_a_sop_instance_stored_again_with_other_pixels_is_one_instance(client):
    (first,) = make_study((("CT", 1),), seed=8)
    second = make_ct(first.pixel_array + 1, sop_uid=first.SOPInstanceUID)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber", "SeriesNumber", "PatientID"):
        setattr(second, keyword, getattr(first, keyword))
    second.ImageComments = "the second version"
    post_all(client, [first, second])
    study = first.StudyInstanceUID
    (found,) = search(client, "/studies", StudyInstanceUID=study)
    assert found["00201208"]["Value"] == [1]
    assert len(search(client, f"/studies/{study}/instances")) == 1
    (meta,) = client.get(f"{WEB}/studies/{study}/metadata").json()
    assert meta["00204000"]["Value"] == ["the second version"]  # the newest


# WADO-RS metadata ------------------------------------------------------------------------------


def expected_metadata(ds, base: str) -> dict:
    """What pydicom reads from the stored bytes, as DICOM JSON with every binary as a URI."""
    read = dcmread(BytesIO(to_bytes(ds)))
    prefix = f"{base}{WEB}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/bulk/"
    return to_dicom_json(read, lambda path: prefix + path, threshold=0)


def test_metadata_is_what_pydicom_reads(client, stored):
    a, _, _ = stored
    study, mr = a[0].StudyInstanceUID, a[3].SeriesInstanceUID
    whole = client.get(f"{WEB}/studies/{study}/metadata")
    assert whole.status_code == 200 and whole.headers["content-type"] == "application/dicom+json"
    assert whole.json() == [expected_metadata(ds, "http://testserver") for ds in a]  # series, then instance order
    series = client.get(f"{WEB}/studies/{study}/series/{mr}/metadata").json()
    assert series == [expected_metadata(ds, "http://testserver") for ds in a[3:]]
    one = client.get(f"{WEB}/studies/{study}/series/{mr}/instances/{a[4].SOPInstanceUID}/metadata").json()
    assert one == [expected_metadata(a[4], "http://testserver")]
    # the BulkDataURIs name the host the client used
    other = client.get(f"{WEB}/studies/{study}/series/{mr}/metadata", headers={"host": "pacs.example:8080"}).json()
    assert other == [expected_metadata(ds, "http://pacs.example:8080") for ds in a[3:]]
    for path in (f"/studies/1.2.3/metadata", f"/studies/{study}/series/1.2.3/metadata",
                 f"/studies/{study}/series/{mr}/instances/{a[0].SOPInstanceUID}/metadata"):  # fmt: skip
        missing = client.get(WEB + path)
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_metadata_streams_page_by_page(client, stored, monkeypatch):
    from dicomsvc.http.dicomweb import metadata

    a, _, _ = stored
    monkeypatch.setattr(metadata, "PAGE", 2)  # 5 instances: pages of 2, 2 and 1
    whole = client.get(f"{WEB}/studies/{a[0].StudyInstanceUID}/metadata", headers={"accept-encoding": "identity"})
    assert whole.json() == [expected_metadata(ds, "http://testserver") for ds in a]
    monkeypatch.setattr(metadata, "PAGE", 5)  # exactly one full page, then an empty one
    assert client.get(f"{WEB}/studies/{a[0].StudyInstanceUID}/metadata").json() == whole.json()


def test_metadata_etags_are_strong_and_change_with_the_series(client, stored):
    a, _, _ = stored
    url = f"{WEB}/studies/{a[0].StudyInstanceUID}/series/{a[3].SeriesInstanceUID}/metadata"
    plain = client.get(url, headers={"accept-encoding": "identity"})
    etag = plain.headers["etag"]
    assert etag.startswith('"') and "content-encoding" not in plain.headers
    assert client.get(url, headers={"accept-encoding": "identity", "if-none-match": etag}).status_code == 304
    zipped = client.get(url, headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip" and zipped.headers["etag"] == etag[:-1] + '-gzip"'
    again = client.get(url, headers={"accept-encoding": "gzip", "if-none-match": zipped.headers["etag"]})
    assert again.status_code == 304 and again.headers["etag"] == zipped.headers["etag"]
    assert client.get(url, headers={"host": "elsewhere", "if-none-match": etag}).status_code == 200  # other URIs
    (extra,) = make_study((("MR", 1),), seed=1)
    extra.StudyInstanceUID, extra.SeriesInstanceUID = a[3].StudyInstanceUID, a[3].SeriesInstanceUID
    post_all(client, [extra])
    changed = client.get(url, headers={"accept-encoding": "identity", "if-none-match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag and len(changed.json()) == 3
    other_series = f"{WEB}/studies/{a[0].StudyInstanceUID}/series/{a[0].SeriesInstanceUID}/metadata"
    assert client.get(other_series).headers["etag"] != etag


# DELETE ------------------------------------------------------------------------------------------


def test_delete_series_then_study(client, stored, data_dir):
    a, b, ids = stored
    study, mr = a[0].StudyInstanceUID, a[3].SeriesInstanceUID
    assert client.get(f"/image?id={ids[3]}&width=8").status_code == 200  # a cached rendering
    kept = {p.name for p in blob_files(data_dir)}
    assert any(ids[3] in name for name in kept)
    assert client.delete(f"{WEB}/studies/{study}/series/{mr}").status_code == 204
    assert not any(ids[3] in p.name or ids[4] in p.name for p in blob_files(data_dir))
    assert not (data_dir / "blobs" / ids[3][:2] / f"{ids[3]}.renderings").exists()
    (left,) = search(client, "/studies", StudyInstanceUID=study)
    assert left["00201206"]["Value"] == [1] and left["00201208"]["Value"] == [3] and left["00080061"]["Value"] == ["CT"]
    assert client.delete(f"{WEB}/studies/{study}/series/{mr}").status_code == 404
    assert client.get(f"/dicom/{ids[3]}").status_code == 404
    assert client.delete(f"{WEB}/studies/{study}").status_code == 204
    assert search(client, "/studies", StudyInstanceUID=study) == []
    assert client.get(f"{WEB}/studies/{study}/metadata").status_code == 404
    assert client.delete(f"{WEB}/studies/{study}").status_code == 404
    assert uids(search(client, "/studies"), "StudyInstanceUID") == {b[0].StudyInstanceUID}  # the other one stays
    assert all(ids[5] in p.name for p in blob_files(data_dir) if ".tmp" not in p.parts)


# STOW-RS under /dicomweb -------------------------------------------------------------------------


def related(datasets) -> tuple[bytes, dict]:
    boundary = "p1BOUNDARY"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + to_bytes(ds) + b"\r\n" for ds in datasets
    ) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


@pytest.mark.parametrize("root", [WEB, ""])
def test_stow_retrieve_urls_point_into_dicomweb(client, root):
    datasets = make_study((("CT", 2),), seed=9)
    body, headers = related(datasets)
    answer = client.post(f"{root}/studies", content=body, headers=headers)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/dicom+json"
    study, series = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    assert answer.json()["00081190"]["Value"] == [f"http://testserver{WEB}/studies/{study}"]
    items = answer.json()["00081199"]["Value"]
    assert [i["00081190"]["Value"][0] for i in items] == [
        f"http://testserver{WEB}/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}" for ds in datasets
    ]
    other = make_study((("CT", 1),), seed=10)
    body, headers = related(other)
    refused = client.post(f"{root}/studies/{study}", content=body, headers=headers)
    assert refused.status_code == 409 and refused.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC409]
    body, headers = related(other)
    assert client.post(f"{root}/studies/{other[0].StudyInstanceUID}", content=body, headers=headers).status_code == 200


# HTTP: gzip, CORS --------------------------------------------------------------------------------


def test_json_is_gzipped_when_accepted_and_images_never(client, stored):
    _, _, ids = stored
    zipped = client.get(f"{WEB}/instances", headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip" and "accept-encoding" in zipped.headers["vary"].lower()
    raw = client.get(f"{WEB}/instances", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in raw.headers and "accept-encoding" in raw.headers["vary"].lower()
    assert zipped.json() == raw.json()
    assert client.get(f"{WEB}/instances", headers={"accept-encoding": "gzip;q=0"}).headers.get("content-encoding") is None
    image = client.get(f"/image?id={ids[0]}", headers={"accept-encoding": "gzip"})
    assert image.headers["content-type"] == "image/png" and "content-encoding" not in image.headers
    small = client.get("/healthz", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in small.headers  # under the minimum size


def test_what_is_compressed():
    assert accepts_gzip("gzip, deflate, br") and accepts_gzip("*") and accepts_gzip("deflate, gzip;q=0.5")
    assert not accepts_gzip("identity") and not accepts_gzip("gzip;q=0") and not accepts_gzip("")
    assert compressible("application/dicom+json") and compressible("application/json; charset=utf-8")
    assert compressible('multipart/related; type="application/dicom"; boundary=x')
    # frames are pixels: not compressed, like images (uncompressed frames are octet-stream parts)
    assert not compressible("multipart/related; type=application/octet-stream; boundary=x")
    assert not compressible('multipart/related; type="application/octet-stream"; transfer-syntax=*')
    assert not compressible('multipart/related; type="image/jpeg"; boundary=x')
    assert not compressible("image/png") and not compressible("application/octet-stream")
    assert gzip.decompress(gzip.compress(b"x")) == b"x"


def test_cors_preflight_for_what_viewers_send(data_dir, import_root):
    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0",
           "DICOMSVC_CORS_ORIGINS": "http://viewer.example"}  # fmt: skip
    from dicomsvc.config import Config

    with TestClient(create_app(Config.from_env(env))) as client:
        datasets = make_study((("CT", 1),), seed=11)
        post_all(client, datasets)
        ds = datasets[0]
        frame = f"{WEB}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1"
        preflight = client.options(frame, headers={
            "Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept, authorization",
        })  # fmt: skip
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://viewer.example"
        allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
        assert {"accept", "authorization"} <= allowed
        assert "GET" in preflight.headers["access-control-allow-methods"]
        deleting = client.options(f"{WEB}/studies/{ds.StudyInstanceUID}", headers={
            "Origin": "http://viewer.example", "Access-Control-Request-Method": "DELETE"})  # fmt: skip
        assert deleting.status_code == 200
        answer = client.get(f"{WEB}/studies?fuzzymatching=true", headers={
            "Origin": "http://viewer.example", "Accept": 'multipart/related; type="application/dicom+json"'})  # fmt: skip
        assert answer.headers["access-control-allow-origin"] == "http://viewer.example"
        exposed = answer.headers["access-control-expose-headers"].lower()
        assert "warning" in exposed and "etag" in exposed
        assert json.loads(answer.content)[0]["0020000D"]["Value"] == [ds.StudyInstanceUID]
