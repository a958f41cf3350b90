"""The service's resources, opened in the app's lifespan and passed to every call.

CPU work (parsing, decoding, rendering, PNG encoding, the ingest's SQLite
insert) runs in a pool of worker processes, so it uses every core and a decoder
that crashes takes down a worker, not the server; small blocking I/O runs in a
thread pool. Work handed to a worker finishes even if its client goes away,
and shutting down waits for it.
"""

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import logging
import multiprocessing
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .config import Config
from .errors import InvalidDicom
from .logs import quiet_pydicom
from .storage.blobs import BlobStore
from .storage.sqlite import Database, open_database

T = TypeVar("T")
log = logging.getLogger("dicomsvc")


def _new_cpu_pool(config: Config) -> Executor:
    if config.workers == 0:  # in-process threads: tests, debugging
        return ThreadPoolExecutor(2, thread_name_prefix="dicomsvc-cpu", initializer=quiet_pydicom)
    return ProcessPoolExecutor(
        config.workers, mp_context=multiprocessing.get_context("spawn"), initializer=quiet_pydicom
    )


def _warm_up() -> None:
    """Import what the pipeline needs, so the first request does not pay for it."""
    from . import ingest  # noqa: F401


@dataclass
class Service:
    config: Config
    db: Database
    blobs: BlobStore
    cpu_pool: Executor
    io_pool: ThreadPoolExecutor
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)  # a background job is queued

    async def cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound ``fn(*args)`` in a worker process (arguments and result are pickled)."""
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            pool = self.cpu_pool
            try:
                return await loop.run_in_executor(pool, functools.partial(fn, *args))
            except BrokenProcessPool:
                # A worker died (a decoder crashed on some input). Replace the pool and
                # try once more: requests that merely shared the pool then succeed, and
                # the input that kills a worker twice is refused.
                if self.cpu_pool is pool:
                    log.error("a worker process died; starting a new pool")
                    self.cpu_pool = _new_cpu_pool(self.config)
                    pool.shutdown(wait=False)
                if attempt == 2:
                    raise InvalidDicom("the file crashed the DICOM reader or decoder") from None
        raise AssertionError("unreachable")

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run small blocking I/O ``fn(*args)`` in a thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.io_pool, functools.partial(fn, *args))



def anon_secret(config: Config) -> str:
    """DICOMSVC_ANON_SECRET, or one generated once and kept in the data directory."""
    if config.anon_secret:
        return config.anon_secret
    path = config.data_dir / "anon.secret"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return path.read_text().strip()


class StartupError(RuntimeError):
    """The service cannot start: the message says why, for the operator."""


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``<data>/dicomsvc.lock`` for as long as the service runs.

    Taken before anything in the directory is touched, so a second server pointed at
    the same directory refuses to start instead of clearing the first one's temporary
    files. An ``flock`` dies with its process (kill -9 included): nothing stale to clean.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create the data directory {data_dir}: {exc.strerror}") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise StartupError(f"the data directory {data_dir} is not writable (DICOMSVC_DATA_DIR)")
    fd = os.open(data_dir / "dicomsvc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupError(
                f"another dicomsvc is already using the data directory {data_dir} (it holds dicomsvc.lock)"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.asynccontextmanager
async def open_service(config: Config) -> AsyncIterator[Service]:
    with data_dir_lock(config.data_dir):
        async with _open_service(config) as svc:
            yield svc


@contextlib.asynccontextmanager
async def _open_service(config: Config) -> AsyncIterator[Service]:
    config = dataclasses.replace(config, anon_secret=anon_secret(config))  # workers get it with the config
    with contextlib.suppress(OSError):  # may be a read-only mount that already exists
        config.import_root.mkdir(parents=True, exist_ok=True)
    blobs = BlobStore(config.blob_dir)
    blobs.open()
    db = await open_database(config.db_path)
    try:
        cpu_pool = _new_cpu_pool(config)
    except BaseException:
        await db.close()
        raise
    svc = Service(
        config=config,
        db=db,
        blobs=blobs,
        cpu_pool=cpu_pool,
        io_pool=ThreadPoolExecutor(4, thread_name_prefix="dicomsvc-io"),
    )
    try:
        await asyncio.gather(*(svc.cpu(_warm_up) for _ in range(max(config.workers, 1))))
        yield svc
    finally:
        await asyncio.to_thread(svc.cpu_pool.shutdown, wait=True)
        await asyncio.to_thread(svc.io_pool.shutdown, wait=True)
        await db.close()
