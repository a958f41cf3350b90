"""Apps with authentication on, and their API tokens, for the auth, rules and ownership tests."""

import contextlib
import io
from pathlib import Path

from starlette.testclient import TestClient

from app import create_app
from dicomsvc.cli.main import main as cli
from dicomsvc.config import Config
from indexdb import database_env


def auth_config(data_dir: Path, import_root: Path, **settings: str) -> Config:
    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0"}
    env |= {f"DICOMSVC_{k.upper()}": v for k, v in settings.items()}
    return Config.from_env(env)


def create_token(monkeypatch, data_dir: Path, user: str, role: str) -> str:
    """``dicomsvc token create --user USER --role ROLE``: the token it prints on stdout."""
    monkeypatch.setenv("DICOMSVC_DATA_DIR", str(data_dir))
    for name, value in database_env(data_dir).items():  # the suite on PostgreSQL: the app's database
        monkeypatch.setenv(name, value)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cli(["token", "create", "--user", user, "--role", role]) == 0
    return out.getvalue().strip()


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def token_app(monkeypatch, data_dir: Path, import_root: Path, users: dict[str, str], **settings: str):
    """A TestClient of an app with DICOMSVC_AUTH=token and a token per user ({user: role});
    yields (client, {user: token})."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tokens = {user: create_token(monkeypatch, data_dir, user, role) for user, role in users.items()}
    with TestClient(create_app(auth_config(data_dir, import_root, auth="token", **settings))) as client:
        yield client, tokens
