"""API token rows (``api_token``): made and revoked by ``dicomsvc token``, looked up per request.

Only a token's hash is stored (``dicomsvc.auth.tokens`` says why SHA-256 is enough).
"""

from datetime import datetime, timezone

from .sqlite import Database, transaction


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


async def insert(db: Database, token_id: str, user: str, role: str, token_hash: str) -> None:
    async with transaction(db) as conn:
        await conn.execute(
            'INSERT INTO api_token (id, "user", role, hash, created_at) VALUES (?, ?, ?, ?, ?)',
            (token_id, user, role, token_hash, now()),
        )


async def find(db: Database, token_hash: str) -> dict | None:
    """The token with this hash, if it exists and is not revoked: {id, user, role}."""
    rows = await db.conn.execute_fetchall(
        'SELECT id, "user", role FROM api_token WHERE hash = ? AND revoked_at IS NULL', (token_hash,)
    )
    return dict(rows[0]) if rows else None


async def list_all(db: Database) -> list[dict]:
    """Every token, oldest first, without its hash."""
    rows = await db.conn.execute_fetchall(
        'SELECT id, "user", role, created_at, revoked_at FROM api_token ORDER BY created_at, id'
    )
    return [dict(r) for r in rows]


async def revoke(db: Database, token_id: str) -> bool:
    """Revoke a token; False when there is no such token or it was revoked already."""
    async with transaction(db) as conn:
        rows = await conn.execute_fetchall(
            "UPDATE api_token SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING id", (now(), token_id)
        )
    return bool(rows)
