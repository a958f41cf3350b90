"""Clinical CSVs joined to studies (POST/GET /datasets; dicomsvc/datasets.py): rows matched,
unmatched, ambiguous and duplicated by number; encodings and delimiters; formula-looking cells
kept as data; the anonymized join storing pseudonyms only; limits as JSON 4xx. On PostgreSQL
too: DICOMSVC_TEST_POSTGRES=1."""

import codecs
import csv
import io
import json
import time
import zipfile

import numpy as np
import pytest
from starlette.testclient import TestClient

from app import create_app
from conftest import make_config
from dicomsvc import datasets
from dicomsvc.config import Config
from dicomsvc.dicom.anonymize import new_uid, pseudonym
from indexdb import dict_rows, on_postgres
from studydata import make_study, post_all

ONE = (("CT", 1),)


def post_csv(client, data: bytes, key: str = "PatientID", **fields) -> object:
    form = {"key": key} | {k: v for k, v in fields.items()}
    return client.post("/datasets", files={"csv": ("clinical.csv", data, "text/csv")}, data=form)


def study(client, seed: int, **attributes) -> str:
    """Store a one-instance study; its Study Instance UID."""
    instances = make_study(ONE, seed=seed, **attributes)
    post_all(client, instances)
    return str(instances[0].StudyInstanceUID)


def stored_rows(config: Config, dataset_id: str) -> list[dict]:
    return dict_rows(config, "SELECT * FROM dataset_row WHERE dataset_id = ? ORDER BY row_number, study_instance_uid", (dataset_id,))


def test_rows_matched_unmatched_ambiguous_and_duplicated_by_number(client, config):
    a = study(client, 1)  # PID-1
    b1, b2 = study(client, 2), study(client, 3, PatientID="PID-2")  # one patient, two studies
    study(client, 4, PatientID="PID-3", PatientName="Doe^Jane")
    study(client, 5, PatientID="PID-3", PatientName="Roe^Richard")  # one ID, two patients
    csv = (
        "patient_id,age,score\n"   # row 1: the header
        "PID-1,61,=1+2\n"          # 2 matched (a formula-looking cell is data)
        "PID-2,47,3\n"             # 3 matched: both of PID-2's studies
        ",50,1\n"                  # 4 unmatched: no key
        "PID-404,33,2\n"           # 5 unmatched: no such patient
        "PID-1,62,9\n"             # 6 duplicate of row 2
        "PID-3,70,4\n"             # 7 ambiguous: two patients share the ID
        "\n"                       # 8 blank: not reported
        "PID-405,1\n"              # 9 short (padded), unmatched
    ).encode()  # fmt: skip
    answer = post_csv(client, csv)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert {k: body[k] for k in ("matched", "unmatched", "ambiguous", "duplicates", "rows")} == {
        "matched": 2, "unmatched": [4, 5, 9], "ambiguous": [7], "duplicates": [6], "rows": 7}  # fmt: skip
    assert "PID" not in answer.text  # row numbers, never values
    shown = client.get(f"/datasets/{body['id']}").json()
    assert {k: shown.get(k) for k in body} == body  # the same summary, plus the study UIDs
    assert sorted(shown["studies"]) == sorted([a, b1, b2])
    assert shown["matched"] == 2 and shown["unmatched"] == [4, 5, 9] and shown["key"] == "PatientID"
    assert shown["column"] == "patient_id" and shown["columns"] == ["age", "score"]
    rows = stored_rows(config, body["id"])
    assert {(r["row_number"], r["key_value"], r["study_instance_uid"]) for r in rows} == {
        (2, "PID-1", a), (3, "PID-2", b1), (3, "PID-2", b2)}  # fmt: skip
    assert json.loads(next(r for r in rows if r["row_number"] == 2)["clinical"]) == {"age": "61", "score": "=1+2"}
    listed = client.get("/datasets").json()["items"]
    assert [(d["id"], d["matched"], d["unmatched_count"], d["duplicates_count"]) for d in listed] == [(body["id"], 2, 3, 1)]
    assert client.get("/datasets/" + "x" * 22).status_code == 404


def test_accession_numbers_and_uids(client, config):
    one = study(client, 1)  # ACC1
    study(client, 2, AccessionNumber="ACC9")
    study(client, 3, AccessionNumber="ACC9")  # an accession number of two studies
    answer = post_csv(client, b"Accession #;Grade\nACC1;2\nACC9;3\nACC7;1\n", key="AccessionNumber")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["matched"], body["unmatched"], body["ambiguous"], body["delimiter"]) == (1, [4], [3], ";")
    assert client.get(f"/datasets/{body['id']}").json()["studies"] == [one]
    by_uid = post_csv(client, f"Study UID,Grade\n{one},5\n1.2.3.4,6\n".encode(), key="StudyInstanceUID")
    assert (by_uid.json()["matched"], by_uid.json()["unmatched"]) == (1, [3])


def test_the_key_column_named_or_guessed(client):
    study(client, 1)
    named = post_csv(client, b"Nr,Patient Nr,Age\n1,PID-1,3\n", column="Patient Nr")
    assert named.status_code == 201 and named.json()["matched"] == 1
    loosely = post_csv(client, b"Nr,Patient Nr,Age\n1,PID-1,3\n", column="patient_nr")
    assert loosely.status_code == 201 and loosely.json()["matched"] == 1
    for header in ("PatientID", "patient id", "PATIENT_ID", "MRN", "Patient-ID"):
        guessed = post_csv(client, f"{header},Age\nPID-1,3\n".encode())
        assert guessed.status_code == 201 and guessed.json()["matched"] == 1, header
    assert post_csv(client, b"Nr,Patient Nr\n1,PID-1\n", column="Name").status_code == 400
    twice = post_csv(client, b"MRN,Pat ID\nPID-1,PID-1\n")  # two aliases, neither the keyword
    assert twice.status_code == 400 and "columns 1, 2" in twice.json()["detail"]


CLINICAL = [("PID-1", "Müller, Jörg", "größer\nals 5 €")]  # a delimiter, a line break, non-ASCII


@pytest.mark.parametrize(
    "encoding, delimiter, reported",
    [
        ("utf-8", ",", "utf-8"),
        ("utf-8-sig", ",", "utf-8-sig"),  # UTF-8 with a BOM (Excel's "CSV UTF-8")
        ("cp1252", ";", "cp1252"),  # a German Excel's CSV: Windows-1252, semicolons
        ("utf-16", "\t", "utf-16"),  # Excel's "Unicode text": UTF-16 with a BOM, tabs
        ("utf-8", "\t", "utf-8"),
        ("utf-8", "|", "utf-8"),
    ],
)
def test_encodings_and_delimiters(client, config, encoding, delimiter, reported):
    study(client, 1)
    quote = lambda cell: '"' + cell.replace('"', '""') + '"'  # noqa: E731
    lines = [delimiter.join(["PatientID", quote("Name, full"), "Größe"])]
    lines += [delimiter.join([pid, quote(name), quote(size)]) for pid, name, size in CLINICAL]
    answer = post_csv(client, ("\r\n".join(lines) + "\r\n").encode(encoding))
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["matched"], body["encoding"], body["delimiter"]) == (1, reported, delimiter)
    (row,) = stored_rows(config, body["id"])
    assert json.loads(row["clinical"]) == {"Name, full": "Müller, Jörg", "Größe": "größer\nals 5 €"}


def test_latin1_past_windows_1252(client, config):
    study(client, 1)
    data = "PatientID;Note\nPID-1;caf\xe9 \x81\n".encode("latin-1")  # 0x81: no character in Windows-1252
    body = post_csv(client, data).json()
    assert (body["matched"], body["encoding"]) == (1, "latin-1")
    assert json.loads(stored_rows(config, body["id"])[0]["clinical"]) == {"Note": "caf\xe9 \x81"}


def test_sniffing_prefers_the_delimiter_that_splits_rows_consistently():
    # commas inside the cells of a semicolon file
    text = "PatientID;Diagnosis;Score\nP1;a, b, c;1,5\nP2;d, e;2,5\nP3;f;3,0\n"
    assert datasets.sniff_delimiter(text) == ";"
    assert datasets.sniff_delimiter("PatientID\nP1\nP2\n") == ","  # one column


def test_ragged_rows_are_reported_and_extra_cells_dropped(client, config):
    study(client, 1)
    study(client, 2)
    body = post_csv(client, b"PatientID,Age,\nPID-1,5,,\nPID-2,6,oops,more\n").json()
    assert (body["matched"], body["ragged"]) == (2, [3])
    assert [json.loads(r["clinical"]) for r in stored_rows(config, body["id"])] == [{"Age": "5"}, {"Age": "6"}]


def test_unnamed_columns_are_named_by_position(client, config):
    study(client, 1)
    body = post_csv(client, b",PatientID,Age\n0,PID-1,3\n").json()  # pandas' to_csv() with its index
    assert body["matched"] == 1
    assert json.loads(stored_rows(config, body["id"])[0]["clinical"]) == {"column 1": "0", "Age": "3"}


def test_formula_cells_are_escaped_when_written_out():
    escape = datasets.escape_formula
    assert [escape(c) for c in ("=1+2", "+SUM(A1)", "-2+3", "@cmd", "\t=1", "\r=1", '=HYPERLINK("x")')] == [
        "'=1+2", "'+SUM(A1)", "'-2+3", "'@cmd", "'\t=1", "'\r=1", "'=HYPERLINK(\"x\")"]  # fmt: skip
    assert [escape(c) for c in ("-3", "+1.5e3", "-0,5", "42", "", "a=b", "ANON-1", "-120.5\\-80\\30")] == [
        "-3", "+1.5e3", "-0,5", "42", "", "a=b", "ANON-1", "-120.5\\-80\\30"]  # fmt: skip
    assert escape("-1\\=2") == "'-1\\=2"


def test_anonymized_join_stores_pseudonyms_not_the_original(client, config, data_dir):
    marker, name_marker = "PHI83QX", "PHI84QX"
    original = make_study(ONE, seed=1, PatientID=marker, PatientName=f"{name_marker}^Jo")
    instance = original[0]
    answer = client.post("/dicom?anonymize=true", content=_bytes(instance), headers={"content-type": "application/dicom"})
    assert answer.status_code == 201, answer.text
    secret = client.app.state.svc.config.anon_secret.encode()
    anonymized_uid = new_uid(secret, str(instance.StudyInstanceUID))
    csv = f"MRN,patient_name,Age\n{marker},{name_marker},61\nPHI85QX,x,3\n".encode()
    body = post_csv(client, csv, anonymize="true").json()
    assert (body["matched"], body["unmatched"], body["dropped_columns"]) == (1, [3], ["patient_name"])
    assert client.get(f"/datasets/{body['id']}").json()["studies"] == [anonymized_uid]
    (row,) = stored_rows(config, body["id"])
    assert (row["key_value"], row["study_instance_uid"]) == (pseudonym(secret, marker), anonymized_uid)
    assert json.loads(row["clinical"]) == {"Age": "61"}
    # the anonymized study carries the same pseudonym: clinical row and images stay linked
    found = client.get("/dicomweb/studies", params={"StudyInstanceUID": anonymized_uid}).json()
    assert found[0]["00100020"]["Value"] == [pseudonym(secret, marker)]
    tables = json.dumps(dict_rows(config, "SELECT * FROM dataset") + dict_rows(config, "SELECT * FROM dataset_row"))
    assert marker not in tables and name_marker not in tables
    if not on_postgres(config):  # nothing in the data directory holds the planted identifiers at all
        for path in data_dir.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                assert marker.encode() not in content and name_marker.encode() not in content, path


def test_anonymized_join_to_original_studies_links_the_anonymizers_uid(client, config):
    uid = study(client, 1)
    secret = client.app.state.svc.config.anon_secret.encode()
    body = post_csv(client, f"StudyInstanceUID,Grade\n{uid},2\n".encode(), key="StudyInstanceUID", anonymize="true").json()
    assert body["matched"] == 1
    (row,) = stored_rows(config, body["id"])
    assert row["key_value"] == row["study_instance_uid"] == new_uid(secret, uid)
    by_accession = post_csv(client, b"AccessionNumber,Grade\nACC1,2\n", key="AccessionNumber", anonymize="true").json()
    (row,) = stored_rows(config, by_accession["id"])  # Accession Number has no pseudonym (PS3.15: Z)
    assert row["key_value"] == row["study_instance_uid"] == new_uid(secret, uid)
    assert "ACC1" not in json.dumps(stored_rows(config, by_accession["id"]))


def test_bad_requests_are_json_4xx(client):
    def refused(answer, status):
        assert answer.status_code == status, answer.text
        assert set(answer.json()) == {"error", "detail"}
        return answer.json()["detail"]

    refused(post_csv(client, b"PatientID\nP1\n", key="PatientName"), 400)
    refused(client.post("/datasets", content=b"PatientID\nP1\n", headers={"content-type": "text/csv"}), 415)
    refused(client.post("/datasets", files={"other": ("x.csv", b"a", "text/csv")}, data={"key": "PatientID"}), 400)
    refused(client.post("/datasets", data={"key": "PatientID"}), 415)  # urlencoded: no file
    assert "header" in refused(post_csv(client, b"PID-1,61\nPID-2,62\n"), 400)  # no header: nothing names the key
    assert "looks like data" in refused(post_csv(client, b"1.2.3,61\n1.2.4,62\n", column="1.2.3"), 400)
    refused(post_csv(client, b""), 400)
    refused(post_csv(client, b"PatientID,Age\n"), 400)  # a header, no rows
    refused(post_csv(client, b"PatientID,Age,Age\nP1,2,3\n"), 400)  # a column named twice
    assert "line 3" in refused(post_csv(client, b'PatientID,Age\nP1,2\nP2,"3\nP3,4\n'), 400)  # a quote left open
    refused(post_csv(client, b'PatientID,Age\nP1,"2"x\n'), 400)  # text after a closing quote
    refused(post_csv(client, b"PatientID,Age\nP1,2\x00\n"), 400)  # a NUL: not text
    refused(client.get("/datasets", params={"limit": "0"}), 400)
    # a mistyped anonymize is refused, not taken as "keep the identifiers"; a field given twice too
    assert "anonymize" in refused(post_csv(client, b"PatientID\nP1\n", anonymize="ture"), 400)
    assert "anonymize" in refused(client.post("/datasets?anonymize=maybe", files={"csv": ("c.csv", b"PatientID\nP1\n")},
                                              data={"key": "PatientID"}), 400)  # fmt: skip
    twice = client.post("/datasets", files={"csv": ("c.csv", b"PatientID\nP1\n")}, data={"key": ["StudyInstanceUID", "PatientID"]})
    assert "key" in refused(twice, 400)
    assert post_csv(client, b"PatientID\nP1\n", anonymize="off").status_code == 201


@pytest.mark.parametrize(
    "setting, csv",
    [
        ("DICOMSVC_DATASET_MAX_BYTES", b"PatientID,Age\n" + b"P1,2\n" * 400),
        ("DICOMSVC_DATASET_MAX_ROWS", b"PatientID,Age\n" + b"P1,2\n" * 11),
        ("DICOMSVC_DATASET_MAX_COLUMNS", b"PatientID," + b",".join(b"c%d" % i for i in range(10)) + b"\nP1\n"),
    ],
)
def test_limits_are_413(data_dir, import_root, setting, csv):
    limits = {"DICOMSVC_DATASET_MAX_BYTES": "1000", "DICOMSVC_DATASET_MAX_ROWS": "10", "DICOMSVC_DATASET_MAX_COLUMNS": "10"}
    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0"}
    with TestClient(create_app(Config.from_env(env | limits))) as client:
        answer = post_csv(client, csv)
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"] == "too_large" and setting in answer.json()["detail"]
        fits = post_csv(client, b"PatientID,Age\nP1,2\n")
        assert fits.status_code == 201, fits.text
        huge = post_csv(client, b"PatientID,Age\n" + b"P1,2\n" * 300_000)  # past the request's room: refused streaming
        assert huge.status_code == 413


def test_in_worker_processes(data_dir, import_root):
    """The join runs in a worker process: its answer and its errors cross the process boundary."""
    with TestClient(create_app(make_config(data_dir, import_root, workers=1))) as client:
        uid = study(client, 1)
        body = post_csv(client, b"PatientID,Age\nPID-1,5\n").json()
        assert client.get(f"/datasets/{body['id']}").json()["studies"] == [uid]
        assert post_csv(client, b"Nothing,Here\n1,2\n").status_code == 400
        archive = exported(client, body["id"], include=["npy", "dicom"])  # its pages written by the worker
        assert len(archive.namelist()) == 3


def test_audit_names_the_dataset_only(client):
    study(client, 1)
    body = post_csv(client, b"PatientID,Age\nPID-1,5\n").json()
    client.get(f"/datasets/{body['id']}")
    records = client.get("/audit").json()["items"]
    mine = [(r["action"], r["route"], r["dataset"], r["status"]) for r in records if r["route"] and "datasets" in r["route"]]
    assert mine[::-1] == [("upload", "/datasets", body["id"], 201), ("view", "/datasets/{dataset}", body["id"], 200)]
    assert "PID-1" not in json.dumps(records[:2])
    by_resource = client.get("/audit", params={"resource": body["id"]}).json()["items"]
    assert len(by_resource) == 2


def test_own_visibility_joins_and_shows_only_the_callers(monkeypatch, data_dir, import_root):
    from authhelpers import bearer, token_app
    from studydata import to_bytes

    users = {"ulla": "uploader", "uwe": "uploader", "adam": "admin"}
    with token_app(monkeypatch, data_dir, import_root, users, visibility="own") as (client, tokens):
        ulla, uwe, adam = (bearer(tokens[u]) for u in ("ulla", "uwe", "adam"))
        mine = make_study(ONE, seed=1)
        theirs = make_study(ONE, seed=2)
        for ds, who in ((mine[0], ulla), (theirs[0], uwe)):
            stored = client.post("/dicom", content=to_bytes(ds), headers={"content-type": "application/dicom"} | who)
            assert stored.status_code == 201
        csv = {"csv": ("c.csv", b"PatientID,Age\nPID-1,1\nPID-2,2\n", "text/csv")}
        body = client.post("/datasets", files=csv, data={"key": "PatientID"}, headers=ulla).json()
        assert (body["matched"], body["unmatched"]) == (1, [3])  # uwe's study is not ulla's to join
        assert client.get(f"/datasets/{body['id']}", headers=ulla).json()["studies"] == [str(mine[0].StudyInstanceUID)]
        assert client.get(f"/datasets/{body['id']}", headers=uwe).status_code == 404
        assert client.get("/datasets", headers=uwe).json()["items"] == []
        assert [d["created_by"] for d in client.get("/datasets", headers=adam).json()["items"]] == ["ulla"]
        everything = client.post("/datasets", files=csv, data={"key": "PatientID"}, headers=adam).json()
        assert everything["matched"] == 2


def test_anonymize_always_anonymizes_datasets_and_a_csv_sent_as_a_field(data_dir, import_root):
    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0",
           "DICOMSVC_ANONYMIZE": "always"}  # fmt: skip
    config = Config.from_env(env)
    with TestClient(create_app(config)) as client:
        instance = make_study(ONE, seed=1, PatientID="PHI86QX")[0]
        assert client.post("/dicom", content=_bytes(instance), headers={"content-type": "application/dicom"}).status_code == 201
        secret = client.app.state.svc.config.anon_secret.encode()
        # no filename: a plain form field (curl -F 'csv=<file.csv')
        answer = client.post("/datasets", files={"csv": (None, b"(0010,0020);Age\nPHI86QX;5\n")}, data={"key": "PatientID"})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        (row,) = stored_rows(config, body["id"])
        assert (body["matched"], row["key_value"]) == (1, pseudonym(secret, "PHI86QX"))
        assert client.get(f"/datasets/{body['id']}").json()["anonymized"] is True


def _bytes(ds) -> bytes:
    from studydata import to_bytes

    return to_bytes(ds)


def test_bom_only_decodes():
    assert datasets.decode(codecs.BOM_UTF8 + b"a") == ("a", "utf-8-sig")


# Dataset export for ML (POST /datasets/{dataset}/export, GET /jobs/{job}/result) ---------------


def finished(client, job_id: str) -> dict:
    deadline = time.monotonic() + 60  # a liveness bound, not a timing threshold
    while (job := client.get(f"/jobs/{job_id}").json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def exported(client, dataset_id: str, **body) -> zipfile.ZipFile:
    answer = client.post(f"/datasets/{dataset_id}/export", json=body)
    assert answer.status_code == 202, answer.text
    job = finished(client, answer.json()["job"])
    assert job["status"] == "done" and job["results"][0]["status"] == "created", job
    result = client.get(f"/jobs/{job['id']}/result")
    assert result.status_code == 200 and result.headers["content-type"] == "application/zip", result.text
    return zipfile.ZipFile(io.BytesIO(result.content))


def test_export_arrays_renderings_files_and_manifest(client):
    instances = make_study((("CT", 3), ("MR", 2)), seed=1, ImagePositionPatient=["-120.5", "-80", "30"],
                           PixelSpacing=["0.5", "0.5"], SliceThickness="2.5")  # fmt: skip
    post_all(client, instances)
    other = make_study(ONE, seed=2)
    post_all(client, other)  # a CT study of another patient: in the dataset, not exported under the filter
    body = post_csv(client, b"PatientID,Outcome,Note\nPID-1,1,=1+2\nPID-2,0,x\n").json()
    only = {"Modality": "CT", "StudyInstanceUID": str(instances[0].StudyInstanceUID)}
    archive = exported(client, body["id"], include=["npy", "png", "dicom"], filter=only)
    manifest = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    cts = [ds for ds in instances if ds.Modality == "CT"]
    assert sorted(r["SOPInstanceUID"] for r in manifest) == sorted(str(ds.SOPInstanceUID) for ds in cts)
    for ds in cts:
        (row,) = [r for r in manifest if r["SOPInstanceUID"] == str(ds.SOPInstanceUID)]
        assert row["path_npy"] == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.npy"
        assert (row["Outcome"], row["Note"], row["csv_row"], row["key"]) == ("1", "'=1+2", "2", "PID-1")
        assert (row["ImagePositionPatient"], row["PixelSpacing"], row["SliceThickness"]) == ("-120.5\\-80\\30", "0.5\\0.5", "2.5")
        array = np.load(io.BytesIO(archive.read(row["path_npy"])))
        assert array.dtype == ds.pixel_array.dtype and np.array_equal(array, ds.pixel_array)
        assert archive.read(row["path_dicom"]) == _bytes(ds)
        stored_id = client.get("/dicom", params={"SOPInstanceUID": str(ds.SOPInstanceUID)}).json()["items"][0]["id"]
        assert archive.read(row["path_png"]) == client.get("/image", params={"id": stored_id}).content
    assert len(archive.namelist()) == 1 + 3 * len(cts)
    rescaled = exported(client, body["id"], include=["npy"], rescale=True)
    rows = list(csv.DictReader(io.StringIO(rescaled.read("manifest.csv").decode())))
    assert len(rows) == len(instances) + 1 and all(not r["path_png"] and not r["path_dicom"] for r in rows)
    first = {str(ds.SOPInstanceUID) for ds in instances}  # PID-1's; the other row is PID-2's
    assert sorted((r["SOPInstanceUID"] in first, r["key"], r["Outcome"], r["csv_row"]) for r in rows) == sorted(
        [(True, "PID-1", "1", "2")] * len(instances) + [(False, "PID-2", "0", "3")])  # fmt: skip
    one = next(r for r in rows if r["SOPInstanceUID"] == str(cts[0].SOPInstanceUID))
    expected = cts[0].pixel_array.astype(np.float32) * float(cts[0].RescaleSlope) + float(cts[0].RescaleIntercept)
    assert np.array_equal(np.load(io.BytesIO(rescaled.read(one["path_npy"]))), expected)


def test_export_of_an_anonymized_dataset_holds_no_planted_marker(client):
    marker = "PHI87QX"
    instances = make_study((("CT", 2),), seed=1, PatientID=marker, PatientName=f"{marker}^Jo", AccessionNumber=marker,
                           StudyDescription=marker, ReferringPhysicianName=f"{marker}^Doc")  # fmt: skip
    for ds in instances:
        stored = client.post("/dicom?anonymize=true", content=_bytes(ds), headers={"content-type": "application/dicom"})
        assert stored.status_code == 201
    body = post_csv(client, f"MRN,Name,Grade\n{marker},{marker},3\n".encode(), anonymize="true").json()
    assert body["matched"] == 1
    archive = exported(client, body["id"], include=["npy", "png", "dicom"], anonymize=True)
    assert len(archive.namelist()) == 1 + 3 * 2
    for name in archive.namelist():
        assert marker not in name and marker.encode() not in archive.read(name), name
    manifest = archive.read("manifest.csv").decode()
    assert "Grade" in manifest and "Name" not in manifest.splitlines()[0].split(",")


def test_anonymized_export_of_studies_stored_as_they_came(client):
    """anonymize: true over studies stored with their identifiers: each instance is anonymized on
    the way out (the service's secret: the UIDs and pseudonyms the anonymizer gives everywhere), and
    no planted marker, original UID or date is anywhere in the ZIP; the pixels are the original's;
    the manifest's key is the anonymizer's pseudonym of the patient."""
    from pydicom import dcmread

    marker, other = "PHI88QX", "PHI89QX"
    birth, day = "19450317", "20190704"
    instances = make_study((("CT", 2), ("MR", 1)), seed=1, PatientID=marker, PatientName=f"{marker}^Jo",
                           AccessionNumber=marker, StudyDescription=f"{marker} chest", PatientBirthDate=birth,
                           StudyDate=day, ReferringPhysicianName=f"{marker}^Doc", StudyID=marker)  # fmt: skip
    post_all(client, instances)
    csv_text = f"PatientID,PatientName,Grade,=cmd\n{marker},{other},3,-2+3\n".encode()
    body = post_csv(client, csv_text).json()  # joined as stored: the rows hold the original key
    assert body["matched"] == 1
    secret = client.app.state.svc.config.anon_secret.encode()
    archive = exported(client, body["id"], include=["npy", "png", "dicom"], anonymize=True)
    originals = {str(ds.SOPInstanceUID): ds for ds in instances}
    secret_uids = {str(ds.StudyInstanceUID) for ds in instances} | {str(ds.SeriesInstanceUID) for ds in instances}
    forbidden = [marker, other, birth, day, *originals, *secret_uids]
    assert len(archive.namelist()) == 1 + 3 * len(instances)
    for name in archive.namelist():
        content = archive.read(name)
        for planted in forbidden:
            assert planted not in name and planted.encode() not in content, (name, planted)
    manifest = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert list(manifest[0])[-2:] == ["Grade", "'=cmd"]  # PatientName left out; the header escaped too
    assert len(manifest) == len(instances)
    for row in manifest:
        ds = dcmread(io.BytesIO(archive.read(row["path_dicom"])))
        assert (row["key"], str(ds.PatientID)) == (pseudonym(secret, marker), pseudonym(secret, marker))
        assert ds.PatientIdentityRemoved == "YES"
        assert (row["StudyInstanceUID"], row["SeriesInstanceUID"], row["SOPInstanceUID"]) == (
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)  # fmt: skip
        assert row["path_npy"] == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.npy"
        (original,) = [o for uid, o in originals.items() if new_uid(secret, uid) == ds.SOPInstanceUID]
        assert ds.StudyInstanceUID == new_uid(secret, str(original.StudyInstanceUID))
        assert (row["Grade"], row["'=cmd"]) == ("3", "'-2+3")
        array = np.load(io.BytesIO(archive.read(row["path_npy"])))
        assert np.array_equal(array, original.pixel_array) and np.array_equal(ds.pixel_array, original.pixel_array)
        stored_id = client.get("/dicom", params={"SOPInstanceUID": str(original.SOPInstanceUID)}).json()["items"][0]["id"]
        assert archive.read(row["path_png"]) == client.get("/image", params={"id": stored_id}).content


def test_anonymized_export_leaves_out_burned_in_pixels_unless_allowed(client):
    """An instance whose pixels may show patient data (PS3.15 E.1.1: Burned In Annotation YES) is
    not exported anonymized unless the export allows it (as an ingest's allow_burned_in)."""
    instances = make_study(ONE, seed=1)
    instances[0].BurnedInAnnotation = "YES"
    post_all(client, instances)
    body = post_csv(client, b"PatientID,Age\nPID-1,3\n").json()
    url = f"/datasets/{body['id']}/export"
    job = finished(client, client.post(url, json={"include": ["npy"], "anonymize": True}).json()["job"])
    assert job["results"][0]["detail"] == "0 instance(s) exported, 1 left out (burned_in_annotation: 1)"
    archive = exported(client, body["id"], include=["npy"], anonymize=True, allow_burned_in=True)
    assert len(archive.namelist()) == 2


def test_export_refusals(client):
    post_all(client, make_study(ONE, seed=1))
    body = post_csv(client, b"PatientID,Age\nPID-1,3\n").json()
    url = f"/datasets/{body['id']}/export"
    for bad in ({"include": []}, {"include": ["jpeg"]}, {"rescale": "yes"}, {"filter": {"PatientName": "x"}}, {"other": 1}):
        assert client.post(url, json=bad).status_code == 400, bad
    assert client.post(url, json={"allow_burned_in": 1}).status_code == 400
    assert client.post("/datasets/" + "x" * 22 + "/export", json={}).status_code == 404
    assert client.get("/jobs/" + "y" * 22 + "/result").status_code == 404
    ingest = client.post("/dicom?async=true", content=_bytes(make_study(ONE, seed=3)[0]), headers={"content-type": "application/dicom"})
    job = finished(client, ingest.json()["job"])
    assert client.get(f"/jobs/{job['id']}/result").status_code == 404  # an import has no result


@pytest.mark.parametrize("zip64", [False, True])
def test_the_streamed_zip_reads_back(tmp_path, monkeypatch, zip64):
    """The ZIP writer (exports.zip_stream): members, names and bytes as written; with the ZIP64
    limits lowered, its ZIP64 records (sizes, offsets, the member count) read back as well."""
    from dicomsvc import exports

    if zip64:
        monkeypatch.setattr(exports, "ZIP64_LIMIT", 1000)
        monkeypatch.setattr(exports, "ZIP64_COUNT", 3)
    (tmp_path / "files" / "1.2" / "3.4").mkdir(parents=True)
    (tmp_path / "manifest.csv").write_text("path\n")
    contents = {"1.2/3.4/5.dcm": bytes(range(256)) * 20, "1.2/3.4/5.npy": b"", "1.2/3.4/6.png": b"\x89PNG" * 300}
    for name, data in contents.items():
        (tmp_path / "files" / name).write_bytes(data)
    data = b"".join(exports.zip_stream(tmp_path))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ["manifest.csv", *sorted(contents)]
        assert {n: archive.read(n) for n in contents} == contents
    assert not [p for p in tmp_path.iterdir() if p.name not in ("files", "manifest.csv")]  # its temporary file is gone


def test_delete_removes_the_dataset_and_its_export_results_never_the_studies(client, config):
    uid = study(client, 1)
    body = post_csv(client, b"PatientID,Age\nPID-1,5\n").json()
    exported(client, body["id"], include=["npy"])
    job_id = client.get("/jobs").json()["items"][0]["id"]
    assert client.get(f"/jobs/{job_id}/result").status_code == 200
    answer = client.delete(f"/datasets/{body['id']}")
    assert answer.status_code == 204, answer.text
    assert client.get(f"/datasets/{body['id']}").status_code == 404
    assert client.delete(f"/datasets/{body['id']}").status_code == 404
    assert client.get("/datasets").json()["items"] == []
    assert stored_rows(config, body["id"]) == []
    assert [s["0020000D"]["Value"] for s in client.get("/dicomweb/studies").json()] == [[uid]]  # the study stays
    gone = client.get(f"/jobs/{job_id}/result")
    assert gone.status_code == 410 and gone.json()["error"] == "gone", gone.text
    assert not (config.data_dir / "exports" / job_id).exists()
    records = client.get("/audit", params={"resource": body["id"]}).json()["items"]
    assert ("delete", "/datasets/{dataset}", 204) in [(r["action"], r["route"], r["status"]) for r in records]


def test_delete_is_for_the_uploader_or_an_admin(monkeypatch, data_dir, import_root):
    from authhelpers import bearer, token_app

    users = {"ulla": "uploader", "uwe": "uploader", "rita": "reader", "adam": "admin"}
    with token_app(monkeypatch, data_dir, import_root, users) as (client, tokens):
        ulla, uwe, rita, adam = (bearer(tokens[u]) for u in users)
        csv_part = {"csv": ("c.csv", b"PatientID,Age\nPID-1,1\n", "text/csv")}
        ids = [client.post("/datasets", files=csv_part, data={"key": "PatientID"}, headers=ulla).json()["id"]
               for _ in range(2)]  # fmt: skip
        assert client.delete(f"/datasets/{ids[0]}", headers=rita).status_code == 403  # readers delete nothing
        refused = client.delete(f"/datasets/{ids[0]}", headers=uwe)
        assert refused.status_code == 403 and set(refused.json()) == {"error", "detail"}
        assert client.delete(f"/datasets/{ids[0]}", headers=ulla).status_code == 204
        assert client.delete(f"/datasets/{ids[1]}", headers=adam).status_code == 204


def test_export_results_expire(client, config):
    """DICOMSVC_EXPORT_RESULT_SECONDS after its job finished an export's result is removed by the
    sweep (exports.expire) and GET /jobs/{job}/result answers 410; before that it is kept."""
    from dicomsvc import exports

    study(client, 1)
    body = post_csv(client, b"PatientID,Age\nPID-1,5\n").json()
    exported(client, body["id"], include=["npy"])
    job_id = client.get("/jobs").json()["items"][0]["id"]
    svc = client.app.state.svc
    assert client.portal.call(exports.expire, svc) == 0  # young: kept
    assert client.get(f"/jobs/{job_id}/result").status_code == 200
    later = time.time() + config.export_result_seconds + 1
    assert client.portal.call(exports.expire, svc, later) == 1
    assert not (config.data_dir / "exports" / job_id).exists()
    gone = client.get(f"/jobs/{job_id}/result")
    assert gone.status_code == 410 and set(gone.json()) == {"error", "detail"}
    finished_at = client.get(f"/jobs/{job_id}").json()["finished_at"]
    job = {"status": "done", "finished_at": finished_at, "dataset_exists": True}
    from datetime import datetime

    ended = datetime.fromisoformat(finished_at).timestamp()
    assert exports._expired(job, ended + 1) and not exports._expired(job, ended - 1)
    assert not exports._expired(job | {"status": "running"}, ended + 1)


def test_expired_by_time_is_410_before_any_sweep(data_dir, import_root):
    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0",
           "DICOMSVC_EXPORT_RESULT_SECONDS": "1"}  # fmt: skip
    with TestClient(create_app(Config.from_env(env))) as client:
        study(client, 1)
        body = post_csv(client, b"PatientID,Age\nPID-1,5\n").json()
        answer = client.post(f"/datasets/{body['id']}/export", json={"include": ["npy"]})
        job = finished(client, answer.json()["job"])
        ended = time.time()
        while time.time() < ended + 1.5:  # past the second it is kept
            time.sleep(0.1)
        assert client.get(f"/jobs/{job['id']}/result").status_code == 410


def test_export_manifest_escapes_every_formula_start_and_keeps_line_breaks(client):
    """OWASP CSV Injection: manifest cells (and header names) starting with =, +, -, @, a tab or a
    carriage return are written with a leading ' ; plain negative numbers stay numbers; a quoted
    cell's line breaks, delimiters and quotes survive the round trip."""
    study(client, 1)
    cells = ["@SUM(A1)", "\t=1", "\r=2", "+cmd", "-1", "-2.5e3", 'multi\nline, "quoted"']
    header = ["PatientID", *(f"c{i}" for i in range(len(cells))), "@head"]
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, ["PID-1", *cells, "x"]])
    body = post_csv(client, buffer.getvalue().encode()).json()
    assert body["matched"] == 1
    archive = exported(client, body["id"], include=["npy"])
    rows = list(csv.reader(io.StringIO(archive.read("manifest.csv").decode(), newline="")))
    assert rows[0][-1] == "'@head"
    assert rows[1][-len(cells) - 1 : -1] == ["'@SUM(A1)", "'\t=1", "'\r=2", "'+cmd", "-1", "-2.5e3", 'multi\nline, "quoted"']


def test_the_listing_is_paged_like_jobs(client):
    made = [post_csv(client, b"PatientID,Age\nPID-1,5\n").json()["id"] for _ in range(3)]
    first = client.get("/datasets", params={"limit": "2"}).json()
    assert (len(first["items"]), first["next_offset"]) == (2, 2)
    rest = client.get("/datasets", params={"limit": "2", "offset": str(first["next_offset"])}).json()
    assert (len(rest["items"]), rest["next_offset"]) == (1, None)
    assert sorted(d["id"] for d in first["items"] + rest["items"]) == sorted(made)


def test_anonymized_dataset_over_studies_stored_as_they_came_exports_them_anonymized(client):
    """A CSV posted with anonymize=true links studies stored as they came by the anonymizer's UID of
    them (it keeps no original UID); an anonymized export finds them all the same and anonymizes
    them on the way out. A study also stored anonymized is exported once (that copy)."""
    from pydicom import dcmread

    marker = "PHI91QX"
    kept_as_is = make_study((("CT", 2),), seed=1, PatientID=marker, PatientName=f"{marker}^Jo", StudyDescription=marker)
    post_all(client, kept_as_is)
    twice = make_study(ONE, seed=2)  # PID-2: stored as it came and anonymized as well
    post_all(client, twice)
    assert client.post("/dicom?anonymize=true", content=_bytes(twice[0]), headers={"content-type": "application/dicom"}).status_code == 201
    body = post_csv(client, f"PatientID,Grade\n{marker},3\nPID-2,4\n".encode(), anonymize="true").json()
    assert body["matched"] == 2
    secret = client.app.state.svc.config.anon_secret.encode()
    plain = exported(client, body["id"], include=["npy"])  # not anonymizing: only what is stored anonymized
    assert len(plain.namelist()) == 2
    archive = exported(client, body["id"], include=["npy", "dicom"], anonymize=True)
    manifest = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert sorted((r["key"], r["Grade"]) for r in manifest) == sorted(
        [(pseudonym(secret, marker), "3")] * 2 + [(pseudonym(secret, "PID-2"), "4")])  # fmt: skip
    for name in archive.namelist():
        assert marker.encode() not in archive.read(name) and marker not in name
        assert all(str(ds.StudyInstanceUID) not in name for ds in kept_as_is + twice)
    for row in manifest:
        ds = dcmread(io.BytesIO(archive.read(row["path_dicom"])))
        assert (str(ds.PatientID), ds.PatientIdentityRemoved) == (row["key"], "YES")
    originals = {new_uid(secret, str(ds.SOPInstanceUID)): ds for ds in kept_as_is}
    for row in manifest:
        if row["SOPInstanceUID"] in originals:
            array = np.load(io.BytesIO(archive.read(row["path_npy"])))
            assert np.array_equal(array, originals[row["SOPInstanceUID"]].pixel_array)


def test_export_results_are_sealed_at_rest_with_encryption(data_dir, import_root):
    """DICOMSVC_ENCRYPTION_KEY: a finished export's files (manifest, .dcm, .npy, .png) are sealed
    in the data directory like blobs (plaintext only while the export is written); the ZIP sent
    holds the plaintext."""
    import base64

    from dicomsvc.storage.crypt import is_sealed

    marker = "PHI92QX"
    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0",
           "DICOMSVC_ENCRYPTION_KEY": base64.b64encode(bytes(range(32))).decode()}  # fmt: skip
    with TestClient(create_app(Config.from_env(env))) as client:
        instance = make_study(ONE, seed=1, PatientID=marker)[0]
        post_all(client, [instance])
        body = post_csv(client, f"PatientID,Note\n{marker},{marker}\n".encode()).json()
        archive = exported(client, body["id"], include=["npy", "png", "dicom"])
        row = next(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
        assert (row["key"], row["Note"]) == (marker, marker)
        assert archive.read(row["path_dicom"]) == _bytes(instance)
        assert np.array_equal(np.load(io.BytesIO(archive.read(row["path_npy"]))), instance.pixel_array)
    at_rest = [p for p in (data_dir / "exports").rglob("*") if p.is_file()]
    assert len(at_rest) == 4
    for path in at_rest:
        content = path.read_bytes()
        assert is_sealed(content[:8]) and marker.encode() not in content, path


def test_invalid_uids_cannot_climb_out_of_the_export(client, config):
    """An instance whose UIDs are not valid (stored with a warning) names its export files by a hash
    of them: nothing is written outside the export's folder, and no ZIP member climbs out (zip slip);
    the manifest still gives the UIDs as stored."""
    ds = make_study(ONE, seed=1)[0]
    ds.StudyInstanceUID, ds.SOPInstanceUID = "../../../../escaped", "1.2/../3"
    answer = client.post("/dicom", content=_bytes(ds), headers={"content-type": "application/dicom"})
    assert answer.status_code == 201 and answer.json()["warnings"], answer.text
    body = post_csv(client, b"PatientID,Age\nPID-1,5\n").json()
    archive = exported(client, body["id"], include=["npy", "dicom"])
    assert len(archive.namelist()) == 3
    for name in archive.namelist():
        assert ".." not in name and not name.startswith("/"), name
    row = next(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert (row["StudyInstanceUID"], row["SOPInstanceUID"]) == ("../../../../escaped", "1.2/../3")
    assert row["path_dicom"].startswith("uid-") and row["path_dicom"].endswith(".dcm")
    assert not list(config.data_dir.parent.rglob("escaped*"))


def test_only_job_ids_are_taken_from_the_bucket_listing():
    """exports.expire removes result_dir(<job>) for every job id under exports/ in the bucket: a key
    naming '..' (or anything not a job id) must never become one (it would remove the data folder)."""
    from types import SimpleNamespace

    from dicomsvc import exports

    keys = ["exports/AbC123/manifest.csv", "exports/AbC123/files/1.2/3.npy", "exports/../x", "exports/./y",
            "exports/a b/z", "exports/lone"]  # fmt: skip
    blobs = SimpleNamespace(remote=SimpleNamespace(listing=lambda under: [SimpleNamespace(key=k) for k in keys]))
    assert exports._remote_results(blobs) == ["AbC123"]


@pytest.mark.parametrize("name", ["CT_small.dcm", "mlut_18.dcm", "emri_small.dcm"])
def test_exported_arrays_equal_pydicoms_with_and_without_rescale(client, name):
    """pydicom's own files: `rescale: false` gives pixel_array as it is (dtype and every frame),
    `rescale: true` pydicom's apply_modality_lut (PS3.3 C.11.1: (0028,1052)/(0028,1053) Rescale
    Intercept/Slope, or the (0028,3000) Modality LUT Sequence) as float32."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    path = get_testdata_file(name)
    original = dcmread(path)
    with open(path, "rb") as file:
        data = file.read()
    stored = client.post("/dicom", content=data, headers={"content-type": "application/dicom"})
    assert stored.status_code == 201, stored.text
    uid = str(original.StudyInstanceUID)
    body = post_csv(client, f"StudyInstanceUID,Grade\n{uid},2\n".encode(), key="StudyInstanceUID").json()
    assert body["matched"] == 1, body
    modality = apply_modality_lut(original.pixel_array, original).astype(np.float32)
    for rescale, expected in ((False, original.pixel_array), (True, modality)):
        archive = exported(client, body["id"], include=["npy"], rescale=rescale)
        (row,) = csv.DictReader(io.StringIO(archive.read("manifest.csv").decode()))
        array = np.load(io.BytesIO(archive.read(row["path_npy"])))
        assert array.dtype == expected.dtype and np.array_equal(array, expected), (name, rescale)
