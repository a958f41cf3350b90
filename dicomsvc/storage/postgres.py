"""PostgreSQL as the index (DICOMSVC_DATABASE_URL=postgresql://...): psycopg 3, sync in the
worker processes and async (with its pool) in the server, behind the calls the storage
functions make on SQLite (``execute``, ``executemany``, ``execute_fetchall``, ``in_transaction``).

The storage functions keep one SQL text, written with SQLite's placeholders (``?``, ``:name``);
``translate`` turns it into psycopg's (``%s``, ``%(name)s``, a literal ``%`` doubled) once per
text (cached). The few statements that differ between the two dialects are per-dialect
constants where they are used (``dialect`` says which). Rows are ``Row``: by index and by column
name, ``dict(row)`` as with ``sqlite3.Row``.

Durability: every commit is flushed by PostgreSQL itself (synchronous_commit on, its default;
concurrent commits share a WAL flush: PostgreSQL's own group commit). The audit trail's
connections commit with synchronous_commit off, as its SQLite connection does with
synchronous = NORMAL: its records are made durable by the next synchronous commit.

The schema is ``schema_pg.sql`` (the same tables, columns and indexes as ``schema.sql``, in
PostgreSQL's types), applied at every start under an advisory lock (several replicas may start
at once); ``schema_version`` holds what ``PRAGMA user_version`` holds on SQLite.
"""

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from importlib import resources
from typing import Any

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from .dialect import POSTGRESQL as DIALECT

# What a transaction may fail with only because of a concurrent one (SQLSTATE 40P01, 40001):
# run again, it succeeds
RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
# pg_advisory_xact_lock key of the schema's application: any fixed number (b"dicomsvc" read as an int64)
SCHEMA_LOCK = 0x6469636F6D737663
_TOKEN = re.compile(r"""'[^']*'|"[^"]*"|::|\?|:[A-Za-z_]\w*|%""")


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """SQLite placeholders to psycopg's, outside quoted text: ``?`` -> ``%s``, ``:name`` ->
    ``%(name)s``; every ``%`` (quoted or not) doubled; ``BEGIN IMMEDIATE`` -> ``BEGIN``."""
    if sql.strip() == "BEGIN IMMEDIATE":
        return "BEGIN"

    def one(m: re.Match) -> str:
        t = m.group()
        if t == "?":
            return "%s"
        if t == "%":
            return "%%"
        if t[0] == ":" and t != "::":
            return f"%({t[1:]})s"
        return t.replace("%", "%%")

    return _TOKEN.sub(one, sql)


class Row:
    """A result row: ``row[0]``, ``row["column"]``, ``dict(row)``, unpacking (as ``sqlite3.Row``)."""

    __slots__ = ("_values", "_index")

    def __init__(self, values: Sequence, index: dict[str, int]) -> None:
        self._values, self._index = values, index

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._index[key]] if isinstance(key, str) else self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return tuple(self._values) == (tuple(other) if isinstance(other, (tuple, Row)) else other)

    def __repr__(self) -> str:
        return f"Row{tuple(self._values)!r}"


def _rows(cursor: Any):
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: Row(values, index)


def _params(params: Any) -> Any:
    return () if params is None else params


# The write side (sync, in worker processes) ---------------------------------------


class SyncConn:
    """A worker's connection (autocommit: transactions are the storage functions' BEGIN/COMMIT)."""

    dialect = DIALECT

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def execute(self, sql: str, params: Any = None) -> psycopg.Cursor:
        return self.conn.execute(translate(sql), _params(params))

    def executemany(self, sql: str, seq: Iterable) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(translate(sql), seq)

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self.conn.close()

    def __del__(self) -> None:  # a worker thread's connections go with it (``sqlite.connection``)
        self.conn.close()


# The service's side (async) --------------------------------------------------------


class AsyncConn:
    """What the storage functions call on ``Database.conn``: each call on a connection of the
    pool, or, inside ``transaction``, on that transaction's connection."""

    dialect = DIALECT

    def __init__(self, pool: AsyncConnectionPool | None = None, conn: psycopg.AsyncConnection | None = None) -> None:
        self.pool, self.conn = pool, conn

    def _connection(self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection]:
        if self.conn is not None:
            return contextlib.nullcontext(self.conn)  # type: ignore[return-value]
        return self._pooled()

    @contextlib.asynccontextmanager
    async def _pooled(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection of the pool. A task cancelled while it waits for one can be handed one all
        the same (psycopg_pool's waiter returns the connection it was given over the cancellation):
        then the cancellation is raised here, not lost (a background task would never stop)."""
        task = asyncio.current_task()
        before = task.cancelling() if task is not None else 0
        async with self.pool.connection() as conn:
            if task is not None and task.cancelling() > before:
                raise asyncio.CancelledError
            yield conn

    async def execute_fetchall(self, sql: str, params: Any = None) -> list[Row]:
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=_rows)
            await cur.execute(translate(sql), _params(params))
            return await cur.fetchall() if cur.description is not None else []

    async def execute(self, sql: str, params: Any = None) -> None:
        async with self._connection() as conn:
            await conn.execute(translate(sql), _params(params))

    async def executemany(self, sql: str, seq: Iterable) -> None:
        async with self._connection() as conn:
            async with conn.cursor() as cur:
                await cur.executemany(translate(sql), list(seq))

    @property
    def in_transaction(self) -> bool:
        return self.conn is not None and self.conn.info.transaction_status != TransactionStatus.IDLE

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()


async def open_pool(url: str, size: int, synchronous_commit: bool = True) -> AsyncConn:
    """A pool of at most ``size`` connections (DICOMSVC_DATABASE_POOL), one opened at once."""

    async def configure(conn: psycopg.AsyncConnection) -> None:
        if not synchronous_commit:
            await conn.execute("SET synchronous_commit = off")

    pool = AsyncConnectionPool(
        url, min_size=1, max_size=max(size, 1), kwargs={"autocommit": True}, configure=configure, open=False
    )
    await pool.open(wait=True, timeout=30)
    return AsyncConn(pool=pool)


@contextlib.asynccontextmanager
async def transaction(conn: AsyncConn) -> AsyncIterator[AsyncConn]:
    """BEGIN ... COMMIT on one connection of the pool; rolled back on any error (a COMMIT's too)."""
    async with conn._connection() as c:
        await c.execute("BEGIN")
        bound = AsyncConn(conn=c)
        try:
            yield bound
            await c.execute("COMMIT")
        except BaseException:
            if not c.closed and bound.in_transaction:
                await c.execute("ROLLBACK")
            raise


def schema() -> str:
    """``schema_pg.sql`` as shipped in the package."""
    return resources.files(__package__).joinpath("schema_pg.sql").read_text(encoding="utf-8")


async def apply_schema(conn: AsyncConn, data_version: int) -> None:
    """Create what is missing (every statement of the schema is idempotent) in one transaction,
    under an advisory lock: replicas starting together apply it one after the other. A new
    database's data is at ``data_version`` already (nothing stored before PostgreSQL support
    needs upgrading)."""
    text = schema()
    async with transaction(conn) as tx:
        await tx.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
        async with tx._connection() as c:
            await c.execute(text)  # no parameters: sent as one simple query, several statements
        await tx.execute(
            "INSERT INTO schema_version (id, version) VALUES (1, ?) ON CONFLICT (id) DO NOTHING", (data_version,)
        )


def totals(url: str, sql: str) -> tuple:
    """The one row of ``sql`` on a connection of its own (in an I/O thread)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return tuple(conn.execute(sql).fetchone())
