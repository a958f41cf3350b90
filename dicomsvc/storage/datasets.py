"""Clinical datasets (``dataset``, ``dataset_row``): CSV rows joined to studies (``dicomsvc.datasets``).

The join runs in a worker on its own connection (``Writer``): ``studies_by_key`` looks the CSV's
keys up in the ``study`` table (its indexes on patient_id and accession_number, the unique Study
Instance UID), ``insert`` stores the dataset and its matched rows in one transaction, durable when
it returns. The server reads them back (``get``, ``listing``, ``study_uids``).
"""

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from .sqlite import Database, Writer, transaction

# The study column each key kind is matched against (schema.sql: study)
KEY_COLUMNS = {
    "PatientID": "patient_id",  # (0010,0020)
    "AccessionNumber": "accession_number",  # (0008,0050)
    "StudyInstanceUID": "study_instance_uid",  # (0020,000D)
}
CHUNK = 500  # keys per lookup (SQLite allows 32766 parameters; PostgreSQL 65535)
# DICOMSVC_VISIBILITY=own: only studies holding an instance the owner uploaded
_OWNED = " AND EXISTS (SELECT 1 FROM dicom d WHERE d.uploaded_by = ? AND d.study_instance_uid = s.study_instance_uid)"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def studies_by_key(w: Writer, kind: str, keys: Iterable[str], owner: str | None = None) -> dict[str, list[dict]]:
    """The stored studies whose ``kind`` (a ``KEY_COLUMNS`` name) is one of ``keys``: key -> list of
    {study_instance_uid, patient_name, patient_birth_date, anonymized} (``anonymized``: the study's
    newest instance was stored anonymized). Keys matching no study are absent."""
    column = KEY_COLUMNS[kind]
    wanted = sorted(set(keys))
    found: dict[str, list[dict]] = {}
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        marks = ", ".join("?" for _ in chunk)
        sql = (
            f"SELECT s.{column}, s.study_instance_uid, s.patient_name, s.patient_birth_date, r.anonymized "
            f"FROM study s JOIN dicom r ON r.pk = s.rep_pk WHERE s.{column} IN ({marks})"
            + (_OWNED if owner is not None else "")
        )
        params = (*chunk, owner) if owner is not None else tuple(chunk)
        for key, uid, name, birth, anonymized in w.db.execute(sql, params).fetchall():
            found.setdefault(key, []).append(
                {"study_instance_uid": uid, "patient_name": name, "patient_birth_date": birth,
                 "anonymized": bool(anonymized)}
            )  # fmt: skip
    return found


def insert(
    w: Writer,
    dataset: dict,
    rows: Sequence[tuple[str, int, str, str]],
) -> None:
    """Store ``dataset`` (id, key_kind, key_column, anonymized, columns, summary, created_by) and
    its matched rows, (study UID, row number, key, clinical JSON) each, in one transaction."""
    db = w.db
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "INSERT INTO dataset (id, key_kind, key_column, anonymized, columns, summary, created_by, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                dataset["id"], dataset["key_kind"], dataset["key_column"], int(dataset["anonymized"]),
                json.dumps(dataset["columns"], ensure_ascii=False), json.dumps(dataset["summary"]),
                dataset.get("created_by"), now(),
            ),
        )  # fmt: skip
        db.executemany(
            "INSERT INTO dataset_row (dataset_id, study_instance_uid, row_number, key_value, clinical) "
            "VALUES (?, ?, ?, ?, ?)",
            [(dataset["id"], *row) for row in rows],
        )
        w.commit()
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


# The server's reads -------------------------------------------------------------------------


def _summary(row) -> dict:
    out = {
        "id": row["id"],
        "key": row["key_kind"],
        "column": row["key_column"],
        "anonymized": bool(row["anonymized"]),
        "columns": json.loads(row["columns"]),
        "created_by": row["created_by"],
        "created_at": row["created_at"],
    }
    return out | json.loads(row["summary"])


async def get(db: Database, dataset_id: str, owner: str | None = None) -> dict | None:
    """A dataset's summary (``owner``: only if that user uploaded it), or None."""
    mine, more = (" AND created_by = ?", (owner,)) if owner is not None else ("", ())
    rows = await db.conn.execute_fetchall(f"SELECT * FROM dataset WHERE id = ?{mine}", (dataset_id, *more))
    return _summary(rows[0]) if rows else None


async def study_uids(db: Database, dataset_id: str) -> list[str]:
    """The matched studies' UIDs, in CSV row order."""
    rows = await db.conn.execute_fetchall(
        "SELECT study_instance_uid FROM dataset_row WHERE dataset_id = ? ORDER BY row_number, study_instance_uid",
        (dataset_id,),
    )
    return [r[0] for r in rows]


async def listing(db: Database, limit: int, offset: int = 0, owner: str | None = None) -> list[dict]:
    """Datasets, newest first (``owner``: that user's only), each its summary."""
    where, params = ("WHERE created_by = ?", (owner,)) if owner is not None else ("", ())
    rows = await db.conn.execute_fetchall(
        f"SELECT * FROM dataset {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?", (*params, limit, offset)
    )
    return [_summary(r) for r in rows]


async def delete(db: Database, dataset_id: str) -> bool:
    """Remove a dataset and its joined rows (never the studies); False when there is no such dataset."""
    async with transaction(db) as conn:
        await conn.execute("DELETE FROM dataset_row WHERE dataset_id = ?", (dataset_id,))
        rows = await conn.execute_fetchall("DELETE FROM dataset WHERE id = ? RETURNING id", (dataset_id,))
    return bool(rows)


# A dataset's export (dicomsvc/exports.py): its instances, a page at a time ----------------------

EXPORT_FILTERS = {"Modality": "d.modality", "SeriesInstanceUID": "d.series_instance_uid",
                  "StudyInstanceUID": "d.study_instance_uid"}  # fmt: skip
# the newest version of each SOP Instance UID in its series (storage.studies.CURRENT)
_CURRENT = (
    "d.pk = (SELECT MAX(n.pk) FROM dicom n WHERE n.sop_instance_uid = d.sop_instance_uid"
    " AND n.study_instance_uid = d.study_instance_uid AND n.series_instance_uid = d.series_instance_uid)"
)


def _narrow(where: list[str], params: list, owner: str | None, filters: dict | None) -> None:
    """Add the owner's and the export's filters (search parameters) to an export page's WHERE."""
    if owner is not None:
        where.append("d.uploaded_by = ?")
        params.append(owner)
    for name, value in (filters or {}).items():
        where.append(f"{EXPORT_FILTERS[name]} = ?")
        params.append(value)


async def export_page(
    db: Database, dataset_id: str, after: int, limit: int, owner: str | None = None, filters: dict | None = None
) -> list[dict]:
    """The next ``limit`` instances of the dataset's matched studies past ``dicom.pk`` ``after``,
    in pk order (keyset paging: memory flat in the export's size), each with its CSV row."""
    where, params = ["r.dataset_id = ?", "d.pk > ?", _CURRENT], [dataset_id, after]
    _narrow(where, params, owner, filters)
    rows = await db.conn.execute_fetchall(
        "SELECT d.pk, d.id, d.dcm_blob, d.png_blob, d.study_instance_uid, d.series_instance_uid, d.sop_instance_uid, "
        "d.modality, d.instance_number, d.has_pixels, d.anonymized, r.row_number, r.key_value, r.clinical "
        "FROM dataset_row r JOIN dicom d ON d.study_instance_uid = r.study_instance_uid "
        f"WHERE {' AND '.join(where)} ORDER BY d.pk LIMIT ?",
        (*params, limit),
    )
    return [dict(r) for r in rows]


async def export_item(db: Database, job_id: str) -> str | None:
    """The item (JSON) of a dataset export's job, None when the job is no export (or unknown)."""
    rows = await db.conn.execute_fetchall("SELECT item FROM job_item WHERE job_id = ? AND seq = 0", (job_id,))
    return rows[0]["item"] if rows and rows[0]["item"].startswith('{"export"') else None


async def export_jobs(db: Database, job_ids: Sequence[str]) -> dict[str, dict]:
    """Of ``job_ids``, the jobs still recorded: id -> {status, finished_at, item, dataset_exists}
    (``item``: the job's first item, JSON; ``dataset_exists``: the dataset its export names is
    still there -- an export's item names it as ``"dataset": "<id>"``)."""
    found: dict[str, dict] = {}
    for start in range(0, len(job_ids), CHUNK):
        chunk = list(job_ids[start : start + CHUNK])
        marks = ", ".join("?" for _ in chunk)
        rows = await db.conn.execute_fetchall(
            "SELECT j.id, j.status, j.finished_at, i.item FROM job j JOIN job_item i ON i.job_id = j.id AND i.seq = 0 "
            f"WHERE j.id IN ({marks})",
            tuple(chunk),
        )
        for r in rows:
            found[r["id"]] = {"status": r["status"], "finished_at": r["finished_at"], "item": r["item"]}
    named = {job: json.loads(row["item"]).get("export", {}).get("dataset") for job, row in found.items()
             if row["item"].startswith('{"export"')}  # fmt: skip
    wanted = sorted({d for d in named.values() if d})
    existing: set[str] = set()
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        marks = ", ".join("?" for _ in chunk)
        rows = await db.conn.execute_fetchall(f"SELECT id FROM dataset WHERE id IN ({marks})", tuple(chunk))
        existing.update(r["id"] for r in rows)
    for job, row in found.items():
        row["dataset_exists"] = named.get(job) in existing
    return found


# An anonymized dataset's studies stored as they came (dicomsvc.datasets.original_links, in a worker)


def pseudonymous_study_uids(w: Writer, dataset_id: str) -> set[str]:
    """The study UIDs a dataset's rows link (of an anonymized dataset: the anonymizer's UIDs)."""
    rows = w.db.execute("SELECT study_instance_uid FROM dataset_row WHERE dataset_id = ?", (dataset_id,)).fetchall()
    return {r[0] for r in rows}


def stored_studies(w: Writer, uids: Iterable[str]) -> set[str]:
    """Which of ``uids`` are stored studies."""
    wanted, found = sorted(set(uids)), set()
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        marks = ", ".join("?" for _ in chunk)
        found.update(r[0] for r in w.db.execute(f"SELECT study_instance_uid FROM study WHERE study_instance_uid IN ({marks})",
                                                tuple(chunk)).fetchall())  # fmt: skip
    return found


def studies_as_they_came(w: Writer, after: str, limit: int, owner: str | None = None) -> list[str]:
    """The next ``limit`` study UIDs past ``after`` (in UID order: keyset paging) whose newest
    instance was stored as it came (not anonymized); ``owner``: holding one of theirs."""
    sql = ("SELECT s.study_instance_uid FROM study s JOIN dicom r ON r.pk = s.rep_pk "
           "WHERE r.anonymized = 0 AND s.study_instance_uid > ?" + (_OWNED if owner is not None else "")
           + " ORDER BY s.study_instance_uid LIMIT ?")  # fmt: skip
    params = (after, owner, limit) if owner is not None else (after, limit)
    return [r[0] for r in w.db.execute(sql, params).fetchall()]


async def export_page_of_studies(
    db: Database, dataset_id: str, links: dict[str, str], after: int, limit: int, owner: str | None = None,
    filters: dict | None = None,
) -> list[dict]:  # fmt: skip
    """``export_page`` for an anonymized dataset's studies stored as they came: ``links`` maps such a
    study's UID to the pseudonymous UID the dataset's row links (``datasets.original_links``);
    each instance comes with that row (``pseudonymous``: its key is a pseudonym already)."""
    originals = sorted(links)
    where, params = [f"d.study_instance_uid IN ({', '.join('?' for _ in originals)})", "d.pk > ?", _CURRENT], [*originals, after]
    _narrow(where, params, owner, filters)
    rows = await db.conn.execute_fetchall(
        "SELECT d.pk, d.id, d.dcm_blob, d.png_blob, d.study_instance_uid, d.series_instance_uid, d.sop_instance_uid, "
        f"d.modality, d.instance_number, d.has_pixels, d.anonymized FROM dicom d WHERE {' AND '.join(where)} "
        "ORDER BY d.pk LIMIT ?",
        (*params, limit),
    )
    if not rows:
        return []
    linked = sorted({links[r["study_instance_uid"]] for r in rows})
    marks = ", ".join("?" for _ in linked)
    joined = await db.conn.execute_fetchall(
        "SELECT study_instance_uid, row_number, key_value, clinical FROM dataset_row "
        f"WHERE dataset_id = ? AND study_instance_uid IN ({marks})",
        (dataset_id, *linked),
    )
    by_uid = {r["study_instance_uid"]: dict(r) for r in joined}
    out = []
    for r in rows:
        row = by_uid.get(links[r["study_instance_uid"]])
        if row is not None:
            out.append(dict(r) | {k: row[k] for k in ("row_number", "key_value", "clinical")} | {"pseudonymous": True})
    return out
