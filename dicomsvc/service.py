"""The service's resources, opened in the app's lifespan and passed to every call.

CPU work (parsing, decoding, rendering, PNG encoding, the ingest's SQLite
insert) runs in a pool of worker processes (``dicomsvc.workers``), so it uses
every core, and a decoder that crashes, runs away with memory or takes too long
costs one worker and one request, never the server; small blocking I/O runs in
a thread pool. Work handed to a worker finishes even if its client goes away,
and shutting down waits for it. When a worker dies mid-task, what the task had
written to blob storage is removed before the request is answered.
"""

import asyncio
import contextlib
import contextvars
import dataclasses
import fcntl
import functools
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import tasks
from .config import Config
from .errors import DicomSvcError
from .storage import instances, shared
from .storage.dialect import SQLITE
from .storage.blobs import BlobStore
from .storage.sqlite import Database, open_database
from .workers import Limits, Setup, ThreadPool, WorkerPool

T = TypeVar("T")
log = logging.getLogger("dicomsvc")


# What workers run: imported by the fork server before it forks them (init_worker imports them too)
WORKER_MODULES = ("dicomsvc.ingest", "dicomsvc.retrieve", "dicomsvc.imaging.decode")


def _new_cpu_pool(config: Config) -> WorkerPool | ThreadPool:
    # preload: imported once by the fork server, shared by every worker (dicomsvc.workers)
    setup = Setup("dicomsvc.tasks:init_worker", (config.max_frame_bytes,), preload=WORKER_MODULES)
    if config.workers == 0:  # in-process threads: tests, debugging
        return ThreadPool(2, setup)
    limits = Limits(memory=config.worker_memory, timeout=config.worker_timeout)
    return WorkerPool(config.workers, limits, setup)


class Broadcast:
    """Wakes every waiter at once each time it is fired: ``fired()`` taken before looking at
    what it announces, then awaited, misses no firing after the look (``GET /jobs/{id}?wait=``)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fired(self) -> asyncio.Event:
        return self._event

    def fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()


@dataclass
class Service:
    config: Config
    db: Database
    blobs: BlobStore
    cpu_pool: WorkerPool | ThreadPool
    io_pool: ThreadPoolExecutor
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)  # a background job is queued
    job_ended: Broadcast = field(default_factory=Broadcast)  # a job of this replica is done or failed
    forward_wakeup: asyncio.Event = field(default_factory=asyncio.Event)  # forwards may be queued (dicomsvc.forwarding)
    replica: str = field(default_factory=lambda: replica_id())  # who holds a job's lease (dicomsvc.jobs)
    # called with the ids of instances deleted by background work (a send job's delete_after:
    # dicomsvc.removal), so the HTTP layer's read cache forgets them (app.py registers it)
    on_delete: list[Callable[[list[str]], None]] = field(default_factory=list)

    async def cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound ``fn(*args)`` in a worker process (arguments and result are pickled).

        Past DICOMSVC_WORKER_MEMORY the answer is ``WorkerMemory`` (413), past
        DICOMSVC_WORKER_TIMEOUT ``Busy`` (503); a worker that dies (a decoder's crash)
        fails its own task only, ``InvalidDicom`` (422). The worker is replaced.

        With routing rules, the forwarder is woken after each task: an ingest may have queued
        forwards (in its own transaction, ``dicomsvc.forwarding``)."""
        result = await self.cpu_pool.run(fn, *args)
        if self.config.network_config.rules:
            self.forward_wakeup.set()
        return result

    async def ingest_one(self, *item: Any) -> Any:
        """One ``POST /dicom`` instance in a worker (``ingest.ingest_group``'s item: ``"path",
        raw, options`` or ``"file", temp, source, options``), with the other single ingests
        waiting for a worker at the same time: one worker task and one transaction for them all
        (``WorkerPool.run_grouped``; alone when a worker is idle; an upload always alone). Its
        result or error as ``cpu``'s for ``ingest_path``/``ingest_file`` alone.

        An outcome ``settled`` for the same item in this request (by ``http.hotpost``, which then
        hands the request to the stack) is given again instead: a file that brings its worker
        down costs one worker, not two, and a refused file is not parsed twice."""
        settled = _SETTLED.get()
        if settled is not None and settled[0] == _same_ingest(item):
            _SETTLED.set(None)  # once
            if settled[2]:
                raise settled[1]
            return settled[1]
        if item[0] == "file":  # an upload's bytes are used up by its ingest: it could not go again
            # alone after a worker lost mid-group (WorkerPool.run_grouped), so it is never grouped
            # and another request's crash never fails it
            result = await self.cpu_pool.run_alone(tasks.ingest_group, item, self.config)
        else:
            result = await self.cpu_pool.run_grouped(tasks.ingest_group, item, self.config)
        if self.config.network_config.rules:
            self.forward_wakeup.set()
        return result

    @staticmethod
    @contextlib.contextmanager
    def settled(item: tuple, outcome: Any, raised: bool = False) -> Iterator[None]:
        """Within this block (in this request's context), ``ingest_one(*item)`` -- an upload's
        temporary file aside -- answers ``outcome`` (raised if ``raised``) without a worker."""
        token = _SETTLED.set((_same_ingest(item), outcome, raised))
        try:
            yield
        finally:
            _SETTLED.reset(token)

    async def remove_task_leftovers(self, tag: str) -> None:
        """Remove what the worker task ``tag`` wrote before its worker died: its temporary
        files, and the blobs it had renamed into place that no row points at."""
        temps, keys = await self.io(self.blobs.task_leftovers, tag)
        ids = sorted({Path(key).name.split(".", 1)[0] for key in keys})
        known = await instances.known_ids(self.db, ids) if ids else set()
        orphans = [key for key in keys if Path(key).name.split(".", 1)[0] not in known]
        await self.io(BlobStore.discard, *temps)
        await self.io(self.blobs.remove, *orphans)
        if temps or orphans:
            log.info("removed %d temporary file(s) and %d blob(s) of a task whose worker died", len(temps), len(orphans))

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run small blocking I/O ``fn(*args)`` in a thread, in the caller's context (what it
        logs carries the request's id, as ``asyncio.to_thread`` would)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.io_pool, functools.partial(contextvars.copy_context().run, fn, *args))


# (item, outcome, raised) of an ingest already run for the request being answered (``Service.settled``)
_SETTLED: contextvars.ContextVar[tuple[tuple, Any, bool] | None] = contextvars.ContextVar("dicomsvc_settled", default=None)


def _same_ingest(item: tuple) -> tuple:
    """What makes two ``ingest_one`` items the same ingest: all but an upload's temporary file
    (the stack spools the body it is handed again, to a file of its own)."""
    return (item[0], *item[2:]) if item[0] == "file" else item


def replica_id() -> str:
    """This server process's name among the replicas sharing one index: host, pid (what an
    operator finds it by) and a random part (a pid is reused, in a new container say)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


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


async def _anon_secret(config: Config, db: Database) -> str:
    """DICOMSVC_ANON_SECRET; else on SQLite the data directory's ``anon.secret`` (``anon_secret``);
    on PostgreSQL the index's own, made once and shared by every replica (``storage.shared``):
    pseudonyms must not depend on the replica that anonymized. A data directory's ``anon.secret``
    made before is the one kept when the index holds none yet; one the index holds is copied
    into a data directory that has none."""
    if config.anon_secret or db.dialect == SQLITE:
        return anon_secret(config)
    path = config.data_dir / "anon.secret"
    local = path.read_text().strip() if path.exists() else None
    secret = await shared.claim(db, "anon_secret", local or secrets.token_hex(32))
    if local is None:
        with contextlib.suppress(FileExistsError), os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secret)
    elif local != secret:
        log.warning("the data directory's anon.secret is not the one the index holds (made by another replica): the index's is used")
    return secret


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
    with contextlib.suppress(OSError):  # may be a read-only mount that already exists
        config.import_root.mkdir(parents=True, exist_ok=True)
    blobs = BlobStore.of(config)
    blobs.open()
    if blobs.remote is not None:
        await _check_object_store(blobs)
    db = await open_database(config.database, config.database_pool)
    try:
        config = dataclasses.replace(config, anon_secret=await _anon_secret(config, db))  # workers get it with the config
        cpu_pool = _new_cpu_pool(config)
        await cpu_pool.start()
    except BaseException as exc:
        await db.close()
        if isinstance(exc, RuntimeError):  # a worker that cannot start
            raise StartupError(str(exc)) from None
        raise
    svc = Service(
        config=config,
        db=db,
        blobs=blobs,
        cpu_pool=cpu_pool,
        io_pool=ThreadPoolExecutor(4, thread_name_prefix="dicomsvc-io"),
    )
    if isinstance(cpu_pool, WorkerPool):
        cpu_pool.on_lost = svc.remove_task_leftovers
    try:
        yield svc
    finally:
        await svc.cpu_pool.close()
        await asyncio.to_thread(svc.io_pool.shutdown, wait=True)
        await db.close()


async def _check_object_store(blobs: BlobStore) -> None:
    """DICOMSVC_BLOB_URL: the bucket must exist and answer before the service starts (a missing
    one is not made: buckets are the operator's, with their policies; README "S3-compatible storage")."""
    from .storage.objects import BucketMissing

    try:
        await asyncio.to_thread(blobs.remote.check)
    except BucketMissing as exc:
        raise StartupError(str(exc)) from None
    except DicomSvcError as exc:  # StorageUnavailable
        raise StartupError(f"the object store of DICOMSVC_BLOB_URL ({blobs.remote!r}) does not answer: {exc.detail}") from None


@contextlib.asynccontextmanager
async def in_background(work: Awaitable[Any], name: str) -> AsyncIterator[None]:
    """Run ``work`` as a task while the block runs; at its end the task is cancelled and
    awaited, and whatever it raised is dropped (the app is stopping: it logged its own errors)."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
