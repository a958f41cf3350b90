"""SQLite storage: plain SQL in short functions that return plain data.

One database file in WAL mode. The ingest pipeline writes from the worker
processes, each through its own connection (``connection``), one short
``BEGIN IMMEDIATE`` transaction per instance: SQLite serializes the writers,
and no write ever crosses a process boundary or the event loop. The HTTP side
reads (and keeps the books of background jobs) through one aiosqlite
connection (``Database``); every ``await`` on it is a round trip to its thread,
so each read is a single query.
"""

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

from .tags import TagRow

SCHEMA = Path(__file__).resolve().parent.parent / "schema.sql"

INSTANCE_COLUMNS = (
    "id", "sop_instance_uid", "pixel_hash", "sop_class_uid", "study_instance_uid",
    "series_instance_uid", "patient_id", "patient_name", "patient_sex", "patient_birth_date",
    "study_date", "study_description", "accession_number", "modality", "transfer_syntax_uid",
    "rows", "columns", "frames", "bits_allocated", "bits_stored", "photometric", "has_pixels",
    "dcm_blob", "dcm_bytes", "png_blob", "png_bytes", "render_error", "source", "anonymized",
    "anonymized_from", "created_at",
)  # fmt: skip
# Columns added after a table was first released: (table, column, definition)
ADDED_COLUMNS = (
    ("dicom", "anonymized", "INTEGER NOT NULL DEFAULT 0"),
    ("dicom", "anonymized_from", "TEXT"),
    ("dicom", "patient_sex", "TEXT"),
    ("dicom", "patient_birth_date", "TEXT"),
    ("dicom", "study_description", "TEXT"),
    ("dicom", "bits_allocated", "INTEGER"),
    ("dicom", "bits_stored", "INTEGER"),
    ("dicom", "photometric", "TEXT"),
    ("dicom", "png_bytes", "INTEGER"),
)
PRAGMAS = ("PRAGMA busy_timeout = 30000", "PRAGMA foreign_keys = ON", "PRAGMA synchronous = NORMAL")
FIND_INSTANCE_SQL = "SELECT id FROM dicom WHERE sop_instance_uid = ? AND pixel_hash = ?"


# The write side (sync, in worker processes) ---------------------------------------

@dataclass
class Writer:
    """A worker's connection, with the tag dictionary ids it has seen committed."""

    db: sqlite3.Connection
    tag_ids: dict[tuple[int, str, str], int] = field(default_factory=dict)


_local = threading.local()


def connection(path: Path) -> Writer:
    """This thread's connection to ``path``, opened on first use and kept (opening costs ~0.4 ms)."""
    writers = _local.__dict__.setdefault("writers", {})
    writer = writers.get(path)
    if writer is None:
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        for pragma in PRAGMAS:
            db.execute(pragma)
        writer = writers[path] = Writer(db)
    return writer


def find_instance(w: Writer, sop_instance_uid: str, pixel_hash: str) -> str | None:
    row = w.db.execute(FIND_INSTANCE_SQL, (sop_instance_uid, pixel_hash)).fetchone()
    return row[0] if row else None


def insert_instance(w: Writer, record: dict, rows: Sequence[TagRow]) -> str | None:
    """Insert an instance and its tag rows in one transaction.

    Returns None when an instance with the same SOP Instance UID and pixel hash
    is already stored: the unique constraint decides, so concurrent posts of one
    file store it once.
    """
    columns = ", ".join(INSTANCE_COLUMNS)
    marks = ", ".join("?" for _ in INSTANCE_COLUMNS)
    db = w.db
    missing = sorted({(r.tag, r.vr, r.keyword) for r in rows} - w.tag_ids.keys())
    db.execute("BEGIN IMMEDIATE")
    try:
        inserted = db.execute(
            f"INSERT INTO dicom ({columns}) VALUES ({marks}) "
            "ON CONFLICT (sop_instance_uid, pixel_hash) DO NOTHING RETURNING pk",
            tuple(record[c] for c in INSTANCE_COLUMNS),
        ).fetchone()
        if inserted is None:
            db.execute("ROLLBACK")
            return None
        db.executemany("INSERT OR IGNORE INTO tag (tag, vr, keyword) VALUES (?, ?, ?)", missing)
        tag_ids = w.tag_ids | _tag_ids(db, missing)
        # Row ids are chosen here (inside the write lock) so sequence items can point
        # at their sequence's row: the tree is written in one statement.
        (first,) = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM dicom_tag").fetchone()
        db.executemany(
            "INSERT INTO dicom_tag (id, dicom_pk, tag_id, parent_id, item, value, nbytes) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    first + i,
                    inserted[0],
                    tag_ids[(r.tag, r.vr, r.keyword)],
                    None if r.parent is None else first + r.parent,
                    r.item,
                    r.value,
                    r.nbytes,
                )
                for i, r in enumerate(rows)
            ],
        )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    w.tag_ids = tag_ids  # only ids that are committed (tag rows are never deleted)
    return record["id"]


def _tag_ids(db: sqlite3.Connection, keys: list[tuple[int, str, str]]) -> dict:
    """tag.id for each (tag, vr, keyword), in one query over a temporary VALUES list."""
    found = {}
    for start in range(0, len(keys), 300):  # stay under SQLite's bound-parameter limit
        chunk = keys[start : start + 300]
        values = ", ".join("(?, ?, ?)" for _ in chunk)
        params = [v for key in chunk for v in key]
        for tag_id, tag, vr, keyword in db.execute(
            f"SELECT t.id, t.tag, t.vr, t.keyword FROM tag t "
            f"JOIN (VALUES {values}) AS k ON t.tag = k.column1 AND t.vr = k.column2 AND t.keyword = k.column3",
            params,
        ):
            found[(tag, vr, keyword)] = tag_id
    return found


# The read side (async, in the service) ---------------------------------------------


@dataclass
class Database:
    conn: aiosqlite.Connection  # the service's own: reads, and job bookkeeping
    # One transaction at a time on ``conn``: coroutines share it, and a statement of one
    # must not land inside (and roll back with) another's transaction.
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def close(self) -> None:
        await self.conn.close()


@contextlib.asynccontextmanager
async def transaction(db: Database) -> AsyncIterator[aiosqlite.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the service's connection, one at a time."""
    async with db.write_lock:
        await db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db.conn
        except BaseException:
            await db.conn.execute("ROLLBACK")
            raise
        await db.conn.execute("COMMIT")


async def open_database(path: Path) -> Database:
    """Create or upgrade the schema and open the service's read connection."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = aiosqlite.Row
    for pragma in PRAGMAS:
        await conn.execute(pragma)
    await conn.execute("PRAGMA journal_mode = WAL")
    for table, column, definition in ADDED_COLUMNS:  # older databases: add what they lack
        columns = {row["name"] for row in await conn.execute_fetchall(f"PRAGMA table_info({table})")}
        if columns and column not in columns:
            await conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    await conn.executescript(SCHEMA.read_text())
    return Database(conn=conn)


async def get_instance(db: Database, instance_id: str) -> dict | None:
    rows = await db.conn.execute_fetchall("SELECT * FROM dicom WHERE id = ?", (instance_id,))
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
    ((text,),) = await db.conn.execute_fetchall(TAGS_JSON_SQL, (instance_id,))
    return None if text == "[]" else text


# Finding and managing what is stored (GET /dicom, DELETE, /stats) ----------------------


async def search(db: Database, where: str, params: Sequence, limit: int, offset: int = 0) -> list[dict]:
    """Rows matching ``where`` (a fragment over ``dicom`` columns), newest first."""
    rows = await db.conn.execute_fetchall(
        f"SELECT * FROM dicom WHERE {where} ORDER BY pk DESC LIMIT ? OFFSET ?", (*params, limit, offset)
    )
    return [dict(r) for r in rows]


async def delete(db: Database, where: str, params: Sequence) -> list[dict]:
    """Delete matching instances (their tag rows go with them); returns their blob keys."""
    async with transaction(db) as conn:
        gone = await conn.execute_fetchall(f"SELECT id, dcm_blob, png_blob FROM dicom WHERE {where}", params)
        await conn.execute(f"DELETE FROM dicom WHERE {where}", params)
    return [dict(r) for r in gone]


async def stats(db: Database) -> dict:
    ((totals),) = await db.conn.execute_fetchall(
        """
        SELECT COUNT(*) AS instances,
               COUNT(DISTINCT series_instance_uid) AS series,
               COUNT(DISTINCT study_instance_uid) AS studies,
               COUNT(DISTINCT patient_id) AS patients,
               COALESCE(SUM(dcm_bytes), 0) + COALESCE(SUM(png_bytes), 0) AS bytes,
               MIN(created_at) AS earliest, MAX(created_at) AS latest
        FROM dicom
        """
    )
    modalities = await db.conn.execute_fetchall(
        "SELECT COALESCE(modality, '') AS modality, COUNT(*) AS n FROM dicom GROUP BY 1 ORDER BY 2 DESC"
    )
    return dict(totals) | {"modalities": {r["modality"]: r["n"] for r in modalities}}
