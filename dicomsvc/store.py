"""SQLite storage: plain SQL in short functions that return plain data.

One database in WAL mode; all writes go through one connection, one
transaction at a time (``Database.write_lock``); reads use a second connection.
Every ``await`` on an aiosqlite connection is a round trip to its thread, so
each function here makes as few as it can: an ingest costs four, a read one.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

from .tags import TagRow

SCHEMA = Path(__file__).resolve().parent.parent / "schema.sql"

INSTANCE_COLUMNS = (
    "id", "sop_instance_uid", "pixel_hash", "sop_class_uid", "study_instance_uid",
    "series_instance_uid", "patient_id", "patient_name", "study_date", "accession_number",
    "modality", "transfer_syntax_uid", "rows", "columns", "frames", "has_pixels",
    "dcm_blob", "dcm_bytes", "png_blob", "render_error", "source", "created_at",
)  # fmt: skip


@dataclass
class Database:
    writer: aiosqlite.Connection
    reader: aiosqlite.Connection
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # (tag, vr, keyword) -> tag.id, filled as rows are committed
    tag_ids: dict[tuple[int, str, str], int] = field(default_factory=dict)
    # the next dicom_tag.id: this connection is the only writer, so it counts them itself
    next_tag_row: int = 1

    async def close(self) -> None:
        await self.reader.close()
        await self.writer.close()


async def _connect(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    db.row_factory = aiosqlite.Row
    await db.execute("PRAGMA busy_timeout = 10000")
    await db.execute("PRAGMA foreign_keys = ON")
    await db.execute("PRAGMA synchronous = NORMAL")
    return db


async def open_database(path: Path) -> Database:
    writer = await _connect(path)
    await writer.execute("PRAGMA journal_mode = WAL")
    await writer.executescript(SCHEMA.read_text())
    reader = await _connect(path)
    db = Database(writer=writer, reader=reader)
    await _sync_next_tag_row(db)
    return db


async def _sync_next_tag_row(db: Database) -> None:
    ((last,),) = await db.writer.execute_fetchall("SELECT COALESCE(MAX(id), 0) FROM dicom_tag")
    db.next_tag_row = last + 1


FIND_INSTANCE_SQL = "SELECT id FROM dicom WHERE sop_instance_uid = ? AND pixel_hash = ?"


async def find_instance(db: Database, sop_instance_uid: str, pixel_hash: str) -> str | None:
    """The id of an instance with the same SOP Instance UID and pixels, if stored."""
    rows = await db.reader.execute_fetchall(FIND_INSTANCE_SQL, (sop_instance_uid, pixel_hash))
    return rows[0]["id"] if rows else None


async def get_instance(db: Database, instance_id: str) -> dict | None:
    rows = await db.reader.execute_fetchall("SELECT * FROM dicom WHERE id = ?", (instance_id,))
    return dict(rows[0]) if rows else None


# Each row as a JSON object, built by SQLite: optional keys only where they apply.
_ROW_JSON = """
    json_object('ID', dt.id, 'Tag', printf('(%04X,%04X)', t.tag >> 16, t.tag & 65535),
                'VR', t.vr, 'Value', dt.value, 'Name', t.keyword{extra})"""
TAGS_JSON_SQL = f"""
SELECT json_group_array(json(row)) FROM (
    SELECT CASE
        WHEN dt.nbytes IS NULL AND dt.parent_id IS NULL THEN {_ROW_JSON.format(extra="")}
        WHEN dt.parent_id IS NULL THEN {_ROW_JSON.format(extra=", 'Bytes', dt.nbytes")}
        WHEN dt.nbytes IS NULL THEN {_ROW_JSON.format(extra=", 'Parent', dt.parent_id, 'Item', dt.item")}
        ELSE {_ROW_JSON.format(extra=", 'Bytes', dt.nbytes, 'Parent', dt.parent_id, 'Item', dt.item")}
    END AS row
    FROM dicom_tag dt JOIN tag t ON t.id = dt.tag_id
    WHERE dt.dicom_pk = (SELECT pk FROM dicom WHERE id = ?)
    ORDER BY dt.id
)
"""


async def get_tags_json(db: Database, instance_id: str) -> str | None:
    """The tag rows of an instance in file order, as a JSON array; None for an unknown id.

    SQLite builds the JSON (one query, one round trip); every stored instance has
    rows, so an empty array means there is no such instance.
    """
    ((text,),) = await db.reader.execute_fetchall(TAGS_JSON_SQL, (instance_id,))
    return None if text == "[]" else text


async def insert_instance(db: Database, record: dict, rows: Sequence[TagRow]) -> str | None:
    """Insert an instance and its tag rows in one transaction.

    Returns None when an instance with the same SOP Instance UID and pixel hash
    is already stored (the unique constraint decides, so concurrent posts of
    one file store it once); the caller then looks up the existing id.
    """
    columns = ", ".join(INSTANCE_COLUMNS)
    marks = ", ".join("?" for _ in INSTANCE_COLUMNS)
    values = tuple(record[c] for c in INSTANCE_COLUMNS)
    w = db.writer
    async with db.write_lock:
        await w.execute("BEGIN IMMEDIATE")
        try:
            inserted = await w.execute_fetchall(
                f"INSERT INTO dicom ({columns}) VALUES ({marks}) "
                "ON CONFLICT (sop_instance_uid, pixel_hash) DO NOTHING RETURNING pk",
                values,
            )
            if not inserted:
                await w.execute("ROLLBACK")
                return None
            new_tags = await _tag_ids(w, db.tag_ids, rows)
            first = db.next_tag_row
            await w.executemany(
                "INSERT INTO dicom_tag (id, dicom_pk, tag_id, parent_id, item, value, nbytes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        first + i,
                        inserted[0][0],
                        db.tag_ids.get(_tag_key(r)) or new_tags[_tag_key(r)],
                        None if r.parent is None else first + r.parent,
                        r.item,
                        r.value,
                        r.nbytes,
                    )
                    for i, r in enumerate(rows)
                ],
            )
            await w.execute("COMMIT")
        except BaseException:
            if w.in_transaction:
                await w.execute("ROLLBACK")
            await _sync_next_tag_row(db)  # in case someone else wrote rows meanwhile
            raise
        db.next_tag_row = first + len(rows)
    db.tag_ids.update(new_tags)
    return record["id"]


def _tag_key(r: TagRow) -> tuple[int, str, str]:
    return (r.tag, r.vr, r.keyword)


async def _tag_ids(w: aiosqlite.Connection, known: dict, rows: Sequence[TagRow]) -> dict:
    """Ids for dictionary entries not yet cached, inserting those that are new."""
    missing = sorted({_tag_key(r) for r in rows} - known.keys())
    if not missing:
        return {}
    await w.executemany("INSERT OR IGNORE INTO tag (tag, vr, keyword) VALUES (?, ?, ?)", missing)
    found = {}
    for key in missing:
        ((found[key],),) = await w.execute_fetchall(
            "SELECT id FROM tag WHERE tag = ? AND vr = ? AND keyword = ?", key
        )
    return found
