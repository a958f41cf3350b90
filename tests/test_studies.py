"""Studies and series as first-class rows (storage/studies.py): right after every ingest,
anonymization and delete, and filled in when an older database is upgraded in place."""

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
    second.StudyDescription = "Corrected"
    post_all(client, [first])
    assert studies(config)[first.StudyInstanceUID][8] == "Chest and head"
    post_all(client, [second])
    assert studies(config)[first.StudyInstanceUID][8] == "Corrected"


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
