"""The index as the tests look into it: the SQLite file, or the PostgreSQL database of
DICOMSVC_DATABASE_URL (the suite run with DICOMSVC_TEST_POSTGRES=1), through one small API:
``execute(sql, params)`` with SQLite's ``?`` placeholders, returning a cursor (``fetchall``,
``fetchone``), rows as tuples."""

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dicomsvc.config import Config

# The configs conftest.make_config made, by data directory: a test holding only ``data_dir`` finds
# its database (a data directory of another config holds the SQLite index)
CONFIGS: dict[Path, Config] = {}


@contextlib.contextmanager
def index(config: Config | Path) -> Iterator[Any]:
    """A connection to ``config``'s index, or the index of the config made for that data directory
    (autocommit on PostgreSQL; committed on exit on SQLite)."""
    if isinstance(config, Path):
        config = CONFIGS.get(config.resolve()) or Config(data_dir=config, import_root=config)
    if config.database_url:
        from dicomsvc.storage import postgres

        conn = postgres.SyncConn(config.database_url)
        try:
            yield conn
        finally:
            conn.close()
    else:
        db = sqlite3.connect(config.db_path)
        try:
            with db:
                yield db
        finally:
            db.close()


def database_errors() -> tuple[type[Exception], ...]:
    """What PostgreSQL's driver raises for an error the database reports (none without psycopg)."""
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)


def on_postgres(config: Config) -> bool:
    return bool(config.database_url)


def dict_rows(config: Config | Path, sql: str, params: tuple = ()) -> list[dict]:
    """The rows of ``sql`` as dicts (column name -> value)."""
    with index(config) as db:
        cursor = db.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
