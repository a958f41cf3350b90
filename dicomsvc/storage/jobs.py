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


# Leases (several replicas share one index): the replica running a job records itself in
# ``claimed_by`` and holds the job until ``lease_until``, renewed while it runs. Times are the
# database's clock (seconds since the epoch), so the replicas' clocks need not agree.
_NOW = {
    SQLITE: "((julianday('now') - 2440587.5) * 86400.0)",
    POSTGRESQL: "EXTRACT(EPOCH FROM clock_timestamp())",
}


class LeaseLost(Exception):
    """The job's lease is another replica's now (this one was taken for dead): it stops here."""


# The oldest job queued, or running with its lease run out (its replica died), or this replica's
# own (resumed after a pause), claimed in one statement. PostgreSQL: the row is locked by the
# claim (FOR UPDATE) and rows another replica is claiming at that moment are passed over (SKIP
# LOCKED), so two replicas never claim one job; SQLite: one writer at a time (BEGIN IMMEDIATE).
_CLAIM_SQL = """
UPDATE job SET status = 'running', claimed_by = ?, lease_until = {now} + ?
WHERE id = (
    SELECT id FROM job
    WHERE status IN ('queued', 'running')
      AND (status = 'queued' OR claimed_by = ? OR lease_until IS NULL OR lease_until < {now})
    ORDER BY created_at, id LIMIT 1{lock}
)
RETURNING id
"""
CLAIM_SQL = {
    SQLITE: _CLAIM_SQL.format(now=_NOW[SQLITE], lock=""),
    POSTGRESQL: _CLAIM_SQL.format(now=_NOW[POSTGRESQL], lock=" FOR UPDATE SKIP LOCKED"),
}
# Renewing a lease proves it is still this replica's: nothing is renewed (no row) once another took it.
RENEW_SQL = {
    d: f"UPDATE job SET lease_until = {now} + ? WHERE id = ? AND claimed_by = ? AND status = 'running' RETURNING id"
    for d, now in _NOW.items()
}


async def next_job(db: Database, replica: str, lease: float) -> str | None:
    """Claim the next job for ``replica`` for ``lease`` seconds: the oldest queued, or running
    with an expired lease (its replica died), or already this replica's. None: nothing to do."""
    async with transaction(db) as conn:
        rows = await conn.execute_fetchall(CLAIM_SQL[db.dialect], (replica, lease, replica))
    return rows[0]["id"] if rows else None


async def renew(db: Database, job_id: str, replica: str, lease: float) -> bool:
    """Extend ``replica``'s lease on a running job by ``lease`` seconds; False when the lease is
    no longer its own (taken over by another replica, or the job finished)."""
    async with transaction(db) as conn:
        return bool(await conn.execute_fetchall(RENEW_SQL[db.dialect], (lease, job_id, replica)))


async def void_claims(db: Database) -> int:
    """SQLite: the index belongs to one server (it holds the data directory's lock), so a job
    marked running is the previous process's, stopped or killed: its lease is void and the job
    resumes at once. (On PostgreSQL other replicas may be running theirs: leases expire.)"""
    if db.dialect != SQLITE:
        return 0
    async with transaction(db) as conn:
        rows = await conn.execute_fetchall(
            "UPDATE job SET lease_until = NULL WHERE status = 'running' AND lease_until IS NOT NULL RETURNING id"
        )
    return len(rows)


async def first_item(db: Database, job_id: str) -> str | None:
    """The job's first item (JSON): what kind of job it is (an import's file, an export, a send)."""
    rows = await db.conn.execute_fetchall("SELECT item FROM job_item WHERE job_id = ? AND seq = 0", (job_id,))
    return rows[0]["item"] if rows else None


async def pending_items(db: Database, job_id: str, limit: int) -> list[tuple[int, str]]:
    """The next ``limit`` items still to do, in request order: (seq, item JSON)."""
    rows = await db.conn.execute_fetchall(
        "SELECT seq, item FROM job_item WHERE job_id = ? AND status = 'pending' ORDER BY seq LIMIT ?",
        (job_id, limit),
    )
    return [(r["seq"], r["item"]) for r in rows]


async def record_results(
    db: Database, job_id: str, done: Sequence[tuple[int, str, str]], replica: str | None = None, lease: float = 0
) -> None:
    """Record items as done: (seq, status, result JSON). With ``replica``: only while the job's
    lease is that replica's (renewed by ``lease`` seconds in the same transaction), else
    ``LeaseLost`` and nothing recorded. An item already recorded keeps its first result."""
    async with transaction(db) as conn:
        if replica is not None and not await conn.execute_fetchall(RENEW_SQL[db.dialect], (lease, job_id, replica)):
            raise LeaseLost(job_id)
        await conn.executemany(
            "UPDATE job_item SET status = ?, result = ? WHERE job_id = ? AND seq = ? AND status = 'pending'",
            [(status, result, job_id, seq) for seq, status, result in done],
        )


async def finish(
    db: Database, job_id: str, state: str, detail: str | None, replica: str | None = None
) -> str | None:
    """Mark a job finished (with ``replica``: only while it holds the job's lease); returns the
    spool folder it held (now the caller's to remove), None when there is none or the job is
    another replica's now."""
    mine, more = (" AND claimed_by = ?", (replica,)) if replica is not None else ("", ())
    async with transaction(db) as conn:
        # the row locked (PostgreSQL) and its spool read in one statement; claimed_by stays: who finished it
        rows = await conn.execute_fetchall(
            f"UPDATE job SET finished_at = ? WHERE id = ?{mine} RETURNING spool_dir", (now(), job_id, *more)
        )
        if not rows:
            return None
        await conn.execute(
            "UPDATE job SET status = ?, detail = ?, spool_dir = NULL, lease_until = NULL WHERE id = ?",
            (state, detail, job_id),
        )
    return rows[0]["spool_dir"]


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
