"""Background imports that survive a restart.

A job is a row in ``job`` and one row per file in ``job_item``, written before
the client is answered 202; uploaded input stays in the job's spool folder
until the job is done. One runner task, owned by the app's lifespan, works
through queued jobs a page at a time and records each chunk's results as
they come. After a restart (or a crash) the runner picks up the items still
pending; an item that had been stored just before the crash comes back as a
duplicate, so nothing is stored twice and nothing is lost.

Several replicas share one index (README "Running at scale"): a job is claimed by one
replica at a time, with a lease (``storage.jobs.next_job``: ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL) renewed every DICOMSVC_JOB_HEARTBEAT_SECONDS while it runs and with every
chunk's results. When a replica dies, its lease runs out after DICOMSVC_JOB_LEASE_SECONDS
and another replica takes the job over from its pending items. A replica that finds its
lease taken (it was stalled past the lease, and taken for dead) stops the job at once and
records nothing more: results are recorded only under the lease, an item keeps its first
result, and an item stored twice over is a duplicate (the unique constraint). Jobs queued
by another replica are found by polling every DICOMSVC_JOB_POLL_SECONDS (an index lookup);
this replica's own are started at once (``wakeup``).

A dataset export (``dicomsvc.exports``) is a job of one item holding its parameters: ``_work``
hands it to ``exports.run`` instead of the ingest. A send (``dicomsvc.sendjobs``) has one item
per instance: ``_work`` hands each page to ``sendjobs.run``.
"""

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import shortuuid

from . import audit, batch, exports, metrics, sendjobs
from .batch import Entry, Item, Result
from .errors import InsufficientStorage, NotFound
from .service import Service, in_background
from .storage import jobs as job_rows
from .storage import space
from .storage.spool import make_durable, remove_spool

log = logging.getLogger("dicomsvc")
MAX_WAIT_SECONDS = 60  # GET /jobs/{id}?wait=: the longest an answer is held for its job to end
ENDED = ("done", "failed")
PAGE = 512  # pending items read, run and recorded at a time: memory stays flat in the job's size
FULL_DISK_PAUSE = 5.0  # seconds a job waits when the disk is full before its pending items are tried again


async def submit(svc: Service, entries: Sequence[Entry], spool: Path | None, user: str | None = None) -> str:
    """Record a job for ``entries`` (its input in ``spool``, if any), asked for by ``user``,
    and wake the runner."""
    job_id = shortuuid.uuid()
    rows = [
        (seq, e.to_json(), "pending", None) if isinstance(e, Item) else (seq, "{}", e.status, json.dumps(e.public()))
        for seq, e in enumerate(entries)
    ]
    if spool is not None:  # its input durable before the row that points at it (as a 201's blobs)
        await svc.io(make_durable, spool)
    if spool is not None and svc.blobs.remote is not None:  # in the bucket: any replica can run the job
        await svc.io(svc.blobs.push_spool, spool)
    await job_rows.insert_job(svc.db, job_id, rows, str(spool) if spool else None, user)
    svc.wakeup.set()
    return job_id


async def status_json(svc: Service, job_id: str, owner: str | None = None, with_results: bool = True) -> bytes:
    """``GET /jobs/{id}``: progress, counts and the results so far, as JSON bytes (``owner``:
    only a job that user asked for; others are 404, as if they did not exist). Without
    ``with_results``, no ``results``: a progress poll then costs the counts alone, where the
    results of a 20,000-file job are megabytes of JSON made and sent again at every poll."""
    job = await job_rows.get_job(svc.db, job_id, owner)
    if job is None:
        raise NotFound("no job with that id")
    counts = await job_rows.item_counts(svc.db, job_id)
    processed = sum(counts.values())
    head = {
        "id": job_id,
        "status": job["status"],
        "total": job["total"],
        "processed": processed,
        "created": counts.get("created", 0),
        "duplicates": counts.get("duplicate", 0),
        "failed": counts.get("failed", 0),
        "skipped": counts.get("skipped", 0),
        "progress": 100 if job["total"] == 0 else processed * 100 // job["total"],
        "created_at": job["created_at"],
        "finished_at": job["finished_at"],
        "created_by": job["created_by"],
    } | ({"detail": job["detail"]} if job["detail"] else {})
    if sendjobs.is_send(await job_rows.first_item(svc.db, job_id) or ""):  # a send: its instances sent so far
        head["sent"] = counts.get("sent", 0)
    if not with_results:
        return json.dumps(head).encode()
    results = await job_rows.results_json(svc.db, job_id)  # a job may hold 20,000 files: SQLite joins them
    return json.dumps(head)[:-1].encode() + b', "results": ' + results.encode() + b"}"


async def wait_for_end(
    svc: Service, job_id: str, seconds: float, owner: str | None = None, stopping: asyncio.Event | None = None
) -> None:
    """``GET /jobs/{id}?wait=seconds``: return as soon as the job is done or failed, ``seconds``
    have passed, or the server begins to stop (``stopping``), whichever comes first; ``NotFound``
    at once when there is no such job. A job that ends in this process is seen at once
    (``svc.job_ended``); one run by another replica, at the next look at the index, every
    DICOMSVC_JOB_POLL_SECONDS. Clients learn of the end without polling (and without the
    granularity of their polling)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        ended = svc.job_ended.fired()  # before the look: an end after it is not missed
        job = await job_rows.get_job(svc.db, job_id, owner)
        if job is None:
            raise NotFound("no job with that id")
        left = deadline - loop.time()
        if job["status"] in ENDED or left <= 0 or (stopping is not None and stopping.is_set()):
            return
        await _first_of([ended] + ([stopping] if stopping is not None else []), min(left, svc.config.job_poll_seconds))


async def _first_of(events: list[asyncio.Event], timeout: float) -> None:
    """Until one of ``events`` is set, or ``timeout`` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def listing(svc: Service, limit: int, offset: int, owner: str | None = None) -> dict:
    """``GET /jobs``, ``GET /users/{user}/jobs``: a page of jobs, newest first."""
    rows = await job_rows.list_jobs(svc.db, limit + 1, offset, owner)
    return {
        "items": rows[:limit],
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if len(rows) > limit else None,
    }


@contextlib.asynccontextmanager
async def running(svc: Service) -> AsyncIterator[None]:
    """Run queued jobs in the background for as long as the app runs."""
    await _forget_orphan_spools(svc)  # before any request can start a new one
    if voided := await job_rows.void_claims(svc.db):
        log.info("resuming %d job(s) the previous process was running", voided)
    async with in_background(_run_forever(svc), "dicomsvc-jobs"):
        yield


async def _run_forever(svc: Service) -> None:
    config = svc.config
    while True:
        svc.wakeup.clear()
        try:
            job_id = await job_rows.next_job(svc.db, svc.replica, config.job_lease_seconds)
        except Exception as exc:  # the database away for a moment: look again at the next poll
            _stopping(exc)
            log.error("could not look for queued jobs: %s", type(exc).__name__)
            job_id = None
        if job_id is None:
            # queued here (wakeup), or by another replica (the poll). asyncio.timeout, not wait_for:
            # Python 3.11's wait_for drops a cancellation that comes as the event is set (the app
            # stopping just as a job is queued), and the runner would never stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(config.job_poll_seconds):
                    await svc.wakeup.wait()
            continue
        log.info("job %s claimed by replica %s", job_id, svc.replica)
        try:
            await _run_job(svc, job_id)
        except asyncio.CancelledError:
            raise
        except job_rows.LeaseLost:
            log.warning("job %s was taken over by another replica (this one missed its lease): stopped here", job_id)
        except Exception as exc:  # the job fails, the runner goes on
            _stopping(exc)
            if isinstance(exc, InsufficientStorage) or space.is_full(exc):
                # Its progress could not be recorded: it stays unfinished, and its pending
                # items are tried again once there may be space (nothing is lost).
                log.error("job %s paused: the disk is full", job_id)
                await asyncio.sleep(FULL_DISK_PAUSE)
                continue
            log.error("job %s failed: %s", job_id, type(exc).__name__)
            try:
                await _finish(svc, job_id, "failed", f"internal error ({type(exc).__name__})")
            except Exception as again:  # the runner must outlive any one job
                log.error("job %s could not be marked failed: %s", job_id, type(again).__name__)
                await asyncio.sleep(FULL_DISK_PAUSE)


def _stopping(exc: Exception) -> None:
    """Raise CancelledError when this task is being cancelled (the app stopping) and ``exc`` came
    in the cancellation's place -- as a ROLLBACK's error can, when a statement's await was
    cancelled: the runner must stop, not carry on as after an error (the app's shutdown hung)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


async def _run_job(svc: Service, job_id: str) -> None:
    """Run the job's pending items, renewing its lease every heartbeat meanwhile; when the
    lease turns out to be another replica's, the work is cancelled and ``LeaseLost`` raised."""
    work = asyncio.create_task(_work(svc, job_id), name=f"dicomsvc-job-{job_id}")
    try:
        while True:
            done, _ = await asyncio.wait({work}, timeout=svc.config.job_heartbeat_seconds)
            if done:
                if work.cancelled():  # by itself: a chunk's results found the lease another's
                    raise job_rows.LeaseLost(job_id)
                return work.result()
            try:
                mine = await job_rows.renew(svc.db, job_id, svc.replica, svc.config.job_lease_seconds)
            except Exception as exc:  # the database away for a moment: the lease may well hold still
                log.error("job %s: its lease could not be renewed: %s", job_id, type(exc).__name__)
                continue
            if not mine:
                raise job_rows.LeaseLost(job_id)
    finally:
        if not work.done():
            work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # its own outcome was raised above, if any
            await work


async def _work(svc: Service, job_id: str) -> None:
    me = asyncio.current_task()
    job = await job_rows.get_job(svc.db, job_id)
    owner = job.get("created_by") if job else None
    while pending := await job_rows.pending_items(svc.db, job_id, PAGE):
        if exports.is_export(pending[0][1]):  # a dataset export (its one item): written, then recorded
            await exports.run(svc, job_id, *pending[0])
            continue
        if sendjobs.is_send(pending[0][1]):  # instances to send (POST /dicom/send): sent, then recorded
            await sendjobs.run(svc, job_id, pending, owner)
            continue
        seqs = [seq for seq, _ in pending]

        async def record(start: int, results: list[Result], seqs: list[int] = seqs) -> None:
            done = [(seqs[start + i], r.status, json.dumps(r.public())) for i, r in enumerate(results)]
            try:
                await job_rows.record_results(svc.db, job_id, done, svc.replica, svc.config.job_lease_seconds)
            except job_rows.LeaseLost:
                me.cancel()  # the page's other chunks stop too (not only this one): the job is another's
                raise
            audit.record(svc, audit.job_records(job_id, owner, results))  # who submitted it: the job's owner
            metrics.count_results(results)

        items = [Item.from_json(item) for _, item in pending]
        if svc.blobs.remote is not None:  # input spooled by another replica: fetched from the bucket
            items = await svc.io(_local_items, svc, items)
        await batch.run(svc, items, on_done=record)
    await _finish(svc, job_id, "done", None)


def _local_items(svc: Service, items: list[Item]) -> list[Item]:
    """With S3: items whose spooled input is here, fetched when another replica spooled it."""
    pulled: dict[str, str] = {}
    for item in items:
        if item.kind in ("spooled", "member") and item.path not in pulled:
            pulled[item.path] = svc.blobs.pull_spool(item.path, svc.config.spool_dir)
    return [dataclasses.replace(item, path=pulled[item.path]) if item.path in pulled else item for item in items]


async def _finish(svc: Service, job_id: str, state: str, detail: str | None) -> None:
    spool = await job_rows.finish(svc.db, job_id, state, detail, svc.replica)
    svc.job_ended.fire()  # requests waiting for it answer now (wait_for_end)
    if spool:
        await svc.io(remove_spool, Path(spool))
        if svc.blobs.remote is not None:
            await svc.io(svc.blobs.drop_spool, Path(spool))


async def _forget_orphan_spools(svc: Service) -> None:
    """Spool folders of requests that died mid-way (no job owns them) are removed at start."""
    keep = {Path(p) for p in await job_rows.held_spools(svc.db)}
    root = svc.config.spool_dir
    if root.exists():
        for folder in await svc.io(lambda: list(root.iterdir())):
            if folder not in keep:
                await svc.io(remove_spool, folder)
