"""SQLite storage, directly: the upgrade step, the write path, the JSON the reads build."""

import asyncio
import json
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from dicomfiles import sample_file
from dicomsvc.storage import instances, sqlite
from dicomsvc.dicom.parse import read
from dicomsvc.dicom.tags import flatten

FIRST_SCHEMA = Path(__file__).parent / "schema_v0.sql"  # schema.sql as first released


def run(coro):
    return asyncio.run(coro)


def create(where) -> None:
    """The schema, made as the service makes it at start (opened and closed in one event loop)."""

    async def open_close():
        await (await sqlite.open_database(where)).close()

    run(open_close())


def record(instance_id: str, sop: str) -> dict:
    return {c: None for c in instances.INSTANCE_COLUMNS} | {
        "id": instance_id, "sop_instance_uid": sop, "pixel_hash": "h", "has_pixels": 0, "dcm_blob": "x",
        "dcm_bytes": 1, "source": "test", "anonymized": 0, "created_at": "2026-01-01T00:00:00Z",
    }  # fmt: skip


@pytest.mark.sqlite_only(reason="the first schema was SQLite's (PostgreSQL came later)")
def test_a_database_from_the_first_schema_is_upgraded(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(FIRST_SCHEMA.read_text())
        db.execute(
            "INSERT INTO dicom (id, sop_instance_uid, pixel_hash, has_pixels, dcm_blob, dcm_bytes, source, created_at)"
            " VALUES ('A', '1.2', 'h', 0, 'x', 1, 's', 't')"
        )
    database = run(sqlite.open_database(path))
    run(database.close())
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(dicom)")}
        assert set(instances.INSTANCE_COLUMNS) <= columns
        assert db.execute("SELECT id, anonymized FROM dicom").fetchall() == [("A", 0)]
        assert db.execute("SELECT COUNT(*) FROM job").fetchone() == (0,)
    database = run(sqlite.open_database(path))  # and again: every step is idempotent
    run(database.close())


def test_insert_then_tags_json_keeps_order_and_tree(database):
    path = database
    create(path)  # creates the schema
    writer = sqlite.connection(path)
    parsed = read(sample_file("rtplan.dcm"))
    rows = flatten(parsed.ds, parsed.pixel)
    assert instances.insert_instance(writer, record("B" * 22, "1.2.3"), rows) == "B" * 22
    assert instances.insert_instance(writer, record("C" * 22, "1.2.3"), rows) is None  # same SOP UID + hash
    assert instances.find_instance(writer, "1.2.3", "h") == "B" * 22

    async def tags():
        database = await sqlite.open_database(path)
        try:
            return json.loads(await instances.get_tags_json(database, "B" * 22)), await instances.get_tags_json(
                database, "D" * 22
            )
        finally:
            await database.close()

    out, missing = run(tags())
    assert missing is None
    assert [r["Tag"] for r in out] == [r.tag_str for r in rows]
    by_id = {r["ID"]: r for r in out}
    for row, original in zip(out, rows, strict=True):
        if original.parent is None:
            assert "Parent" not in row
        else:
            assert by_id[row["Parent"]]["Tag"] == rows[original.parent].tag_str and row["Item"] == original.item
    assert instances.insert_instance(writer, record("E" * 22, "1.2.4"), rows) == "E" * 22  # tag ids come from the cache


def study_record(instance_id: str, sop: str, series: str) -> dict:
    return record(instance_id, sop) | {"study_instance_uid": "9.1", "series_instance_uid": series, "modality": "CT"}


def two_writers_at_once(database, insert, steps: int) -> None:
    """Writers 1 and 2 (threads, a connection each) run ``insert(writer, n, i)`` for each step
    ``i``, both steps starting together; fails with what either raised."""
    start, errors = threading.Barrier(2), []

    def write(n: int) -> None:
        try:
            writer = sqlite.connection(database)
            for i in range(steps):
                start.wait(timeout=60)
                insert(writer, n, i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors


def test_concurrent_writers_keep_the_study_and_series_rows_right(database, monkeypatch):
    """Two writers (threads: a connection each) inserting into one study at once: its series and
    study rows count every instance. On PostgreSQL, writers do not wait for each other as on
    SQLite, so this holds only because each refresh takes the study's advisory lock first. Each
    commit is held back a little (as a disk flush would), so the transactions overlap."""
    create(database)
    real_commit = sqlite.Writer.commit

    def slow_commit(self):
        time.sleep(0.005)
        real_commit(self)

    monkeypatch.setattr(sqlite.Writer, "commit", slow_commit)
    rows = flatten(*(lambda p: (p.ds, p.pixel))(read(sample_file("CT_small.dcm"))))
    per_writer = 20

    def insert(writer: sqlite.Writer, n: int, i: int) -> None:  # both into series i: its two refreshes race
        rec = study_record(f"{n}{i:021d}", f"1.{n}.{i}", f"9.1.{i}")
        assert instances.insert_instance(writer, rec, rows) is not None

    two_writers_at_once(database, insert, per_writer)

    async def summaries():
        db = await sqlite.open_database(database)
        try:
            series = await db.conn.execute_fetchall("SELECT series_instance_uid, instance_count FROM series")
            study = await db.conn.execute_fetchall("SELECT series_count, instance_count FROM study")
            tags = await db.conn.execute_fetchall("SELECT COUNT(*), COUNT(DISTINCT id) FROM dicom_tag")
            return [tuple(r) for r in series], [tuple(r) for r in study], tuple(tags[0])
        finally:
            await db.close()

    series, study, tags = run(summaries())
    assert sorted(series) == sorted((f"9.1.{i}", 2) for i in range(per_writer))
    assert study == [(per_writer, 2 * per_writer)]
    assert tags == (2 * per_writer * len(rows),) * 2


def counts_and_recounts(database) -> tuple[list, list]:
    """Each series' and study's kept instance counts, and the same counted from the instances."""

    async def read():
        db = await sqlite.open_database(database)
        try:
            kept = await db.conn.execute_fetchall(
                "SELECT series_instance_uid, instance_count FROM series ORDER BY 1"
            ) + await db.conn.execute_fetchall("SELECT study_instance_uid, instance_count FROM study ORDER BY 1")
            recount = await db.conn.execute_fetchall(
                "SELECT series_instance_uid, COUNT(DISTINCT sop_instance_uid) FROM dicom GROUP BY 1 ORDER BY 1"
            ) + await db.conn.execute_fetchall(
                "SELECT study_instance_uid, COUNT(*) FROM (SELECT DISTINCT study_instance_uid, series_instance_uid,"
                " sop_instance_uid FROM dicom) AS v GROUP BY 1 ORDER BY 1"
            )
            return [tuple(r) for r in kept], [tuple(r) for r in recount]
        finally:
            await db.close()

    return run(read())


def test_an_insert_counts_what_its_new_rows_add_to_the_series(database):
    """After an insert the series' count grows by the new SOP Instance UIDs only (an index probe
    per new row, not a recount): versions (same UID, other pixels) in one batch, later, and from
    two writers at once, count once; a delete recounts."""
    create(database)
    writer = sqlite.connection(database)

    def version(instance_id: str, sop: str, series: str, pixels: str) -> tuple:
        return (study_record(instance_id, sop, series) | {"pixel_hash": pixels}, [], None)

    batch = [version("A" * 22, "1.1", "9.1.1", "h1"), version("B" * 22, "1.1", "9.1.1", "h2"),
             version("C" * 22, "1.2", "9.1.1", "h1"), version("D" * 22, "1.3", "9.1.2", "h1")]  # fmt: skip
    assert instances.insert_instances(writer, batch) == ["A" * 22, "B" * 22, "C" * 22, "D" * 22]
    assert counts_and_recounts(database)[0] == [("9.1.1", 2), ("9.1.2", 1), ("9.1", 3)]
    assert instances.insert_instances(writer, [version("E" * 22, "1.1", "9.1.1", "h3")]) == ["E" * 22]
    assert instances.insert_instances(writer, [version("F" * 22, "1.4", "9.1.1", "h1")]) == ["F" * 22]
    kept, recount = counts_and_recounts(database)
    assert kept == recount == [("9.1.1", 3), ("9.1.2", 1), ("9.1", 4)]

    def insert(other: sqlite.Writer, n: int, i: int) -> None:  # the same UIDs, other pixels, at once
        instances.insert_instances(other, [version(f"{n}{i:021d}", f"2.{i}", "9.1.3", f"p{n}")])

    two_writers_at_once(database, insert, 10)
    kept, recount = counts_and_recounts(database)
    assert kept == recount and ("9.1.3", 10) in kept

    async def delete():
        db = await sqlite.open_database(database)
        try:
            await instances.delete(db, {"SOPInstanceUID": "1.1"})
        finally:
            await db.close()

    run(delete())
    kept, recount = counts_and_recounts(database)
    assert kept == recount and ("9.1.1", 2) in kept


@pytest.mark.postgres_only
def test_a_deadlocked_insert_is_run_again(database, monkeypatch):
    """PostgreSQL aborts one of two deadlocked transactions (40P01): that one runs again."""
    import psycopg.errors

    create(database)
    real, calls = instances._insert_instances, []

    def deadlocked_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return real(*args)

    monkeypatch.setattr(instances, "_insert_instances", deadlocked_once)
    writer = sqlite.connection(database)
    assert instances.insert_instance(writer, record("F" * 22, "1.2.5"), []) == "F" * 22
    assert len(calls) == 2


def test_placeholders_are_translated_for_psycopg_outside_quoted_text():
    from dicomsvc.storage.postgres import translate

    assert translate("SELECT a FROM t WHERE b = ? AND c = :name") == "SELECT a FROM t WHERE b = %s AND c = %(name)s"
    assert translate("SELECT '?', 'a:b', '%', x::json, \"q?\" FROM t WHERE y LIKE ?") == (
        "SELECT '?', 'a:b', '%%', x::json, \"q?\" FROM t WHERE y LIKE %s"
    )
    assert translate("SELECT 5 % 2") == "SELECT 5 %% 2"
    assert translate("BEGIN IMMEDIATE") == "BEGIN"


def test_postgres_rows_read_as_sqlite_rows():
    from dicomsvc.storage.postgres import Row

    row = Row((1, "a"), {"n": 0, "s": 1})
    assert (row[0], row["s"], dict(row), tuple(row), len(row)) == (1, "a", {"n": 1, "s": "a"}, (1, "a"), 2)
    assert row == (1, "a") and dict([Row(("k", 2), {"a": 0, "b": 1})]) == {"k": 2}


@pytest.mark.postgres_only
def test_postgres_commits_are_durable_and_the_audit_trails_are_not_waited_for(database):
    """A worker's and the service's commits flush the WAL (synchronous_commit on: a 201 survives a
    power cut); the audit trail's connections do not wait for the flush (as on SQLite)."""
    from dicomsvc.storage import audit

    create(database)
    assert sqlite.connection(database).db.execute("SHOW synchronous_commit").fetchone() == ("on",)

    async def settings():
        db, trail = await sqlite.open_database(database), await audit.open_writer(database)
        try:
            return (
                await db.conn.execute_fetchall("SHOW synchronous_commit"),
                await trail.conn.execute_fetchall("SHOW synchronous_commit"),
            )
        finally:
            await db.close()
            await trail.close()

    service, trail = run(settings())
    assert (tuple(service[0]), tuple(trail[0])) == (("on",), ("off",))


@pytest.mark.postgres_only
def test_a_query_cancelled_while_waiting_for_a_pooled_connection_is_cancelled(database):
    """psycopg_pool hands a released connection to a waiter even when the waiter was cancelled in
    the meantime; the cancellation must still reach the task (a background loop that swallowed
    it never stopped, and the app's shutdown hung)."""
    from dicomsvc.storage import postgres

    async def scenario():
        conn = await postgres.open_pool(database, 1)
        try:
            async with postgres.transaction(conn):  # holds the pool's only connection
                waiter = asyncio.create_task(conn.execute_fetchall("SELECT 1"))
                await asyncio.sleep(0.05)  # it waits for the connection
            waiter.cancel()  # the connection was just handed to it
            try:
                got = await waiter
            except asyncio.CancelledError:
                return "cancelled"
            return f"swallowed: {got}"
        finally:
            await conn.close()

    assert run(scenario()) == "cancelled"


@pytest.mark.sqlite_only(reason="aiosqlite's one connection and its statement queue (PostgreSQL: a pooled connection each)")
def test_a_cancelled_transaction_stays_cancelled_and_leaves_none_open(database):
    """A transaction cancelled while its statements are still queued on aiosqlite's thread: the
    ROLLBACK runs after them and the caller sees the CancelledError -- not the ROLLBACK's "no
    transaction is active" (a runner catching Exception then lost the cancellation and the app's
    shutdown hung) -- and the next transaction begins."""

    async def scenario():
        db = await sqlite.open_database(database)
        try:
            gate = threading.Event()
            await db.conn.create_function("hold", 0, lambda: gate.wait(10))  # liveness bound only
            with pytest.raises(asyncio.CancelledError):
                async with sqlite.transaction(db) as conn:
                    held = asyncio.ensure_future(conn.execute("SELECT hold()"))  # the thread waits
                    await asyncio.sleep(0.05)
                    committing = asyncio.ensure_future(conn.execute("COMMIT"))  # queued behind it
                    await asyncio.sleep(0.05)
                    threading.Timer(0.2, gate.set).start()
                    raise asyncio.CancelledError  # a transaction still open, as far as anyone can see
            await held
            await committing
            async with sqlite.transaction(db) as conn:
                await conn.execute("UPDATE health SET checked_at = 'x' WHERE id = 1")
            assert not db.conn.in_transaction
        finally:
            await db.close()

    run(scenario())


@pytest.mark.sqlite_only(reason="aiosqlite's one connection and its statement queue (PostgreSQL: a pooled connection each)")
def test_a_transaction_cancelled_while_its_begin_waits_for_the_lock_leaves_none_open(database):
    """Another writer (a worker) holds the lock; the service's BEGIN IMMEDIATE waits for it in
    aiosqlite's thread and its task is cancelled (a stopping server, a lost job lease). Once the
    lock is free the BEGIN runs, and the ROLLBACK queued behind it closes it: the lock is free for
    the workers again and the service's next transaction begins. Before: the BEGIN's await was
    outside the transaction's try, the transaction stayed open and held the lock for good."""

    async def scenario():
        db = await sqlite.open_database(database)
        worker = sqlite3.connect(database, isolation_level=None, timeout=0)
        try:
            worker.execute("BEGIN IMMEDIATE")

            async def write():
                async with sqlite.transaction(db) as conn:
                    await conn.execute("UPDATE health SET checked_at = 'x' WHERE id = 1")

            task = asyncio.ensure_future(write())
            await asyncio.sleep(0.3)  # its BEGIN IMMEDIATE is waiting in the busy handler
            task.cancel()
            await asyncio.sleep(0.05)  # the cancellation delivered at the BEGIN's await
            worker.execute("ROLLBACK")  # the worker commits: the lock is free for the BEGIN
            with pytest.raises(asyncio.CancelledError):
                await task
            await db.conn.execute("SELECT 1")  # queued after whatever the cancelled task queued
            assert not db.conn.in_transaction
            worker.execute("BEGIN IMMEDIATE")  # at once (timeout 0): nobody holds the lock
            worker.execute("ROLLBACK")
            await sqlite.probe_write(db, "now")
        finally:
            worker.close()
            await db.close()

    run(scenario())


def test_tag_rows_go_in_as_whole_chunks_of_prepared_statements():
    for n in (0, 1, 63, 64, 65, 118, 132, 1000):
        sizes = instances._chunks(n)
        assert sum(sizes) == n and all(size in instances._INSERT_TAG_ROWS for size in sizes)
        assert len(sizes) <= n // 64 + 6
    # the tree test above inserts 132 rows (64 + 64 + 4): sequence items point across chunks
    assert len(flatten(read(sample_file("rtplan.dcm")).ds, None)) > 128


# Indexes each storage query's plan must search by (dropping one of them must fail a test): GET
# /dicom's filters are read newest first from their own index, with no sort (instances.search).
SEARCH_INDEXES = {
    "PatientID": "dicom_patient", "StudyInstanceUID": "dicom_study", "SeriesInstanceUID": "dicom_series",
    "SOPInstanceUID": "dicom_sop", "Modality": "dicom_modality", "AccessionNumber": "dicom_accession",
}  # fmt: skip


def reads_every_instance(sql: str) -> bool:
    """The only statements that read every instance: /stats' totals, and the newest instances
    unfiltered, of GET /dicom and QIDO-RS (the table in pk order; LIMIT ends it)."""
    from dicomsvc.storage.studies import CURRENT

    unfiltered = ("WHERE TRUE ORDER BY pk DESC", f"WHERE {' '.join(CURRENT.split())} ORDER BY d.pk DESC")
    return sql.startswith("SELECT COUNT(*) AS instances") or any(where in sql for where in unfiltered)
DICOM_TABLES = re.compile(r"^SCAN (dicom|dicom_tag|dicom_json|d|n|o|dt|j)$")


async def recorded_plans(path) -> list[tuple[str, list[str]]]:
    """Every statement the storage read and delete functions run, with its EXPLAIN QUERY PLAN."""
    from dicomsvc.storage import studies
    from dicomsvc.storage.studies import Condition as C

    db = await sqlite.open_database(path)
    seen = []
    run_query = db.conn.execute_fetchall

    async def recording(sql, params=()):
        seen.append((sql, params))
        return await run_query(sql, params)

    db.conn.execute_fetchall = recording
    db.conn.execute = recording
    db.reader = None  # read_now's point reads through the recorded connection too
    try:
        for keyword in instances.FILTERS:
            await instances.search(db, {keyword: "x"}, None, 10)
            await instances.delete(db, {keyword: "x"})
        await instances.delete(db, {"id": "x"})
        await instances.search(db, {}, ("20200101", "20200101"), 10)
        for owner in (None, "u"):
            await instances.search(db, {}, None, 10, owner=owner)
            await instances.get_instance(db, "x", owner)
            await instances.get_tags_json(db, "x", owner)
            await instances.instances_by_uid(db, "s", None, owner)
            await instances.instances_by_uid(db, "s", "se", owner)
            await instances.instance_by_uid(db, "s", "se", "sop", owner)
            await instances.representative(db, "s", None, owner)
            await instances.stats(db, owner)
            for level in studies.LEVELS:
                await studies.search(db, level, [], 10, 0, extra_tags=("00100010",), owner=owner)
                study = [C("StudyInstanceUID", "single", ("s",))]
                await studies.search(db, level, study, 10, 0, in_study=True, owner=owner)
            await studies.search(db, "instance", [C("SOPInstanceUID", "single", ("sop",))], 10, 0, owner=owner)
            await studies.search(db, "series", [C("SeriesInstanceUID", "single", ("se",))], 10, 0, owner=owner)
            await studies.search(db, "study", [C("PatientID", "single", ("p",))], 10, 0, owner=owner)
            for scope in (("s", None, None), ("s", "se", None), ("s", "se", "sop")):
                await studies.version(db, scope, owner)
                await studies.metadata_page(db, scope, "a", "b", 10, 0, owner)
                await studies.without_metadata(db, scope, owner)
        seen += studies._steps([("s", "se")], 1, "sqlite")  # a delete's study and series refresh
        seen += studies._steps([("s", "se")], 1, "sqlite", {("s", "se"): [1, 2]})  # an insert's
        seen.append((instances.FIND_INSTANCE_SQL, ("sop", "h")))
        plans = []
        for sql, params in seen:
            if re.search(r"\b(dicom|dicom_tag|dicom_json)\b", sql):
                rows = await run_query("EXPLAIN QUERY PLAN " + sql, params)
                plans.append((" ".join(sql.split()), [row[3] for row in rows]))
        return plans
    finally:
        await db.close()


@pytest.mark.sqlite_only(reason="EXPLAIN QUERY PLAN is SQLite's")
def test_every_storage_query_searches_the_instances_by_an_index(tmp_path):
    plans = run(recorded_plans(tmp_path / "plans.db"))
    assert len(plans) > 60
    for sql, plan in plans:
        if not reads_every_instance(sql):
            assert not [step for step in plan if DICOM_TABLES.match(step)], (sql, plan)
    for keyword, index in SEARCH_INDEXES.items():
        column = instances.FILTERS[keyword]
        (plan,) = [p for sql, p in plans if sql.startswith(f"SELECT * FROM dicom WHERE {column} = ? ORDER BY pk DESC")]
        assert plan == [f"SEARCH dicom USING INDEX {index} ({column}=?)"]
    by_sop_owned = [  # QIDO-RS instances by SOP Instance UID, DICOMSVC_VISIBILITY=own
        p for sql, p in plans if sql.startswith("SELECT st.") and "d.sop_instance_uid = ?" in sql and "d.uploaded_by = ?" in sql
    ]
    assert by_sop_owned and all(
        any(step.startswith("SEARCH d USING INDEX dicom_sop") for step in p) for p in by_sop_owned
    )
    (tags,) = {tuple(p) for sql, p in plans if sql.startswith("SELECT json_group_array") and "uploaded_by" not in sql}
    assert any("dicom_tag_by_dicom" in step for step in tags)
    assert not [step for step in tags if "TEMP B-TREE" in step], tags  # in id order from the index, no sort
    # a series' instances, newest version of each SOP Instance UID, from the index alone (WADO-RS)
    series = [p for sql, p in plans if sql.startswith("SELECT id, sop_instance_uid") and "series_instance_uid = ? GROUP" in sql]
    assert series and all(
        any("COVERING INDEX dicom_series_sop (study_instance_uid=? AND series_instance_uid=?)" in step for step in p)
        for p in series
    )
    (find,) = [p for sql, p in plans if sql == instances.FIND_INSTANCE_SQL]
    assert find == ["SEARCH dicom USING INDEX sqlite_autoindex_dicom_2 (sop_instance_uid=? AND pixel_hash=?)"]


@pytest.mark.sqlite_only(reason="EXPLAIN QUERY PLAN is SQLite's")
def test_an_index_the_queries_need_dropped_fails_the_plan_check(tmp_path, monkeypatch):
    """The check above can fail: without dicom_sop or dicom_tag_by_dicom it does."""
    for index in ("dicom_sop", "dicom_tag_by_dicom", "dicom_series_sop"):
        text = sqlite.schema()
        create_line = next(line for line in text.splitlines() if f"EXISTS {index} ON" in line)
        monkeypatch.setattr(sqlite, "schema", lambda t=text, c=create_line: t.replace(c, f"DROP INDEX IF EXISTS {index};"))
        (tmp_path / index).mkdir()
        with pytest.raises(AssertionError):
            test_every_storage_query_searches_the_instances_by_an_index(tmp_path / index)
