"""What sending stored instances (``dicomsvc.sending``) reads of the index."""

from collections.abc import Mapping, Sequence

from .instances import DateRange, _owned, _where
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


async def visible_ids(db: Database, ids: Sequence[str], owner: str | None = None) -> set[str]:
    """Which of ``ids`` name stored instances (``owner``: that user's uploads only)."""
    mine, more = _owned(owner)
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ", ".join("?" for _ in chunk)
        rows = await db.conn.execute_fetchall(f"SELECT id FROM dicom WHERE id IN ({marks}){mine}", (*chunk, *more))
        found |= {r["id"] for r in rows}
    return found


async def selected_ids(
    db: Database, exact: Mapping[str, str], study_date: DateRange | None, limit: int, owner: str | None = None
) -> list[str]:
    """The ids of the instances matching every filter (as ``instances.search``), at most ``limit``,
    in the order they were stored."""
    where, params = _where(exact, study_date)
    mine, more = _owned(owner)
    rows = await db.conn.execute_fetchall(
        f"SELECT id FROM dicom WHERE {where}{mine} ORDER BY pk LIMIT ?", (*params, *more, limit)
    )
    return [r["id"] for r in rows]
