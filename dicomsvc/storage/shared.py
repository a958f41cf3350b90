"""Values every server on one index must agree on, kept in the index (``shared_value``).

Several replicas share a PostgreSQL index (README "Running at scale"); what one of them makes
up at its first start -- the anonymization secret when DICOMSVC_ANON_SECRET is not set -- must be
what the others use, or the same patient would get other pseudonyms through another replica.
"""

from .sqlite import Database, transaction


async def claim(db: Database, name: str, candidate: str) -> str:
    """The value of ``name``: the one already kept, or ``candidate``, kept now. Two servers claiming
    at once agree: the second's insert waits for the first's commit and keeps nothing."""
    async with transaction(db) as conn:
        await conn.execute("INSERT INTO shared_value (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, candidate))
        rows = await conn.execute_fetchall("SELECT value FROM shared_value WHERE name = ?", (name,))
    return rows[0]["value"]
