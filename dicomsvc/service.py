"""The service's resources, opened in the app's lifespan and passed to every call."""

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import store
from .blobs import BlobStore
from .config import Config

T = TypeVar("T")
log = logging.getLogger("dicomsvc")


@dataclass
class Service:
    config: Config
    db: store.Database
    blobs: BlobStore
    executor: ThreadPoolExecutor
    tasks: set[asyncio.Task] = field(default_factory=set)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking or CPU-bound ``fn(*args)`` in a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    async def shielded(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` as a task that finishes even if the caller is cancelled."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return await asyncio.shield(task)


@contextlib.asynccontextmanager
async def open_service(config: Config) -> AsyncIterator[Service]:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # may be a read-only mount that already exists
        config.import_root.mkdir(parents=True, exist_ok=True)
    blobs = BlobStore(config.blob_dir)
    blobs.open()
    db = await store.open_database(config.db_path)
    executor = ThreadPoolExecutor(config.workers, thread_name_prefix="dicomsvc")
    svc = Service(config=config, db=db, blobs=blobs, executor=executor)
    try:
        yield svc
    finally:
        if svc.tasks:
            log.info("waiting for %d ingest(s) to finish", len(svc.tasks))
            await asyncio.gather(*svc.tasks, return_exceptions=True)
        await asyncio.to_thread(executor.shutdown, wait=True)
        await db.close()
