"""SQLite storage, directly: the upgrade step, the write path, the JSON the reads build."""

import asyncio
import json
import sqlite3
from pathlib import Path

from dicomfiles import sample_file
from dicomsvc.storage import instances, sqlite
from dicomsvc.dicom.parse import read
from dicomsvc.dicom.tags import flatten

FIRST_SCHEMA = Path(__file__).parent / "schema_v0.sql"  # schema.sql as first released


def run(coro):
    return asyncio.run(coro)


def record(instance_id: str, sop: str) -> dict:
    return {c: None for c in instances.INSTANCE_COLUMNS} | {
        "id": instance_id, "sop_instance_uid": sop, "pixel_hash": "h", "has_pixels": 0, "dcm_blob": "x",
        "dcm_bytes": 1, "source": "test", "anonymized": 0, "created_at": "2026-01-01T00:00:00Z",
    }  # fmt: skip


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


def test_insert_then_tags_json_keeps_order_and_tree(tmp_path):
    path = tmp_path / "d.db"
    run(run(sqlite.open_database(path)).close())  # creates the schema
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
