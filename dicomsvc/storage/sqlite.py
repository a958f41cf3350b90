"""The SQLite database: connections, the schema, transactions.

One database file in WAL mode. The ingest pipeline writes from the worker
processes, each through its own connection (``connection``), one short
``BEGIN IMMEDIATE`` transaction per instance (per chunk in a batch), durable when
``Writer.commit`` returns (the WAL synced, once for the concurrent committers of all
workers: ``groupsync``): SQLite serializes the writers,
and no write ever crosses a process boundary or the event loop. The HTTP side
reads (and keeps the books of background jobs) through one aiosqlite
connection (``Database``); every ``await`` on it is a round trip to its thread,
so each read is a single query. The hottest reads -- one instance's row by its id
for ``GET /image`` and ``GET /tags`` -- are point lookups on an index taking a few
microseconds, less than that round trip (50-100 us): they run at once on the event
loop, on a plain ``sqlite3`` connection of their own (``Database.reader``, ``read_now``),
which in WAL mode never waits for a writer; when SQLite says it is busy all the same
(a WAL being recovered), the read goes through the aiosqlite connection instead.

The schema is ``schema.sql``, shipped inside the package (``importlib.resources``),
applied at every start; columns added after a table was first released are added
to older databases first (``ADDED_COLUMNS``).

Where the index is (``open_database``, ``connection``) is an SQLite file's path, or a
PostgreSQL URL (DICOMSVC_DATABASE_URL): then ``postgres`` stands in for aiosqlite and sqlite3
behind the same calls, and ``Database.dialect`` / ``Writer.dialect`` say which SQL to use
where the two differ.
"""

import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the service's side: worker processes, which only write, never load asyncio
    import asyncio

    import aiosqlite

from . import studies
from .dialect import POSTGRESQL, SQLITE, dialect_of, is_url
from .groupsync import GroupSync

Where = Path | str  # an SQLite file, or a postgresql:// URL

# Columns added after a table was first released: (table, column, definition)
ADDED_COLUMNS = (
    ("dicom", "anonymized", "INTEGER NOT NULL DEFAULT 0"),
    ("dicom", "anonymized_from", "TEXT"),
    ("dicom", "patient_sex", "TEXT"),
    ("dicom", "patient_birth_date", "TEXT"),
    ("dicom", "study_description", "TEXT"),
    ("dicom", "bits_allocated", "INTEGER"),
    ("dicom", "bits_stored", "INTEGER"),
    ("dicom", "photometric", "TEXT"),
    ("dicom", "png_bytes", "INTEGER"),
    # DICOMweb (issue 10); filled from the stored tag rows by studies.backfill
    ("dicom", "study_time", "TEXT"),
    ("dicom", "study_id", "TEXT"),
    ("dicom", "referring_physician_name", "TEXT"),
    ("dicom", "timezone_offset", "TEXT"),
    ("dicom", "series_number", "INTEGER"),
    ("dicom", "series_description", "TEXT"),
    ("dicom", "pps_start_date", "TEXT"),
    ("dicom", "pps_start_time", "TEXT"),
    ("dicom", "instance_number", "INTEGER"),
    # Ownership (issue 11): who stored an instance, who asked for a job
    ("dicom", "uploaded_by", "TEXT"),
    ("job", "created_by", "TEXT"),
    # Several replicas (issue 13): the lease on a running job
    ("job", "claimed_by", "TEXT"),
    ("job", "lease_until", "REAL"),
    # Clinical datasets (issue 15): the dataset an audit record names
    ("audit", "dataset", "TEXT"),
)
# PRAGMA user_version: what the stored data has been brought up to. 1: the DICOMweb columns of
# ``dicom`` and the study and series rows are filled (studies.backfill) -- done once, in one
# transaction with setting the version, so an interrupted upgrade is redone at the next start.
DATA_VERSION = 1
# synchronous = FULL: in WAL mode every COMMIT fsyncs the WAL, so a committed ingest survives
# a power cut (NORMAL syncs only at checkpoints: a commit could roll back). sqlite.org/pragma.html#pragma_synchronous
PRAGMAS = ("PRAGMA busy_timeout = 30000", "PRAGMA foreign_keys = ON", "PRAGMA synchronous = FULL")
# A worker's connection (``connection``) commits with synchronous = NORMAL and then syncs the
# WAL itself (``Writer.commit``), after SQLite's write lock is released and shared with the
# workers committing at the same time (``groupsync``: the group commit): as durable as FULL
# when ``commit`` returns, without one flush per commit under the lock. Foreign keys are not
# checked on its inserts (two index probes a tag row): the pipeline inserts a tag row only
# with the ``dicom`` pk it has just inserted and dictionary ids already committed; deletes,
# which rely on ON DELETE CASCADE, run on the service's connection, where they are on.
# temp_store = MEMORY: a statement journal (the undo of one statement inside the transaction)
# stays in memory (each of the pipeline's statements touches some tens of pages) instead of spilling past
# 64 KiB into a file SQLite creates and unlinks in /var/tmp -- a quarter of a path ingest's
# transactions did (strace, 54 of 200), a file created and freed each (storage.blobs on why
# freed inodes cost), and a worker needing a writable /var/tmp to ingest.
WRITER_PRAGMAS = ("PRAGMA busy_timeout = 30000", "PRAGMA foreign_keys = OFF", "PRAGMA synchronous = NORMAL", "PRAGMA temp_store = MEMORY")


def schema() -> str:
    """``schema.sql`` as shipped in the package (an installed wheel has no source tree)."""
    return resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")


# The write side (sync, in worker processes) ---------------------------------------


@dataclass
class Writer:
    """A worker's connection, with the tag dictionary ids it has seen committed."""

    db: sqlite3.Connection  # or postgres.SyncConn (the same calls)
    wal: GroupSync | None = None  # the group commit of the WAL sync; None: synchronous = FULL
    tag_ids: dict[tuple[int, str, str], int] = field(default_factory=dict)
    dialect: str = SQLITE

    def commit(self) -> None:
        """COMMIT the open transaction, durably: the WAL synced (shared) before returning."""
        self.db.execute("COMMIT")
        if self.wal is not None:
            try:
                self.wal.sync()
            except OSError as exc:  # committed, but not known durable: what it points at must stay
                exc.committed = True
                raise


_local = threading.local()


def connection(path: Where) -> Writer:
    """This thread's connection to ``path``, opened on first use and kept (opening costs ~0.4 ms;
    a PostgreSQL connection a few ms)."""
    writers = _local.__dict__.setdefault("writers", {})
    writer = writers.get(path)
    if writer is None and is_url(path):
        from . import postgres

        writer = writers[path] = Writer(postgres.SyncConn(str(path)), dialect=POSTGRESQL)
    elif writer is None:
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        for pragma in WRITER_PRAGMAS:
            db.execute(pragma)
        wal = GroupSync(path.with_name(path.name + "-wal"), path.with_name(path.name + ".sync"))
        writer = writers[path] = Writer(db, wal)
    return writer


def _new_lock() -> "asyncio.Lock":
    import asyncio  # here: this module is imported by the workers too, which never need asyncio

    return asyncio.Lock()


# The service's side (async) --------------------------------------------------------


@dataclass
class Database:
    conn: "aiosqlite.Connection"  # the service's own: reads, and job bookkeeping (or postgres.AsyncConn)
    # One transaction at a time on ``conn``: coroutines share it, and a statement of one
    # must not land inside (and roll back with) another's transaction.
    write_lock: "asyncio.Lock" = field(default_factory=_new_lock)
    # Point reads run at once on the event loop (``read_now``); None: all reads go through ``conn``
    reader: sqlite3.Connection | None = None

    @property
    def dialect(self) -> str:
        return dialect_of(self.conn)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        await self.conn.close()


def open_reader(path: Path) -> sqlite3.Connection:
    """A connection for ``read_now``: autocommit (each statement its own read transaction, so
    none is left open to hold back checkpoints), read-only by ``query_only``, and never
    waiting for a lock (``busy_timeout = 0``: the event loop must not block; a busy read is
    retried through aiosqlite). Used only from the event loop's thread."""
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=64)
    reader.row_factory = sqlite3.Row
    reader.execute("PRAGMA busy_timeout = 0")
    reader.execute("PRAGMA query_only = ON")
    return reader


async def read_now(db: Database, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    """The rows of ``sql``, a read of a few indexed rows, run at once on the event loop through
    ``db.reader`` (statements are prepared once and cached by the connection); through the
    aiosqlite connection when there is no reader or SQLite answers busy or locked."""
    if db.reader is not None:
        try:
            return db.reader.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
    return list(await db.conn.execute_fetchall(sql, params))


@contextlib.asynccontextmanager
async def transaction(db: Database) -> AsyncIterator["aiosqlite.Connection"]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the service's connection, one at a time.

    On any error, a COMMIT's included (SQLITE_FULL on a full disk), and on cancellation, a
    ROLLBACK is queued on the connection. Always, and not only when ``in_transaction`` says
    one is open: aiosqlite runs statements in order on its own thread, so a statement whose
    await was cancelled (``BEGIN IMMEDIATE`` itself, say) may not have run yet -- it runs
    before the ROLLBACK, which closes what it opened; a transaction left open would make every
    later BEGIN fail. When none is open (SQLite rolled back already, as on SQLITE_FULL, or
    BEGIN failed), the ROLLBACK's own error is dropped: it must never replace the first
    error -- least of all a cancellation, which a caller catching Exception would then lose
    (the job runner did, and the app's shutdown hung).

    On PostgreSQL: BEGIN ... COMMIT on a connection of the pool, its own (no lock here: the
    database isolates concurrent transactions; the storage functions take the locks they need)."""
    if db.dialect == POSTGRESQL:
        from . import postgres

        async with postgres.transaction(db.conn) as conn:
            yield conn  # type: ignore[misc]
        return
    async with db.write_lock:
        try:
            # inside the try: a task cancelled while its BEGIN waits for another writer's lock
            # (SQLite's busy handler, in aiosqlite's thread) gets its ROLLBACK queued behind it.
            # Outside it, the BEGIN went on to take the lock once free, and held it: every worker's
            # ingest then waited out its 30 s busy timeout (a SIGTERM mid-job: the server's stop
            # waited for a worker stuck so, and the connection failed every later BEGIN).
            await db.conn.execute("BEGIN IMMEDIATE")
            yield db.conn
            await db.conn.execute("COMMIT")
        except BaseException:
            try:
                await db.conn.execute("ROLLBACK")
            except sqlite3.OperationalError:  # "no transaction is active"
                pass
            raise


async def probe_write(db: Database, when: str) -> None:
    """Commit one small write (the ``health`` row): raises if the database does not take
    writes -- a read-only file or mount (SQLITE_READONLY), a full disk, I/O errors."""
    async with transaction(db) as conn:
        await conn.execute("UPDATE health SET checked_at = ? WHERE id = 1", (when,))


async def open_database(path: Where, pool_size: int = 8) -> Database:
    """Create or upgrade the schema and open the service's read connection (on PostgreSQL: a
    pool of at most ``pool_size`` connections, DICOMSVC_DATABASE_POOL)."""
    if is_url(path):
        from . import postgres

        conn = await postgres.open_pool(str(path), pool_size)
        try:
            await postgres.apply_schema(conn, DATA_VERSION)
        except BaseException:
            await conn.close()
            raise
        return Database(conn=conn)  # type: ignore[arg-type]
    text = schema()  # before touching the file: a broken install fails here, not half-way
    import aiosqlite

    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        conn.row_factory = aiosqlite.Row
        for pragma in PRAGMAS:
            await conn.execute(pragma)
        await conn.execute("PRAGMA journal_mode = WAL")
        ((version,),) = await conn.execute_fetchall("PRAGMA user_version")
        for table, column, definition in ADDED_COLUMNS:  # older databases: add what they lack
            columns = {row["name"] for row in await conn.execute_fetchall(f"PRAGMA table_info({table})")}
            if columns and column not in columns:
                await conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        await conn.executescript(text)
        if version < DATA_VERSION:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                await studies.backfill(conn)
                await conn.execute(f"PRAGMA user_version = {DATA_VERSION}")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
    except BaseException:
        await conn.close()
        raise
    try:
        reader = open_reader(path)
    except BaseException:
        await conn.close()
        raise
    return Database(conn=conn, reader=reader)
