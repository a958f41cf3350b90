"""``dicomsvc token create|list|revoke``: API tokens, managed on the server's machine.

Works on the data directory's database directly (``DICOMSVC_DATA_DIR``), whether or not the
server is running (SQLite serializes the writes). ``create`` prints the token once, on stdout
alone (so ``TOKEN=$(dicomsvc token create ...)`` works); only its SHA-256 is stored
(``dicomsvc.auth.tokens``), so a lost token cannot be shown again: revoke it and make another.
"""

import argparse
import asyncio
import sys

import shortuuid

from ..auth.tokens import new_token, token_hash
from ..config import Config
from ..identity import ROLES
from ..storage import tokens as token_rows
from ..storage.sqlite import open_database

MAX_USER_CHARS = 255


def add_parser(commands) -> None:
    token = commands.add_parser("token", help="make, list and revoke API tokens (DICOMSVC_AUTH=token or oidc)")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a token: printed once, only its hash is kept")
    create.add_argument("--user", required=True, help="the user the token acts as (recorded as the uploader)")
    create.add_argument("--role", required=True, choices=ROLES, help="what the token may do")
    actions.add_parser("list", help="every token: id, user, role, created, revoked (never the token)")
    revoke = actions.add_parser("revoke", help="revoke a token: it stops working at once")
    revoke.add_argument("id", help="the token's id (from create or list)")


def run(args: argparse.Namespace) -> int:
    try:
        config = Config.from_env()
    except ValueError as exc:
        print(f"dicomsvc token: {exc}", file=sys.stderr)
        return 2
    if args.action == "create":
        user = args.user.strip()
        if not user or len(user) > MAX_USER_CHARS or not user.isprintable():
            print(f"dicomsvc token: --user must be 1 to {MAX_USER_CHARS} printable characters", file=sys.stderr)
            return 2
        token_id, token = asyncio.run(_create(config, user, args.role))
        print(f"token {token_id} for {user} ({args.role}); it is shown only this once:", file=sys.stderr)
        print(token)
        return 0
    if args.action == "list":
        rows = asyncio.run(_with_db(config, token_rows.list_all))
        print("id\tuser\trole\tcreated\trevoked")
        for r in rows:
            print(f"{r['id']}\t{r['user']}\t{r['role']}\t{r['created_at']}\t{r['revoked_at'] or '-'}")
        return 0
    if asyncio.run(_with_db(config, token_rows.revoke, args.id)):
        print(f"token {args.id} revoked", file=sys.stderr)
        return 0
    print(f"dicomsvc token: no active token {args.id}", file=sys.stderr)
    return 1


async def _with_db(config: Config, fn, *args):
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = await open_database(config.database, config.database_pool)
    try:
        return await fn(db, *args)
    finally:
        await db.close()


async def _create(config: Config, user: str, role: str) -> tuple[str, str]:
    token, token_id = new_token(), shortuuid.uuid()
    await _with_db(config, token_rows.insert, token_id, user, role, token_hash(token))
    return token_id, token
