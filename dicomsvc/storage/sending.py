"""What sending stored instances (``dicomsvc.sending``) reads of the index."""

from collections.abc import Sequence

from .sqlite import Database

SENDING_COLUMNS = "id, sop_class_uid, sop_instance_uid, transfer_syntax_uid, dcm_blob, dcm_bytes, anonymized"


async def sending_rows(db: Database, ids: Sequence[str]) -> dict[str, dict]:
    """id -> what sending an instance needs of its row (``SENDING_COLUMNS``); absent: not stored."""
    found = {}
    for start in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
        chunk = list(ids[start : start + 500])
        marks = ", ".join("?" for _ in chunk)
        rows = await db.conn.execute_fetchall(f"SELECT {SENDING_COLUMNS} FROM dicom WHERE id IN ({marks})", chunk)
        found |= {r["id"]: dict(r) for r in rows}
    return found
