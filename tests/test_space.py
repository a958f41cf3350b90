"""A full disk (issue 9): 507 insufficient_storage, nothing half-written, and the next
request after space returns succeeds. Simulated where each write happens, for real with
SQLite's max_page_count (a genuine SQLITE_FULL) and on a 4 MB tmpfs where mounting is allowed."""

import asyncio
import errno
import io
import os
import sqlite3
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from app import create_app
from conftest import make_config
from dicomfiles import blob_files, make_ct, save
from dicomsvc.errors import InsufficientStorage
from dicomsvc.ingest import ingest_file
from dicomsvc.storage import blobs as blobs_module
from dicomsvc.storage import instances, space
from dicomsvc.storage.blobs import BlobStore
from dicomsvc.storage.sqlite import connection, open_database, transaction

DICOM = {"content-type": "application/dicom"}


def ct_bytes(i: int = 1, size: int = 8) -> bytes:
    buf = io.BytesIO()
    make_ct(np.full((size, size), i, np.int16)).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FillingFile:
    """A file whose writes land a few bytes, then fail as a full disk does."""

    def __init__(self, real):
        self.real = real

    def write(self, data):
        self.real.write(bytes(data)[:10])
        self.real.flush()
        no_space()

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def assert_nothing_stored(client, data_dir: Path) -> None:
    assert blob_files(data_dir) == []  # temporary ones included
    assert client.get("/dicom").json()["items"] == []


def test_is_full():
    assert space.is_full(OSError(errno.ENOSPC, "x")) and space.is_full(OSError(errno.EDQUOT, "x"))
    assert space.is_full(sqlite3.OperationalError("database or disk is full"))
    for other in (OSError(errno.EIO, "x"), sqlite3.OperationalError("database is locked"), ValueError("full")):
        assert not space.is_full(other)


def _fail_upload_spool(monkeypatch):
    from dicomsvc.storage import spool  # every spooled body is created there (storage.spool.create)

    monkeypatch.setattr(spool, "open", lambda *a, **k: FillingFile(open(*a, **k)), raising=False)


def _fail_import_copy(monkeypatch):
    def half_then_full(src, out, size):
        out.write(src.read(100))
        out.flush()
        no_space()

    monkeypatch.setattr(blobs_module, "_copy_file", half_then_full)


def _fail_png_write(monkeypatch):
    real = BlobStore.create_temp

    def create_temp(self, suffix):
        path, handle = real(self, suffix)
        return path, FillingFile(handle) if suffix == ".png" else handle

    monkeypatch.setattr(BlobStore, "create_temp", create_temp)


def _fail_png_rename(monkeypatch):
    """The PNG's placing fails, the DICOM blob in place already: in a local store at its rename
    (``_rename``, which ``sync`` and ``_place`` both take); with S3, its upload (``_place``)."""
    real_rename, real_place = BlobStore._rename, BlobStore._place

    def rename(self, temp, final):
        if final.suffix == ".png":
            no_space()
        real_rename(self, temp, final)

    def place(self, temp, key):
        if key.endswith(".png"):
            no_space()
        real_place(self, temp, key)

    monkeypatch.setattr(BlobStore, "_rename", rename)
    monkeypatch.setattr(BlobStore, "_place", place)


def _fail_database(monkeypatch):
    def insert(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(instances, "insert_instance", insert)


@pytest.mark.parametrize(
    "fail, form",
    [
        (_fail_upload_spool, "body"),
        (_fail_import_copy, "path"),
        (_fail_png_write, "body"),
        (_fail_png_rename, "path"),
        (_fail_database, "body"),
    ],
    ids=["upload-spool", "import-copy", "png-write", "png-rename", "database"],
)
def test_a_full_disk_is_507_leaves_nothing_and_passes(client, data_dir, import_root, monkeypatch, fail, form):
    (import_root / "ct.dcm").write_bytes(ct_bytes())

    def post():
        if form == "path":
            return client.post("/dicom", json={"path": "ct.dcm"})
        return client.post("/dicom", content=ct_bytes(), headers=DICOM)

    fail(monkeypatch)
    refused = post()
    assert refused.status_code == 507, refused.text
    assert refused.json() == {"error": "insufficient_storage", "detail": space.insufficient().detail}
    assert_nothing_stored(client, data_dir)
    monkeypatch.undo()  # space is back
    assert post().status_code == 201


def test_each_file_of_a_batch_says_insufficient_storage(client, data_dir, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("a.dcm", ct_bytes(1))
        archive.writestr("b.dcm", ct_bytes(2))
    _fail_png_rename(monkeypatch)
    body = client.post("/dicom", content=buf.getvalue(), headers={"content-type": "application/zip"}).json()
    assert [r["error"] for r in body["results"]] == ["insufficient_storage"] * 2
    assert_nothing_stored(client, data_dir)


def test_a_rendering_is_answered_though_there_is_no_room_to_keep_it(client, data_dir, monkeypatch):
    instance_id = client.post("/dicom", content=ct_bytes(), headers=DICOM).json()["id"]
    monkeypatch.setattr(BlobStore, "write_temp", no_space)
    response = client.get("/image", params={"id": instance_id, "width": 4})
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    assert not list(data_dir.rglob("*.renderings/*"))


# SQLite's own SQLITE_FULL (max_page_count caps the database as a full disk would) ----------


@pytest.mark.sqlite_only(reason="SQLITE_FULL made with PRAGMA max_page_count")
def test_a_full_database_in_a_worker_is_507_and_nothing_stays(config, tmp_path):
    import dataclasses

    async def create():
        await (await open_database(config.db_path)).close()

    config.data_dir.mkdir(parents=True)
    asyncio.run(create())
    blobs = BlobStore(config.blob_dir)
    blobs.open()
    writer = connection(config.db_path)
    (pages,) = writer.db.execute("PRAGMA page_count").fetchone()
    writer.db.execute(f"PRAGMA max_page_count = {pages}")
    try:
        with pytest.raises(InsufficientStorage):
            ingest_file(config, save(make_ct(TextValue="x" * 50_000), tmp_path / "a.dcm"), "a.dcm")  # UT
        assert blob_files(config.data_dir) == []
        assert writer.db.execute("SELECT COUNT(*) FROM dicom").fetchone() == (0,)
        assert not writer.db.in_transaction
    finally:
        writer.db.execute("PRAGMA max_page_count = 1073741823")
    assert ingest_file(dataclasses.replace(config), save(make_ct(), tmp_path / "b.dcm"), "b.dcm").created


def test_a_transaction_that_fills_the_database_raises_that_and_the_next_one_works(tmp_path):
    """SQLite rolls back by itself on SQLITE_FULL: a second ROLLBACK used to fail ("no
    transaction is active") and hide the real error."""

    async def run():
        db = await open_database(tmp_path / "d.db")
        try:
            await db.conn.execute("CREATE TABLE t (x BLOB)")
            ((pages,),) = await db.conn.execute_fetchall("PRAGMA page_count")
            await db.conn.execute(f"PRAGMA max_page_count = {pages}")
            with pytest.raises(sqlite3.Error) as raised:
                async with transaction(db) as conn:
                    await conn.execute("INSERT INTO t VALUES (?)", (b"x" * 200_000,))
            assert space.is_full(raised.value), raised.value
            assert not db.conn.in_transaction
            await db.conn.execute("PRAGMA max_page_count = 1073741823")
            async with transaction(db) as conn:
                await conn.execute("INSERT INTO t VALUES (?)", (b"x" * 200_000,))
            assert (await db.conn.execute_fetchall("SELECT COUNT(*) FROM t"))[0][0] == 1
        finally:
            await db.close()

    asyncio.run(run())


# A real full disk: a 4 MB tmpfs ----------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root (or is not allowed here)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.sqlite_only(reason="the 4 MB disk holds the SQLite index too; PostgreSQL's is elsewhere (its disk full: to do)")
def test_on_a_really_full_disk_posts_are_507_and_work_again_once_space_returns(small_disk, import_root):
    data_dir = small_disk / "data"
    config = make_config(data_dir, import_root, workers=0)
    save(make_ct(np.zeros((256, 256), np.int16)), import_root / "a.dcm")  # 128 KB
    big = ct_bytes(3, size=256)
    with TestClient(create_app(config)) as client:
        filler = fill(small_disk)
        by_path = client.post("/dicom", json={"path": "a.dcm"})
        by_body = client.post("/dicom", content=big, headers=DICOM)
        assert (by_path.status_code, by_body.status_code) == (507, 507), (by_path.text, by_body.text)
        assert by_path.json()["error"] == by_body.json()["error"] == "insufficient_storage"
        assert [p for p in blob_files(data_dir)] == []
        assert client.get("/dicom").json()["items"] == []
        filler.unlink()
        assert client.post("/dicom", json={"path": "a.dcm"}).status_code == 201
        assert client.post("/dicom", content=big, headers=DICOM).status_code == 201
        assert len(client.get("/dicom").json()["items"]) == 2


def test_a_job_whose_progress_cannot_be_recorded_waits_for_space_and_finishes(client, import_root, monkeypatch):
    """Before: the job was marked failed (or, with the disk still full, the runner died)."""
    from dicomsvc import jobs
    from dicomsvc.storage import jobs as job_rows

    for i in range(3):
        save(make_ct(np.full((8, 8), i, np.int16)), import_root / "batch" / f"{i}.dcm")
    real, calls = job_rows.record_results, []

    async def full_then_fine(*args):
        calls.append(1)
        if len(calls) <= 2:  # the disk is full for the first two tries
            raise sqlite3.OperationalError("database or disk is full")
        return await real(*args)

    monkeypatch.setattr(job_rows, "record_results", full_then_fine)
    monkeypatch.setattr(jobs, "FULL_DISK_PAUSE", 0.05)
    started = client.post("/dicom", params={"async": "true"}, json={"path": "batch"})
    assert started.status_code == 202, started.text
    for _ in range(400):
        status = client.get(started.json()["status_url"]).json()
        if status["status"] != "running" and status["status"] != "queued":
            break
        time.sleep(0.025)
    assert status["status"] == "done" and status["created"] + status["duplicates"] == 3, status
    assert len(calls) >= 3
