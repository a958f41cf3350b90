"""A throwaway PostgreSQL server for the tests (DICOMSVC_TEST_POSTGRES=1 or ``--postgres``).

Started from the Debian ``postgresql`` package's binaries (``initdb`` into a temporary folder, a
free port on 127.0.0.1, its socket in that folder), stopped and removed after the session. A test
gets a fresh database made from a template that already holds the schema (CREATE DATABASE ...
TEMPLATE copies a few files). The server runs with fsync off unless asked (``fsync=True``, for
figures): it is thrown away; durability on PostgreSQL (synchronous_commit on, the default) is the
service's setting, not this one's.
"""

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMPLATE = "dicomsvc_template"


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, root: Path, port: int, bindir: Path) -> None:
        self.root, self.port, self.bindir = root, port, bindir
        self.user = "dicomsvc"
        self._names = itertools.count(1)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh database holding the schema; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
        return self.url(name)


def _as_owner() -> list[str]:
    """PostgreSQL refuses to run as root: then its binaries run as Debian's ``postgres`` user."""
    if os.geteuid() != 0:
        return []
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root and there is no postgres user to run PostgreSQL as") from None
    return ["runuser", "-u", "postgres", "--"]


@contextlib.contextmanager
def running(fsync: bool = False) -> Iterator[Server]:
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="dicomsvc-pg-"))
    server = Server(root, free_port(), bindir)
    data = root / "data"
    owner = _as_owner()
    if owner:
        shutil.chown(root, "postgres")
    try:
        subprocess.run(
            [*owner, bindir / "initdb", "-D", data, "-U", server.user, "-A", "trust", "--locale=C", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True,
        )  # fmt: skip
        options = (
            f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1"
            + ("" if fsync else " -c fsync=off -c full_page_writes=off")
            + " -c max_connections=400 -c shared_buffers=32MB"
        )
        subprocess.run(
            [*owner, bindir / "pg_ctl", "-D", data, "-o", options, "-l", root / "log", "-w", "-t", "60", "start"],
            check=True, capture_output=True,
        )
        try:
            _make_template(server)
            yield server
        finally:
            subprocess.run([*owner, bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _make_template(server: Server) -> None:
    """The template database, with the schema applied by the service's own code."""
    import asyncio

    import psycopg

    from dicomsvc.storage import sqlite

    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE}")

    async def apply() -> None:
        await (await sqlite.open_database(server.url(TEMPLATE))).close()

    asyncio.run(apply())
