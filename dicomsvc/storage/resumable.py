"""Resumable upload rows (tus 1.0.0: ``dicomsvc.resumable``): one ``upload`` row per upload.

Short plain queries, one transaction each, so another backend can reimplement them as they
are. ``received`` is the tus Upload-Offset: it is only ever raised after the bytes below it
were synced to disk (``dicomsvc.resumable``), so a committed offset never points past data
that a crash could lose.
"""

from collections.abc import Sequence

from .sqlite import Database, transaction

COLUMNS = ("id", "owner", "length", "received", "options", "status", "result", "created_at", "expires_at", "finished_at")


async def insert_unless_full(db: Database, row: dict, limit: int) -> bool:
    """Insert ``row`` unless its owner already has ``limit`` uploads still receiving (then
    False); the count and the insert are one transaction, so concurrent creations cannot
    both slip under the limit."""
    async with transaction(db) as conn:
        rows = await conn.execute_fetchall(
            "SELECT COUNT(*) FROM upload WHERE owner IS NOT DISTINCT FROM ? AND status = 'receiving'", (row["owner"],)
        )
        if rows[0][0] >= limit:
            return False
        await conn.execute(
            f"INSERT INTO upload ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            tuple(row.get(c) for c in COLUMNS),
        )
    return True


async def get(db: Database, upload_id: str) -> dict | None:
    rows = await db.conn.execute_fetchall("SELECT * FROM upload WHERE id = ?", (upload_id,))
    return dict(rows[0]) if rows else None


async def advance(db: Database, upload_id: str, received: int, expires_at: str) -> None:
    """Record the new offset (its bytes are synced already) and the new expiry."""
    async with transaction(db) as conn:
        await conn.execute(
            "UPDATE upload SET received = ?, expires_at = ? WHERE id = ? AND status = 'receiving'",
            (received, expires_at, upload_id),
        )


async def set_status(
    db: Database, upload_id: str, status: str, result: str | None, expires_at: str, finished_at: str | None
) -> None:
    async with transaction(db) as conn:
        await conn.execute(
            "UPDATE upload SET status = ?, result = ?, expires_at = ?, finished_at = ? WHERE id = ?",
            (status, result, expires_at, finished_at, upload_id),
        )


async def delete(db: Database, upload_id: str) -> None:
    async with transaction(db) as conn:
        await conn.execute("DELETE FROM upload WHERE id = ?", (upload_id,))


async def expired(db: Database, now: str, limit: int) -> list[str]:
    """Ids of uploads whose ``expires_at`` has passed (at most ``limit``), oldest first."""
    rows = await db.conn.execute_fetchall(
        "SELECT id FROM upload WHERE expires_at < ? ORDER BY expires_at LIMIT ?", (now, limit)
    )
    return [r["id"] for r in rows]


async def in_status(db: Database, status: str) -> list[str]:
    rows = await db.conn.execute_fetchall("SELECT id FROM upload WHERE status = ?", (status,))
    return [r["id"] for r in rows]


async def known_ids(db: Database, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` have a row (the rest are files a crash left behind)."""
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        part = list(ids[start : start + 500])
        rows = await db.conn.execute_fetchall(
            f"SELECT id FROM upload WHERE id IN ({', '.join('?' * len(part))})", part
        )
        found |= {r["id"] for r in rows}
    return found
