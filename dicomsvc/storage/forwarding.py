"""The forwarding queue: ``forward`` rows (one per instance, destination and anonymize flag a
routing rule names; see ``dicomsvc.forwarding``).

Rows are queued by the ingest in the instance's own transaction (``queue``, called from
``instances.insert_instances``), so a committed instance always has its forwards queued.
A replica claims a batch of due rows of one (destination, anonymize) group with a lease
(``claim``: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, as ``jobs.next_job``; SQLite has one
writer at a time), and records each row's outcome only while the lease is still its own
(``record``). Times are the database's clock, seconds since the epoch (``jobs._NOW``).
"""

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from .dialect import POSTGRESQL, SQLITE
from .jobs import _NOW
from .sqlite import Database, read_now, transaction

# The ingest's side (sync, in a worker, inside insert_instances' transaction) ---------------

_QUEUE_SQL = {
    d: "INSERT INTO forward (dicom_pk, instance_id, destination, anonymize, state, next_attempt_at, created_at) "
    f"SELECT pk, id, ?, ?, 'queued', {now}, {now} FROM dicom WHERE id = ?"
    for d, now in _NOW.items()
}


def queue(db: sqlite3.Connection, dialect: str, pending: Sequence[tuple[str, Sequence[tuple[str, bool]]]]) -> None:
    """Queue (instance id, [(destination, anonymize), ...]) in the caller's open transaction."""
    rows = [(destination, int(anonymize), instance_id) for instance_id, pairs in pending for destination, anonymize in pairs]
    if rows:
        db.executemany(_QUEUE_SQL[dialect], rows)


# The forwarder's side (async, in the service) -----------------------------------------------


@dataclass(frozen=True)
class Claimed:
    id: int  # forward.id
    instance_id: str
    attempts: int  # failed attempts so far


_DUE = "state = 'queued' AND next_attempt_at <= {now} AND (lease_until IS NULL OR lease_until < {now})"
# The group (destination, anonymize) of the oldest due row whose destination is not busy here
_GROUP_SQL = "SELECT destination, anonymize FROM forward WHERE " + _DUE + "{busy} ORDER BY next_attempt_at, id LIMIT 1"
_CLAIM_SQL = """
UPDATE forward SET claimed_by = ?, lease_until = {now} + ?
WHERE id IN (
    SELECT id FROM forward
    WHERE """ + _DUE + """ AND destination = ? AND anonymize = ?
    ORDER BY next_attempt_at, id LIMIT ?{lock}
)
RETURNING id, instance_id, attempts
"""
CLAIM_SQL = {
    SQLITE: _CLAIM_SQL.format(now=_NOW[SQLITE], lock=""),
    POSTGRESQL: _CLAIM_SQL.format(now=_NOW[POSTGRESQL], lock=" FOR UPDATE SKIP LOCKED"),
}
# Seconds until the next row this replica could claim is due (negative: due now), or NULL
_WAIT_SQL = {
    d: f"SELECT MIN(next_attempt_at) - {now} FROM forward WHERE state = 'queued' "
    f"AND (lease_until IS NULL OR lease_until < {now})"
    for d, now in _NOW.items()
}


async def wait_seconds(db: Database) -> float | None:
    """Seconds until a row is due (<= 0: one is due now); None: nothing is queued (unclaimed)."""
    ((wait,),) = await read_now(db, _WAIT_SQL[db.dialect])
    return None if wait is None else float(wait)


async def claim(
    db: Database, replica: str, lease: float, limit: int, busy: Sequence[str] = ()
) -> tuple[str, bool, list[Claimed]] | None:
    """Claim up to ``limit`` due rows of one (destination, anonymize) group for ``replica`` for
    ``lease`` seconds, the group of the oldest due row whose destination is not in ``busy``:
    (destination, anonymize, rows); None when nothing is due."""
    now = _NOW[db.dialect]
    skip = f" AND destination NOT IN ({', '.join('?' for _ in busy)})" if busy else ""
    async with transaction(db) as conn:
        groups = await conn.execute_fetchall(_GROUP_SQL.format(now=now, busy=skip), tuple(busy))
        if not groups:
            return None
        destination, anonymize = groups[0]["destination"], groups[0]["anonymize"]
        rows = await conn.execute_fetchall(CLAIM_SQL[db.dialect], (replica, lease, destination, anonymize, limit))
    claimed = sorted((Claimed(r["id"], r["instance_id"], r["attempts"]) for r in rows), key=lambda c: c.id)
    return destination, bool(anonymize), claimed


_RENEW_SQL = {
    d: f"UPDATE forward SET lease_until = {now} + ? WHERE id = ? AND claimed_by = ? AND state = 'queued'"
    for d, now in _NOW.items()
}
_SENT_SQL = {
    d: f"UPDATE forward SET state = 'sent', attempts = attempts + 1, sent_at = {now}, attempted_at = {now}, "
    "last_detail = NULL, claimed_by = NULL, lease_until = NULL WHERE id = ? AND claimed_by = ? AND state = 'queued'"
    for d, now in _NOW.items()
}
_RETRY_SQL = {
    d: f"UPDATE forward SET attempts = attempts + 1, next_attempt_at = {now} + ?, attempted_at = {now}, "
    "last_detail = ?, claimed_by = NULL, lease_until = NULL WHERE id = ? AND claimed_by = ? AND state = 'queued'"
    for d, now in _NOW.items()
}
_FAILED_SQL = {
    d: f"UPDATE forward SET state = 'failed', attempts = attempts + 1, attempted_at = {now}, last_detail = ?, "
    "claimed_by = NULL, lease_until = NULL WHERE id = ? AND claimed_by = ? AND state = 'queued'"
    for d, now in _NOW.items()
}


# A destination that failed a whole batch transiently (it is down): its other queued rows wait too
_HOLD_SQL = {
    d: f"UPDATE forward SET next_attempt_at = {now} + ? WHERE destination = ? AND state = 'queued' "
    f"AND next_attempt_at < {now} + ? AND (lease_until IS NULL OR lease_until < {now})"
    for d, now in _NOW.items()
}


async def hold(db: Database, destination: str, delay: float) -> None:
    """Put off every queued row of ``destination`` not being sent until ``delay`` seconds from
    now at the earliest (their attempts unchanged): one try per backoff while it is down."""
    async with transaction(db) as conn:
        await conn.execute(_HOLD_SQL[db.dialect], (delay, destination, delay))


async def renew(db: Database, ids: Sequence[int], replica: str, lease: float) -> None:
    """Extend ``replica``'s lease on its claimed rows by ``lease`` seconds from now."""
    async with transaction(db) as conn:
        await conn.executemany(_RENEW_SQL[db.dialect], [(lease, i, replica) for i in ids])


async def record(
    db: Database,
    replica: str,
    sent: Sequence[int] = (),
    retry: Sequence[tuple[int, float, str | None]] = (),
    failed: Sequence[tuple[int, str | None]] = (),
) -> None:
    """Record outcomes of rows ``replica`` claimed: sent; to retry after a delay in seconds
    (with why); failed for good (with why). Rows no longer claimed by it are left alone."""
    d = db.dialect
    async with transaction(db) as conn:
        if sent:
            await conn.executemany(_SENT_SQL[d], [(i, replica) for i in sent])
        if retry:
            await conn.executemany(_RETRY_SQL[d], [(delay, detail, i, replica) for i, delay, detail in retry])
        if failed:
            await conn.executemany(_FAILED_SQL[d], [(detail, i, replica) for i, detail in failed])


_PRUNE_SQL = {
    d: f"DELETE FROM forward WHERE id IN (SELECT id FROM forward WHERE state = 'sent' AND sent_at < {now} - ? LIMIT ?) "
    "RETURNING id"
    for d, now in _NOW.items()
}


async def prune(db: Database, keep: float, chunk: int = 5000) -> int:
    """Delete forwards sent more than ``keep`` seconds ago, ``chunk`` rows per transaction (a
    writer never waits long behind it); how many went. Queued and failed rows stay."""
    gone = 0
    while True:
        async with transaction(db) as conn:
            n = len(await conn.execute_fetchall(_PRUNE_SQL[db.dialect], (keep, chunk)))
        gone += n
        if n < chunk:
            return gone


async def void_claims(db: Database) -> int:
    """SQLite: one server owns the index, so claims left are the previous process's: void."""
    if db.dialect != SQLITE:
        return 0
    async with transaction(db) as conn:
        rows = await conn.execute_fetchall(
            "UPDATE forward SET claimed_by = NULL, lease_until = NULL "
            "WHERE state = 'queued' AND claimed_by IS NOT NULL RETURNING id"
        )
    return len(rows)


async def summary(db: Database) -> dict[str, dict]:
    """Per destination: rows by state, the oldest queued row's age in seconds, and the most
    recent failure's detail with its age (None when none)."""
    now = _NOW[db.dialect]
    out: dict[str, dict] = {}
    rows = await db.conn.execute_fetchall(
        f"SELECT destination, state, COUNT(*) AS n, {now} - MIN(created_at) AS age FROM forward GROUP BY destination, state"
    )
    for r in rows:
        entry = out.setdefault(r["destination"], {"counts": {}, "oldest_queued_seconds": None, "last_error": None})
        entry["counts"][r["state"]] = r["n"]
        if r["state"] == "queued":
            entry["oldest_queued_seconds"] = round(float(r["age"]), 1)
    errors = await db.conn.execute_fetchall(
        f"SELECT f.destination, f.last_detail, {now} - f.attempted_at AS age FROM forward f "
        "JOIN (SELECT destination, MAX(attempted_at) AS at FROM forward "
        "      WHERE last_detail IS NOT NULL GROUP BY destination) g "
        "ON f.destination = g.destination AND f.attempted_at = g.at WHERE f.last_detail IS NOT NULL"
    )
    for r in errors:
        entry = out.setdefault(r["destination"], {"counts": {}, "oldest_queued_seconds": None, "last_error": None})
        entry["last_error"] = {"detail": r["last_detail"], "seconds_ago": round(float(r["age"]), 1)}
    return out


async def queued_counts(db: Database) -> dict[str, int]:
    """Rows queued per destination (the metrics' queue depth)."""
    rows = await db.conn.execute_fetchall(
        "SELECT destination, COUNT(*) AS n FROM forward WHERE state = 'queued' GROUP BY destination"
    )
    return {r["destination"]: r["n"] for r in rows}
