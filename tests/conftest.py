import base64
import contextlib
import hashlib
import os
import shutil
import signal
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import indexdb
import pgserver
import seaweed
from app import create_app
from dicomfiles import sample_file
from dicomsvc.config import Config

if os.environ.get("DICOMSVC_TEST_ENCRYPTION") == "1":
    # The whole suite with encryption at rest on (README "Encryption at rest"): every
    # Config the tests make holds one fixed master key unless the test sets its own.
    _TEST_KEY = base64.b64encode(bytes(range(32))).decode()  # dicomfiles.SUITE_KEY
    _from_env = Config.from_env.__func__

    def _encrypted_from_env(cls, env=None):
        env = dict(os.environ if env is None else env)
        if not env.get("DICOMSVC_ENCRYPTION_KEY_FILE"):
            env.setdefault("DICOMSVC_ENCRYPTION_KEY", _TEST_KEY)
        return _from_env(cls, env)

    Config.from_env = classmethod(_encrypted_from_env)

# The suite against PostgreSQL (DICOMSVC_TEST_POSTGRES=1 or --postgres): a throwaway server for the
# session (tests/pgserver.py); every Config made in this process with a data directory and no
# DICOMSVC_DATABASE_URL of its own gets its data directory's database (indexdb.database_env).
# (Servers the tests start as subprocesses, with an environment of their own, stay on SQLite.)
_postgres: pgserver.Server | None = None
_plain_from_env = Config.from_env.__func__


def _from_env_on_postgres(cls, env=None):
    env = dict(os.environ if env is None else env)
    if _postgres is not None and env.get("DICOMSVC_DATA_DIR") and "DICOMSVC_DATABASE_URL" not in env:
        env |= indexdb.database_env(Path(env["DICOMSVC_DATA_DIR"]))
    if _s3 is not None and env.get("DICOMSVC_DATA_DIR") and "DICOMSVC_BLOB_URL" not in env:
        env |= s3_env(Path(env["DICOMSVC_DATA_DIR"]))
    return _plain_from_env(cls, env)


# The suite with S3 blobs (DICOMSVC_TEST_S3=1 or --s3): a throwaway SeaweedFS for the session
# (tests/seaweed.py) and one bucket; every Config made in this process with a data directory and no
# DICOMSVC_BLOB_URL of its own gets its data directory's prefix in that bucket (as its folder).
_s3: tuple[seaweed.Server, str] | None = None


def s3_env(data_dir: Path) -> dict[str, str]:
    """The DICOMSVC_BLOB_URL (and endpoint) of a data directory when the suite runs on S3."""
    if _s3 is None:
        return {}
    server, bucket = _s3
    prefix = "d" + hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:24]
    env = server.env(bucket, prefix)
    return {k: v for k, v in env.items() if k.startswith("DICOMSVC_")}


Config.from_env = classmethod(_from_env_on_postgres)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--postgres", action="store_true", help="run against a throwaway PostgreSQL (as DICOMSVC_TEST_POSTGRES=1)")
    parser.addoption("--s3", action="store_true", help="blobs in a throwaway SeaweedFS (as DICOMSVC_TEST_S3=1)")


def s3_wanted(config: pytest.Config) -> bool:
    return config.getoption("--s3") or os.environ.get("DICOMSVC_TEST_S3", "") not in ("", "0")


def postgres_wanted(config: pytest.Config) -> bool:
    return config.getoption("--postgres") or os.environ.get("DICOMSVC_TEST_POSTGRES", "") not in ("", "0")


def scale_run(config: pytest.Config) -> bool:
    """make test-scale: PostgreSQL, S3 blobs or encryption at rest in place of the defaults."""
    return postgres_wanted(config) or s3_wanted(config) or os.environ.get("DICOMSVC_TEST_ENCRYPTION") == "1"


# Tests marked same_in_scale_run make no Config in this process: counted here, so that a marked
# test that starts to (and could then reach the scale run's backends) fails in make test.
_configs_made = 0
_plain_init = Config.__init__


def _counting_init(self, *args, **kwargs):
    global _configs_made
    _configs_made += 1
    _plain_init(self, *args, **kwargs)


Config.__init__ = _counting_init
_CONFIGS_AT_START = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "same_in_scale_run(reason): never reaches the index, the blob store or encryption at rest (pure functions, or"
        " a service in a subprocess whose environment drops DICOMSVC_*), so the scale run would repeat make test's"
        " run of it: skipped there. A marked test that makes a Config fails",
    )
    config.addinivalue_line("markers", "sqlite_only(reason): SQLite by nature (PRAGMAs, WAL, the file); skipped on PostgreSQL")
    config.addinivalue_line("markers", "postgres_only: PostgreSQL's own behaviour; runs with DICOMSVC_TEST_POSTGRES=1")
    config.addinivalue_line("markers", "local_blobs_only(reason): about the local blob folder (fsyncs, the files); skipped with S3 blobs")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if scale_run(config):
        _skip_marked(items, "same_in_scale_run", "the same in the scale run (ran in make test)", "")
    if s3_wanted(config):
        _skip_marked(items, "local_blobs_only", "local blobs only", "the local blob folder")
    if postgres_wanted(config):
        _skip_marked(items, "sqlite_only", "SQLite only", "SQLite only")


def _skip_marked(items: list[pytest.Item], name: str, prefix: str, default: str) -> None:
    """Skip every item marked ``name``, saying ``prefix: <the mark's reason or default>``."""
    for item in items:
        marker = item.get_closest_marker(name)
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else default)
            item.add_marker(pytest.mark.skip(reason=f"{prefix}: {reason}"))


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM (a CI timeout) unwinds the session as Ctrl-C does, so the session's servers stop."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session", autouse=True)
def postgres(request: pytest.FixtureRequest):
    """The session's PostgreSQL server when asked for (else None); stopped and removed after."""
    global _postgres
    if not postgres_wanted(request.config):
        yield None
        return
    with _sigterm_unwinds(), pgserver.running() as server:
        _postgres, indexdb.new_database = server, server.new_database
        try:
            yield server
        finally:
            _postgres, indexdb.new_database = None, None


@pytest.fixture(scope="session", autouse=True)
def s3_server(request: pytest.FixtureRequest):
    """The session's SeaweedFS and bucket when asked for (else None); stopped and removed after."""
    global _s3
    if not s3_wanted(request.config):
        yield None
        return
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    with _sigterm_unwinds(), seaweed.running() as server:
        _s3 = (server, server.new_bucket())
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = server.access_key, server.secret_key
        try:
            yield server
        finally:
            _s3 = None
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture
def database(tmp_path: Path) -> Path | str:
    """Where a storage-level test's index is: an SQLite file, or a fresh PostgreSQL database's URL."""
    return _postgres.new_database() if _postgres is not None else tmp_path / "d.db"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_CONFIGS_AT_START] = _configs_made
    _check_setup(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    start = item.stash.get(_CONFIGS_AT_START, None)
    if start is None or item.get_closest_marker("same_in_scale_run") is None or report.when != "call":
        return
    if _configs_made != start and report.passed:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} is marked same_in_scale_run but made {_configs_made - start} Config(s):"
                           " it may reach the scale run's backends; remove the mark")  # fmt: skip


def _check_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("postgres_only") is not None and not postgres_wanted(item.config):
        pytest.skip("PostgreSQL only: run with DICOMSVC_TEST_POSTGRES=1")



@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def import_root(tmp_path: Path) -> Path:
    root = tmp_path / "import"
    root.mkdir()
    return root


def make_config(data_dir: Path, import_root: Path, workers: int) -> Config:
    config = Config.from_env(
        {
            "DICOMSVC_DATA_DIR": str(data_dir),
            "DICOMSVC_IMPORT_ROOT": str(import_root),
            "DICOMSVC_WORKERS": str(workers),
            # a test's store makes its fan-out folders on first use: made at start, 3,249 folders
            # (13 MB) per test; tests/test_ingest.py and test_blobs.py cover the start-up mode
            "DICOMSVC_BLOB_FOLDERS": "lazy",
        }
    )
    return config


@pytest.fixture
def config(data_dir: Path, import_root: Path) -> Config:
    """CPU work in threads (workers=0): the same code, without spawning processes per test."""
    return make_config(data_dir, import_root, workers=0)


@pytest.fixture
def process_config(data_dir: Path, import_root: Path) -> Config:
    """As the service runs by default: CPU work in two worker processes."""
    return make_config(data_dir, import_root, workers=2)


@pytest.fixture
def client(config: Config):
    with TestClient(create_app(config)) as c:
        yield c


@pytest.fixture
def process_client(process_config: Config):
    with TestClient(create_app(process_config)) as c:
        yield c


@pytest.fixture
def put(import_root: Path):
    """Copy pydicom test files into the import root; returns the relative name."""

    def _put(name: str, as_name: str | None = None) -> str:
        target = import_root / (as_name or name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample_file(name), target)
        return str(target.relative_to(import_root))

    return _put


@pytest.fixture
def live_server(config: Config):
    """The app on a real socket (uvicorn in a thread), for clients that need one."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)
