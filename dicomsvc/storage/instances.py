"""Stored instances: insert (in workers), look up, tags as JSON, search, delete, statistics.

Plain SQL in short functions that return plain data. Searches take DICOM keywords
(``FILTERS``); which column holds each is this module's business alone.
"""

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Protocol

from . import forwarding, studies
from .dialect import POSTGRESQL, SQLITE, is_url
from .sqlite import Database, Writer, Where, read_now, transaction

INSTANCE_COLUMNS = (
    "id", "sop_instance_uid", "pixel_hash", "sop_class_uid", "study_instance_uid",
    "series_instance_uid", "patient_id", "patient_name", "patient_sex", "patient_birth_date",
    "study_date", "study_description", "accession_number", "modality", "transfer_syntax_uid",
    "rows", "columns", "frames", "bits_allocated", "bits_stored", "photometric", "has_pixels",
    "dcm_blob", "dcm_bytes", "png_blob", "png_bytes", "render_error", "source", "anonymized",
    "anonymized_from", "created_at", "study_time", "study_id", "referring_physician_name",
    "timezone_offset", "series_number", "series_description", "pps_start_date", "pps_start_time",
    "instance_number", "uploaded_by",
)  # fmt: skip
# Exact-match search filters: DICOM keyword -> indexed column
FILTERS = {
    "PatientID": "patient_id",
    "StudyInstanceUID": "study_instance_uid",
    "SeriesInstanceUID": "series_instance_uid",
    "SOPInstanceUID": "sop_instance_uid",
    "Modality": "modality",
    "AccessionNumber": "accession_number",
}
_COLUMNS = FILTERS | {"id": "id"}  # and the public id, for deleting one instance
FIND_INSTANCE_SQL = "SELECT id FROM dicom WHERE sop_instance_uid = ? AND pixel_hash = ?"
STORED_VERSIONS_SQL = "SELECT pixel_hash, id FROM dicom WHERE sop_instance_uid = ?"


Forwards = Sequence[tuple[str, bool]]  # (destination, anonymize) pairs the routing rules name


class TagRowLike(Protocol):
    """A flattened element as ``dicomsvc.dicom.tags.TagRow`` has it."""

    tag: int
    vr: str
    keyword: str
    parent: int | None
    item: int | None
    value: str | None
    nbytes: int | None


# The write side (sync, in worker processes) ---------------------------------------


def find_instance(w: Writer, sop_instance_uid: str, pixel_hash: str) -> str | None:
    row = w.db.execute(FIND_INSTANCE_SQL, (sop_instance_uid, pixel_hash)).fetchone()
    return row[0] if row else None


def stored_versions(w: Writer, sop_instance_uid: str) -> dict[str, str]:
    """{pixel hash: id} of the instances stored with this SOP Instance UID (almost always none;
    more than one when it was sent with other pixel data)."""
    return dict(w.db.execute(STORED_VERSIONS_SQL, (sop_instance_uid,)).fetchall())


def insert_instance(
    w: Writer, record: dict, rows: Sequence[TagRowLike], metadata: str | None = None, forwards: Forwards = ()
) -> str | None:
    """Insert an instance, its tag rows and its DICOM JSON ``metadata`` in one transaction,
    with its study and series rows brought up to date (``studies.refresh``) and its
    ``forwards`` (destination, anonymize) queued (``forwarding.queue``, routing rules).

    Returns None when an instance with the same SOP Instance UID and pixel hash
    is already stored: the unique constraint decides, so concurrent posts of one
    file store it once.
    """
    return insert_instances(w, [(record, rows, metadata)], [forwards])[0]


def insert_instances(
    w: Writer, items: Sequence[tuple[dict, Sequence[TagRowLike], str | None]], forwards: Sequence[Forwards] = ()
) -> list[str | None]:
    """``insert_instance`` for several (record, rows, metadata) in ONE transaction: one
    commit, so one WAL sync (``Writer.commit``) for a whole chunk -- the group commit of a
    batch. Each entry's id, or None for one already stored (it alone is skipped).

    On PostgreSQL writers do not wait for each other up front: two batches inserting the same
    instances in other orders can deadlock, and PostgreSQL then aborts one of them; that one is
    run again (up to ``RETRIES`` times) -- it finds the other's instances stored."""
    for attempt in range(RETRIES + 1):
        try:
            return _insert_instances(w, items, forwards)
        except Exception as exc:
            if w.dialect != POSTGRESQL or attempt == RETRIES or not _retryable(exc):
                raise
    raise AssertionError("unreachable")


RETRIES = 3


def _retryable(exc: Exception) -> bool:
    from . import postgres

    return isinstance(exc, postgres.RETRYABLE)


def _insert_instances(
    w: Writer, items: Sequence[tuple[dict, Sequence[TagRowLike], str | None]], forwards: Sequence[Forwards] = ()
) -> list[str | None]:
    db = w.db
    missing = sorted({(r.tag, r.vr, r.keyword) for _, rows, _ in items for r in rows} - w.tag_ids.keys())
    db.execute("BEGIN IMMEDIATE")
    try:
        if missing:  # the dictionary ids this worker has not seen yet
            db.executemany("INSERT INTO tag (tag, vr, keyword) VALUES (?, ?, ?) ON CONFLICT DO NOTHING", missing)
        tag_ids = w.tag_ids | _tag_ids(db, missing)
        pks = [_insert_one(db, tag_ids, record, rows, metadata, w.dialect) for record, rows, metadata in items]
        stored = [None if pk is None else record["id"] for (record, _, _), pk in zip(items, pks)]
        studies.refresh(db, studies.fresh_pairs((r, pk) for (r, _, _), pk in zip(items, pks) if pk is not None))
        # forwards of the instances stored now (a duplicate queues nothing), in the same transaction
        forwarding.queue(db, w.dialect, [(i, f) for i, f in zip(stored, forwards) if i is not None and f])
        w.commit()
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    w.tag_ids = tag_ids  # only ids that are committed (tag rows are never deleted)
    return stored


# The first of n new dicom_tag ids. SQLite: the next after the largest (writers are serialized by
# its write lock); PostgreSQL: a block taken from a sequence, which concurrent writers share
# without waiting (each call's values increase; blocks may interleave, so all n are kept).
_NEXT_TAG_ROW_IDS = {
    SQLITE: "SELECT COALESCE(MAX(id), 0) + 1 FROM dicom_tag",
    POSTGRESQL: "SELECT nextval('dicom_tag_ids') FROM generate_series(1, ?)",
}


def _tag_row_ids(db: sqlite3.Connection, n: int, dialect: str) -> list[int]:
    if dialect == SQLITE:
        (first,) = db.execute(_NEXT_TAG_ROW_IDS[SQLITE]).fetchone()
        return list(range(first, first + n))
    return sorted(r[0] for r in db.execute(_NEXT_TAG_ROW_IDS[POSTGRESQL], (n,)).fetchall())


def _insert_one(
    db: sqlite3.Connection,
    tag_ids: dict,
    record: dict,
    rows: Sequence[TagRowLike],
    metadata: str | None,
    dialect: str = SQLITE,
) -> int | None:
    """Insert one instance's rows; its pk, or None when it is stored already."""
    columns = ", ".join(INSTANCE_COLUMNS)
    marks = ", ".join("?" for _ in INSTANCE_COLUMNS)
    inserted = db.execute(
        f"INSERT INTO dicom ({columns}) VALUES ({marks}) "
        "ON CONFLICT (sop_instance_uid, pixel_hash) DO NOTHING RETURNING pk",
        tuple(record[c] for c in INSTANCE_COLUMNS),
    ).fetchone()
    if inserted is None:
        return None
    # Row ids are chosen here (inside the write lock) so sequence items can point
    # at their sequence's row: the tree is written without reading ids back.
    ids = _tag_row_ids(db, len(rows), dialect)
    values = [
        (ids[i], inserted[0], tag_ids[(r.tag, r.vr, r.keyword)], None if r.parent is None else ids[r.parent],
         r.item, r.value, r.nbytes)
        for i, r in enumerate(rows)
    ]  # fmt: skip
    start = 0
    for size in _chunks(len(values)):
        db.execute(_INSERT_TAG_ROWS[size], [v for row in values[start : start + size] for v in row])
        start += size
    if metadata is not None:
        db.execute("INSERT INTO dicom_json (dicom_pk, metadata) VALUES (?, ?)", (inserted[0], metadata))
    return inserted[0]


# Tag rows go in as multi-row INSERTs, a statement per up to 64 rows: a quarter less CPU than a
# statement run per row (executemany; 0.83 -> 0.65 ms for 80-160 rows), the largest part of an
# instance's insert (issue 12). A remainder is split in powers of two, so there are only 7
# statements, each prepared once.
_TAG_CHUNK = 64
_INSERT_TAG_ROWS = {
    size: "INSERT INTO dicom_tag (id, dicom_pk, tag_id, parent_id, item, value, nbytes) VALUES "
    + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * size)
    for size in (64, 32, 16, 8, 4, 2, 1)
}


def _chunks(n: int) -> list[int]:
    """``n`` as sizes of ``_INSERT_TAG_ROWS``: 64s, then the remainder's powers of two."""
    sizes = [_TAG_CHUNK] * (n // _TAG_CHUNK)
    return sizes + [size for size in (32, 16, 8, 4, 2, 1) if n % _TAG_CHUNK & size]


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


# ``owner`` on a read: only instances that user stored (``uploaded_by``) are found -- the
# DICOMSVC_VISIBILITY=own filter and ``?mine=true``; None finds everyone's.


def _owned(owner: str | None) -> tuple[str, tuple]:
    return (" AND uploaded_by = ?", (owner,)) if owner is not None else ("", ())


_INSTANCE_SQL = {False: "SELECT * FROM dicom WHERE id = ?", True: "SELECT * FROM dicom WHERE id = ? AND uploaded_by = ?"}
# What serving a rendering needs of the row (http.instances.rendering): a fifth of ``SELECT *``'s time
RENDERING_COLUMNS = "id, has_pixels, png_blob, render_error, dcm_blob"
_RENDERING_SQL = {mine: f"SELECT {RENDERING_COLUMNS} FROM dicom WHERE id = ?" + (" AND uploaded_by = ?" if mine else "")
                  for mine in (False, True)}  # fmt: skip
_EXISTS_SQL = {False: "SELECT 1 FROM dicom WHERE id = ?", True: "SELECT 1 FROM dicom WHERE id = ? AND uploaded_by = ?"}


def _id_params(instance_id: str, owner: str | None) -> tuple:
    return (instance_id,) if owner is None else (instance_id, owner)


async def get_instance(db: Database, instance_id: str, owner: str | None = None) -> dict | None:
    """The instance's whole row (None: no such instance, or not ``owner``'s), read at once
    (``sqlite.read_now``: a point lookup on the id's unique index)."""
    rows = await read_now(db, _INSTANCE_SQL[owner is not None], _id_params(instance_id, owner))
    return dict(rows[0]) if rows else None


async def get_rendering_row(db: Database, instance_id: str, owner: str | None = None) -> dict | None:
    """``RENDERING_COLUMNS`` of the instance's row, as ``get_instance`` finds it."""
    rows = await read_now(db, _RENDERING_SQL[owner is not None], _id_params(instance_id, owner))
    return dict(rows[0]) if rows else None


async def instance_exists(db: Database, instance_id: str, owner: str | None = None) -> bool:
    """Whether the instance is stored (and ``owner``'s, when given), read at once."""
    return bool(await read_now(db, _EXISTS_SQL[owner is not None], _id_params(instance_id, owner)))


async def known_ids(db: Database, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` (at most a few hundred) name stored instances."""
    marks = ", ".join("?" for _ in ids)
    rows = await db.conn.execute_fetchall(f"SELECT id FROM dicom WHERE id IN ({marks})", list(ids))
    return {row["id"] for row in rows}


# Each row as a JSON object, built by SQLite: optional keys only where they apply.
_ROW_JSON = """
    json_object('ID', dt.id, 'Tag', printf('(%04X,%04X)', t.tag >> 16, t.tag & 65535),
                'VR', t.vr, 'Value', dt.value, 'Name', t.keyword{extra})"""
_TAGS_SQLITE = f"""
SELECT json_group_array(json(row)) FROM (
    SELECT CASE
        WHEN dt.nbytes IS NULL AND dt.parent_id IS NULL THEN {_ROW_JSON.format(extra="")}
        WHEN dt.parent_id IS NULL THEN {_ROW_JSON.format(extra=", 'Bytes', dt.nbytes")}
        WHEN dt.nbytes IS NULL THEN {_ROW_JSON.format(extra=", 'Parent', dt.parent_id, 'Item', dt.item")}
        ELSE {_ROW_JSON.format(extra=", 'Bytes', dt.nbytes, 'Parent', dt.parent_id, 'Item', dt.item")}
    END AS row
    FROM dicom_tag dt JOIN tag t ON t.id = dt.tag_id
    WHERE dt.dicom_pk = (SELECT pk FROM dicom WHERE id = ?{{owned}})
    ORDER BY dt.id
)
"""
# PostgreSQL: json_build_object keeps the keys in this order (jsonb would sort them)
_PG_TAG = "'(' || upper(lpad(to_hex(t.tag >> 16), 4, '0')) || ',' || upper(lpad(to_hex(t.tag & 65535), 4, '0')) || ')'"
_PG_ROW_JSON = f"json_build_object('ID', dt.id, 'Tag', {_PG_TAG}, 'VR', t.vr, 'Value', dt.value, 'Name', t.keyword{{extra}})"
_TAGS_PG = f"""
SELECT COALESCE(json_agg(CASE
        WHEN dt.nbytes IS NULL AND dt.parent_id IS NULL THEN {_PG_ROW_JSON.format(extra="")}
        WHEN dt.parent_id IS NULL THEN {_PG_ROW_JSON.format(extra=", 'Bytes', dt.nbytes")}
        WHEN dt.nbytes IS NULL THEN {_PG_ROW_JSON.format(extra=", 'Parent', dt.parent_id, 'Item', dt.item")}
        ELSE {_PG_ROW_JSON.format(extra=", 'Bytes', dt.nbytes, 'Parent', dt.parent_id, 'Item', dt.item")}
    END ORDER BY dt.id)::text, '[]')
FROM dicom_tag dt JOIN tag t ON t.id = dt.tag_id
WHERE dt.dicom_pk = (SELECT pk FROM dicom WHERE id = ?{{owned}})
"""
TAGS_JSON_SQL = {SQLITE: _TAGS_SQLITE, POSTGRESQL: _TAGS_PG}


async def get_tags_json(db: Database, instance_id: str, owner: str | None = None) -> str | None:
    """The tag rows of an instance in file order, as a JSON array; None for an unknown id.

    SQLite builds the JSON (one query, one round trip); every stored instance has
    rows, so an empty array means there is no such instance.
    """
    mine, more = _owned(owner)
    sql = TAGS_JSON_SQL[db.dialect].replace("{owned}", mine)
    ((text,),) = await db.conn.execute_fetchall(sql, (instance_id, *more))
    return None if text == "[]" else text


# Finding and managing what is stored (GET /dicom, DELETE, /stats) ----------------------

DateRange = tuple[str | None, str | None]  # YYYYMMDD bounds, either open


def _where(exact: Mapping[str, str], study_date: DateRange | None) -> tuple[str, list]:
    """The condition for ``exact`` (keywords of ``FILTERS``, or ``id``) and a StudyDate range."""
    clauses, params = [], []
    for keyword, value in exact.items():
        clauses.append(f"{_COLUMNS[keyword]} = ?")
        params.append(value)
    if study_date is not None:
        low, high = study_date
        if low is not None and low == high:
            clauses.append("study_date = ?")
            params.append(low)
        else:
            clauses.append("study_date != ''")  # a range never matches an empty value
            for bound, op in ((low, ">="), (high, "<=")):
                if bound is not None:
                    clauses.append(f"study_date {op} ?")
                    params.append(bound)
    return " AND ".join(clauses) or "TRUE", params


async def search(
    db: Database,
    exact: Mapping[str, str],
    study_date: DateRange | None,
    limit: int,
    offset: int = 0,
    owner: str | None = None,
) -> list[dict]:
    """Instances matching every filter, newest first (each filter is an index that orders by pk);
    ``owner``: only that user's uploads."""
    where, params = _where(exact, study_date)
    mine, more = _owned(owner)
    rows = await db.conn.execute_fetchall(
        f"SELECT * FROM dicom WHERE {where}{mine} ORDER BY pk DESC LIMIT ? OFFSET ?", (*params, *more, limit, offset)
    )
    return [dict(r) for r in rows]


async def delete(db: Database, exact: Mapping[str, str], study_date: DateRange | None = None) -> list[dict]:
    """Delete matching instances (their tag rows and DICOM JSON go with them) and bring their
    studies and series up to date, in one transaction; returns their ids and blob keys."""
    where, params = _where(exact, study_date)
    async with transaction(db) as conn:
        gone = await conn.execute_fetchall(
            f"SELECT id, dcm_blob, png_blob, study_instance_uid, series_instance_uid FROM dicom WHERE {where}", params
        )
        await conn.execute(f"DELETE FROM dicom WHERE {where}", params)
        await studies.refresh_async(conn, studies.pairs_of(gone))
    return [{k: r[k] for k in ("id", "dcm_blob", "png_blob")} for r in gone]


_TOTALS_SQL = "SELECT COUNT(*), CAST(COALESCE(SUM(dcm_bytes), 0) + COALESCE(SUM(png_bytes), 0) AS BIGINT) FROM dicom"


def totals(db_path: Where) -> tuple[int, int]:
    """Instances stored and their bytes (DICOM files and PNG renderings), for the metrics'
    gauges: on a connection of its own (in an I/O thread), so a scan of a large table holds
    up none of the service's reads."""
    if is_url(db_path):
        from . import postgres

        count, size = postgres.totals(str(db_path), _TOTALS_SQL)
        return count, size
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        ((count, size),) = db.execute(_TOTALS_SQL).fetchall()
    finally:
        db.close()
    return count, size


async def stats(db: Database, owner: str | None = None) -> dict:
    """Totals, counts by modality, and by uploader (``users``: how many distinct users stored
    instances; ``by_user``: instances per user, ``""`` for those stored without authentication).
    ``owner``: over that user's uploads only."""
    where, params = ("WHERE uploaded_by = ?", (owner,)) if owner is not None else ("", ())
    ((totals),) = await db.conn.execute_fetchall(
        f"""
        SELECT COUNT(*) AS instances,
               COUNT(DISTINCT series_instance_uid) AS series,
               COUNT(DISTINCT study_instance_uid) AS studies,
               COUNT(DISTINCT patient_id) AS patients,
               CAST(COALESCE(SUM(dcm_bytes), 0) + COALESCE(SUM(png_bytes), 0) AS BIGINT) AS bytes,
               MIN(created_at) AS earliest, MAX(created_at) AS latest,
               COUNT(DISTINCT uploaded_by) AS users
        FROM dicom {where}
        """,
        params,
    )
    modalities = await db.conn.execute_fetchall(
        f"SELECT COALESCE(modality, '') AS modality, COUNT(*) AS n FROM dicom {where} GROUP BY 1 ORDER BY 2 DESC",
        params,
    )
    users = await db.conn.execute_fetchall(
        f"""SELECT COALESCE(uploaded_by, '') AS "user", COUNT(*) AS n FROM dicom {where} GROUP BY 1 ORDER BY 2 DESC""",
        params,
    )
    return dict(totals) | {
        "modalities": {r["modality"]: r["n"] for r in modalities},
        "by_user": {r["user"]: r["n"] for r in users},
    }


# WADO-RS (PS3.18 §10.4): instances by Study, Series and SOP Instance UID ----------------------

# What retrieval needs of a row (the rest stays in the database)
_RETRIEVE_COLUMNS = (
    "id, sop_instance_uid, series_instance_uid, transfer_syntax_uid, has_pixels, frames, dcm_blob, dcm_bytes"
)
# One row per SOP Instance UID: the same UID stored again with other pixel data (a
# different hash) is a newer version of the instance, and the newest answers.
# (Under an owner filter: the newest of that user's versions.)
_NEWEST = "pk IN (SELECT MAX(pk) FROM dicom WHERE {where} GROUP BY sop_instance_uid)"


async def instances_by_uid(
    db: Database, study: str, series: str | None = None, owner: str | None = None
) -> list[dict]:
    """The instances of a study, or of one of its series, for WADO-RS retrieval, in
    (0020,0011) Series Number, then (0020,0013) Instance Number order (then as stored)."""
    where = "study_instance_uid = ?" + (" AND series_instance_uid = ?" if series is not None else "")
    params = (study,) if series is None else (study, series)
    mine, more = _owned(owner)
    where, params = where + mine, (*params, *more)
    rows = await db.conn.execute_fetchall(
        f"SELECT {_RETRIEVE_COLUMNS} FROM dicom WHERE {_NEWEST.format(where=where)} "
        "ORDER BY series_number NULLS FIRST, series_instance_uid NULLS FIRST, instance_number NULLS FIRST, pk",
        params,
    )
    return [dict(r) for r in rows]


async def instance_by_uid(db: Database, study: str, series: str, sop: str, owner: str | None = None) -> dict | None:
    """The newest stored instance with these three UIDs, every column; None when there is none."""
    mine, more = _owned(owner)
    rows = await db.conn.execute_fetchall(
        "SELECT * FROM dicom WHERE sop_instance_uid = ? AND study_instance_uid = ? AND series_instance_uid = ?"
        f"{mine} ORDER BY pk DESC LIMIT 1",
        (sop, study, series, *more),
    )
    return dict(rows[0]) if rows else None


async def representative(
    db: Database, study: str, series: str | None = None, owner: str | None = None
) -> dict | None:
    """The instance a study's or series' rendering and thumbnail show, every column: among
    those with pixel data, the middle one by (0020,0013) Instance Number of the series (of
    a study: of its first series by (0020,0011) Series Number, then as stored). None: no
    instance with pixel data. ``owner``: among that user's uploads only."""
    mine, more = _owned(owner)
    if series is None:
        first = await db.conn.execute_fetchall(
            f"SELECT series_instance_uid FROM dicom WHERE study_instance_uid = ? AND has_pixels = 1{mine} "
            "ORDER BY series_number NULLS FIRST, pk LIMIT 1",
            (study, *more),
        )
        if not first:
            return None
        series = first[0]["series_instance_uid"]
    mine = " AND uploaded_by = :owner" if owner is not None else ""
    rows = await db.conn.execute_fetchall(
        f"SELECT * FROM dicom WHERE study_instance_uid = :study AND series_instance_uid = :series AND has_pixels = 1{mine} "
        "ORDER BY instance_number NULLS FIRST, pk LIMIT 1 OFFSET (SELECT COUNT(*) / 2 FROM dicom "
        f"WHERE study_instance_uid = :study AND series_instance_uid = :series AND has_pixels = 1{mine})",
        {"study": study, "series": series} | ({} if owner is None else {"owner": owner}),
    )
    return dict(rows[0]) if rows else None


# DICOMweb --------------------------------------------------------------------------------------


async def store_metadata(db: Database, items: Sequence[tuple[int, str]]) -> None:
    """Keep the DICOM JSON of instances stored before ingest kept it (a deleted one is skipped)."""
    async with transaction(db) as conn:
        await conn.executemany(
            "INSERT INTO dicom_json (dicom_pk, metadata) SELECT ?, ? WHERE EXISTS (SELECT 1 FROM dicom WHERE pk = ?) "
            "ON CONFLICT DO NOTHING",
            [(pk, text, pk) for pk, text in items],
        )


async def locations(db: Database, ids: Sequence[str]) -> dict[str, tuple[str | None, str | None, str]]:
    """id -> (Study, Series, SOP Instance UID) of stored instances."""
    found = {}
    for start in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
        chunk = list(ids[start : start + 500])
        marks = ", ".join("?" for _ in chunk)
        rows = await db.conn.execute_fetchall(
            f"SELECT id, study_instance_uid, series_instance_uid, sop_instance_uid FROM dicom WHERE id IN ({marks})",
            chunk,
        )
        found |= {r["id"]: (r["study_instance_uid"], r["series_instance_uid"], r["sop_instance_uid"]) for r in rows}
    return found
