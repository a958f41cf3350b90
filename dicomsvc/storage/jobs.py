"""Background jobs: a ``job`` row and one ``job_item`` row per file (see ``dicomsvc.jobs``)."""

from collections.abc import Sequence
from datetime import datetime, timezone

from .dialect import POSTGRESQL, SQLITE
from .sqlite import Database, transaction

JobItemRow = tuple[int, str, str, str | None]  # seq, item JSON, status, result JSON


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


async def insert_job(
    db: Database, job_id: str, items: Sequence[JobItemRow], spool_dir: str | None, created_by: str | None = None
) -> None:
    async with transaction(db) as conn:
        await conn.execute(
            "INSERT INTO job (id, status, total, spool_dir, created_at, created_by) VALUES (?, 'queued', ?, ?, ?, ?)",
            (job_id, len(items), spool_dir, now(), created_by),
        )
        await conn.executemany(
            "INSERT INTO job_item (job_id, seq, item, status, result) VALUES (?, ?, ?, ?, ?)",
            [(job_id, *row) for row in items],
        )


async def get_job(db: Database, job_id: str, owner: str | None = None) -> dict | None:
    """The job's row; ``owner``: only if that user asked for it."""
    mine, more = (" AND created_by = ?", (owner,)) if owner is not None else ("", ())
    rows = await db.conn.execute_fetchall(f"SELECT * FROM job WHERE id = ?{mine}", (job_id, *more))
    return dict(rows[0]) if rows else None


async def list_jobs(db: Database, limit: int, offset: int = 0, owner: str | None = None) -> list[dict]:
    """Jobs, newest first (``owner``: that user's only): id, status, total, who, when."""
    where, params = ("WHERE created_by = ?", (owner,)) if owner is not None else ("", ())
    rows = await db.conn.execute_fetchall(
        f"SELECT id, status, total, created_by, created_at, finished_at FROM job {where} "
        "ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
        (*params, limit, offset),
    )
    return [dict(r) for r in rows]


async def item_counts(db: Database, job_id: str) -> dict[str, int]:
    """Items done so far, by status."""
    return dict(
        await db.conn.execute_fetchall(
            "SELECT status, COUNT(*) FROM job_item WHERE job_id = ? AND status != 'pending' GROUP BY status",
            (job_id,),
        )
    )


# The results so far as one JSON array, built by the database: a job may hold 20,000 files.
RESULTS_JSON_SQL = {
    SQLITE: """
SELECT json_group_array(json(result))
FROM (SELECT result FROM job_item WHERE job_id = ? AND status != 'pending' ORDER BY seq)
""",
    POSTGRESQL: """
SELECT '[' || COALESCE(string_agg(result, ',' ORDER BY seq), '') || ']'
FROM job_item WHERE job_id = ? AND status != 'pending'
""",
}


async def results_json(db: Database, job_id: str) -> str:
    ((text,),) = await db.conn.execute_fetchall(RESULTS_JSON_SQL[db.dialect], (job_id,))
    return text


async def next_job(db: Database) -> str | None:
    """The oldest job not finished (one that was running when the service stopped included)."""
    rows = await db.conn.execute_fetchall(
        "SELECT id FROM job WHERE status IN ('queued', 'running') ORDER BY created_at LIMIT 1"
    )
    return rows[0]["id"] if rows else None


async def mark_running(db: Database, job_id: str) -> None:
    async with transaction(db) as conn:
        await conn.execute("UPDATE job SET status = 'running' WHERE id = ?", (job_id,))


async def pending_items(db: Database, job_id: str, limit: int) -> list[tuple[int, str]]:
    """The next ``limit`` items still to do, in request order: (seq, item JSON)."""
    rows = await db.conn.execute_fetchall(
        "SELECT seq, item FROM job_item WHERE job_id = ? AND status = 'pending' ORDER BY seq LIMIT ?",
        (job_id, limit),
    )
    return [(r["seq"], r["item"]) for r in rows]


async def record_results(db: Database, job_id: str, done: Sequence[tuple[int, str, str]]) -> None:
    """Record items as done: (seq, status, result JSON)."""
    async with transaction(db) as conn:
        await conn.executemany(
            "UPDATE job_item SET status = ?, result = ? WHERE job_id = ? AND seq = ?",
            [(status, result, job_id, seq) for seq, status, result in done],
        )


async def finish(db: Database, job_id: str, state: str, detail: str | None) -> str | None:
    """Mark a job finished; returns the spool folder it held (now the caller's to remove)."""
    async with transaction(db) as conn:
        rows = await conn.execute_fetchall("SELECT spool_dir FROM job WHERE id = ?", (job_id,))
        await conn.execute(
            "UPDATE job SET status = ?, detail = ?, finished_at = ?, spool_dir = NULL WHERE id = ?",
            (state, detail, now(), job_id),
        )
    return rows[0]["spool_dir"] if rows else None


async def unfinished_counts(db: Database) -> dict[str, int]:
    """Jobs queued and running (for the metrics' gauges)."""
    rows = await db.conn.execute_fetchall(
        "SELECT status, COUNT(*) AS n FROM job WHERE status IN ('queued', 'running') GROUP BY status"
    )
    return {r["status"]: r["n"] for r in rows}


async def held_spools(db: Database) -> list[str]:
    """Spool folders that unfinished jobs still need."""
    rows = await db.conn.execute_fetchall("SELECT spool_dir FROM job WHERE spool_dir IS NOT NULL")
    return [r["spool_dir"] for r in rows]
