"""SQLite storage: plain SQL in short functions that return plain data.

One database in WAL mode; all writes go through one connection, one
transaction at a time (``Database.write_lock``); reads use a second connection.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

from .tags import TagRow, format_tag

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
    return Database(writer=writer, reader=reader)


async def find_instance(db: Database, sop_instance_uid: str, pixel_hash: str) -> str | None:
    """The id of an instance with the same SOP Instance UID and pixels, if stored."""
    cursor = await db.reader.execute(
        "SELECT id FROM dicom WHERE sop_instance_uid = ? AND pixel_hash = ?",
        (sop_instance_uid, pixel_hash),
    )
    row = await cursor.fetchone()
    return row["id"] if row else None


async def get_instance(db: Database, instance_id: str) -> dict | None:
    cursor = await db.reader.execute("SELECT * FROM dicom WHERE id = ?", (instance_id,))
    row = await cursor.fetchone()
    return dict(row) if row else None


async def get_tags(db: Database, instance_id: str) -> list[dict] | None:
    """The tag rows of an instance in file order, or None for an unknown id."""
    cursor = await db.reader.execute(
        """
        SELECT dt.id, t.tag, t.vr, dt.value, t.keyword, dt.nbytes, dt.parent_id, dt.item
        FROM dicom d
        JOIN dicom_tag dt ON dt.dicom_pk = d.pk
        JOIN tag t ON t.id = dt.tag_id
        WHERE d.id = ?
        ORDER BY dt.id
        """,
        (instance_id,),
    )
    rows = await cursor.fetchall()
    if not rows and await get_instance(db, instance_id) is None:
        return None
    return [_tag_json(r) for r in rows]


def _tag_json(r: aiosqlite.Row) -> dict:
    out = {"ID": r["id"], "Tag": format_tag(r["tag"]), "VR": r["vr"], "Value": r["value"], "Name": r["keyword"]}
    if r["nbytes"] is not None:
        out["Bytes"] = r["nbytes"]
    if r["parent_id"] is not None:
        out["Parent"] = r["parent_id"]
        out["Item"] = r["item"]
    return out


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
            cursor = await w.execute(
                f"INSERT INTO dicom ({columns}) VALUES ({marks}) "
                "ON CONFLICT (sop_instance_uid, pixel_hash) DO NOTHING RETURNING pk",
                values,
            )
            inserted = await cursor.fetchone()
            await cursor.close()
            if inserted is None:
                await w.execute("ROLLBACK")
                return None
            new_tags = await _tag_ids(w, db.tag_ids, rows)
            cursor = await w.execute("SELECT COALESCE(MAX(id), 0) FROM dicom_tag")
            (last,) = await cursor.fetchone()
            await w.executemany(
                "INSERT INTO dicom_tag (id, dicom_pk, tag_id, parent_id, item, value, nbytes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        last + 1 + i,
                        inserted[0],
                        db.tag_ids.get(_tag_key(r)) or new_tags[_tag_key(r)],
                        None if r.parent is None else last + 1 + r.parent,
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
            raise
    db.tag_ids.update(new_tags)
    return record["id"]


def _tag_key(r: TagRow) -> tuple[int, str, str]:
    return (r.tag, r.vr, r.keyword)


async def _tag_ids(w: aiosqlite.Connection, known: dict, rows: Sequence[TagRow]) -> dict:
    """Ids for dictionary entries not yet cached, inserting those that are new."""
    missing = {_tag_key(r) for r in rows} - known.keys()
    if not missing:
        return {}
    await w.executemany("INSERT OR IGNORE INTO tag (tag, vr, keyword) VALUES (?, ?, ?)", sorted(missing))
    found = {}
    for key in missing:
        cursor = await w.execute("SELECT id FROM tag WHERE tag = ? AND vr = ? AND keyword = ?", key)
        (found[key],) = await cursor.fetchone()
    return found
