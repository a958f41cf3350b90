"""Background jobs shared by several replicas: claimed by one at a time under a lease, taken over
when the lease runs out, polled for when queued elsewhere (dicomsvc/jobs.py, storage/jobs.py).
On SQLite and, with DICOMSVC_TEST_POSTGRES=1, on PostgreSQL (FOR UPDATE SKIP LOCKED)."""

import asyncio
import contextlib
import json
import sqlite3
import time

import numpy as np
import pytest
from starlette.testclient import TestClient

import indexdb
from app import create_app
from dicomfiles import make_ct, save
from dicomsvc.config import Config
from dicomsvc.storage import jobs as job_rows
from dicomsvc.storage import sqlite

ITEM = json.dumps({"file": "x.dcm", "kind": "import", "path": "x.dcm"})


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def opened(where):
    """The index at ``where`` as the service opens it (the schema made or upgraded), closed after."""
    db = await sqlite.open_database(where)
    try:
        yield db
    finally:
        await db.close()


async def queue(db, n: int, items: int = 1) -> list[str]:
    ids = [f"job{i:03d}" for i in range(n)]
    for job_id in ids:
        await job_rows.insert_job(db, job_id, [(seq, ITEM, "pending", None) for seq in range(items)], None)
    return ids


async def expire(db, job_id: str) -> None:
    """The lease runs out (as it does LEASE seconds after its replica died)."""
    async with sqlite.transaction(db) as conn:
        await conn.execute("UPDATE job SET lease_until = 0 WHERE id = ?", (job_id,))


async def job_row(db, job_id: str) -> dict:
    return await job_rows.get_job(db, job_id)


def test_replicas_claiming_at_once_never_claim_one_job_twice(database):
    """Three replicas (each its own connection or pool) claim as fast as they can: every job is
    claimed exactly once. Before: ``next_job`` read the oldest unfinished job, and each replica
    ran it."""

    async def go():
        dbs = [await sqlite.open_database(database) for _ in range(3)]
        try:
            ids = await queue(dbs[0], 40)

            async def claim_all(db, replica: str) -> list[str]:
                mine = []
                while (job_id := await job_rows.next_job(db, replica, 30)) is not None:
                    mine.append(job_id)
                    await job_rows.finish(db, job_id, "done", None, replica)
                return mine

            claimed = await asyncio.gather(*(claim_all(db, f"r{i}") for i, db in enumerate(dbs)))
            flat = [job_id for mine in claimed for job_id in mine]
            assert sorted(flat) == ids, "a job claimed twice, or not at all"
            for job_id in ids:
                row = await job_row(dbs[0], job_id)
                assert row["status"] == "done" and row["claimed_by"] in ("r0", "r1", "r2")
        finally:
            for db in dbs:
                await db.close()

    run(go())


def test_a_live_lease_is_respected_and_an_expired_one_taken_over(database):
    async def go():
        async with opened(database) as db:
            (job_id,) = await queue(db, 1)
            assert await job_rows.next_job(db, "a", 30) == job_id
            row = await job_row(db, job_id)
            assert (row["status"], row["claimed_by"]) == ("running", "a") and row["lease_until"] > time.time()
            assert await job_rows.next_job(db, "b", 30) is None  # a's lease holds: b leaves it alone
            assert await job_rows.next_job(db, "a", 30) == job_id  # a's own, resumed after a pause
            assert await job_rows.renew(db, job_id, "a", 30)

            await expire(db, job_id)  # a died
            assert await job_rows.next_job(db, "b", 30) == job_id
            assert (await job_row(db, job_id))["claimed_by"] == "b"
            # a comes back from a stall: its lease is gone, and it may record and finish nothing
            assert not await job_rows.renew(db, job_id, "a", 30)
            with pytest.raises(job_rows.LeaseLost):
                await job_rows.record_results(db, job_id, [(0, "created", '{"id": "A"}')], "a", 30)
            assert await job_rows.item_counts(db, job_id) == {}
            assert await job_rows.finish(db, job_id, "failed", "stalled", "a") is None
            assert (await job_row(db, job_id))["status"] == "running"

            await job_rows.record_results(db, job_id, [(0, "duplicate", '{"id": "A"}')], "b", 30)
            await job_rows.record_results(db, job_id, [(0, "failed", '{"id": null}')], "b", 30)
            assert await job_rows.item_counts(db, job_id) == {"duplicate": 1}  # an item keeps its first result
            await job_rows.finish(db, job_id, "done", None, "b")
            row = await job_row(db, job_id)
            assert (row["status"], row["claimed_by"], row["lease_until"]) == ("done", "b", None)
            assert await job_rows.next_job(db, "c", 30) is None

    run(go())


@pytest.mark.sqlite_only(reason="an SQLite index has one server (the data directory's lock)")
def test_on_sqlite_a_restart_resumes_the_previous_process_jobs_at_once(database):
    async def go():
        async with opened(database) as db:
            (job_id,) = await queue(db, 1)
            assert await job_rows.next_job(db, "killed", 30) == job_id
            assert await job_rows.next_job(db, "restarted", 30) is None
            assert await job_rows.void_claims(db) == 1
            assert await job_rows.next_job(db, "restarted", 30) == job_id

    run(go())


@pytest.mark.postgres_only
def test_on_postgresql_leases_outlive_a_restart(database):
    """Other replicas may be running theirs: a start voids nothing."""

    async def go():
        async with opened(database) as db:
            (job_id,) = await queue(db, 1)
            assert await job_rows.next_job(db, "other", 30) == job_id
            assert await job_rows.void_claims(db) == 0
            assert await job_rows.next_job(db, "starting", 30) is None

    run(go())


def job_config(data_dir, import_root, **settings) -> Config:
    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0"}
    return Config.from_env(env | {f"DICOMSVC_{k.upper()}": str(v) for k, v in settings.items()})


def wait_done(client: TestClient, job_id: str, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while (job := client.get(f"/jobs/{job_id}").json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def test_a_job_queued_by_another_replica_is_found_by_polling(data_dir, import_root):
    """The job is written to the index as another replica writes it: no wakeup here. Before: the
    runner slept until its own process queued something."""
    save(make_ct(np.full((8, 8), 3, np.int16)), import_root / "a.dcm")
    config = job_config(data_dir, import_root, job_poll_seconds=1)
    item = json.dumps({"file": "a.dcm", "kind": "import", "path": "a.dcm"})
    with TestClient(create_app(config)) as client:
        client.get("/healthz")
        time.sleep(0.2)  # the runner has looked once and found nothing

        async def elsewhere():
            async with opened(config.database) as db:
                await job_rows.insert_job(db, "fromelsewhere", [(0, item, "pending", None)], None)

        run(elsewhere())
        job = wait_done(client, "fromelsewhere", seconds=30)
    assert (job["status"], job["created"]) == ("done", 1), job


def test_a_job_of_a_dead_replica_is_taken_over_and_nothing_is_done_twice(data_dir, import_root):
    """A replica died after recording some items (and storing one more it could not record):
    once its lease runs out, this one runs the job's pending items only."""
    rng = np.random.default_rng(5)
    for i in range(6):
        save(make_ct(rng.integers(0, 500, (8, 8), dtype=np.int16)), import_root / f"{i}.dcm")
    config = job_config(data_dir, import_root, job_poll_seconds=1, job_lease_seconds=30)
    items = [json.dumps({"file": f"{i}.dcm", "kind": "import", "path": f"{i}.dcm"}) for i in range(6)]
    with TestClient(create_app(config)) as client:
        # the dead replica's work: files 0 and 1 stored and recorded, file 2 stored, not recorded
        stored = [client.post("/dicom", json={"path": f"{i}.dcm"}).json()["id"] for i in range(3)]

        async def dead_replica():
            async with opened(config.database) as db:
                await job_rows.insert_job(db, "orphaned", [(i, item, "pending", None) for i, item in enumerate(items)], None)
                assert await job_rows.next_job(db, "dead:1:x", 30) == "orphaned"
                done = [(i, "created", json.dumps({"file": f"{i}.dcm", "status": "created", "id": stored[i]})) for i in (0, 1)]
                await job_rows.record_results(db, "orphaned", done, "dead:1:x", 30)

        run(dead_replica())
        time.sleep(1.5)  # more than a poll: the live lease keeps it from this replica
        job = client.get("/jobs/orphaned").json()
        assert (job["status"], job["processed"]) == ("running", 2), job

        with indexdb.index(config) as db:
            db.execute("UPDATE job SET lease_until = 0 WHERE id = ?", ("orphaned",))  # its lease ran out
        job = wait_done(client, "orphaned", seconds=30)
        owner = indexdb.dict_rows(config, "SELECT claimed_by FROM job WHERE id = ?", ("orphaned",))[0]["claimed_by"]
    assert job["status"] == "done" and job["total"] == job["processed"] == 6, job
    assert (job["created"], job["duplicates"], job["failed"]) == (5, 1, 0), job  # file 2 was stored already
    assert [r["id"] for r in job["results"][:3]] == stored
    assert owner != "dead:1:x"
    (count,) = indexdb.dict_rows(config, "SELECT COUNT(*) AS n FROM dicom")[0].values()
    assert count == 6  # nothing twice


@pytest.mark.sqlite_only(reason="the upgrade from an SQLite job table without leases")
def test_an_sqlite_job_table_without_leases_is_upgraded(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE job (id TEXT PRIMARY KEY, status TEXT NOT NULL, total INTEGER NOT NULL, detail TEXT,"
            " spool_dir TEXT, created_at TEXT NOT NULL, finished_at TEXT)"
        )
        db.execute("INSERT INTO job VALUES ('old', 'running', 0, NULL, NULL, 't', NULL)")
    database = run(sqlite.open_database(path))
    try:
        assert run(job_rows.next_job(database, "new", 30)) == "old"  # a lease of NULL: free to take
    finally:
        run(database.close())
    with sqlite3.connect(path) as db:
        assert {"claimed_by", "lease_until", "created_by"} <= {row[1] for row in db.execute("PRAGMA table_info(job)")}


@pytest.mark.postgres_only
def test_a_postgresql_job_table_without_leases_is_upgraded(database):
    import psycopg

    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("ALTER TABLE job DROP COLUMN claimed_by")
        conn.execute("ALTER TABLE job DROP COLUMN lease_until")
        conn.execute("INSERT INTO job (id, status, total, created_at) VALUES ('old', 'running', 0, 't')")

    async def go():
        async with opened(database) as db:
            assert await job_rows.next_job(db, "new", 30) == "old"

    run(go())


def test_a_replica_that_finds_its_lease_taken_stops_the_job_and_leaves_it_to_the_new_owner(
    data_dir, import_root, monkeypatch
):
    """It was stalled past its lease and taken for dead: the heartbeat finds the lease gone, and
    the job's work is cancelled, not finished or failed under another replica's lease."""
    from dicomsvc import jobs

    save(make_ct(np.full((8, 8), 1, np.int16)), import_root / "a.dcm")
    started, cancelled = [], []

    async def stalled(svc, items, on_done=None, study_uid=None):
        started.append(1)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    monkeypatch.setattr(jobs.batch, "run", stalled)
    config = job_config(data_dir, import_root, job_lease_seconds=3, job_heartbeat_seconds=1)
    with TestClient(create_app(config)) as client:
        job_id = client.post("/dicom", params={"async": "true"}, json={"path": "a.dcm"}).json()["job"]
        deadline = time.monotonic() + 30
        while not started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with indexdb.index(config) as db:
            # another replica's now, for long
            db.execute("UPDATE job SET claimed_by = 'thief', lease_until = lease_until + 3600 WHERE id = ?", (job_id,))
        while not cancelled:
            assert time.monotonic() < deadline, "the job went on under another replica's lease"
            time.sleep(0.02)
        job = client.get(f"/jobs/{job_id}").json()
        row = indexdb.dict_rows(config, "SELECT claimed_by FROM job WHERE id = ?", (job_id,))[0]
    assert job["status"] == "running" and row["claimed_by"] == "thief", job


def test_a_replica_that_cannot_record_results_under_its_lease_stops_the_rest_of_the_page(
    data_dir, import_root, monkeypatch, caplog
):
    """The lease is found taken when a chunk's results are recorded: the page's other chunks are
    cancelled with it, not ingested in the background by a replica that no longer owns the job.
    Before: the failed chunk alone stopped; the page's other chunks (up to 512 files) ran on."""
    import logging

    from dicomsvc import batch

    rng = np.random.default_rng(9)
    for i in range(48):  # 6 chunks of batch.CHUNK_MIN
        save(make_ct(rng.integers(0, 500, (8, 8), dtype=np.int16)), import_root / "many" / f"{i:02d}.dcm")
    started, real_chunk, real_record = [], batch._ingest_chunk, job_rows.record_results

    async def counted_chunk(svc, chunk, study_uid):
        started.append(len(chunk))
        return await real_chunk(svc, chunk, study_uid)

    async def stolen_then_record(db, job_id, *args):
        async with sqlite.transaction(db) as conn:  # another replica took the job over meanwhile
            await conn.execute("UPDATE job SET claimed_by = 'thief', lease_until = lease_until + 3600 WHERE id = ?", (job_id,))
        return await real_record(db, job_id, *args)

    monkeypatch.setattr(batch, "_ingest_chunk", counted_chunk)
    monkeypatch.setattr(job_rows, "record_results", stolen_then_record)
    caplog.set_level(logging.WARNING, logger="dicomsvc")
    config = job_config(data_dir, import_root)
    with TestClient(create_app(config)) as client:
        client.post("/dicom", params={"async": "true"}, json={"path": "many"})
        deadline = time.monotonic() + 30
        while "taken over by another replica" not in caplog.text:
            assert time.monotonic() < deadline, "the lost lease went unnoticed"
            time.sleep(0.02)
        at_stop = len(started)
        time.sleep(2)  # what would still be running in the background, had it not been cancelled
        assert len(started) == at_stop < 48 // batch.chunk_size(48, config.workers), started


def test_the_runner_stops_when_cancelled_as_a_job_is_queued(monkeypatch):
    """The app stops just as a job is queued (the wakeup set and the runner cancelled in one step of
    the loop). Before: Python 3.11's asyncio.wait_for returned the event's result and dropped the
    cancellation, and the runner went on polling for ever: the app's shutdown hung."""
    from types import SimpleNamespace

    from dicomsvc import jobs

    async def nothing_queued(*args):
        return None

    monkeypatch.setattr(job_rows, "next_job", nothing_queued)

    async def go():
        svc = SimpleNamespace(wakeup=asyncio.Event(), db=None, replica="r",
                              config=SimpleNamespace(job_poll_seconds=30, job_lease_seconds=30))  # fmt: skip
        runner = asyncio.create_task(jobs._run_forever(svc))
        for _ in range(5):  # until it waits for work
            await asyncio.sleep(0)
        svc.wakeup.set()
        runner.cancel()
        done, _ = await asyncio.wait({runner}, timeout=20)  # a liveness bound only
        assert done and runner.cancelled(), "the runner did not stop"

    run(go())


def test_the_runner_stops_when_an_error_comes_in_place_of_its_cancellation(monkeypatch):
    """The app stops while the runner waits on the database, and what the runner gets is an error,
    not the CancelledError (an aiosqlite ROLLBACK's "no transaction is active", say). Before: it
    logged "could not look for queued jobs" and polled on for ever: the app's shutdown hung."""
    import sqlite3
    from types import SimpleNamespace

    from dicomsvc import jobs

    looking = asyncio.Event()

    async def cancelled_into_an_error(*args):
        if looking.is_set():
            return None  # later looks find nothing
        looking.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise sqlite3.OperationalError("cannot rollback - no transaction is active") from None

    monkeypatch.setattr(job_rows, "next_job", cancelled_into_an_error)

    async def go():
        svc = SimpleNamespace(wakeup=asyncio.Event(), db=None, replica="r",
                              config=SimpleNamespace(job_poll_seconds=1, job_lease_seconds=30))  # fmt: skip
        runner = asyncio.create_task(jobs._run_forever(svc))
        await looking.wait()
        runner.cancel()
        done, _ = await asyncio.wait({runner}, timeout=20)  # a liveness bound only
        assert done and runner.cancelled(), "the runner did not stop"

    run(go())
