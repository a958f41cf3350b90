"""Studies and series as first-class rows (storage/studies.py): right after every ingest,
anonymization and delete, and filled in when an older database is upgraded in place."""

import sqlite3
import struct
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app import create_app
from indexdb import index
from studydata import make_study, post_all

STUDY_COLUMNS = "study_instance_uid, patient_id, patient_name, study_date, study_time, accession_number, " \
    "referring_physician_name, study_id, study_description, modalities, series_count, instance_count"  # fmt: skip
SERIES_COLUMNS = "study_instance_uid, series_instance_uid, modality, series_number, series_description, " \
    "pps_start_date, pps_start_time, instance_count"  # fmt: skip


def db(config):
    return index(config)


def studies(config) -> dict[str, tuple]:
    with db(config) as conn:
        return {r[0]: r for r in conn.execute(f"SELECT {STUDY_COLUMNS} FROM study")}


def series(config) -> dict[str, tuple]:
    with db(config) as conn:
        return {r[1]: r for r in conn.execute(f"SELECT {SERIES_COLUMNS} FROM series")}


def assert_consistent(config) -> None:
    """The summaries say what a scan of the instances says."""
    with db(config) as conn:
        expected_series = set(conn.execute(
            "SELECT study_instance_uid, series_instance_uid, COUNT(DISTINCT sop_instance_uid) FROM dicom GROUP BY 1, 2"
        ).fetchall())  # fmt: skip
        assert set(conn.execute("SELECT study_instance_uid, series_instance_uid, instance_count FROM series")) == expected_series
        expected_studies = set(conn.execute(
            "SELECT study_instance_uid, COUNT(DISTINCT series_instance_uid), COUNT(DISTINCT sop_instance_uid) FROM dicom GROUP BY 1"
        ).fetchall())  # fmt: skip
        assert set(conn.execute("SELECT study_instance_uid, series_count, instance_count FROM study")) == expected_studies


def revision(config, study: str) -> int:
    with db(config) as conn:
        return conn.execute("SELECT revision FROM study WHERE study_instance_uid = ?", (study,)).fetchone()[0]


def test_summaries_follow_ingest_anonymize_and_delete(client, config):
    a = make_study((("CT", 3), ("MR", 2)), seed=1)
    b = make_study((("CT", 1),), seed=2, PatientName="Roe^Richard")
    ids = post_all(client, a + b)
    study_a, study_b = a[0].StudyInstanceUID, b[0].StudyInstanceUID
    rows = studies(config)
    assert rows[study_a] == (
        study_a, "PID-1", "Doe^Jane", "20240102", "101500", "ACC1", "Ref^Doctor", "S1", "Chest and head", "CT\\MR", 2, 5
    )  # fmt: skip
    assert rows[study_b][9:] == ("CT", 1, 1)
    mr = a[3].SeriesInstanceUID
    assert series(config)[mr] == (study_a, mr, "MR", 2, "MR series 2", "20240102", "101000", 2)
    assert_consistent(config)
    # an anonymized copy is a new instance of a new study; the original's study is unchanged
    before = revision(config, study_a)
    copy = client.post(f"/dicom/{ids[0]}/anonymize")
    assert copy.status_code == 201
    assert len(studies(config)) == 3 and studies(config)[study_a][10:] == (2, 5)
    assert revision(config, study_a) == before
    assert_consistent(config)
    # deleting instances: counts, then the series, then the modality go
    assert client.delete(f"/dicom/{ids[3]}").status_code == 204
    assert series(config)[mr][-1] == 1 and studies(config)[study_a][10:] == (2, 4)
    assert revision(config, study_a) > before
    assert client.delete(f"/dicom/{ids[4]}").status_code == 204
    assert mr not in series(config)
    assert studies(config)[study_a][9:] == ("CT", 1, 3)
    assert_consistent(config)
    # a filtered delete: the whole study goes
    assert client.delete(f"/dicom?StudyInstanceUID={study_b}").json() == {"deleted": 1}
    assert study_b not in studies(config)
    assert_consistent(config)


def test_study_attributes_are_the_newest_instances(client, config):
    first, second = make_study((("CT", 2),), seed=3)
    study, series_uid = first.StudyInstanceUID, first.SeriesInstanceUID
    # the indexed ones too (schema.sql: study_by_patient, study_by_date, study_by_accession,
    # series_by_modality), which the upserts leave to a statement of their own
    second.StudyDescription, second.PatientID, second.AccessionNumber = "Corrected", "PID-new", "ACC-new"
    second.StudyDate, second.StudyTime, second.Modality = "20250303", "090000", "MR"
    (first_id,) = post_all(client, [first])
    assert studies(config)[study][1:9] == ("PID-3", "Doe^Jane", "20240102", "101500", "ACC3", "Ref^Doctor", "S3", "Chest and head")
    (second_id,) = post_all(client, [second])
    assert studies(config)[study][1:10] == (
        "PID-new", "Doe^Jane", "20250303", "090000", "ACC-new", "Ref^Doctor", "S3", "Corrected", "MR"
    )  # fmt: skip
    assert series(config)[series_uid][2] == "MR"
    found = client.get("/dicomweb/studies", params={"PatientID": "PID-new", "AccessionNumber": "ACC-new"}).json()
    assert [s["0020000D"]["Value"] for s in found] == [[study]]
    assert client.get("/dicomweb/studies", params={"PatientID": "PID-3"}).json() == []
    # the newest gone, the first's attributes are back (a delete's refresh)
    assert client.delete(f"/dicom/{second_id}").status_code == 204
    assert studies(config)[study][1:10] == (
        "PID-3", "Doe^Jane", "20240102", "101500", "ACC3", "Ref^Doctor", "S3", "Chest and head", "CT"
    )  # fmt: skip
    assert series(config)[series_uid][2] == "CT"
    assert [s["0020000D"]["Value"] for s in client.get("/dicomweb/studies", params={"StudyDate": "20240102"}).json()] == [[study]]
    assert first_id != second_id


def wal_pages(path) -> list[int]:
    """The page numbers of the frames in the write-ahead log of the SQLite file ``path`` (the WAL
    format: a 32-byte header, then per frame a 24-byte header starting with the page number)."""
    wal = Path(f"{path}-wal").read_bytes()
    (page_size,) = struct.unpack(">I", wal[8:12])
    return [struct.unpack(">I", wal[at : at + 4])[0] for at in range(32, len(wal) - page_size - 23, page_size + 24)]


@pytest.mark.sqlite_only(reason="reads SQLite's write-ahead log")
def test_an_instance_of_a_known_series_rewrites_no_study_or_series_index(client, config):
    """SQLite writes an index's entry again whenever an UPDATE sets one of its columns, even to the
    value it holds: storing an instance of a known series with the same attributes must leave the
    pages of the study and series indexes alone, while their rows' counts change."""
    first, second = make_study((("CT", 2),), seed=5)
    post_all(client, [first])
    with sqlite3.connect(config.db_path) as conn:
        try:
            owner = dict(conn.execute("SELECT pageno, name FROM dbstat").fetchall())
        except sqlite3.OperationalError:
            pytest.skip("this SQLite has no dbstat table")
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0  # the log emptied
    post_all(client, [second])
    written = {owner.get(page) for page in wal_pages(config.db_path)}
    assert {"study", "series", "dicom"} <= written
    assert not written & {"study_by_patient", "study_by_date", "study_by_accession", "series_by_modality"}, written
    assert series(config)[first.SeriesInstanceUID][-1] == 2 and studies(config)[first.StudyInstanceUID][-1] == 2


def _downgrade(config) -> None:
    """Make the database look like one written before DICOMweb: no study, series, JSON or
    DICOMweb columns, and user_version 0."""
    new_columns = ("study_time", "study_id", "referring_physician_name", "timezone_offset", "series_number",
                   "series_description", "pps_start_date", "pps_start_time", "instance_number")  # fmt: skip
    with db(config) as conn:
        conn.execute("DROP INDEX dicom_series_sop")
        for table in ("study", "series", "dicom_json", "revision"):
            conn.execute(f"DROP TABLE {table}")
        for column in new_columns:
            conn.execute(f"ALTER TABLE dicom DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 0")


@pytest.mark.sqlite_only(reason="databases from before DICOMweb are SQLite files (PostgreSQL came later)")
def test_an_older_database_is_upgraded_in_place(config):
    datasets = make_study((("CT", 3), ("MR", 2)), seed=4) + make_study((("CT", 2),), seed=5)
    with TestClient(create_app(config)) as client:
        post_all(client, datasets)
        study = datasets[0].StudyInstanceUID
        metadata = client.get(f"/dicomweb/studies/{study}/metadata").json()
    expected_studies, expected_series = studies(config), series(config)
    with db(config) as conn:
        expected_columns = conn.execute("SELECT pk, instance_number, series_number, study_time FROM dicom").fetchall()
    _downgrade(config)
    with TestClient(create_app(config)) as client:
        assert studies(config) == expected_studies and series(config) == expected_series
        with db(config) as conn:
            assert conn.execute("SELECT pk, instance_number, series_number, study_time FROM dicom").fetchall() == expected_columns
            assert conn.execute("SELECT COUNT(*) FROM dicom_json").fetchone() == (0,)
        # the DICOM JSON the old instances lack is made from their files, once, and kept
        assert client.get(f"/dicomweb/studies/{study}/metadata").json() == metadata
        with db(config) as conn:
            assert conn.execute("SELECT COUNT(*) FROM dicom_json").fetchone() == (5,)
        assert client.get(f"/dicomweb/studies/{study}/metadata").json() == metadata
    with TestClient(create_app(config)):  # and again: nothing more to do
        assert studies(config) == expected_studies
