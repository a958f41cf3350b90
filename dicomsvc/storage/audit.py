"""The audit trail's table: appended to in batches, read by ``GET /audit``; never updated or
deleted (``schema.sql`` has triggers that refuse both, whoever asks).

A record names what was touched by our ids and the DICOM UIDs in the request's path, and a
search by its parameter names only: never a value read from a file or a query.
"""

from collections.abc import Mapping, Sequence

import aiosqlite

from .dialect import is_url
from .sqlite import Database, Where, transaction

# In insert order; ``seq`` (the primary key) is added by SQLite, in order of writing.
COLUMNS = (
    "time", "user", "role", "action", "method", "route", "instance", "study", "series", "sop", "job",
    "params", "status", "client", "request_id", "dataset",
)  # fmt: skip
RESOURCE_COLUMNS = ("instance", "study", "series", "sop", "job", "dataset")
# Quoted: "user" is a reserved word in PostgreSQL (there, a bare ``user`` is CURRENT_USER)
_QUOTED = ", ".join(f'"{c}"' for c in COLUMNS)
_INSERT = f"INSERT INTO audit ({_QUOTED}) VALUES ({', '.join('?' for _ in COLUMNS)})"


async def open_writer(path: Where, pool_size: int = 2) -> Database:
    """The audit trail's own connection (the schema is the service's to make). Its commits
    do not fsync (``synchronous = NORMAL``): a batch is in the WAL when committed, and made
    durable by the next commit of any other connection -- every ingest's commit fsyncs the
    WAL to its end (``synchronous = FULL``) -- or by a checkpoint. So the audit trail adds no
    fsync to the ingest's, and holds SQLite's write lock for a write, not for a disk flush.
    (Records are in memory for up to DICOMSVC_AUDIT_FLUSH_MS before that anyway.)
    On PostgreSQL, the same with synchronous_commit off on its own connections."""
    if is_url(path):
        from . import postgres

        return Database(conn=await postgres.open_pool(str(path), pool_size, synchronous_commit=False))  # type: ignore[arg-type]
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        for pragma in ("PRAGMA busy_timeout = 30000", "PRAGMA synchronous = NORMAL"):
            await conn.execute(pragma)
    except BaseException:
        await conn.close()
        raise
    return Database(conn=conn)


async def append(db: Database, rows: Sequence[Sequence]) -> None:
    """Append ``rows`` (values in ``COLUMNS`` order) in one transaction."""
    async with transaction(db) as conn:
        await conn.executemany(_INSERT, rows)


async def page(db: Database, filters: Mapping[str, str], limit: int, before: int | None) -> list[dict]:
    """Records matching every filter, newest first, at most ``limit``, older than ``before``
    (a ``seq``) when given. Filters: ``user``, ``action``, ``resource`` (any of the ids and
    UIDs a record names), ``request_id``, ``since`` and ``until`` (ISO 8601 times: since <=
    time < until)."""
    where, params = ["TRUE"], []
    for name in ("user", "action", "request_id"):
        if name in filters:
            where.append(f'"{name}" = ?')
            params.append(filters[name])
    if "resource" in filters:
        where.append("(" + " OR ".join(f"{c} = ?" for c in RESOURCE_COLUMNS) + ")")
        params += [filters["resource"]] * len(RESOURCE_COLUMNS)
    if "since" in filters:
        where.append("time >= ?")
        params.append(filters["since"])
    if "until" in filters:
        where.append("time < ?")
        params.append(filters["until"])
    if before is not None:
        where.append("seq < ?")
        params.append(before)
    rows = await db.conn.execute_fetchall(
        f"SELECT seq, {_QUOTED} FROM audit WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
        (*params, limit),
    )
    return [dict(r) for r in rows]
