"""One orphan sweep at a time across the replicas sharing an index and a blob store.

On PostgreSQL, a transaction-level advisory lock (PostgreSQL manual §13.3.5, "Advisory Locks":
``pg_try_advisory_xact_lock``) held for the sweep: a replica that does not get it skips its
sweep (another one is at it); the lock goes with the transaction, so a replica that dies
mid-sweep holds nothing. On SQLite there is one server per data directory (``dicomsvc.lock``)
and the index is not shared between hosts: nothing to take.
"""

import contextlib
from collections.abc import AsyncIterator

from .dialect import POSTGRESQL

# pg advisory lock key of the sweep: any fixed number (b"dsvcswep" read as an int64)
SWEEP_LOCK = int.from_bytes(b"dsvcswep", "big")


@contextlib.asynccontextmanager
async def held(db) -> AsyncIterator[bool]:
    """While the block runs, this replica holds the sweep lock if it yields True; False:
    another replica holds it (skip the sweep)."""
    if db.dialect != POSTGRESQL:
        yield True
        return
    from .sqlite import transaction

    async with transaction(db) as tx:
        rows = await tx.execute_fetchall("SELECT pg_try_advisory_xact_lock(?) AS got", (SWEEP_LOCK,))
        yield bool(rows[0]["got"])
