"""Which SQL dialect a connection speaks: SQLite (the default) or PostgreSQL (DICOMSVC_DATABASE_URL).

The storage functions write one SQL text where both dialects agree, and per-dialect constants
where they do not (chosen with ``dialect_of``). Imports nothing, so every storage module can.
"""

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


def is_url(where: object) -> bool:
    """Whether ``where`` names a PostgreSQL database (a URL) rather than an SQLite file."""
    return isinstance(where, str) and where.startswith(("postgresql://", "postgres://"))


def dialect_of(conn: object) -> str:
    """The dialect of a connection the storage functions were given (PostgreSQL's adapters,
    ``postgres.SyncConn`` and ``AsyncConn``, say so; sqlite3's and aiosqlite's do not)."""
    return getattr(conn, "dialect", SQLITE)
