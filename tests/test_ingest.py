"""The synchronous ingest pipeline, called directly: what it stores, and what it cleans up."""

import asyncio
import shutil
import sqlite3

import pytest

from dicomfiles import blob_files, sample_file
from dicomsvc import ingest
from dicomsvc.storage import instances, sqlite
from dicomsvc.storage.blobs import BlobStore
from dicomsvc.errors import InvalidDicom


@pytest.fixture
def ready(config):
    """A data directory with its schema and blob store, as the service leaves it at start-up."""
    config.data_dir.mkdir(parents=True)
    BlobStore(config.blob_dir).open()

    async def create():
        await (await sqlite.open_database(config.db_path)).close()

    asyncio.run(create())
    return config


def spool(config, name):
    blobs = BlobStore(config.blob_dir)
    with open(sample_file(name), "rb") as src:
        return blobs.spool(src, 1 << 30)


def rows(config, sql):
    with sqlite3.connect(config.db_path) as db:
        return db.execute(sql).fetchall()


def stored_blobs(config):
    return sorted(p.name for p in blob_files(config.data_dir) if ".tmp" not in p.parts)


def temp_blobs(config):
    return [p for p in blob_files(config.data_dir) if ".tmp" in p.parts]


def test_ingest_file_stores_row_tags_and_blobs(ready):
    result = ingest.ingest_file(ready, spool(ready, "CT_small.dcm"), "CT_small.dcm")
    assert result.created and result.warnings == []
    assert stored_blobs(ready) == sorted([f"{result.id}.dcm", f"{result.id}.png"])
    (row,) = rows(ready, "SELECT id, modality, rows, columns, frames, source, has_pixels FROM dicom")
    assert row == (result.id, "CT", 128, 128, 1, "CT_small.dcm", 1)
    assert rows(ready, "SELECT COUNT(*) FROM dicom_tag")[0][0] > 100
    stored = BlobStore(ready.blob_dir).path(BlobStore.key(result.id, "dcm")).read_bytes()
    assert stored == sample_file("CT_small.dcm").read_bytes()
    assert temp_blobs(ready) == []


def test_duplicate_stores_nothing_and_removes_its_spool(ready):
    first = ingest.ingest_file(ready, spool(ready, "MR_small.dcm"), "a")
    again = ingest.ingest_file(ready, spool(ready, "MR_small.dcm"), "b")
    assert (again.id, again.created) == (first.id, False)
    assert len(stored_blobs(ready)) == 2 and temp_blobs(ready) == []


def test_invalid_input_removes_its_spool(ready, tmp_path):
    bad = BlobStore(ready.blob_dir).write_temp(b"not dicom at all" * 50, ".dcm")
    with pytest.raises(InvalidDicom):
        ingest.ingest_file(ready, bad, "bad")
    assert blob_files(ready.data_dir) == []


def test_failed_insert_removes_the_placed_blobs(ready, monkeypatch):
    def broken(*args):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(instances, "insert_instance", broken)
    with pytest.raises(sqlite3.OperationalError):
        ingest.ingest_file(ready, spool(ready, "CT_small.dcm"), "x")
    assert blob_files(ready.data_dir) == []
    assert rows(ready, "SELECT COUNT(*) FROM dicom") == [(0,)]


def test_losing_a_race_returns_the_winner_and_removes_its_blobs(ready, monkeypatch):
    winner = ingest.ingest_file(ready, spool(ready, "CT_small.dcm"), "first")
    real_find = instances.find_instance
    calls = []

    def late_find(*args):  # the duplicate check runs before the winner's commit is visible
        calls.append(args)
        return None if len(calls) == 1 else real_find(*args)

    monkeypatch.setattr(instances, "find_instance", late_find)
    loser = ingest.ingest_file(ready, spool(ready, "CT_small.dcm"), "second")
    assert (loser.id, loser.created) == (winner.id, False)
    assert stored_blobs(ready) == sorted([f"{winner.id}.dcm", f"{winner.id}.png"])
    assert rows(ready, "SELECT COUNT(*) FROM dicom") == [(1,)]


def test_ingest_import_reads_only_regular_files_under_the_root(ready):
    shutil.copyfile(sample_file("rtplan.dcm"), ready.import_root / "plan.dcm")
    result = ingest.ingest_import(ready, "plan.dcm")
    assert result.created
    assert rows(ready, "SELECT source, has_pixels, png_blob FROM dicom") == [("plan.dcm", 0, None)]


def test_parse_warnings_reach_the_answer(ready):
    # bad_sequence.dcm (pydicom-data): its SOP Instance UID is a hash, not a UID; stored anyway
    result = ingest.ingest_file(ready, spool(ready, "bad_sequence.dcm"), "bad_sequence.dcm")
    assert result.created and result.warnings == ["SOP Instance UID (0008,0018) is not a valid UID (PS3.5 §9.1)"]
    (row,) = rows(ready, "SELECT sop_instance_uid, png_blob IS NOT NULL FROM dicom")
    assert row == (result.sop_instance_uid, 1) and len(result.sop_instance_uid) == 64
