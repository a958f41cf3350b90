"""The index as the tests look into it: the SQLite file, or the PostgreSQL database of
DICOMSVC_DATABASE_URL (the suite run with DICOMSVC_TEST_POSTGRES=1), through one small API:
``execute(sql, params)`` with SQLite's ``?`` placeholders, returning a cursor (``fetchall``,
``fetchone``), rows as tuples."""

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dicomsvc.config import Config

# On PostgreSQL (conftest sets ``new_database`` for the session): one database per data directory,
# as the SQLite index lives in it -- an app opened again on a data directory finds its data, and a
# test holding only ``data_dir`` finds its database
new_database: Callable[[], str] | None = None
_urls: dict[Path, str] = {}


def database_env(data_dir: Path) -> dict[str, str]:
    """DICOMSVC_DATABASE_URL of the data directory's database when the suite runs on PostgreSQL."""
    if new_database is None:
        return {}
    key = Path(data_dir).resolve()
    if key not in _urls:
        _urls[key] = new_database()
    return {"DICOMSVC_DATABASE_URL": _urls[key]}


@contextlib.contextmanager
def index(config: Config | Path) -> Iterator[Any]:
    """A connection to ``config``'s index, or the index of the config made for that data directory
    (autocommit on PostgreSQL; committed on exit on SQLite)."""
    if isinstance(config, Path):
        url = database_env(config).get("DICOMSVC_DATABASE_URL", "")
        config = Config(data_dir=config.resolve(), import_root=config, database_url=url)
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
